//! The matrix-whitening grid as one optimizer (seed 004 "What really matters in matrix-whitening optimizers?",
//! Table 2; docs/optimizers.md §9 and decisions §13): a basis × normalization composition with the
//! kvfrans/matrix-whitening harness's conventions.

use serde::{Deserialize, Serialize};

use crate::linalg::{NsCoefficients, NsNormalization, PolarConfig};

/// Where the direction is normalized (Table 2's three families).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Basis {
    /// The original basis: elementwise methods (Signum, Adam, Adafactor).
    Identity,
    /// The Shampoo eigenbasis: rotate by the eigenvectors of the factor EMAs `L ≈ E[GGᵀ]`, `R ≈ E[GᵀG]`,
    /// normalize there, rotate back (SPlus, SOAP). The bases are refreshed after the step on the first call and
    /// every `precondition_frequency` calls (the first step runs in the identity basis).
    #[default]
    Eigen,
    /// Newton–Schulz: the polar factor of the momentum (Muon, AdaMuon); normalization then acts on it.
    NewtonSchulz,
}

/// How the direction is normalized in its basis.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Normalization {
    /// `sign(M)` (with the Newton–Schulz basis: the polar factor itself).
    Sign,
    /// The sign of `(1 − a)·M + a·G`, a = `lookahead` (Lion-like; Nesterov when a = 1 − β1).
    SignLookahead,
    /// Adam's full second moment: `M̂ / (sqrt(V̂) + ε)` with V the EMA of the squared gradient in the basis
    /// (Newton–Schulz: `O / (sqrt(V̂) + ε)` with V the EMA of O², AdaMuon's decoupled form).
    #[default]
    VarianceFull,
    /// A rank-1 second moment (Adafactor's factorization, §7.3): row and column EMAs of the squared statistic,
    /// `V = r·cᵀ / mean(r)` (the standard Adafactor estimate; the repository's `v_adafactor` multiplies it by
    /// m/n, a constant per matrix we do not reproduce).
    VarianceFactorized,
}

impl Normalization {
    /// Whether a second moment is kept.
    pub fn is_variance(&self) -> bool {
        matches!(self, Normalization::VarianceFull | Normalization::VarianceFactorized)
    }
}

/// The per-matrix learning-rate multiplier.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ShapeScale {
    /// The repository's choice per cell: `2/(m+n)` for the eigenbasis with a sign normalization (SPlus),
    /// `sqrt(max(1, m/n))` for Newton–Schulz with a sign normalization (Muon), 1 otherwise (variance
    /// normalizations are scale-free).
    #[default]
    Auto,
    /// 1.
    None,
    /// `sqrt(max(1, m/n))`, m = fan_out (Keller / optax).
    Keller,
    /// `2/(m+n)` (SPlus).
    Splus,
}

/// One cell of the matrix-whitening grid (seed 004, Table 2): `basis` × `normalization`, with the
/// kvfrans/matrix-whitening harness's semantics (docs/optimizers.md §9.3): EMA momentum `M ← β1 M + (1−β1) G`,
/// the basis and normalization above, and the coupled decay `p ← p − lr·(s·U + wd·p)` (s: `shape_scale`).
/// The first moment is bias-corrected where the normalization sees its scale (variance forms outside the
/// Newton–Schulz basis). Takes 2-D matrices; same-shape matrices are stacked and processed by batched
/// dispatches, the eigenbasis refreshes run on the host cadence (optionally staggered).
///
/// Where a cell coincides with a named method (the brackets of Table 2), [`WhitenConfig::preset`] gives it with
/// that repository's best hyper-parameters (§9.2). Differences from those modules, by design: SOAP's first step is
/// not zeroed (it runs in the identity basis), and the bases are refreshed by warm-started Jacobi (columns keep
/// their order, so the second moment stays attached to them).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WhitenConfig {
    /// Learning rate.
    pub lr: f32,
    /// The basis.
    pub basis: Basis,
    /// The normalization.
    pub normalization: Normalization,
    /// Momentum β1.
    pub beta1: f32,
    /// Second-moment and factor EMA β2.
    pub beta2: f32,
    /// The lookahead a of [`Normalization::SignLookahead`] (unused otherwise).
    pub lookahead: f32,
    /// ε added to `sqrt(V̂)`.
    pub eps: f32,
    /// Weight decay, coupled as `lr·wd·p`.
    pub weight_decay: f32,
    /// Calls between eigenbasis refreshes (the first call always refreshes).
    pub precondition_frequency: u32,
    /// Dimensions of `max_dim` or more stay in the original basis.
    pub max_dim: usize,
    /// Spread the refreshes of a bucket's matrices over the period.
    pub stagger: bool,
    /// The Newton–Schulz basis's polar computation (default: the repository's You coefficients with optax's
    /// `‖X‖_F + 1e-8` normalization).
    pub polar: PolarConfig,
    /// The per-matrix lr multiplier.
    pub shape_scale: ShapeScale,
}

impl Default for WhitenConfig {
    fn default() -> Self {
        WhitenConfig {
            lr: 3e-3,
            basis: Basis::Eigen,
            normalization: Normalization::VarianceFull,
            beta1: 0.9,
            beta2: 0.99,
            lookahead: 0.1,
            eps: 1e-8,
            weight_decay: 0.0,
            precondition_frequency: 10,
            max_dim: 10000,
            stagger: false,
            polar: PolarConfig {
                coefficients: NsCoefficients::You,
                normalization: NsNormalization::Optax,
                ..PolarConfig::default()
            },
            shape_scale: ShapeScale::Auto,
        }
    }
}

impl WhitenConfig {
    /// A grid cell with the default hyper-parameters.
    pub fn cell(basis: Basis, normalization: Normalization) -> WhitenConfig {
        WhitenConfig { basis, normalization, ..WhitenConfig::default() }
    }

    /// The named methods of Table 2 with the repository's best hyper-parameters (`best_params.py`, §9.2; the
    /// eigenbasis ones with `optimizer_freq` 10): `adam`, `signum`, `adafactor` (identity basis; Adam's
    /// parameters), `soap`, `splus`, `muon` (sign + lookahead a = 1 − β1, i.e. Nesterov), `adamuon`.
    pub fn preset(name: &str) -> Option<WhitenConfig> {
        use Basis::*;
        use Normalization::*;
        let (basis, normalization, lr, weight_decay, beta1, beta2) = match name {
            "adam" => (Identity, VarianceFull, 1e-3, 1.0, 0.9, 0.99),
            "adafactor" => (Identity, VarianceFactorized, 1e-3, 1.0, 0.9, 0.99),
            "signum" => (Identity, Sign, 1.77e-4, 3.162, 0.9, 0.99),
            "soap" => (Eigen, VarianceFull, 3.11e-3, 0.316, 0.968, 0.99),
            "splus" => (Eigen, Sign, 0.1, 0.01, 0.99, 0.968),
            "muon" => (NewtonSchulz, SignLookahead, 7.704e-3, 0.1, 0.9, 0.99),
            "adamuon" => (NewtonSchulz, VarianceFull, 3.12e-4, 3.162, 0.968, 0.99),
            _ => return None,
        };
        Some(WhitenConfig {
            lr,
            weight_decay,
            beta1,
            beta2,
            lookahead: 1.0 - beta1,
            ..WhitenConfig::cell(basis, normalization)
        })
    }

    /// The lookahead actually used (0 unless [`Normalization::SignLookahead`]).
    pub fn effective_lookahead(&self) -> f32 {
        if self.normalization == Normalization::SignLookahead {
            self.lookahead
        } else {
            0.0
        }
    }

    /// The lr multiplier of an `m × n` matrix.
    pub fn shape_scale(&self, m: usize, n: usize) -> f32 {
        let scale = match (self.shape_scale, self.basis, self.normalization.is_variance()) {
            (ShapeScale::Auto, Basis::Eigen, false) => ShapeScale::Splus,
            (ShapeScale::Auto, Basis::NewtonSchulz, false) => ShapeScale::Keller,
            (ShapeScale::Auto, _, _) => ShapeScale::None,
            (s, _, _) => s,
        };
        match scale {
            ShapeScale::Keller => (m as f32 / n as f32).max(1.0).sqrt(),
            ShapeScale::Splus => 2.0 / (m + n) as f32,
            ShapeScale::None | ShapeScale::Auto => 1.0,
        }
    }
}
