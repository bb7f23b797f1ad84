//! SOAP, Shampoo, KL-Shampoo, SPlus, SPA and FISMO on the engine (docs/optimizers.md §4, §5): factor states per
//! same-shape stack, the every-step work recorded into the step plan, and the expensive refreshes (eigenbases,
//! inverse roots) as separate plans that [`crate::optim::Optimizer::step`] records into the same encoder on a host-side cadence —
//! still one submit, no readback. A static plan cannot skip dispatches on a device-side condition without paying
//! for them, so the host decides when a refresh runs (from the number of step calls, which a checkpoint keeps);
//! every refresh result is committed only when the step was applied, so a skipped step changes nothing.
//!
//! Step order: SOAP records everything in the step plan (project, Adam in the eigenbasis, project back, apply,
//! factor EMAs) and refreshes after it; Shampoo updates its factors in the step plan, computes roots in the
//! refresh, and takes its direction in the `post` plan after the refresh, as the reference orders them. SPlus
//! and SPA take the sign of the momentum in the eigenbasis and apply it in the step plan; their refresh is a
//! full eigendecomposition of the factors (cold on the first call, warm-started from the previous basis later).
//! FISMO (submodule `fismo`) updates its factors, their roots and its whitened polar direction in the step plan.

use bytemuck::{Pod, Zeroable};

use crate::error::{Error, Result};
use crate::gpu::{Gpu, Plan, PlanBuilder, Tensor};
use crate::linalg::{
    copy, eig_apply, eigh, gram, gram_guarded, inverse_root_newton, qr_q_in_place, reduce, EighConfig, GramSide,
    Matmul, ReduceOp, Trans,
};
use crate::optim::config::{
    sides, Basis, Grafting, Normalization, RootMethod, ShampooConfig, SpaConfig, UpdateCounter, UpdateSchedule,
    WhitenConfig, GPU_MIN_STAGGER_CHUNK,
};
use crate::optim::optimizer::{Bucket, ParamSlot, StackParts, StateView};
use crate::optim::stages::{grid, StackUniform, MAX_GROUPS};
use crate::optim::{Group, OptimizerConfig};

mod fismo;
mod psgd;
mod whiten;

/// The factor states of one same-shape stack `[count, m, n]` at `offset` in the bucket's state layout. Index 0
/// is the left (m×m) side, 1 the right (n×n); an absent side (above `max_precond_dim`) is the identity.
pub(crate) struct KronStack {
    offset: usize,
    count: usize,
    m: usize,
    n: usize,
    /// `L ≈ E[GGᵀ]`, `R ≈ E[GᵀG]` (SOAP's `GG`, Shampoo's factors).
    factors: [Option<Tensor>; 2],
    /// SOAP's eigenbases `Q`; Shampoo's eigenvectors (warm starts).
    bases: [Option<Tensor>; 2],
    /// Shampoo's inverse roots.
    roots: [Option<Tensor>; 2],
    /// KL-Shampoo's inverse square roots of the eigenvalue estimates, FISMO's of its factors' eigenvalues,
    /// `[count, d]`.
    scales: [Option<Tensor>; 2],
    /// The whitening grid's rank-1 second moment: row and column EMAs, `[count, m]` and `[count, n]`.
    variance: [Option<Tensor>; 2],
}

/// A bucket's factor states, one entry per stack.
pub(crate) struct KronParts {
    stacks: Vec<KronStack>,
}

/// When a stack's refresh runs.
enum Cadence {
    /// SOAP: initialization on call 0, then every `period` calls (shifted by `offset` when staggered).
    Soap { period: u64, offset: u64 },
    /// Shampoo: on 1-based step s − offset per [`ShampooConfig::refreshes_at`]; the first (at the start step)
    /// runs `init` when there is one (eigh from cold).
    Shampoo { cfg: ShampooConfig, offset: u64 },
    /// SPlus, SPA, amortized FISMO: `init` (else `plan`) on call 0, then on 1-based step s when `s ≥ offset` and `s − offset` is a multiple of
    /// `period`.
    Eigen { period: u64, offset: u64 },
    /// PSGD-Kron: the preconditioner update on the calls its schedule picks.
    Psgd { schedule: UpdateSchedule, counter: UpdateCounter },
}

/// A stack's refresh plans.
pub(crate) struct Refresh {
    init: Option<Plan>,
    plan: Plan,
    cadence: Cadence,
}

impl Refresh {
    /// The plan to run after the step plan of call `call` (0-based), if any.
    pub(crate) fn due(&self, call: u64) -> Option<&Plan> {
        match &self.cadence {
            Cadence::Soap { period, offset } => {
                if call == 0 {
                    self.init.as_ref()
                } else {
                    (call >= *offset && (call - offset).is_multiple_of(*period)).then_some(&self.plan)
                }
            }
            Cadence::Shampoo { cfg, offset } => {
                let s = call + 1;
                if !(s > *offset && cfg.refreshes_at(s - offset)) {
                    None
                } else if s - offset == cfg.start() as u64 {
                    // The first roots: nothing to warm-start from yet.
                    self.init.as_ref().or(Some(&self.plan))
                } else {
                    Some(&self.plan)
                }
            }
            Cadence::Psgd { schedule, counter } => counter.updates_at(schedule, call).then_some(&self.plan),
            Cadence::Eigen { period, offset } => {
                let s = call + 1;
                if call == 0 {
                    self.init.as_ref().or(Some(&self.plan))
                } else {
                    (s >= *offset && (s - offset).is_multiple_of(*period)).then_some(&self.plan)
                }
            }
        }
    }

    /// Its steady cadence: (the first call whose refresh follows the cold initial one, the period in calls).
    /// `None` for PSGD-Kron, whose schedule is not periodic (and whose counter `due` advances), and past 2²⁶
    /// calls.
    pub(crate) fn cadence(&self) -> Option<(u64, u64)> {
        let (period, start, offset) = match &self.cadence {
            Cadence::Soap { period, offset } | Cadence::Eigen { period, offset } => (*period, 0, *offset),
            Cadence::Shampoo { cfg, offset } => (cfg.precondition_frequency as u64, cfg.start() as u64, *offset),
            Cadence::Psgd { .. } => return None,
        };
        // The second call with a refresh (the first is the cold one: an `init` plan or Shampoo's first roots),
        // found by asking `due` itself; it lies within the offset, the start step and two periods.
        let bound = offset + start + 2 * period.max(1) + 2;
        if bound > 1 << 26 {
            return None; // nothing a benchmark could time; and not worth the scan
        }
        let warm = (0..bound).filter(|&c| self.due(c).is_some()).nth(1)?;
        Some((warm, period.max(1)))
    }

    /// Dispatches of its larger plan (for reports).
    pub(crate) fn dispatch_count(&self) -> usize {
        self.plan.dispatch_count().max(self.init.as_ref().map_or(0, Plan::dispatch_count))
    }
}

const SIDE: [&str; 2] = ["left", "right"];

/// `count` copies of `diag·I` (d×d).
fn eye(gpu: &Gpu, count: usize, d: usize, diag: f32) -> Result<Tensor> {
    let mut v = vec![0.0f32; count * d * d];
    for b in 0..count {
        for i in 0..d {
            v[b * d * d + i * d + i] = diag;
        }
    }
    Tensor::from_slice(gpu, &[count, d, d], &v)
}

fn bad(detail: String) -> Error {
    Error::InvalidArgument { op: "OptimizerBuilder::build", name: "rules", detail }
}

/// Allocate the factor states of a whitening bucket (factors zero, bases and roots the identity, KL-Shampoo's
/// eigenvalue scales `init_factor^{-1/2}`) and add their views (`factor_left`, `basis_left`, `inv_root_left`
/// shaped d×d, `inv_sqrt_eig_left` shaped d, …) to the bucket's parameter slots.
pub(crate) fn attach(
    gpu: &Gpu,
    opt: &OptimizerConfig,
    bucket: &mut Bucket,
    b: usize,
    slots: &mut [(usize, ParamSlot)],
) -> Result<()> {
    // SPlus and SPA precondition dimensions below max_dim (the references' `d < max_dim`); Shampoo, KL-Shampoo
    // and FISMO need both sides (`field` empty); fismo_diag keeps diagonal factors (no eigensolver).
    let limit = crate::linalg::MAX_EIGH_DIM;
    let (max_dim, keep_basis, field) = match opt {
        OptimizerConfig::Soap(c) => (c.max_precond_dim, true, "max_precond_dim"),
        OptimizerConfig::Shampoo(c) => (limit, c.root_method == RootMethod::Eigh, ""),
        OptimizerConfig::KlShampoo(_) | OptimizerConfig::Fismo(_) => (limit, true, ""),
        OptimizerConfig::Splus(c) => (c.max_dim.saturating_sub(1), true, "max_dim"),
        OptimizerConfig::Spa(c) => (c.max_dim.saturating_sub(1), true, "max_dim"),
        OptimizerConfig::FismoDiag(_) => (usize::MAX, false, "diagonal"),
        // The grid's eigenbasis is SPA's; its other bases keep no factors.
        OptimizerConfig::Whiten(c) if c.basis == Basis::Eigen => (c.max_dim.saturating_sub(1), true, "max_dim"),
        OptimizerConfig::Whiten(_) => (0, false, "max_dim"),
        OptimizerConfig::PsgdKron(_) => (limit, false, ""),
        _ => return Ok(()),
    };
    let shampoo = matches!(opt, OptimizerConfig::Shampoo(_));
    let diagonal = matches!(opt, OptimizerConfig::FismoDiag(_));
    let factored = matches!(opt, OptimizerConfig::Whiten(c) if c.normalization == Normalization::VarianceFactorized);
    // Factors that start at a multiple of the identity: FISMO's at I, PSGD's at sqrt(precond_init_scale)·I.
    let identity_scale = match opt {
        OptimizerConfig::Fismo(_) => Some(1.0),
        OptimizerConfig::PsgdKron(c) => Some(c.precond_init_scale.sqrt()),
        _ => None,
    };
    // The eigenvalue scales' starting values: KL-Shampoo's init_factor^{-1/2}, FISMO's 1 (P = I).
    let scale0 = match opt {
        OptimizerConfig::KlShampoo(c) => Some(1.0 / c.init_factor.sqrt()),
        OptimizerConfig::Fismo(_) => Some(1.0),
        _ => None,
    };
    let parts = bucket.stack.as_ref().ok_or_else(|| Error::Device("whitening bucket without stacks".into()))?;
    let mut stacks = Vec::new();
    for &(offset, count, m, n, _) in &parts.stacks {
        let on = sides(m, n, max_dim);
        let too_large = (on.0 && m > limit) || (on.1 && n > limit) || (field.is_empty() && (m > limit || n > limit));
        if too_large && !diagonal {
            return Err(bad(format!(
                "{}: a {m}×{n} matrix has a side above the device eigensolver's {limit}{}",
                opt.name(),
                if field.is_empty() {
                    "; route it to another optimizer".to_string()
                } else {
                    format!("; set {field} ≤ {limit}")
                }
            )));
        }
        let mut st = KronStack {
            offset,
            count,
            m,
            n,
            factors: [None, None],
            bases: [None, None],
            roots: [None, None],
            scales: [None, None],
            variance: [None, None],
        };
        if factored {
            st.variance = [Some(Tensor::zeros(gpu, &[count, m])?), Some(Tensor::zeros(gpu, &[count, n])?)];
        }
        for (s, (present, d)) in [(on.0, m), (on.1, n)].into_iter().enumerate() {
            if !present {
                continue;
            }
            // fismo_diag's factors start at ones, FISMO's and PSGD's at a multiple of I, the others' at zero.
            st.factors[s] = Some(if diagonal {
                Tensor::from_slice(gpu, &[count, d], &vec![1.0; count * d])?
            } else if let Some(scale) = identity_scale {
                eye(gpu, count, d, scale)?
            } else {
                Tensor::zeros(gpu, &[count, d, d])?
            });
            if keep_basis {
                st.bases[s] = Some(eye(gpu, count, d, 1.0)?);
            }
            if shampoo {
                st.roots[s] = Some(eye(gpu, count, d, 1.0)?);
            }
            if let Some(s0) = scale0 {
                st.scales[s] = Some(Tensor::from_slice(gpu, &[count, d], &vec![s0; count * d])?);
            }
        }
        stacks.push(st);
    }
    // Register every tensor as a bucket state and give each parameter its d×d views.
    for (k, st) in stacks.iter().enumerate() {
        let per = st.m * st.n;
        // (state name, buffer, shape of one matrix's view)
        let mut named: Vec<(String, usize, Vec<usize>)> = Vec::new();
        for (s, side) in SIDE.iter().enumerate() {
            for (what, t) in [
                ("factor", &st.factors[s]),
                ("basis", &st.bases[s]),
                ("inv_root", &st.roots[s]),
                ("inv_sqrt_eig", &st.scales[s]),
                ("exp_avg_sq", &st.variance[s]),
            ] {
                if let Some(t) = t {
                    let shape = t.shape()[1..].to_vec();
                    named.push((format!("{what}_{side}"), bucket.states.len(), shape));
                    bucket.states.push((format!("{what}_{side}.{k}"), t.clone()));
                }
            }
        }
        for (_, slot) in slots.iter_mut().filter(|(_, s)| s.bucket == b) {
            if slot.state_offset < st.offset || slot.state_offset >= st.offset + st.count * per {
                continue;
            }
            let j = (slot.state_offset - st.offset) / per;
            for (name, buffer, shape) in &named {
                slot.states.push(StateView {
                    name: name.clone(),
                    buffer: *buffer,
                    offset: j * shape.iter().product::<usize>(),
                    shape: shape.clone(),
                });
            }
        }
    }
    bucket.kron = Some(KronParts { stacks });
    Ok(())
}

/// The uniforms of kron.wgsl and psgd.wgsl (shaders/optim/kron_uniforms.wgsl).
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Default)]
struct KronU {
    total: u32,
    dst_off: u32,
    src_off: u32,
    group: u32,
    a: f32,
    b: f32,
    c: f32,
    flags: u32,
    d: u32,
    rows: u32,
    cols: u32,
    side: u32,
}

impl KronU {
    /// Uniforms over a whole stack: every element of its `count` matrices, state at the stack's offset, `group`'s
    /// step scalars; the rest zero.
    fn stack(st: &KronStack, group: usize) -> KronU {
        KronU {
            total: (st.count * st.m * st.n) as u32,
            dst_off: st.offset as u32,
            group: group as u32,
            ..Default::default()
        }
    }
}

/// One elementwise kron.wgsl phase over `u.total` elements.
fn elementwise(plan: &mut PlanBuilder, phase: &str, defines: &[(&str, String)], u: KronU, t: &[&Tensor]) -> Result<()> {
    elementwise_in(plan, "optim/kron.wgsl", phase, defines, u, t)
}

/// One elementwise phase of `file` (kron.wgsl's uniform layout and grid) over `u.total` elements.
fn elementwise_in(
    plan: &mut PlanBuilder,
    file: &str,
    phase: &str,
    defines: &[(&str, String)],
    u: KronU,
    t: &[&Tensor],
) -> Result<()> {
    let mut all = vec![(phase, "1".to_string()), ("ELEMENTWISE", "1".to_string()), ("D", "1".to_string())];
    all.extend(defines.iter().cloned());
    let kernel = plan.gpu().kernel(file, "main", &all)?;
    let (gx, gy) = grid(u.total.div_ceil(64) as usize);
    plan.dispatch(&kernel, &u, t, [gx, gy, 1])
}

/// A phase of `file` (kron.wgsl's uniform layout) over every element of `count` matrices of `u.rows × u.cols` on a
/// per-matrix grid: 64 columns of a row per workgroup, rows along y, matrices along z, so that no element divides
/// its index (a per-lane division on CPU drivers); on vec4s where `u.cols` and the offsets allow (`VT`/`UT`, `W`
/// columns per invocation at offsets `LANES`; `u.cols`, `dst_off` and `src_off` then count vec4s). On lavapipe,
/// Shampoo's PREP over a period on GPT-small 15.7–18 → 5.2–5.4 ms, PSGD-Kron's BALANCE and TRIU per update
/// 31 → 9.3 ms.
fn matrix_grid(
    plan: &mut PlanBuilder,
    file: &str,
    phase: &str,
    mut u: KronU,
    count: usize,
    t: &[&Tensor],
) -> Result<()> {
    let vec4 = [u.cols, u.dst_off, u.src_off].iter().all(|x| x.is_multiple_of(4));
    let (vt, ut, w, lanes) = if vec4 {
        u.cols /= 4;
        u.dst_off /= 4;
        u.src_off /= 4;
        ("vec4<f32>", "vec4<u32>", "4", "vec4<u32>(0u, 1u, 2u, 3u)")
    } else {
        ("f32", "u32", "1", "0u")
    };
    let defines = [(phase, "1"), ("MATRIX_GRID", "1"), ("VT", vt), ("UT", ut), ("W", w), ("LANES", lanes)];
    let kernel = plan.gpu().kernel(file, "main", &defines.map(|(k, v)| (k, v.to_string())))?;
    plan.dispatch(&kernel, &u, t, [u.cols.div_ceil(64), u.rows, count as u32])
}

/// `dst[dst_off..] = a·dst + b·src` over `src`'s elements, skipped on a skipped step.
fn ema(plan: &mut PlanBuilder, scalars: &Tensor, src: &Tensor, dst: &Tensor, a: f32, b: f32) -> Result<()> {
    let u = KronU {
        total: src.numel() as u32,
        dst_off: dst.offset() as u32,
        src_off: src.offset() as u32,
        a,
        b,
        ..Default::default()
    };
    elementwise_vec(plan, "EMA", &[], u, &[scalars, src, dst])
}

/// An elementwise phase written for `VT` (EMA, MOMENTS, FILTER, COMBINE): on vec4s when `u`'s element count,
/// offsets and matrix size `d` are multiples of 4 (then counted in vec4s), else on scalars.
fn elementwise_vec(
    plan: &mut PlanBuilder,
    phase: &str,
    defines: &[(&str, String)],
    mut u: KronU,
    t: &[&Tensor],
) -> Result<()> {
    let vec4 = [u.total, u.dst_off, u.src_off, u.d].iter().all(|x| x.is_multiple_of(4));
    if vec4 {
        u.total /= 4;
        u.dst_off /= 4;
        u.src_off /= 4;
        u.d /= 4;
    }
    let mut all = vec![("VT", if vec4 { "vec4<f32>" } else { "f32" }.to_string())];
    all.extend(defines.iter().cloned());
    elementwise(plan, phase, &all, u, t)
}

/// `out = A·X·B` where A is the left side (transposed when `tl`) and B the right (transposed when `tr`); an
/// absent side is the identity.
fn sandwich(
    plan: &mut PlanBuilder,
    [l, r]: [Option<&Tensor>; 2],
    [tl, tr]: [Trans; 2],
    x: &Tensor,
    out: &Tensor,
) -> Result<()> {
    match (l, r) {
        (Some(l), Some(r)) => {
            let tmp = plan.scratch(x.shape())?;
            Matmul::new(l, x, &tmp).trans(tl, Trans::N).record(plan)?;
            Matmul::new(&tmp, r, out).trans(Trans::N, tr).record(plan)
        }
        (Some(l), None) => Matmul::new(l, x, out).trans(tl, Trans::N).record(plan),
        (None, Some(r)) => Matmul::new(x, r, out).trans(Trans::N, tr).record(plan),
        (None, None) => copy(plan, x, out),
    }
}

/// Into the eigenbasis: `Q_Lᵀ·X·Q_R`.
const PROJECT: [Trans; 2] = [Trans::T, Trans::N];
/// Back: `Q_L·X·Q_Rᵀ`.
const BACK: [Trans; 2] = [Trans::N, Trans::T];

impl KronStack {
    fn view(&self, t: &Tensor) -> Result<Tensor> {
        Tensor::from_buffer(t.gpu(), t.buffer().clone(), self.offset, &[self.count, self.m, self.n])
    }

    /// Matrices `start..start + len` of the stack, every state a view at their place.
    fn chunk(&self, start: usize, len: usize) -> Result<KronStack> {
        let part = |t: &Option<Tensor>| -> Result<Option<Tensor>> {
            t.as_ref()
                .map(|t| {
                    let per = t.numel() / self.count;
                    let mut shape = t.shape().to_vec();
                    shape[0] = len;
                    Tensor::from_buffer(t.gpu(), t.buffer().clone(), t.offset() + start * per, &shape)
                })
                .transpose()
        };
        let pair = |v: &[Option<Tensor>; 2]| -> Result<[Option<Tensor>; 2]> { Ok([part(&v[0])?, part(&v[1])?]) };
        Ok(KronStack {
            offset: self.offset + start * self.m * self.n,
            count: len,
            m: self.m,
            n: self.n,
            factors: pair(&self.factors)?,
            bases: pair(&self.bases)?,
            roots: pair(&self.roots)?,
            scales: pair(&self.scales)?,
            variance: pair(&self.variance)?,
        })
    }

    /// The stack once per side that has a factor, the other side's factor left out (what a refresh skips).
    fn sides(&self) -> Result<Vec<KronStack>> {
        let mut out = Vec::new();
        for s in (0..2).filter(|&s| self.factors[s].is_some()) {
            let mut one = self.chunk(0, self.count)?;
            one.factors[1 - s] = None;
            out.push(one);
        }
        Ok(out)
    }

    fn side(v: &[Option<Tensor>; 2]) -> [Option<&Tensor>; 2] {
        [v[0].as_ref(), v[1].as_ref()]
    }

    /// Factor EMAs `F ← β·F + w·Gram(G)` on each present side, in the Gram product itself (skipped with the
    /// step: the apply flag `scalars[0]` guards it).
    fn factor_ema(&self, plan: &mut PlanBuilder, scalars: &Tensor, g: &Tensor, beta: f32, w: f32) -> Result<()> {
        for (s, side) in [GramSide::Rows, GramSide::Cols].into_iter().enumerate() {
            if let Some(f) = &self.factors[s] {
                gram_guarded(plan, g, side, f, w, Some(f), beta, Default::default(), Some((scalars, 0)))?;
            }
        }
        Ok(())
    }
}

fn parts(b: &Bucket) -> Result<(&StackParts, &KronParts)> {
    match (&b.stack, &b.kron) {
        (Some(p), Some(k)) => Ok((p, k)),
        _ => Err(Error::Device("whitening bucket without its parts".into())),
    }
}

/// How the chunked apply phase writes the direction: muon.wgsl's flags, the weight decay, and SPlus's
/// evaluation point (the `x` state and the EMA rate).
#[derive(Clone, Copy)]
struct Apply<'a> {
    flags: u32,
    wd: f32,
    eval_ema: Option<(&'a Tensor, f32)>,
}

impl Apply<'_> {
    fn new(flags: u32, wd: f32) -> Self {
        Apply { flags, wd, eval_ema: None }
    }
}

/// The chunked muon.wgsl phases (gather the clipped gradient; apply a direction) over a bucket's tables.
fn chunked(plan: &mut PlanBuilder, b: &Bucket, scalars: &Tensor, wg: u32, apply: Option<Apply>) -> Result<()> {
    let (p, _) = parts(b)?;
    for t in &b.tables {
        let ty = if t.vec4 { "vec4<f32>" } else { "f32" };
        let phase = if apply.is_some() { "APPLY" } else { "COPY" };
        let eval_ema = apply.and_then(|a| a.eval_ema);
        let kernel = plan.gpu().kernel(
            "optim/muon.wgsl",
            "main",
            &[
                ("T", ty.into()),
                ("WG", wg.to_string()),
                (phase, "1".into()),
                ("EVAL_EMA", (eval_ema.is_some() as u32).to_string()),
            ],
        )?;
        let (gx, gy) = grid(t.chunks);
        match apply {
            Some(a) => {
                let mut u = StackUniform::new(t, b.group, a.flags, a.wd);
                let scale = t.scale.as_ref().ok_or_else(|| Error::Device("stack table without scales".into()))?;
                let mut tensors = vec![&t.table, scalars, scale, &b.param, &p.ns_out];
                if let Some((x, r)) = eval_ema {
                    u = u.with_ema_rate(r);
                    tensors.push(x);
                }
                plan.dispatch(&kernel, &u, &tensors, [gx, gy, 1])?
            }
            None => {
                let u = StackUniform::new(t, b.group, 0, 0.0);
                plan.dispatch(&kernel, &u, &[&t.table, scalars, &b.grad, &p.ns_in], [gx, gy, 1])?
            }
        }
    }
    Ok(())
}

/// The scale phase in place on a stack `x` of m×n matrices: rows times `l[row]`, columns times `r[col]` (each
/// `[count, d]`, absent: 1; `rsqrt`: their inverse square roots), `extra` flags 4 (saturate with `eps`) and 8
/// (unscaled on the first applied step).
#[allow(clippy::too_many_arguments)]
fn scale_sides(
    plan: &mut PlanBuilder,
    group: usize,
    scalars: &Tensor,
    x: &Tensor,
    [l, r]: [Option<&Tensor>; 2],
    rsqrt: bool,
    extra: u32,
    eps: f32,
) -> Result<()> {
    let (_, m, n) = x.matrices("scale_sides")?;
    let (Some(bl), Some(br)) = (l.or(r), r.or(l)) else { return Ok(()) };
    // Four elements per invocation (see kron.wgsl).
    let u = KronU {
        total: x.numel().div_ceil(4) as u32,
        d: x.numel() as u32,
        dst_off: x.offset() as u32,
        group: group as u32,
        a: eps,
        flags: l.is_some() as u32 | (r.is_some() as u32) << 1 | extra,
        rows: m as u32,
        cols: n as u32,
        ..Default::default()
    };
    elementwise(plan, "KL_SCALE", &[("SIDE_RSQRT", (rsqrt as u32).to_string())], u, &[scalars, x, bl, br])
}

/// KL-Shampoo's scale phase over a stack with its eigenvalue scales: flags 1 rows, 2 columns, 4 the saturation
/// `S/(1 + eps·S)`, 8 unscaled on the first applied step.
fn kl_scale(
    plan: &mut PlanBuilder,
    st: &KronStack,
    group: usize,
    scalars: &Tensor,
    x: &Tensor,
    flags: u32,
    eps: f32,
) -> Result<()> {
    let (Some(sl), Some(sr)) = (&st.scales[0], &st.scales[1]) else {
        return Err(Error::Device("KL-Shampoo stack without its eigenvalue scales".into()));
    };
    let sides = [(flags & 1 != 0).then_some(sl), (flags & 2 != 0).then_some(sr)];
    scale_sides(plan, group, scalars, x, sides, false, flags & 12, eps)
}

/// MOMENTUM over one stack: `M ← β1·M + (1−β1)·g` into `state` at the stack's offset (the flags of kron.wgsl's
/// MOMENTUM), and `(1 − lookahead)·M + lookahead·g` into `out`; `g` is a stack-shaped view.
#[allow(clippy::too_many_arguments)]
fn momentum(
    plan: &mut PlanBuilder,
    st: &KronStack,
    group: usize,
    scalars: &Tensor,
    g: &Tensor,
    state: &Tensor,
    out: &Tensor,
    flags: u32,
    lookahead: f32,
) -> Result<()> {
    let u = KronU {
        total: g.numel() as u32,
        dst_off: st.offset as u32,
        src_off: g.offset() as u32,
        group: group as u32,
        a: lookahead,
        flags,
        ..Default::default()
    };
    elementwise(plan, "MOMENTUM", &[], u, &[scalars, g, state, out])
}

/// KL-Shampoo's direction per stack: momentum, `Q_L·((Q_Lᵀ·M·Q_R) ⊙ S)·Q_Rᵀ` into the direction buffer.
fn record_kl_direction(
    plan: &mut PlanBuilder,
    c: &crate::optim::KlShampooConfig,
    b: &Bucket,
    scalars: &Tensor,
) -> Result<()> {
    let (p, k) = parts(b)?;
    let m_state = b.state("exp_avg")?;
    for st in &k.stacks {
        let g = st.view(&p.ns_in)?;
        let m = plan.scratch(g.shape())?;
        momentum(plan, st, b.group, scalars, &g, m_state, &m, 2, 0.0)?;
        let mp = plan.scratch(g.shape())?;
        sandwich(plan, KronStack::side(&st.bases), PROJECT, &m, &mp)?;
        kl_scale(plan, st, b.group, scalars, &mp, 1 | 2 | 4, c.eps)?;
        sandwich(plan, KronStack::side(&st.bases), BACK, &mp, &st.view(&p.ns_out)?)?;
    }
    Ok(())
}

impl KronStack {
    /// KL-Shampoo's per-step statistics from the raw gradient `g`, all from the old bases and scales: factors
    /// `S_L ← β S_L + (1−β)/n·Y_L·Y_Lᵀ` with `Y_L = G·Q_R·diag(s_R)` (and `S_R` from `Y_R = diag(s_L)·Q_Lᵀ·G`,
    /// `1/m`), then the eigenvalue EMAs from `D = Q_Lᵀ·G·Q_R`. On the first call Q = I and the scaling is off,
    /// so the factors get the raw `GGᵀ`, `GᵀG`.
    fn kl_statistics(
        &self,
        plan: &mut PlanBuilder,
        c: &crate::optim::KlShampooConfig,
        scalars: &Tensor,
        g: &Tensor,
        group: usize,
    ) -> Result<()> {
        let (Some(q_left), Some(q_right), Some(fl), Some(fr)) =
            (&self.bases[0], &self.bases[1], &self.factors[0], &self.factors[1])
        else {
            return Err(Error::Device("KL-Shampoo stack without both sides".into()));
        };
        let beta = c.beta2;
        let y_left = plan.scratch(g.shape())?;
        Matmul::new(g, q_right, &y_left).record(plan)?;
        kl_scale(plan, self, group, scalars, &y_left, 2 | 8, 0.0)?;
        let gg = plan.scratch(fl.shape())?;
        gram(plan, &y_left, GramSide::Rows, &gg, 1.0, None, 0.0, Default::default())?;
        ema(plan, scalars, &gg, fl, beta, (1.0 - beta) / self.n as f32)?;
        let y_right = plan.scratch(g.shape())?;
        Matmul::new(q_left, g, &y_right).trans(Trans::T, Trans::N).record(plan)?;
        let d = plan.scratch(g.shape())?;
        Matmul::new(&y_right, q_right, &d).record(plan)?;
        kl_scale(plan, self, group, scalars, &y_right, 1 | 8, 0.0)?;
        let gg = plan.scratch(fr.shape())?;
        gram(plan, &y_right, GramSide::Cols, &gg, 1.0, None, 0.0, Default::default())?;
        ema(plan, scalars, &gg, fr, beta, (1.0 - beta) / self.m as f32)?;
        // The eigenvalue EMAs: both diagonals from the old scales, then both scales updated.
        let (Some(sl), Some(sr)) = (&self.scales[0], &self.scales[1]) else {
            return Err(Error::Device("KL-Shampoo stack without its eigenvalue scales".into()));
        };
        let diag = plan.scratch(&[self.count, self.m + self.n])?;
        let u = KronU {
            total: (self.count * (self.m + self.n)) as u32,
            group: group as u32,
            a: c.clamp_for(self.m),
            b: c.clamp_for(self.n),
            rows: self.m as u32,
            cols: self.n as u32,
            ..Default::default()
        };
        elementwise(plan, "KL_DIAG", &[], u, &[scalars, &d, sl, sr, &diag])?;
        elementwise(plan, "KL_EIGS", &[], u, &[scalars, &diag, sl, sr])
    }
}

/// SPlus's and SPA's direction per stack: momentum (its lookahead into a scratch), the sign in the eigenbasis,
/// back to the original basis — into the direction buffer (SPlus), or through SPA's variance normalization.
fn record_sign(
    plan: &mut PlanBuilder,
    b: &Bucket,
    scalars: &Tensor,
    lookahead: f32,
    spa_eps: Option<f32>,
) -> Result<()> {
    let (p, k) = parts(b)?;
    let m_state = b.state("exp_avg")?;
    for st in &k.stacks {
        let g = st.view(&p.ns_in)?;
        let total = g.numel() as u32;
        let look = plan.scratch(g.shape())?;
        momentum(plan, st, b.group, scalars, &g, m_state, &look, spa_eps.is_some() as u32, lookahead)?;
        let rot = plan.scratch(g.shape())?;
        sandwich(plan, KronStack::side(&st.bases), PROJECT, &look, &rot)?;
        elementwise(plan, "SIGN", &[], KronU { total, ..Default::default() }, &[scalars, &rot])?;
        let Some(eps) = spa_eps else {
            sandwich(plan, KronStack::side(&st.bases), BACK, &rot, &st.view(&p.ns_out)?)?;
            continue;
        };
        // `look` is free again: it takes the sign direction in the original basis.
        sandwich(plan, KronStack::side(&st.bases), BACK, &rot, &look)?;
        let u = KronU { a: eps, ..KronU::stack(st, b.group) };
        elementwise(plan, "VARIANCE", &[], u, &[scalars, &look, b.state("exp_avg_sq")?, &p.ns_out])?;
    }
    Ok(())
}

/// The step plan's part of a SOAP or Shampoo bucket.
pub(crate) fn record_step(plan: &mut PlanBuilder, group: &Group, b: &Bucket, scalars: &Tensor, wg: u32) -> Result<()> {
    let (p, k) = parts(b)?;
    chunked(plan, b, scalars, wg, None)?;
    match &group.optimizer {
        OptimizerConfig::Soap(c) => {
            for st in &k.stacks {
                let g = st.view(&p.ns_in)?;
                let gp = plan.scratch(g.shape())?;
                sandwich(plan, KronStack::side(&st.bases), PROJECT, &g, &gp)?;
                let n = plan.scratch(g.shape())?;
                let u = KronU { a: c.eps, flags: c.correct_bias as u32, ..KronU::stack(st, b.group) };
                let (m, v) = (b.state("exp_avg")?, b.state("exp_avg_sq")?);
                elementwise_vec(plan, "MOMENTS", &[], u, &[scalars, &gp, m, v, &n])?;
                sandwich(plan, KronStack::side(&st.bases), BACK, &n, &st.view(&p.ns_out)?)?;
            }
            // p ← (p − lr·N)(1 − lr·wd); the first call only initializes.
            chunked(plan, b, scalars, wg, Some(Apply::new(4 | 8, c.weight_decay)))?;
            let beta = c.factor_beta();
            for st in &k.stacks {
                st.factor_ema(plan, scalars, &st.view(&p.ns_in)?, beta, 1.0 - beta)?;
            }
        }
        OptimizerConfig::Shampoo(c) => {
            let w = if c.beta2 == 1.0 { 1.0 } else { 1.0 - c.beta2 };
            for st in &k.stacks {
                st.factor_ema(plan, scalars, &st.view(&p.ns_in)?, c.beta2, w)?;
            }
        }
        OptimizerConfig::KlShampoo(c) => {
            record_kl_direction(plan, c, b, scalars)?;
            // p ← (p − lr·U)(1 − lr·wd); the first call only initializes.
            chunked(plan, b, scalars, wg, Some(Apply::new(4 | 8, c.weight_decay)))?;
            for st in &k.stacks {
                st.kl_statistics(plan, c, scalars, &st.view(&p.ns_in)?, b.group)?;
            }
        }
        OptimizerConfig::Splus(c) => {
            record_sign(plan, b, scalars, c.lookahead, None)?;
            // p ← p − lr'·U, the EMA of p, then p·(1 − lr'·wd) with the shape-scaled lr' (flags 4 | 16).
            let eval_ema = match c.ema_rate {
                Some(r) => Some((b.state("x")?, r)),
                None => None,
            };
            chunked(plan, b, scalars, wg, Some(Apply { flags: 4 | 16, wd: c.weight_decay, eval_ema }))?;
            for st in &k.stacks {
                st.factor_ema(plan, scalars, &st.view(&p.ns_in)?, c.beta2, 1.0 - c.beta2)?;
            }
        }
        OptimizerConfig::Spa(c) => {
            record_sign(plan, b, scalars, 0.0, Some(c.eps))?;
            // p ← p(1 − lr·wd) − lr·U: the harness's coupled decay.
            chunked(plan, b, scalars, wg, Some(Apply::new(0, c.weight_decay)))?;
            for st in &k.stacks {
                st.factor_ema(plan, scalars, &st.view(&p.ns_in)?, c.beta2, 1.0 - c.beta2)?;
            }
        }
        OptimizerConfig::Fismo(c) => fismo::record_fismo(plan, c, b, scalars, wg)?,
        OptimizerConfig::FismoDiag(c) => fismo::record_fismo_diag(plan, c, b, scalars, wg)?,
        OptimizerConfig::Whiten(c) => whiten::record(plan, c, b, scalars, wg)?,
        OptimizerConfig::PsgdKron(_) => psgd::record_step(plan, b, scalars)?,
        _ => {}
    }
    Ok(())
}

/// Shampoo's direction after the refreshes: filtered gradient, `L⁻ᐟʳ·Ḡ·R⁻ᐟʳ`, grafting, apply (WD-pre).
fn record_post(plan: &mut PlanBuilder, c: &ShampooConfig, b: &Bucket, scalars: &Tensor, wg: u32) -> Result<()> {
    let (p, k) = parts(b)?;
    let (graft_kind, graft_eps) = match c.grafting {
        None => (0, 0.0),
        Some(Grafting::Adam { eps, .. }) => (1, eps),
        Some(Grafting::Rmsprop { eps, .. }) => (2, eps),
        Some(Grafting::Adagrad { eps }) => (3, eps),
    };
    let has_ema = c.beta1 > 0.0;
    for st in &k.stacks {
        let g = st.view(&p.ns_in)?;
        let (gbar, graft) = (plan.scratch(g.shape())?, plan.scratch(g.shape())?);
        let u = KronU {
            src_off: st.offset as u32,
            a: c.beta3.unwrap_or(-1.0),
            b: graft_eps,
            flags: c.use_bias_correction as u32 | graft_kind << 1,
            ..KronU::stack(st, b.group)
        };
        let mut t: Vec<&Tensor> = vec![scalars, &g, &gbar, &graft];
        // Then the filtered-gradient EMA and the grafting state, when present (bindings 5, 6 in that order).
        let names = OptimizerConfig::Shampoo(c.clone()).kernel().states;
        for name in names {
            t.push(b.state(name)?);
        }
        let defines = [("HAS_EMA", (has_ema as u32).to_string()), ("HAS_GRAFT", ((graft_kind > 0) as u32).to_string())];
        elementwise_vec(plan, "FILTER", &defines, u, &t)?;
        let pre = plan.scratch(g.shape())?;
        sandwich(plan, KronStack::side(&st.roots), [Trans::N, Trans::N], &gbar, &pre)?;
        let (ng, np) = (plan.scratch(&[st.count])?, plan.scratch(&[st.count])?);
        if graft_kind > 0 {
            reduce(plan, &graft, ReduceOp::Norm, st.count, &ng)?;
            reduce(plan, &pre, ReduceOp::Norm, st.count, &np)?;
        }
        let u = KronU {
            a: c.start() as f32,
            flags: (graft_kind > 0) as u32,
            d: (st.m * st.n) as u32,
            ..KronU::stack(st, b.group)
        };
        elementwise_vec(plan, "COMBINE", &[], u, &[scalars, &pre, &graft, &ng, &np, &p.ns_out])?;
    }
    chunked(plan, b, scalars, wg, Some(Apply::new(0, c.weight_decay)))
}

/// SOAP's basis sort: new columns of `q` in descending order of `est` (eigh's values, or diag(Qᵀ·T) with
/// T = F·Q), into `q_out`; with `v = Some((v_in, v_out, side))` the second moment follows along that side; with
/// `power = Some(p)` (estimates from T) the columns of T follow into `p`: the power step `F·Q_sorted`.
/// Only the ranking runs one workgroup per matrix; the estimates and the moves use the whole device (one
/// workgroup per matrix took 1.4 ms per pair of 512² bases on an H100, 20 % of a refresh).
#[allow(clippy::too_many_arguments)]
fn sort_basis(
    plan: &mut PlanBuilder,
    st: &KronStack,
    d: usize,
    est: &Tensor,
    from_vals: bool,
    q: &Tensor,
    q_out: &Tensor,
    v: Option<(&Tensor, &Tensor, usize)>,
    power: Option<&Tensor>,
) -> Result<()> {
    // Q and V_in may be views (a staggered refresh's chunk); the rest are the refresh's scratches.
    let mut scratches = vec![("est", est), ("q_out", q_out)];
    scratches.extend(v.map(|x| ("v_out", x.1)));
    scratches.extend(power.map(|p| ("power", p)));
    crate::linalg::whole("sort_basis", &scratches)?;
    let count = st.count as u32;
    let columns = |n: usize| n.div_ceil(64) as u32;
    // Rows past WebGPU's grid limit per dimension are strided.
    let rows = |n: usize| n.min(MAX_GROUPS) as u32;
    let gpu = plan.gpu().clone();
    let phase = |name: &str, extra: &[(&str, String)]| {
        let mut defines = vec![(name, "1".to_string())];
        defines.extend(extra.iter().cloned());
        gpu.kernel("optim/kron.wgsl", "main", &defines)
    };
    let u = KronU { d: d as u32, dst_off: q.offset() as u32, ..Default::default() };
    let estimates = if from_vals {
        est.clone()
    } else {
        let e = plan.scratch(&[st.count, d])?;
        plan.dispatch(&phase("SORT_EST", &[])?, &u, &[q, est, &e], [columns(d), 1, count])?;
        e
    };
    let ranks = plan.scratch(&[st.count, d])?;
    plan.dispatch(&phase("SORT", &[("D", d.to_string())])?, &u, &[&estimates, &ranks], [count, 1, 1])?;
    let mut t = vec![&ranks, q, q_out];
    if let Some(p) = power {
        t.extend([est, p]);
    }
    let permute = phase("PERMUTE", &[("POWER", (power.is_some() as u32).to_string())])?;
    plan.dispatch(&permute, &u, &t, [columns(d), rows(d), count])?;
    if let Some((v_in, v_out, side)) = v {
        let kernel = phase("PERMUTE", &[("PERMUTE_V", "1".to_string())])?;
        let u = KronU {
            d: d as u32,
            rows: st.m as u32,
            cols: st.n as u32,
            side: side as u32,
            src_off: v_in.offset() as u32,
            ..Default::default()
        };
        plan.dispatch(&kernel, &u, &[&ranks, v_in, v_out], [columns(st.n), rows(st.m), count])?;
    }
    Ok(())
}

fn soap_init(gpu: &Gpu, st: &KronStack, scalars: &Tensor) -> Result<Plan> {
    let mut plan = PlanBuilder::new(gpu);
    for s in 0..2 {
        let (Some(f), Some(q)) = (&st.factors[s], &st.bases[s]) else { continue };
        let d = f.shape()[1];
        let (vals, vecs, q_new) = (plan.scratch(&[st.count, d])?, plan.scratch(f.shape())?, plan.scratch(f.shape())?);
        eigh(&mut plan, f, &vals, &vecs, None, &EighConfig::default())?;
        sort_basis(&mut plan, st, d, &vals, true, &vecs, &q_new, None, None)?;
        ema(&mut plan, scalars, &q_new, q, 0.0, 1.0)?;
    }
    plan.build()
}

/// SOAP's refresh (§4.6 QR_refresh): M back to the original basis, per side sort by the eigenvalue estimates (V
/// follows), one power step `F·Q` (the sort's product with permuted columns) and Householder QR, M into the new
/// basis; committed only on an applied step.
fn soap_refresh(gpu: &Gpu, st: &KronStack, b: &Bucket, scalars: &Tensor) -> Result<Plan> {
    let mut plan = PlanBuilder::new(gpu);
    let (m_state, v_state) = (b.state("exp_avg")?, b.state("exp_avg_sq")?);
    let m = st.view(m_state)?;
    let m_orig = plan.scratch(m.shape())?;
    sandwich(&mut plan, KronStack::side(&st.bases), BACK, &m, &m_orig)?;
    let mut v_cur = st.view(v_state)?;
    let mut new_bases: [Option<Tensor>; 2] = [None, None];
    for (s, (f, q)) in st.factors.iter().zip(&st.bases).enumerate() {
        let (Some(f), Some(q)) = (f, q) else { continue };
        let d = f.shape()[1];
        let t = plan.scratch(f.shape())?;
        Matmul::new(f, q, &t).record(&mut plan)?;
        let (q_sorted, v_next, power) = (plan.scratch(f.shape())?, plan.scratch(m.shape())?, plan.scratch(f.shape())?);
        sort_basis(&mut plan, st, d, &t, false, q, &q_sorted, Some((&v_cur, &v_next, s)), Some(&power))?;
        let q_new = plan.scratch(f.shape())?;
        qr_q_in_place(&mut plan, &power, &q_new)?;
        new_bases[s] = Some(q_new);
        v_cur = v_next;
    }
    let m_new = plan.scratch(m.shape())?;
    let new_sides = [new_bases[0].as_ref().or(st.bases[0].as_ref()), new_bases[1].as_ref().or(st.bases[1].as_ref())];
    sandwich(&mut plan, new_sides, PROJECT, &m_orig, &m_new)?;
    for (new, q) in new_bases.iter().zip(&st.bases) {
        if let (Some(new), Some(q)) = (new, q) {
            ema(&mut plan, scalars, new, q, 0.0, 1.0)?;
        }
    }
    ema(&mut plan, scalars, &v_cur, &st.view(v_state)?, 0.0, 1.0)?;
    ema(&mut plan, scalars, &m_new, &m, 0.0, 1.0)?;
    plan.build()
}

/// Shampoo's roots (§4.2 step 3): `(F/bc2 + εI)`, warm-started eigh, eigenvalues shifted up to ε, then
/// `Q·diag(λ^{-1/root})·Qᵀ`; committed (with the eigenvectors for the next warm start) on an applied step.
/// `cold`: the first roots, from scratch (a warm start from the identity would only add two products).
fn shampoo_refresh(
    gpu: &Gpu,
    c: &ShampooConfig,
    st: &KronStack,
    group: usize,
    scalars: &Tensor,
    cold: bool,
) -> Result<Plan> {
    let mut plan = PlanBuilder::new(gpu);
    for s in 0..2 {
        let (Some(f), Some(root)) = (&st.factors[s], &st.roots[s]) else { continue };
        let d = f.shape()[1];
        let bias = c.use_bias_correction.then_some(c.beta2);
        let prep = prepared(&mut plan, scalars, f, st.count, group, c.epsilon, bias)?;
        let new_root = plan.scratch(f.shape())?;
        let Some(q) = &st.bases[s] else {
            // Coupled Newton (no eigenbasis kept).
            let iterations = match c.root_method {
                RootMethod::CoupledNewton { iterations } => iterations,
                RootMethod::Eigh => return Err(Error::Device("Shampoo eigh stack without a basis".into())),
            };
            inverse_root_newton(&mut plan, &prep, &new_root, c.root, 0.0, iterations)?;
            ema(&mut plan, scalars, &new_root, root, 0.0, 1.0)?;
            continue;
        };
        let (vals, vecs) = (plan.scratch(&[st.count, d])?, plan.scratch(f.shape())?);
        eigh(&mut plan, &prep, &vals, &vecs, (!cold).then_some(q), &EighConfig::default())?;
        let shift =
            plan.gpu().kernel("optim/kron.wgsl", "main", &[("SHIFT", "1".to_string()), ("D", "1".to_string())])?;
        let u = KronU { a: c.epsilon, d: d as u32, ..Default::default() };
        plan.dispatch(&shift, &u, &[&vals], [st.count as u32, 1, 1])?;
        eig_apply(&mut plan, &vals, &vecs, &new_root, -1.0 / c.root as f32, 0.0, 0.0)?;
        ema(&mut plan, scalars, &vecs, q, 0.0, 1.0)?;
        ema(&mut plan, scalars, &new_root, root, 0.0, 1.0)?;
    }
    plan.build()
}

/// KL-Shampoo's basis refresh (§4.4): `Q ← qr(S·Q)` per side, no reordering (the eigenvalue estimates stay with
/// their columns); committed on an applied step.
fn kl_refresh(gpu: &Gpu, st: &KronStack, scalars: &Tensor) -> Result<Plan> {
    let mut plan = PlanBuilder::new(gpu);
    for (f, q) in st.factors.iter().zip(&st.bases) {
        let (Some(f), Some(q)) = (f, q) else { continue };
        let power = plan.scratch(f.shape())?;
        Matmul::new(f, q, &power).record(&mut plan)?;
        let q_new = plan.scratch(f.shape())?;
        qr_q_in_place(&mut plan, &power, &q_new)?;
        ema(&mut plan, scalars, &q_new, q, 0.0, 1.0)?;
    }
    plan.build()
}

/// `F / bc + εI` for each of the `count` d×d factors `f` (PREP), into a new scratch: the input of their
/// eigendecomposition. `bias`: the factors' β2 when divided by their bias correction `bc = 1 − β2^t` (else 1).
fn prepared(
    plan: &mut PlanBuilder,
    scalars: &Tensor,
    f: &Tensor,
    count: usize,
    group: usize,
    eps: f32,
    bias: Option<f32>,
) -> Result<Tensor> {
    let d = f.shape()[1] as u32;
    let prep = plan.scratch(f.shape())?;
    let u = KronU {
        total: f.numel() as u32,
        src_off: f.offset() as u32,
        group: group as u32,
        a: eps,
        b: bias.unwrap_or(0.0),
        flags: bias.is_some() as u32,
        rows: d,
        cols: d,
        ..Default::default()
    };
    matrix_grid(plan, "optim/kron.wgsl", "PREP", u, count, &[scalars, f, &prep])?;
    Ok(prep)
}

/// SPlus's and SPA's eigenbases `eigh(F + εI)` (cold, or warm-started from the current basis), committed on an
/// applied step. The order of the columns does not matter: the sign direction is invariant to permutations and
/// sign flips of the basis vectors.
fn eigen_refresh(gpu: &Gpu, st: &KronStack, group: usize, scalars: &Tensor, eps: f32, cold: bool) -> Result<Plan> {
    let mut plan = PlanBuilder::new(gpu);
    for s in 0..2 {
        let (Some(f), Some(q)) = (&st.factors[s], &st.bases[s]) else { continue };
        let d = f.shape()[1];
        let prep = prepared(&mut plan, scalars, f, st.count, group, eps, None)?;
        let (vals, vecs) = (plan.scratch(&[st.count, d])?, plan.scratch(f.shape())?);
        eigh(&mut plan, &prep, &vals, &vecs, (!cold).then_some(q), &EighConfig::default())?;
        ema(&mut plan, scalars, &vecs, q, 0.0, 1.0)?;
    }
    plan.build()
}

/// The refresh period of a staggered optimizer (`None` when it refreshes every stack on the same calls).
fn stagger_period(opt: &OptimizerConfig) -> Option<u64> {
    let (on, period) = match opt {
        OptimizerConfig::Soap(c) => (c.stagger, c.precondition_frequency),
        OptimizerConfig::Shampoo(c) => (c.stagger, c.precondition_frequency),
        OptimizerConfig::KlShampoo(c) => (c.stagger, c.precondition_frequency),
        OptimizerConfig::Splus(c) => (c.stagger, c.inverse_every),
        OptimizerConfig::Spa(c) => (c.stagger, c.precondition_frequency),
        OptimizerConfig::Whiten(c) => (c.stagger, c.precondition_frequency),
        OptimizerConfig::Fismo(c) => (c.stagger, c.root_every),
        _ => (false, 1),
    };
    on.then_some(period.max(1) as u64)
}

/// What a bucket's refreshes run on: its stacks whole, or, staggered over `period` calls, each stack in chunks of
/// ⌈matrices / period⌉ matrices (in parameter order), so the period's refresh calls share the work evenly rather
/// than stack by stack (GPT-small's four stacks of four: a stack of 512×128 alone took 5× a mean step on lavapipe).
/// On GPUs a chunk holds at least [`GPU_MIN_STAGGER_CHUNK`] matrices.
fn refresh_units(k: &KronParts, period: Option<u64>, min_chunk: usize) -> Result<Vec<KronStack>> {
    let matrices: usize = k.stacks.iter().map(|st| st.count).sum();
    let size = period.map_or(usize::MAX, |p| matrices.div_ceil(p as usize).max(min_chunk));
    let mut units = Vec::new();
    for st in &k.stacks {
        for start in (0..st.count).step_by(size) {
            units.push(st.chunk(start, size.min(st.count - start))?);
        }
    }
    Ok(units)
}

/// The refresh plans of every SOAP / Shampoo stack, and Shampoo's `post` plan (`None` without Shampoo).
pub(crate) fn plans(
    gpu: &Gpu,
    groups: &[Group],
    buckets: &[Bucket],
    scalars: &Tensor,
    wg: u32,
    timing: bool,
) -> Result<(Vec<Refresh>, Option<Plan>)> {
    let mut refreshes = Vec::new();
    let mut post = PlanBuilder::new(gpu).with_timing(timing);
    post.stage("direction");
    for b in buckets {
        let Some(k) = &b.kron else { continue };
        let optimizer = &groups[b.group].optimizer;
        let period = stagger_period(optimizer);
        let mut units = refresh_units(k, period, if gpu.is_cpu() { 1 } else { GPU_MIN_STAGGER_CHUNK })?;
        // GPUs, staggered Shampoo: a chunk's sides as calls of their own. A chunk's matrices run in parallel (a
        // workgroup each), its sides in sequence: a 512×128 stack's eigh of both sides in one call made the H100's
        // slowest step 3.6× the mean; split, the calls stay as many per period as the steps.
        if period.is_some() && !gpu.is_cpu() && matches!(optimizer, OptimizerConfig::Shampoo(_)) {
            units = units.iter().map(KronStack::sides).collect::<Result<Vec<_>>>()?.into_iter().flatten().collect();
        }
        let total = units.len() as u64;
        for (i, st) in units.iter().enumerate() {
            if st.factors.iter().all(Option::is_none) {
                continue;
            }
            let offset = period.map_or(0, |p| i as u64 * p / total);
            match optimizer {
                OptimizerConfig::Soap(c) => refreshes.push(Refresh {
                    init: Some(soap_init(gpu, st, scalars)?),
                    plan: soap_refresh(gpu, st, b, scalars)?,
                    cadence: Cadence::Soap { period: c.precondition_frequency as u64, offset },
                }),
                OptimizerConfig::Shampoo(c) => refreshes.push(Refresh {
                    init: match c.root_method {
                        RootMethod::Eigh => Some(shampoo_refresh(gpu, c, st, b.group, scalars, true)?),
                        RootMethod::CoupledNewton { .. } => None,
                    },
                    plan: shampoo_refresh(gpu, c, st, b.group, scalars, false)?,
                    cadence: Cadence::Shampoo { cfg: c.clone(), offset },
                }),
                // The first bases as SOAP's (eigh, descending), then power step + QR.
                OptimizerConfig::KlShampoo(c) => refreshes.push(Refresh {
                    init: Some(soap_init(gpu, st, scalars)?),
                    plan: kl_refresh(gpu, st, scalars)?,
                    cadence: Cadence::Soap { period: c.precondition_frequency as u64, offset },
                }),
                OptimizerConfig::Splus(c) => refreshes.push(Refresh {
                    init: Some(eigen_refresh(gpu, st, b.group, scalars, c.eps, true)?),
                    plan: eigen_refresh(gpu, st, b.group, scalars, c.eps, false)?,
                    cadence: Cadence::Eigen { period: c.inverse_every as u64, offset },
                }),
                // The grid's eigenbasis is SPA's.
                OptimizerConfig::Spa(SpaConfig { precondition_frequency: every, .. })
                | OptimizerConfig::Whiten(WhitenConfig { precondition_frequency: every, .. }) => {
                    refreshes.push(Refresh {
                        init: Some(eigen_refresh(gpu, st, b.group, scalars, 1e-30, true)?),
                        plan: eigen_refresh(gpu, st, b.group, scalars, 1e-30, false)?,
                        cadence: Cadence::Eigen { period: *every as u64, offset },
                    })
                }
                OptimizerConfig::PsgdKron(c) => refreshes.push(Refresh {
                    init: None,
                    plan: psgd::psgd_refresh(gpu, c, st, b, scalars)?,
                    cadence: Cadence::Psgd { schedule: c.update_schedule, counter: UpdateCounter::default() },
                }),
                // Amortized roots; with root_every = 1 they are part of the step.
                OptimizerConfig::Fismo(c) if c.root_every > 1 => refreshes.push(Refresh {
                    init: None,
                    plan: fismo::fismo_refresh(gpu, st, scalars)?,
                    cadence: Cadence::Eigen { period: c.root_every as u64, offset },
                }),
                _ => {}
            }
        }
        match optimizer {
            OptimizerConfig::Shampoo(c) => record_post(&mut post, c, b, scalars, wg)?,
            OptimizerConfig::PsgdKron(c) => psgd::record_post(&mut post, c, b, scalars, wg)?,
            _ => {}
        }
    }
    let post = if post.is_empty() { None } else { Some(post.build()?) };
    Ok((refreshes, post))
}
