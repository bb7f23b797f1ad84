//! PSGD-Kron on the Kronecker engine ([`PsgdKronConfig`], docs/optimizers.md §6). The step plan updates the
//! momentum; the preconditioner update is a refresh plan on the calls the update schedule picks (balance, probes,
//! `A`, `B` by triangular solves, both factors' steps from the old factors, committed on an applied step); the
//! direction `Q_Lᵀ·Q_L·M̂·Q_Rᵀ·Q_R`, its RMS clip and the apply run in the post plan after it, like Shampoo's.

use super::{chunked, elementwise_in, ema, matrix_grid, momentum, parts, KronStack, KronU};
use crate::error::{Error, Result};
use crate::gpu::{Gpu, Plan, PlanBuilder, Tensor};
use crate::linalg::{copy, gram, reduce, trsm, Axpby, GramSide, Matmul, ReduceOp, Side, Trans, Triangle};
use crate::optim::optimizer::Bucket;
use crate::optim::{Probes, PsgdKronConfig};

/// `sqrt(ε_f32)`: the scale of the probe added to the fitted momentum (kron_torch).
const PROBE_SCALE: f32 = 3.4526698e-4;

/// The factors Q are upper triangular (from the scaled identity, updates by upper-triangular steps): their
/// products skip the zero terms (transposed, they are lower triangular).
const UP: Option<Triangle> = Some(Triangle::Upper);
const LOW: Option<Triangle> = Some(Triangle::Lower);

/// One elementwise psgd.wgsl phase over `u.total` elements.
fn phase(plan: &mut PlanBuilder, name: &str, u: KronU, t: &[&Tensor]) -> Result<()> {
    elementwise_in(plan, "optim/psgd.wgsl", name, &[], u, t)
}

/// A psgd.wgsl phase on [`matrix_grid`]'s per-matrix grid.
fn matrix_phase(plan: &mut PlanBuilder, name: &str, u: KronU, count: usize, t: &[&Tensor]) -> Result<()> {
    matrix_grid(plan, "optim/psgd.wgsl", name, u, count, t)
}

fn missing() -> Error {
    Error::Device("PSGD-Kron stack without both factors".into())
}

impl KronStack {
    fn psgd_factors(&self) -> Result<[&Tensor; 2]> {
        match &self.factors {
            [Some(l), Some(r)] => Ok([l, r]),
            _ => Err(missing()),
        }
    }

    /// The debiased momentum `M/(1 − β1^t)` into a scratch.
    fn debiased(&self, plan: &mut PlanBuilder, b: &Bucket, scalars: &Tensor) -> Result<Tensor> {
        let out = plan.scratch(&[self.count, self.m, self.n])?;
        let u = KronU {
            total: out.numel() as u32,
            dst_off: self.offset as u32,
            group: b.group as u32,
            ..Default::default()
        };
        phase(plan, "MH", u, &[scalars, b.state("exp_avg")?, &out])?;
        Ok(out)
    }
}

/// The step plan's part after the gradient is gathered: the momentum.
pub(super) fn record_step(plan: &mut PlanBuilder, b: &Bucket, scalars: &Tensor) -> Result<()> {
    let (p, k) = parts(b)?;
    for st in &k.stacks {
        let g = st.view(&p.ns_in)?;
        let unused = plan.scratch(g.shape())?;
        momentum(plan, st, b.group, scalars, &g, b.state("exp_avg")?, &unused, 0, 0.0)?;
    }
    Ok(())
}

/// kron_torch's `_norm_lower_bound` per matrix of a `[count, d, d]` stack, into `[count]`.
fn lower_bound(plan: &mut PlanBuilder, x: &Tensor, out: &Tensor) -> Result<()> {
    let (count, d, _) = x.matrices("psgd lower bound")?;
    let kernel = plan.gpu().kernel("optim/psgd.wgsl", "main", &[("LB", "1".to_string()), ("D", d.to_string())])?;
    let u = KronU { d: d as u32, ..Default::default() };
    plan.dispatch(&kernel, &u, &[x, out], [count as u32, 1, 1])
}

/// The preconditioner update of one stack (a refresh plan).
pub(super) fn psgd_refresh(
    gpu: &Gpu,
    c: &PsgdKronConfig,
    st: &KronStack,
    b: &Bucket,
    scalars: &Tensor,
) -> Result<Plan> {
    let mut plan = PlanBuilder::new(gpu);
    record_update(&mut plan, c, st, b, scalars)?;
    plan.build()
}

fn record_update(
    plan: &mut PlanBuilder,
    c: &PsgdKronConfig,
    st: &KronStack,
    b: &Bucket,
    scalars: &Tensor,
) -> Result<()> {
    let (p, _) = parts(b)?;
    let [ql, qr] = st.psgd_factors()?;
    let shape = [st.count, st.m, st.n];
    let (mn, dd) = ((st.m * st.n) as u32, [(st.m * st.m) as u32, (st.n * st.n) as u32]);
    let base = KronU { group: b.group as u32, rows: st.m as u32, cols: st.n as u32, ..Default::default() };
    // Balance: both factors to the geometric mean of their max-norms (committed on an applied step).
    let norms = [plan.scratch(&[st.count])?, plan.scratch(&[st.count])?];
    reduce(plan, ql, ReduceOp::MaxAbs, st.count, &norms[0])?;
    reduce(plan, qr, ReduceOp::MaxAbs, st.count, &norms[1])?;
    for (s, q) in [ql, qr].into_iter().enumerate() {
        let d = [st.m, st.n][s] as u32;
        let u = KronU { total: dd[s] * st.count as u32, rows: d, cols: d, ..base };
        matrix_phase(plan, "BALANCE", u, st.count, &[scalars, &norms[s], &norms[1 - s], q])?;
    }
    // The probes V and the fitted matrix Gin = M̂ (or G) + sqrt(ε)·mean|·|·V.
    let v = match c.probes {
        Probes::Hash { seed } => {
            let v = plan.scratch(&shape)?;
            let u = KronU { total: mn * st.count as u32, dst_off: st.offset as u32, flags: seed, ..base };
            phase(plan, "NOISE", u, &[scalars, &v])?;
            v
        }
        Probes::External => st.view(b.state("probe")?)?,
    };
    let gin = if c.momentum_into_precond_update {
        st.debiased(plan, b, scalars)?
    } else {
        let g = plan.scratch(&shape)?;
        copy(plan, &st.view(&p.ns_in)?, &g)?;
        g
    };
    let l1 = plan.scratch(&[st.count])?;
    reduce(plan, &gin, ReduceOp::L1, st.count, &l1)?;
    let u = KronU { total: mn * st.count as u32, src_off: v.offset() as u32, a: PROBE_SCALE, ..base };
    matrix_phase(plan, "GIN", u, st.count, &[scalars, &l1, &v, &gin])?;
    // A = Q_L·Gin·Q_Rᵀ; B = Q_L^{-T}·V·Q_R^{-1}.
    let (t, a) = (plan.scratch(&shape)?, plan.scratch(&shape)?);
    Matmul::new(ql, &gin, &t).triangular(UP, None).record(plan)?;
    Matmul::new(&t, qr, &a).trans(Trans::N, Trans::T).triangular(None, LOW).record(plan)?;
    let bm = plan.scratch(&shape)?;
    trsm(plan, ql, false, Trans::T, Side::Left, &v, &t)?;
    trsm(plan, qr, false, Trans::N, Side::Right, &t, &bm)?;
    // Each side's step from the old factors, then both committed.
    let mut steps = Vec::new();
    for (s, (q, side)) in [(ql, GramSide::Rows), (qr, GramSide::Cols)].into_iter().enumerate() {
        let (d, fs) = ([st.m, st.n][s], q.shape().to_vec());
        let (aa, bb, diff, sum) = (plan.scratch(&fs)?, plan.scratch(&fs)?, plan.scratch(&fs)?, plan.scratch(&fs)?);
        gram(plan, &bm, side, &bb, 1.0, None, 0.0, Default::default())?;
        gram(plan, &a, side, &aa, 1.0, None, 0.0, Default::default())?;
        // T1 − T2 and T1 + T2 from one Gram product of A (the values of two products with C = ∓T2).
        Axpby { x: Some(&aa), y: Some(&bb), b: -1.0, ..Axpby::new(&diff) }.record(plan)?;
        Axpby { x: Some(&aa), y: Some(&bb), ..Axpby::new(&sum) }.record(plan)?;
        let lb = plan.scratch(&[st.count])?;
        lower_bound(plan, &sum, &lb)?;
        let e = plan.scratch(&fs)?;
        let u = KronU { total: dd[s] * st.count as u32, a: c.precond_lr, rows: d as u32, cols: d as u32, ..base };
        matrix_phase(plan, "TRIU", u, st.count, &[scalars, &diff, &lb, &e])?;
        let eq = plan.scratch(&fs)?;
        Matmul::new(&e, q, &eq).triangular(UP, UP).record(plan)?;
        steps.push((eq, q));
    }
    for (eq, q) in steps {
        ema(plan, scalars, &eq, q, 1.0, -1.0)?;
    }
    Ok(())
}

/// The direction `Q_Lᵀ·Q_L·M̂·Q_Rᵀ·Q_R`, RMS-clipped into the direction buffer, then the coupled apply.
pub(super) fn record_post(
    plan: &mut PlanBuilder,
    c: &PsgdKronConfig,
    b: &Bucket,
    scalars: &Tensor,
    wg: u32,
) -> Result<()> {
    let (p, k) = parts(b)?;
    for st in &k.stacks {
        let [ql, qr] = st.psgd_factors()?;
        let mh = st.debiased(plan, b, scalars)?;
        let (t1, t2) = (plan.scratch(mh.shape())?, plan.scratch(mh.shape())?);
        Matmul::new(ql, &mh, &t1).triangular(UP, None).record(plan)?;
        Matmul::new(ql, &t1, &t2).trans(Trans::T, Trans::N).triangular(LOW, None).record(plan)?;
        Matmul::new(&t2, qr, &t1).trans(Trans::N, Trans::T).triangular(None, LOW).record(plan)?;
        Matmul::new(&t1, qr, &t2).triangular(None, UP).record(plan)?;
        let norms = plan.scratch(&[st.count])?;
        reduce(plan, &t2, ReduceOp::Norm, st.count, &norms)?;
        let u = KronU { a: c.rms_clip, rows: st.m as u32, cols: st.n as u32, ..KronU::stack(st, b.group) };
        matrix_phase(plan, "CLIP", u, st.count, &[scalars, &t2, &norms, &p.ns_out])?;
    }
    chunked(plan, b, scalars, wg, Some(super::Apply::new(0, c.weight_decay)))
}
