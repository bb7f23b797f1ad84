//! Configurations of the elementwise optimizers, with the defaults of their reference implementations
//! (docs/optimizers.md §7) and validation that names the offending field.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

mod composed;
mod elementwise;
mod fismo;
mod muon;
mod psgd;
mod schedule_free;
mod step_size;
mod whiten;
mod whitening;

pub use composed::*;
pub use elementwise::*;
pub use fismo::*;
pub use muon::*;
pub(crate) use psgd::UpdateCounter;
pub use psgd::{Probes, PsgdKronConfig, UpdateSchedule};
pub use schedule_free::*;
pub use step_size::StepSizeRule;
pub use whiten::*;
pub use whitening::*;

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
    /// [`ComposedConfig`]: an elementwise optimizer from stages.
    Composed(ComposedConfig),
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
    /// [`MuonConfig`] (matrices, batches of matrices, convolutions).
    Muon(MuonConfig),
    /// [`NorMuonConfig`] (matrices, batches of matrices, convolutions).
    #[serde(rename = "normuon")]
    NorMuon(NorMuonConfig),
    /// [`AdaMuonConfig`].
    #[serde(rename = "adamuon")]
    AdaMuon(AdaMuonConfig),
    /// [`SfNorMuonConfig`] (matrices, batches of matrices, convolutions).
    #[serde(rename = "sf_normuon")]
    SfNorMuon(SfNorMuonConfig),
    /// [`SoapConfig`] (2-D parameters).
    Soap(SoapConfig),
    /// [`ShampooConfig`] (2-D parameters).
    Shampoo(ShampooConfig),
    /// [`KlShampooConfig`] (2-D parameters).
    #[serde(rename = "kl_shampoo")]
    KlShampoo(KlShampooConfig),
    /// [`SplusConfig`] (2-D parameters).
    Splus(SplusConfig),
    /// [`SpaConfig`] (2-D parameters).
    Spa(SpaConfig),
    /// [`FismoConfig`] (2-D parameters).
    Fismo(FismoConfig),
    /// [`FismoDiagConfig`] (2-D parameters).
    FismoDiag(FismoDiagConfig),
    /// [`WhitenConfig`]: a basis × normalization cell of the matrix-whitening grid (2-D parameters).
    Whiten(WhitenConfig),
    /// [`PsgdKronConfig`] (2-D parameters).
    PsgdKron(PsgdKronConfig),
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
    /// The stages of a composed optimizer (`define` = `OPT_COMPOSED`).
    pub stages: Option<ComposedConfig>,
}

/// The kernel spec of a composition of stages, with the state names it keeps.
fn composed_spec(c: ComposedConfig, states: &'static [&'static str]) -> KernelSpec {
    let plan = c.plan();
    KernelSpec {
        define: "OPT_COMPOSED",
        states,
        flags: (c.maximize as u32) << 1,
        h: plan.h,
        beta1: plan.beta1,
        beta2: plan.beta2,
        schedule_free: None,
        stages: Some(c),
    }
}

/// Checks shared by the whitening optimizers.
fn whitening_common(name: &str, frequency: u32, max_dim: usize) -> Result<()> {
    if frequency == 0 {
        return Err(Error::InvalidArgument {
            op: "optimizer config",
            name: "precondition_frequency",
            detail: format!("{name}: must be ≥ 1"),
        });
    }
    if max_dim == 0 {
        return Err(Error::InvalidArgument {
            op: "optimizer config",
            name: "max_precond_dim",
            detail: format!("{name}: must be ≥ 1"),
        });
    }
    Ok(())
}

/// Checks shared by FISMO and fismo_diag: the factors need damping (μ > 0) to stay invertible.
fn fismo_common(name: &str, gamma: f32, mu: f32, beta: f32, wd: f32, steps: usize) -> Result<()> {
    let fail = |field: &'static str, v: f32, want: &str| {
        Err(Error::InvalidArgument {
            op: "optimizer config",
            name: field,
            detail: format!("{name}: {field} = {v}, must be {want}"),
        })
    };
    if !(0.0..1.0).contains(&gamma) {
        return fail("gamma", gamma, "in [0, 1)");
    }
    if !(mu > 0.0 && mu.is_finite()) {
        return fail("mu", mu, "> 0 (the damping keeps the factors invertible)");
    }
    if !(0.0..1.0).contains(&beta) {
        return fail("beta", beta, "in [0, 1)");
    }
    if !(wd >= 0.0 && wd.is_finite()) {
        return fail("weight_decay", wd, "≥ 0");
    }
    if steps == 0 || steps > 100 {
        return fail("polar.steps", steps as f32, "in 1..=100");
    }
    Ok(())
}

impl OptimizerConfig {
    /// Every optimizer name [`OptimizerConfig::from_json`] knows.
    pub const NAMES: &'static [&'static str] = &[
        "sgd",
        "adamw",
        "lion",
        "signum",
        "composed",
        "sgd_schedulefree",
        "adamw_schedulefree",
        "ona",
        "adafactor",
        "schedulefree_plus",
        "muon",
        "normuon",
        "adamuon",
        "sf_normuon",
        "soap",
        "shampoo",
        "kl_shampoo",
        "splus",
        "spa",
        "fismo",
        "fismo_diag",
        "whiten",
        "psgd_kron",
    ];

    /// The optimizer's name as `wgoptim replay` and checkpoints spell it.
    pub fn name(&self) -> &'static str {
        match self {
            OptimizerConfig::Sgd(_) => "sgd",
            OptimizerConfig::AdamW(_) => "adamw",
            OptimizerConfig::Lion(_) => "lion",
            OptimizerConfig::Signum(_) => "signum",
            OptimizerConfig::Composed(_) => "composed",
            OptimizerConfig::ScheduleFreeSgd(_) => "sgd_schedulefree",
            OptimizerConfig::ScheduleFreeAdamW(_) => "adamw_schedulefree",
            OptimizerConfig::Ona(_) => "ona",
            OptimizerConfig::Adafactor(_) => "adafactor",
            OptimizerConfig::ScheduleFreePlus(_) => "schedulefree_plus",
            OptimizerConfig::Muon(_) => "muon",
            OptimizerConfig::NorMuon(_) => "normuon",
            OptimizerConfig::AdaMuon(_) => "adamuon",
            OptimizerConfig::SfNorMuon(_) => "sf_normuon",
            OptimizerConfig::Soap(_) => "soap",
            OptimizerConfig::Shampoo(_) => "shampoo",
            OptimizerConfig::KlShampoo(_) => "kl_shampoo",
            OptimizerConfig::Splus(_) => "splus",
            OptimizerConfig::Spa(_) => "spa",
            OptimizerConfig::Fismo(_) => "fismo",
            OptimizerConfig::FismoDiag(_) => "fismo_diag",
            OptimizerConfig::Whiten(_) => "whiten",
            OptimizerConfig::PsgdKron(_) => "psgd_kron",
        }
    }

    /// The base learning rate.
    pub fn lr(&self) -> f32 {
        match self {
            OptimizerConfig::Sgd(c) => c.lr,
            OptimizerConfig::AdamW(c) => c.lr,
            OptimizerConfig::Lion(c) => c.lr,
            OptimizerConfig::Signum(c) => c.lr,
            OptimizerConfig::Composed(c) => c.lr,
            OptimizerConfig::ScheduleFreeSgd(c) => c.lr,
            OptimizerConfig::ScheduleFreeAdamW(c) => c.lr,
            OptimizerConfig::Ona(c) => c.lr,
            OptimizerConfig::Adafactor(c) => c.lr.unwrap_or(1.0),
            OptimizerConfig::ScheduleFreePlus(c) => c.lr,
            OptimizerConfig::Muon(c) => c.lr,
            OptimizerConfig::NorMuon(c) => c.lr,
            OptimizerConfig::AdaMuon(c) => c.lr,
            OptimizerConfig::SfNorMuon(c) => c.lr,
            OptimizerConfig::Soap(c) => c.lr,
            OptimizerConfig::Shampoo(c) => c.lr,
            OptimizerConfig::KlShampoo(c) => c.lr,
            OptimizerConfig::Splus(c) => c.lr,
            OptimizerConfig::Spa(c) => c.lr,
            OptimizerConfig::Fismo(c) => c.lr,
            OptimizerConfig::FismoDiag(c) => c.lr,
            OptimizerConfig::Whiten(c) => c.lr,
            OptimizerConfig::PsgdKron(c) => c.lr,
        }
    }

    /// Whether the evaluation point x is kept as a state (ScheduleFree+, SF-NorMuon, SPlus's parameter EMA):
    /// `eval_params` reads it and mode switching is not offered.
    pub fn keeps_x(&self) -> bool {
        match self {
            OptimizerConfig::ScheduleFreePlus(_) | OptimizerConfig::SfNorMuon(_) => true,
            OptimizerConfig::Splus(c) => c.ema_rate.is_some(),
            _ => false,
        }
    }

    /// The per-matrix lr scale of an optimizer taking matrices (Muon's `adjust_lr`, SPlus's `2/(m+n)`); 1 for
    /// the others.
    pub(crate) fn lr_scale(&self, shape: &[usize]) -> f32 {
        match self {
            OptimizerConfig::Splus(c) if shape.len() == 2 => c.shape_scale(shape[0], shape[1]),
            OptimizerConfig::Fismo(c) => c.adjust_lr.scale_for(shape),
            OptimizerConfig::FismoDiag(c) => c.adjust_lr.scale_for(shape),
            OptimizerConfig::Whiten(c) if shape.len() == 2 => c.shape_scale(shape[0], shape[1]),
            _ => self.muon_pipeline().map_or(1.0, |c| c.adjust_lr.scale_for(shape)),
        }
    }

    /// The NorMuon settings of the NorMuon family.
    pub(crate) fn normuon(&self) -> Option<NorMuonConfig> {
        match self {
            OptimizerConfig::NorMuon(c) => Some(c.clone()),
            OptimizerConfig::SfNorMuon(c) => Some(c.normuon()),
            _ => None,
        }
    }

    /// The Muon pipeline of the Muon family (Muon itself, NorMuon before its row normalization).
    pub(crate) fn muon_pipeline(&self) -> Option<MuonConfig> {
        match self {
            OptimizerConfig::Muon(c) => Some(c.clone()),
            OptimizerConfig::NorMuon(c) => Some(c.muon()),
            OptimizerConfig::SfNorMuon(c) => Some(c.normuon().muon()),
            OptimizerConfig::AdaMuon(c) => Some(MuonConfig {
                lr: c.lr,
                momentum: c.momentum,
                // The simplified form bias-corrects instead (no Nesterov).
                nesterov: c.nesterov && c.variant == AdaMuonVariant::Official,
                weight_decay: c.weight_decay,
                adjust_lr: AdjustLr::None,
                polar: c.polar.clone(),
                ..MuonConfig::default()
            }),
            _ => None,
        }
    }

    /// Whether the optimizer takes only matrices (the Muon family, SOAP, Shampoo): route the rest elsewhere.
    pub fn takes_matrices(&self) -> bool {
        self.muon_pipeline().is_some() || self.is_kron()
    }

    /// Whether this is a Kronecker-factored whitening optimizer (SOAP, Shampoo, KL-Shampoo, SPlus, SPA, FISMO): stacks of matrices
    /// with factor states and host-scheduled refreshes.
    pub(crate) fn is_kron(&self) -> bool {
        matches!(
            self,
            OptimizerConfig::Soap(_)
                | OptimizerConfig::Shampoo(_)
                | OptimizerConfig::KlShampoo(_)
                | OptimizerConfig::Splus(_)
                | OptimizerConfig::Spa(_)
                | OptimizerConfig::Fismo(_)
                | OptimizerConfig::FismoDiag(_)
                | OptimizerConfig::Whiten(_)
                | OptimizerConfig::PsgdKron(_)
        )
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
        let bad = |e: serde_json::Error| Error::InvalidArgument {
            op: "optimizer config",
            name: "config",
            detail: format!("{name}: {e}"),
        };
        let cfg = match name {
            "sgd" => OptimizerConfig::Sgd(serde_json::from_str(json).map_err(bad)?),
            "adamw" => OptimizerConfig::AdamW(serde_json::from_str(json).map_err(bad)?),
            "lion" => OptimizerConfig::Lion(serde_json::from_str(json).map_err(bad)?),
            "signum" => OptimizerConfig::Signum(serde_json::from_str(json).map_err(bad)?),
            "composed" => OptimizerConfig::Composed(serde_json::from_str(json).map_err(bad)?),
            "sgd_schedulefree" => OptimizerConfig::ScheduleFreeSgd(serde_json::from_str(json).map_err(bad)?),
            "adamw_schedulefree" => OptimizerConfig::ScheduleFreeAdamW(serde_json::from_str(json).map_err(bad)?),
            "ona" => OptimizerConfig::Ona(serde_json::from_str(json).map_err(bad)?),
            "adafactor" => OptimizerConfig::Adafactor(serde_json::from_str(json).map_err(bad)?),
            "schedulefree_plus" => OptimizerConfig::ScheduleFreePlus(serde_json::from_str(json).map_err(bad)?),
            "muon" => OptimizerConfig::Muon(serde_json::from_str(json).map_err(bad)?),
            "normuon" => OptimizerConfig::NorMuon(serde_json::from_str(json).map_err(bad)?),
            "adamuon" => OptimizerConfig::AdaMuon(serde_json::from_str(json).map_err(bad)?),
            "sf_normuon" => OptimizerConfig::SfNorMuon(serde_json::from_str(json).map_err(bad)?),
            "soap" => OptimizerConfig::Soap(serde_json::from_str(json).map_err(bad)?),
            "shampoo" => OptimizerConfig::Shampoo(serde_json::from_str(json).map_err(bad)?),
            "kl_shampoo" => OptimizerConfig::KlShampoo(serde_json::from_str(json).map_err(bad)?),
            "splus" => OptimizerConfig::Splus(serde_json::from_str(json).map_err(bad)?),
            "spa" => OptimizerConfig::Spa(serde_json::from_str(json).map_err(bad)?),
            "fismo" => OptimizerConfig::Fismo(serde_json::from_str(json).map_err(bad)?),
            "fismo_diag" => OptimizerConfig::FismoDiag(serde_json::from_str(json).map_err(bad)?),
            "whiten" => OptimizerConfig::Whiten(serde_json::from_str(json).map_err(bad)?),
            "psgd_kron" => OptimizerConfig::PsgdKron(serde_json::from_str(json).map_err(bad)?),
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
                Err(Error::InvalidArgument {
                    op: "optimizer config",
                    name: field,
                    detail: format!("{name}: {field} = {v}, must be {want}"),
                })
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
            OptimizerConfig::Composed(c) => {
                if let Err((field, v, want)) = c.check() {
                    check(field, false, v, want)?;
                }
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
            OptimizerConfig::SfNorMuon(ref c) => {
                check("beta1", c.beta1 > 0.0 && c.beta1 < 1.0, c.beta1, "in (0, 1)")?;
                nonneg("weight_decay", c.weight_decay)?;
                OptimizerConfig::NorMuon(c.normuon()).validate()?;
            }
            OptimizerConfig::AdaMuon(ref c) => {
                check("eps", c.eps > 0.0, c.eps, "> 0")?;
                beta("beta2", c.beta2)?;
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
                    return Err(Error::InvalidArgument {
                        op: "optimizer config",
                        name: "polar.steps",
                        detail: format!("muon: {} steps, need 1..=100", c.polar.steps),
                    });
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
                let rule = |detail: &str| {
                    Err(Error::InvalidArgument {
                        op: "optimizer config",
                        name: "lr",
                        detail: format!("adafactor: {detail}"),
                    })
                };
                match (c.lr, c.relative_step) {
                    (Some(_), true) => return rule("a manual lr cannot be combined with relative_step"),
                    (None, false) => return rule("without relative_step an lr is required"),
                    _ => {}
                }
                if c.warmup_init && !c.relative_step {
                    return Err(Error::InvalidArgument {
                        op: "optimizer config",
                        name: "warmup_init",
                        detail: "adafactor: warmup_init needs relative_step".into(),
                    });
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
            OptimizerConfig::Soap(ref c) => {
                beta("beta1", c.beta1)?;
                beta("beta2", c.beta2)?;
                beta("shampoo_beta", c.factor_beta())?;
                check("eps", c.eps > 0.0, c.eps, "> 0")?;
                nonneg("weight_decay", c.weight_decay)?;
                whitening_common("soap", c.precondition_frequency, c.max_precond_dim)?;
            }
            OptimizerConfig::Shampoo(ref c) => {
                beta("beta1", c.beta1)?;
                check("beta2", c.beta2 > 0.0 && c.beta2 <= 1.0, c.beta2, "in (0, 1]")?;
                beta("beta3", c.filter_beta())?;
                check("epsilon", c.epsilon > 0.0, c.epsilon, "> 0")?;
                nonneg("weight_decay", c.weight_decay)?;
                whitening_common("shampoo", c.precondition_frequency, crate::linalg::MAX_EIGH_DIM)?;
                if c.root != 2 && c.root != 4 {
                    return Err(Error::InvalidArgument {
                        op: "optimizer config",
                        name: "root",
                        detail: format!("shampoo: root = {}, must be 2 or 4", c.root),
                    });
                }
                if let RootMethod::CoupledNewton { iterations } = c.root_method {
                    if !(1..=200).contains(&iterations) {
                        return Err(Error::InvalidArgument {
                            op: "optimizer config",
                            name: "root_method.iterations",
                            detail: format!("shampoo: {iterations} coupled Newton iterations, need 1..=200"),
                        });
                    }
                }
                match c.grafting {
                    Some(Grafting::Adam { beta2: b, eps } | Grafting::Rmsprop { beta2: b, eps }) => {
                        beta("grafting.beta2", b)?;
                        check("grafting.eps", eps > 0.0, eps, "> 0")?;
                    }
                    Some(Grafting::Adagrad { eps }) => check("grafting.eps", eps > 0.0, eps, "> 0")?,
                    None => {}
                }
            }
            OptimizerConfig::KlShampoo(ref c) => {
                beta("beta1", c.beta1)?;
                beta("beta2", c.beta2)?;
                nonneg("eps", c.eps)?;
                nonneg("weight_decay", c.weight_decay)?;
                check("init_factor", c.init_factor > 0.0, c.init_factor, "> 0")?;
                check("max_clamp_value", c.max_clamp_value > 0.0, c.max_clamp_value, "> 0")?;
                whitening_common("kl_shampoo", c.precondition_frequency, crate::linalg::MAX_EIGH_DIM)?;
            }
            OptimizerConfig::Splus(ref c) => {
                beta("beta1", c.beta1)?;
                beta("beta2", c.beta2)?;
                if let Some(r) = c.ema_rate {
                    beta("ema_rate", r)?;
                }
                nonneg("eps", c.eps)?;
                nonneg("weight_decay", c.weight_decay)?;
                check("nonstandard_constant", c.nonstandard_constant > 0.0, c.nonstandard_constant, "> 0")?;
                check("lookahead", (0.0..=1.0).contains(&c.lookahead), c.lookahead, "in [0, 1]")?;
                whitening_common("splus", c.inverse_every, c.max_dim)?;
            }
            OptimizerConfig::Spa(ref c) => {
                beta("beta1", c.beta1)?;
                beta("beta2", c.beta2)?;
                check("eps", c.eps > 0.0, c.eps, "> 0")?;
                nonneg("weight_decay", c.weight_decay)?;
                whitening_common("spa", c.precondition_frequency, c.max_dim)?;
            }
            OptimizerConfig::Fismo(ref c) => {
                fismo_common(name, c.gamma, c.mu, c.beta, c.weight_decay, c.polar.steps)?;
                if c.root_every == 0 {
                    return Err(Error::InvalidArgument {
                        op: "optimizer config",
                        name: "root_every",
                        detail: "fismo: must be ≥ 1".into(),
                    });
                }
            }
            OptimizerConfig::FismoDiag(ref c) => {
                fismo_common(name, c.gamma, c.mu, c.beta, c.weight_decay, c.polar.steps)?
            }
            OptimizerConfig::Whiten(ref c) => {
                beta("beta1", c.beta1)?;
                beta("beta2", c.beta2)?;
                check("lookahead", (0.0..=1.0).contains(&c.lookahead), c.lookahead, "in [0, 1]")?;
                if c.normalization.is_variance() {
                    check("eps", c.eps > 0.0, c.eps, "> 0 with a variance normalization")?;
                } else {
                    nonneg("eps", c.eps)?;
                }
                nonneg("weight_decay", c.weight_decay)?;
                whitening_common("whiten", c.precondition_frequency, c.max_dim)?;
                if c.polar.steps == 0 || c.polar.steps > 100 {
                    check("polar.steps", false, c.polar.steps as f32, "in 1..=100")?;
                }
            }
            OptimizerConfig::PsgdKron(ref c) => {
                beta("beta1", c.beta1)?;
                nonneg("weight_decay", c.weight_decay)?;
                check("precond_lr", c.precond_lr > 0.0, c.precond_lr, "> 0")?;
                check("precond_init_scale", c.precond_init_scale > 0.0, c.precond_init_scale, "> 0")?;
                check("rms_clip", c.rms_clip > 0.0, c.rms_clip, "> 0")?;
                let s = c.update_schedule;
                check("update_schedule.max_prob", s.max_prob > 0.0 && s.max_prob <= 1.0, s.max_prob, "in (0, 1]")?;
                check("update_schedule.min_prob", s.min_prob > 0.0 && s.min_prob <= 1.0, s.min_prob, "in (0, 1]")?;
                nonneg("update_schedule.decay", s.decay)?;
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
        let none = KernelSpec {
            define: "",
            states: &[],
            flags: 0,
            h: [0.0; 4],
            beta1: 0.0,
            beta2: 0.0,
            schedule_free: None,
            stages: None,
        };
        match *self {
            // The first-order family: compositions of stages, each preset keeping its reference's state names.
            OptimizerConfig::Sgd(c) => {
                composed_spec(c.into(), if c.momentum > 0.0 { &["momentum_buffer"] } else { &[] })
            }
            OptimizerConfig::AdamW(c) => composed_spec(c.into(), ComposedConfig::from(c).state_names()),
            OptimizerConfig::Lion(c) => composed_spec(c.into(), &["exp_avg"]),
            OptimizerConfig::Signum(c) => composed_spec(c.into(), &["momentum"]),
            OptimizerConfig::Composed(c) => composed_spec(c, c.state_names()),
            OptimizerConfig::ScheduleFreeSgd(c) => KernelSpec {
                define: "OPT_SF_SGD",
                states: &["z"],
                flags: 0,
                h: [c.weight_decay, 0.0, 0.0, 0.0],
                beta1: c.momentum,
                beta2: 0.0,
                schedule_free: Some((c.r, c.weight_lr_power)),
                stages: None,
            },
            OptimizerConfig::ScheduleFreeAdamW(c) => KernelSpec {
                define: "OPT_SF_ADAMW",
                states: if c.inner_momentum > 0.0 {
                    &["z", "exp_avg_sq", "inner_momentum"]
                } else {
                    &["z", "exp_avg_sq"]
                },
                flags: 0,
                h: [c.beta2, c.eps, c.weight_decay, c.inner_momentum],
                beta1: c.beta1,
                beta2: c.beta2,
                schedule_free: Some((c.r, c.weight_lr_power)),
                stages: None,
            },
            OptimizerConfig::Ona(c) => KernelSpec {
                define: "OPT_ONA",
                states: if c.adam {
                    &["grad_prev", "diff_avg", "exp_avg", "exp_avg_sq"]
                } else {
                    &["grad_prev", "diff_avg", "exp_avg"]
                },
                flags: c.adam as u32,
                h: [c.beta_h, c.kappa, c.weight_decay, c.eps],
                beta1: c.beta,
                beta2: c.beta2,
                schedule_free: None,
                stages: None,
            },
            OptimizerConfig::ScheduleFreePlus(c) => KernelSpec {
                define: "OPT_SF_PLUS",
                states: &["z", "x", "exp_avg", "exp_avg_sq"],
                flags: 0,
                h: [c.beta2, c.eps, c.weight_decay, 0.0],
                beta1: c.beta1,
                beta2: c.beta2,
                schedule_free: None,
                stages: None,
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
                stages: None,
            },
            OptimizerConfig::NorMuon(ref c) => {
                KernelSpec { states: &["momentum_buffer"], ..OptimizerConfig::Muon(c.muon()).kernel() }
            }
            OptimizerConfig::SfNorMuon(ref c) => KernelSpec {
                states: &["momentum_buffer", "z", "x"],
                // Schedule-Free weights (r = 0, power 2) from the current lr: see `encode_group`.
                schedule_free: Some((0.0, 2.0)),
                stages: None,
                ..OptimizerConfig::Muon(c.normuon().muon()).kernel()
            },
            OptimizerConfig::AdaMuon(_) => KernelSpec {
                states: &["momentum_buffer", "exp_avg_sq"],
                ..OptimizerConfig::Muon(self.muon_pipeline().unwrap_or_default()).kernel()
            },
            // SOAP and Shampoo have their own pipeline (src/optim/kron.rs); these are the moments in state layout.
            OptimizerConfig::Soap(ref c) => KernelSpec {
                define: "OPT_SOAP",
                states: &["exp_avg", "exp_avg_sq"],
                beta1: c.beta1,
                beta2: c.beta2,
                ..none
            },
            OptimizerConfig::Shampoo(ref c) => KernelSpec {
                define: "OPT_SHAMPOO",
                states: match (c.beta1 > 0.0, c.grafting.is_some()) {
                    (true, true) => &["filtered_grad", "graft_second_moment"],
                    (true, false) => &["filtered_grad"],
                    (false, true) => &["graft_second_moment"],
                    (false, false) => &[],
                },
                beta1: c.beta1,
                beta2: match c.grafting {
                    Some(Grafting::Adam { beta2, .. } | Grafting::Rmsprop { beta2, .. }) => beta2,
                    _ => 0.0,
                },
                ..none
            },
            OptimizerConfig::KlShampoo(ref c) => {
                KernelSpec { define: "OPT_KL_SHAMPOO", states: &["exp_avg"], beta1: c.beta1, beta2: c.beta2, ..none }
            }
            OptimizerConfig::Splus(ref c) => KernelSpec {
                define: "OPT_SPLUS",
                states: if c.ema_rate.is_some() { &["exp_avg", "x"] } else { &["exp_avg"] },
                beta1: c.beta1,
                beta2: c.beta2,
                ..none
            },
            OptimizerConfig::Spa(ref c) => KernelSpec {
                define: "OPT_SPA",
                states: &["exp_avg", "exp_avg_sq"],
                beta1: c.beta1,
                beta2: c.beta2,
                ..none
            },
            // FISMO's momentum lives in the whitened space (its pipeline: src/optim/kron.rs).
            OptimizerConfig::Fismo(FismoConfig { beta, .. })
            | OptimizerConfig::FismoDiag(FismoDiagConfig { beta, .. }) => {
                KernelSpec { define: "OPT_FISMO", states: &["momentum_buffer"], beta1: beta, ..none }
            }
            OptimizerConfig::Whiten(ref c) => KernelSpec {
                define: "OPT_WHITEN",
                states: match c.normalization {
                    Normalization::VarianceFull => &["exp_avg", "exp_avg_sq"],
                    _ => &["exp_avg"],
                },
                beta1: c.beta1,
                beta2: c.beta2,
                ..none
            },
            OptimizerConfig::PsgdKron(ref c) => KernelSpec {
                define: "OPT_PSGD_KRON",
                states: match c.probes {
                    Probes::Hash { .. } => &["exp_avg"],
                    Probes::External => &["exp_avg", "probe"],
                },
                beta1: c.beta1,
                ..none
            },
            // Adafactor has its own kernel and state layout (src/optim/builder.rs); this spec only names it.
            OptimizerConfig::Adafactor(c) => KernelSpec {
                define: "OPT_ADAFACTOR",
                states: &[],
                flags: c.relative_step as u32
                    | (c.scale_parameter as u32) << 1
                    | (c.warmup_init as u32) << 2
                    | (c.beta1.is_some() as u32) << 3,
                h: [c.eps1, c.eps2, c.clip_threshold, c.decay_rate],
                beta1: c.beta1.unwrap_or(0.0),
                beta2: 0.0,
                schedule_free: None,
                stages: None,
            },
        }
    }
}
