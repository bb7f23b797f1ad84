//! Learning-rate and momentum schedules, evaluated on the device in the step prologue
//! (`shaders/optim/prologue.wgsl`) from the device-side step counter; [`Schedule::factor`] is the same formula
//! on the CPU, for references and tests.

use serde::{Deserialize, Serialize};

/// Learning-rate multiplier as a function of `k`, the number of steps already applied (0 for the first step).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Schedule {
    /// Always 1.
    #[default]
    Constant,
    /// nanoGPT's schedule: `(k+1)/(warmup+1)` while `k < warmup`, then cosine from 1 to `min_ratio` at `total`,
    /// and `min_ratio` after.
    WarmupCosine {
        /// Warmup steps.
        warmup: u32,
        /// Step at which the cosine reaches `min_ratio`.
        total: u32,
        /// Final multiplier.
        min_ratio: f32,
    },
    /// Linear warmup `(k+1)/warmup`, then 1 (Schedule-Free's `warmup_steps`).
    Warmup {
        /// Warmup steps.
        warmup: u32,
    },
    /// Warmup-stable-decay (trapezoid): `(k+1)/warmup`, then 1, then linear to `min_ratio` over the last `decay`
    /// steps before `total`.
    WarmupStableDecay {
        /// Warmup steps.
        warmup: u32,
        /// Step at which the decay ends.
        total: u32,
        /// Length of the final linear decay.
        decay: u32,
        /// Final multiplier.
        min_ratio: f32,
    },
}

impl Schedule {
    /// The multiplier at completed-step count `k` (f32 arithmetic as on the device).
    pub fn factor(&self, k: u32) -> f32 {
        let k = k as f32;
        match *self {
            Schedule::Constant => 1.0,
            Schedule::Warmup { warmup } => ((k + 1.0) / warmup as f32).min(1.0),
            Schedule::WarmupCosine { warmup, total, min_ratio } => {
                let w = warmup as f32;
                if k < w {
                    return (k + 1.0) / (w + 1.0);
                }
                let p = ((k - w) / (total as f32 - w).max(1.0)).clamp(0.0, 1.0);
                min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + (std::f32::consts::PI * p).cos())
            }
            Schedule::WarmupStableDecay { warmup, total, decay, min_ratio } => {
                if k < warmup as f32 {
                    return (k + 1.0) / warmup as f32;
                }
                let start = total as f32 - decay as f32;
                if k < start {
                    return 1.0;
                }
                1.0 - (1.0 - min_ratio) * ((k - start) / (decay as f32).max(1.0)).clamp(0.0, 1.0)
            }
        }
    }

    pub(crate) fn validate(&self) -> Result<(), String> {
        match *self {
            Schedule::Constant => Ok(()),
            Schedule::Warmup { warmup } => {
                if warmup == 0 {
                    Err("warmup must be ≥ 1".into())
                } else {
                    Ok(())
                }
            }
            Schedule::WarmupCosine { warmup, total, min_ratio } => {
                if total < warmup {
                    return Err(format!("total ({total}) < warmup ({warmup})"));
                }
                ratio(min_ratio)
            }
            Schedule::WarmupStableDecay { warmup, total, decay, min_ratio } => {
                if warmup == 0 || warmup as u64 + decay as u64 > total as u64 {
                    return Err(format!("need warmup ≥ 1 and warmup + decay ≤ total (got {warmup}, {decay}, {total})"));
                }
                ratio(min_ratio)
            }
        }
    }

    /// `(kind, warmup, total, decay, min_ratio)` for the device.
    pub(crate) fn encode(&self) -> (u32, f32, f32, f32, f32) {
        match *self {
            Schedule::Constant => (0, 0.0, 0.0, 0.0, 1.0),
            Schedule::Warmup { warmup } => (3, warmup as f32, 0.0, 0.0, 1.0),
            Schedule::WarmupCosine { warmup, total, min_ratio } => (1, warmup as f32, total as f32, 0.0, min_ratio),
            Schedule::WarmupStableDecay { warmup, total, decay, min_ratio } => {
                (2, warmup as f32, total as f32, decay as f32, min_ratio)
            }
        }
    }
}

fn ratio(r: f32) -> Result<(), String> {
    if (0.0..=1.0).contains(&r) {
        Ok(())
    } else {
        Err(format!("min_ratio {r} outside [0, 1]"))
    }
}

/// Momentum (β1) warmup and cooldown, as modded-nanogpt does for Muon: linear from `start` to the optimizer's β1
/// over `warmup` steps, and back to `start` over the last `cooldown` steps before `total`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MomentumSchedule {
    /// β1 at the start (and after cooldown).
    pub start: f32,
    /// Warmup length in steps.
    pub warmup: u32,
    /// Cooldown length in steps (0 for none).
    pub cooldown: u32,
    /// Step at which the cooldown ends.
    pub total: u32,
}

impl MomentumSchedule {
    /// β1 at completed-step count `k` for an optimizer whose β1 is `beta1`.
    pub fn beta1(&self, beta1: f32, k: u32) -> f32 {
        let k = k as f32;
        let mix = |a: f32, b: f32, t: f32| a * (1.0 - t) + b * t;
        let mut b = beta1;
        if k < self.warmup as f32 {
            b = mix(self.start, beta1, k / self.warmup as f32);
        }
        let cool = self.total as f32 - self.cooldown as f32;
        if self.cooldown > 0 && k >= cool {
            b = mix(beta1, self.start, ((k - cool) / self.cooldown as f32).min(1.0));
        }
        b
    }

    pub(crate) fn validate(&self) -> Result<(), String> {
        if !(0.0..1.0).contains(&self.start) {
            return Err(format!("momentum start {} outside [0, 1)", self.start));
        }
        if self.cooldown > self.total {
            return Err(format!("cooldown {} > total {}", self.cooldown, self.total));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_of_the_schedules() {
        let c = Schedule::WarmupCosine { warmup: 10, total: 110, min_ratio: 0.1 };
        assert!((c.factor(0) - 1.0 / 11.0).abs() < 1e-7);
        assert!((c.factor(10) - 1.0).abs() < 1e-7);
        assert!((c.factor(60) - 0.55).abs() < 1e-6);
        assert!((c.factor(500) - 0.1).abs() < 1e-7);
        let w = Schedule::WarmupStableDecay { warmup: 4, total: 20, decay: 8, min_ratio: 0.0 };
        assert_eq!(w.factor(0), 0.25);
        assert_eq!(w.factor(11), 1.0);
        assert_eq!(w.factor(16), 0.5);
        assert_eq!(w.factor(30), 0.0);
        let m = MomentumSchedule { start: 0.85, warmup: 300, cooldown: 50, total: 1000 };
        assert!((m.beta1(0.95, 150) - 0.90).abs() < 1e-6);
        assert_eq!(m.beta1(0.95, 500), 0.95);
        assert!((m.beta1(0.95, 975) - 0.90).abs() < 1e-6);
        assert!(Schedule::WarmupCosine { warmup: 5, total: 2, min_ratio: 0.0 }.validate().is_err());
    }
}
