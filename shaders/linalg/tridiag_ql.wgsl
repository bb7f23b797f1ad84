// Symmetric eigendecomposition by Householder tridiagonalization and implicit QL with Wilkinson-type shifts
// (docs/optimizers.md §11.4; the method CPU adapters use): A = Q·T·Qᵀ, then T = Z·Λ·Zᵀ by QL sweeps whose plane
// rotations are accumulated into Q. One workgroup per matrix; ~(4/3)n³ + n³ flops against Jacobi's ~8 sweeps of
// 6n³, and all of it in few passes. The QL recurrences are sequential in one lane; the rotations they produce are
// applied to the rows of Q by every lane, each row independently (a rotation of columns i, i+1 leaves column i+1
// final, so one carried value per row does). Results are sorted ascending into `vals` and the columns of `vecs`.
// The four phases are entry points run in order (`reduce`, `accumulate`, `rotate`, `sort`; for larger n the host
// builds Q by matmuls with `tridiag_wy.wgsl` instead of `accumulate`), state passing through a, z and aux: as one
// kernel, llvmpipe took 3.2 s to compile it, split the largest, `reduce`, takes ~0.4 s (compile time grows with the
// load and store sites, each expanded per lane, so each pass below has one loop).
// GPU variants (src/linalg/eigen.rs sets them where the adapter is no CPU): ROWSPLIT splits the reduction's rows
// over lanes, ZT rotates a column-major Z (which the host transposed into `a`, free by then) and QL_SHARED keeps
// QL's d, e and rotations in workgroup memory; on an H100, 4 × 512² took 50 ms before them and 16 after.
struct U { n: u32, np: u32, _b: u32, _c: u32 }
@group(0) @binding(0) var<uniform> u: U;
@group(0) @binding(1) var<storage, read> src: array<f32>;
// Work copy of A, rows padded to np (a multiple of 8) so lanes take 8 columns as two vec4s; row k ends up
// holding reflector k's vector in columns k+1.. .
@group(0) @binding(2) var<storage, read_write> a: array<vec4<f32>>;
// Q, then Q·(QL rotations): the eigenvectors, unsorted, as columns; rows padded like A's.
@group(0) @binding(3) var<storage, read_write> z: array<vec4<f32>>;
// Per matrix 3n + 2·np values: d (diagonal of T), e (e[i] couples i and i+1), β of each reflector, then the
// vector w of the rank-2 updates, later the QL rotations (c, s) by index.
@group(0) @binding(4) var<storage, read_write> aux: array<f32>;
@group(0) @binding(5) var<storage, read_write> vals: array<f32>;
@group(0) @binding(6) var<storage, read_write> vecs: array<f32>;
//#if WARM
// The previous basis (columns), whose vectors the results keep pointing along.
@group(0) @binding(7) var<storage, read> warm: array<f32>;
//#endif
//#if ROWSPLIT
//#else
// CPU layout: the reduction keeps only the lower triangle of the trailing block; per matrix, column group g's
// part of row i's sum over its columns left of the diagonal at [g·np + i] (np·np/8 values per matrix).
@group(0) @binding(8) var<storage, read_write> rowpart: array<f32>;
//#endif

const WG: u32 = {{WG}}u;
const EPS: f32 = 1.1920929e-7;
// Offsets of a vec4's columns.
const LANE_COLS = vec4<u32>(0u, 1u, 2u, 3u);
// A QL step count per eigenvalue no convergence needs (about two on average); a bound, so NaN input finishes.
const MAX_ITERS: u32 = 60u;
// Per-lane partial sums: [0, WG) for vᵀp, [WG, 2·WG) for reflector tails (two halves: no barrier between uses).
var<workgroup> part: array<f32, 2u * WG>;
//#if ROWSPLIT
// The reduction's per-lane sums of x·y for 8 columns (two vec4s per lane).
var<workgroup> qpart: array<vec4<f32>, 2u * WG>;
//#endif
var<workgroup> beta_now: f32;
var<workgroup> ql_top: u32;
var<workgroup> ql_count: u32;

// sqrt(x² + y²) without overflow or underflow on the way.
fn hypot(x: f32, y: f32) -> f32 {
    let m = max(abs(x), abs(y));
    if (m == 0.0) { return 0.0; }
    let p = x / m;
    let q = y / m;
    return m * sqrt(p * p + q * q);
}

// Scalar views of the padded matrices (index in f32s).
fn a_at(i: u32) -> f32 { return a[i / 4u][i % 4u]; }
fn set_a(i: u32, x: f32) { a[i / 4u][i % 4u] = x; }
// Z's entry (row, col) for `sort`: row-major in z, or (ZT) column-major in `a`, where the host transposed it.
fn z_entry(base: u32, np: u32, row: u32, col: u32) -> f32 {
//#if ZT
    return a_at(base + col * u.n + row);
//#else
    return z_at(base + row * np + col);
//#endif
}
fn z_at(i: u32) -> f32 { return z[i / 4u][i % 4u]; }
// Z's scalars at four indices.
fn z4(i: vec4<u32>) -> vec4<f32> { return vec4<f32>(z_at(i.x), z_at(i.y), z_at(i.z), z_at(i.w)); }
fn set_z4(i: vec4<u32>, x: vec4<f32>) {
    for (var q = 0u; q < 4u; q++) { z[i[q] / 4u][i[q] % 4u] = x[q]; }
}

// Row `at4`'s vec4 at column c4..c4+3 with columns ≤ k zeroed (reflector k's vector lives in columns k+1..).
fn live(at4: u32, c4: u32, k: u32) -> vec4<f32> {
    return select(vec4<f32>(0.0), a[at4], c4 + vec4<u32>(0u, 1u, 2u, 3u) > vec4<u32>(k));
}

// x, or zeros where `on` is false (a select, so whatever x holds never leaks into the result).
fn keep4(on: bool, x: vec4<f32>) -> vec4<f32> { return select(vec4<f32>(0.0), x, on); }

fn aux4(i: u32) -> vec4<f32> { return vec4<f32>(aux[i], aux[i + 1u], aux[i + 2u], aux[i + 3u]); }

// Columns 8g..8g+7 of a w-region vector at `at`, those ≤ k stored as zero.
fn set_aux8(at: u32, g: u32, k: u32, x0: vec4<f32>, x1: vec4<f32>) {
    for (var q = 0u; q < 4u; q++) {
        aux[at + 8u * g + q] = select(0.0, x0[q], 8u * g + q > k);
        aux[at + 8u * g + 4u + q] = select(0.0, x1[q], 8u * g + 4u + q > k);
    }
}

fn part_sum(at: u32) -> f32 {
    var t = 0.0;
    for (var q = 0u; q < WG; q++) { t += part[at + q]; }
    return t;
}

// Reflector k from row k's final tail x (columns k+1..), given each lane's part of Σ x² over columns k+2..:
// lane 0 stores v₀ = x₀ − α in place of x₀ (the rest of v is the tail itself), the diagonal d[k], e[k] = α and
// β = 2 / vᵀv. Returns β, uniform across the workgroup.
fn reflector(li: u32, tail: f32, base: u32, d0: u32, k: u32) -> f32 {
    let n = u.n;
    let row = base + k * u.np;
    part[WG + li] = tail;
    workgroupBarrier();
    if (li == 0u) {
        let t = part_sum(WG);
        let x0 = a_at(row + k + 1u);
        var beta = 0.0;
        var alpha = x0;
        // A zero tail needs no reflector (one would only flip a sign).
        if (t > 0.0) {
            let norm = sqrt(t + x0 * x0);
            alpha = select(norm, -norm, x0 >= 0.0);
            let v0 = x0 - alpha;
            beta = 1.0 / (norm * abs(v0));     // 2 / vᵀv, vᵀv = 2·(‖x‖² − x0·α) = 2·‖x‖·|v0|
            a[(row + k + 1u) / 4u][(k + 1u) % 4u] = v0;
        }
        aux[d0 + k] = a_at(row + k);
        aux[d0 + n + k] = alpha;
        aux[d0 + 2u * n + k] = beta;
        beta_now = beta;
    }
    storageBarrier();
    return workgroupUniformLoad(&beta_now);
}

// The QL recurrences' d, e and rotations (c, s): in workgroup memory where it fits (QL_SHARED; each of lane 0's
// sequential steps then waits on no storage load: on an H100, 4 × 512² took 225 ms of QL in storage), else in aux.
//#if QL_SHARED
var<workgroup> ql_d: array<f32, {{QLN}}>;
var<workgroup> ql_e: array<f32, {{QLN}}>;
var<workgroup> ql_cs: array<vec2<f32>, {{QLN}}>;
fn d_at(d0: u32, i: u32) -> f32 { return ql_d[i]; }
fn set_d(d0: u32, i: u32, x: f32) { ql_d[i] = x; }
fn e_at(d0: u32, i: u32) -> f32 { return ql_e[i]; }
fn set_e(d0: u32, i: u32, x: f32) { ql_e[i] = x; }
fn cs_at(d0: u32, i: u32) -> vec2<f32> { return ql_cs[i]; }
fn set_cs(d0: u32, i: u32, c: f32, s: f32) { ql_cs[i] = vec2<f32>(c, s); }
//#else
fn d_at(d0: u32, i: u32) -> f32 { return aux[d0 + i]; }
fn set_d(d0: u32, i: u32, x: f32) { aux[d0 + i] = x; }
fn e_at(d0: u32, i: u32) -> f32 { return aux[d0 + u.n + i]; }
fn set_e(d0: u32, i: u32, x: f32) { aux[d0 + u.n + i] = x; }
fn cs_at(d0: u32, i: u32) -> vec2<f32> { return vec2<f32>(aux[d0 + 3u * u.n + 2u * i], aux[d0 + 3u * u.n + 2u * i + 1u]); }
fn set_cs(d0: u32, i: u32, c: f32, s: f32) {
    aux[d0 + 3u * u.n + 2u * i] = c;
    aux[d0 + 3u * u.n + 2u * i + 1u] = s;
}
//#endif

fn finite(x: f32) -> bool { return (bitcast<u32>(x) & 0x7f800000u) != 0x7f800000u; }

// One implicit QL step on the unreduced block starting at l, by lane 0: finds the block's end m, and unless
// d[l] has converged, chases the shifted rotation from m−1 down to l, storing each (c, s) at its index.
// Sets ql_top = m and ql_count = rotations stored (0: d[l] converged).
fn ql_step(d0: u32, l: u32, t_floor: f32) {
    let n = u.n;
    var m = l;
    while (m + 1u < n) {
        if (abs(e_at(d0, m)) <= max(EPS * (abs(d_at(d0, m)) + abs(d_at(d0, m + 1u))), t_floor)) { break; }
        m++;
    }
    ql_top = m;
    ql_count = 0u;
    let el = e_at(d0, l);
    // Non-finite input (WGSL may assume floats are finite, so test the bits): stop rather than iterate.
    if (m == l || !finite(el) || !finite(d_at(d0, l))) { return; }
    var g = (d_at(d0, l + 1u) - d_at(d0, l)) / (2.0 * el);
    var r = hypot(g, 1.0);
    g = d_at(d0, m) - d_at(d0, l) + el / (g + select(-r, r, g >= 0.0));
    var s = 1.0;
    var c = 1.0;
    var p = 0.0;
    var i = m;
    while (i > l) {
        i--;
        let f = s * e_at(d0, i);
        let b = c * e_at(d0, i);
        r = hypot(f, g);
        set_e(d0, i + 1u, r);
        if (r == 0.0) {
            // The rotation would divide by zero: the block splits here; the rotations above i stand.
            set_d(d0, i + 1u, d_at(d0, i + 1u) - p);
            set_e(d0, m, 0.0);
            ql_count = m - i - 1u;
            return;
        }
        s = f / r;
        c = g / r;
        g = d_at(d0, i + 1u) - p;
        r = (d_at(d0, i) - g) * s + 2.0 * c * b;
        p = s * r;
        set_d(d0, i + 1u, g + p);
        g = c * r - b;
        set_cs(d0, i, c, s);
    }
    set_d(d0, l, d_at(d0, l) - p);
    set_e(d0, l, g);
    set_e(d0, m, 0.0);
    ql_count = m - l;
}

// Eight columns' sums, as two vec4s.
struct Sums8 { lo: vec4<f32>, hi: vec4<f32> }

// The reduction's pass on column group g (columns 8g..8g+7) of rows first, first + step, … < n: reflector k applied
// (v from row k, w = p − K·v from the w region at wk; both zero unless `on`), and those rows' sums of x·y with y
// row j. CPU layout (no ROWSPLIT): the lower triangle only, rows from the group's first column on, each row's
// entries right of the diagonal neither summed nor kept (that part of a row is free until its reflector is stored
// there); besides the column sums, the group's part of each row's Σ x·y left of the diagonal goes to rowpart at rp
// (the other half of S·y, by symmetry: the next step adds it to p), and Σ y_i·(that part) to *rsum (its share of
// yᵀ·S·y, so that the pass needs no second barrier).
fn apply_rows(
    base: u32, j: u32, k: u32, g: u32, first: u32, step: u32, on: bool, kk: f32, wk: u32, rp: u32,
    rsum: ptr<function, f32>,
) -> Sums8 {
    let np = u.np;
    let row = base + k * np;
    let r4 = row / 4u;
    let y = base + j * np;
    let b4 = base / 4u;
    let n4 = np / 4u;
    let v0 = keep4(on, live(r4 + 2u * g, 8u * g, k));
    let v1 = keep4(on, live(r4 + 2u * g + 1u, 8u * g + 4u, k));
    let w0g = keep4(on, aux4(wk + 8u * g) - kk * v0);
    let w1g = keep4(on, aux4(wk + 8u * g + 4u) - kk * v1);
//#if ROWSPLIT
    let start = first;
//#else
    let start = max(first, 8u * g);
    let c0 = 8u * g + LANE_COLS;
    let c1 = c0 + 4u;
    let y0 = live(y / 4u + 2u * g, 8u * g, j);
    let y1 = live(y / 4u + 2u * g + 1u, 8u * g + 4u, j);
//#endif
    var q = Sums8(vec4<f32>(0.0), vec4<f32>(0.0));
    for (var i = start; i < u.n; i += step) {
        let vi = select(0.0, a_at(row + i), on);
        let wi = select(0.0, aux[wk + i] - kk * vi, on);
        let yi = a_at(y + i);
        let at = b4 + i * n4 + 2u * g;
        let x0 = a[at] - (vi * w0g + wi * v0);
        let x1 = a[at + 1u] - (vi * w1g + wi * v1);
        a[at] = x0;
        a[at + 1u] = x1;
//#if ROWSPLIT
        q.lo += x0 * yi;
        q.hi += x1 * yi;
//#else
        let ri = vec4<u32>(i);
        q.lo += select(vec4<f32>(0.0), x0, c0 <= ri) * yi;
        q.hi += select(vec4<f32>(0.0), x1, c1 <= ri) * yi;
        let r = dot(select(vec4<f32>(0.0), x0, c0 < ri), y0) + dot(select(vec4<f32>(0.0), x1, c1 < ri), y1);
        rowpart[rp + i] = r;
        *rsum = fma(yi, r, *rsum);
//#endif
    }
    return q;
}

//#if ROWSPLIT
//#else
// Row c's parts left of the diagonal from the pass that made p of reflector k (groups from k / 8 on): what p_c
// lacks, before β.
fn row_total(rpb: u32, k: u32, c: u32) -> f32 {
    var t = 0.0;
    for (var h = k / 8u; h <= c / 8u; h++) { t += rowpart[rpb + h * u.np + c]; }
    return t;
}
//#endif

// p of reflector j on column group g from its sums q (β = next), into the w region's half (j mod 2); returns the
// group's part of yᵀp (y row j).
fn store_p(base: u32, j: u32, g: u32, w0: u32, q: Sums8, next: f32) -> f32 {
    let p0 = q.lo * next;
    let p1 = q.hi * next;
    set_aux8(w0 + (j & 1u) * u.np, g, j, p0, p1);
    let y4 = (base + j * u.np) / 4u + 2u * g;
    return dot(live(y4, 8u * g, j), p0) + dot(live(y4 + 1u, 8u * g + 4u, j), p1);
}

// Where matrix `w`'s data lives: the padded matrices' base (in f32s, a multiple of 8) and its aux region.
struct Geo { n: u32, np: u32, n4: u32, n8: u32, base: u32, b4: u32, d0: u32, e0: u32, b0: u32, w0: u32 }

fn geo(w: u32) -> Geo {
    let n = u.n;
    let np = u.np;
    let base = w * n * np;
    let d0 = w * (3u * n + 2u * np);
    return Geo(n, np, np / 4u, np / 8u, base, base / 4u, d0, d0 + n, d0 + 2u * n, d0 + 3u * n);
}

// Phases 0 and 1.
@compute @workgroup_size({{WG}}, 1, 1)
fn reduce(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let here = geo(wg.x);
    let n = here.n;
    let np = here.np;
    let n8 = here.n8;
    let base = here.base;
    let b4 = here.b4;
    let d0 = here.d0;
    let e0 = here.e0;
    let w0 = here.w0;

    // 0. The padded work copy (padding columns zero, and never touched again).
    for (var i = li; i < n * np; i += WG) {
        let c = i % np;
        a[b4 + i / 4u][c % 4u] = select(0.0, src[wg.x * n * n + (i / np) * n + min(c, n - 1u)], c < n);
    }
    storageBarrier();

    // 1. Tridiagonalize: reflector k = I − β·v·vᵀ on indices k+1.. maps row k's tail x to (α, 0, …);
    //    with p = β·S·v, K = β·vᵀp/2, w = p − K·v the trailing block S becomes S − v·wᵀ − w·vᵀ. In the pass
    //    over the rows below, lanes own groups of 8 columns (two vec4s, so each row's scalars serve 8 columns);
    //    row j alone goes one column per lane (llvmpipe compiles every vec4 access as four, so the loops that
    //    are not hot take scalars: first call 0.57 → 0.40 s, same run time); columns left of k+1 are masked
    //    out of v and w, so their updates add zero. Step j applies reflector k = j − 1 (none at j = 0) and
    //    builds reflector j: row j is updated first (its tail sums gathered on the way), reflector j built from
    //    it, then one pass updates the rows below and computes p of reflector j (and each lane's part of vᵀp,
    //    for the next step's K) as it goes. p of reflector k lives in the half (k mod 2) of the w region, the
    //    next p in the other half; w is never stored, each pass forms it from p. Every load or store site costs
    //    llvmpipe compile time (it expands each per lane), so there are two passes per step, each one loop,
    //    which also serves steps with nothing to apply. A blocked reduction (LAPACK's LATRD: per block of 32
    //    columns only S·v passes, then S − V·Wᵀ − W·Vᵀ by one matmul) was measured and is slower on llvmpipe
    //    (2 × 512²: 78 ms of panels + 11 of matmuls against 61): this pass already loads each trailing element
    //    once per step, as S·v must, and the stores it adds are cheap there. It may still pay on GPUs.
    //    CPU adapters touch only the lower triangle of S (`apply_rows`): S·y is the column sums below the diagonal
    //    plus the row sums left of it, each column group's part of the latter stored per row and added to p at
    //    the next step's row update (after the barrier that ends the pass; a barrier of its own cost llvmpipe
    //    0.4 s more compile); the rows' upper parts are left stale until a reflector is stored there. Lavapipe,
    //    eigh of 2 × 512²: 160–171 → 130–137 ms; first call 0.73–0.84 → 0.87–1.2 s on that (slow) host.
    var beta = 0.0;     // β of reflector j − 1; zero: nothing to apply
    for (var j = 0u; j + 1u < n; j++) {
        let k = max(j, 1u) - 1u;
        let row = base + k * np;
        let g0 = j / 8u;
        let wk = w0 + (k & 1u) * np;
        let fuse = j + 2u < n;
        // With no reflector k, v and w are zero (selected, not multiplied: the w region may hold anything).
        let on = beta != 0.0;
        var kk = 0.0;
        if (on) { kk = 0.5 * beta * part_sum(0u); }
        let vj = select(0.0, a_at(row + j), on);
//#if ROWSPLIT
        let wj = select(0.0, aux[wk + j] - kk * vj, on);
//#else
        // CPU layout: p of reflector k completed with the row parts of the pass that made it.
        let rpb = wg.x * n8 * np;
        var pj = 0.0;
        if (on) { pj = aux[wk + j] + beta * row_total(rpb, k, j); }
        let wj = select(0.0, pj - kk * vj, on);
//#endif
        // Row j updated with reflector k, and each lane's part of row j's tail sum.
        let y = base + j * np;     // row j: reflector j's vector from column j+1 on
        var tail = 0.0;
        for (var c = j + li; c < n; c += WG) {
            let v = select(0.0, a_at(row + c), on && c > k);
//#if ROWSPLIT
            let w = select(0.0, aux[wk + c] - kk * v, on);
            let x = a_at(y + c) - (vj * w + wj * v);
            if (on) { a[(y + c) / 4u][c % 4u] = x; }
//#else
            // p_c completed, and stored so for the pass (column j's stays: every lane read it above, and the pass
            // does not need it, column j being finished).
            var pc = pj;
            if (on && c > j) {
                pc = aux[wk + c] + beta * row_total(rpb, k, c);
                aux[wk + c] = pc;
            }
            let w = select(0.0, pc - kk * v, on);
            // Only the lower triangle is current: row j's tail is column j's, copied into the row for the reflector.
            let x = a_at(base + c * np + j) - (vj * w + wj * v);
            a[(y + c) / 4u][c % 4u] = x;
//#endif
            if (c >= j + 2u) { tail = fma(x, x, tail); }
        }
        storageBarrier();
        var next = 0.0;
        if (fuse) { next = reflector(li, tail, base, d0, j); }
        // Apply reflector k (if any) to the rows below row j while computing p of reflector j (if any): with
        // no reflector k, v and w count as zero and the pass only computes p (so at j = 0, and after a zero tail).
        if (on || next != 0.0) {
            var vp = 0.0;
//#if ROWSPLIT
            // GPUs: each column group's rows split over `hs` lanes (a lane per column group left most of the
            // device's lanes idle, each waiting on one load after another: 34 of 40 ms for 4 × 512² on an H100),
            // their sums of x·y totalled in workgroup memory.
            let span = n8 - g0;
            let hs = max(WG / n8, 1u);
            let g = g0 + li % span;
            let h = li / span;
            let mine = h < hs && g < n8;
            var q = Sums8(vec4<f32>(0.0), vec4<f32>(0.0));
            if (mine) {
                var unused = 0.0;
                q = apply_rows(base, j, k, g, j + 1u + h, hs, on, kk, wk, 0u, &unused);
            }
            qpart[2u * li] = q.lo;
            qpart[2u * li + 1u] = q.hi;
            workgroupBarrier();
            if (mine && h == 0u) {
                for (var o = 1u; o < hs; o++) {
                    q.lo += qpart[2u * (li + o * span)];
                    q.hi += qpart[2u * (li + o * span) + 1u];
                }
                vp += store_p(base, j, g, w0, q, next);
            }
//#else
            // CPU adapters: the lower triangle (each access is a load or store per lane there); p from the column
            // sums here, completed with the row parts at the next step.
            for (var g = g0 + li; g < n8; g += WG) {
                var rsum = 0.0;
                let q = apply_rows(base, j, k, g, j + 1u, 1u, on, kk, wk, rpb + g * np, &rsum);
                vp += store_p(base, j, g, w0, q, next) + next * rsum;
            }
//#endif
            part[li] = vp;
            storageBarrier();
            workgroupBarrier();
        }
        beta = next;
    }
    if (li == 0u) {
        if (n >= 2u) {
            aux[d0 + n - 2u] = a_at(base + (n - 2u) * np + n - 2u);
            aux[e0 + n - 2u] = a_at(base + (n - 2u) * np + n - 1u);
        }
        aux[d0 + n - 1u] = a_at(base + (n - 1u) * np + n - 1u);
        aux[e0 + n - 1u] = 0.0;
    }
}

@compute @workgroup_size({{WG}}, 1, 1)
fn accumulate(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let here = geo(wg.x);
    let n = here.n;
    let n4 = here.n4;
    let n8 = here.n8;
    let base = here.base;
    let b4 = here.b4;
    let b0 = here.b0;
    let w0 = here.w0;
    let np = here.np;

    // 2. Q = H₀·H₁·…·H_{n−3}, accumulated backwards from I two reflectors at a time: with a = b+1 applied first,
    //    H_b·H_a·Z = Z − v_a·s_aᵀ − v_b·s_bᵀ, s_a = β_a·Zᵀv_a, s_b = β_b·(Zᵀv_b − (v_bᵀv_a)·s_a), so one pass
    //    reads Z for both sums and one updates it. H_k touches rows and columns k+1.. only; column groups stay
    //    with their lane across pairs, so no barriers there. v_bᵀv_a of every pair first, into the w region.
    let reflectors = select(0u, n - 2u, n >= 3u);
    let pairs = (reflectors + 1u) / 2u;
    for (var t = li; t < pairs; t += WG) {
        let ka = reflectors - 1u - 2u * t;
        var c = 0.0;
        if (ka >= 1u) {
            let ra = base + ka * np;
            for (var i = ka + 1u; i < n; i++) { c += a_at(ra - np + i) * a_at(ra + i); }
        }
        aux[w0 + t] = c;
    }
    for (var i = li; i < n * n4; i += WG) {
        let c = 4u * (i % n4) + LANE_COLS;
        z[b4 + i] = select(vec4<f32>(0.0), vec4<f32>(1.0), c == vec4<u32>(i / n4));
    }
    storageBarrier();
    for (var t = 0u; t < pairs; t++) {
        let ka = reflectors - 1u - 2u * t;
        let has_b = ka >= 1u;
        let beta_a = aux[b0 + ka];
        let beta_b = select(0.0, aux[b0 + max(ka, 1u) - 1u], has_b);
        if (beta_a == 0.0 && beta_b == 0.0) { continue; }
        let ra = base + ka * np;
        let rb = select(ra, ra - np, has_b);
        let c = aux[w0 + t];
        for (var g = li; g < n8; g += WG) {
            if (8u * g + 7u < ka) { continue; }
            // Row ka: v_a is zero there, v_b is not.
            let top = b4 + ka * n4 + 2u * g;
            let vbt = select(0.0, a_at(rb + ka), has_b);
            var sa0 = vec4<f32>(0.0);
            var sa1 = vec4<f32>(0.0);
            var tb0 = z[top] * vbt;
            var tb1 = z[top + 1u] * vbt;
            for (var i = ka + 1u; i < n; i++) {
                let va = a_at(ra + i);
                let vb = a_at(rb + i);
                let at = b4 + i * n4 + 2u * g;
                let z0 = z[at];
                let z1 = z[at + 1u];
                sa0 += z0 * va;
                sa1 += z1 * va;
                tb0 += z0 * vb;
                tb1 += z1 * vb;
            }
            sa0 *= beta_a;
            sa1 *= beta_a;
            let sb0 = beta_b * (tb0 - c * sa0);
            let sb1 = beta_b * (tb1 - c * sa1);
            z[top] -= vbt * sb0;
            z[top + 1u] -= vbt * sb1;
            for (var i = ka + 1u; i < n; i++) {
                let va = a_at(ra + i);
                let vb = a_at(rb + i);
                let at = b4 + i * n4 + 2u * g;
                z[at] -= va * sa0 + vb * sb0;
                z[at + 1u] -= va * sa1 + vb * sb1;
            }
        }
    }
}

@compute @workgroup_size({{WG}}, 1, 1)
fn rotate(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let here = geo(wg.x);
    let n = here.n;
    let np = here.np;
    let base = here.base;
    let d0 = here.d0;
    let e0 = here.e0;
    let w0 = here.w0;

    // 3. QL on (d, e), rotations applied to Z's rows: for each rotation i (descending), columns i and i+1. An
    //    off-diagonal at f32 rounding of T's norm counts as zero too: the reduction already left errors that size,
    //    and below it eigenvalues near zero would never converge relative to themselves.
    var t_floor = 0.0;
    if (li == 0u) {
        var t_norm = 0.0;
        for (var i = 0u; i < n; i++) { t_norm = max(t_norm, abs(aux[d0 + i]) + abs(aux[e0 + i])); }
        t_floor = EPS * t_norm;
    }
//#if QL_SHARED
    for (var i = li; i < n; i += WG) {
        ql_d[i] = aux[d0 + i];
        ql_e[i] = aux[e0 + i];
    }
//#endif
    for (var l = 0u; l < n; l++) {
        for (var it = 0u; it < MAX_ITERS; it++) {
            // Every lane has read the last ql_count before lane 0 writes the next one.
            workgroupBarrier();
            if (li == 0u) { ql_step(d0, l, t_floor); }
            storageBarrier();
            let count = workgroupUniformLoad(&ql_count);
            if (count == 0u) { break; }
            let m = ql_top;
//#if ZT
            // Z column-major (GPUs): a lane per row, so lanes read a column's adjacent entries; the rotations in
            // chunks of 8 columns whose loads go first, so their latencies overlap.
            let stop = m - count;
            for (var r = li; r < n; r += WG) {
                var carry = a_at(base + m * n + r);
                for (var i = m; i > stop;) {
                    let len = min(8u, i - stop);
                    var zs: array<f32, 8>;
                    for (var q = 0u; q < 8u; q++) {
                        if (q < len) { zs[q] = a_at(base + (i - 1u - q) * n + r); }
                    }
                    for (var q = 0u; q < 8u; q++) {
                        if (q < len) {
                            let cs = cs_at(d0, i - 1u - q);
                            let next = cs.x * zs[q] - cs.y * carry;
                            zs[q] = cs.y * zs[q] + cs.x * carry;  // column i − q's new entry
                            carry = next;
                        }
                    }
                    for (var q = 0u; q < 8u; q++) {
                        if (q < len) { set_a(base + (i - q) * n + r, zs[q]); }
                    }
                    i -= len;
                }
                set_a(base + stop * n + r, carry);
            }
//#else
            // Four adjacent rows per lane at a time (rows past n repeat row r: same values, same places), so
            // each rotation's (c, s) is loaded once for four rows.
            for (var r = 4u * li; r < n; r += 4u * WG) {
                let rows = r + vec4<u32>(0u, 1u, 2u, 3u);
                let zr = base + select(vec4<u32>(r), rows, rows < vec4<u32>(n)) * np;
                var carry = z4(zr + m);
                for (var i = m; i > m - count;) {
                    i--;
                    let cs = cs_at(d0, i);
                    let c = cs.x;
                    let s = cs.y;
                    let zi = z4(zr + i);
                    set_z4(zr + i + 1u, s * zi + c * carry);
                    carry = c * zi - s * carry;
                }
                set_z4(zr + m - count, carry);
            }
//#endif
            storageBarrier();
        }
    }
//#if QL_SHARED
    // The eigenvalues for `sort`.
    workgroupBarrier();
    for (var i = li; i < n; i += WG) { aux[d0 + i] = ql_d[i]; }
//#endif
}

@compute @workgroup_size({{WG}}, 1, 1)
fn sort(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let here = geo(wg.x);
    let n = here.n;
    let np = here.np;
    let base = here.base;
    let d0 = here.d0;

    // 4. Sort ascending (ties by index): rank each eigenvalue, scatter value and column, with the column's sign
    //    chosen so it points along the previous basis's column of the same rank (warm), else so its
    //    largest-magnitude component (the first of equals) is positive.
    for (var i = li; i < n; i += WG) {
        let di = aux[d0 + i];
        var rank = 0u;
        for (var j = 0u; j < n; j++) {
            let dj = aux[d0 + j];
            if (dj < di || (dj == di && j < i)) { rank += 1u; }
        }
        vals[wg.x * n + rank] = di;
        let out = wg.x * n * n + rank;
//#if WARM
        var along = 0.0;
        for (var row = 0u; row < n; row++) { along += z_entry(base, np, row, i) * warm[out + row * n]; }
        let sign = select(1.0, -1.0, along < 0.0);
//#else
        var big = 0.0;
        for (var row = 0u; row < n; row++) {
            let x = z_entry(base, np, row, i);
            if (abs(x) > abs(big)) { big = x; }
        }
        let sign = select(1.0, -1.0, big < 0.0);
//#endif
        for (var row = 0u; row < n; row++) { vecs[out + row * n] = sign * z_entry(base, np, row, i); }
    }
}
