//! Configurations of the Kronecker-factored whitening optimizers (docs/optimizers.md §4): SOAP, Shampoo,
//! KL-Shampoo, SPlus and SPA. All take 2-D matrices; same-shape matrices of a bucket share batched dispatches, and their expensive
//! refreshes (eigenbases, inverse roots) run on a host-side cadence, optionally staggered across stacks.

use serde::{Deserialize, Serialize};

/// SOAP, official semantics (nikhilvyas/SOAP, docs/optimizers.md §4.6, decisions §7): Adam in the eigenbasis of
/// the factors `L ≈ E[GGᵀ]`, `R ≈ E[GᵀG]`; the first call only initializes the factors and eigenbases (no update,
/// no weight decay); every `precondition_frequency` steps the eigenbases are refreshed by one power step and a
/// Householder QR after sorting the columns by their current eigenvalue estimates (the second moment follows its
/// columns, the first moment is rotated). WD-post with the unscaled lr, `eps`-hat bias correction.
/// A dimension larger than `max_precond_dim` stays in the original basis (one-sided SOAP).
/// Not offered: `normalize_grads`, `merge_dims`, 1-D preconditioning (route vectors to AdamW, as the
/// reference's `precondition_1d = False` default does in effect).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SoapConfig {
    /// Learning rate.
    pub lr: f32,
    /// First-moment β1.
    pub beta1: f32,
    /// Second-moment β2.
    pub beta2: f32,
    /// Factor EMA decay; `None` uses `beta2` (the reference's `shampoo_beta = -1`).
    pub shampoo_beta: Option<f32>,
    /// Adam's ε (added to `sqrt(V)`).
    pub eps: f32,
    /// Decoupled weight decay, applied after the update with the unscaled lr.
    pub weight_decay: f32,
    /// Steps between eigenbasis refreshes.
    pub precondition_frequency: u32,
    /// Dimensions above this stay unpreconditioned.
    pub max_precond_dim: usize,
    /// Bias correction (`lr·sqrt(1−β2^t)/(1−β1^t)`).
    pub correct_bias: bool,
    /// Spread the refreshes of a bucket's matrices over the period instead of refreshing all at once (ours; the
    /// reference refreshes every parameter on the same step): ⌈matrices/period⌉ per refresh call (at least
    /// [`GPU_MIN_STAGGER_CHUNK`] on GPUs), in chunks of each shape stack taken in order, chunk j of J refreshing at
    /// offset j·period/J. Changes no result for one matrix.
    pub stagger: bool,
}

/// The fewest matrices a staggered refresh call takes at once on GPU adapters (whole stacks up to this size; CPU
/// adapters take ⌈matrices/period⌉ alone): a refresh's sequential parts (QR panels, the sort's ranking) run one
/// workgroup per matrix, so a GPU refreshes 16 matrices in about the time it takes for 2.
pub const GPU_MIN_STAGGER_CHUNK: usize = 16;

impl Default for SoapConfig {
    fn default() -> Self {
        SoapConfig {
            lr: 3e-3,
            beta1: 0.95,
            beta2: 0.95,
            shampoo_beta: None,
            eps: 1e-8,
            weight_decay: 0.01,
            precondition_frequency: 10,
            max_precond_dim: 10000,
            correct_bias: true,
            stagger: false,
        }
    }
}

impl SoapConfig {
    /// The factor EMA decay.
    pub fn factor_beta(&self) -> f32 {
        self.shampoo_beta.unwrap_or(self.beta2)
    }
}

/// Shampoo's grafting (distributed_shampoo §4.2): the update takes the Frobenius norm of this simpler
/// optimizer's direction, per matrix.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Grafting {
    /// `Gbar / (sqrt(V / (1 − β2^t)) + eps)`.
    Adam {
        /// Second-moment decay.
        beta2: f32,
        /// ε.
        eps: f32,
    },
    /// `Gbar / (sqrt(V) + eps)` without bias correction.
    Rmsprop {
        /// Second-moment decay.
        beta2: f32,
        /// ε.
        eps: f32,
    },
    /// `Gbar / (sqrt(Σ G²) + eps)`.
    Adagrad {
        /// ε.
        eps: f32,
    },
}

/// How Shampoo computes its inverse roots.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RootMethod {
    /// Symmetric eigendecomposition (§11.4; [`crate::linalg::EighMethod::Auto`]: Householder tridiagonalization
    /// and QL, or Jacobi for n ≤ 64 on GPUs), given the previous eigenbasis as its warm start; eigenvalues below
    /// ε are shifted up as the reference does.
    #[default]
    Eigh,
    /// The coupled Newton iteration (§11.2, distributed_shampoo's `CoupledNewtonConfig`) for a fixed number of
    /// iterations (no convergence test: that would need a readback). Matmul-only, so it runs at the device's
    /// matmul speed; it has no eigenvalue shift (`F/bc2 + εI` is positive definite already).
    CoupledNewton {
        /// Newton iterations (~15–30 for condition numbers up to 1e6).
        iterations: u32,
    },
}

/// Shampoo with distributed_shampoo semantics (docs/optimizers.md §4.2, decisions §8) and
/// `target_parameter_dimensionality = 2`: factors `L ← β2 L + w·GGᵀ`, `R ← β2 R + w·GᵀG` (w = 1 when β2 = 1,
/// else 1 − β2) every step; every `precondition_frequency` steps (and at `start_preconditioning_step`) the
/// inverse roots `(F/(1−β2^t) + εI)^{-1/root}` by eigendecomposition, eigenvalues shifted up to ε when the
/// smallest is below it; direction `L⁻ᐟʳ·Ḡ·R⁻ᐟʳ` on the bias-corrected gradient EMA Ḡ, optionally grafted;
/// decoupled weight decay folded into the direction. Matrices larger than the device eigensolver (2048) are not
/// blocked: route them elsewhere.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShampooConfig {
    /// Learning rate.
    pub lr: f32,
    /// Gradient EMA β1 (0: no filtering).
    pub beta1: f32,
    /// Factor EMA β2 (1: accumulate like AdaGrad).
    pub beta2: f32,
    /// Interpolation of the filtered gradient; `None` uses `beta1` (the reference's `beta3 = -1`).
    pub beta3: Option<f32>,
    /// ε added to the factors before the root.
    pub epsilon: f32,
    /// Decoupled weight decay.
    pub weight_decay: f32,
    /// Steps between root computations.
    pub precondition_frequency: u32,
    /// First preconditioned step; `None` = `precondition_frequency`. Before it the direction is the grafted
    /// one (or the filtered gradient without grafting).
    pub start_preconditioning_step: Option<u32>,
    /// Bias-correct the factors and the gradient EMA.
    pub use_bias_correction: bool,
    /// Root per factor: 4 (`L^{-1/4} G R^{-1/4}`, the default) or 2.
    pub root: u32,
    /// Optional grafting.
    pub grafting: Option<Grafting>,
    /// How roots are computed.
    pub root_method: RootMethod,
    /// Spread the root computations of a bucket's matrices over the period (ours; see [`SoapConfig::stagger`]). On
    /// GPUs each chunk's two sides are calls of their own (left, then right), since a chunk's matrices run in
    /// parallel but its sides one after the other.
    pub stagger: bool,
}

impl Default for ShampooConfig {
    fn default() -> Self {
        ShampooConfig {
            lr: 1e-2,
            beta1: 0.9,
            beta2: 1.0,
            beta3: None,
            epsilon: 1e-12,
            weight_decay: 0.0,
            precondition_frequency: 1,
            start_preconditioning_step: None,
            use_bias_correction: true,
            root: 4,
            grafting: None,
            root_method: RootMethod::Eigh,
            stagger: false,
        }
    }
}

impl ShampooConfig {
    /// The distributed_shampoo README's "replace AdamW" recipe: β = (0.9, 0.999), ε = 1e-12, weight decay 1e-5,
    /// roots every 100 steps, Adam grafting (β2 = 0.999, ε = 1e-8).
    pub fn adam_grafted(lr: f32) -> ShampooConfig {
        ShampooConfig {
            lr,
            beta2: 0.999,
            weight_decay: 1e-5,
            precondition_frequency: 100,
            grafting: Some(Grafting::Adam { beta2: 0.999, eps: 1e-8 }),
            ..ShampooConfig::default()
        }
    }

    /// The first step with roots.
    pub fn start(&self) -> u32 {
        self.start_preconditioning_step.unwrap_or(self.precondition_frequency)
    }

    /// The filtered gradient's interpolation β3.
    pub fn filter_beta(&self) -> f32 {
        self.beta3.unwrap_or(self.beta1)
    }

    /// Whether 1-based step `s` computes roots: `(s % f == 0 and s > start) or s == start`.
    pub fn refreshes_at(&self, s: u64) -> bool {
        let (f, start) = (self.precondition_frequency as u64, self.start() as u64);
        (s.is_multiple_of(f) && s > start) || s == start
    }
}

/// SPlus, official torch semantics (kvfrans/splus, docs/optimizers.md §4.8): momentum `M ← lerp(M, G, 1−β1)`,
/// direction `U = Q_L·sign(Q_Lᵀ·M·Q_R)·Q_Rᵀ` in the factors' eigenbasis (the identity until the first
/// refresh, i.e. plain Signum on the first step), factors `S_L ← lerp(S_L, GGᵀ, 1−β2)`, `S_R ← lerp(S_R, GᵀG,
/// 1−β2)` from the raw gradient, eigenbases `eigh(S + εI)` after the step on the first call and every
/// `inverse_every` calls. The lr is scaled by `2/(m+n)` (by `nonstandard_constant` when a dimension exceeds
/// `max_dim`); `p ← p − lr'·U`, then the parameter EMA, then `p ← p·(1 − lr'·wd)`.
///
/// The evaluation point is the bias-corrected EMA of the parameters, `EMA/(1 − r^t)`; it is kept as the state
/// `x` (updated as `x ← lerp(x, p, (1−r)/(1−r^t))`, the same average) and read by
/// [`crate::optim::Optimizer::eval_params`]. `ema_rate = None` drops it (the optax / matrix-whitening form).
/// `lookahead` is the matrix-whitening repository's "sign + lookahead" (Table 2 of seed 004): the sign is taken
/// of `(1 − a)·M + a·G`. Vectors and scalars are not taken (route them to AdamW or Signum, as every reference
/// harness does); the reference's sign update with `lr·nonstandard_constant` for them is Signum with that lr.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SplusConfig {
    /// Learning rate (before the shape scale).
    pub lr: f32,
    /// Momentum β1.
    pub beta1: f32,
    /// Factor EMA β2.
    pub beta2: f32,
    /// Parameter EMA rate r of the evaluation point; `None`: no evaluation point.
    pub ema_rate: Option<f32>,
    /// Calls between eigenbasis refreshes (the first call always refreshes).
    pub inverse_every: u32,
    /// ε added to the factors' diagonal before the eigendecomposition.
    pub eps: f32,
    /// Decoupled weight decay, after the update, with the shape-scaled lr.
    pub weight_decay: f32,
    /// Dimensions of `max_dim` or more stay in the original basis (the reference's `d < max_dim`).
    pub max_dim: usize,
    /// The lr scale of matrices with a dimension above `max_dim`.
    pub nonstandard_constant: f32,
    /// Lookahead a: the sign of `(1 − a)·M + a·G` (0: plain SPlus).
    pub lookahead: f32,
    /// Spread the refreshes of a bucket's matrices over the period (ours; see [`SoapConfig::stagger`]).
    pub stagger: bool,
}

impl Default for SplusConfig {
    fn default() -> Self {
        SplusConfig {
            lr: 0.1,
            beta1: 0.9,
            beta2: 0.999,
            ema_rate: Some(0.999),
            inverse_every: 100,
            eps: 1e-30,
            weight_decay: 1e-2,
            max_dim: 10000,
            nonstandard_constant: 1e-3,
            lookahead: 0.0,
            stagger: false,
        }
    }
}

impl SplusConfig {
    /// The lr scale of an `m × n` matrix.
    pub fn shape_scale(&self, m: usize, n: usize) -> f32 {
        if m <= self.max_dim && n <= self.max_dim {
            2.0 / (m + n) as f32
        } else {
            self.nonstandard_constant
        }
    }
}

/// SPA, "SPlus then Adam" (kvfrans/matrix-whitening `spa.py`, docs/optimizers.md §4.7, seed 004 eq. 10): the
/// SPlus sign direction `S = Q_L·sign(Q_Lᵀ·M·Q_R)·Q_Rᵀ`, then Adam's variance normalization in the original
/// basis, `V ← β2 V + (1−β2) S²`, `U = S/(sqrt(V/(1−β2^t)) + ε)`. The first step only initializes (U, M and V
/// are zeroed; the factors are updated); eigenbases `eigh(S + 1e-30·I)` after the step on the first call and
/// every `precondition_frequency` calls. Weight decay as that repository's harness couples it:
/// `p ← p − lr·(U + wd·p)`. The reference has no lr default; ours is 1e-3.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SpaConfig {
    /// Learning rate.
    pub lr: f32,
    /// Momentum β1.
    pub beta1: f32,
    /// Variance and factor EMA β2.
    pub beta2: f32,
    /// ε added to the bias-corrected `sqrt(V)`.
    pub eps: f32,
    /// Weight decay, coupled as `lr·wd·p`.
    pub weight_decay: f32,
    /// Calls between eigenbasis refreshes (the first call always refreshes).
    pub precondition_frequency: u32,
    /// Dimensions of `max_dim` or more stay in the original basis.
    pub max_dim: usize,
    /// Spread the refreshes of a bucket's matrices over the period (ours; see [`SoapConfig::stagger`]).
    pub stagger: bool,
}

impl Default for SpaConfig {
    fn default() -> Self {
        SpaConfig {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-16,
            weight_decay: 0.0,
            precondition_frequency: 10,
            max_dim: 10000,
            stagger: false,
        }
    }
}

/// KL-Shampoo, the authors' prototype semantics computed in f32 (yorkerlin/KL-Methods `KLOpt`,
/// docs/optimizers.md §4.4, decisions §6). Each factor is accumulated from the gradient whitened by the OTHER
/// factor's current inverse-root estimate, `S_L ← β S_L + (1−β)/n·(G·Q_R·diag(s_R²)·Q_Rᵀ·Gᵀ)` and likewise `S_R`
/// with `1/m`; the eigenvalues are tracked every step as an EMA of the diagonal in the (stale) eigenbasis,
/// `λ ← lerp(λ, mean((Q_Lᵀ·G·Q_R ⊙ s_other)²), 1−β)`, `s = 1/sqrt(λ)` (clamped to `max(10, min(d, max_clamp))`);
/// the bases are refreshed every `precondition_frequency` steps by one power step and a QR, `Q ← qr(S·Q)`. The
/// direction is `U = Q_L·((Q_Lᵀ·M·Q_R) ⊙ S)·Q_Rᵀ` with `S_ij = s_L[i]·s_R[j]/(1 + ε·s_L[i]·s_R[j])` on the
/// momentum `M ← lerp(M, G, 1−β1)`; WD-post. The first call only initializes: raw factors
/// `(1−β)/d_other·GGᵀ`, bases from their eigendecomposition (descending), `λ = init_factor`; no update. No bias
/// correction. Not offered: `normalize_grads`, damping, KL-SOAP; matrices up to the device eigensolver (2048).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KlShampooConfig {
    /// Learning rate.
    pub lr: f32,
    /// Momentum β1.
    pub beta1: f32,
    /// Factor and eigenvalue EMA β (the reference's β2 with `shampoo_beta = -1`).
    pub beta2: f32,
    /// ε in `S/(1 + ε·S)`.
    pub eps: f32,
    /// Decoupled weight decay after the update (`p ← p − lr·wd·p`).
    pub weight_decay: f32,
    /// Steps between basis refreshes (power step + QR).
    pub precondition_frequency: u32,
    /// The eigenvalue estimates' starting value.
    pub init_factor: f32,
    /// Clamp `s = λ^{-1/2}` to `max(10, min(d, max_clamp_value))`.
    pub clamping: bool,
    /// The clamp's cap on `d`.
    pub max_clamp_value: f32,
    /// Spread the refreshes of a bucket's matrices over the period (ours; see [`SoapConfig::stagger`]).
    pub stagger: bool,
}

impl Default for KlShampooConfig {
    fn default() -> Self {
        KlShampooConfig {
            lr: 1e-4,
            beta1: 0.9,
            beta2: 0.98,
            eps: 1e-8,
            weight_decay: 0.01,
            precondition_frequency: 10,
            init_factor: 0.1,
            clamping: true,
            max_clamp_value: 4000.0,
            stagger: false,
        }
    }
}

impl KlShampooConfig {
    /// The upper bound on `s` for a side of dimension `d` (infinite without clamping).
    pub fn clamp_for(&self, d: usize) -> f32 {
        if self.clamping {
            (d as f32).min(self.max_clamp_value).max(10.0)
        } else {
            f32::MAX
        }
    }
}

/// Which factor sides of an `m × n` matrix are preconditioned under a dimension limit.
pub(crate) fn sides(m: usize, n: usize, max_dim: usize) -> (bool, bool) {
    (m <= max_dim, n <= max_dim)
}
