//! GPU kernel tests against f64 CPU references, on whatever adapter is present (lavapipe in CI).
#![allow(clippy::needless_range_loop)] // the references index like the equations they transcribe

mod basic;
mod cli;
mod cpu;
mod decomp;
mod polar;
mod runtime;
