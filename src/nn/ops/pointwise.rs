//! GELU and dropout.

use super::dense::PointU;
use super::{launch, u32_of};
use crate::error::{Error, Result};
use crate::nn::graph::{Graph, Mode, Var};

impl Graph {
    /// GELU, the exact (erf) form PyTorch's `nn.GELU()` uses.
    pub fn gelu(&mut self, x: Var) -> Result<Var> {
        let shape = self.shape(x).to_vec(); // (owned: `output` borrows the graph mutably)
        let out = self.output("gelu", &shape, &[x])?;
        let (vx, vo) = (self.value(x).clone(), self.value(out).clone());
        let n = u32_of("Graph::gelu", vx.numel())?;
        let u =
            PointU { n, c: 1, x_off: vx.offset() as u32, g_off: 0, o_off: vo.offset() as u32, acc: 0, p: 0.0, salt: 0 };
        launch(&mut self.plan, "nn/pointwise.wgsl", "gelu_forward", &[], &u, &[&vx, &vo], n as usize)?;
        self.on_backward(out, move |bw| {
            let Some(g) = bw.grad_out(out) else { return Ok(()) };
            let Some((gx, acc)) = bw.grad_in(x)? else { return Ok(()) };
            let u = PointU { g_off: g.offset() as u32, o_off: gx.offset() as u32, acc: acc as u32, ..u };
            launch(bw.plan(), "nn/pointwise.wgsl", "gelu_backward", &[], &u, &[&vx, &g, &gx], n as usize)
        });
        Ok(out)
    }

    /// Inverted dropout with probability `p` (identity in eval graphs or when `p = 0`). The mask is a hash of
    /// (seed, step, `salt`, element), so backward and a resumed run recompute it exactly; give every dropout
    /// site its own `salt`.
    pub fn dropout(&mut self, x: Var, p: f32, salt: u32) -> Result<Var> {
        if !(0.0..1.0).contains(&p) {
            return Err(Error::InvalidArgument {
                op: "Graph::dropout",
                name: "p",
                detail: format!("{p} is not in [0, 1)"),
            });
        }
        if p == 0.0 || self.mode() == Mode::Eval {
            return Ok(x);
        }
        let shape = self.shape(x).to_vec(); // (owned: `output` borrows the graph mutably)
        let out = self.output("dropout", &shape, &[x])?;
        let (vx, vo, step) = (self.value(x).clone(), self.value(out).clone(), self.step_block().clone());
        let n = u32_of("Graph::dropout", vx.numel())?;
        let u = PointU { n, c: 1, x_off: vx.offset() as u32, g_off: 0, o_off: vo.offset() as u32, acc: 0, p, salt };
        launch(&mut self.plan, "nn/pointwise.wgsl", "dropout", &[], &u, &[&vx, &step, &vo], n as usize)?;
        self.on_backward(out, move |bw| {
            let Some(g) = bw.grad_out(out) else { return Ok(()) };
            let Some((gx, acc)) = bw.grad_in(x)? else { return Ok(()) };
            let u = PointU { x_off: g.offset() as u32, o_off: gx.offset() as u32, acc: acc as u32, ..u };
            launch(bw.plan(), "nn/pointwise.wgsl", "dropout", &[], &u, &[&g, &step, &gx], n as usize)
        });
        Ok(out)
    }
}
