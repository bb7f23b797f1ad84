//! Causal multi-head self-attention on a packed `qkv` projection.

use bytemuck::{Pod, Zeroable};

use super::{launch, matrix, u32_of};
use crate::error::{Error, Result};
use crate::gpu::{Gpu, Tensor};
use crate::nn::graph::{Graph, Var};

/// Largest head dimension the attention kernels hold in registers.
pub const MAX_HEAD_DIM: usize = 128;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct U {
    batch: u32,
    t: u32,
    heads: u32,
    c: u32,
    qkv_off: u32,
    o_off: u32,
    g_off: u32,
    acc: u32,
    scale: f32,
    p: f32,
    salt: u32,
    head_dim: u32,
}

/// Whether the kernels load and store their D-long register rows in loops bounded at run time (`ROW_LOOPS` in
/// the shader): on CPU adapters up to D = 32, where it cuts llvmpipe's first-call compile (small preset, D = 32:
/// forward 0.49 → 0.11 s, backward 1.0 + 1.0 → 0.12 + 0.09 s) at the same run time. At D = 64 the rows no
/// longer stay in registers that way (attention 2.7× slower per step), so wider heads keep the unrolled form.
fn row_loops(gpu: &Gpu, d: usize) -> u32 {
    (gpu.is_cpu() && d <= 32) as u32
}

/// Kernel variant: the subgroup-broadcast form on CPU adapters with 8-lane subgroups when the head dimension
/// and the block are multiples of 8 (`WGOPTIM_ATTENTION_SUBGROUP=0` turns it off, for measuring).
fn defines(gpu: &Gpu, d: usize, block: usize) -> Vec<(&'static str, String)> {
    let off = std::env::var("WGOPTIM_ATTENTION_SUBGROUP").is_ok_and(|v| v == "0");
    let subgroup = !off && gpu.cpu_subgroup_size() == Some(8) && d.is_multiple_of(8) && block.is_multiple_of(8);
    let mut v = vec![("D", d.to_string()), ("ROW_LOOPS", row_loops(gpu, d).to_string())];
    if subgroup {
        let dot: String =
            (0..8).map(|l| format!("        s = fma((*x)[c + {l}u], subgroupBroadcast(v, {l}u), s);\n")).collect();
        let axpy: String = (0..8)
            .map(|l| format!("        (*acc)[c + {l}u] = fma(p, subgroupBroadcast(v, {l}u), (*acc)[c + {l}u]);\n"))
            .collect();
        v.extend([
            ("SUBGROUP", "1".to_string()),
            ("DOT_QKV", dot),
            ("AXPY", axpy),
            ("LANE_ARG", ", @builtin(subgroup_invocation_id) lane: u32".into()),
            ("LANE", "lane".into()),
            ("LAST_ROW", "i | 7u".into()),
            ("FIRST_ROW", "j & ~7u".into()),
        ]);
    } else {
        v.extend([
            ("DOT_QKV", String::new()),
            ("AXPY", String::new()),
            ("LANE_ARG", String::new()),
            ("LANE", "0u".into()),
            ("LAST_ROW", "i".into()),
            ("FIRST_ROW", "j".into()),
        ]);
    }
    v
}

impl Graph {
    /// `softmax(q·kᵀ/√d + causal mask)·v` per head, for `qkv [batch·block, 3C]` laid out as nanoGPT's `c_attn`
    /// output (q, k, v blocks of C columns, head h at columns h·d … of each); output `[batch·block, C]`.
    pub fn causal_attention(&mut self, qkv: Var, batch: usize, block: usize, heads: usize) -> Result<Var> {
        self.causal_attention_dropout(qkv, batch, block, heads, 0.0, 0)
    }

    /// [`Graph::causal_attention`] with nanoGPT's attention dropout: the probabilities multiplying v are dropped
    /// with probability `p` and rescaled by `1/(1 − p)`, the mask drawn per step from the step block's seed and
    /// `salt` like [`Graph::dropout`]'s; `p = 0` or an evaluation graph drops nothing.
    pub fn causal_attention_dropout(
        &mut self,
        qkv: Var,
        batch: usize,
        block: usize,
        heads: usize,
        p: f32,
        salt: u32,
    ) -> Result<Var> {
        let op = "Graph::causal_attention";
        if !(0.0..1.0).contains(&p) {
            return Err(Error::InvalidArgument { op, name: "p", detail: format!("{p} is not in [0, 1)") });
        }
        let p = if self.mode() == crate::nn::Mode::Eval { 0.0 } else { p };
        let (rows, c3) = matrix(op, self.shape(qkv))?;
        let c = c3 / 3;
        if rows != batch * block || c3 % 3 != 0 || heads == 0 || c % heads != 0 || c / heads > MAX_HEAD_DIM {
            return Err(Error::Shape {
                op,
                detail: format!(
                    "qkv {:?} for batch {batch} × block {block}, {heads} heads (3C columns, C divisible by the \
                     heads, head dim ≤ {MAX_HEAD_DIM})",
                    self.shape(qkv)
                ),
            });
        }
        let d = c / heads;
        let out = self.output("attention", &[rows, c], &[qkv])?;
        let probs = Tensor::zeros(self.gpu(), &[batch, heads, block, block])?;
        let (vq, vo) = (self.value(qkv).clone(), self.value(out).clone());
        let lanes = batch * heads * block;
        let u = U {
            batch: batch as u32,
            t: block as u32,
            heads: heads as u32,
            c: c as u32,
            qkv_off: vq.offset() as u32,
            o_off: vo.offset() as u32,
            g_off: 0,
            acc: 0,
            scale: 1.0 / (d as f32).sqrt(),
            p,
            salt,
            head_dim: d as u32,
        };
        u32_of(op, rows * c3)?;
        u32_of(op, lanes * block)?;
        let mut defines = defines(self.gpu(), d, block);
        let step = self.step_block().clone();
        let dropout = p > 0.0;
        defines.push(("DROPOUT", (dropout as u32).to_string()));
        let mut t = vec![&vq, &probs, &vo];
        if dropout {
            t.push(&step);
        }
        launch(&mut self.plan, "nn/attention.wgsl", "forward", &defines, &u, &t, lanes)?;
        self.on_backward(out, move |bw| {
            let Some(g) = bw.grad_out(out) else { return Ok(()) };
            let Some((gq, acc)) = bw.grad_in(qkv)? else { return Ok(()) };
            let ds = Tensor::zeros(g.gpu(), probs.shape())?;
            let u = U { g_off: g.offset() as u32, o_off: gq.offset() as u32, acc: acc as u32, ..u };
            let mut t = vec![&vq, &probs, &g, &ds, &gq];
            if dropout {
                t.push(&step);
            }
            launch(bw.plan(), "nn/attention.wgsl", "backward_query", &defines, &u, &t, lanes)?;
            launch(bw.plan(), "nn/attention.wgsl", "backward_key", &defines, &u, &t, lanes)
        });
        Ok(out)
    }
}
