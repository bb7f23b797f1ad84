//! [`Recipe`]: how the demos route a model's parameters to optimizers. Hidden matrices go to the named
//! optimizer, everything else to AdamW with nanoGPT's settings (β2 = 0.99, weight decay 0.1 on matrices and
//! none on vectors); `fusion_opt` is the composite, which routes itself. Learning rates follow nanoGPT's
//! warmup + cosine schedule (Schedule-Free methods: warmup only, their averaging replaces the decay).

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::gpu::Tensor;
use crate::nn::kfac::{KfacConfig, KfacVariant};
use crate::optim::{
    AdamWConfig, FismoConfig, FusionOptConfig, Group, KlShampooConfig, Matcher, OptimizerBuilder, OptimizerConfig,
    Schedule, SgdConfig, ShampooConfig, SoapConfig, SpaConfig, SplusConfig, WhitenConfig,
};

/// The composite's name on the command line.
pub const COMPOSITE: &str = "fusion_opt";

/// The K-FAC family (preconditioners on the model's Linear layers, see [`crate::nn::kfac`]).
pub const KFAC: [&str; 3] = ["kfac", "ekfac", "kfac_soap"];

/// Parameters never given to a matrix optimizer: the (tied) token embedding and the position embedding.
pub const EMBEDDINGS: [&str; 2] = ["wte", "wpe"];

/// An optimizer choice for a training run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Recipe {
    /// A name from [`Recipe::names`].
    pub optimizer: String,
    /// Learning rate of the named optimizer (None: its default; AdamW: nanoGPT's 1e-3).
    pub lr: Option<f32>,
    /// Total steps (the cosine schedule ends here).
    pub iters: u32,
    /// Warmup steps.
    pub warmup: u32,
    /// Global gradient-norm clipping (nanoGPT: 1.0).
    pub clip: Option<f32>,
}

impl Recipe {
    /// nanoGPT's AdamW run for `iters` steps with another optimizer's name.
    pub fn new(optimizer: &str, iters: u32) -> Recipe {
        Recipe { optimizer: optimizer.to_string(), lr: None, iters, warmup: 100.min(iters / 10), clip: Some(1.0) }
    }

    /// Every optimizer name a recipe accepts.
    pub fn names() -> Vec<&'static str> {
        OptimizerConfig::NAMES.iter().copied().chain([COMPOSITE]).chain(KFAC).collect()
    }

    /// The K-FAC preconditioner this recipe needs, if any.
    pub fn kfac(&self) -> Option<KfacConfig> {
        let variant = match self.optimizer.as_str() {
            "kfac" => KfacVariant::Kfac,
            "ekfac" => KfacVariant::Ekfac,
            "kfac_soap" => KfacVariant::KfacSoap,
            _ => return None,
        };
        Some(KfacConfig { variant, ..Default::default() })
    }

    /// Learning rate of the named optimizer's group.
    fn base_lr(&self) -> f32 {
        let default = match self.optimizer.as_str() {
            "kfac" | "ekfac" => 0.01,
            "kfac_soap" => 3e-3,
            _ => 1e-3,
        };
        self.lr.unwrap_or(default)
    }

    fn cosine(&self) -> Schedule {
        Schedule::WarmupCosine { warmup: self.warmup, total: self.iters, min_ratio: 0.1 }
    }

    /// The named group's learning rate at step `step` (K-FAC's KL clipping needs it on the host).
    pub fn lr_at(&self, step: u64) -> f32 {
        self.base_lr() * self.cosine().factor(step.min(u32::MAX as u64) as u32)
    }

    fn adamw(lr: f32, weight_decay: f32) -> OptimizerConfig {
        OptimizerConfig::AdamW(AdamWConfig { lr, beta2: 0.99, weight_decay, ..Default::default() })
    }

    /// Add the routing rules (and the loss, for optimizers that take it) to `b`.
    pub fn apply(&self, b: &mut OptimizerBuilder, loss: &Tensor) -> Result<()> {
        let cosine = self.cosine();
        let warmup = Schedule::Warmup { warmup: self.warmup.max(1) };
        let exclude: Vec<String> = EMBEDDINGS.iter().map(|s| s.to_string()).collect();
        if let Some(c) = self.clip.filter(|_| self.kfac().is_none()) {
            // (K-FAC clips by KL instead; KFAC-SOAP's direction is normalized.)
            b.clip_grad_norm(c);
        }
        if self.optimizer == COMPOSITE {
            let mut cfg = FusionOptConfig { exclude, schedule: warmup, ..Default::default() };
            if let Some(lr) = self.lr {
                cfg.spectral.lr = lr;
            }
            b.fusion_opt(&cfg, loss);
            return Ok(());
        }
        let adamw_lr = if self.optimizer == "adamw" { self.lr.unwrap_or(1e-3) } else { 1e-3 };
        if let Some(k) = self.kfac() {
            // The preconditioned direction is applied by SGD: with momentum 0.9 for K-FAC / EKFAC (the
            // reference's), without for KFAC-SOAP (its direction already carries Adam's momentum).
            let momentum = if k.variant == KfacVariant::KfacSoap { 0.0 } else { 0.9 };
            let sgd = OptimizerConfig::Sgd(SgdConfig { lr: self.base_lr(), momentum, ..Default::default() });
            b.rule(Matcher::MatricesExcept(exclude), Group::new(sgd).schedule(cosine));
        } else if self.optimizer != "adamw" {
            let json = self.lr.map_or("{}".to_string(), |lr| format!("{{\"lr\": {lr}}}"));
            let cfg = match OptimizerConfig::from_json(&self.optimizer, &json)? {
                // Refreshes spread over the period so no step pays for every eigendecomposition.
                OptimizerConfig::Soap(c) => OptimizerConfig::Soap(SoapConfig { stagger: true, ..c }),
                OptimizerConfig::Splus(c) => OptimizerConfig::Splus(SplusConfig { stagger: true, ..c }),
                OptimizerConfig::Spa(c) => OptimizerConfig::Spa(SpaConfig { stagger: true, ..c }),
                OptimizerConfig::KlShampoo(c) => OptimizerConfig::KlShampoo(KlShampooConfig { stagger: true, ..c }),
                OptimizerConfig::Whiten(c) => OptimizerConfig::Whiten(WhitenConfig { stagger: true, ..c }),
                // Roots every 10 steps, staggered: every-step eigendecompositions dominate on a CPU adapter.
                OptimizerConfig::Fismo(c) => OptimizerConfig::Fismo(FismoConfig { root_every: 10, stagger: true, ..c }),
                // The distributed_shampoo README's AdamW replacement, roots every 10 steps.
                OptimizerConfig::Shampoo(_) => OptimizerConfig::Shampoo(ShampooConfig {
                    precondition_frequency: 10,
                    stagger: true,
                    ..ShampooConfig::adam_grafted(self.lr.unwrap_or(1e-3))
                }),
                other => other,
            };
            let schedule = if cfg.is_schedule_free() || cfg.keeps_x() { warmup } else { cosine };
            if cfg.takes_loss() {
                b.loss(loss);
            }
            b.rule(Matcher::MatricesExcept(exclude), Group::new(cfg).schedule(schedule));
        }
        b.rule(Matcher::Rank(2), Group::new(Self::adamw(adamw_lr, 0.1)).schedule(cosine));
        b.rule(Matcher::All, Group::new(Self::adamw(adamw_lr, 0.0)).schedule(cosine));
        Ok(())
    }
}
