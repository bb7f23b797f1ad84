//! Symmetric eigendecomposition (docs/optimizers.md §11.4) by parallel Jacobi with warm start, or by Householder
//! tridiagonalization and implicit QL, and spectral functions `V·f(Λ)·Vᵀ` built from it.

use bytemuck::{Pod, Zeroable};

use crate::error::{Error, Result};
use crate::gpu::{PlanBuilder, Tensor};
use crate::linalg::factor::WyBlock;
use crate::linalg::{copy, identity, transpose, Matmul, Trans};

/// Largest matrix [`eigh`] takes (the one-workgroup Jacobi kernel's pair table lives in workgroup memory).
pub const MAX_EIGH_DIM: usize = 2048;

/// Eigendecomposition settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EighConfig {
    /// Upper bound on Jacobi sweeps; the kernel stops earlier once `off(A) ≤ tol·‖A‖_F` or a sweep rotated nothing.
    pub max_sweeps: u32,
    /// Relative off-diagonal tolerance for stopping Jacobi; pairs with
    /// `|a_pq| ≤ tol·‖A‖_F / n` are not rotated, nor on warm starts those at the rounding `4·2⁻²⁴·‖A‖_F` that
    /// forming `V₀ᵀAV₀` leaves.
    pub tol: f32,
    /// A Jacobi rotation is skipped when `|a_pq| ≤ max(skip, n·2⁻²⁴)·sqrt(|a_pp·a_qq|)`: below `n·2⁻²⁴` a rotation
    /// only stirs f32 rounding noise, and warm starts would never stop.
    pub skip: f32,
    /// The algorithm and how it is laid out on the device.
    pub method: EighMethod,
}

impl Default for EighConfig {
    fn default() -> Self {
        EighConfig { max_sweeps: 15, tol: 1e-6, skip: 1e-7, method: EighMethod::Auto }
    }
}

/// How [`eigh`] decomposes. All return the eigenpairs to f32 accuracy; they differ in speed, and Jacobi keeps small
/// eigenvalues of graded matrices to better relative accuracy (docs/optimizers.md §11.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum EighMethod {
    /// [`EighMethod::Tridiagonal`], except [`EighMethod::Workgroup`] for n ≤ 64 on GPUs. On lavapipe (2 cores),
    /// 2 matrices of n = 512: 0.10 s cold or warm (0.13 s before its Q was built by matmuls), against 11.6 s for
    /// cold Jacobi and 2.7 s for Jacobi warm-started from a basis 1e-3 away (n = 128: 9 ms against 228 / 72 ms).
    /// On an H100 (Vulkan), warm starts from the basis of a matrix 1e-3 away, eigenvalues spread over 6–12
    /// decades as gradient factors have them: n = 512 ×4 Tridiagonal 49 ms (×16: 50 ms) against Rounds 187 ms;
    /// n = 1024 ×2 182 against 496 ms; n = 128 ×4 8.6 against 24.5 ms; n = 64 ×4 Workgroup 0.67 ms against
    /// Tridiagonal 1.7 and Rounds 11 ms; n = 32 0.43 against 0.77 ms (cold, the two equal at n ≤ 64). Since then
    /// the GPU variant of Tridiagonal (Z column-major for QL, the reduction's rows split over lanes) takes n = 512
    /// ×4 in 16 ms, n = 1024 in 85, n = 128 in 4.6, n = 64 in 1.2.
    #[default]
    Auto,
    /// Jacobi; one workgroup per matrix loops over every sweep and round in one dispatch: no dispatch overhead,
    /// but one compute unit per matrix.
    Workgroup,
    /// Jacobi; two dispatches per round over all elements (plus a convergence check per sweep): uses the whole
    /// device; `max_sweeps·(2n − 1)` dispatches, which finished matrices pass through cheaply.
    Rounds,
    /// Householder tridiagonalization, then implicit QL whose rotations every lane applies to its rows of the
    /// eigenvector matrix; the reduction, QL and sort in one workgroup per matrix, the Householder Q in between
    /// (by matmuls from n = 320); ~(4/3 + 4/3)·n³ flops plus the rotations, whatever the start. A warm start's
    /// basis only orients the results (see [`eigh`]). Eigenvalues come out to ~2⁻²⁴·‖A‖ absolutely; Jacobi (cold)
    /// resolves a PSD matrix's near-null eigenvalues relatively, which matters for `(λ + ε)^p` only when ε is below
    /// ~1e-4·‖A‖ (an inverse 4th root with ε = 1e-3 of a rank-3 factor with ‖A‖ ≈ 60: 1.5e-4 relative error
    /// against Jacobi's < 1e-4).
    Tridiagonal,
}

impl EighMethod {
    /// The concrete method for `n`×`n` matrices on `gpu`.
    fn resolve(self, gpu: &crate::gpu::Gpu, n: usize) -> EighMethod {
        match self {
            EighMethod::Auto if n <= 64 && !gpu.is_cpu() => EighMethod::Workgroup,
            EighMethod::Auto => EighMethod::Tridiagonal,
            m => m,
        }
    }
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Uniforms {
    n: u32,
    m: u32,
    max_sweeps: u32,
    warm: u32,
    tol: f32,
    skip: f32,
    _q: u32,
    _r: u32,
}

fn square(t: &Tensor, op: &'static str) -> Result<(usize, usize)> {
    let (b, m, n) = t.matrices(op)?;
    if m != n {
        return Err(Error::Shape { op, detail: format!("expected square matrices, got {:?}", t.shape()) });
    }
    Ok((b, n))
}

/// Eigenvalues (ascending, `vals: [b, n]`) and eigenvectors (columns of `vecs: [b, n, n]`) of symmetric `a`.
/// With `warm = Some(V₀)` (an orthogonal basis from a previous call, possibly `vecs` itself) Jacobi runs on
/// `V₀ᵀ A V₀` and returns `V₀·V_jac`, which typically needs 1–3 sweeps when `A` drifted little, and its small
/// rotations keep the basis continuous. [`EighMethod::Tridiagonal`] decomposes `A` itself and points each
/// eigenvector along `V₀`'s column of the same rank (without `V₀`: its largest-magnitude component positive), so
/// separated eigenvectors stay continuous too; eigenvectors of (nearly) equal eigenvalues may mix differently.
pub fn eigh(
    plan: &mut PlanBuilder,
    a: &Tensor,
    vals: &Tensor,
    vecs: &Tensor,
    warm: Option<&Tensor>,
    cfg: &EighConfig,
) -> Result<()> {
    let (b, n) = square(a, "eigh")?;
    if n > MAX_EIGH_DIM {
        return Err(Error::InvalidArgument {
            op: "eigh",
            name: "a",
            detail: format!("n = {n} exceeds {MAX_EIGH_DIM}"),
        });
    }
    if vals.numel() != b * n || vecs.shape().iter().product::<usize>() != b * n * n {
        return Err(Error::Shape {
            op: "eigh",
            detail: format!("vals {:?} / vecs {:?} for {b} matrices of {n}×{n}", vals.shape(), vecs.shape()),
        });
    }
    super::whole("eigh", &[("vals", vals), ("vecs", vecs)])?;
    if !(cfg.tol >= 0.0 && cfg.skip >= 0.0) {
        return Err(Error::InvalidArgument { op: "eigh", name: "tol", detail: "tolerances must be ≥ 0".into() });
    }
    let method = cfg.method.resolve(plan.gpu(), n);
    if let Some(v0) = warm {
        if square(v0, "eigh warm start")?.1 != n {
            return Err(Error::Shape { op: "eigh", detail: format!("warm basis {:?} for {n}×{n}", v0.shape()) });
        }
    }
    if method == EighMethod::Tridiagonal {
        // The kernel reads A and V₀ from element 0; V₀ may also be `vecs` itself (a basis refreshed in place),
        // which one dispatch cannot bind twice. Such operands go through a scratch copy.
        let whole = |plan: &mut PlanBuilder, t: &Tensor, aliased: bool| -> Result<Tensor> {
            if t.offset() == 0 && !aliased {
                return Ok(t.clone());
            }
            let w = plan.scratch(&[b, n, n])?;
            copy(plan, t, &w)?;
            Ok(w)
        };
        let a = whole(plan, a, false)?;
        let basis = warm.map(|v0| whole(plan, v0, v0.buffer == vecs.buffer)).transpose()?;
        return tridiagonal_ql(plan, &a, vals, vecs, basis.as_ref(), b, n);
    }
    let work_a = plan.scratch(&[b, n, n])?;
    let rounds = method == EighMethod::Rounds;
    let work_v = plan.scratch(&[b, n, n])?;
    match warm {
        Some(v0) => {
            let t = plan.scratch(&[b, n, n])?;
            Matmul::new(v0, a, &t).trans(Trans::T, Trans::N).record(plan)?;
            Matmul::new(&t, v0, &work_a).record(plan)?;
            // The one-workgroup sweeps rotate Vᵀ's rows (contiguous) rather than V's columns.
            if rounds {
                copy(plan, v0, &work_v)?;
            } else {
                transpose(plan, v0, &work_v)?;
            }
        }
        None => {
            copy(plan, a, &work_a)?;
            identity(plan, &work_v, 1.0)?;
        }
    }
    let m = n + n % 2;
    let work_a = if rounds { jacobi_rounds(plan, &work_a, &work_v, b, n, warm.is_some(), cfg)? } else { work_a };
    let kernel = plan.gpu().kernel(
        "linalg/jacobi.wgsl",
        "main",
        &[
            ("PAIRS", (m / 2).max(1).to_string()),
            ("WG", workgroup_size(plan.gpu(), m / 2).to_string()),
            ("V_T", (!rounds as u32).to_string()),
        ],
    )?;
    let u = Uniforms {
        n: n as u32,
        m: m as u32,
        // After the rounds only the sort is left.
        max_sweeps: if rounds { 0 } else { cfg.max_sweeps },
        warm: warm.is_some() as u32,
        tol: cfg.tol,
        skip: cfg.skip,
        _q: 0,
        _r: 0,
    };
    plan.dispatch(&kernel, &u, &[&work_a, &work_v, vals, vecs], [b as u32, 1, 1])
}

/// [`EighMethod::Tridiagonal`] of `a`: the reduction, Q (by matmuls from n = 320), the QL rotations and the sort
/// (its work copies are padded to rows of a multiple of 8), with the eigenvectors' signs taken from `warm` when
/// given.
fn tridiagonal_ql(
    plan: &mut PlanBuilder,
    a: &Tensor,
    vals: &Tensor,
    vecs: &Tensor,
    warm: Option<&Tensor>,
    b: usize,
    n: usize,
) -> Result<()> {
    let np = n.next_multiple_of(8);
    let (work, z) = (plan.scratch(&[b, n, np])?, plan.scratch(&[b, n, np])?);
    let aux = plan.scratch(&[b, 3 * n + 2 * np])?;
    // 64 lanes on CPU adapters (lavapipe, measured on the first, scalar layout: 2 × 512² 524 ms against 562 for 32
    // and 539–565 for 128–256; 128²: 18 against 20–37 ms); 256 elsewhere (H100, 4 × 512²: reduce 34 ms and rotate
    // 225 against 44 and 229 with 1024, before ZT and ROWSPLIT).
    let wg = if plan.gpu().is_cpu() { 64 } else { 256 };
    // QL's d, e and rotations in workgroup memory where they fit (16 bytes per row); on GPUs only, where lane 0's
    // sequential steps otherwise wait on storage (H100, 4 × 128²: 8.5 → 7.8 ms). CPU adapters keep one kernel for
    // every n (each costs llvmpipe a compile) and their caches serve lane 0.
    let ql_bytes = 16 * n + 64;
    let ql_shared = !plan.gpu().is_cpu() && ql_bytes <= plan.gpu().limits().max_compute_workgroup_storage_size as usize;
    let mut defines = vec![("WG", wg.to_string()), ("WARM", (warm.is_some() as u32).to_string())];
    if ql_shared {
        defines.extend([("QL_SHARED", "1".to_string()), ("QLN", n.to_string())]);
    }
    // GPUs rotate Z column-major, in the reduction's work copy (free by then): row-major, a rotation's loads were
    // one row per lane, 32 cache lines per warp access.
    let zt = !plan.gpu().is_cpu();
    defines.push(("ZT", (zt as u32).to_string()));
    // And split the reduction's rows over lanes (each lane one column group of 8 suits llvmpipe's SIMD groups).
    defines.push(("ROWSPLIT", (zt as u32).to_string()));
    let u = [n as u32, np as u32, 0, 0];
    // CPU adapters' reduction: each column group's parts of the row sums (binding 8, after the optional warm basis).
    let rowpart = if zt { None } else { Some(plan.scratch(&[b, np / 8 * np])?) };
    let mut bufs = vec![a, &work, &z, &aux, vals, vecs];
    bufs.push(warm.unwrap_or(a));
    bufs.extend(rowpart.as_ref());
    let phase = |plan: &mut PlanBuilder, name: &str| -> Result<()> {
        let kernel = plan.gpu().kernel("linalg/tridiag_ql.wgsl", name, &defines)?;
        plan.dispatch(&kernel, &u, &bufs, [b as u32, 1, 1])
    };
    phase(plan, "reduce")?;
    if n >= WY_FROM {
        accumulate_blocked(plan, &work, &aux, &z, b, n, np)?;
    } else {
        phase(plan, "accumulate")?;
    }
    if zt {
        transpose(plan, &z, &work.reshape(&[b, np, n])?)?;
    }
    phase(plan, "rotate")?;
    phase(plan, "sort")
}

/// Reflectors per compact-WY block of the tridiagonal Q (`NB` in `shaders/linalg/tridiag_wy.wgsl`).
const WY_BLOCK: usize = 32;

/// From this n on the tridiagonal Q is built by matmuls: below it their dispatches cost what they save
/// (lavapipe, 2 matrices, one workgroup's passes against matmuls: n = 128 8 against 15.5 ms, 256 25 against 25–28,
/// 384 58–59 against 54.5, 512 118 against 101–108).
const WY_FROM: usize = 320;

/// Q = H₀·H₁·…·H_{n−3} of the tridiagonal reduction into `z` (padded rows of `np`), by blocks of 32 reflectors in
/// compact-WY form ([`WyBlock`], as QR's) applied to the identity in reverse, on Z's trailing part (a block acts on
/// indices k0+1.. only). On lavapipe, 2 × 512²: 30 ms as rank-2 passes in one workgroup per matrix
/// (`accumulate`), 17 ms this way.
fn accumulate_blocked(
    plan: &mut PlanBuilder,
    work: &Tensor,
    aux: &Tensor,
    z: &Tensor,
    b: usize,
    n: usize,
    np: usize,
) -> Result<()> {
    let nb = WY_BLOCK;
    let blocks = n.saturating_sub(2).div_ceil(nb);
    if blocks == 0 {
        return identity(plan, z, 1.0);
    }
    let (v, gram, t) = (
        plan.scratch(&[blocks * b, n, nb])?,
        plan.scratch(&[blocks * b, nb, nb])?,
        plan.scratch(&[blocks * b, nb, nb])?,
    );
    let u = [n as u32, np as u32, 0, 0];
    let grid = [blocks as u32, b as u32, 1];
    let kernel = plan.gpu().kernel("linalg/tridiag_wy.wgsl", "main", &[("V", "1".to_string())])?;
    plan.dispatch(&kernel, &u, &[work, &v, z], grid)?;
    Matmul::new(&v, &v, &gram).trans(Trans::T, Trans::N).record(plan)?;
    let kernel = plan.gpu().kernel("linalg/tridiag_wy.wgsl", "main", &[("TMAT", "1".to_string())])?;
    plan.dispatch(&kernel, &u, &[aux, &gram, &t], grid)?;
    // Every block's V·T in one product (the blocks then take two products each, not three).
    let vt = plan.scratch(v.shape())?;
    Matmul::new(&v, &t, &vt).record(plan)?;
    let (w1, w2) = (plan.scratch(&[b, nb, n])?, plan.scratch(&[b, nb, n])?);
    let at =
        |x: &Tensor, offset: usize, shape: &[usize]| Tensor::from_buffer(x.gpu(), x.buffer().clone(), offset, shape);
    for p in (0..blocks).rev() {
        let j0 = p * nb + 1;
        let len = n - j0;
        let block = WyBlock {
            v: &at(&v, p * b * n * nb + j0 * nb, &[b, len, nb])?,
            v_stride: n * nb,
            t: &at(&t, p * b * nb * nb, &[b, nb, nb])?,
            op_t: Trans::N,
            vt: Some(&at(&vt, p * b * n * nb + j0 * nb, &[b, len, nb])?),
        };
        let zr = at(z, z.offset() + j0 * np + j0, &[b, len, len])?;
        block.apply(plan, &zr, (np, n * np), (&w1, &w2))?;
    }
    Ok(())
}

/// Invocations of the one-workgroup kernel: 256 on CPU adapters (more only adds coroutine switches), else as
/// many as the device allows up to 1024 and the workgroup memory (two reduction arrays, the pair tables) fits.
fn workgroup_size(gpu: &crate::gpu::Gpu, pairs: usize) -> u32 {
    if gpu.is_cpu() {
        return 256;
    }
    let l = gpu.limits();
    let fits = |wg: u32| {
        wg <= l.max_compute_invocations_per_workgroup
            && wg <= l.max_compute_workgroup_size_x
            && (2 * wg as usize + 4 * pairs.max(1)) * 4 + 16 <= l.max_compute_workgroup_storage_size as usize
    };
    [1024, 512].into_iter().find(|&wg| fits(wg)).unwrap_or(256)
}

/// [`EighMethod::Rounds`]: every sweep's rounds as dispatches; returns the buffer holding the final A
/// (rows ping-pong between two buffers; V is rotated in place).
fn jacobi_rounds(
    plan: &mut PlanBuilder,
    a: &Tensor,
    v: &Tensor,
    b: usize,
    n: usize,
    warm: bool,
    cfg: &EighConfig,
) -> Result<Tensor> {
    let m = n + n % 2;
    let other = plan.scratch(&[b, n, n])?;
    // done, rotated, _, threshold per matrix; reset on every run of the plan.
    let (flags, zeros) = (plan.scratch(&[b * 4])?, plan.scratch(&[b * 4])?);
    copy(plan, &zeros, &flags)?;
    let gpu = plan.gpu().clone();
    let kernel = |phase: &str| gpu.kernel("linalg/jacobi_rounds.wgsl", "main", &[(phase, "1".to_string())]);
    let (check, rows, cols) = (kernel("CHECK")?, kernel("ROWS")?, kernel("COLS")?);
    let bufs = [a, &other];
    let mut t = 0;
    for sweep in 0..cfg.max_sweeps {
        let mut u = RoundU {
            n: n as u32,
            m: m as u32,
            round: 0,
            sweep,
            tol: cfg.tol,
            skip: cfg.skip,
            warm: warm as u32,
            _p: 0,
        };
        plan.dispatch(&check, &u, &[bufs[t % 2], &flags], [b as u32, 1, 1])?;
        for r in 0..m - 1 {
            u.round = r as u32;
            let (src, dst) = (bufs[t % 2], bufs[(t + 1) % 2]);
            plan.dispatch(&rows, &u, &[src, dst, &flags], [((n * n) as u32).div_ceil(256), b as u32, 1])?;
            plan.dispatch(&cols, &u, &[src, dst, &flags, v], [((n * m / 2) as u32).div_ceil(256), b as u32, 1])?;
            t += 1;
        }
    }
    Ok(bufs[t % 2].clone())
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct RoundU {
    n: u32,
    m: u32,
    round: u32,
    sweep: u32,
    tol: f32,
    skip: f32,
    warm: u32,
    _p: u32,
}

/// `out = V·diag(f(λ))·Vᵀ` with `f(λ) = (max(λ, floor) + eps)^power`, from [`eigh`]'s outputs.
pub fn eig_apply(
    plan: &mut PlanBuilder,
    vals: &Tensor,
    vecs: &Tensor,
    out: &Tensor,
    power: f32,
    eps: f32,
    floor: f32,
) -> Result<()> {
    let (b, n) = square(vecs, "eig_apply")?;
    super::whole("eig_apply", &[("vals", vals), ("vecs", vecs)])?;
    if vals.numel() != b * n || out.numel() != b * n * n {
        return Err(Error::Shape {
            op: "eig_apply",
            detail: format!("vals {:?}, out {:?}", vals.shape(), out.shape()),
        });
    }
    let (w, weights) = (plan.scratch(&[b, n, n])?, plan.scratch(&[b, n])?);
    let total = (b * n) as u32;
    #[repr(C)]
    #[derive(Clone, Copy, Pod, Zeroable)]
    struct U {
        n: u32,
        total: u32,
        floor: f32,
        eps: f32,
        power: f32,
        _p: [u32; 3],
    }
    let u = U { n: n as u32, total, floor, eps, power, _p: [0; 3] };
    let kernel = plan.gpu().kernel("linalg/eig_apply.wgsl", "main", &[("WEIGHTS", "1".to_string())])?;
    plan.dispatch(&kernel, &u, &[vals, vecs, &w, &weights], [total.div_ceil(64), 1, 1])?;
    // V's columns scaled on vec4s where the rows allow (lavapipe, a Shampoo period over GPT-small: 12–14 ms with a
    // pow and an index division per element, 6.0–6.2 ms in these two passes).
    let w4 = if n.is_multiple_of(4) { 4 } else { 1 };
    let defines = [("VT", (if w4 == 4 { "vec4<f32>" } else { "f32" }).to_string()), ("W", w4.to_string())];
    let kernel = plan.gpu().kernel("linalg/eig_apply.wgsl", "main", &defines)?;
    plan.dispatch(&kernel, &u, &[vals, vecs, &w, &weights], [((n / w4) as u32).div_ceil(64), n as u32, b as u32])?;
    let vv = vecs.reshape(&[b, n, n])?;
    let o = out.reshape(&[b, n, n])?;
    Matmul::new(&w, &vv, &o).trans(Trans::N, Trans::T).record(plan)
}
