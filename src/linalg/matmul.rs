//! Batched matrix multiply `out = alpha·op(A)·op(B) + beta·C` with transposes, and Gram products
//! (`X·Xᵀ`, `Xᵀ·X`) that compute one triangle and mirror it.

use bytemuck::{Pod, Zeroable};

use crate::error::{Error, Result};
use crate::gpu::{Gpu, Kernel, PlanBuilder, Tensor};
use crate::linalg::reduce::transpose_view;
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
    /// The tile for a product with `outputs` (= batch·m·n) output elements on this adapter (see `wgoptim bench
    /// matmul`). `WGOPTIM_MATMUL_TILE=tm,tn,wg_x,wg_y` overrides it (for tuning).
    ///
    /// CPU adapters take one tile for every size (16×8 per lane, workgroups of one 8-lane row). GPUs take the largest tile (most reuse per load) that still
    /// gives [`GPU_FILL`] invocations, so small products spread over the whole device: on an H100 (f32 NN,
    /// register tiles, GFLOPS) a fixed 4×4 tile ran 128×128×384 at 376, n = 512 at 2,133 and n = 4096 at 12,144,
    /// where the tile picked here ran them at 924 (1×1), 3,662 (2×2) and 16,561 (8×8); staged through workgroup
    /// memory, n = 1024 ran at 11,808 with the 64×64 tile this picks against 9,238 with 32×32.
    pub fn choose(gpu: &Gpu, outputs: usize) -> MatmulTile {
        if let Some(t) = Self::from_env() {
            return t;
        }
        if gpu.is_cpu() {
            CPU_TILE
        } else {
            Self::for_gpu_product(outputs)
        }
    }
    /// The GPU rule of [`MatmulTile::choose`].
    fn for_gpu_product(outputs: usize) -> MatmulTile {
        let fills = |t: &MatmulTile| outputs.div_ceil((t.tm * t.tn) as usize) >= GPU_FILL;
        GPU_TILES.into_iter().find(fills).unwrap_or(GPU_TILES[GPU_TILES.len() - 1])
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

/// The tile of CPU adapters. llvmpipe (Mesa 25) loads storage lane by lane (a bounds-checked scalar load per
/// lane, even where all lanes read one address), so the tile with the most FMAs per load wins as long as its
/// accumulators fit: 16×8 spends 24 loads on 128 FMAs. A workgroup of one 8-lane row keeps A's row index free of
/// the lane id (see `ROW_LANE`), for compilers that make such loads uniform. On llvmpipe (2 cores of an AMD EPYC
/// with AVX-512, f32 GFLOPS, 512 / 1024, before `relayout_for_cpu`), this tile ran NN at 29–31 / 28–29 and TN at
/// 32, against 21 / 18–21 for the subgroup variant's 16×4 (wg 8×8) and 23 / 23 for an 8×8; 12×8 26 / 26, 16×6
/// 26 / 24, 8×16 17 / 17, 32×4 17 / 14–16; the Muon step over gpt-small took 92 ms against 132–143, the small
/// GPT's training step 185 against 227–251. A cold compile (empty Mesa shader cache) takes ~0.2 s per product
/// variant since the stores are a loop on CPU adapters (see `stores`; 2.1 s with them unrolled). Those figures are
/// the scalar-register variant's; the subgroup variant now runs this same tile by default (see `choose`).
const CPU_TILE: MatmulTile = MatmulTile { tm: 16, tn: 8, wg_x: 8, wg_y: 1 };

/// Invocations a GPU product should offer before a larger tile is worth it (an H100 holds ~270,000 resident;
/// 65,536 was the crossover measured there between neighbouring tiles of `GPU_TILES`).
pub const GPU_FILL: usize = 1 << 16;

/// GPU tiles from the most to the least work per invocation.
const GPU_TILES: [MatmulTile; 4] = [
    MatmulTile { tm: 8, tn: 8, wg_x: 16, wg_y: 16 },
    MatmulTile { tm: 4, tn: 4, wg_x: 16, wg_y: 16 },
    MatmulTile { tm: 2, tn: 2, wg_x: 8, wg_y: 8 },
    MatmulTile { tm: 1, tn: 1, wg_x: 16, wg_y: 16 },
];

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
    lda: u32,
    ldb: u32,
    ldo: u32,
    guard: u32,
    _pad: u32,
}

/// Column of a lane's accumulator `j` relative to its first (`col0`): vec4 lanes own runs of 4 adjacent
/// columns, the other variants' columns are `wg_x` apart (coalesced across lanes on GPUs).
fn lane_col(t: MatmulTile, variant: MatmulVariant, j: u32) -> u32 {
    match variant {
        MatmulVariant::Vec4 => (j / 4) * 4 * t.wg_x + j % 4,
        _ => j * t.wg_x,
    }
}

/// The accumulators' stores (`STORE`). Unrolled on GPUs, where accumulators stay in registers; on CPU adapters
/// a loop over an array of them: unrolled, the stores (bounds checks and all) made llvmpipe compile a 16×8
/// tile's kernel 10× longer (cold Mesa cache: first matmul call 2.1 → 0.18 s), and the loop costs nothing
/// measurable after a k-loop.
fn stores(t: MatmulTile, variant: MatmulVariant, looped: bool) -> String {
    let col = |j: u32| lane_col(t, variant, j);
    let names: Vec<String> = (0..t.tm).flat_map(|i| (0..t.tn).map(move |j| format!("acc{i}_{j}"))).collect();
    if !looped {
        let at = |e: u32| (e / t.tn, col(e % t.tn));
        return (0u32..)
            .zip(&names)
            .map(|(e, a)| format!("    store(batch, row0 + {}u, col0 + {}u, {a});\n", at(e).0, at(e).1))
            .collect();
    }
    let cols: Vec<String> = (0..t.tn).map(|j| format!("{}u", col(j))).collect();
    let (count, tn) = (names.len(), t.tn);
    format!(
        "    var accs = array<f32, {count}>({});\n    var cols = array<u32, {tn}>({});\n    \
         for (var e = 0u; e < {count}u; e++) {{\n        \
         store(batch, row0 + e / {tn}u, col0 + cols[e % {tn}u], accs[e]);\n    }}\n",
        names.join(", "),
        cols.join(", ")
    )
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
    first_col: &str,
    (rows, cols): (String, String),
    body: String,
) -> Vec<(&'static str, String)> {
    let decl = (0..t.tm).flat_map(|i| (0..t.tn).map(move |j| format!("    var acc{i}_{j} = 0.0;\n"))).collect();
    vec![
        ("WG_X", t.wg_x.to_string()),
        ("WG_Y", t.wg_y.to_string()),
        ("TM", t.tm.to_string()),
        ("TILE_M", t.rows().to_string()),
        ("TILE_N", t.cols().to_string()),
        ("LANE_COL", first_col.into()),
        // A workgroup one lane high keeps row indices free of the lane id, so a compiler that tracks uniformity
        // can load A once for all lanes (Mesa 25's llvmpipe does not: it still loads lane by lane).
        ("ROW_LANE", if t.wg_y == 1 { "0u".into() } else { format!("lid.y * {}u", t.tm) }),
        ("ROWS", rows),
        ("COLS", cols),
        ("DECL", decl),
        ("BODY", body),
    ]
}

/// Generate the unrolled tile body for the skeleton in `shaders/linalg/matmul.wgsl`: columns of a lane are
/// `wg_x` apart (coalesced across lanes on GPUs).
fn tile_defines(t: MatmulTile) -> Vec<(&'static str, String)> {
    let col = |j: u32| lane_col(t, MatmulVariant::Registers, j);
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
    skeleton(t, "lid.x", indices(t, col), body)
}

/// The vector-load variant (needs `tm` and `tn` multiples of 4): each lane owns runs of 4 adjacent columns,
/// operands are read as `vec4` along their contiguous dimension and k advances by 4.
fn tile_defines_vec4(t: MatmulTile, ta: Trans, tb: Trans) -> Vec<(&'static str, String)> {
    let (tm, tn) = (t.tm, t.tn);
    let col = |j: u32| lane_col(t, MatmulVariant::Vec4, j);
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
    let mut defines = skeleton(t, "lid.x * 4u", (rows, cols), body);
    defines.push(("VEC4", "1".into()));
    defines
}

/// The subgroup variant for CPU adapters (subgroups of `wg_x` lanes sharing rows): each lane loads A for a
/// different k and the subgroup shuffles it out, so A costs one load per row per `wg_x` k-steps instead of one per
/// step (a per-lane load costs ~10 FMAs on llvmpipe). The `wg_x` k-steps are a loop bounded at run time (it also
/// ends the last block early), not unrolled: llvmpipe expands every load site per lane at compile time, and the
/// unrolled body's 16 + 64 sites took 1.2–1.5 s to compile.
fn tile_defines_subgroup(t: MatmulTile) -> Vec<(&'static str, String)> {
    let mut defines = tile_defines(t);
    let (tm, tn, lanes) = (t.tm, t.tn, t.wg_x);
    let mut body =
        String::from("        let kl = min(kk + sg_lane, u.k - 1u);\n        let kvalid = kk + sg_lane < u.k;\n");
    for i in 0..tm {
        body += &format!("        let av{i} = select(0.0, la(batch, r{i}, kl), kvalid);\n");
    }
    body += &format!("        for (var d = 0u; d < min({lanes}u, u.k - kk); d++) {{\n");
    for j in 0..tn {
        body += &format!("            let b{j} = lb(batch, kk + d, c{j});\n");
    }
    for i in 0..tm {
        body += &format!("            let a{i} = subgroupShuffle(av{i}, d);\n");
        for j in 0..tn {
            body += &format!("            acc{i}_{j} = fma(a{i}, b{j}, acc{i}_{j});\n");
        }
    }
    body += "        }\n";
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

/// Depth of the shared variant's k-blocks: each lane stages about 4 values of A per block.
fn shared_depth(t: MatmulTile) -> u32 {
    (4 * t.wg_x * t.wg_y / t.rows()).clamp(4, 32)
}

/// Workgroup memory the shared variant needs.
fn shared_bytes(t: MatmulTile) -> u32 {
    4 * shared_depth(t) * (t.rows() + t.cols() + 2)
}

/// The workgroup-memory variant for GPUs: per k-block of `BK`, the workgroup stages a `TILE_M × BK` block of A and
/// a `BK × TILE_N` block of B (loads coalesced along each operand's contiguous dimension, zero outside the
/// matrices; rows padded by one against bank conflicts), then every lane runs its register tile from there.
fn tile_defines_shared(t: MatmulTile) -> Vec<(&'static str, String)> {
    let (threads, bk) = (t.wg_x * t.wg_y, shared_depth(t));
    let col = |j: u32| lane_col(t, MatmulVariant::Shared, j);
    let mut body = String::new();
    for i in 0..t.tm {
        body += &format!("            let a{i} = sa[kk * {}u + arow + {i}u];\n", t.rows() + 1);
    }
    for j in 0..t.tn {
        body += &format!("            let b{j} = sb[kk * {}u + lid.x + {}u];\n", t.cols() + 1, col(j));
    }
    for i in 0..t.tm {
        for j in 0..t.tn {
            body += &format!("            acc{i}_{j} = fma(a{i}, b{j}, acc{i}_{j});\n");
        }
    }
    let mut defines = skeleton(t, "lid.x", (String::new(), String::new()), body);
    defines.extend([
        ("SHARED", "1".to_string()),
        ("BK", bk.to_string()),
        ("THREADS", threads.to_string()),
        ("SA_STRIDE", (t.rows() + 1).to_string()),
        ("SB_STRIDE", (t.cols() + 1).to_string()),
        ("SA_LEN", (bk * (t.rows() + 1)).to_string()),
        ("SB_LEN", (bk * (t.cols() + 1)).to_string()),
        ("LOADS_A", (t.rows() * bk).div_ceil(threads).to_string()),
        ("LOADS_B", (t.cols() * bk).div_ceil(threads).to_string()),
    ]);
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
    /// Elements between consecutive stored rows of `a`, `b` and `out` (`c` uses `out`'s) when the operands are
    /// submatrix views, e.g. the trailing block `[j.., j..]` of a larger matrix; `None`: each row follows the
    /// last. The tensors' shapes are the views' shapes.
    pub row_strides: Option<[usize; 3]>,
    /// The kernel variant; `None`: chosen per adapter and product size.
    pub variant: Option<MatmulVariant>,
    /// `(flags, i)`: `out` is left untouched when `flags[i] == 0` on the device (an optimizer's apply flag, so a
    /// skipped step changes no state without a readback). The flag is read at the stores: the product still runs.
    pub guard: Option<(&'a Tensor, usize)>,
    /// Triangular structure of `op(A)` and `op(B)` that the caller guarantees (zeros outside the triangle): each
    /// tile of the output sums only over the k that can be nonzero, e.g. about a sixth of a square product's work
    /// when both are upper triangular, half when one is. The values are those of the full product.
    pub triangles: [Option<Triangle>; 2],
}

/// Which triangle of a (possibly rectangular) matrix may hold nonzeros, the diagonal included.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Triangle {
    /// Zeros below the diagonal (`x_ij = 0` for `i > j`).
    Upper,
    /// Zeros above the diagonal (`x_ij = 0` for `i < j`).
    Lower,
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
            row_strides: None,
            variant: None,
            guard: None,
            triangles: [None, None],
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
    /// Submatrix views: see [`Matmul::row_strides`](Matmul#structfield.row_strides).
    pub fn row_strides(mut self, a: usize, b: usize, out: usize) -> Self {
        self.row_strides = Some([a, b, out]);
        self
    }
    /// Leave `out` untouched when `flags[index] == 0`: see [`Matmul::guard`](Matmul#structfield.guard).
    pub fn guarded(mut self, flags: &'a Tensor, index: usize) -> Self {
        self.guard = Some((flags, index));
        self
    }
    /// Declare `op(A)` and `op(B)` triangular: see [`Matmul::triangles`](Matmul#structfield.triangles).
    pub fn triangular(mut self, a: Option<Triangle>, b: Option<Triangle>) -> Self {
        self.triangles = [a, b];
        self
    }
    /// Run this kernel variant instead of the adapter's choice (for tests and measurements).
    pub fn variant(mut self, v: MatmulVariant) -> Self {
        self.variant = Some(v);
        self
    }

    /// Elements between stored rows of `a`, `b` and `out`, checked to be at least each one's row length.
    fn lds(&self) -> Result<[usize; 3]> {
        let cols = |t: &Tensor| t.shape()[t.shape().len() - 1];
        let natural = [cols(self.a), cols(self.b), cols(self.out)];
        let lds = self.row_strides.unwrap_or(natural);
        if lds.iter().zip(natural).any(|(&ld, c)| ld < c) {
            return Err(Error::Shape {
                op: "matmul",
                detail: format!("row strides {lds:?} are shorter than the rows {natural:?} of A, B and out"),
            });
        }
        Ok(lds)
    }

    /// Per-operand batch strides (0 for a broadcast operand), checked against the buffers.
    fn strides(&self, (ba, bb, bo): (usize, usize, usize), m: usize, n: usize) -> Result<[u32; 3]> {
        let lds = self.lds()?;
        let packed = |t: &Tensor| t.shape()[t.shape().len() - 2..].iter().product::<usize>();
        // Elements from a matrix's first to its last stored element, inclusive.
        let span = |t: &Tensor, ld: usize| {
            let s = &t.shape()[t.shape().len() - 2..];
            if s[0] * s[1] == 0 {
                0
            } else {
                (s[0] - 1) * ld + s[1]
            }
        };
        let given = self.batch_strides.unwrap_or([packed(self.a), packed(self.b), m * n]);
        let mut out = [0u32; 3];
        for (i, (t, b)) in [(self.a, ba), (self.b, bb), (self.out, bo)].into_iter().enumerate() {
            let stride = if b == 1 { 0 } else { given[i] };
            let end = t.offset() + (b - 1) * stride + span(t, lds[i]);
            if end * 4 > t.buffer().size() as usize || (i == 2 && b > 1 && stride < span(t, lds[2])) {
                return Err(Error::Shape {
                    op: "matmul",
                    detail: format!(
                        "batch stride {stride} for a stack of {b} {:?} (row stride {}) at offset {} does not fit \
                         its buffer ({} elements) or overlaps the output",
                        t.shape(),
                        lds[i],
                        t.offset(),
                        t.buffer().size() / 4
                    ),
                });
            }
            out[i] = stride as u32;
        }
        if let Some(c) = self.c {
            let end = c.offset() + (bo - 1) * out[2] as usize + span(c, lds[2]);
            if c.matrices("matmul C")?.0 > 1 && end * 4 > c.buffer().size() as usize {
                return Err(Error::Shape { op: "matmul", detail: "C's stack does not fit its buffer".into() });
            }
        }
        Ok(out)
    }

    /// The kernel variant [`Matmul::record`] runs this product with on `gpu`: the one set with
    /// [`Matmul::variant`] or `WGOPTIM_MATMUL_VARIANT`, else the adapter's (what benchmarks report).
    pub fn chosen_variant(&self, gpu: &Gpu) -> Result<MatmulVariant> {
        let (batch, m, n) = self.out.matrices("matmul out")?;
        let (_, ar, ac) = self.a.matrices("matmul A")?;
        let k = if self.ta == Trans::N { ac } else { ar };
        Ok(choose(gpu, self, (batch, m, n, k))?.1)
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

/// The kernel family a matmul runs. Every variant computes each output's sum in the same order, so they agree
/// bit for bit; they differ in speed per adapter. By default one is chosen per adapter and size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MatmulVariant {
    /// Scalar loads straight from storage into a register tile.
    Registers,
    /// `vec4` loads along the operands' contiguous dimensions.
    Vec4,
    /// A shared across a CPU subgroup by shuffles (the default on CPU adapters with subgroups of the tile's width).
    Subgroup,
    /// Operand blocks staged through workgroup memory.
    Shared,
}

/// The tile and variant for one product. The variant is [`Matmul::variant`], else `WGOPTIM_MATMUL_VARIANT`
/// (`registers`, `vec4`, `subgroup` or `shared`; for measuring), else the adapter's: workgroup-memory staging on
/// GPUs (H100, f32 NN GFLOPS, register tiles → staged: 128×128×384 973 → 1,579; n = 512 3,650 → 6,238;
/// n = 4096 14,902 → 28,390), A shuffled across the subgroup on CPU adapters whose subgroups are the tile's
/// width (llvmpipe, [`CPU_TILE`], f32 GFLOPS against scalar registers: NN 512 / 1024 47 / 46 vs 33 / 34, TN 46 / 47
/// vs 24 / 35, NT 37 / 28 vs 26 / 20 forced alike; the Muon step over gpt-small 59–61 ms vs 81), scalar registers
/// elsewhere. A variant that cannot run the product is an error.
fn choose(
    gpu: &Gpu,
    mm: &Matmul<'_>,
    (batch, m, n, k): (usize, usize, usize, usize),
) -> Result<(MatmulTile, MatmulVariant)> {
    let requested = match mm.variant {
        Some(v) => Some(v),
        None => env_variant()?,
    };
    let mut tile = MatmulTile::choose(gpu, batch * m * n);
    if requested == Some(MatmulVariant::Vec4) && !(tile.tm.is_multiple_of(4) && tile.tn.is_multiple_of(4)) {
        tile = GPU_TILES[1];
    }
    let along_a = if mm.ta == Trans::N { k } else { m };
    let along_b = if mm.tb == Trans::N { n } else { k };
    let vec4_fits = mm.precision == Precision::F32
        && tile.tm.is_multiple_of(4)
        && tile.tn.is_multiple_of(4)
        && k.is_multiple_of(4)
        && along_a.is_multiple_of(4)
        && along_b.is_multiple_of(4)
        && mm.a.offset().is_multiple_of(4)
        && mm.b.offset().is_multiple_of(4)
        && mm.batch_strides.is_none_or(|s| s[..2].iter().all(|x| x.is_multiple_of(4)))
        && mm.row_strides.is_none_or(|ld| ld[0] == along_a && ld[1] == along_b);
    let subgroup_fits = gpu.cpu_subgroup_size() == Some(tile.wg_x) && mm.precision == Precision::F32;
    let shared_fits = shared_bytes(tile) <= gpu.limits().max_compute_workgroup_storage_size;
    let chosen = match requested {
        Some(v) => v,
        None if !gpu.is_cpu() && shared_fits => MatmulVariant::Shared,
        None if gpu.is_cpu() && subgroup_fits => MatmulVariant::Subgroup,
        None => MatmulVariant::Registers,
    };
    let fits = match chosen {
        MatmulVariant::Registers => true,
        MatmulVariant::Vec4 => vec4_fits,
        MatmulVariant::Subgroup => subgroup_fits,
        MatmulVariant::Shared => shared_fits,
    };
    if !fits {
        let detail = format!(
            "the {chosen:?} variant cannot run this product on {} (tile {tile:?}, {m}×{k}·{k}×{n}, {:?}; Vec4 needs \
             f32, tile sides and contiguous dimensions, offsets and strides multiples of 4, packed rows; Subgroup a CPU adapter \
             with fixed subgroups of the tile's width; Shared its blocks within the workgroup-memory limit)",
            gpu.describe(),
            mm.precision
        );
        return Err(Error::InvalidArgument { op: "matmul", name: "variant", detail });
    }
    Ok((tile, chosen))
}

/// `WGOPTIM_MATMUL_VARIANT`, if set.
fn env_variant() -> Result<Option<MatmulVariant>> {
    std::env::var("WGOPTIM_MATMUL_VARIANT").ok().map(|v| v.parse()).transpose()
}

impl std::str::FromStr for MatmulVariant {
    type Err = Error;
    /// `registers`, `vec4`, `subgroup` or `shared`.
    fn from_str(s: &str) -> Result<MatmulVariant> {
        match s.trim() {
            "registers" => Ok(MatmulVariant::Registers),
            "vec4" => Ok(MatmulVariant::Vec4),
            "subgroup" => Ok(MatmulVariant::Subgroup),
            "shared" => Ok(MatmulVariant::Shared),
            other => Err(Error::InvalidArgument {
                op: "matmul",
                name: "variant",
                detail: format!("`{other}` (known: registers, vec4, subgroup, shared)"),
            }),
        }
    }
}

fn kernel(
    gpu: &Gpu,
    mm: &Matmul<'_>,
    (tile, variant): (MatmulTile, MatmulVariant),
    has_c: bool,
    inplace: bool,
    sym: bool,
) -> Result<Kernel> {
    let flag = |b: bool| (if b { "1" } else { "0" }).to_string();
    mm.precision.check(gpu, "matmul")?;
    let mut defines = match variant {
        MatmulVariant::Registers => tile_defines(tile),
        MatmulVariant::Vec4 => tile_defines_vec4(tile, mm.ta, mm.tb),
        MatmulVariant::Subgroup => tile_defines_subgroup(tile),
        MatmulVariant::Shared => tile_defines_shared(tile),
    };
    defines.extend([
        ("TRANS_A", flag(mm.ta == Trans::T)),
        ("TRANS_B", flag(mm.tb == Trans::T)),
        ("HAS_C", flag(has_c)),
        ("C_INPLACE", flag(inplace)),
        ("SYM", flag(sym)),
        ("A_UPPER", flag(mm.triangles[0] == Some(Triangle::Upper))),
        ("A_LOWER", flag(mm.triangles[0] == Some(Triangle::Lower))),
        ("B_UPPER", flag(mm.triangles[1] == Some(Triangle::Upper))),
        ("B_LOWER", flag(mm.triangles[1] == Some(Triangle::Lower))),
        ("GUARD", flag(mm.guard.is_some())),
        ("GUARD_BINDING", (if has_c { 5 } else { 4 }).to_string()),
        ("ROUND_BF16", flag(mm.precision == Precision::Bf16Emulated)),
        ("ROUND_F16", flag(mm.precision == Precision::F16)),
        ("STORE", stores(tile, variant, gpu.is_cpu())),
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
    let [a_bs, b_bs, _] = mm.strides((ba, bb, batch), m, n)?;
    if let Some((flags, i)) = mm.guard {
        if i >= flags.numel() || flags.buffer == mm.out.buffer {
            return Err(Error::InvalidArgument {
                op: "matmul",
                name: "guard",
                detail: format!("flag {i} of a {}-value tensor, which must not share out's buffer", flags.numel()),
            });
        }
    }
    let (a_t, b_t) = relayout_for_cpu(plan, mm, (m, n, k), [(ba, a_bs as usize), (bb, b_bs as usize)])?;
    let relaid = Matmul {
        a: a_t.as_ref().unwrap_or(mm.a),
        b: b_t.as_ref().unwrap_or(mm.b),
        ta: if a_t.is_some() { Trans::T } else { mm.ta },
        tb: if b_t.is_some() { Trans::N } else { mm.tb },
        batch_strides: mm
            .batch_strides
            .map(|[sa, sb, so]| [if a_t.is_some() { k * m } else { sa }, if b_t.is_some() { k * n } else { sb }, so]),
        row_strides: mm
            .row_strides
            .map(|[la, lb, lo]| [if a_t.is_some() { m } else { la }, if b_t.is_some() { n } else { lb }, lo]),
        ..*mm
    };
    let mm = &relaid;
    let (tile, variant) = choose(&gpu, mm, (batch, m, n, k))?;
    let has_c = mm.c.is_some() && !inplace && mm.beta != 0.0;
    let inplace = inplace && mm.beta != 0.0;
    let kern = kernel(&gpu, mm, (tile, variant), has_c, inplace, sym)?;
    let tiles_m = (m as u32).div_ceil(tile.rows());
    let tiles_n = (n as u32).div_ceil(tile.cols());
    let c = mm.c.unwrap_or(mm.out);
    let [a_bs, b_bs, o_bs] = mm.strides((ba, bb, batch), m, n)?;
    let [lda, ldb, ldo] = mm.lds()?;
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
        lda: lda as u32,
        ldb: ldb as u32,
        ldo: ldo as u32,
        guard: mm.guard.map_or(0, |g| g.1 as u32),
        _pad: 0,
    };
    let groups = [tiles_n, tiles_m, batch as u32];
    let mut tensors = vec![mm.a, mm.b, mm.out];
    if has_c {
        tensors.push(c);
    }
    tensors.extend(mm.guard.map(|g| g.0));
    plan.dispatch(&kern, &u, &tensors, groups)
}

/// On CPU adapters (automatic variant only), operands whose stored rows alias in the L1 are first transposed into
/// plan transients so the kernel reads them along stored rows: a transposed B with rows a multiple of 1 KiB apart
/// (and A too when it is the same matrix, as in Gram products), and an untransposed A with rows a multiple of
/// 4 KiB apart. Why: an x86 L1 maps addresses 4 KiB apart onto one set, so the 64 rows of B one workgroup reads
/// across k at such a stride share 1–4 sets, and the 16 rows of A at a 4 KiB stride share one, evicting each other
/// every step (llvmpipe, 2 cores of an AMD EPYC, f32 GFLOPS: NT 1024 18.9 → 30.4 with this, 384×1536×384 24 → 29,
/// 512 23 → 29, 128×512×128 22 → 23; NN 1024 28–30 → 31–32.5). Where rows do not alias, or the product is too
/// narrow to repay the transpose, it loses (NT 128×128×512 25 → 22; NN at 512 or 768, or n = 512 with k = 128 or
/// 512: equal or 1–5 worse). The sums keep their order, so the result is bit for bit the same.
/// `[(ba, a_bs), (bb, b_bs)]`: the operands' batch sizes and checked batch strides.
fn relayout_for_cpu(
    plan: &mut PlanBuilder,
    mm: &Matmul<'_>,
    (m, n, k): (usize, usize, usize),
    [(ba, a_bs), (bb, b_bs)]: [(usize, usize); 2],
) -> Result<(Option<Tensor>, Option<Tensor>)> {
    let automatic = mm.variant.is_none() && env_variant()?.is_none();
    if !(plan.gpu().is_cpu() && automatic && m >= 64 && n >= 16 && k >= 16) {
        return Ok((None, None));
    }
    let [lda, ldb, _] = mm.lds()?;
    let b_t = if mm.tb == Trans::T && ldb.is_multiple_of(256) {
        let t = plan.transient(0, &[bb, k, n])?;
        transpose_view(plan, mm.b, (bb, n, k), (ldb, b_bs), &t)?;
        Some(t)
    } else {
        None
    };
    let same = mm.a.buffer == mm.b.buffer && mm.a.offset == mm.b.offset && mm.a.shape == mm.b.shape;
    let a_t = match &b_t {
        Some(t) if mm.ta == Trans::N && same && (lda, a_bs, ba) == (ldb, b_bs, bb) => Some(t.clone()),
        _ if mm.ta == Trans::N && lda.is_multiple_of(1024) && n >= 512 => {
            let t = plan.transient(1, &[ba, k, m])?;
            transpose_view(plan, mm.a, (ba, m, k), (lda, a_bs), &t)?;
            Some(t)
        }
        _ => None,
    };
    Ok((a_t, b_t))
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
    gram_guarded(plan, x, side, out, alpha, c, beta, precision, None)
}

/// [`gram`] leaving `out` untouched when `guard = Some((flags, i))` and `flags[i] == 0` on the device (see
/// [`Matmul::guard`](Matmul#structfield.guard)), e.g. a factor EMA `F ← β·F + w·X·Xᵀ` in place that a skipped
/// optimizer step must leave alone.
#[allow(clippy::too_many_arguments)]
pub fn gram_guarded(
    plan: &mut PlanBuilder,
    x: &Tensor,
    side: GramSide,
    out: &Tensor,
    alpha: f32,
    c: Option<&Tensor>,
    beta: f32,
    precision: Precision,
    guard: Option<(&Tensor, usize)>,
) -> Result<()> {
    let (ta, tb) = match side {
        GramSide::Rows => (Trans::N, Trans::T),
        GramSide::Cols => (Trans::T, Trans::N),
    };
    let mm = Matmul {
        a: x,
        b: x,
        out,
        c,
        ta,
        tb,
        alpha,
        beta,
        precision,
        batch_strides: None,
        row_strides: None,
        variant: None,
        guard,
        triangles: [None, None],
    };
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpu_tiles_grow_with_the_product() {
        let tile = |n: usize| {
            let t = MatmulTile::for_gpu_product(n * n);
            (t.tm, t.tn, t.wg_x, t.wg_y)
        };
        // Measured on an H100: 1×1 for n ≤ 256, 2×2 at 512, 4×4 (64×64 per workgroup) at 1024, 8×8 from 2048.
        assert_eq!(tile(128), (1, 1, 16, 16));
        assert_eq!(tile(256), (1, 1, 16, 16));
        assert_eq!(tile(512), (2, 2, 8, 8));
        assert_eq!(tile(1024), (4, 4, 16, 16));
        assert_eq!(tile(2048), (8, 8, 16, 16));
        assert_eq!(tile(8192), (8, 8, 16, 16));
        for t in GPU_TILES {
            assert!(shared_bytes(t) <= 16384, "{t:?} must fit WebGPU's default workgroup memory");
        }
    }

    /// Both forms of the stores (unrolled for GPUs, looped for CPU adapters) of every variant give a kernel naga
    /// accepts, and the looped one stores each accumulator where the unrolled one does.
    #[test]
    fn store_forms_specialize_and_agree() {
        let source = crate::gpu::kernels::SHADERS.iter().find(|(p, _)| *p == "linalg/matmul.wgsl").unwrap().1;
        let cases = [
            (CPU_TILE, MatmulVariant::Registers, tile_defines(CPU_TILE)),
            (CPU_TILE, MatmulVariant::Vec4, tile_defines_vec4(CPU_TILE, Trans::T, Trans::N)),
            (
                MatmulTile { tm: 16, tn: 4, wg_x: 8, wg_y: 8 },
                MatmulVariant::Subgroup,
                tile_defines_subgroup(MatmulTile { tm: 16, tn: 4, wg_x: 8, wg_y: 8 }),
            ),
            (GPU_TILES[0], MatmulVariant::Shared, tile_defines_shared(GPU_TILES[0])),
            (GPU_TILES[2], MatmulVariant::Registers, tile_defines(GPU_TILES[2])),
        ];
        for (tile, variant, defines) in cases {
            let mut placed = Vec::new();
            for looped in [false, true] {
                let mut d = defines.clone();
                d.extend([("HAS_C", "1".to_string()), ("GUARD", "1".into()), ("GUARD_BINDING", "5".into())]);
                d.push(("STORE", stores(tile, variant, looped)));
                let code = crate::gpu::kernels::specialize(source, &d).unwrap();
                let module = naga::front::wgsl::parse_str(&code).unwrap_or_else(|e| panic!("{variant:?}: {e}"));
                naga::valid::Validator::new(naga::valid::ValidationFlags::all(), naga::valid::Capabilities::all())
                    .validate(&module)
                    .unwrap_or_else(|e| panic!("{variant:?} looped {looped}: {e:?}"));
                placed.push(stores(tile, variant, looped));
            }
            // Unrolled store e goes to (row0 + r, col0 + c); the loop puts it at (e / tn, cols[e % tn]).
            let number = |text: &str, after: &str| -> u32 {
                let rest = &text[text.find(after).unwrap() + after.len()..];
                rest[..rest.find('u').unwrap()].parse().unwrap()
            };
            let unrolled: Vec<(u32, u32)> =
                placed[0].lines().map(|l| (number(l, "row0 + "), number(l, "col0 + "))).collect();
            let table = &placed[1][placed[1].find("array<u32").unwrap()..];
            let table = &table[table.find('(').unwrap() + 1..table.find(')').unwrap()];
            let cols: Vec<u32> = table.split(", ").map(|c| c.trim_end_matches('u').parse().unwrap()).collect();
            let looped: Vec<(u32, u32)> =
                (0..tile.tm * tile.tn).map(|e| (e / tile.tn, cols[(e % tile.tn) as usize])).collect();
            assert_eq!(unrolled, looped, "{variant:?}");
        }
    }

    #[test]
    fn variants_parse_by_name() {
        assert_eq!("shared".parse::<MatmulVariant>().unwrap(), MatmulVariant::Shared);
        assert_eq!(" vec4".parse::<MatmulVariant>().unwrap(), MatmulVariant::Vec4);
        assert!("tiles".parse::<MatmulVariant>().unwrap_err().to_string().contains("registers"));
    }
}
