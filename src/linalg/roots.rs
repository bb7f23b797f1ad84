//! Matrix roots of symmetric positive (semi-)definite stacks: inverse p-th roots by coupled Newton
//! (docs/optimizers.md §11.2) or by eigendecomposition (§11.4), and `A^{±1/2}` by coupled Newton–Schulz (§11.3).
//! Iteration counts are fixed at build time (no readback); converged iterations are fixed points.

use crate::error::{Error, Result};
use crate::gpu::{PlanBuilder, Tensor};
use crate::linalg::{copy, eig_apply, eigh, reduce, Axpby, BatchScalar, EighConfig, Matmul, ReduceOp};

fn check(a: &Tensor, out: &Tensor, eps: f32, op: &'static str) -> Result<(usize, usize)> {
    let (b, m, n) = a.matrices(op)?;
    if m != n || out.shape() != a.shape() {
        return Err(Error::Shape {
            op,
            detail: format!("a {:?}, out {:?}: need equal square stacks", a.shape(), out.shape()),
        });
    }
    if !eps.is_finite() || eps < 0.0 {
        return Err(Error::InvalidArgument { op, name: "eps", detail: format!("{eps} must be finite and ≥ 0") });
    }
    Ok((b, n))
}

/// `out = (A + εI)^{-1/p}` by the coupled Newton iteration of distributed_shampoo (§11.2), `iters` steps
/// (~15–30 for κ up to 1e6).
pub fn inverse_root_newton(
    plan: &mut PlanBuilder,
    a: &Tensor,
    out: &Tensor,
    p: u32,
    eps: f32,
    iters: u32,
) -> Result<()> {
    let (b, n) = check(a, out, eps, "inverse_root_newton")?;
    if p == 0 {
        return Err(Error::InvalidArgument { op: "inverse_root_newton", name: "p", detail: "p must be ≥ 1".into() });
    }
    let shape = [b, n, n];
    let ar = plan.scratch(&shape)?;
    Axpby { x: Some(a), diag: eps, ..Axpby::new(&ar) }.record(plan)?;
    let norm = plan.scratch(&[b])?;
    reduce(plan, &ar, ReduceOp::Norm, b, &norm)?;
    // z = (p+1) / (2‖A_r‖): X = z^{1/p} I, M = z A_r. A zero matrix gives z = 1/tiny, kept finite by the clamp.
    let z = |pow: f32| BatchScalar::of(&norm).affine(2.0 / (p as f32 + 1.0), 0.0, 1e-30).pow(pow);
    let (mut x, mut x2) = (plan.scratch(&shape)?, plan.scratch(&shape)?);
    let (mut m, mut m2) = (plan.scratch(&shape)?, plan.scratch(&shape)?);
    let mp = plan.scratch(&shape)?;
    let (pw, pw2) = (plan.scratch(&shape)?, plan.scratch(&shape)?);
    Axpby { diag: 1.0, scale: Some(z(-1.0 / p as f32)), ..Axpby::new(&x) }.record(plan)?;
    Axpby { x: Some(&ar), scale: Some(z(-1.0)), ..Axpby::new(&m) }.record(plan)?;
    let alpha = -1.0 / p as f32;
    for _ in 0..iters {
        // M' = (1 − α) I + α M;  X ← X M';  M ← M'^p M.
        Axpby { x: Some(&m), a: alpha, diag: 1.0 - alpha, ..Axpby::new(&mp) }.record(plan)?;
        Matmul::new(&x, &mp, &x2).record(plan)?;
        std::mem::swap(&mut x, &mut x2);
        let pow = matrix_power(plan, &mp, p, (&pw, &pw2))?;
        Matmul::new(&pow, &m, &m2).record(plan)?;
        std::mem::swap(&mut m, &mut m2);
    }
    copy(plan, &x, out)
}

/// `base^p` by repeated squaring into one of the two scratch buffers (returned); `base` itself when p = 1.
fn matrix_power(plan: &mut PlanBuilder, base: &Tensor, p: u32, (s1, s2): (&Tensor, &Tensor)) -> Result<Tensor> {
    if p == 1 {
        return Ok(base.clone());
    }
    // Left-to-right binary powering over the bits of p below the top one.
    let mut cur = base.clone();
    let bufs = [s1.clone(), s2.clone()];
    let mut which = 0;
    for bit in (0..31 - p.leading_zeros()).rev() {
        Matmul::new(&cur, &cur, &bufs[which]).record(plan)?;
        cur = bufs[which].clone();
        which ^= 1;
        if p >> bit & 1 == 1 {
            Matmul::new(&cur, base, &bufs[which]).record(plan)?;
            cur = bufs[which].clone();
            which ^= 1;
        }
    }
    Ok(cur)
}

/// `out = (A + εI)^{-1/p}` through the eigendecomposition: eigenvalues are clamped at 0 before adding ε, so a
/// rank-deficient factor gives ε^{-1/p} on its null space instead of NaN (the distributed_shampoo guard).
pub fn inverse_root_eigh(
    plan: &mut PlanBuilder,
    a: &Tensor,
    out: &Tensor,
    p: u32,
    eps: f32,
    cfg: &EighConfig,
) -> Result<()> {
    let (b, n) = check(a, out, eps, "inverse_root_eigh")?;
    if p == 0 {
        return Err(Error::InvalidArgument { op: "inverse_root_eigh", name: "p", detail: "p must be ≥ 1".into() });
    }
    let vals = plan.scratch(&[b, n])?;
    let vecs = plan.scratch(&[b, n, n])?;
    eigh(plan, a, &vals, &vecs, None, cfg)?;
    eig_apply(plan, &vals, &vecs, out, -1.0 / p as f32, eps, 0.0)
}

/// `(A + εI)^{-1/2}` into `inv_sqrt` and/or `(A + εI)^{1/2}` into `sqrt` by the coupled Newton–Schulz
/// iteration (§11.3): `Y = A/c, Z = I; T = (3I − ZY)/2; Y ← YT; Z ← TZ`, c = ‖A‖_F, `iters` steps
/// (~10 for κ ≈ 1e2, ~20 for κ ≈ 1e4).
pub fn sqrt_newton_schulz(
    plan: &mut PlanBuilder,
    a: &Tensor,
    inv_sqrt: Option<&Tensor>,
    sqrt: Option<&Tensor>,
    eps: f32,
    iters: u32,
) -> Result<()> {
    let first = inv_sqrt.or(sqrt).ok_or(Error::InvalidArgument {
        op: "sqrt_newton_schulz",
        name: "inv_sqrt",
        detail: "ask for at least one of inv_sqrt, sqrt".into(),
    })?;
    let (b, n) = check(a, first, eps, "sqrt_newton_schulz")?;
    if let (Some(x), Some(y)) = (inv_sqrt, sqrt) {
        check(x, y, eps, "sqrt_newton_schulz")?;
    }
    let shape = [b, n, n];
    let ar = plan.scratch(&shape)?;
    Axpby { x: Some(a), diag: eps, ..Axpby::new(&ar) }.record(plan)?;
    let c = plan.scratch(&[b])?;
    reduce(plan, &ar, ReduceOp::Norm, b, &c)?;
    let cs = |pow: f32| BatchScalar::of(&c).affine(1.0, 0.0, 1e-30).pow(pow);
    let (mut y, mut y2, mut z, mut z2, t) = (
        plan.scratch(&shape)?,
        plan.scratch(&shape)?,
        plan.scratch(&shape)?,
        plan.scratch(&shape)?,
        plan.scratch(&shape)?,
    );
    Axpby { x: Some(&ar), scale: Some(cs(-1.0)), ..Axpby::new(&y) }.record(plan)?;
    Axpby { diag: 1.0, ..Axpby::new(&z) }.record(plan)?;
    for _ in 0..iters {
        Matmul::new(&z, &y, &t).scaled(-0.5, None, 0.0).record(plan)?;
        Axpby { x: Some(&t), diag: 1.5, ..Axpby::new(&t) }.record(plan)?;
        Matmul::new(&y, &t, &y2).record(plan)?;
        Matmul::new(&t, &z, &z2).record(plan)?;
        std::mem::swap(&mut y, &mut y2);
        std::mem::swap(&mut z, &mut z2);
    }
    if let Some(o) = inv_sqrt {
        Axpby { x: Some(&z), scale: Some(cs(-0.5)), ..Axpby::new(o) }.record(plan)?;
    }
    if let Some(o) = sqrt {
        Axpby { x: Some(&y), scale: Some(cs(0.5)), ..Axpby::new(o) }.record(plan)?;
    }
    Ok(())
}
