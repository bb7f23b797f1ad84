//! Householder QR (docs/optimizers.md §11.5; blocked, matmul-based), Cholesky and triangular solves (§11.6),
//! batched.

use crate::error::{Error, Result};
use crate::gpu::{Gpu, PlanBuilder, Tensor};
use crate::linalg::{copy, Matmul, Trans};

/// Largest column count QR takes.
pub const MAX_QR_COLS: usize = 4096;

/// Thin QR of each `m×n` matrix (m ≥ n): `q: [b, m, n]` with orthonormal columns, `r: [b, n, n]` upper
/// triangular with a non-negative diagonal. Column order is preserved (column j of Q depends on columns ≤ j).
pub fn qr(plan: &mut PlanBuilder, a: &Tensor, q: &Tensor, r: &Tensor) -> Result<()> {
    let (b, m, n) = qr_shape(a, q)?;
    if r.numel() != b * n * n {
        return Err(Error::Shape { op: "qr", detail: format!("r {:?} for {:?}", r.shape(), a.shape()) });
    }
    let work = plan.scratch(&[b, m, n])?;
    copy(plan, a, &work)?;
    qr_blocked(plan, &work, q, Some(r))
}

/// Q of [`qr`] alone, reducing `a` in place (its contents are lost; a whole tensor, not a view): for callers
/// whose input is a scratch and who have no use for R, such as SOAP's refresh, it saves the copy and R.
pub fn qr_q_in_place(plan: &mut PlanBuilder, a: &Tensor, q: &Tensor) -> Result<()> {
    qr_shape(a, q)?;
    super::whole("qr_q_in_place", &[("a", a)])?;
    if a.buffer() == q.buffer() {
        return Err(Error::InvalidArgument {
            op: "qr_q_in_place",
            name: "q",
            detail: "q must not share a's buffer".into(),
        });
    }
    qr_blocked(plan, a, q, None)
}

/// `a`'s stack dimensions, checked for QR with `q`.
fn qr_shape(a: &Tensor, q: &Tensor) -> Result<(usize, usize, usize)> {
    let (b, m, n) = a.matrices("qr")?;
    if m < n || n > MAX_QR_COLS {
        return Err(Error::InvalidArgument {
            op: "qr",
            name: "a",
            detail: format!("need rows ≥ cols and cols ≤ {MAX_QR_COLS}, got {m}×{n}"),
        });
    }
    if q.numel() != b * m * n {
        return Err(Error::Shape { op: "qr", detail: format!("q {:?} for {:?}", q.shape(), a.shape()) });
    }
    Ok((b, m, n))
}

/// Panel width of the blocked QR (`NB` in `shaders/linalg/qr_panel.wgsl`).
const QR_PANEL: usize = 32;

/// Blocked Householder QR of `work` (a scratch copy of A, or A itself for [`qr_q_in_place`]; reduced in place): per
/// panel of 32 columns (a matrix of at most 32 columns is one panel) one workgroup per matrix builds the compact-WY
/// pair `(V, T)`, then three batched matmuls apply `I − V·Tᵀ·Vᵀ` to the rows at and below the panel; Q is `[D; 0]`
/// (D = diag(sign R_jj), so diag(R) ≥ 0 needs no pass over Q; each panel writes its part) with the blocks applied
/// in reverse, two matmuls each after one product has made every block's V·T. All the O(m·n²) work is in
/// matmuls, spread over the device; `finish` only extracts R, when wanted.
fn qr_blocked(plan: &mut PlanBuilder, work: &Tensor, q: &Tensor, r: Option<&Tensor>) -> Result<()> {
    let (b, m, n) = work.matrices("qr")?;
    let nb = QR_PANEL;
    let panels = n.div_ceil(nb);
    let vs = plan.scratch(&[panels, b, m, nb])?;
    let ts = plan.scratch(&[panels, b, nb, nb])?;
    let (w1, w2) = (plan.scratch(&[b, n, nb])?, plan.scratch(&[b, n, nb])?);
    let signs = plan.scratch(&[b, n])?;
    let view = |t: &Tensor, p: usize, rows: usize| {
        Tensor::from_buffer(t.gpu(), t.buffer().clone(), p * b * rows * nb, &[b, rows, nb])
    };
    let panel = plan.gpu().kernel("linalg/qr_panel.wgsl", "panel", &panel_defines(plan.gpu()))?;
    // x ← x − V·op(T)·(Vᵀ·x), op(T) = Tᵀ reducing A, T building Q. V is zero above row j0, so only rows ≥ j0 of x
    // take part; and only columns ≥ j0: left of the panel, those rows are already reduced to zero (reducing A) or
    // still the identity's zeros (building Q). The products run on that trailing block in place.
    // `vt`: every block's V·T, building Q.
    let apply = |plan: &mut PlanBuilder, p: usize, reduce: bool, vt: Option<&Tensor>, x: &Tensor| -> Result<()> {
        let j0 = p * nb;
        let (rows, cols) = (m - j0, n - j0);
        let at = |t: &Tensor, offset: usize, shape: &[usize]| {
            Tensor::from_buffer(t.gpu(), t.buffer().clone(), offset, shape)
        };
        let vt = vt.map(|vt| at(vt, p * b * m * nb + j0 * nb, &[b, rows, nb])).transpose()?;
        let block = WyBlock {
            v: &at(&vs, p * b * m * nb + j0 * nb, &[b, rows, nb])?,
            v_stride: m * nb,
            t: &view(&ts, p, nb)?,
            op_t: if reduce { Trans::T } else { Trans::N },
            vt: vt.as_ref(),
        };
        let x = at(x, x.offset() + j0 * n + j0, &[b, rows, cols])?;
        block.apply(plan, &x, (n, m * n), (&w1, &w2))
    };
    for p in 0..panels {
        let (v, t) = (view(&vs, p, m)?, view(&ts, p, nb)?);
        let j0 = p * nb;
        let u = PanelU {
            m: m as u32,
            n: n as u32,
            j0: j0 as u32,
            w: nb.min(n - j0) as u32,
            v_off: v.offset() as u32,
            t_off: t.offset() as u32,
            q_off: q.offset() as u32,
            _p: 0,
        };
        plan.dispatch(&panel, &u, &[work, &v, &t, q, &signs], [b as u32, 1, 1])?;
        apply(plan, p, true, None, work)?;
    }
    // Building Q: every block's V·T in one product first (with one panel that would only add a dispatch).
    let vt = if panels > 1 {
        let vt = plan.scratch(vs.shape())?;
        let stack = |t: &Tensor, rows: usize| t.reshape(&[panels * b, rows, nb]);
        Matmul::new(&stack(&vs, m)?, &stack(&ts, nb)?, &stack(&vt, m)?).record(plan)?;
        Some(vt)
    } else {
        None
    };
    for p in (0..panels).rev() {
        apply(plan, p, false, vt.as_ref(), q)?;
    }
    let Some(r) = r else { return Ok(()) };
    let finish = plan.gpu().kernel("linalg/qr_panel.wgsl", "finish", &panel_defines(plan.gpu()))?;
    let u = PanelU { m: m as u32, n: n as u32, v_off: r.offset() as u32, ..Default::default() };
    plan.dispatch(&finish, &u, &[work, r, &signs], [(n as u32).div_ceil(64), n as u32, b as u32])
}

/// A compact-WY block of Householder reflectors, `I − V·op(T)·Vᵀ`, for each matrix of a stack.
pub(crate) struct WyBlock<'a> {
    /// V, `[b, rows, nb]`, rows packed (`nb` apart).
    pub v: &'a Tensor,
    /// Elements between V's matrices.
    pub v_stride: usize,
    /// T, `[b, nb, nb]`, packed.
    pub t: &'a Tensor,
    /// T for the block's product in order (building Q), Tᵀ for its transpose (reducing A).
    pub op_t: Trans,
    /// `V·op(T)` when known beforehand (laid out as V): the block then takes two products instead of three. Where
    /// every block is known up front (building Q), one batched product over the stacked blocks makes them all,
    /// saving a dispatch per block (~0.1 ms each on lavapipe, most of it the dispatch itself).
    pub vt: Option<&'a Tensor>,
}

impl WyBlock<'_> {
    /// `x ← (I − V·op(T)·Vᵀ)·x` in place, three batched matmuls; `x` is `[b, rows, cols]` with rows `ld` and
    /// matrices `x_stride` apart; `w1`, `w2` are scratches of at least `b·nb·cols` values. The nb-wide factors go
    /// where the matmul tile is short: GPU tiles are tall, so there it runs transposed (xᵀV, then ·op(T)ᵀ) with the
    /// long dimension as rows; the CPU tile is 16 rows × 64 columns, so there Vᵀx is nb × cols (llvmpipe,
    /// 4 × 512×512: QR 161 → 135–143 ms).
    pub fn apply(
        &self,
        plan: &mut PlanBuilder,
        x: &Tensor,
        (ld, x_stride): (usize, usize),
        (w1, w2): (&Tensor, &Tensor),
    ) -> Result<()> {
        let (b, _, nb) = self.v.matrices("WY block V")?;
        let cols = x.matrices("WY block x")?.2;
        let vs = self.v_stride;
        let at = |t: &Tensor, shape: &[usize]| Tensor::from_buffer(t.gpu(), t.buffer().clone(), t.offset(), shape);
        let flip = |t: Trans| if t == Trans::T { Trans::N } else { Trans::T };
        if plan.gpu().is_cpu() {
            let (w1, w2) = (at(w1, &[b, nb, cols])?, at(w2, &[b, nb, cols])?);
            Matmul::new(self.v, x, &w1)
                .trans(Trans::T, Trans::N)
                .batch_strides(vs, x_stride, nb * cols)
                .row_strides(nb, ld, cols)
                .record(plan)?;
            // x − V·(op(T)·w1), or x − (V·op(T))·w1.
            let (left, right) = match self.vt {
                Some(vt) => (vt, &w1),
                None => {
                    Matmul::new(self.t, &w1, &w2).trans(self.op_t, Trans::N).record(plan)?;
                    (self.v, &w2)
                }
            };
            return Matmul::new(left, right, x)
                .scaled(-1.0, Some(x), 1.0)
                .batch_strides(vs, nb * cols, x_stride)
                .row_strides(nb, cols, ld)
                .record(plan);
        }
        let (w1, w2) = (at(w1, &[b, cols, nb])?, at(w2, &[b, cols, nb])?);
        Matmul::new(x, self.v, &w1)
            .trans(Trans::T, Trans::N)
            .batch_strides(x_stride, vs, cols * nb)
            .row_strides(ld, nb, nb)
            .record(plan)?;
        // x − V·(w1·op(T)ᵀ)ᵀ, or x − (V·op(T))·w1ᵀ.
        let (left, right) = match self.vt {
            Some(vt) => (vt, &w1),
            None => {
                Matmul::new(&w1, self.t, &w2).trans(Trans::N, flip(self.op_t)).record(plan)?;
                (self.v, &w2)
            }
        };
        Matmul::new(left, right, x)
            .trans(Trans::N, Trans::T)
            .scaled(-1.0, Some(x), 1.0)
            .batch_strides(vs, cols * nb, x_stride)
            .row_strides(nb, nb, ld)
            .record(plan)
    }
}

/// Row groups of the panel kernel (its workgroup is `QR_PANEL × groups` lanes): 1 on CPU adapters, where every
/// barrier costs a switch through all of a workgroup's lanes (llvmpipe, 4 × 512×512: the panels took 83–92 ms with
/// 8 groups, 62 with 1, before VᵀV moved into the reflection loop); on GPUs as many as the device's workgroup
/// limits allow, up to 16, since a panel is one workgroup per matrix whose time is the latency of its row loops.
/// `WGOPTIM_QR_GROUPS` overrides it (for measuring; values the limits refuse are ignored). With more than one group
/// the sub-block's row passes take every lane (`DENSE`).
fn panel_defines(gpu: &Gpu) -> [(&'static str, String); 3] {
    let limits = gpu.limits();
    let fits = |g: usize| {
        let lanes = g * QR_PANEL;
        // The kernel's workgroup arrays: red (f32) and red4 (vec4) per lane, gram and tt, then ~400 bytes.
        let bytes = 20 * lanes + 2 * 4 * QR_PANEL * QR_PANEL + 512;
        lanes <= limits.max_compute_invocations_per_workgroup as usize
            && lanes <= limits.max_compute_workgroup_size_x as usize
            && bytes <= limits.max_compute_workgroup_storage_size as usize
    };
    let wanted = std::env::var("WGOPTIM_QR_GROUPS").ok().and_then(|v| v.trim().parse::<usize>().ok());
    let groups = match wanted {
        Some(g) if g > 0 && fits(g) => g,
        _ if gpu.is_cpu() => 1,
        _ => [16, 8, 4, 2, 1].into_iter().find(|&g| fits(g)).unwrap_or(1),
    };
    let dense = (groups > 1) as u32;
    [("GROUPS", groups.to_string()), ("WG", (groups * QR_PANEL).to_string()), ("DENSE", dense.to_string())]
}

#[repr(C)]
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct PanelU {
    m: u32,
    n: u32,
    j0: u32,
    w: u32,
    v_off: u32,
    t_off: u32,
    q_off: u32,
    _p: u32,
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
    super::whole("cholesky", &[("l", l), ("info", info)])?;
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

/// Rows of the diagonal blocks of [`trsm`]. Measured on lavapipe with the 8 solves of a PSGD-Kron preconditioner
/// update over GPT-small's matrices (T up to 512², 128 right-hand sides per matrix): 158 ms by substitution
/// alone; blocked with 16 rows 49 ms, 32 43 ms, 64 54 ms, 128 ~80 ms.
const TRSM_BLOCK: usize = 32;

/// Triangular solve with many right-hand sides: `op(T)·X = B` or `X·op(T) = B`, T lower (`lower`) or upper.
/// Blocked for n > 32: each diagonal block by substitution (one invocation per right-hand side, in order), the
/// rest of X updated by a matmul after each block, so that all but ~32/n of the work runs at the device's matmul
/// speed.
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
    // The matrix each vector sees: op(T) on the left, op(T)ᵀ on the right; lower means forward substitution.
    let trans_m = (trans == Trans::T) != (side == Side::Right);
    let forward = lower != trans_m;
    let r = if side == Side::Left { bc } else { br };
    let solve = Substitution { t, n, trans_m, forward, side, r, batch: bb };
    if n <= TRSM_BLOCK {
        return solve.record(plan, (0, n), b, x, None);
    }
    copy(plan, b, x)?;
    let at = |x: &Tensor, offset: usize, shape: &[usize]| {
        Tensor::from_buffer(x.gpu(), x.buffer().clone(), x.offset() + offset, &[bb, shape[0], shape[1]])
    };
    // Each solved block, packed: the update's operand (it cannot read X while writing X).
    let solved = plan.scratch(&[bb * TRSM_BLOCK * r])?;
    let mut starts: Vec<usize> = (0..n).step_by(TRSM_BLOCK).collect();
    if !forward {
        starts.reverse();
    }
    for k0 in starts {
        let len = TRSM_BLOCK.min(n - k0);
        solve.record(plan, (k0, len), x, x, Some(&solved))?;
        // The unsolved indices: after the block (forward) or before it.
        let rest = if forward { (k0 + len, n - k0 - len) } else { (0, k0) };
        if rest.1 == 0 {
            continue;
        }
        // The block of op(T) that couples them: T's (rest, block) on the left without transposition and on the
        // right with it, else T's (block, rest); used transposed with T.
        let (rows, cols) =
            if (side == Side::Left) == (trans == Trans::N) { (rest, (k0, len)) } else { ((k0, len), rest) };
        let tb = at(t, rows.0 * n + cols.0, &[rows.1, cols.1])?;
        match side {
            // X[rest, :] −= op(T)[rest, block]·X[block, :]
            Side::Left => {
                let (xk, xr) = (at(&solved, 0, &[len, r])?, at(x, rest.0 * r, &[rest.1, r])?);
                Matmul::new(&tb, &xk, &xr)
                    .trans(trans, Trans::N)
                    .scaled(-1.0, Some(&xr), 1.0)
                    .row_strides(n, r, r)
                    .batch_strides(n * n, len * r, n * r)
                    .record(plan)?;
            }
            // X[:, rest] −= X[:, block]·op(T)[block, rest]
            Side::Right => {
                let (xk, xr) = (at(&solved, 0, &[r, len])?, at(x, rest.0, &[r, rest.1])?);
                Matmul::new(&xk, &tb, &xr)
                    .trans(Trans::N, trans)
                    .scaled(-1.0, Some(&xr), 1.0)
                    .row_strides(len, n, n)
                    .batch_strides(len * r, n * n, n * r)
                    .record(plan)?;
            }
        }
    }
    Ok(())
}

/// Substitution over one diagonal block of [`trsm`], one invocation per right-hand-side vector.
struct Substitution<'a> {
    t: &'a Tensor,
    n: usize,
    trans_m: bool,
    forward: bool,
    side: Side,
    /// Right-hand sides per matrix.
    r: usize,
    batch: usize,
}

impl Substitution<'_> {
    /// Solve the indices `k0..k0 + len` of every vector from `b` into `x`; with `solved`, in place (`b` is `x`)
    /// and the solved block also packed into `solved` (`[batch, len, r]` on the left, `[batch, r, len]` on the
    /// right).
    fn record(
        &self,
        plan: &mut PlanBuilder,
        (k0, len): (usize, usize),
        b: &Tensor,
        x: &Tensor,
        solved: Option<&Tensor>,
    ) -> Result<()> {
        let (n, r) = (self.n, self.r);
        let kernel =
            plan.gpu().kernel("linalg/trsm.wgsl", "main", &[("IN_PLACE", (solved.is_some() as u32).to_string())])?;
        // Vectors are columns of X on the left (elements r apart), rows on the right.
        let (v_stride, e_stride) = if self.side == Side::Left { (1, r) } else { (n, 1) };
        let (s_vec, s_elem) = if self.side == Side::Left { (1, r) } else { (len, 1) };
        let u: [u32; 16] = [
            len as u32,
            r as u32,
            self.forward as u32,
            self.trans_m as u32,
            v_stride as u32,
            e_stride as u32,
            (n * r) as u32,
            (self.t.offset() + k0 * n + k0) as u32,
            (b.offset() + k0 * e_stride) as u32,
            (x.offset() + k0 * e_stride) as u32,
            n as u32,
            (n * n) as u32,
            s_vec as u32,
            s_elem as u32,
            0,
            0,
        ];
        let mut tensors = vec![self.t, b, x];
        tensors.extend(solved);
        plan.dispatch(&kernel, &u, &tensors, [(r as u32).div_ceil(64), self.batch as u32, 1])
    }
}
