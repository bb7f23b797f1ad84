//! Configurations of the Muon family (docs/optimizers.md §2, §3) and Muon's shape conventions.

use serde::{Deserialize, Serialize};

/// How Muon's momentum accumulates.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MomentumKind {
    /// `M ← βM + (1−β)g` (KellerJordan/Muon, torch.optim.Muon).
    #[default]
    Ema,
    /// `M ← βM + g` (Moonlight, Dao-AILab).
    Sum,
}

/// Where Muon's momentum sits relative to the polar factor (seed "The M in Muon").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MomentumPlacement {
    /// Accumulate the gradient, then orthogonalize (every reference's default).
    #[default]
    Inside,
    /// Orthogonalize each gradient, then accumulate the polar factors.
    Outside,
}

/// Muon's learning-rate multiplier by shape (docs/optimizers.md §2.7), for an m×n matrix (m = fan_out).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AdjustLr {
    /// `sqrt(max(1, m/n))` (KellerJordan/Muon, modded-nanogpt, optax).
    #[default]
    Keller,
    /// `sqrt(max(1, A/B))` with A, B the first two dims (torch.optim.Muon "original"; equal to Keller for 2-D).
    TorchOriginal,
    /// `0.2·sqrt(max(m, n))` (Moonlight, torch "match_rms_adamw", Dao "rms_norm").
    Moonlight,
    /// `sqrt(m/n)` (Dao "spectral_norm").
    SpectralNorm,
    /// 1.
    None,
}

impl AdjustLr {
    /// The multiplier for a parameter of `shape` (2-D, 3-D batches or 4-D convolutions). Reproduces the
    /// references literally: Keller uses the last two dims of the ORIGINAL tensor (kh/kw for a convolution,
    /// §2.1 gotcha), torch_original and Moonlight the first two, spectral_norm the orthogonalized matrix.
    pub fn scale_for(&self, shape: &[usize]) -> f32 {
        let d = shape.len();
        let (rows, cols) = matrix_of(shape);
        match self {
            AdjustLr::Keller => AdjustLr::Keller.scale(shape[d - 2], shape[d - 1]),
            AdjustLr::TorchOriginal | AdjustLr::Moonlight => self.scale(shape[0], shape[1]),
            AdjustLr::SpectralNorm | AdjustLr::None => self.scale(rows, cols),
        }
    }

    /// The multiplier for an `m × n` parameter.
    pub fn scale(&self, m: usize, n: usize) -> f32 {
        let (m, n) = (m as f32, n as f32);
        match self {
            AdjustLr::Keller | AdjustLr::TorchOriginal => (m / n).max(1.0).sqrt(),
            AdjustLr::Moonlight => 0.2 * m.max(n).sqrt(),
            AdjustLr::SpectralNorm => (m / n).sqrt(),
            AdjustLr::None => 1.0,
        }
    }
}

/// The matrices Muon orthogonalizes for a parameter: `(count, rows, cols)` of its stack. 2-D: itself;
/// 3-D `[b, m, n]`: b matrices; 4-D convolution `(out, in, kh, kw)`: one `out × in·kh·kw` matrix.
pub(crate) fn muon_matrices(shape: &[usize]) -> Option<(usize, usize, usize)> {
    match *shape {
        [m, n] => Some((1, m, n)),
        [b, m, n] => Some((b, m, n)),
        [o, i, h, w] => Some((1, o, i * h * w)),
        _ => None,
    }
}

fn matrix_of(shape: &[usize]) -> (usize, usize) {
    muon_matrices(shape).map_or((1, shape.iter().product()), |(_, m, n)| (m, n))
}

/// Muon (KellerJordan/Muon §2.1 by default: EMA momentum, Nesterov, Keller coefficients, `X/(‖X‖_F+1e-7)`, the
/// small-side rule, `sqrt(max(1, m/n))`, WD-pre with the unadjusted lr), with every option of decisions §2.
/// Takes 2-D parameters, 3-D stacks of matrices and 4-D convolutions (reshaped to `out × in·kh·kw`); route others
/// (embeddings, gains, heads) to another group. NS runs in f32 by default
/// (`polar.precision` for bf16 emulation); same-shape matrices of a bucket are orthogonalized as one batch.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MuonConfig {
    /// Learning rate.
    pub lr: f32,
    /// Momentum β.
    pub momentum: f32,
    /// Nesterov momentum.
    pub nesterov: bool,
    /// Decoupled weight decay (WD-pre, unadjusted lr).
    pub weight_decay: f32,
    /// EMA or sum momentum.
    pub momentum_kind: MomentumKind,
    /// Momentum before (inside) or after (outside) the polar factor.
    pub momentum_placement: MomentumPlacement,
    /// Learning-rate scaling by shape.
    pub adjust_lr: AdjustLr,
    /// The polar factor: coefficients, steps, normalization, precision, algorithm.
    pub polar: crate::linalg::PolarConfig,
}

impl Default for MuonConfig {
    fn default() -> Self {
        MuonConfig {
            lr: 0.02,
            momentum: 0.95,
            nesterov: true,
            weight_decay: 0.0,
            momentum_kind: MomentumKind::Ema,
            momentum_placement: MomentumPlacement::Inside,
            adjust_lr: AdjustLr::Keller,
            polar: crate::linalg::PolarConfig::default(),
        }
    }
}

/// NorMuon's final scaling (decisions §4).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NorMuonScaling {
    /// The official code: restore the pre-normalization ‖O‖_F, then Keller's `sqrt(max(1, m/n))`.
    #[default]
    Official,
    /// The paper: `η̂ = 0.2·η·sqrt(m n)/‖Ô‖_F` (update RMS 0.2), no shape multiplier.
    PaperRms02,
}

/// NorMuon (zichongli5/NorMuon official code, §3.1): Muon (EMA momentum, Nesterov) whose polar factor is
/// normalized per row (output neuron) by an EMA of the row's mean square, `1/(sqrt(V2) + 1e-10)`, in f32.
/// Takes matrices, batches of matrices (3-D) and convolutions (4-D, orthogonalized as `out × in·kh·kw`); for a
/// convolution the official code's statistics are kept: a row is a kernel row of `kw` values (state
/// `[out, in, kh, 1]`) and the norm restored (or the paper's RMS 0.2) is that of each `(out, in)` kernel.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NorMuonConfig {
    /// Learning rate.
    pub lr: f32,
    /// Momentum β.
    pub momentum: f32,
    /// Nesterov momentum.
    pub nesterov: bool,
    /// Decoupled weight decay.
    pub weight_decay: f32,
    /// EMA decay of the per-row second moment.
    pub beta2: f32,
    /// Final scaling: official code or paper.
    pub scaling: NorMuonScaling,
    /// The polar factor.
    pub polar: crate::linalg::PolarConfig,
}

impl Default for NorMuonConfig {
    fn default() -> Self {
        NorMuonConfig {
            lr: 0.02,
            momentum: 0.95,
            nesterov: true,
            weight_decay: 0.0,
            beta2: 0.95,
            scaling: NorMuonScaling::Official,
            polar: crate::linalg::PolarConfig::default(),
        }
    }
}

impl NorMuonConfig {
    /// The Muon pipeline NorMuon runs, before its row normalization.
    pub(crate) fn muon(&self) -> MuonConfig {
        MuonConfig {
            lr: self.lr,
            momentum: self.momentum,
            nesterov: self.nesterov,
            weight_decay: self.weight_decay,
            adjust_lr: match self.scaling {
                NorMuonScaling::Official => AdjustLr::Keller,
                NorMuonScaling::PaperRms02 => AdjustLr::None,
            },
            polar: self.polar.clone(),
            ..MuonConfig::default()
        }
    }
}

/// Which AdaMuon (decisions §5).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AdaMuonVariant {
    /// Official GPT-2 code (§3.2).
    #[default]
    Official,
    /// kvfrans/matrix-whitening's simplified form (§3.3): no sign, bias-corrected momentum, Keller scale on the
    /// polar factor, `V ← β2 V + (1−β2) O²` bias-corrected, `u = O/(sqrt(V̂)+eps)`, no RMS rescale. That repo's
    /// defaults also use You coefficients with optax normalization and β = 0.9: set `polar` and `momentum`.
    Simplified,
}

/// AdaMuon, official GPT-2 code (Chongjie-Si/AdaMuon, §3.2): Muon (EMA momentum, Nesterov) on sign(U), then an
/// elementwise second moment of the polar factor with the momentum's β, `Ô = O/(sqrt(V)+eps)` rescaled to RMS 0.2
/// (`0.2·sqrt(min·max of the parameter's dims)/‖Ô‖_F`); or the `simplified` variant (§3.3).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdaMuonConfig {
    /// Learning rate.
    pub lr: f32,
    /// Momentum μ (also the second moment's decay).
    pub momentum: f32,
    /// Nesterov momentum.
    pub nesterov: bool,
    /// Decoupled weight decay.
    pub weight_decay: f32,
    /// ε of the normalization and the rescale.
    pub eps: f32,
    /// Official or simplified.
    pub variant: AdaMuonVariant,
    /// β2 of the simplified variant's second moment (the official code uses the momentum's β).
    pub beta2: f32,
    /// The polar factor.
    pub polar: crate::linalg::PolarConfig,
}

impl Default for AdaMuonConfig {
    fn default() -> Self {
        AdaMuonConfig {
            lr: 0.02,
            momentum: 0.95,
            nesterov: true,
            weight_decay: 0.01,
            eps: 1e-8,
            variant: AdaMuonVariant::Official,
            beta2: 0.95,
            polar: crate::linalg::PolarConfig::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn muon_shape_scales_follow_the_references() {
        // Keller: last two dims of the original tensor (a 3×3 convolution gets 1, not sqrt(out/(in·9))).
        assert_eq!(AdjustLr::Keller.scale_for(&[64, 16, 3, 3]), 1.0);
        assert_eq!(AdjustLr::Keller.scale_for(&[384, 128]), 3f32.sqrt());
        assert_eq!(AdjustLr::Keller.scale_for(&[128, 384]), 1.0);
        assert_eq!(AdjustLr::TorchOriginal.scale_for(&[64, 16, 3, 3]), 2.0);
        assert_eq!(AdjustLr::Moonlight.scale_for(&[100, 25]), 2.0);
        assert_eq!(AdjustLr::SpectralNorm.scale_for(&[16, 4, 2, 2]), 1.0);
        assert_eq!(AdjustLr::None.scale_for(&[7, 3]), 1.0);
        assert_eq!(muon_matrices(&[2, 3, 5]), Some((2, 3, 5)));
        assert_eq!(muon_matrices(&[4, 2, 3, 3]), Some((1, 4, 18)));
        assert_eq!(muon_matrices(&[5]), None);
    }
}

/// SF-NorMuon (arXiv 2605.23061, docs/optimizers.md §8.6; no code release): Schedule-Free around NorMuon with the
/// paper's RMS-0.2 scaling and weight decay on the fast iterate z: `m ← μm + (1−μ)g`, `P = polar(m)`, per-row
/// `v ← β2 v + (1−β2) mean(P²)`, `P̂ = P/(sqrt(v)+1e-10)`, `z ← z − η_t λ z − 0.2 η_t sqrt(m n) P̂/‖P̂‖_F`,
/// `c = η_t²/Σ η_t²`, `x ← (1−c)x + c z`, parameters hold `y = (1−β1) z + β1 x`. η_t follows the group's schedule
/// (use `Schedule::Warmup` for the paper's linear warmup); the WD coefficient uses η_t too (the paper's η/η_t
/// ambiguity, decided here). Defaults are ours (the paper gives none): lr 0.02, μ 0.95, β1 0.9, β2 0.95.
/// The evaluation point x is a state: read it with `Optimizer::eval_params`. Takes what NorMuon takes (3-D batches,
/// 4-D convolutions with NorMuon's per-kernel-row statistics and the RMS 0.2 per (out, in) kernel).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SfNorMuonConfig {
    /// Learning rate η.
    pub lr: f32,
    /// Momentum μ.
    pub momentum: f32,
    /// Schedule-Free interpolation β1 (y = (1−β1) z + β1 x).
    pub beta1: f32,
    /// Per-row second-moment decay β2.
    pub beta2: f32,
    /// Weight decay λ on z.
    pub weight_decay: f32,
    /// The polar factor.
    pub polar: crate::linalg::PolarConfig,
}

impl Default for SfNorMuonConfig {
    fn default() -> Self {
        SfNorMuonConfig {
            lr: 0.02,
            momentum: 0.95,
            beta1: 0.9,
            beta2: 0.95,
            weight_decay: 0.0,
            polar: crate::linalg::PolarConfig::default(),
        }
    }
}

impl SfNorMuonConfig {
    /// The NorMuon (paper scaling) part.
    pub(crate) fn normuon(&self) -> NorMuonConfig {
        NorMuonConfig {
            lr: self.lr,
            momentum: self.momentum,
            nesterov: false,
            weight_decay: 0.0,
            beta2: self.beta2,
            scaling: NorMuonScaling::PaperRms02,
            polar: self.polar.clone(),
        }
    }
}
