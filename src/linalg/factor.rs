//! Householder QR (docs/optimizers.md §11.5), Cholesky and triangular solves (§11.6), batched, one workgroup
//! per matrix.

use crate::error::{Error, Result};
use crate::gpu::{PlanBuilder, Tensor};
use crate::linalg::{copy, Trans};

/// Largest column count QR takes (its τ table lives in workgroup memory).
pub const MAX_QR_COLS: usize = 4096;

/// Thin QR of each `m×n` matrix (m ≥ n): `q: [b, m, n]` with orthonormal columns, `r: [b, n, n]` upper
/// triangular with a non-negative diagonal. Column order is preserved (column j of Q depends on columns ≤ j).
pub fn qr(plan: &mut PlanBuilder, a: &Tensor, q: &Tensor, r: &Tensor) -> Result<()> {
    let (b, m, n) = a.matrices("qr")?;
    if m < n || n > MAX_QR_COLS {
        return Err(Error::InvalidArgument {
            op: "qr",
            name: "a",
            detail: format!("need rows ≥ cols and cols ≤ {MAX_QR_COLS}, got {m}×{n}"),
        });
    }
    if q.numel() != b * m * n || r.numel() != b * n * n {
        return Err(Error::Shape {
            op: "qr",
            detail: format!("q {:?}, r {:?} for {:?}", q.shape(), r.shape(), a.shape()),
        });
    }
    let work = plan.scratch(&[b, m, n])?;
    copy(plan, a, &work)?;
    let kernel = plan.gpu().kernel("linalg/qr.wgsl", "main", &[("N", n.to_string())])?;
    let u: [u32; 4] = [m as u32, n as u32, 0, 0];
    plan.dispatch(&kernel, &u, &[&work, q, r], [b as u32, 1, 1])
}

/// Cholesky `A + jitter·I = L·Lᵀ` into `l: [b, n, n]` (lower, zeros above). `info[b]` becomes 0 on success or
/// k+1 for the first non-positive pivot k, which is clamped so `l` stays finite; read it asynchronously.
pub fn cholesky(plan: &mut PlanBuilder, a: &Tensor, l: &Tensor, info: &Tensor, jitter: f32) -> Result<()> {
    let (b, m, n) = a.matrices("cholesky")?;
    if m != n || l.shape() != a.shape() || info.numel() < b {
        return Err(Error::Shape {
            op: "cholesky",
            detail: format!("a {:?}, l {:?}, info {:?}", a.shape(), l.shape(), info.shape()),
        });
    }
    if !jitter.is_finite() || jitter < 0.0 {
        return Err(Error::InvalidArgument {
            op: "cholesky",
            name: "jitter",
            detail: format!("{jitter} must be finite and ≥ 0"),
        });
    }
    if a.buffer() != l.buffer() || a.offset() != l.offset() {
        copy(plan, a, l)?;
    }
    let kernel = plan.gpu().kernel("linalg/cholesky.wgsl", "main", &[])?;
    #[repr(C)]
    #[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
    struct U {
        n: u32,
        _a: u32,
        jitter: f32,
        _b: u32,
    }
    plan.dispatch(&kernel, &U { n: n as u32, _a: 0, jitter, _b: 0 }, &[l, info], [b as u32, 1, 1])
}

/// Which side the triangular matrix multiplies on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// Solve `op(T)·X = B` (B is n×r).
    Left,
    /// Solve `X·op(T) = B` (B is r×n).
    Right,
}

/// Triangular solve with many right-hand sides: `op(T)·X = B` or `X·op(T) = B`, T lower (`lower`) or upper.
pub fn trsm(
    plan: &mut PlanBuilder,
    t: &Tensor,
    lower: bool,
    trans: Trans,
    side: Side,
    b: &Tensor,
    x: &Tensor,
) -> Result<()> {
    let (bt, n, n2) = t.matrices("trsm T")?;
    let (bb, br, bc) = b.matrices("trsm B")?;
    let sys = if side == Side::Left { br } else { bc };
    if n != n2 || sys != n || bt != bb || x.shape() != b.shape() {
        return Err(Error::Shape {
            op: "trsm",
            detail: format!("T {:?}, B {:?}, X {:?} ({side:?})", t.shape(), b.shape(), x.shape()),
        });
    }
    if x.buffer() == b.buffer() || x.buffer() == t.buffer() {
        return Err(Error::InvalidArgument { op: "trsm", name: "x", detail: "x must not alias T or B".into() });
    }
    // The matrix each vector sees: op(T) on the left, op(T)ᵀ on the right.
    let trans_m = (trans == Trans::T) != (side == Side::Right);
    let m_lower = lower != trans_m;
    let (count, v_stride, e_stride) = if side == Side::Left { (bc, 1, bc) } else { (br, bc, 1) };
    let kernel = plan.gpu().kernel("linalg/trsm.wgsl", "main", &[])?;
    let u: [u32; 8] =
        [n as u32, count as u32, m_lower as u32, trans_m as u32, v_stride as u32, e_stride as u32, (br * bc) as u32, 0];
    plan.dispatch(&kernel, &u, &[t, b, x], [(count as u32).div_ceil(64), bb as u32, 1])
}
