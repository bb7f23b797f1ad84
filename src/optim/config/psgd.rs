//! PSGD-Kron (docs/optimizers.md §6): the kron_torch semantics with a deterministic update schedule.

use std::cell::Cell;

use serde::{Deserialize, Serialize};

/// kron_torch's preconditioner-update probability `p(n) = max_prob` for `n < flat_start`, then
/// `max(min_prob, max_prob·exp(−decay·(n − flat_start)))`, applied by its deterministic counter: call n updates
/// when the calls since the last update reach `1/p(n)`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UpdateSchedule {
    /// The probability during the flat start.
    pub max_prob: f32,
    /// The floor of the decayed probability.
    pub min_prob: f32,
    /// The exponential decay rate per call after the flat start.
    pub decay: f32,
    /// Calls at `max_prob`.
    pub flat_start: u32,
}

impl Default for UpdateSchedule {
    fn default() -> Self {
        UpdateSchedule { max_prob: 1.0, min_prob: 0.03, decay: 0.001, flat_start: 500 }
    }
}

impl UpdateSchedule {
    /// The probability at 0-based call `n`.
    pub fn prob(&self, n: u64) -> f32 {
        if n < self.flat_start as u64 {
            self.max_prob
        } else {
            let decayed = self.max_prob * (-self.decay * (n - self.flat_start as u64) as f32).exp();
            decayed.max(self.min_prob)
        }
    }

    /// Whether 0-based call `n` updates the preconditioner (kron_torch's counter, replayed from call 0).
    pub fn updates_at(&self, n: u64) -> bool {
        UpdateCounter::default().updates_at(self, n)
    }
}

/// The counter of [`UpdateSchedule::updates_at`], remembered between consecutive calls so a run is linear in
/// its length (a jump, e.g. after loading a checkpoint, replays from call 0).
#[derive(Debug, Default)]
pub(crate) struct UpdateCounter {
    /// (next call, calls since the last update before it).
    at: Cell<(u64, u64)>,
}

impl UpdateCounter {
    pub(crate) fn updates_at(&self, s: &UpdateSchedule, n: u64) -> bool {
        let (mut call, mut counter) = self.at.get();
        if call > n {
            (call, counter) = (0, 0);
        }
        let mut update = false;
        while call <= n {
            counter += 1;
            update = counter as f32 >= 1.0 / s.prob(call);
            if update {
                counter = 0;
            }
            call += 1;
        }
        self.at.set((call, counter));
        update
    }
}

/// Where the preconditioner update's random probes V come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Probes {
    /// Standard normals from a counter-based hash of (seed, applied step, element): reproducible, resumable.
    Hash {
        /// The seed.
        seed: u32,
    },
    /// The caller writes each parameter's state `probe` before the step (`wgoptim replay` writes `rand/<t>/<name>`
    /// there).
    External,
}

/// PSGD-Kron as evanatyourservice/kron_torch (docs/optimizers.md §6) for 2-D matrices: upper-triangular
/// factors `Q_L` (m×m), `Q_R` (n×n) starting at `sqrt(precond_init_scale)·I`; EMA momentum `M ← β1 M + (1−β1) G`,
/// `M̂ = M/(1−β1^t)`; on the calls the [`UpdateSchedule`] picks, the preconditioner update
/// `Gin = M̂ + sqrt(ε_f32)·mean|M̂|·V`, `A = Q_L·Gin·Q_Rᵀ`, `B = Q_L^{-T}·V·Q_R^{-1}` (triangular solves),
/// `Q_L ← Q_L − precond_lr·triu(AAᵀ − BBᵀ)/lb(AAᵀ + BBᵀ)·Q_L` and likewise `Q_R` from `AᵀA`, `BᵀB`
/// (both from the old factors; lb: the reference's cheap lower bound on the spectral norm); then the direction
/// `P = Q_Lᵀ·Q_L·M̂·Q_Rᵀ·Q_R`, RMS-clipped to `rms_clip` (`P·min(1, c/(RMS(P) + 1e-12))`), and the coupled
/// decay `p ← p − lr·(P + wd·p)`.
///
/// Ours: the update schedule is kron_torch's deterministic counter on the host's call count; the factors are
/// balanced (each scaled to the geometric mean of their max-norms, which leaves the preconditioner and every
/// update unchanged) before every preconditioner update instead of with probability 0.01; sides above the
/// device's 2048 are a routing error (kron_torch switches them to diagonal factors above 8192).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PsgdKronConfig {
    /// Learning rate.
    pub lr: f32,
    /// Momentum β1.
    pub beta1: f32,
    /// Weight decay, coupled (`P + wd·p`).
    pub weight_decay: f32,
    /// The preconditioner's step size.
    pub precond_lr: f32,
    /// The factors start at `sqrt(precond_init_scale)·I`.
    pub precond_init_scale: f32,
    /// When the preconditioner is updated.
    pub update_schedule: UpdateSchedule,
    /// Fit the preconditioner to the debiased momentum (else to the gradient).
    pub momentum_into_precond_update: bool,
    /// The RMS the direction is clipped to.
    pub rms_clip: f32,
    /// The random probes.
    pub probes: Probes,
}

impl Default for PsgdKronConfig {
    fn default() -> Self {
        PsgdKronConfig {
            lr: 3e-4,
            beta1: 0.9,
            weight_decay: 0.0,
            precond_lr: 0.1,
            precond_init_scale: 1.0,
            update_schedule: UpdateSchedule::default(),
            momentum_into_precond_update: true,
            rms_clip: 1.1,
            probes: Probes::Hash { seed: 0 },
        }
    }
}
