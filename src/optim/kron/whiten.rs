//! The matrix-whitening grid on the Kronecker engine ([`WhitenConfig`], seed 004 Table 2): momentum, the basis
//! (identity, the factors' eigenbasis, or the polar factor), the normalization there (sign, full or rank-1 second
//! moment), back to the original basis, the coupled apply, and the eigenbasis's factor EMAs. Every state write is
//! skipped on a skipped step.

use super::{chunked, elementwise, momentum, parts, sandwich, Apply, KronStack, KronU, BACK, PROJECT};
use crate::error::{Error, Result};
use crate::gpu::{PlanBuilder, Tensor};
use crate::linalg::{copy, polar_stacks};
use crate::optim::optimizer::Bucket;
use crate::optim::{Basis, Normalization, WhitenConfig};

/// The grid's step per stack, then the apply and (eigenbasis) the factor EMAs.
pub(super) fn record(plan: &mut PlanBuilder, c: &WhitenConfig, b: &Bucket, scalars: &Tensor, wg: u32) -> Result<()> {
    let (p, k) = parts(b)?;
    // Per stack, x: the direction in its basis; stat: what the second moment is taken of (the gradient in that
    // basis, or for Newton–Schulz the polar factor itself). Newton–Schulz's polar factors come from one call over
    // all stacks (middle products batched across them), so the normalizations follow in a second pass.
    let mut dirs = Vec::with_capacity(k.stacks.len());
    let mut polar_in = Vec::new();
    for st in &k.stacks {
        let g = st.view(&p.ns_in)?;
        let look = plan.scratch(g.shape())?;
        momentum(plan, st, b.group, scalars, &g, b.state("exp_avg")?, &look, 0, c.effective_lookahead())?;
        let bases = KronStack::side(&st.bases);
        dirs.push(match c.basis {
            Basis::Identity => (look, g.clone()),
            Basis::Eigen => {
                let x = plan.scratch(g.shape())?;
                sandwich(plan, bases, PROJECT, &look, &x)?;
                if c.normalization.is_variance() {
                    // `look` is free again: the gradient in the eigenbasis.
                    sandwich(plan, bases, PROJECT, &g, &look)?;
                }
                (x, look)
            }
            Basis::NewtonSchulz => {
                let x = plan.scratch(g.shape())?;
                polar_in.push(look);
                (x.clone(), x)
            }
        });
    }
    if !polar_in.is_empty() {
        let pairs: Vec<(&Tensor, &Tensor)> = polar_in.iter().zip(&dirs).map(|(m, (x, _))| (m, x)).collect();
        polar_stacks(plan, &pairs, &c.polar)?;
    }
    for (st, (x, stat)) in k.stacks.iter().zip(&dirs) {
        let n = normalize(plan, c, st, b, scalars, stat, x)?;
        let out = st.view(&p.ns_out)?;
        match c.basis {
            Basis::Eigen => sandwich(plan, KronStack::side(&st.bases), BACK, &n, &out)?,
            _ => copy(plan, &n, &out)?,
        }
    }
    chunked(plan, b, scalars, wg, Some(Apply::new(0, c.weight_decay)))?;
    if c.basis == Basis::Eigen {
        for st in &k.stacks {
            st.factor_ema(plan, scalars, &st.view(&p.ns_in)?, c.beta2, 1.0 - c.beta2)?;
        }
    }
    Ok(())
}

/// The normalized direction (offset 0) of `x` (offset 0; the sign in place), its second moment from `stat`.
fn normalize(
    plan: &mut PlanBuilder,
    c: &WhitenConfig,
    st: &KronStack,
    b: &Bucket,
    scalars: &Tensor,
    stat: &Tensor,
    x: &Tensor,
) -> Result<Tensor> {
    // The momentum's bias shows through a variance normalization, except after Newton–Schulz.
    let flags = (c.basis != Basis::NewtonSchulz) as u32;
    let u = KronU {
        src_off: stat.offset() as u32,
        a: c.eps,
        flags,
        rows: st.m as u32,
        cols: st.n as u32,
        ..KronU::stack(st, b.group)
    };
    let total = u.total;
    match c.normalization {
        Normalization::Sign | Normalization::SignLookahead => {
            if c.basis != Basis::NewtonSchulz {
                elementwise(plan, "SIGN", &[], KronU { total, ..Default::default() }, &[scalars, x])?;
            }
            Ok(x.clone())
        }
        Normalization::VarianceFull => {
            let out = plan.scratch(x.shape())?;
            elementwise(plan, "WHITEN_FULL", &[], u, &[scalars, stat, b.state("exp_avg_sq")?, x, &out])?;
            Ok(out)
        }
        Normalization::VarianceFactorized => {
            let (Some(rows), Some(cols)) = (&st.variance[0], &st.variance[1]) else {
                return Err(Error::Device("whitening stack without its rank-1 second moment".into()));
            };
            let mean = plan.scratch(&[st.count])?;
            let kernel = plan.gpu().kernel(
                "optim/kron.wgsl",
                "main",
                &[("FACTOR_STATS", "1".to_string()), ("D", "1".to_string())],
            )?;
            plan.dispatch(&kernel, &u, &[scalars, stat, rows, cols, &mean], [st.count as u32, 2, 1])?;
            let out = plan.scratch(x.shape())?;
            elementwise(plan, "WHITEN_FACTORED", &[], u, &[scalars, rows, cols, &mean, x, &out])?;
            Ok(out)
        }
    }
}
