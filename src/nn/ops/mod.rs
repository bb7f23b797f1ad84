//! The ops of the autodiff [`Graph`](crate::nn::Graph): each records its forward dispatches and registers a
//! backward recorder. Kernels live in `shaders/nn/`, one file per op family.

pub(crate) mod attention;
mod dense;
mod embedding;
mod loss;
mod norm;
mod pointwise;

pub use attention::MAX_HEAD_DIM as attention_max_head_dim;

use bytemuck::Pod;

use crate::error::{Error, Result};
use crate::gpu::{PlanBuilder, Tensor};

/// Record `invocations` invocations of an nn kernel (workgroups of 64, laid out in 2-D past the
/// per-dimension limit; kernels recover the linear index from `num_workgroups`).
pub(crate) fn launch<U: Pod>(
    plan: &mut PlanBuilder,
    file: &str,
    entry: &str,
    defines: &[(&str, String)],
    uniforms: &U,
    tensors: &[&Tensor],
    invocations: usize,
) -> Result<()> {
    let kernel = plan.gpu().kernel(file, entry, defines)?;
    let groups = invocations.div_ceil(64).max(1) as u32;
    let gx = groups.min(32768);
    plan.dispatch(&kernel, uniforms, tensors, [gx, groups.div_ceil(gx), 1])
}

/// An element offset or size as the u32 the kernels take.
pub(crate) fn u32_of(op: &'static str, v: usize) -> Result<u32> {
    u32::try_from(v).map_err(|_| Error::Shape { op, detail: format!("{v} does not fit the kernels' 32-bit indices") })
}

/// `[rows, cols]` of a 2-D shape, or a shape error naming `op`.
pub(crate) fn matrix(op: &'static str, shape: &[usize]) -> Result<(usize, usize)> {
    match shape {
        [r, c] if r * c > 0 => Ok((*r, *c)),
        _ => Err(Error::Shape { op, detail: format!("expected a non-empty matrix [rows, cols], got {shape:?}") }),
    }
}
