//! Configurations of the elementwise optimizers, with the defaults of their reference implementations
//! (docs/optimizers.md §7) and validation that names the offending field.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// torch.optim.SGD: coupled weight decay, momentum buffer initialized to the first gradient.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SgdConfig {
    /// Learning rate.
    pub lr: f32,
    /// Momentum μ (0 disables the buffer).
    pub momentum: f32,
    /// Dampening of the gradient in the momentum buffer.
    pub dampening: f32,
    /// Coupled L2 weight decay (added to the gradient).
    pub weight_decay: f32,
    /// Nesterov momentum (needs momentum > 0 and dampening = 0, as torch requires).
    pub nesterov: bool,
    /// Ascend instead of descend.
    pub maximize: bool,
}

impl Default for SgdConfig {
    fn default() -> Self {
        SgdConfig { lr: 1e-3, momentum: 0.0, dampening: 0.0, weight_decay: 0.0, nesterov: false, maximize: false }
    }
}

/// torch.optim.AdamW (§7.1): decoupled WD-pre, bias-corrected, eps outside the square root.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdamWConfig {
    /// Learning rate.
    pub lr: f32,
    /// β1.
    pub beta1: f32,
    /// β2.
    pub beta2: f32,
    /// ε.
    pub eps: f32,
    /// Decoupled weight decay.
    pub weight_decay: f32,
    /// Use the running maximum of v.
    pub amsgrad: bool,
    /// Ascend instead of descend.
    pub maximize: bool,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 1e-2, amsgrad: false, maximize: false }
    }
}

/// Lion (google/automl, §7.4).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LionConfig {
    /// Learning rate.
    pub lr: f32,
    /// β1 (interpolation for the sign).
    pub beta1: f32,
    /// β2 (momentum EMA).
    pub beta2: f32,
    /// Decoupled weight decay.
    pub weight_decay: f32,
}

impl Default for LionConfig {
    fn default() -> Self {
        LionConfig { lr: 1e-4, beta1: 0.9, beta2: 0.99, weight_decay: 0.0 }
    }
}

/// Signum as in kvfrans/matrix-whitening (§7.5): `m ← β m + (1−β) g; p ← p − lr(sign((1−λ)m + λg) + wd·p)`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SignumConfig {
    /// Learning rate.
    pub lr: f32,
    /// Momentum β.
    pub beta1: f32,
    /// Lookahead λ ∈ [0, 1].
    pub lookahead: f32,
    /// Weight decay (inside the step, as the harness applies it).
    pub weight_decay: f32,
}

impl Default for SignumConfig {
    fn default() -> Self {
        SignumConfig { lr: 0.01, beta1: 0.9, lookahead: 0.0, weight_decay: 0.0 }
    }
}

/// SGDScheduleFree (facebookresearch/schedule_free, efficient form, §8.1). Warmup: [`crate::optim::Schedule::Warmup`].
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScheduleFreeSgdConfig {
    /// Learning rate.
    pub lr: f32,
    /// Interpolation β between the averaged x and the fast z.
    pub momentum: f32,
    /// Weight decay, evaluated at y.
    pub weight_decay: f32,
    /// Exponent r of the step-count weighting.
    pub r: f32,
    /// Power of lr_max in the averaging weights.
    pub weight_lr_power: f32,
}

impl Default for ScheduleFreeSgdConfig {
    fn default() -> Self {
        ScheduleFreeSgdConfig { lr: 1.0, momentum: 0.9, weight_decay: 0.0, r: 0.0, weight_lr_power: 2.0 }
    }
}

/// AdamWScheduleFree (facebookresearch/schedule_free, efficient form, §8.2). Warmup: [`crate::optim::Schedule::Warmup`].
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScheduleFreeAdamWConfig {
    /// Learning rate.
    pub lr: f32,
    /// β1: interpolation between x and z.
    pub beta1: f32,
    /// β2 of the second moment.
    pub beta2: f32,
    /// ε.
    pub eps: f32,
    /// Weight decay, evaluated at y and added to the normalized step.
    pub weight_decay: f32,
    /// Exponent r of the step-count weighting.
    pub r: f32,
    /// Power of lr_max in the averaging weights.
    pub weight_lr_power: f32,
    /// Inner momentum μ (0 disables it).
    pub inner_momentum: f32,
}

impl Default for ScheduleFreeAdamWConfig {
    fn default() -> Self {
        ScheduleFreeAdamWConfig { lr: 0.0025, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0, r: 0.0, weight_lr_power: 2.0, inner_momentum: 0.0 }
    }
}

/// Momentum with Online-Newton Adjustment (docs/optimizers.md §8.7). **Provisional**: no paper text or code was
/// found; this is the spec's reconstruction: `d = g − g_prev` (0 at the first step), `h ← β_h h + (1−β_h) d`,
/// `m ← β m + (1−β)(g + κ h)`, then `p ← p − lr·m` or, with `adam`, `p ← p − lr·(m/bc1)/(sqrt(v/bc2) + eps)`;
/// decoupled weight decay before the step. Defaults κ = β_h = 0.92, β = 0.98 as the spec recommends.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OnaConfig {
    /// Learning rate.
    pub lr: f32,
    /// Momentum β.
    pub beta: f32,
    /// EMA decay β_h of the gradient differences.
    pub beta_h: f32,
    /// Injection weight κ of the curvature proxy.
    pub kappa: f32,
    /// Decoupled weight decay.
    pub weight_decay: f32,
    /// Normalize by an Adam second moment.
    pub adam: bool,
    /// β2 of the second moment (with `adam`).
    pub beta2: f32,
    /// ε (with `adam`).
    pub eps: f32,
}

impl Default for OnaConfig {
    fn default() -> Self {
        OnaConfig { lr: 1e-3, beta: 0.98, beta_h: 0.92, kappa: 0.92, weight_decay: 0.0, adam: false, beta2: 0.999, eps: 1e-8 }
    }
}

/// A step-size rule shared by every group: each group's scheduled learning rate is multiplied by it.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "rule", rename_all = "snake_case", deny_unknown_fields)]
pub enum StepSizeRule {
    /// FusionOpt's Polyak rule (seed 003, decisions §10): `γ = lr · clamp(loss_ema / gnorm_ema, min, max)` with
    /// EMAs of the loss and of the global gradient norm. The EMA decay is not given by the source; ours is `beta`
    /// (default 0.9). Both EMAs use it, so their bias corrections cancel in the ratio.
    PolyakClamp {
        /// EMA decay.
        beta: f32,
        /// Lower clamp of the ratio.
        min: f32,
        /// Upper clamp of the ratio.
        max: f32,
    },
}

impl Default for StepSizeRule {
    fn default() -> Self {
        StepSizeRule::PolyakClamp { beta: 0.9, min: 0.1, max: 10.0 }
    }
}

impl StepSizeRule {
    pub(crate) fn validate(&self) -> Result<()> {
        let StepSizeRule::PolyakClamp { beta, min, max } = *self;
        if !((0.0..1.0).contains(&beta) && min > 0.0 && min <= max && max.is_finite()) {
            return Err(Error::InvalidArgument {
                op: "step size rule",
                name: "polyak_clamp",
                detail: format!("need beta in [0, 1) and 0 < min ≤ max < ∞ (got {beta}, {min}, {max})"),
            });
        }
        Ok(())
    }
}

/// Adafactor with HF transformers semantics (§7.2): relative step size, parameter-scale step, update clipping,
/// factored second moment over the last two dimensions of tensors with ≥ 2 dimensions. With `relative_step`,
/// the group's learning-rate schedule multiplies ρ (a constant schedule reproduces HF exactly).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdafactorConfig {
    /// External learning rate; must be absent with `relative_step` (as HF requires).
    pub lr: Option<f32>,
    /// ε1 added to g².
    pub eps1: f32,
    /// ε2: lower bound of the parameter scale.
    pub eps2: f32,
    /// Update-clipping threshold on RMS(u).
    pub clip_threshold: f32,
    /// β2t = 1 − t^decay_rate.
    pub decay_rate: f32,
    /// First-moment decay (momentum on the scaled update); `None` disables it.
    pub beta1: Option<f32>,
    /// Weight decay scaled by the step size α.
    pub weight_decay: f32,
    /// Scale the step by max(ε2, RMS(p)).
    pub scale_parameter: bool,
    /// ρ = min(1e-2, 1/√t) instead of `lr`.
    pub relative_step: bool,
    /// ρ = min(1e-6·t, 1/√t) (needs `relative_step`).
    pub warmup_init: bool,
}

impl Default for AdafactorConfig {
    fn default() -> Self {
        AdafactorConfig {
            lr: None,
            eps1: 1e-30,
            eps2: 1e-3,
            clip_threshold: 1.0,
            decay_rate: -0.8,
            beta1: None,
            weight_decay: 0.0,
            scale_parameter: true,
            relative_step: true,
            warmup_init: false,
        }
    }
}

/// ScheduleFree+ (AdamC + Schedule-Free + Polyak step; official `AdamCScheduleFreePlusPaper`, §8.5). The step
/// takes the loss at the current y (give it with [`crate::optim::OptimizerBuilder::loss`]); the step size is
/// `lr · max(0, f + β_sf·Σ⟨g, z − x⟩) / ê` with ê the EMA of `‖g‖₁·sqrt(π/2)`. Weight decay is scaled by lr²
/// (AdamC). The parameters hold y; x and z are states. All ScheduleFree+ groups share the Polyak scalar, computed
/// with the first such group's β_sf and polyak_beta.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScheduleFreePlusConfig {
    /// Learning-rate multiplier of the Polyak step.
    pub lr: f32,
    /// Adam β1.
    pub beta1: f32,
    /// Adam β2.
    pub beta2: f32,
    /// Schedule-Free interpolation β_sf.
    pub sf_beta1: f32,
    /// ε (also the initial lr_max and the floor of lr).
    pub eps: f32,
    /// AdamC weight decay (scaled by lr², applied to z at y).
    pub weight_decay: f32,
    /// Exponent r of the step-count weighting.
    pub r: f32,
    /// EMA decay of the L1 gradient norm.
    pub polyak_beta: f32,
    /// Steps with c = 1 (no averaging).
    pub c_warmup: u32,
    /// Steps over which β_sf anneals to `sf_beta1_max` (0: no annealing).
    pub sf_beta1_anneal_steps: u32,
    /// Final β_sf of the annealing.
    pub sf_beta1_max: f32,
    /// Power of lr_max in the averaging weights.
    pub weight_lr_power: f32,
}

impl Default for ScheduleFreePlusConfig {
    fn default() -> Self {
        ScheduleFreePlusConfig {
            lr: 1.0,
            beta1: 0.9,
            beta2: 0.95,
            sf_beta1: 0.9,
            eps: 1e-8,
            weight_decay: 0.0,
            r: 0.0,
            polyak_beta: 0.0,
            c_warmup: 0,
            sf_beta1_anneal_steps: 0,
            sf_beta1_max: 0.965,
            weight_lr_power: 2.0,
        }
    }
}

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

/// AdaMuon, official GPT-2 code (Chongjie-Si/AdaMuon, §3.2): Muon (EMA momentum, Nesterov) on sign(U), then an
/// elementwise second moment of the polar factor with the momentum's β, `Ô = O/(sqrt(V)+eps)` rescaled to RMS 0.2
/// (`0.2·sqrt(min·max of the parameter's dims)/‖Ô‖_F`). The `simplified` variant of §3.3 is not implemented yet.
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
    /// The polar factor.
    pub polar: crate::linalg::PolarConfig,
}

impl Default for AdaMuonConfig {
    fn default() -> Self {
        AdaMuonConfig { lr: 0.02, momentum: 0.95, nesterov: true, weight_decay: 0.01, eps: 1e-8, polar: crate::linalg::PolarConfig::default() }
    }
}

/// One optimizer with its configuration. The serialized form is `{"name": "...", ...fields}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "snake_case")]
pub enum OptimizerConfig {
    /// [`SgdConfig`].
    Sgd(SgdConfig),
    /// [`AdamWConfig`].
    #[serde(rename = "adamw")]
    AdamW(AdamWConfig),
    /// [`LionConfig`].
    Lion(LionConfig),
    /// [`SignumConfig`].
    Signum(SignumConfig),
    /// [`ScheduleFreeSgdConfig`].
    #[serde(rename = "sgd_schedulefree")]
    ScheduleFreeSgd(ScheduleFreeSgdConfig),
    /// [`ScheduleFreeAdamWConfig`].
    #[serde(rename = "adamw_schedulefree")]
    ScheduleFreeAdamW(ScheduleFreeAdamWConfig),
    /// [`OnaConfig`] (provisional).
    Ona(OnaConfig),
    /// [`AdafactorConfig`].
    Adafactor(AdafactorConfig),
    /// [`ScheduleFreePlusConfig`].
    #[serde(rename = "schedulefree_plus")]
    ScheduleFreePlus(ScheduleFreePlusConfig),
    /// [`MuonConfig`] (2-D parameters).
    Muon(MuonConfig),
    /// [`NorMuonConfig`] (2-D parameters).
    #[serde(rename = "normuon")]
    NorMuon(NorMuonConfig),
    /// [`AdaMuonConfig`].
    #[serde(rename = "adamuon")]
    AdaMuon(AdaMuonConfig),
}

/// How an optimizer maps onto the fused update kernel.
pub(crate) struct KernelSpec {
    pub define: &'static str,
    pub states: &'static [&'static str],
    pub flags: u32,
    pub h: [f32; 4],
    pub beta1: f32,
    pub beta2: f32,
    /// Schedule-Free averaging `(r, weight_lr_power)`.
    pub schedule_free: Option<(f32, f32)>,
}

impl OptimizerConfig {
    /// Every optimizer name [`OptimizerConfig::from_json`] knows.
    pub const NAMES: &'static [&'static str] = &["sgd", "adamw", "lion", "signum", "sgd_schedulefree", "adamw_schedulefree", "ona", "adafactor", "schedulefree_plus", "muon", "normuon", "adamuon"];

    /// The optimizer's name as `wgoptim replay` and checkpoints spell it.
    pub fn name(&self) -> &'static str {
        match self {
            OptimizerConfig::Sgd(_) => "sgd",
            OptimizerConfig::AdamW(_) => "adamw",
            OptimizerConfig::Lion(_) => "lion",
            OptimizerConfig::Signum(_) => "signum",
            OptimizerConfig::ScheduleFreeSgd(_) => "sgd_schedulefree",
            OptimizerConfig::ScheduleFreeAdamW(_) => "adamw_schedulefree",
            OptimizerConfig::Ona(_) => "ona",
            OptimizerConfig::Adafactor(_) => "adafactor",
            OptimizerConfig::ScheduleFreePlus(_) => "schedulefree_plus",
            OptimizerConfig::Muon(_) => "muon",
            OptimizerConfig::NorMuon(_) => "normuon",
            OptimizerConfig::AdaMuon(_) => "adamuon",
        }
    }

    /// The base learning rate.
    pub fn lr(&self) -> f32 {
        match self {
            OptimizerConfig::Sgd(c) => c.lr,
            OptimizerConfig::AdamW(c) => c.lr,
            OptimizerConfig::Lion(c) => c.lr,
            OptimizerConfig::Signum(c) => c.lr,
            OptimizerConfig::ScheduleFreeSgd(c) => c.lr,
            OptimizerConfig::ScheduleFreeAdamW(c) => c.lr,
            OptimizerConfig::Ona(c) => c.lr,
            OptimizerConfig::Adafactor(c) => c.lr.unwrap_or(1.0),
            OptimizerConfig::ScheduleFreePlus(c) => c.lr,
            OptimizerConfig::Muon(c) => c.lr,
            OptimizerConfig::NorMuon(c) => c.lr,
            OptimizerConfig::AdaMuon(c) => c.lr,
        }
    }

    /// The Muon pipeline of the Muon family (Muon itself, NorMuon before its row normalization).
    pub(crate) fn muon_pipeline(&self) -> Option<MuonConfig> {
        match self {
            OptimizerConfig::Muon(c) => Some(c.clone()),
            OptimizerConfig::NorMuon(c) => Some(c.muon()),
            OptimizerConfig::AdaMuon(c) => Some(MuonConfig {
                lr: c.lr,
                momentum: c.momentum,
                nesterov: c.nesterov,
                weight_decay: c.weight_decay,
                adjust_lr: AdjustLr::None,
                polar: c.polar.clone(),
                ..MuonConfig::default()
            }),
            _ => None,
        }
    }

    /// Whether the step needs the loss value (given to the builder as a device tensor).
    pub fn takes_loss(&self) -> bool {
        matches!(self, OptimizerConfig::ScheduleFreePlus(_))
    }

    /// Whether the parameters hold Schedule-Free's y during training (then `train()` / `eval()` switch to x).
    pub fn is_schedule_free(&self) -> bool {
        matches!(self, OptimizerConfig::ScheduleFreeSgd(_) | OptimizerConfig::ScheduleFreeAdamW(_))
    }

    /// Parse `{"lr": …}`-style JSON for the optimizer called `name` (unknown fields are an error).
    pub fn from_json(name: &str, json: &str) -> Result<OptimizerConfig> {
        let bad = |e: serde_json::Error| Error::InvalidArgument { op: "optimizer config", name: "config", detail: format!("{name}: {e}") };
        let cfg = match name {
            "sgd" => OptimizerConfig::Sgd(serde_json::from_str(json).map_err(bad)?),
            "adamw" => OptimizerConfig::AdamW(serde_json::from_str(json).map_err(bad)?),
            "lion" => OptimizerConfig::Lion(serde_json::from_str(json).map_err(bad)?),
            "signum" => OptimizerConfig::Signum(serde_json::from_str(json).map_err(bad)?),
            "sgd_schedulefree" => OptimizerConfig::ScheduleFreeSgd(serde_json::from_str(json).map_err(bad)?),
            "adamw_schedulefree" => OptimizerConfig::ScheduleFreeAdamW(serde_json::from_str(json).map_err(bad)?),
            "ona" => OptimizerConfig::Ona(serde_json::from_str(json).map_err(bad)?),
            "adafactor" => OptimizerConfig::Adafactor(serde_json::from_str(json).map_err(bad)?),
            "schedulefree_plus" => OptimizerConfig::ScheduleFreePlus(serde_json::from_str(json).map_err(bad)?),
            "muon" => OptimizerConfig::Muon(serde_json::from_str(json).map_err(bad)?),
            "normuon" => OptimizerConfig::NorMuon(serde_json::from_str(json).map_err(bad)?),
            "adamuon" => OptimizerConfig::AdaMuon(serde_json::from_str(json).map_err(bad)?),
            other => {
                return Err(Error::InvalidArgument {
                    op: "optimizer config",
                    name: "optimizer",
                    detail: format!("unknown optimizer `{other}` (known: {})", Self::NAMES.join(", ")),
                })
            }
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Check every hyper-parameter's range; the error names the field.
    pub fn validate(&self) -> Result<()> {
        let name = self.name();
        let check = |field: &'static str, ok: bool, v: f32, want: &str| {
            if ok && v.is_finite() {
                Ok(())
            } else {
                Err(Error::InvalidArgument { op: "optimizer config", name: field, detail: format!("{name}: {field} = {v}, must be {want}") })
            }
        };
        let beta = |field, v: f32| check(field, (0.0..1.0).contains(&v), v, "in [0, 1)");
        let nonneg = |field, v: f32| check(field, v >= 0.0, v, "≥ 0");
        nonneg("lr", self.lr())?;
        match *self {
            OptimizerConfig::Sgd(c) => {
                nonneg("momentum", c.momentum)?;
                beta("momentum", c.momentum)?;
                check("dampening", (0.0..=1.0).contains(&c.dampening), c.dampening, "in [0, 1]")?;
                nonneg("weight_decay", c.weight_decay)?;
                if c.nesterov && (c.momentum <= 0.0 || c.dampening != 0.0) {
                    return Err(Error::InvalidArgument {
                        op: "optimizer config",
                        name: "nesterov",
                        detail: "sgd: nesterov needs momentum > 0 and dampening = 0".into(),
                    });
                }
            }
            OptimizerConfig::AdamW(c) => {
                beta("beta1", c.beta1)?;
                beta("beta2", c.beta2)?;
                check("eps", c.eps > 0.0, c.eps, "> 0")?;
                nonneg("weight_decay", c.weight_decay)?;
            }
            OptimizerConfig::Lion(c) => {
                beta("beta1", c.beta1)?;
                beta("beta2", c.beta2)?;
                nonneg("weight_decay", c.weight_decay)?;
            }
            OptimizerConfig::Signum(c) => {
                beta("beta1", c.beta1)?;
                check("lookahead", (0.0..=1.0).contains(&c.lookahead), c.lookahead, "in [0, 1]")?;
                nonneg("weight_decay", c.weight_decay)?;
            }
            OptimizerConfig::ScheduleFreeSgd(c) => {
                check("momentum", c.momentum > 0.0 && c.momentum < 1.0, c.momentum, "in (0, 1)")?;
                nonneg("weight_decay", c.weight_decay)?;
                nonneg("r", c.r)?;
                nonneg("weight_lr_power", c.weight_lr_power)?;
            }
            OptimizerConfig::ScheduleFreeAdamW(c) => {
                check("beta1", c.beta1 > 0.0 && c.beta1 < 1.0, c.beta1, "in (0, 1)")?;
                beta("beta2", c.beta2)?;
                check("eps", c.eps > 0.0, c.eps, "> 0")?;
                nonneg("weight_decay", c.weight_decay)?;
                nonneg("r", c.r)?;
                nonneg("weight_lr_power", c.weight_lr_power)?;
                beta("inner_momentum", c.inner_momentum)?;
            }
            OptimizerConfig::AdaMuon(ref c) => {
                check("eps", c.eps > 0.0, c.eps, "> 0")?;
                if let Some(m) = self.muon_pipeline() {
                    OptimizerConfig::Muon(m).validate()?;
                }
            }
            OptimizerConfig::NorMuon(ref c) => {
                beta("beta2", c.beta2)?;
                OptimizerConfig::Muon(c.muon()).validate()?;
            }
            OptimizerConfig::Muon(ref c) => {
                beta("momentum", c.momentum)?;
                nonneg("weight_decay", c.weight_decay)?;
                if c.polar.steps == 0 || c.polar.steps > 100 {
                    return Err(Error::InvalidArgument { op: "optimizer config", name: "polar.steps", detail: format!("muon: {} steps, need 1..=100", c.polar.steps) });
                }
            }
            OptimizerConfig::ScheduleFreePlus(c) => {
                beta("beta1", c.beta1)?;
                beta("beta2", c.beta2)?;
                check("sf_beta1", c.sf_beta1 > 0.0 && c.sf_beta1 < 1.0, c.sf_beta1, "in (0, 1)")?;
                check("sf_beta1_max", c.sf_beta1_max > 0.0 && c.sf_beta1_max < 1.0, c.sf_beta1_max, "in (0, 1)")?;
                check("eps", c.eps > 0.0, c.eps, "> 0")?;
                nonneg("weight_decay", c.weight_decay)?;
                nonneg("r", c.r)?;
                beta("polyak_beta", c.polyak_beta)?;
                nonneg("weight_lr_power", c.weight_lr_power)?;
            }
            OptimizerConfig::Adafactor(c) => {
                let rule = |detail: &str| Err(Error::InvalidArgument { op: "optimizer config", name: "lr", detail: format!("adafactor: {detail}") });
                match (c.lr, c.relative_step) {
                    (Some(_), true) => return rule("a manual lr cannot be combined with relative_step"),
                    (None, false) => return rule("without relative_step an lr is required"),
                    _ => {}
                }
                if c.warmup_init && !c.relative_step {
                    return Err(Error::InvalidArgument { op: "optimizer config", name: "warmup_init", detail: "adafactor: warmup_init needs relative_step".into() });
                }
                check("eps1", c.eps1 >= 0.0, c.eps1, "≥ 0")?;
                check("eps2", c.eps2 >= 0.0, c.eps2, "≥ 0")?;
                check("clip_threshold", c.clip_threshold > 0.0, c.clip_threshold, "> 0")?;
                check("decay_rate", c.decay_rate < 0.0, c.decay_rate, "< 0")?;
                if let Some(b) = c.beta1 {
                    beta("beta1", b)?;
                }
                nonneg("weight_decay", c.weight_decay)?;
            }
            OptimizerConfig::Ona(c) => {
                beta("beta", c.beta)?;
                beta("beta_h", c.beta_h)?;
                nonneg("kappa", c.kappa)?;
                nonneg("weight_decay", c.weight_decay)?;
                beta("beta2", c.beta2)?;
                check("eps", c.eps > 0.0, c.eps, "> 0")?;
            }
        }
        Ok(())
    }

    pub(crate) fn kernel(&self) -> KernelSpec {
        match *self {
            OptimizerConfig::Sgd(c) => KernelSpec {
                define: "OPT_SGD",
                states: if c.momentum > 0.0 { &["momentum_buffer"] } else { &[] },
                flags: c.nesterov as u32 | (c.maximize as u32) << 1,
                h: [c.weight_decay, c.dampening, 0.0, 0.0],
                beta1: c.momentum,
                beta2: 0.0,
                schedule_free: None,
            },
            OptimizerConfig::AdamW(c) => KernelSpec {
                define: "OPT_ADAMW",
                states: if c.amsgrad { &["exp_avg", "exp_avg_sq", "max_exp_avg_sq"] } else { &["exp_avg", "exp_avg_sq"] },
                flags: c.amsgrad as u32 | (c.maximize as u32) << 1,
                h: [c.beta2, c.eps, c.weight_decay, 0.0],
                beta1: c.beta1,
                beta2: c.beta2,
                schedule_free: None,
            },
            OptimizerConfig::Lion(c) => KernelSpec {
                define: "OPT_LION",
                states: &["exp_avg"],
                flags: 0,
                h: [c.beta2, 0.0, c.weight_decay, 0.0],
                beta1: c.beta1,
                beta2: c.beta2,
                schedule_free: None,
            },
            OptimizerConfig::Signum(c) => KernelSpec {
                define: "OPT_SIGNUM",
                states: &["momentum"],
                flags: 0,
                h: [c.lookahead, 0.0, c.weight_decay, 0.0],
                beta1: c.beta1,
                beta2: 0.0,
                schedule_free: None,
            },
            OptimizerConfig::ScheduleFreeSgd(c) => KernelSpec {
                define: "OPT_SF_SGD",
                states: &["z"],
                flags: 0,
                h: [c.weight_decay, 0.0, 0.0, 0.0],
                beta1: c.momentum,
                beta2: 0.0,
                schedule_free: Some((c.r, c.weight_lr_power)),
            },
            OptimizerConfig::ScheduleFreeAdamW(c) => KernelSpec {
                define: "OPT_SF_ADAMW",
                states: if c.inner_momentum > 0.0 { &["z", "exp_avg_sq", "inner_momentum"] } else { &["z", "exp_avg_sq"] },
                flags: 0,
                h: [c.beta2, c.eps, c.weight_decay, c.inner_momentum],
                beta1: c.beta1,
                beta2: c.beta2,
                schedule_free: Some((c.r, c.weight_lr_power)),
            },
            OptimizerConfig::Ona(c) => KernelSpec {
                define: "OPT_ONA",
                states: if c.adam { &["grad_prev", "diff_avg", "exp_avg", "exp_avg_sq"] } else { &["grad_prev", "diff_avg", "exp_avg"] },
                flags: c.adam as u32,
                h: [c.beta_h, c.kappa, c.weight_decay, c.eps],
                beta1: c.beta,
                beta2: c.beta2,
                schedule_free: None,
            },
            OptimizerConfig::ScheduleFreePlus(c) => KernelSpec {
                define: "OPT_SF_PLUS",
                states: &["z", "x", "exp_avg", "exp_avg_sq"],
                flags: 0,
                h: [c.beta2, c.eps, c.weight_decay, 0.0],
                beta1: c.beta1,
                beta2: c.beta2,
                schedule_free: None,
            },
            // Muon has its own kernels around the polar factor (src/optim/builder.rs).
            OptimizerConfig::Muon(ref c) => KernelSpec {
                define: "OPT_MUON",
                states: &["momentum_buffer"],
                flags: c.nesterov as u32 | ((c.momentum_kind == MomentumKind::Sum) as u32) << 1,
                h: [c.weight_decay, 0.0, 0.0, 0.0],
                beta1: c.momentum,
                beta2: 0.0,
                schedule_free: None,
            },
            OptimizerConfig::NorMuon(ref c) => KernelSpec { states: &["momentum_buffer"], ..OptimizerConfig::Muon(c.muon()).kernel() },
            OptimizerConfig::AdaMuon(_) => KernelSpec {
                states: &["momentum_buffer", "exp_avg_sq"],
                ..OptimizerConfig::Muon(self.muon_pipeline().unwrap_or_default()).kernel()
            },
            // Adafactor has its own kernel and state layout (src/optim/builder.rs); this spec only names it.
            OptimizerConfig::Adafactor(c) => KernelSpec {
                define: "OPT_ADAFACTOR",
                states: &[],
                flags: c.relative_step as u32 | (c.scale_parameter as u32) << 1 | (c.warmup_init as u32) << 2 | (c.beta1.is_some() as u32) << 3,
                h: [c.eps1, c.eps2, c.clip_threshold, c.decay_rate],
                beta1: c.beta1.unwrap_or(0.0),
                beta2: 0.0,
                schedule_free: None,
            },
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
