//! The polar factor ("zeroth power", msign) of a stack of matrices by odd-quintic Newton–Schulz iteration
//! (docs/optimizers.md §1.1, §11.1) or by Gram Newton–Schulz (§1.4), always iterating on the small side.

use crate::error::{Error, Result};
use crate::gpu::{PlanBuilder, Tensor};
use crate::linalg::{
    gram, reduce, reduce::copy_view, Axpby, BatchScalar, GramSide, Matmul, NsCoefficients, NsNormalization, Precision,
    ReduceOp, Trans,
};

/// The iteration that computes the polar factor.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PolarAlgorithm {
    /// `A = XXᵀ; B = bA + cA²; X = aX + BX` per step (Gram on the small side).
    NewtonSchulz,
    /// Dao-AILab's Gram Newton–Schulz (§1.4): iterate on the small Gram matrix only and fold into X at the given
    /// restart positions and at the end. Square matrices fall back to [`PolarAlgorithm::NewtonSchulz`].
    GramNewtonSchulz {
        /// Iteration indices before which X is refreshed (Dao default: `[2]`).
        restarts: Vec<usize>,
    },
}

/// Everything that selects a polar computation; defaults are KellerJordan/Muon's (decisions §2).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PolarConfig {
    /// Coefficient set.
    pub coefficients: NsCoefficients,
    /// Number of iterations (5 in every reference).
    pub steps: usize,
    /// Pre-normalization.
    pub normalization: NsNormalization,
    /// Precision of the products (`ns_precision`).
    pub precision: Precision,
    /// Plain or Gram Newton–Schulz.
    pub algorithm: PolarAlgorithm,
}

impl Default for PolarConfig {
    fn default() -> Self {
        PolarConfig {
            coefficients: NsCoefficients::Keller,
            steps: 5,
            normalization: NsNormalization::Keller,
            precision: Precision::F32,
            algorithm: PolarAlgorithm::NewtonSchulz,
        }
    }
}

/// Record `out = polar(g)` for a stack `[b?, m, n]`. `out` may be `g` itself. Transposition follows the
/// references: tall matrices (m > n) iterate on `XᵀX`, others on `XXᵀ`. All scratch is allocated now, at
/// plan-build time; the recorded dispatches need no readback.
pub fn polar(plan: &mut PlanBuilder, g: &Tensor, out: &Tensor, cfg: &PolarConfig) -> Result<()> {
    polar_stacks(plan, &[(g, out)], cfg)
}

/// [`polar`] of several stacks `(g, out)` with one configuration (an optimizer bucket's stacks of different
/// shapes). Newton–Schulz steps interleave the stacks so that the middle products `bA + cA²` of all stacks with
/// the same small side run as one batched product: GPT-small's four Muon stacks take 5 matmul dispatches per step
/// instead of 20 for them (on CPU adapters the Gram and apply products differ in shape and stay one per stack). On
/// GPUs, stacks of a small side whose long sides are alike run as one stack padded with zero columns, three
/// dispatches per step in all: GPT-small's Muon step takes 32 dispatches there instead of 62. Each `out` may be its
/// own `g`; stacks that overlap one another are refused.
pub fn polar_stacks(plan: &mut PlanBuilder, stacks: &[(&Tensor, &Tensor)], cfg: &PolarConfig) -> Result<()> {
    if cfg.steps == 0 {
        return Err(Error::InvalidArgument { op: "polar", name: "steps", detail: "at least one step".into() });
    }
    if let NsCoefficients::Custom(rows) = &cfg.coefficients {
        if rows.is_empty() || rows.iter().flatten().any(|v| !v.is_finite()) {
            return Err(Error::InvalidArgument {
                op: "polar",
                name: "coefficients",
                detail: "need finite rows".into(),
            });
        }
    }
    cfg.precision.check(plan.gpu(), "polar")?;
    let mut shapes = Vec::with_capacity(stacks.len());
    for &(g, out) in stacks {
        let (b, m, n) = g.matrices("polar")?;
        if out.shape() != g.shape() {
            return Err(Error::Shape {
                op: "polar",
                detail: format!("out {:?} != input {:?}", out.shape(), g.shape()),
            });
        }
        shapes.push((b, m, n));
    }
    // One stack's input or output sharing memory with another's would be read after the other has written it.
    for (i, &(g, out)) in stacks.iter().enumerate() {
        for &(g2, out2) in &stacks[..i] {
            if [g, out].iter().any(|t| t.overlaps(g2) || t.overlaps(out2)) {
                return Err(Error::InvalidArgument {
                    op: "polar",
                    name: "stacks",
                    detail: format!("stack {i} overlaps an earlier stack in memory"),
                });
            }
        }
    }
    let rows = cfg.coefficients.rows(cfg.steps);
    let (mult, add, floor) = cfg.normalization.params();
    // X0 = G / max(‖G‖·mult + add, floor), rounded to the product precision, into `dst`.
    let normalize = |plan: &mut PlanBuilder, g: &Tensor, b: usize, dst: &Tensor| -> Result<()> {
        let norm = plan.scratch(&[b])?;
        reduce(plan, g, ReduceOp::Norm, b, &norm)?;
        Axpby {
            x: Some(g),
            scale: Some(BatchScalar::of(&norm).affine(mult, add, floor).pow(-1.0)),
            precision: cfg.precision,
            ..Axpby::new(dst)
        }
        .record(plan)
    };
    let side = |tall: bool| if tall { GramSide::Cols } else { GramSide::Rows };
    // Plain Newton–Schulz stacks, grouped by their small side k.
    let mut groups: Vec<(usize, Vec<usize>)> = Vec::new();
    for (i, &(b, m, n)) in shapes.iter().enumerate() {
        if let PolarAlgorithm::GramNewtonSchulz { restarts } = &cfg.algorithm {
            if m != n {
                let xa = plan.scratch(&[b, m, n])?;
                normalize(plan, stacks[i].0, b, &xa)?;
                let (tall, k) = (m > n, m.min(n));
                gram_newton_schulz(plan, (&xa, stacks[i].1), side(tall), tall, k, &rows, restarts, cfg.precision)?;
                continue;
            }
        }
        let k = m.min(n);
        match groups.iter_mut().find(|(gk, _)| *gk == k) {
            Some((_, members)) => members.push(i),
            None => groups.push((k, vec![i])),
        }
    }
    for (k, members) in groups {
        // GPUs: stacks of similar long sides as padded stacks; the rest (and CPU adapters) one product per stack.
        let (padded, members) =
            if plan.gpu().is_cpu() { (Vec::new(), members) } else { padded_parts(&shapes, members) };
        for part in padded {
            let group: Vec<_> = part.iter().map(|&i| (stacks[i], shapes[i])).collect();
            padded_group(plan, &group, k, &rows, &normalize, cfg.precision)?;
        }
        if members.is_empty() {
            continue;
        }
        let total: usize = members.iter().map(|&i| shapes[i].0).sum();
        let (a_all, b_all) = (plan.scratch(&[total, k, k])?, plan.scratch(&[total, k, k])?);
        let mut iterates = Vec::with_capacity(members.len());
        let mut first = 0;
        for &i in &members {
            let (b, m, n) = shapes[i];
            let (g, out) = stacks[i];
            let other = plan.scratch(&[b, m, n])?;
            let (cur, next) = if rows.len().is_multiple_of(2) { (out.clone(), other) } else { (other, out.clone()) };
            normalize(plan, g, b, &cur)?;
            let view =
                |t: &Tensor| Tensor::from_buffer(t.gpu(), t.buffer().clone(), t.offset() + first * k * k, &[b, k, k]);
            iterates.push(Iterate { cur, next, a: view(&a_all)?, b: view(&b_all)?, tall: m > n });
            first += b;
        }
        for &[a, bc, c] in &rows {
            for it in &iterates {
                gram(plan, &it.cur, side(it.tall), &it.a, 1.0, None, 0.0, cfg.precision)?;
            }
            gram(plan, &a_all, GramSide::Rows, &b_all, c as f32, Some(&a_all), bc as f32, cfg.precision)?;
            // X ← a·X + B·X (wide) or a·X + X·B (tall).
            for it in &mut iterates {
                let mm =
                    if it.tall { Matmul::new(&it.cur, &it.b, &it.next) } else { Matmul::new(&it.b, &it.cur, &it.next) };
                mm.scaled(1.0, Some(&it.cur), a as f32).precision(cfg.precision).record(plan)?;
                std::mem::swap(&mut it.cur, &mut it.next);
            }
        }
    }
    Ok(())
}

/// A group's stacks (indices into `shapes`, all with one small side) split for GPUs: parts of two or more to run
/// as padded stacks ([`padded_group`]; longest sides first, each part's padding at most doubling its size, so a
/// 128×50,000 head does not pad a stack of 128² matrices to its width), and the stacks left alone.
fn padded_parts(shapes: &[(usize, usize, usize)], mut members: Vec<usize>) -> (Vec<Vec<usize>>, Vec<usize>) {
    let long = |i: usize| shapes[i].1.max(shapes[i].2);
    members.sort_by_key(|&i| std::cmp::Reverse(long(i)));
    let (mut parts, mut alone) = (Vec::new(), Vec::new());
    let mut close = |part: Vec<usize>| if part.len() > 1 { parts.push(part) } else { alone.extend(part) };
    let mut part: Vec<usize> = Vec::new();
    for i in members {
        let fits = part.first().is_some_and(|&first| {
            let (_, m, n) = shapes[first];
            let count: usize = part.iter().chain([&i]).map(|&j| shapes[j].0).sum();
            let values: usize = part.iter().chain([&i]).map(|&j| shapes[j].0 * shapes[j].1 * shapes[j].2).sum();
            count * m.min(n) * long(first) <= 2 * values
        });
        if !fits {
            close(std::mem::take(&mut part));
        }
        part.push(i);
    }
    close(part);
    (parts, alone)
}

/// A stack of [`polar_stacks`]: `(g, out)` and its shape `(b, m, n)`.
type Member<'a> = ((&'a Tensor, &'a Tensor), (usize, usize, usize));

/// One group of [`polar_stacks`] on a GPU: its stacks (all with small side `k`) as one padded stack `[Σb, k, L]`, L
/// the longest side: every matrix wide (a tall one transposed: the polar factor of Xᵀ is that of X, transposed),
/// zeros right of its own columns. Zero columns add nothing to X·Xᵀ or its norm and stay zero under
/// X ← a·X + B·X, so each stack gets its own result (up to the order of the norm's sum), and every Newton–Schulz
/// step is three dispatches whatever the shapes: on a GPU such small products are bound by their dispatches, not
/// by the FLOPs the padding adds. H100, GPT-small's Muon step (4 stacks, k = 128): 62 → 32 dispatches, device time
/// 0.77 → 0.48 ms, 20 steps queued 0.45 ms each. CPU adapters, bound by FLOPs, keep one product per stack.
/// `normalize(plan, x, b, dst)` writes the scaled start.
fn padded_group(
    plan: &mut PlanBuilder,
    group: &[Member<'_>],
    k: usize,
    rows: &[[f64; 3]],
    normalize: &dyn Fn(&mut PlanBuilder, &Tensor, usize, &Tensor) -> Result<()>,
    precision: Precision,
) -> Result<()> {
    let total: usize = group.iter().map(|&(_, (b, _, _))| b).sum();
    let long = group.iter().map(|&(_, (_, m, n))| m.max(n)).max().unwrap_or(k);
    let (mut cur, mut next) = (plan.scratch(&[total, k, long])?, plan.scratch(&[total, k, long])?);
    let (a_all, b_all) = (&plan.scratch(&[total, k, k])?, &plan.scratch(&[total, k, k])?);
    // Matrix `first` of a padded stack (as a view whose offset is all `copy_view` reads).
    let at = |t: &Tensor, first: usize| {
        Tensor::from_buffer(t.gpu(), t.buffer().clone(), t.offset() + first * k * long, &[k, long])
    };
    let mut first = 0;
    for &((g, _), (b, m, n)) in group {
        copy_view(plan, g, (b, m, n), (n, m * n), m > n, &at(&cur, first)?, (long, k * long))?;
        first += b;
    }
    normalize(plan, &cur, total, &cur)?;
    for &[a, bc, c] in rows {
        gram(plan, &cur, GramSide::Rows, a_all, 1.0, None, 0.0, precision)?;
        gram(plan, a_all, GramSide::Rows, b_all, c as f32, Some(a_all), bc as f32, precision)?;
        Matmul::new(b_all, &cur, &next).scaled(1.0, Some(&cur), a as f32).precision(precision).record(plan)?;
        std::mem::swap(&mut cur, &mut next);
    }
    let mut first = 0;
    for &((_, out), (b, m, n)) in group {
        copy_view(plan, &at(&cur, first)?, (b, k, m.max(n)), (long, k * long), m > n, out, (n, m * n))?;
        first += b;
    }
    Ok(())
}

/// One stack's Newton–Schulz iterate in [`polar_stacks`]: the ping-pong pair (so that the last step writes `out`)
/// and its views of its group's A and B.
struct Iterate {
    cur: Tensor,
    next: Tensor,
    a: Tensor,
    b: Tensor,
    tall: bool,
}

/// §1.4 with restarts; `x.0` holds the normalized input, the result lands in `x.1`.
#[allow(clippy::too_many_arguments)]
fn gram_newton_schulz(
    plan: &mut PlanBuilder,
    (x0, out): (&Tensor, &Tensor),
    side: GramSide,
    tall: bool,
    k: usize,
    rows: &[[f64; 3]],
    restarts: &[usize],
    p: Precision,
) -> Result<()> {
    let b = x0.matrices("polar")?.0;
    let small = [b, k, k];
    let (mut r, mut r2, z, mut q, mut q2, rz) = (
        plan.scratch(&small)?,
        plan.scratch(&small)?,
        plan.scratch(&small)?,
        plan.scratch(&small)?,
        plan.scratch(&small)?,
        plan.scratch(&small)?,
    );
    let x1 = plan.scratch(x0.shape())?;
    // X ← Q·X (wide) or X·Q (tall; Q is symmetric).
    let fold = |plan: &mut PlanBuilder, q: &Tensor, x: &Tensor, dst: &Tensor| {
        let mm = if tall { Matmul::new(x, q, dst) } else { Matmul::new(q, x, dst) };
        mm.precision(p).record(plan)
    };
    let mut x = x0.clone();
    gram(plan, &x, side, &r, 1.0, None, 0.0, p)?;
    let last = rows.len() - 1;
    for (i, &[a, bc, c]) in rows.iter().enumerate() {
        let (a, bc, c) = (a as f32, bc as f32, c as f32);
        let restart = restarts.contains(&i) && i != 0;
        if restart {
            let dst = if x.buffer() == x0.buffer() { &x1 } else { x0 };
            fold(plan, &q, &x, dst)?;
            x = dst.clone();
            gram(plan, &x, side, &r, 1.0, None, 0.0, p)?;
        }
        // Z = bR + cR².
        gram(plan, &r, GramSide::Rows, &z, c, Some(&r), bc, p)?;
        if i == 0 || restart {
            Axpby { x: Some(&z), diag: a, precision: p, ..Axpby::new(&q) }.record(plan)?;
        } else {
            Matmul::new(&q, &z, &q2).scaled(1.0, Some(&q), a).precision(p).record(plan)?;
            std::mem::swap(&mut q, &mut q2);
        }
        if i != last && !restarts.contains(&(i + 1)) {
            // R ← (Z + aI) R (Z + aI).
            Matmul::new(&r, &z, &rz).scaled(1.0, Some(&r), a).precision(p).record(plan)?;
            Matmul::new(&z, &rz, &r2).trans(Trans::N, Trans::N).scaled(1.0, Some(&rz), a).precision(p).record(plan)?;
            std::mem::swap(&mut r, &mut r2);
        }
    }
    fold(plan, &q, &x, out)
}
