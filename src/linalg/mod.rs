//! Matrix kernels, batched over stacks of same-shape matrices: matmul and Gram products, elementwise ops,
//! deterministic reductions, transpose, the polar factor (Newton–Schulz, Polar Express, Gram Newton–Schulz),
//! inverse p-th roots, symmetric eigendecomposition (Jacobi), Householder QR, Cholesky and triangular solves.
//!
//! Every launcher records dispatches into a [`PlanBuilder`](crate::gpu::PlanBuilder); nothing runs until the
//! plan does. f32 throughout (no f64 on the GPU).

pub mod coefficients;
pub mod eigen;
pub mod elementwise;
pub mod factor;
pub mod matmul;
pub mod polar;
pub mod reduce;
pub mod roots;

pub use coefficients::{NsCoefficients, NsNormalization};
pub use eigen::{eig_apply, eigh, EighConfig, EighMethod, MAX_EIGH_DIM};
pub use elementwise::{copy, identity, Axpby, BatchScalar};
pub use factor::{cholesky, qr, qr_q_in_place, trsm, Side, MAX_QR_COLS};
pub use matmul::{gram, gram_guarded, GramSide, Matmul, MatmulTile, MatmulVariant, Trans, Triangle};
pub use polar::{polar, polar_stacks, PolarAlgorithm, PolarConfig};
pub use reduce::{mean_sq, reduce, trace, transpose, ReduceOp};
pub use roots::{inverse_root_eigh, inverse_root_newton, sqrt_newton_schulz};

use crate::error::{Error, Result};
use crate::gpu::{Gpu, Tensor};

/// Kernels that address their operands from element 0 take whole tensors only: a view at an offset would be
/// read or written in the wrong place, so it is an error naming the operand (copy it into a scratch first).
pub(crate) fn whole(op: &'static str, operands: &[(&'static str, &Tensor)]) -> Result<()> {
    match operands.iter().find(|(_, t)| t.offset() != 0) {
        Some((name, t)) => Err(Error::InvalidArgument {
            op,
            name,
            detail: format!("a view at offset {} is not supported here; copy it into a scratch first", t.offset()),
        }),
        None => Ok(()),
    }
}

/// Arithmetic precision of matrix products (docs/optimizers.md, decisions §1 and §0.4): storage and
/// accumulation stay f32; inputs and outputs of each product are rounded to the chosen format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Precision {
    /// Plain f32.
    #[default]
    F32,
    /// bf16 emulated: round-to-nearest-even to 8 mantissa bits, to match bf16 references closely.
    Bf16Emulated,
    /// f16 rounding; offered only where the adapter has SHADER_F16.
    F16,
}

impl Precision {
    pub(crate) fn check(self, gpu: &Gpu, op: &'static str) -> Result<()> {
        if self == Precision::F16 && !gpu.has_f16() {
            return Err(Error::MissingFeature { op, feature: "SHADER_F16", adapter: gpu.info().name.clone() });
        }
        Ok(())
    }
}
