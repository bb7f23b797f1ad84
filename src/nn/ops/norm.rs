//! LayerNorm.

use bytemuck::{Pod, Zeroable};

use super::{launch, matrix, u32_of};
use crate::error::{Error, Result};
use crate::gpu::Tensor;
use crate::nn::graph::{Graph, Var};

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct U {
    rows: u32,
    c: u32,
    x_off: u32,
    w_off: u32,
    b_off: u32,
    o_off: u32,
    g_off: u32,
    acc: u32,
    eps: f32,
    has_b: u32,
    acc_b: u32,
    chunk_rows: u32,
}

/// Rows per partial sum of the weight/bias gradients.
const CHUNK_ROWS: usize = 64;

impl Graph {
    /// LayerNorm over the last dimension of `x [N, C]` with weight `[C]` and optional bias `[C]`
    /// (nanoGPT's `LayerNorm(bias=False)` when `bias` is None).
    pub fn layer_norm(&mut self, x: Var, weight: Var, bias: Option<Var>, eps: f32) -> Result<Var> {
        let (rows, c) = matrix("Graph::layer_norm", self.shape(x))?;
        for p in std::iter::once(weight).chain(bias) {
            if self.shape(p) != [c] {
                return Err(Error::Shape {
                    op: "Graph::layer_norm",
                    detail: format!("parameter {:?} for rows of {c}", self.shape(p)),
                });
            }
        }
        let mut inputs = vec![x, weight];
        inputs.extend(bias);
        let out = self.output("layer_norm", &[rows, c], &inputs)?;
        let stats = Tensor::zeros(self.gpu(), &[rows, 2])?;
        let (vx, vw, vo) = (self.value(x).clone(), self.value(weight).clone(), self.value(out).clone());
        let vb = bias.map(|b| self.value(b).clone());
        let u = U {
            rows: u32_of("Graph::layer_norm", rows)?,
            c: c as u32,
            x_off: vx.offset() as u32,
            w_off: vw.offset() as u32,
            b_off: vb.as_ref().map_or(0, |b| b.offset()) as u32,
            o_off: vo.offset() as u32,
            g_off: 0,
            acc: 0,
            eps,
            has_b: bias.is_some() as u32,
            acc_b: 0,
            chunk_rows: CHUNK_ROWS as u32,
        };
        let fwd = [&vx, &vw, vb.as_ref().unwrap_or(&vw), &vo, &stats];
        launch(&mut self.plan, "nn/layernorm.wgsl", "forward", &[], &u, &fwd, rows)?;
        self.on_backward(out, move |bw| {
            let Some(g) = bw.grad_out(out) else { return Ok(()) };
            let u = U { g_off: g.offset() as u32, ..u };
            let gw = bw.grad_in(weight)?;
            let gb = match bias {
                Some(b) => bw.grad_in(b)?,
                None => None,
            };
            if let Some((dw, acc)) = &gw {
                let db = gb.as_ref().map_or(dw, |(t, _)| t);
                let u = U {
                    o_off: dw.offset() as u32,
                    acc: *acc as u32,
                    b_off: db.offset() as u32,
                    acc_b: gb.as_ref().is_some_and(|(_, a)| *a) as u32,
                    has_b: gb.is_some() as u32,
                    ..u
                };
                // Partial sums only where a backward pass is built (not in forward-only graphs).
                let chunks = rows.div_ceil(CHUNK_ROWS);
                let part = bw.plan().scratch(&[chunks, 2, c])?;
                launch(
                    bw.plan(),
                    "nn/layernorm.wgsl",
                    "param_partial",
                    &[],
                    &u,
                    &[&vx, &stats, &g, &part],
                    chunks * c,
                )?;
                let separate = db.buffer() != dw.buffer();
                let outs: &[&Tensor] = if separate { &[&part, dw, db] } else { &[&part, dw] };
                let defines = [("SEPARATE_DB", separate.to_string())];
                launch(bw.plan(), "nn/layernorm.wgsl", "param_grad", &defines, &u, outs, c)?;
            }
            if let Some((dx, acc)) = bw.grad_in(x)? {
                let u = U { o_off: dx.offset() as u32, acc: acc as u32, ..u };
                launch(bw.plan(), "nn/layernorm.wgsl", "input_grad", &[], &u, &[&vx, &vw, &stats, &g, &dx], rows)?;
            }
            Ok(())
        });
        Ok(out)
    }
}
