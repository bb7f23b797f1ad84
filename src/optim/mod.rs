//! Optimizers over the runtime: parameter groups routed by rules, bucketed so that each bucket is one fused
//! dispatch, and the whole step (gradient statistics, clipping, the non-finite guard, schedules, updates) built
//! once into one plan: one submit and no readback per step. Equations: docs/optimizers.md §0, §7.

mod builder;
pub(crate) mod config;
mod kron;
mod optimizer;
mod params;
mod replay;
mod schedule;
mod stages;

pub use builder::{FusionOptConfig, Group, Matcher, NonFinitePolicy, OptimizerBuilder};
pub use config::{
    AdaMuonConfig, AdaMuonVariant, AdafactorConfig, AdamWConfig, AdjustLr, Basis, ComposedConfig, DecayStage,
    FismoConfig, FismoDiagConfig, Grafting, KlShampooConfig, LionConfig, LookaheadStage, MomentumKind,
    MomentumPlacement, MomentumStage, MuonConfig, NorMuonConfig, NorMuonScaling, Normalization, NormalizeStage,
    OnaConfig, OptimizerConfig, Probes, PsgdKronConfig, RootMethod, ScheduleFreeAdamWConfig, ScheduleFreePlusConfig,
    ScheduleFreeSgdConfig, SfNorMuonConfig, SgdConfig, ShampooConfig, ShapeScale, SignumConfig, SoapConfig, SpaConfig,
    SplusConfig, StepSizeRule, UpdateSchedule, WhitenConfig, GPU_MIN_STAGGER_CHUNK,
};
pub use optimizer::{Optimizer, RefreshCadence, StepReport};
pub use params::ParamStore;
pub use replay::replay;
pub use schedule::{MomentumSchedule, Schedule};
