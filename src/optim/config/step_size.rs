//! Step-size rules shared by all groups.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

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
