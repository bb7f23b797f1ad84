//! Token + position embedding (gather) and its scatter-add backward.

use bytemuck::{Pod, Zeroable};

use super::{launch, u32_of};
use crate::error::{Error, Result};
use crate::nn::graph::{Graph, Var};
use crate::nn::Tokens;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct U {
    n: u32,
    c: u32,
    t: u32,
    vocab: u32,
    a_off: u32,
    b_off: u32,
    o_off: u32,
    acc: u32,
}

impl Graph {
    /// `out[n] = table[token[n]] + positions[n mod block]`: `table [vocab, C]`, `positions [≥ block, C]`,
    /// output `[batch·block, C]`.
    pub fn embedding(&mut self, tokens: &Tokens, table: Var, positions: Var) -> Result<Var> {
        let (st, sp) = (self.shape(table).to_vec(), self.shape(positions).to_vec());
        if st.len() != 2 || sp.len() != 2 || st[1] != sp[1] || st[0] != tokens.vocab || sp[0] < tokens.block {
            return Err(Error::Shape {
                op: "Graph::embedding",
                detail: format!("table {st:?}, positions {sp:?} for vocab {} and block {}", tokens.vocab, tokens.block),
            });
        }
        let (n, c) = (tokens.len(), st[1]);
        let out = self.output("embedding", &[n, c], &[table, positions])?;
        let (vt, vp, vo) = (self.value(table).clone(), self.value(positions).clone(), self.value(out).clone());
        let u = U {
            n: u32_of("Graph::embedding", n)?,
            c: c as u32,
            t: tokens.block as u32,
            vocab: tokens.vocab as u32,
            a_off: vt.offset() as u32,
            b_off: vp.offset() as u32,
            o_off: vo.offset() as u32,
            acc: 0,
        };
        u32_of("Graph::embedding", n * c)?;
        launch(&mut self.plan, "nn/embedding.wgsl", "forward", &[], &u, &[&tokens.inputs, &vt, &vp, &vo], n * c)?;
        let tokens = tokens.clone();
        self.on_backward(out, move |bw| {
            let Some(g) = bw.grad_out(out) else { return Ok(()) };
            let u = U { a_off: g.offset() as u32, ..u };
            if let Some((gt, acc)) = bw.grad_in(table)? {
                let u = U { o_off: gt.offset() as u32, acc: acc as u32, ..u };
                let t = [&tokens.starts, &tokens.positions, &g, &gt];
                launch(bw.plan(), "nn/embedding.wgsl", "table_grad", &[], &u, &t, tokens.vocab * c)?;
            }
            if let Some((gp, acc)) = bw.grad_in(positions)? {
                let u = U { o_off: gp.offset() as u32, acc: acc as u32, ..u };
                launch(bw.plan(), "nn/embedding.wgsl", "position_grad", &[], &u, &[&g, &gp], tokens.block * c)?;
            }
            Ok(())
        });
        Ok(out)
    }
}
