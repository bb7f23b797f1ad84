//! Deterministic tree reductions (fixed order, no atomics): sum, sum of squares, Frobenius norm, max-abs, L1,
//! an all-finite flag, trace; and per-row / per-column mean of squares.

use bytemuck::{Pod, Zeroable};

use crate::error::{Error, Result};
use crate::gpu::{PlanBuilder, Tensor};

/// What a reduction computes over each segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReduceOp {
    /// Σ x.
    Sum,
    /// Σ x².
    SumSq,
    /// sqrt(Σ x²) (Frobenius norm of a matrix).
    Norm,
    /// max |x|.
    MaxAbs,
    /// Σ |x|.
    L1,
    /// 1.0 when every element is finite, else 0.0.
    AllFinite,
}

impl ReduceOp {
    fn codes(self) -> (u32, u32) {
        match self {
            ReduceOp::Sum => (0, 0),
            ReduceOp::SumSq => (1, 0),
            ReduceOp::Norm => (1, 1),
            ReduceOp::MaxAbs => (2, 0),
            ReduceOp::L1 => (3, 0),
            ReduceOp::AllFinite => (4, 2),
        }
    }
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Uniforms {
    count: u32,
    stride: u32,
    seg_stride: u32,
    off: u32,
    chunks: u32,
    chunk_len: u32,
    out_off: u32,
    _p: u32,
}

/// Elements per workgroup of the first pass (of scalars; vec4 chunks take 4× as many).
const CHUNK: usize = 256 * 16;

/// Reduce each of `segments` equal contiguous parts of `x` into `out[segment]` (`out` has ≥ `segments` values).
/// One pass when a segment fits one workgroup's chunk, else two (partials in a scratch buffer).
pub fn reduce(plan: &mut PlanBuilder, x: &Tensor, op: ReduceOp, segments: usize, out: &Tensor) -> Result<()> {
    let n = x.numel();
    if n == 0 || segments == 0 {
        return Err(Error::ZeroSize { op: "reduce", shape: x.shape().to_vec() });
    }
    if !n.is_multiple_of(segments) || out.numel() < segments {
        return Err(Error::Shape {
            op: "reduce",
            detail: format!("{n} elements into {segments} segments, output of {} values", out.numel()),
        });
    }
    strided(plan, x, op, segments, n / segments, 1, n / segments, out)
}

/// `out[b] = trace(x[b])` for a stack of matrices.
pub fn trace(plan: &mut PlanBuilder, x: &Tensor, out: &Tensor) -> Result<()> {
    let (b, m, n) = x.matrices("trace")?;
    if out.numel() < b {
        return Err(Error::Shape {
            op: "trace",
            detail: format!("output has {} values for {b} matrices", out.numel()),
        });
    }
    strided(plan, x, ReduceOp::Sum, b, m.min(n), n + 1, m * n, out)
}

#[allow(clippy::too_many_arguments)]
fn strided(
    plan: &mut PlanBuilder,
    x: &Tensor,
    op: ReduceOp,
    segments: usize,
    count: usize,
    stride: usize,
    seg_stride: usize,
    out: &Tensor,
) -> Result<()> {
    let (code, post) = op.codes();
    // Contiguous segments of whole vec4s are read as vec4s, in chunks of 4× the elements: on llvmpipe a chunk's
    // cost is mostly its workgroup's barriers (coroutine switches), not its loads (Muon's four norms over
    // GPT-small: 3.4 ms with scalar chunks, the same with vec4 chunks of as many elements, 1.5 ms this way).
    let vec4 = stride == 1 && [count, seg_stride, x.offset()].iter().all(|v| v.is_multiple_of(4));
    let w = if vec4 { 4 } else { 1 };
    let chunk = CHUNK * w;
    let chunks = count.div_ceil(chunk);
    let gpu = plan.gpu().clone();
    let kernel = |fin: bool, partials: bool| {
        let f = |b: bool| (if b { "1" } else { "0" }).to_string();
        gpu.kernel(
            "linalg/reduce.wgsl",
            "main",
            &[
                ("OP", code.to_string()),
                ("POST", post.to_string()),
                ("FINAL", f(fin)),
                ("READ_PARTIALS", f(partials)),
                ("VEC4", f(vec4 && !partials)),
            ],
        )
    };
    // The first pass over x (in vec4s when `vec4`).
    let first = |chunks: usize, out_off: usize| Uniforms {
        count: (count / w) as u32,
        stride: stride as u32,
        seg_stride: (seg_stride / w) as u32,
        off: (x.offset() / w) as u32,
        chunks: chunks as u32,
        chunk_len: (chunk / w) as u32,
        out_off: out_off as u32,
        _p: 0,
    };
    if chunks == 1 {
        let k = kernel(true, false)?;
        return plan.dispatch(&k, &first(1, out.offset()), &[x, out], [1, segments as u32, 1]);
    }
    let partials = plan.scratch(&[segments * chunks])?;
    let k1 = kernel(false, false)?;
    plan.dispatch(&k1, &first(chunks, 0), &[x, &partials], [chunks as u32, segments as u32, 1])?;
    let k2 = kernel(true, true)?;
    let u2 = Uniforms {
        count: chunks as u32,
        stride: 1,
        seg_stride: chunks as u32,
        off: 0,
        chunks: 1,
        chunk_len: chunks as u32,
        out_off: out.offset() as u32,
        _p: 0,
    };
    plan.dispatch(&k2, &u2, &[&partials, out], [1, segments as u32, 1])
}

/// Per-row (`per_row = true`, output `[b, m]`) or per-column (output `[b, n]`) mean of squares.
pub fn mean_sq(plan: &mut PlanBuilder, x: &Tensor, per_row: bool, out: &Tensor) -> Result<()> {
    let (b, m, n) = x.matrices("mean_sq")?;
    let len = if per_row { m } else { n };
    if out.numel() != b * len {
        return Err(Error::Shape {
            op: "mean_sq",
            detail: format!("output has {} values, expected {}", out.numel(), b * len),
        });
    }
    let f = if per_row { "1" } else { "0" };
    let k = plan.gpu().kernel("linalg/row_col.wgsl", "main", &[("PER_ROW", f.into())])?;
    let u: [u32; 8] = [b as u32, m as u32, n as u32, x.offset() as u32, out.offset() as u32, 0, 0, 0];
    plan.dispatch(&k, &u, &[x, out], [(len as u32).div_ceil(64), b as u32, 1])
}

/// `out[b] = xᵀ` for each matrix of the stack (`out` shaped `[b?, n, m]`).
pub fn transpose(plan: &mut PlanBuilder, x: &Tensor, out: &Tensor) -> Result<()> {
    let (b, m, n) = x.matrices("transpose")?;
    let (bo, om, on) = out.matrices("transpose out")?;
    if (bo, om, on) != (b, n, m) {
        return Err(Error::Shape { op: "transpose", detail: format!("{:?} into {:?}", x.shape(), out.shape()) });
    }
    if x.buffer == out.buffer {
        return Err(Error::InvalidArgument { op: "transpose", name: "out", detail: "out must not alias x".into() });
    }
    transpose_view(plan, x, (b, m, n), (n, m * n), out)
}

/// Rows one lane copies in the CPU transpose.
const TRANSPOSE_STRIP: u32 = 8;

/// [`transpose`] of a strided view: `b` matrices of `m×n` in `x`'s buffer from `x.offset()`, rows `ld` apart and
/// matrices `bs` apart, into the packed `out`. The caller checks that the view lies in `x`'s buffer.
pub(crate) fn transpose_view(
    plan: &mut PlanBuilder,
    x: &Tensor,
    (b, m, n): (usize, usize, usize),
    from: (usize, usize),
    out: &Tensor,
) -> Result<()> {
    copy_view(plan, x, (b, m, n), from, true, out, (m, m * n))
}

/// Copy `b` matrices of `m×n` (transposed or not) between strided views: from `x`'s buffer at `x.offset()`, rows and
/// matrices `from = (ld, bs)` apart, into `out`'s at `out.offset()`, rows and matrices `to = (ld, bs)` apart (rows
/// of the result: `n` of them when transposed). The caller checks that the source view lies in `x`'s buffer; the
/// destination is checked here.
pub(crate) fn copy_view(
    plan: &mut PlanBuilder,
    x: &Tensor,
    (b, m, n): (usize, usize, usize),
    (ld, bs): (usize, usize),
    transposed: bool,
    out: &Tensor,
    (out_ld, out_bs): (usize, usize),
) -> Result<()> {
    let (rows, cols) = if transposed { (n, m) } else { (m, n) };
    let fits =
        |b: usize| out.offset() + (b - 1) * out_bs + (rows - 1) * out_ld + cols <= out.buffer().size() as usize / 4;
    if b * rows * cols == 0 || out_ld < cols || !fits(b) {
        return Err(Error::Shape {
            op: "copy",
            detail: format!("{b} matrices of {rows}×{cols} at rows {out_ld} apart do not fit the output"),
        });
    }
    let u: [u32; 8] = [m, n, x.offset(), out.offset(), ld, bs, out_ld, out_bs].map(|v| v as u32);
    if !transposed {
        let k = plan.gpu().kernel("linalg/transpose.wgsl", "main", &[("COPY", "1".into())])?;
        return plan.dispatch(&k, &u, &[x, out], [(n as u32).div_ceil(16), (m as u32).div_ceil(16), b as u32]);
    }
    if plan.gpu().is_cpu() {
        let k = plan.gpu().kernel(
            "linalg/transpose.wgsl",
            "main",
            &[("STRIPS", "1".into()), ("STRIP", TRANSPOSE_STRIP.to_string())],
        )?;
        let groups = [(n as u32).div_ceil(8), (m as u32).div_ceil(8 * TRANSPOSE_STRIP), b as u32];
        return plan.dispatch(&k, &u, &[x, out], groups);
    }
    let k = plan.gpu().kernel("linalg/transpose.wgsl", "main", &[])?;
    plan.dispatch(&k, &u, &[x, out], [(n as u32).div_ceil(16), (m as u32).div_ceil(16), b as u32])
}
