//! FISMO and fismo_diag on the Kronecker engine (docs/optimizers.md §5): the factor updates, their roots, the
//! whitened momentum and its polar factor, all in the step plan (FISMO's roots in a refresh plan when amortized).
//! Every state write is skipped on a skipped step.

use super::{
    chunked, elementwise, ema, momentum, parts, sandwich, scale_sides, Apply, KronStack, KronU, BACK, PROJECT,
};
use crate::error::{Error, Result};
use crate::gpu::{Gpu, Plan, PlanBuilder, Tensor};
use crate::linalg::{copy, eigh, gram, polar_stacks, trace, EighConfig, GramSide, Matmul, Trans};
use crate::optim::optimizer::Bucket;
use crate::optim::{FismoConfig, FismoDiagConfig};

/// The smallest eigenvalue taken for `λ^{-1/2}`: the damping keeps real ones far above it.
const EIG_FLOOR: f32 = 1e-30;

fn missing(what: &str) -> Error {
    Error::Device(format!("FISMO stack without its {what}"))
}

impl KronStack {
    /// `F ← d·X/tr X` with `X = γF + (1−γ)(w·Gram(y) + μI)` on side `s` (Gram rows for the left, columns for the
    /// right).
    #[allow(clippy::too_many_arguments)]
    fn fismo_factor(
        &self,
        plan: &mut PlanBuilder,
        scalars: &Tensor,
        s: usize,
        y: &Tensor,
        w: f32,
        gamma: f32,
        mu: f32,
    ) -> Result<()> {
        let f = self.factors[s].as_ref().ok_or_else(|| missing("factors"))?;
        let d = f.shape()[1];
        let x = plan.scratch(f.shape())?;
        let side = if s == 0 { GramSide::Rows } else { GramSide::Cols };
        gram(plan, y, side, &x, (1.0 - gamma) * w, Some(f), gamma, Default::default())?;
        let tr = plan.scratch(&[self.count])?;
        trace(plan, &x, &tr)?;
        let u = KronU { total: f.numel() as u32, a: (1.0 - gamma) * mu, d: d as u32, ..Default::default() };
        elementwise(plan, "NORMALIZE", &[], u, &[scalars, &x, &tr, f])
    }

    /// Side `s`'s roots: eigenvectors (Jacobi warm-started from the current basis) and `λ^{-1/2}`, into scratch
    /// and committed to the basis and scale states on an applied step.
    fn fismo_roots(&self, plan: &mut PlanBuilder, scalars: &Tensor, s: usize) -> Result<(Tensor, Tensor)> {
        let (Some(f), Some(q), Some(scale)) = (&self.factors[s], &self.bases[s], &self.scales[s]) else {
            return Err(missing("roots"));
        };
        let d = f.shape()[1];
        let (vals, vecs) = (plan.scratch(&[self.count, d])?, plan.scratch(f.shape())?);
        eigh(plan, f, &vals, &vecs, Some(q), &EighConfig::default())?;
        let inv = plan.scratch(&[self.count, d])?;
        let u = KronU { total: (self.count * d) as u32, a: EIG_FLOOR, ..Default::default() };
        elementwise(plan, "RSQRT", &[], u, &[scalars, &vals, &inv])?;
        ema(plan, scalars, &vecs, q, 0.0, 1.0)?;
        ema(plan, scalars, &inv, scale, 0.0, 1.0)?;
        Ok((vecs, inv))
    }

    /// The stored roots of side `s` (basis, inverse square roots of the eigenvalues).
    fn stored_roots(&self, s: usize) -> Result<(Tensor, Tensor)> {
        match (&self.bases[s], &self.scales[s]) {
            (Some(q), Some(v)) => Ok((q.clone(), v.clone())),
            _ => Err(missing("roots")),
        }
    }
}

/// One FISMO stack between its momentum and the un-whitening: the momentum, its polar factor's scratch, a free
/// scratch of the stack's shape, and both sides' roots (basis, inverse square roots).
struct Whitened {
    mom: Tensor,
    o: Tensor,
    a: Tensor,
    roots: [(Tensor, Tensor); 2],
}

/// FISMO's step per stack (§5): P from the previous Q's roots, P's roots, Q from the new P's, Q's roots (inline
/// when `c.root_every == 1`, else the last refresh's), the whitened gradient `V_P·diag(s_P)·V_Pᵀ·G·V_Q·diag(s_Q)·V_Qᵀ`,
/// the momentum, its polar factor un-whitened into the direction buffer; then the apply.
pub(super) fn record_fismo(
    plan: &mut PlanBuilder,
    c: &FismoConfig,
    b: &Bucket,
    scalars: &Tensor,
    wg: u32,
) -> Result<()> {
    let (p, k) = parts(b)?;
    let inline = c.root_every == 1;
    // Per stack up to the momentum; the polar factors of all stacks in one call (middle products batched across
    // them); then each un-whitened.
    let mut whitened = Vec::with_capacity(k.stacks.len());
    for st in &k.stacks {
        let g = st.view(&p.ns_in)?;
        let (m, n) = (st.m as f32, st.n as f32);
        // L = G·Q⁻¹·Gᵀ/n from Y = G·V_Q·diag(s_Q).
        let (vr_old, sr_old) = st.stored_roots(1)?;
        let y = plan.scratch(g.shape())?;
        Matmul::new(&g, &vr_old, &y).record(plan)?;
        scale_sides(plan, b.group, scalars, &y, [None, Some(&sr_old)], false, 0, 0.0)?;
        st.fismo_factor(plan, scalars, 0, &y, 1.0 / n, c.gamma, c.mu)?;
        let (vl, sl) = if inline { st.fismo_roots(plan, scalars, 0)? } else { st.stored_roots(0)? };
        // R = Gᵀ·P⁻¹·G/m from Z = diag(s_P)·V_Pᵀ·G (the new P: Gauss–Seidel).
        let z = plan.scratch(g.shape())?;
        Matmul::new(&vl, &g, &z).trans(Trans::T, Trans::N).record(plan)?;
        scale_sides(plan, b.group, scalars, &z, [Some(&sl), None], false, 0, 0.0)?;
        st.fismo_factor(plan, scalars, 1, &z, 1.0 / m, c.gamma, c.mu)?;
        let (vr, sr) = if inline { st.fismo_roots(plan, scalars, 1)? } else { st.stored_roots(1)? };
        // The whitened gradient V_P·(Z·V_Q·diag(s_Q))·V_Qᵀ.
        let a = plan.scratch(g.shape())?;
        Matmul::new(&z, &vr, &a).record(plan)?;
        scale_sides(plan, b.group, scalars, &a, [None, Some(&sr)], false, 0, 0.0)?;
        let w = plan.scratch(g.shape())?;
        sandwich(plan, [Some(&vl), Some(&vr)], BACK, &a, &w)?;
        let mom = plan.scratch(g.shape())?;
        momentum(plan, st, b.group, scalars, &w, b.state("momentum_buffer")?, &mom, 0, 0.0)?;
        whitened.push(Whitened { mom, o: plan.scratch(g.shape())?, a, roots: [(vl, sl), (vr, sr)] });
    }
    let pairs: Vec<(&Tensor, &Tensor)> = whitened.iter().map(|w| (&w.mom, &w.o)).collect();
    polar_stacks(plan, &pairs, &c.polar)?;
    for (st, w) in k.stacks.iter().zip(&whitened) {
        // Un-whiten: P^{-1/2}·O·Q^{-1/2}.
        let [(vl, sl), (vr, sr)] = &w.roots;
        let bases = [Some(vl), Some(vr)];
        sandwich(plan, bases, PROJECT, &w.o, &w.a)?;
        scale_sides(plan, b.group, scalars, &w.a, [Some(sl), Some(sr)], false, 0, 0.0)?;
        sandwich(plan, bases, BACK, &w.a, &st.view(&p.ns_out)?)?;
    }
    chunked(plan, b, scalars, wg, Some(Apply::new(0, c.weight_decay)))
}

/// FISMO's amortized roots (`root_every > 1`): both sides' eigendecompositions from the current factors.
pub(super) fn fismo_refresh(gpu: &Gpu, st: &KronStack, scalars: &Tensor) -> Result<Plan> {
    let mut plan = PlanBuilder::new(gpu);
    for s in 0..2 {
        st.fismo_roots(&mut plan, scalars, s)?;
    }
    plan.build()
}

/// One fismo_diag side (`FISMO_DIAG`): side 0 updates `p` from `q`, side 1 `q` from the new `p`.
fn diag_side(
    plan: &mut PlanBuilder,
    st: &KronStack,
    scalars: &Tensor,
    g: &Tensor,
    s: usize,
    c: &FismoDiagConfig,
) -> Result<()> {
    let (Some(f), Some(other)) = (&st.factors[s], &st.factors[1 - s]) else {
        return Err(missing("diagonal factors"));
    };
    let tilde = plan.scratch(f.shape())?;
    let kernel =
        plan.gpu().kernel("optim/kron.wgsl", "main", &[("FISMO_DIAG", "1".to_string()), ("D", "1".to_string())])?;
    let u = KronU {
        src_off: g.offset() as u32,
        a: c.gamma,
        b: c.mu,
        rows: st.m as u32,
        cols: st.n as u32,
        side: s as u32,
        ..Default::default()
    };
    plan.dispatch(&kernel, &u, &[scalars, g, f, other, &tilde], [st.count as u32, 1, 1])
}

/// fismo_diag's step per stack (§5): `p`, then `q` from the new `p`, the momentum of `G/sqrt(p qᵀ)`, its polar
/// factor over `sqrt(p qᵀ)` into the direction buffer; then the apply.
pub(super) fn record_fismo_diag(
    plan: &mut PlanBuilder,
    c: &FismoDiagConfig,
    b: &Bucket,
    scalars: &Tensor,
    wg: u32,
) -> Result<()> {
    let (p, k) = parts(b)?;
    // Per stack up to the momentum; the polar factors of all stacks in one call; then each scaled back.
    let mut moms = Vec::with_capacity(k.stacks.len());
    for st in &k.stacks {
        let g = st.view(&p.ns_in)?;
        diag_side(plan, st, scalars, &g, 0, c)?;
        diag_side(plan, st, scalars, &g, 1, c)?;
        let sides = [st.factors[0].as_ref(), st.factors[1].as_ref()];
        let whitened = plan.scratch(g.shape())?;
        copy(plan, &g, &whitened)?;
        scale_sides(plan, b.group, scalars, &whitened, sides, true, 0, 0.0)?;
        let mom = plan.scratch(g.shape())?;
        momentum(plan, st, b.group, scalars, &whitened, b.state("momentum_buffer")?, &mom, 0, 0.0)?;
        moms.push((mom, st.view(&p.ns_out)?));
    }
    let pairs: Vec<(&Tensor, &Tensor)> = moms.iter().map(|(m, o)| (m, o)).collect();
    polar_stacks(plan, &pairs, &c.polar)?;
    for (st, (_, out)) in k.stacks.iter().zip(&moms) {
        let sides = [st.factors[0].as_ref(), st.factors[1].as_ref()];
        scale_sides(plan, b.group, scalars, out, sides, true, 0, 0.0)?;
    }
    chunked(plan, b, scalars, wg, Some(Apply::new(0, c.weight_decay)))
}
