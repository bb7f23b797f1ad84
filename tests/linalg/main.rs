//! GPU kernel tests against f64 CPU references, on whatever adapter is present (lavapipe in CI).

mod basic;
mod cpu;
mod decomp;
mod polar;
mod runtime;
