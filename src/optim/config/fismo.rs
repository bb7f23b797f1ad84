//! FISMO and its diagonal variant (docs/optimizers.md §5, decisions §9): no public code exists, so the equations
//! are the paper's and the defaults are ours.

use serde::{Deserialize, Serialize};

use super::AdjustLr;
use crate::linalg::PolarConfig;

/// FISMO, Fisher-Structured Momentum-Orthogonalized (arXiv 2601.21750, docs/optimizers.md §5): Kronecker factors
/// `P` (m×m) and `Q` (n×n), trace-normalized to `tr P = m`, `tr Q = n`, estimate the gradient's Fisher structure
/// by alternating (Gauss–Seidel) updates
/// `P ← norm(γP + (1−γ)(G·Q⁻¹·Gᵀ/n + μI))`, then `Q ← norm(γQ + (1−γ)(Gᵀ·P⁻¹·G/m + μI))` with the NEW P;
/// the momentum lives in the whitened space, `M ← βM + (1−β)·P^{-1/2}·G·Q^{-1/2}`, and the step is
/// `W ← W(1 − lr·wd) − lr·s·P^{-1/2}·polar(M)·Q^{-1/2}` with `s` Muon's shape scale (Keller by default).
/// Since `tr P = m` after every update, the damping `μ·tr P/m` is `μ` exactly as §5 notes.
/// The roots come from an eigendecomposition of each factor (warm-started Jacobi) on every step by default;
/// `root_every = k > 1` amortizes them Shampoo-style: the step then uses the roots of the last refresh, which
/// runs after the step on the first call and every k calls (spread over the period when `stagger`).
/// Our defaults (decisions §9): γ = 0.95, μ = 1e-3, β = 0.95, 5 Keller Newton–Schulz steps, Keller lr scaling,
/// WD-pre with the unscaled lr; lr and weight decay as Muon's. Both sides are preconditioned, so matrices are
/// limited to the device eigensolver's size (2048); route larger ones elsewhere.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FismoConfig {
    /// Learning rate.
    pub lr: f32,
    /// Factor EMA γ.
    pub gamma: f32,
    /// Damping μ added to each factor's fresh estimate (relative to its mean eigenvalue, 1).
    pub mu: f32,
    /// Momentum β (in the whitened space).
    pub beta: f32,
    /// Decoupled weight decay, before the update with the unscaled lr.
    pub weight_decay: f32,
    /// Learning-rate scaling by shape (Muon's conventions).
    pub adjust_lr: AdjustLr,
    /// The polar factor of the whitened momentum.
    pub polar: PolarConfig,
    /// Steps between recomputations of the factors' roots (1: every step, the paper's method).
    pub root_every: u32,
    /// Spread the refreshes of a bucket's matrices over `root_every` (ours; see
    /// [`super::SoapConfig::stagger`]).
    pub stagger: bool,
}

impl Default for FismoConfig {
    fn default() -> Self {
        FismoConfig {
            lr: 0.02,
            gamma: 0.95,
            mu: 1e-3,
            beta: 0.95,
            weight_decay: 0.0,
            adjust_lr: AdjustLr::Keller,
            polar: PolarConfig::default(),
            root_every: 1,
            stagger: false,
        }
    }
}

/// `fismo_diag` (docs/optimizers.md §5, derived by us, not in the paper): FISMO with diagonal factors `p ∈ Rᵐ`,
/// `q ∈ Rⁿ`, mean-normalized to 1 — `p ← norm(γp + (1−γ)(mean_j G²ᵢⱼ/qⱼ + μ))`, then `q` likewise from the NEW
/// `p` — a two-sided Adafactor/Sinkhorn-like scaling with O(m + n) state and no eigendecomposition:
/// `M ← βM + (1−β)·G/sqrt(p qᵀ)`, `W ← W(1 − lr·wd) − lr·s·polar(M)/sqrt(p qᵀ)`. Defaults as [`FismoConfig`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FismoDiagConfig {
    /// Learning rate.
    pub lr: f32,
    /// Factor EMA γ.
    pub gamma: f32,
    /// Damping μ.
    pub mu: f32,
    /// Momentum β (in the whitened space).
    pub beta: f32,
    /// Decoupled weight decay, before the update with the unscaled lr.
    pub weight_decay: f32,
    /// Learning-rate scaling by shape (Muon's conventions).
    pub adjust_lr: AdjustLr,
    /// The polar factor of the whitened momentum.
    pub polar: PolarConfig,
}

impl Default for FismoDiagConfig {
    fn default() -> Self {
        let f = FismoConfig::default();
        FismoDiagConfig {
            lr: f.lr,
            gamma: f.gamma,
            mu: f.mu,
            beta: f.beta,
            weight_decay: f.weight_decay,
            adjust_lr: f.adjust_lr,
            polar: f.polar,
        }
    }
}
