//! Configurations of the elementwise optimizers with their reference defaults (docs/optimizers.md §7, §8.7).

use serde::{Deserialize, Serialize};

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
        AdamWConfig {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 1e-2,
            amsgrad: false,
            maximize: false,
        }
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
        OnaConfig {
            lr: 1e-3,
            beta: 0.98,
            beta_h: 0.92,
            kappa: 0.92,
            weight_decay: 0.0,
            adam: false,
            beta2: 0.999,
            eps: 1e-8,
        }
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
