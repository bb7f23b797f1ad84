//! The runtime: device acquisition ([`Gpu`]), tensors ([`Tensor`]), the kernel registry ([`Kernel`]) and the
//! step plan ([`Plan`], [`PlanBuilder`]). Knows nothing about optimizers.

mod context;
pub mod kernels;
mod plan;
mod readback;
pub(crate) mod tensor;

pub use context::{Counters, Gpu, GpuOptions};
pub use kernels::Kernel;
pub use plan::{Plan, PlanBuilder};
pub use readback::Lagged;
pub use tensor::Tensor;
