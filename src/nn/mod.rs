//! The training engine for the demos, usable on its own: reverse-mode autodiff over GPU tensors built once
//! into a static plan (forward + backward), replayed each step; the optimizer step is recorded into the same
//! command encoder, so a training step is one submit.
//!
//! Layer `nn` uses [`optim`](crate::optim) like any embedding engine would (no back doors). It compiles for
//! wasm32 and never blocks: every readback is async.

pub mod data;
pub mod gpt;
pub mod graph;
pub mod kfac;
mod ops;
pub mod preset;
pub mod recipe;
pub mod rng;
pub mod tokens;
pub mod trainer;

pub use data::{CharData, Split};
pub use gpt::{Gpt, GptConfig, LinearSite};
pub use graph::{step_values, Backward, Graph, Mode, Var, STEP_PARAMS};
pub use ops::attention_max_head_dim;
pub use preset::Preset;
pub use recipe::Recipe;
pub use rng::Rng;
pub use tokens::Tokens;
pub use trainer::{RunConfig, StepTiming, Trainer};
