//! Softmax cross-entropy.

use bytemuck::{Pod, Zeroable};

use super::dense::pass_grad;
use super::{launch, matrix, u32_of};
use crate::error::{Error, Result};
use crate::gpu::Tensor;
use crate::linalg::{Axpby, BatchScalar};
use crate::nn::graph::{Graph, Var};
use crate::nn::Tokens;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct U {
    n: u32,
    v: u32,
    x_off: u32,
    o_off: u32,
    grad: u32,
    _p: [u32; 3],
}

impl Graph {
    /// Mean softmax cross-entropy of `logits [N, vocab]` against the batch's targets: a scalar. The gradient
    /// with respect to the logits is computed in the same pass (train graphs only).
    pub fn cross_entropy(&mut self, logits: Var, tokens: &Tokens) -> Result<Var> {
        let op = "Graph::cross_entropy";
        let (n, v) = matrix(op, self.shape(logits))?;
        if n != tokens.len() || v != tokens.vocab {
            return Err(Error::Shape {
                op,
                detail: format!("logits [{n}, {v}] for {} targets over {} classes", tokens.len(), tokens.vocab),
            });
        }
        let out = self.output("cross_entropy", &[1], &[logits])?;
        let grad = self.needs_grad(logits);
        let row_loss = Tensor::zeros(self.gpu(), &[n])?;
        // Without a gradient the binding still needs a buffer of its own (WebGPU forbids aliasing a written one).
        let dlogits = Tensor::zeros(self.gpu(), &if grad { vec![n, v] } else { vec![1] })?;
        let (vl, vo) = (self.value(logits).clone(), self.value(out).clone());
        let u = U {
            n: u32_of(op, n)?,
            v: v as u32,
            x_off: vl.offset() as u32,
            o_off: vo.offset() as u32,
            grad: grad as u32,
            _p: [0; 3],
        };
        u32_of(op, n * v)?;
        let t = [&vl, &tokens.targets, &row_loss, &dlogits];
        launch(&mut self.plan, "nn/cross_entropy.wgsl", "rows", &[], &u, &t, n)?;
        let kernel = self.gpu().kernel("nn/cross_entropy.wgsl", "mean", &[])?;
        self.plan.dispatch(&kernel, &u, &[&row_loss, &vo], [1, 1, 1])?;
        self.on_backward(out, move |bw| {
            let Some(g) = bw.grad_out(out) else { return Ok(()) };
            if bw.is_root(out) {
                return pass_grad(bw, logits, &dlogits);
            }
            // Not the loss itself: scale by the upstream gradient (a device scalar).
            let Some((gl, acc)) = bw.grad_in(logits)? else { return Ok(()) };
            let (d3, g3) = (dlogits.reshape(&[1, n, v])?, gl.reshape(&[1, n, v])?);
            let scale = Some(BatchScalar::of(&g));
            Axpby { x: Some(&d3), scale, y: acc.then_some(&g3), ..Axpby::new(&g3) }.record(bw.plan())
        });
        Ok(out)
    }
}
