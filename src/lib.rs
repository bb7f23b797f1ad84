//! # wgoptim
//!
//! A portable WebGPU compute runtime for neural-network optimizers: WGSL kernels for the heavy math of
//! modern optimizers (Newton–Schulz / Polar Express orthogonalization, Kronecker-factored whitening, Adam-style
//! moments) and a scheduler that turns a whole step into one pre-built [`gpu::Plan`] with one submit.
//!
//! Layers (data flows one way): [`gpu`] ← [`linalg`] ← [`optim`]. See `docs/architecture.md` in the project's shared docs.

#![warn(missing_docs)]

pub mod error;
pub mod gpu;
pub mod linalg;
pub mod nn;
pub mod optim;

pub use error::{Error, Result};
pub use gpu::{Gpu, GpuOptions, Plan, PlanBuilder, Tensor};

/// The README's examples, compiled as doctests so they cannot drift from the API.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
