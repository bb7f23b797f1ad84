//! Configurations of the Schedule-Free family (docs/optimizers.md §8.1, §8.2, §8.5).

use serde::{Deserialize, Serialize};

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
        ScheduleFreeAdamWConfig {
            lr: 0.0025,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            r: 0.0,
            weight_lr_power: 2.0,
            inner_momentum: 0.0,
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
