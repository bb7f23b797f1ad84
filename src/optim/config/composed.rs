//! Elementwise optimizers as compositions of stages (architecture.md, layer `optim`; the stage equations are those
//! of docs/optimizers.md §7.1 AdamW, §7.4 Lion, §7.5 Signum and torch.optim.SGD): weight decay → momentum →
//! lookahead → normalization → apply, fused into one kernel per bucket. SGD, AdamW, Lion and Signum are presets of
//! [`ComposedConfig`] (their `From` conversions); other compositions — Adam with Nesterov momentum, RMSprop with
//! L2, Signum with coupled decay, Lion with an Adam denominator — are configuration, not new code.

use serde::{Deserialize, Serialize};

use super::{AdamWConfig, LionConfig, SgdConfig, SignumConfig};

/// How weight decay enters the step.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DecayStage {
    /// No weight decay.
    #[default]
    None,
    /// L2: `g ← g + λ·p` before every other stage (torch.optim.SGD / Adam's `weight_decay`).
    Coupled(f32),
    /// Decoupled: `p ← p·(1 − lr·λ)` before the update (AdamW, Lion).
    Decoupled(f32),
}

/// The momentum stage; its β is the group's β1, which a momentum schedule scales.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MomentumStage {
    /// The direction is the gradient.
    #[default]
    None,
    /// `m ← β·m + (1−β)·g` (Adam's first moment; bias-corrected by the Adam normalization).
    Ema {
        /// β.
        beta: f32,
    },
    /// torch.optim.SGD's buffer: `b ← g` on the first step, then `b ← β·b + (1 − dampening)·g`; the direction is
    /// `b`, or `g + β·b` with `nesterov`.
    HeavyBall {
        /// β.
        beta: f32,
        /// Dampening of the gradient in the buffer.
        dampening: f32,
        /// Nesterov's form (needs dampening = 0, as torch requires).
        nesterov: bool,
    },
}

/// A lookahead on EMA momentum: which mix of momentum and gradient the normalization sees.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LookaheadStage {
    /// The momentum itself.
    #[default]
    None,
    /// `(1 − w)·m + w·g` with the updated momentum (Signum's λ; w = 1 − β is Nesterov's form of EMA momentum).
    Mix {
        /// The gradient's weight w ∈ [0, 1].
        weight: f32,
    },
    /// Lion's interpolation `β·m_prev + (1 − β)·g` with the momentum before its update; this β is then the
    /// group's β1 (a momentum schedule scales it) and the EMA keeps its own.
    Lion {
        /// The interpolation β.
        beta: f32,
    },
}

/// The normalization of the direction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NormalizeStage {
    /// The direction as it is (SGD).
    #[default]
    None,
    /// Its sign (Signum, Lion).
    Sign,
    /// torch Adam's: `(d / bc1) / (sqrt(v) / sqrt(bc2) + ε)` with `v ← β2·v + (1−β2)·g²` (g after coupled decay),
    /// bc2 = 1 − β2^t; bc1 = 1 − β^t with EMA momentum (none or mix lookahead), else 1.
    Adam {
        /// β2.
        beta2: f32,
        /// ε, outside the square root.
        eps: f32,
        /// Normalize by the running maximum of v.
        amsgrad: bool,
    },
}

/// An elementwise optimizer composed of stages, applied per element in this order: `weight_decay`, `momentum`,
/// `lookahead`, `normalize`, then `p ← p − lr·d`. One fused kernel per bucket; the group's lr schedule, global-norm
/// clipping and the non-finite guard apply as to every optimizer. States (in order, present when used):
/// `exp_avg` (EMA momentum) or `momentum_buffer` (heavy ball), `exp_avg_sq`, `max_exp_avg_sq`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ComposedConfig {
    /// Learning rate.
    pub lr: f32,
    /// Weight decay stage.
    pub weight_decay: DecayStage,
    /// Momentum stage.
    pub momentum: MomentumStage,
    /// Lookahead stage (EMA momentum only).
    pub lookahead: LookaheadStage,
    /// Normalization stage.
    pub normalize: NormalizeStage,
    /// Ascend instead of descend.
    pub maximize: bool,
}

impl Default for ComposedConfig {
    /// Plain SGD at lr 1e-3: every stage off; JSON configs switch on the stages they name.
    fn default() -> Self {
        ComposedConfig {
            lr: 1e-3,
            weight_decay: DecayStage::None,
            momentum: MomentumStage::None,
            lookahead: LookaheadStage::None,
            normalize: NormalizeStage::None,
            maximize: false,
        }
    }
}

impl From<SgdConfig> for ComposedConfig {
    fn from(c: SgdConfig) -> Self {
        let momentum = if c.momentum > 0.0 {
            MomentumStage::HeavyBall { beta: c.momentum, dampening: c.dampening, nesterov: c.nesterov }
        } else {
            MomentumStage::None
        };
        ComposedConfig {
            lr: c.lr,
            weight_decay: decay(c.weight_decay, DecayStage::Coupled),
            momentum,
            maximize: c.maximize,
            ..Default::default()
        }
    }
}

impl From<AdamWConfig> for ComposedConfig {
    fn from(c: AdamWConfig) -> Self {
        ComposedConfig {
            lr: c.lr,
            weight_decay: decay(c.weight_decay, DecayStage::Decoupled),
            momentum: MomentumStage::Ema { beta: c.beta1 },
            lookahead: LookaheadStage::None,
            normalize: NormalizeStage::Adam { beta2: c.beta2, eps: c.eps, amsgrad: c.amsgrad },
            maximize: c.maximize,
        }
    }
}

impl From<LionConfig> for ComposedConfig {
    fn from(c: LionConfig) -> Self {
        ComposedConfig {
            lr: c.lr,
            weight_decay: decay(c.weight_decay, DecayStage::Decoupled),
            momentum: MomentumStage::Ema { beta: c.beta2 },
            lookahead: LookaheadStage::Lion { beta: c.beta1 },
            normalize: NormalizeStage::Sign,
            maximize: false,
        }
    }
}

impl From<SignumConfig> for ComposedConfig {
    /// The harness's `p − lr·(sign(·) + wd·p)` is decoupled decay before the update.
    fn from(c: SignumConfig) -> Self {
        ComposedConfig {
            lr: c.lr,
            weight_decay: decay(c.weight_decay, DecayStage::Decoupled),
            momentum: MomentumStage::Ema { beta: c.beta1 },
            lookahead: LookaheadStage::Mix { weight: c.lookahead },
            normalize: NormalizeStage::Sign,
            maximize: false,
        }
    }
}

fn decay(wd: f32, form: fn(f32) -> DecayStage) -> DecayStage {
    if wd > 0.0 {
        form(wd)
    } else {
        DecayStage::None
    }
}

/// The kernel's view of a composition: `//#if` switches, the four hyper-parameter slots `h` (λ, β2, ε, and the
/// dampening / lookahead weight / Lion's EMA β), the scheduled β1 and Adam's β2.
pub(crate) struct StagePlan {
    pub defines: Vec<(&'static str, String)>,
    pub h: [f32; 4],
    pub beta1: f32,
    pub beta2: f32,
}

impl ComposedConfig {
    /// The kernel switches and slots of this composition.
    pub(crate) fn plan(&self) -> StagePlan {
        let mut on: Vec<&'static str> = Vec::new();
        let mut h = [0.0f32; 4];
        match self.weight_decay {
            DecayStage::None => {}
            DecayStage::Coupled(l) => {
                on.push("WD_COUPLED");
                h[0] = l;
            }
            DecayStage::Decoupled(l) => {
                on.push("WD_DECOUPLED");
                h[0] = l;
            }
        }
        let mut beta1 = 0.0;
        match self.momentum {
            MomentumStage::None => {}
            MomentumStage::Ema { beta } => {
                on.push("MOM_EMA");
                beta1 = beta;
                match self.lookahead {
                    LookaheadStage::None => on.push("BIAS_CORRECT"),
                    LookaheadStage::Mix { weight } => {
                        on.push("LOOK_MIX");
                        on.push("BIAS_CORRECT");
                        h[3] = weight;
                    }
                    // The interpolation's β is the scheduled one; the EMA's moves to a slot.
                    LookaheadStage::Lion { beta: b } => {
                        on.push("LOOK_LION");
                        h[3] = beta;
                        beta1 = b;
                    }
                }
            }
            MomentumStage::HeavyBall { beta, dampening, nesterov } => {
                on.push("MOM_HEAVY");
                if nesterov {
                    on.push("NESTEROV");
                }
                h[3] = dampening;
                beta1 = beta;
            }
        }
        let mut beta2 = 0.0;
        match self.normalize {
            NormalizeStage::None => {}
            NormalizeStage::Sign => on.push("NORM_SIGN"),
            NormalizeStage::Adam { beta2: b2, eps, amsgrad } => {
                on.push("NORM_ADAM");
                if amsgrad {
                    on.push("AMSGRAD");
                }
                (h[1], h[2], beta2) = (b2, eps, b2);
            }
        }
        // Second-moment states follow the momentum state when there is one.
        let first = if matches!(self.momentum, MomentumStage::None) { 0 } else { 1 };
        let mut defines: Vec<(&'static str, String)> = on.into_iter().map(|d| (d, "1".to_string())).collect();
        defines.push(("V_STATE", format!("s{first}")));
        defines.push(("VMAX_STATE", format!("s{}", first + 1)));
        StagePlan { defines, h, beta1, beta2 }
    }

    /// Canonical state names of this composition (the presets keep their reference names).
    pub(crate) fn state_names(&self) -> &'static [&'static str] {
        let adam = match self.normalize {
            NormalizeStage::Adam { amsgrad: true, .. } => 2,
            NormalizeStage::Adam { .. } => 1,
            _ => 0,
        };
        match (self.momentum, adam) {
            (MomentumStage::None, 0) => &[],
            (MomentumStage::None, 1) => &["exp_avg_sq"],
            (MomentumStage::None, _) => &["exp_avg_sq", "max_exp_avg_sq"],
            (MomentumStage::Ema { .. }, 0) => &["exp_avg"],
            (MomentumStage::Ema { .. }, 1) => &["exp_avg", "exp_avg_sq"],
            (MomentumStage::Ema { .. }, _) => &["exp_avg", "exp_avg_sq", "max_exp_avg_sq"],
            (MomentumStage::HeavyBall { .. }, 0) => &["momentum_buffer"],
            (MomentumStage::HeavyBall { .. }, 1) => &["momentum_buffer", "exp_avg_sq"],
            (MomentumStage::HeavyBall { .. }, _) => &["momentum_buffer", "exp_avg_sq", "max_exp_avg_sq"],
        }
    }

    /// Checks every stage's hyper-parameters: `Err((field, value, wanted))` names the first bad one.
    pub(crate) fn check(&self) -> Result<(), (&'static str, f32, &'static str)> {
        let beta = |f, v: f32| if (0.0..1.0).contains(&v) { Ok(()) } else { Err((f, v, "in [0, 1)")) };
        let unit = |f, v: f32| if (0.0..=1.0).contains(&v) { Ok(()) } else { Err((f, v, "in [0, 1]")) };
        match self.weight_decay {
            DecayStage::Coupled(l) | DecayStage::Decoupled(l) if !(l >= 0.0 && l.is_finite()) => {
                return Err(("weight_decay", l, "≥ 0"))
            }
            _ => {}
        }
        match self.momentum {
            MomentumStage::None => {}
            MomentumStage::Ema { beta: b } => beta("momentum.beta", b)?,
            MomentumStage::HeavyBall { beta: b, dampening, nesterov } => {
                beta("momentum.beta", b)?;
                unit("momentum.dampening", dampening)?;
                if nesterov && (b <= 0.0 || dampening != 0.0) {
                    return Err(("momentum.nesterov", dampening, "used with momentum > 0 and dampening = 0"));
                }
            }
        }
        match (self.lookahead, self.momentum) {
            (LookaheadStage::None, _) => {}
            (_, MomentumStage::HeavyBall { .. } | MomentumStage::None) => {
                return Err(("lookahead", 0.0, "used with EMA momentum only"))
            }
            (LookaheadStage::Mix { weight }, _) => unit("lookahead.weight", weight)?,
            (LookaheadStage::Lion { beta: b }, _) => beta("lookahead.beta", b)?,
        }
        if let NormalizeStage::Adam { beta2, eps, .. } = self.normalize {
            beta("normalize.beta2", beta2)?;
            if !(eps > 0.0 && eps.is_finite()) {
                return Err(("normalize.eps", eps, "> 0"));
            }
        }
        Ok(())
    }
}
