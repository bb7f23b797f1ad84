//! Matrix products, linear layers, residual adds and bias adds.

use bytemuck::{Pod, Zeroable};

use super::{launch, matrix, u32_of};
use crate::error::{Error, Result};
use crate::gpu::{PlanBuilder, Tensor};
use crate::linalg::{Axpby, Matmul, Trans};
use crate::nn::graph::{Backward, Graph, Var};

fn flip(t: Trans) -> Trans {
    match t {
        Trans::N => Trans::T,
        Trans::T => Trans::N,
    }
}

/// `out (+)= g`: write or accumulate a gradient.
pub(crate) fn put_grad(plan: &mut PlanBuilder, g: &Tensor, (out, acc): (Tensor, bool)) -> Result<()> {
    let y = if acc { Some(&out) } else { None };
    Axpby { x: Some(g), y, ..Axpby::new(&out) }.record(plan)
}

/// Pass `g` on as the gradient of `v`: adopted without a copy when `v` has none yet, else added.
pub(crate) fn pass_grad(b: &mut Backward<'_>, v: Var, g: &Tensor) -> Result<()> {
    if b.adopt_grad(v, g) {
        return Ok(());
    }
    if let Some(target) = b.grad_in(v)? {
        put_grad(b.plan(), g, target)?;
    }
    Ok(())
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub(crate) struct PointU {
    pub n: u32,
    pub c: u32,
    pub x_off: u32,
    pub g_off: u32,
    pub o_off: u32,
    pub acc: u32,
    pub p: f32,
    pub salt: u32,
}

impl Graph {
    /// `op(a)·op(b)` for two matrices or two stacks with the same batch (see [`Matmul`]).
    pub fn matmul(&mut self, a: Var, b: Var, ta: Trans, tb: Trans) -> Result<Var> {
        let (sa, sb) = (self.shape(a).to_vec(), self.shape(b).to_vec());
        if sa.len() != sb.len() || !(2..=3).contains(&sa.len()) || (sa.len() == 3 && sa[0] != sb[0]) {
            return Err(Error::Shape {
                op: "Graph::matmul",
                detail: format!("operands {sa:?} and {sb:?}: two matrices or two stacks of equal batch"),
            });
        }
        let r = sa.len();
        let m = if ta == Trans::N { sa[r - 2] } else { sa[r - 1] };
        let n = if tb == Trans::N { sb[r - 1] } else { sb[r - 2] };
        let mut shape = sa[..r - 2].to_vec();
        shape.extend([m, n]);
        let out = self.output("matmul", &shape, &[a, b])?;
        let (va, vb, vo) = (self.value(a).clone(), self.value(b).clone(), self.value(out).clone());
        Matmul::new(&va, &vb, &vo).trans(ta, tb).record(&mut self.plan)?;
        self.on_backward(out, move |bw| {
            let Some(g) = bw.grad_out(out) else { return Ok(()) };
            let (va, vb) = (bw.value(a), bw.value(b));
            if let Some((ga, acc)) = bw.grad_in(a)? {
                let mm = match ta {
                    Trans::N => Matmul::new(&g, &vb, &ga).trans(Trans::N, flip(tb)),
                    Trans::T => Matmul::new(&vb, &g, &ga).trans(tb, Trans::T),
                };
                mm.scaled(1.0, acc.then_some(&ga), if acc { 1.0 } else { 0.0 }).record(bw.plan())?;
            }
            if let Some((gb, acc)) = bw.grad_in(b)? {
                let mm = match tb {
                    Trans::N => Matmul::new(&va, &g, &gb).trans(flip(ta), Trans::N),
                    Trans::T => Matmul::new(&g, &va, &gb).trans(Trans::T, ta),
                };
                mm.scaled(1.0, acc.then_some(&gb), if acc { 1.0 } else { 0.0 }).record(bw.plan())?;
            }
            Ok(())
        });
        Ok(out)
    }

    /// A linear layer as PyTorch stores it: `x [N, in]`, `weight [out, in]`, `y = x·weightᵀ (+ bias)`.
    pub fn linear(&mut self, x: Var, weight: Var, bias: Option<Var>) -> Result<Var> {
        let y = self.matmul(x, weight, Trans::N, Trans::T)?;
        match bias {
            Some(b) => self.add_bias(y, b),
            None => Ok(y),
        }
    }

    /// `a + b` (same shapes): residual connections.
    pub fn add(&mut self, a: Var, b: Var) -> Result<Var> {
        if self.shape(a) != self.shape(b) {
            return Err(Error::Shape {
                op: "Graph::add",
                detail: format!("{:?} + {:?}", self.shape(a), self.shape(b)),
            });
        }
        let shape = self.shape(a).to_vec(); // (owned: `output` borrows the graph mutably)
        let out = self.output("add", &shape, &[a, b])?;
        let (va, vb, vo) = (self.value(a).clone(), self.value(b).clone(), self.value(out).clone());
        Axpby { x: Some(&va), y: Some(&vb), ..Axpby::new(&vo) }.record(&mut self.plan)?;
        self.on_backward(out, move |bw| {
            let Some(g) = bw.grad_out(out) else { return Ok(()) };
            // b first: `a` may adopt g itself, after which later ops may accumulate into it.
            if let Some(target) = bw.grad_in(b)? {
                put_grad(bw.plan(), &g, target)?;
            }
            pass_grad(bw, a, &g)
        });
        Ok(out)
    }

    /// `x [N, C] + bias [C]` broadcast over rows.
    pub fn add_bias(&mut self, x: Var, bias: Var) -> Result<Var> {
        let (rows, c) = matrix("Graph::add_bias", self.shape(x))?;
        if self.shape(bias) != [c] {
            return Err(Error::Shape {
                op: "Graph::add_bias",
                detail: format!("bias {:?} for rows of {c}", self.shape(bias)),
            });
        }
        let out = self.output("bias", &[rows, c], &[x, bias])?;
        let n = rows * c;
        let (vx, vb, vo) = (self.value(x).clone(), self.value(bias).clone(), self.value(out).clone());
        let u = PointU {
            n: u32_of("Graph::add_bias", n)?,
            c: c as u32,
            x_off: vx.offset() as u32,
            g_off: vb.offset() as u32,
            o_off: vo.offset() as u32,
            acc: 0,
            p: 0.0,
            salt: 0,
        };
        launch(&mut self.plan, "nn/pointwise.wgsl", "bias_forward", &[], &u, &[&vx, &vb, &vo], n)?;
        self.on_backward(out, move |bw| {
            let Some(g) = bw.grad_out(out) else { return Ok(()) };
            if let Some((gb, acc)) = bw.grad_in(bias)? {
                let u = PointU { g_off: g.offset() as u32, o_off: gb.offset() as u32, acc: acc as u32, ..u };
                launch(bw.plan(), "nn/pointwise.wgsl", "col_sum", &[], &u, &[&g, &gb], c)?;
            }
            pass_grad(bw, x, &g)
        });
        Ok(out)
    }
}
