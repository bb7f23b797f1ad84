//! Batched matrix multiply `out = alpha·op(A)·op(B) + beta·C` with transposes, and Gram products
//! (`X·Xᵀ`, `Xᵀ·X`) that compute one triangle and mirror it.

use bytemuck::{Pod, Zeroable};

use crate::error::{Error, Result};
use crate::gpu::{Gpu, Kernel, PlanBuilder, Tensor};
use crate::linalg::Precision;

/// Whether an operand is used as stored or transposed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trans {
    /// As stored.
    N,
    /// Transposed.
    T,
}

/// Register-tile shape of one matmul variant: each invocation computes `tm × tn` outputs;
/// a workgroup is `wg_x × wg_y` invocations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MatmulTile {
    /// Output rows per invocation.
    pub tm: u32,
    /// Output columns per invocation (interleaved across the workgroup's x lanes).
    pub tn: u32,
    /// Workgroup width (lanes along columns).
    pub wg_x: u32,
    /// Workgroup height.
    pub wg_y: u32,
}

impl MatmulTile {
    /// The variant measured fastest on this kind of adapter (see `wgoptim bench matmul`).
    /// `WGOPTIM_MATMUL_TILE=tm,tn,wg_x,wg_y` overrides it (for tuning with `wgoptim bench matmul`).
    pub fn for_gpu(gpu: &Gpu) -> MatmulTile {
        if let Some(t) = Self::from_env() {
            return t;
        }
        if gpu.cpu_subgroup_size() == Some(8) {
            // The subgroup-broadcast variant makes A nearly free, so tall tiles win: on lavapipe (2 cores)
            // 16×4 measured 7.5–10.4 GFLOPS at n = 512 against 4.5–5.7 for the scalar 8×8.
            MatmulTile { tm: 16, tn: 4, wg_x: 8, wg_y: 8 }
        } else if gpu.is_cpu() {
            MatmulTile { tm: 8, tn: 8, wg_x: 8, wg_y: 8 }
        } else {
            MatmulTile { tm: 4, tn: 4, wg_x: 16, wg_y: 16 }
        }
    }
    fn from_env() -> Option<MatmulTile> {
        let v: Vec<u32> =
            std::env::var("WGOPTIM_MATMUL_TILE").ok()?.split(',').filter_map(|x| x.trim().parse().ok()).collect();
        match v[..] {
            [tm, tn, wg_x, wg_y] if tm * tn > 0 && tm * tn <= 128 && wg_x * wg_y > 0 && wg_x * wg_y <= 256 => {
                Some(MatmulTile { tm, tn, wg_x, wg_y })
            }
            _ => None,
        }
    }
    fn rows(&self) -> u32 {
        self.tm * self.wg_y
    }
    fn cols(&self) -> u32 {
        self.tn * self.wg_x
    }
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Uniforms {
    m: u32,
    n: u32,
    k: u32,
    tiles_n: u32,
    a_off: u32,
    a_bs: u32,
    b_off: u32,
    b_bs: u32,
    c_off: u32,
    c_bs: u32,
    o_off: u32,
    o_bs: u32,
    alpha: f32,
    beta: f32,
    tiles_m: u32,
    _pad: u32,
}

/// Accumulator declarations and their stores; accumulator `j` sits at column `col0 + col(j)`.
fn accumulators(t: MatmulTile, col: impl Fn(u32) -> u32) -> (String, String) {
    let (mut decl, mut store) = (String::new(), String::new());
    for i in 0..t.tm {
        for j in 0..t.tn {
            decl += &format!("    var acc{i}_{j} = 0.0;\n");
            store += &format!("    store(batch, row0 + {i}u, col0 + {}u, acc{i}_{j});\n", col(j));
        }
    }
    (decl, store)
}

/// Clamped row indices `r{i}` and column indices `c{j}` of the tile.
fn indices(t: MatmulTile, col: impl Fn(u32) -> u32) -> (String, String) {
    let rows = (0..t.tm).map(|i| format!("    let r{i} = min(row0 + {i}u, mlast);\n")).collect();
    let cols = (0..t.tn).map(|j| format!("    let c{j} = min(col0 + {}u, nlast);\n", col(j))).collect();
    (rows, cols)
}

/// The defines every variant shares.
fn skeleton(
    t: MatmulTile,
    lane_col: &str,
    (rows, cols): (String, String),
    body: String,
    col: impl Fn(u32) -> u32,
) -> Vec<(&'static str, String)> {
    let (decl, store) = accumulators(t, col);
    vec![
        ("WG_X", t.wg_x.to_string()),
        ("WG_Y", t.wg_y.to_string()),
        ("TM", t.tm.to_string()),
        ("TILE_M", t.rows().to_string()),
        ("TILE_N", t.cols().to_string()),
        ("LANE_COL", lane_col.into()),
        ("ROWS", rows),
        ("COLS", cols),
        ("DECL", decl),
        ("BODY", body),
        ("STORE", store),
    ]
}

/// Generate the unrolled tile body for the skeleton in `shaders/linalg/matmul.wgsl`: columns of a lane are
/// `wg_x` apart (coalesced across lanes on GPUs).
fn tile_defines(t: MatmulTile) -> Vec<(&'static str, String)> {
    let col = |j: u32| j * t.wg_x;
    let mut body = String::new();
    for j in 0..t.tn {
        body += &format!("        let b{j} = lb(batch, kk, c{j});\n");
    }
    for i in 0..t.tm {
        body += &format!("        let a{i} = la(batch, r{i}, kk);\n");
        for j in 0..t.tn {
            body += &format!("        acc{i}_{j} = fma(a{i}, b{j}, acc{i}_{j});\n");
        }
    }
    skeleton(t, "lid.x", indices(t, col), body, col)
}

/// The vector-load variant (needs `tm` and `tn` multiples of 4): each lane owns runs of 4 adjacent columns,
/// operands are read as `vec4` along their contiguous dimension and k advances by 4.
fn tile_defines_vec4(t: MatmulTile, ta: Trans, tb: Trans) -> Vec<(&'static str, String)> {
    let (tm, tn) = (t.tm, t.tn);
    let col = |j: u32| (j / 4) * 4 * t.wg_x + j % 4; // column of accumulator j relative to col0
    let (mut rows, mut cols) = indices(t, col);
    for q in (0..tm / 4).filter(|_| ta == Trans::T) {
        rows += &format!("    let rq{q} = min(row0 + {}u, u.m - 4u) / 4u;\n", 4 * q);
    }
    for g in (0..tn / 4).filter(|_| tb == Trans::N) {
        cols += &format!("    let cg{g} = min(col0 + {}u, u.n - 4u) / 4u;\n", col(4 * g));
    }
    let mut body = String::new();
    let a_at = |i: u32, d: u32| match ta {
        Trans::N => format!("va{i}[{d}]"),
        Trans::T => format!("vat{}_{d}[{}]", i / 4, i % 4),
    };
    let b_at = |j: u32, d: u32| match tb {
        Trans::N => format!("vb{}_{d}[{}]", j / 4, j % 4),
        Trans::T => format!("vbt{j}[{d}]"),
    };
    match ta {
        Trans::N => (0..tm).for_each(|i| body += &format!("        let va{i} = a4[abase + r{i} * k4 + kq];\n")),
        Trans::T => (0..tm / 4).for_each(|q| {
            (0..4).for_each(|d| body += &format!("        let vat{q}_{d} = a4[abase + (kk + {d}u) * m4 + rq{q}];\n"))
        }),
    }
    match tb {
        Trans::N => (0..tn / 4).for_each(|g| {
            (0..4).for_each(|d| body += &format!("        let vb{g}_{d} = b4[bbase + (kk + {d}u) * n4 + cg{g}];\n"))
        }),
        Trans::T => (0..tn).for_each(|j| body += &format!("        let vbt{j} = b4[bbase + c{j} * k4 + kq];\n")),
    }
    for d in 0..4 {
        for i in 0..tm {
            for j in 0..tn {
                body += &format!("        acc{i}_{j} = fma({}, {}, acc{i}_{j});\n", a_at(i, d), b_at(j, d));
            }
        }
    }
    let mut defines = skeleton(t, "lid.x * 4u", (rows, cols), body, col);
    defines.push(("VEC4", "1".into()));
    defines
}

/// The subgroup variant for CPU adapters (subgroups of `wg_x` lanes sharing rows): each lane loads A for a
/// different k and the subgroup broadcasts it, so A costs one load per row per `wg_x` k-steps instead of one per
/// step (a per-lane load costs ~10 FMAs on llvmpipe).
fn tile_defines_subgroup(t: MatmulTile) -> Vec<(&'static str, String)> {
    let mut defines = tile_defines(t);
    let (tm, tn, lanes) = (t.tm, t.tn, t.wg_x);
    let mut body =
        String::from("        let kl = min(kk + sg_lane, u.k - 1u);\n        let kvalid = kk + sg_lane < u.k;\n");
    for i in 0..tm {
        body += &format!("        let av{i} = select(0.0, la(batch, r{i}, kl), kvalid);\n");
    }
    for d in 0..lanes {
        body += &format!("        let kd{d} = min(kk + {d}u, u.k - 1u);\n");
        for j in 0..tn {
            body += &format!("        let b{d}_{j} = lb(batch, kd{d}, c{j});\n");
        }
        for i in 0..tm {
            body += &format!("        let a{d}_{i} = subgroupBroadcast(av{i}, {d}u);\n");
            for j in 0..tn {
                body += &format!("        acc{i}_{j} = fma(a{d}_{i}, b{d}_{j}, acc{i}_{j});\n");
            }
        }
    }
    for (k, v) in defines.iter_mut() {
        if *k == "BODY" {
            *v = body.clone();
        }
    }
    defines.push(("SUBGROUP", "1".into()));
    defines.push(("WG_N", (t.wg_x * t.wg_y).to_string()));
    defines.push(("K_STEP", lanes.to_string()));
    defines
}

/// One batched matmul call's operands. `c` may be the same tensor as `out` (accumulate in place).
pub struct Matmul<'a> {
    /// Left operand, `[b?, m, k]` (or `[b?, k, m]` when `ta = T`).
    pub a: &'a Tensor,
    /// Right operand, `[b?, k, n]` (or `[b?, n, k]` when `tb = T`).
    pub b: &'a Tensor,
    /// Output `[b, m, n]`.
    pub out: &'a Tensor,
    /// Optional addend `beta·C`, shaped like `out`.
    pub c: Option<&'a Tensor>,
    /// Transpose A.
    pub ta: Trans,
    /// Transpose B.
    pub tb: Trans,
    /// Scale of the product.
    pub alpha: f32,
    /// Scale of `c`.
    pub beta: f32,
    /// Rounding of inputs and outputs.
    pub precision: Precision,
    /// Elements between consecutive matrices of `a`, `b` and `out` (`c` uses `out`'s) when the stacks are not
    /// packed, e.g. row ranges `[j.., :]` of each matrix of a larger stack; `None`: packed.
    pub batch_strides: Option<[usize; 3]>,
}

impl<'a> Matmul<'a> {
    /// `out = a · b`, f32.
    pub fn new(a: &'a Tensor, b: &'a Tensor, out: &'a Tensor) -> Self {
        Matmul {
            a,
            b,
            out,
            c: None,
            ta: Trans::N,
            tb: Trans::N,
            alpha: 1.0,
            beta: 0.0,
            precision: Precision::F32,
            batch_strides: None,
        }
    }
    /// Set the transposes.
    pub fn trans(mut self, ta: Trans, tb: Trans) -> Self {
        self.ta = ta;
        self.tb = tb;
        self
    }
    /// `out = alpha·op(a)op(b) + beta·c`.
    pub fn scaled(mut self, alpha: f32, c: Option<&'a Tensor>, beta: f32) -> Self {
        self.alpha = alpha;
        self.c = c;
        self.beta = beta;
        self
    }
    /// Emulated precision of the products.
    pub fn precision(mut self, p: Precision) -> Self {
        self.precision = p;
        self
    }
    /// Unpacked stacks: see [`Matmul::batch_strides`](Matmul#structfield.batch_strides).
    pub fn batch_strides(mut self, a: usize, b: usize, out: usize) -> Self {
        self.batch_strides = Some([a, b, out]);
        self
    }

    /// Per-operand batch strides (0 for a broadcast operand), checked against the buffers.
    fn strides(&self, (ba, bb, bo): (usize, usize, usize), m: usize, n: usize) -> Result<[u32; 3]> {
        let packed = |t: &Tensor| t.shape()[t.shape().len() - 2..].iter().product::<usize>();
        let given = self.batch_strides.unwrap_or([packed(self.a), packed(self.b), m * n]);
        let mut out = [0u32; 3];
        for (i, (t, b)) in [(self.a, ba), (self.b, bb), (self.out, bo)].into_iter().enumerate() {
            let stride = if b == 1 { 0 } else { given[i] };
            let end = t.offset() + (b - 1) * stride + packed(t);
            if end * 4 > t.buffer().size() as usize || (i == 2 && b > 1 && stride < m * n) {
                return Err(Error::Shape {
                    op: "matmul",
                    detail: format!(
                        "batch stride {stride} for a stack of {b} {:?} at offset {} does not fit its buffer \
                         ({} elements) or overlaps the output",
                        t.shape(),
                        t.offset(),
                        t.buffer().size() / 4
                    ),
                });
            }
            out[i] = stride as u32;
        }
        if let Some(c) = self.c {
            let end = c.offset() + (bo - 1) * out[2] as usize + m * n;
            if c.matrices("matmul C")?.0 > 1 && end * 4 > c.buffer().size() as usize {
                return Err(Error::Shape { op: "matmul", detail: "C's stack does not fit its buffer".into() });
            }
        }
        Ok(out)
    }

    /// Record the dispatch into `plan`.
    pub fn record(&self, plan: &mut PlanBuilder) -> Result<()> {
        let (ba, ar, ac) = self.a.matrices("matmul A")?;
        let (bb, br, bc) = self.b.matrices("matmul B")?;
        let (bo, m, n) = self.out.matrices("matmul out")?;
        let (m_a, k_a) = if self.ta == Trans::N { (ar, ac) } else { (ac, ar) };
        let (k_b, n_b) = if self.tb == Trans::N { (br, bc) } else { (bc, br) };
        if m_a != m || n_b != n || k_a != k_b {
            return Err(Error::Shape {
                op: "matmul",
                detail: format!(
                    "op(A) is {m_a}×{k_a}, op(B) is {k_b}×{n_b}, out is {m}×{n} (A {:?} {:?}, B {:?} {:?})",
                    self.a.shape(),
                    self.ta,
                    self.b.shape(),
                    self.tb
                ),
            });
        }
        check_batch("matmul", ba, bo)?;
        check_batch("matmul", bb, bo)?;
        if let Some(c) = self.c {
            let (bc_, cm, cn) = c.matrices("matmul C")?;
            if (cm, cn) != (m, n) {
                return Err(Error::Shape { op: "matmul", detail: format!("C is {cm}×{cn}, out is {m}×{n}") });
            }
            check_batch("matmul", bc_, bo)?;
        }
        let same_as_out = |t: &Tensor| t.buffer == self.out.buffer;
        if same_as_out(self.a) || same_as_out(self.b) {
            return Err(Error::InvalidArgument {
                op: "matmul",
                name: "out",
                detail: "out must not alias A or B".into(),
            });
        }
        let inplace = self.c.is_some_and(|c| same_as_out(c) && c.offset == self.out.offset);
        if self.c.is_some_and(same_as_out) && !inplace {
            return Err(Error::InvalidArgument {
                op: "matmul",
                name: "c",
                detail: "C may alias out only exactly".into(),
            });
        }
        let sym = false;
        record_matmul(plan, self, (bo, m, n, k_a), (ba, bb), inplace, sym)
    }
}

fn check_batch(op: &'static str, b: usize, out: usize) -> Result<()> {
    if b == out || b == 1 {
        Ok(())
    } else {
        Err(Error::Shape { op, detail: format!("batch {b} does not match the output batch {out} (nor broadcasts)") })
    }
}

/// Whether the vector-load variant is used: opted in with `WGOPTIM_MATMUL_VEC4=1` (on lavapipe it measured no
/// faster than scalar loads, within this machine's noise; GPUs are unmeasured), f32, tile sides multiples of 4, and
/// every operand's contiguous dimension, offset and batch stride multiples of 4.
fn vec4_ok(mm: &Matmul<'_>, tile: MatmulTile, (m, n, k): (usize, usize, usize)) -> bool {
    let off = !std::env::var("WGOPTIM_MATMUL_VEC4").is_ok_and(|v| v == "1");
    let along_a = if mm.ta == Trans::N { k } else { m };
    let along_b = if mm.tb == Trans::N { n } else { k };
    !off && mm.precision == Precision::F32
        && tile.tm.is_multiple_of(4)
        && tile.tn.is_multiple_of(4)
        && k.is_multiple_of(4)
        && along_a.is_multiple_of(4)
        && along_b.is_multiple_of(4)
        && mm.a.offset().is_multiple_of(4)
        && mm.b.offset().is_multiple_of(4)
        && mm.batch_strides.is_none_or(|s| s[..2].iter().all(|x| x.is_multiple_of(4)))
}

/// Whether the subgroup-broadcast variant applies: a CPU adapter whose subgroups are exactly one workgroup row
/// (`WGOPTIM_MATMUL_SUBGROUP=0` turns it off, for measuring).
fn subgroup_ok(gpu: &Gpu, mm: &Matmul<'_>, tile: MatmulTile) -> bool {
    let off = std::env::var("WGOPTIM_MATMUL_SUBGROUP").is_ok_and(|v| v == "0");
    !off && gpu.cpu_subgroup_size() == Some(tile.wg_x) && mm.precision == Precision::F32
}

fn kernel(gpu: &Gpu, mm: &Matmul<'_>, has_c: bool, inplace: bool, sym: bool, vec4: bool) -> Result<Kernel> {
    let flag = |b: bool| (if b { "1" } else { "0" }).to_string();
    mm.precision.check(gpu, "matmul")?;
    let tile = MatmulTile::for_gpu(gpu);
    let mut defines = if vec4 {
        tile_defines_vec4(tile, mm.ta, mm.tb)
    } else if subgroup_ok(gpu, mm, tile) {
        tile_defines_subgroup(tile)
    } else {
        tile_defines(tile)
    };
    defines.extend([
        ("TRANS_A", flag(mm.ta == Trans::T)),
        ("TRANS_B", flag(mm.tb == Trans::T)),
        ("HAS_C", flag(has_c)),
        ("C_INPLACE", flag(inplace)),
        ("SYM", flag(sym)),
        ("ROUND_BF16", flag(mm.precision == Precision::Bf16Emulated)),
        ("ROUND_F16", flag(mm.precision == Precision::F16)),
    ]);
    gpu.kernel("linalg/matmul.wgsl", "main", &defines)
}

fn record_matmul(
    plan: &mut PlanBuilder,
    mm: &Matmul<'_>,
    (batch, m, n, k): (usize, usize, usize, usize),
    (ba, bb): (usize, usize),
    inplace: bool,
    sym: bool,
) -> Result<()> {
    let gpu = plan.gpu().clone();
    let tile = MatmulTile::for_gpu(&gpu);
    let has_c = mm.c.is_some() && !inplace && mm.beta != 0.0;
    let inplace = inplace && mm.beta != 0.0;
    let kern = kernel(&gpu, mm, has_c, inplace, sym, vec4_ok(mm, tile, (m, n, k)))?;
    let tiles_m = (m as u32).div_ceil(tile.rows());
    let tiles_n = (n as u32).div_ceil(tile.cols());
    let c = mm.c.unwrap_or(mm.out);
    let [a_bs, b_bs, o_bs] = mm.strides((ba, bb, batch), m, n)?;
    let c_bs = if c.matrices("matmul C")?.0 == 1 { 0 } else { o_bs };
    let u = Uniforms {
        m: m as u32,
        n: n as u32,
        k: k as u32,
        tiles_n,
        a_off: mm.a.offset() as u32,
        a_bs,
        b_off: mm.b.offset() as u32,
        b_bs,
        c_off: c.offset() as u32,
        c_bs,
        o_off: mm.out.offset() as u32,
        o_bs: if batch == 1 { 0 } else { o_bs },
        alpha: mm.alpha,
        beta: mm.beta,
        tiles_m,
        _pad: 0,
    };
    let groups = [tiles_n, tiles_m, batch as u32];
    let mut tensors = vec![mm.a, mm.b, mm.out];
    if has_c {
        tensors.push(c);
    }
    plan.dispatch(&kern, &u, &tensors, groups)
}

/// Which Gram product of `X` (`[b?, m, n]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GramSide {
    /// `X·Xᵀ` (m×m).
    Rows,
    /// `Xᵀ·X` (n×n).
    Cols,
}

/// `out = alpha·G + beta·C` with `G = X·Xᵀ` or `Xᵀ·X`; only the upper-triangle tiles are computed and each is
/// mirrored, so the result is exactly symmetric at about half the FLOPs of a matmul.
#[allow(clippy::too_many_arguments)]
pub fn gram(
    plan: &mut PlanBuilder,
    x: &Tensor,
    side: GramSide,
    out: &Tensor,
    alpha: f32,
    c: Option<&Tensor>,
    beta: f32,
    precision: Precision,
) -> Result<()> {
    let (ta, tb) = match side {
        GramSide::Rows => (Trans::N, Trans::T),
        GramSide::Cols => (Trans::T, Trans::N),
    };
    let mm = Matmul { a: x, b: x, out, c, ta, tb, alpha, beta, precision, batch_strides: None };
    let (bx, r, cdim) = x.matrices("gram X")?;
    let (bo, m, n) = out.matrices("gram out")?;
    let s = if side == GramSide::Rows { r } else { cdim };
    let k = if side == GramSide::Rows { cdim } else { r };
    if (m, n) != (s, s) {
        return Err(Error::Shape { op: "gram", detail: format!("X {:?} gives {s}×{s}, out is {m}×{n}", x.shape()) });
    }
    check_batch("gram", bx, bo)?;
    if x.buffer == out.buffer {
        return Err(Error::InvalidArgument { op: "gram", name: "out", detail: "out must not alias X".into() });
    }
    let inplace = c.is_some_and(|c| c.buffer == out.buffer && c.offset == out.offset);
    if let Some(cc) = c {
        if cc.matrices("gram C")?.1 != s || cc.matrices("gram C")?.2 != s {
            return Err(Error::Shape { op: "gram", detail: format!("C {:?} is not {s}×{s}", cc.shape()) });
        }
        if cc.buffer == out.buffer && !inplace {
            return Err(Error::InvalidArgument {
                op: "gram",
                name: "c",
                detail: "C may alias out only exactly".into(),
            });
        }
    }
    record_matmul(plan, &mm, (bo, s, s, k), (bx, bx), inplace, true)
}
