// Kronecker-factored whitening (SOAP, Shampoo, KL-Shampoo, SPlus, SPA, FISMO; docs/optimizers.md §4, §5): the elementwise and per-matrix
// kernels around the batched matmuls, eigendecompositions and QR recorded by src/optim/kron.rs. Kernels that
// write optimizer state return early on a skipped step (scalars[0] == 0), so a non-finite gradient changes nothing.
// Bindings: 0 the uniforms, then (elementwise phases) the step scalars, then the phase's tensors.
// Group g's step scalars sit at 8 + 16g: lr, β1_t, 1 − β1^t, 1 − β2^t, t (applied steps including this one), …, β2.
//
// EMA, MOMENTS, FILTER and COMBINE run on VT = vec4<f32> (total, offsets and d then counted in vec4s) where every
// operand's elements and offsets are multiples of 4, else on f32: on llvmpipe a lane's vec4 costs about what a
// scalar does.
//
// EMA:     dst[dst_off + i] = a·dst + b·src[src_off + i]   (factor EMAs; a = 0, b = 1 commits a refresh result)
// MOMENTS: SOAP's Adam in the eigenbasis: M, V updated from the projected gradient, N = M/(sqrt(V)+eps)·bias;
//          the group's first applied step only initializes (no moment update).
// FILTER:  Shampoo's filtered gradient Ḡ (bias-corrected EMA) and the grafting direction.
// COMBINE: Shampoo's direction: grafted per matrix (‖P_graft‖/‖P‖·P, or P_graft before the start step) or P.
// PREP:    F / bc2 + εI before an eigendecomposition (Shampoo's roots, SPlus's and SPA's bases) of rows × cols
//          factors, on the per-matrix grid of `matrix_grid` in src/optim/kron.rs.
// MOMENTUM: SPlus / SPA / KL-Shampoo: M ← β1 M + (1−β1) G, out = (1−a)·M + a·G (a: lookahead); flags 1 (SPA)
//          zeroes M on the first applied step, flags 2 (KL-Shampoo) leaves it untouched then.
// KL_SCALE: in place over a stack of m×n (rows, cols) at dst_off, d elements, four per invocation: x ← x·f with
//          f = s_L[row] (flags 1) times s_R[col] (flags 2), saturated f/(1 + a·f) (flags 4), 1 on the first applied
//          step (flags 8); with SIDE_RSQRT the vectors hold variances v and f uses 1/sqrt(v) (fismo_diag).
// KL_DIAG: KL-Shampoo's eigenvalue targets from D = Q_Lᵀ·G·Q_R: per matrix, d_L[i] = mean_j (D_ij s_R[j])² then
//          d_R[j] = mean_i (D_ij s_L[i])², packed [count, m + n].
// KL_EIGS: λ = 1/s², λ ← lerp(λ, d, 1−β), s = min(1/sqrt(λ), clamp) with clamps a (left) and b (right).
// SIGN:    x ← sign(x) in place (a scratch: no state).
// NORMALIZE: FISMO's factor: F = d·(X + aI)/(tr X + a·d) from X = γF + (1−γ)w·Gram and its trace (per matrix).
// RSQRT:   dst = 1/sqrt(max(src, a)) (FISMO's eigenvalues to the inverse square roots; a scratch).
// FISMO_DIAG: fismo_diag's factor of one side (one workgroup per matrix): side 0 p[i] from the row means of G²/q,
//          side 1 q[j] from the column means of G²/p; X = γ·f + (1−γ)(mean + b), f = d·X/ΣX (a = γ, b = μ).
// VARIANCE: SPA's normalization of the sign direction S: V ← β2 V + (1−β2) S², dir = S/(sqrt(V/(1−β2^t)) + a);
//          zero (and V zeroed) on the first applied step.
// WHITEN_FULL: the whitening grid's full second moment: V ← β2 V + (1−β2) s² from the statistic s at src_off
//          (state at dst_off), out = (x / bc1) / (sqrt(V/(1−β2^t)) + a) (x, out: scratch); flags 1: bc1 = 1 − β1^t,
//          else 1.
// FACTOR_STATS: its rank-1 second moment's statistics (one workgroup per matrix and side, wg.y = side): row
//          (side 0) or column (side 1) means of s², EMA'd into the row / column states; side 0 also writes the
//          mean of the new row states (a scratch).
// WHITEN_FACTORED: out = (x / bc1) / (sqrt(r_i·c_j / mean(r) / (1−β2^t)) + a) (flags as WHITEN_FULL).
// SHIFT:   eigenvalues λ ← λ − min λ + ε when min λ < ε (one workgroup per matrix).
// SOAP's basis sort, in three phases so that only the ranking is one workgroup per matrix:
// SORT_EST: eigenvalue estimates est[b, i] = diag(Qᵀ·T)_i with T = F·Q (one invocation per column; Q at dst_off).
// SORT:    ranks, one workgroup per matrix: the new position of each column in descending order of the estimates
//          (eigh's values, or SORT_EST's), ties by index, written as f32.
// PERMUTE: Q's columns moved to their ranks (Q at dst_off); with POWER, T's too (the power step F·Q_sorted, bit for
//          bit); with PERMUTE_V instead, V (at src_off, rows × cols) along the factor's dimension `side`. x: columns,
//          y: rows (strided past the grid's height), z: matrices.
//#include "optim/kron_uniforms.wgsl"
//#if ELEMENTWISE
@group(0) @binding(1) var<storage, read> scalars: array<f32>;
//#endif
//#if EMA
@group(0) @binding(2) var<storage, read> src: array<{{VT}}>;
@group(0) @binding(3) var<storage, read_write> dst: array<{{VT}}>;
//#endif
//#if MOMENTS
@group(0) @binding(2) var<storage, read> gp: array<{{VT}}>;
@group(0) @binding(3) var<storage, read_write> mom: array<{{VT}}>;
@group(0) @binding(4) var<storage, read_write> vs: array<{{VT}}>;
@group(0) @binding(5) var<storage, read_write> dir: array<{{VT}}>;
//#endif
//#if FILTER
@group(0) @binding(2) var<storage, read> grad: array<{{VT}}>;
@group(0) @binding(3) var<storage, read_write> gbar: array<{{VT}}>;
@group(0) @binding(4) var<storage, read_write> graft: array<{{VT}}>;
//#if HAS_EMA
@group(0) @binding(5) var<storage, read_write> ema: array<{{VT}}>;
//#if HAS_GRAFT
@group(0) @binding(6) var<storage, read_write> gv: array<{{VT}}>;
//#endif
//#else
//#if HAS_GRAFT
@group(0) @binding(5) var<storage, read_write> gv: array<{{VT}}>;
//#endif
//#endif
//#endif
//#if COMBINE
@group(0) @binding(2) var<storage, read> pre: array<{{VT}}>;
@group(0) @binding(3) var<storage, read> graft: array<{{VT}}>;
@group(0) @binding(4) var<storage, read> norm_graft: array<f32>;
@group(0) @binding(5) var<storage, read> norm_pre: array<f32>;
@group(0) @binding(6) var<storage, read_write> dir: array<{{VT}}>;
//#endif
//#if PREP
@group(0) @binding(1) var<storage, read> scalars: array<f32>;
@group(0) @binding(2) var<storage, read> src: array<{{VT}}>;
@group(0) @binding(3) var<storage, read_write> dst: array<{{VT}}>;
//#endif
//#if MOMENTUM
@group(0) @binding(2) var<storage, read> grad: array<f32>;
@group(0) @binding(3) var<storage, read_write> mom: array<f32>;
@group(0) @binding(4) var<storage, read_write> look: array<f32>;
//#endif
//#if SIGN
@group(0) @binding(2) var<storage, read_write> sx: array<f32>;
//#endif
//#if VARIANCE
@group(0) @binding(2) var<storage, read> sd: array<f32>;
@group(0) @binding(3) var<storage, read_write> vs: array<f32>;
@group(0) @binding(4) var<storage, read_write> dir: array<f32>;
//#endif
//#if NORMALIZE
@group(0) @binding(2) var<storage, read> nx: array<f32>;
@group(0) @binding(3) var<storage, read> ntr: array<f32>;
@group(0) @binding(4) var<storage, read_write> nf: array<f32>;
//#endif
//#if RSQRT
@group(0) @binding(2) var<storage, read> rs_in: array<f32>;
@group(0) @binding(3) var<storage, read_write> rs_out: array<f32>;
//#endif
//#if FISMO_DIAG
@group(0) @binding(1) var<storage, read> scalars: array<f32>;
@group(0) @binding(2) var<storage, read> dg: array<f32>;
@group(0) @binding(3) var<storage, read_write> fac: array<f32>;
@group(0) @binding(4) var<storage, read> other: array<f32>;
@group(0) @binding(5) var<storage, read_write> tilde: array<f32>;
var<workgroup> part: array<f32, 64>;
//#endif
//#if KL_SCALE
@group(0) @binding(2) var<storage, read_write> kx: array<f32>;
@group(0) @binding(3) var<storage, read> sl: array<f32>;
@group(0) @binding(4) var<storage, read> sr: array<f32>;
//#endif
//#if KL_DIAG
@group(0) @binding(2) var<storage, read> dm: array<f32>;
@group(0) @binding(3) var<storage, read> sl: array<f32>;
@group(0) @binding(4) var<storage, read> sr: array<f32>;
@group(0) @binding(5) var<storage, read_write> diag: array<f32>;
//#endif
//#if KL_EIGS
@group(0) @binding(2) var<storage, read> diag: array<f32>;
@group(0) @binding(3) var<storage, read_write> sl: array<f32>;
@group(0) @binding(4) var<storage, read_write> sr: array<f32>;
//#endif
//#if WHITEN_FULL
@group(0) @binding(2) var<storage, read> wstat: array<f32>;
@group(0) @binding(3) var<storage, read_write> wv: array<f32>;
@group(0) @binding(4) var<storage, read> wx: array<f32>;
@group(0) @binding(5) var<storage, read_write> wout: array<f32>;
//#endif
//#if FACTOR_STATS
@group(0) @binding(1) var<storage, read> scalars: array<f32>;
@group(0) @binding(2) var<storage, read> fstat: array<f32>;
@group(0) @binding(3) var<storage, read_write> frow: array<f32>;
@group(0) @binding(4) var<storage, read_write> fcol: array<f32>;
@group(0) @binding(5) var<storage, read_write> fmean: array<f32>;
var<workgroup> part: array<f32, 64>;
//#endif
//#if WHITEN_FACTORED
@group(0) @binding(2) var<storage, read> frow: array<f32>;
@group(0) @binding(3) var<storage, read> fcol: array<f32>;
@group(0) @binding(4) var<storage, read> fmean: array<f32>;
@group(0) @binding(5) var<storage, read> wx: array<f32>;
@group(0) @binding(6) var<storage, read_write> wout: array<f32>;
//#endif
//#if SHIFT
@group(0) @binding(1) var<storage, read_write> vals: array<f32>;
var<workgroup> low: array<f32, 64>;
//#endif
//#if SORT_EST
@group(0) @binding(1) var<storage, read> q: array<f32>;
@group(0) @binding(2) var<storage, read> power: array<f32>;
@group(0) @binding(3) var<storage, read_write> est_out: array<f32>;
//#endif
//#if SORT
@group(0) @binding(1) var<storage, read> est_src: array<f32>;
@group(0) @binding(2) var<storage, read_write> rank_out: array<f32>;
var<workgroup> est: array<f32, {{D}}>;
//#endif
//#if PERMUTE
@group(0) @binding(1) var<storage, read> ranks: array<f32>;
@group(0) @binding(2) var<storage, read> src_in: array<f32>;
@group(0) @binding(3) var<storage, read_write> src_out: array<f32>;
//#if POWER
@group(0) @binding(4) var<storage, read> power_in: array<f32>;
@group(0) @binding(5) var<storage, read_write> power_out: array<f32>;
//#endif
//#endif

//#if KL_SCALE
fn side_factor(v: f32) -> f32 {
//#if SIDE_RSQRT
    return inverseSqrt(v);
//#else
    return v;
//#endif
}
//#endif

@compute @workgroup_size(64, 1, 1)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
//#if SORT_EST
    // est[b, i] = Σ_k Q[k, i]·T[k, i].
    let i = wg.x * 64u + li;
    let d = u.d;
    if (i < d) {
        let base = wg.z * d * d + i;
        var s = 0.0;
        for (var k = 0u; k < d; k++) { s += q[u.dst_off + base + k * d] * power[base + k * d]; }
        est_out[wg.z * d + i] = s;
    }
//#endif
//#if SORT
    // One workgroup per matrix b: descending order, ties by index.
    let b = wg.x;
    let d = u.d;
    for (var i = li; i < d; i += 64u) { est[i] = est_src[b * d + i]; }
    workgroupBarrier();
    for (var i = li; i < d; i += 64u) {
        var r = 0u;
        let e = est[i];
        for (var j = 0u; j < d; j++) { r += select(0u, 1u, est[j] > e || (est[j] == e && j < i)); }
        rank_out[b * d + i] = f32(r);
    }
//#endif
//#if PERMUTE
    // Column c of row r moves to column rank[c] (Q, T), or along `side` for V; no per-element division.
    let b = wg.z;
    let c = wg.x * 64u + li;
//#if PERMUTE_V
    let mn = u.rows * u.cols;
    if (c < u.cols) {
        for (var r = wg.y; r < u.rows; r += nw.y) {
            var to = r * u.cols + u32(ranks[b * u.d + c]);
            if (u.side == 0u) { to = u32(ranks[b * u.d + r]) * u.cols + c; }
            src_out[b * mn + to] = src_in[u.src_off + b * mn + r * u.cols + c];
        }
    }
//#else
    let d = u.d;
    if (c < d) {
        let to = u32(ranks[b * d + c]);
        for (var r = wg.y; r < d; r += nw.y) {
            let at = b * d * d + r * d;
            src_out[at + to] = src_in[u.dst_off + at + c];
//#if POWER
            power_out[at + to] = power_in[at + c];
//#endif
        }
    }
//#endif
//#endif
//#if FISMO_DIAG
    // Stores only on an applied step; no early return before the barriers (uniformity).
    let b = wg.x;
    let m = u.rows;
    let n = u.cols;
    let left = u.side == 0u;
    let d = select(n, m, left);
    let k = select(m, n, left);
    let base = u.src_off + b * m * n;
    var sum = 0.0;
    for (var i = li; i < d; i += 64u) {
        var acc = 0.0;
        for (var j = 0u; j < k; j++) {
            var x = 0.0;
            if (left) { x = dg[base + i * n + j]; } else { x = dg[base + j * n + i]; }
            acc += x * x / other[b * k + j];
        }
        let v = u.a * fac[b * d + i] + (1.0 - u.a) * (acc / f32(k) + u.b);
        tilde[b * d + i] = v;
        sum += v;
    }
    part[li] = sum;
    workgroupBarrier();
    for (var s = 32u; s > 0u; s >>= 1u) {
        if (li < s) { part[li] = part[li] + part[li + s]; }
        workgroupBarrier();
    }
    let total = part[0];
    if (scalars[0] != 0.0) {
        for (var i = li; i < d; i += 64u) { fac[b * d + i] = f32(d) * tilde[b * d + i] / total; }
    }
//#endif
//#if FACTOR_STATS
    // Stores only on an applied step; no early return before the barriers (uniformity).
    let b = wg.x;
    let m = u.rows;
    let n = u.cols;
    let left = wg.y == 0u;
    let d = select(n, m, left);
    let k = select(m, n, left);
    let base = u.src_off + b * m * n;
    let b2 = scalars[8u + 16u * u.group + 7u];
    var sum = 0.0;
    for (var i = li; i < d; i += 64u) {
        var acc = 0.0;
        for (var j = 0u; j < k; j++) {
            var x = 0.0;
            if (left) { x = fstat[base + i * n + j]; } else { x = fstat[base + j * n + i]; }
            acc += x * x;
        }
        var v = 0.0;
        if (left) { v = frow[b * m + i]; } else { v = fcol[b * n + i]; }
        v = b2 * v + (1.0 - b2) * acc / f32(k);
        sum += v;
        if (scalars[0] != 0.0) {
            if (left) { frow[b * m + i] = v; } else { fcol[b * n + i] = v; }
        }
    }
    part[li] = sum;
    workgroupBarrier();
    for (var s = 32u; s > 0u; s >>= 1u) {
        if (li < s) { part[li] = part[li] + part[li + s]; }
        workgroupBarrier();
    }
    if (left && li == 0u) { fmean[b] = part[0] / f32(m); }
//#endif
//#if SHIFT
    // One workgroup per matrix of d eigenvalues.
    let b = wg.x;
    var m = 3.4e38;
    for (var i = li; i < u.d; i += 64u) { m = min(m, vals[b * u.d + i]); }
    low[li] = m;
    workgroupBarrier();
    for (var s = 32u; s > 0u; s >>= 1u) {
        if (li < s) { low[li] = min(low[li], low[li + s]); }
        workgroupBarrier();
    }
    let lo = low[0];
    if (lo < u.a) {
        for (var i = li; i < u.d; i += 64u) { vals[b * u.d + i] = vals[b * u.d + i] - lo + u.a; }
    }
//#endif
//#if PREP
    // a = ε, b = β2 of the factors, flags 1: bias correction. Matrix wg.z, row wg.y, W columns per invocation
    // (u.cols and src_off counted in VT): no division per element.
    let c = wg.x * 64u + li;
    if (c < u.cols) {
        var bc = 1.0;
        if ((u.flags & 1u) != 0u && u.b < 1.0) { bc = 1.0 - pow(u.b, scalars[8u + 16u * u.group + 4u]); }
        let i = (wg.z * u.rows + wg.y) * u.cols + c;
        let diagonal = {{UT}}(c * {{W}}u) + {{LANES}} == {{UT}}(wg.y);
        dst[i] = src[u.src_off + i] / bc + select({{VT}}(0.0), {{VT}}(u.a), diagonal);
    }
//#endif
//#if ELEMENTWISE
    let i = (wg.y * nw.x + wg.x) * 64u + li;
    if (i >= u.total) { return; }
    let o = 8u + 16u * u.group;
    let t = scalars[o + 4u];
//#if EMA
    if (scalars[0] == 0.0) { return; }
    let f = select(u.a * dst[u.dst_off + i], {{VT}}(0.0), u.a == 0.0);
    dst[u.dst_off + i] = f + u.b * src[u.src_off + i];
//#endif
//#if MOMENTUM
    if (scalars[0] == 0.0 || ((u.flags & 2u) != 0u && t < 1.5)) { return; }
    let b1 = scalars[o + 1u];
    let g = grad[u.src_off + i];
    let m = b1 * mom[u.dst_off + i] + (1.0 - b1) * g;
    mom[u.dst_off + i] = select(m, 0.0, (u.flags & 1u) != 0u && t < 1.5);
    look[i] = (1.0 - u.a) * m + u.a * g;
//#endif
//#if SIGN
    sx[i] = sign(sx[i]);
//#endif
//#if NORMALIZE
    if (scalars[0] == 0.0) { return; }
    // Two divisions per element, not four (llvmpipe scalarizes them): the diagonal is every (d+1)-th entry.
    let dd = u.d * u.d;
    let b = i / dd;
    let x = nx[i] + select(0.0, u.a, (i - b * dd) % (u.d + 1u) == 0u);
    nf[i] = f32(u.d) * x / (ntr[b] + u.a * f32(u.d));
//#endif
//#if RSQRT
    rs_out[i] = inverseSqrt(max(rs_in[i], u.a));
//#endif
//#if KL_SCALE
    // Four consecutive elements per invocation (u.total counts invocations, u.d elements): one set of divisions
    // for the (matrix, row, column) of four elements, since llvmpipe scalarizes integer division.
    let mn = u.rows * u.cols;
    let i0 = i * 4u;
    var b = i0 / mn;
    var r = (i0 - b * mn) / u.cols;
    var c = i0 - b * mn - r * u.cols;
    for (var k = 0u; k < 4u; k++) {
        let e = i0 + k;
        if (e < u.d) {
            var f = 1.0;
            if ((u.flags & 1u) != 0u) { f = f * side_factor(sl[b * u.rows + r]); }
            if ((u.flags & 2u) != 0u) { f = f * side_factor(sr[b * u.cols + c]); }
            if ((u.flags & 4u) != 0u) { f = f / (1.0 + u.a * f); }
            if ((u.flags & 8u) != 0u && t < 1.5) { f = 1.0; }
            kx[u.dst_off + e] = kx[u.dst_off + e] * f;
        }
        c += 1u;
        if (c == u.cols) {
            c = 0u;
            r += 1u;
            if (r == u.rows) { r = 0u; b += 1u; }
        }
    }
//#endif
//#if KL_DIAG
    let per = u.rows + u.cols;
    let b = i / per;
    let k = i % per;
    let base = b * u.rows * u.cols;
    var acc = 0.0;
    if (k < u.rows) {
        for (var j = 0u; j < u.cols; j++) {
            let v = dm[base + k * u.cols + j] * sr[b * u.cols + j];
            acc += v * v;
        }
        acc = acc / f32(u.cols);
    } else {
        let j = k - u.rows;
        for (var r = 0u; r < u.rows; r++) {
            let v = dm[base + r * u.cols + j] * sl[b * u.rows + r];
            acc += v * v;
        }
        acc = acc / f32(u.rows);
    }
    diag[i] = acc;
//#endif
//#if KL_EIGS
    if (scalars[0] == 0.0 || t < 1.5) { return; }
    let beta = scalars[o + 7u];
    let per = u.rows + u.cols;
    let b = i / per;
    let k = i % per;
    let left = k < u.rows;
    var idx = 0u;
    var s = 0.0;
    if (left) { idx = b * u.rows + k; s = sl[idx]; } else { idx = b * u.cols + (k - u.rows); s = sr[idx]; }
    let lam = mix(1.0 / (s * s), diag[i], 1.0 - beta);
    let sn = min(1.0 / sqrt(lam), select(u.b, u.a, left));
    if (left) { sl[idx] = sn; } else { sr[idx] = sn; }
//#endif
//#if VARIANCE
    if (scalars[0] == 0.0) { return; }
    let b2 = scalars[o + 7u];
    let x = sd[i];
    let v = b2 * vs[u.dst_off + i] + (1.0 - b2) * x * x;
    let first = t < 1.5;
    vs[u.dst_off + i] = select(v, 0.0, first);
    dir[u.dst_off + i] = select(x / (sqrt(v / scalars[o + 3u]) + u.a), 0.0, first);
//#endif
//#if WHITEN_FULL
    if (scalars[0] == 0.0) { return; }
    let b2 = scalars[o + 7u];
    let st = wstat[u.src_off + i];
    let v = b2 * wv[u.dst_off + i] + (1.0 - b2) * st * st;
    wv[u.dst_off + i] = v;
    let bc1 = select(1.0, scalars[o + 2u], (u.flags & 1u) != 0u);
    wout[i] = wx[i] / bc1 / (sqrt(v / scalars[o + 3u]) + u.a);
//#endif
//#if WHITEN_FACTORED
    let mn = u.rows * u.cols;
    let b = i / mn;
    let r = (i - b * mn) / u.cols;
    let c = i - b * mn - r * u.cols;
    let v = frow[b * u.rows + r] * fcol[b * u.cols + c] / max(fmean[b], 1e-30);
    let bc1 = select(1.0, scalars[o + 2u], (u.flags & 1u) != 0u);
    wout[i] = wx[i] / bc1 / (sqrt(v / scalars[o + 3u]) + u.a);
//#endif
//#if MOMENTS
    if (scalars[0] == 0.0 || t < 1.5) { return; }
    // SOAP's own step count excludes the initialization call.
    let s = t - 1.0;
    let b1 = scalars[o + 1u];
    let b2 = scalars[o + 7u];
    let g = gp[i];
    let m = b1 * mom[u.dst_off + i] + (1.0 - b1) * g;
    let v = b2 * vs[u.dst_off + i] + (1.0 - b2) * g * g;
    mom[u.dst_off + i] = m;
    vs[u.dst_off + i] = v;
    var bias = 1.0;
    if ((u.flags & 1u) != 0u) { bias = sqrt(1.0 - pow(b2, s)) / (1.0 - pow(b1, s)); }
    dir[i] = m / (sqrt(v) + u.a) * bias;
//#endif
//#if FILTER
    // a = β3 (< 0: equal to β1), b = grafting ε, flags 1: bias correction, 2/4/6: Adam / RMSprop / AdaGrad grafting.
    if (scalars[0] == 0.0) { return; }
    let g = grad[u.src_off + i];
    var gb = g;
//#if HAS_EMA
    let b1 = scalars[o + 1u];
    let old = ema[u.dst_off + i];
    let upd = b1 * old + (1.0 - b1) * g;
    ema[u.dst_off + i] = upd;
    var b3 = u.a;
    gb = upd;
    if (b3 >= 0.0) { gb = b3 * old + (1.0 - b3) * g; } else { b3 = b1; }
    if ((u.flags & 1u) != 0u) { gb = gb / (1.0 - b3 * pow(b1, t - 1.0)); }
//#endif
    gbar[i] = gb;
//#if HAS_GRAFT
    let kind = (u.flags >> 1u) & 3u;
    let b2 = scalars[o + 7u];
    var v = gv[u.dst_off + i];
    if (kind == 3u) { v = v + g * g; } else { v = b2 * v + (1.0 - b2) * g * g; }
    gv[u.dst_off + i] = v;
    var vh = v;
    if (kind == 1u) { vh = v / scalars[o + 3u]; }
    graft[i] = gb / (sqrt(vh) + u.b);
//#else
    graft[i] = {{VT}}(0.0);   // unused without grafting; written so the binding stays in the layout
//#endif
//#endif
//#if COMBINE
    // d = elements (VT) per matrix, a = the start step, flags 1: grafting.
    var out = pre[i];
    if ((u.flags & 1u) != 0u) {
        let k = i / u.d;
        if (t < u.a) {
            out = graft[i];
        } else {
            out = norm_graft[k] / (norm_pre[k] + 1e-16) * pre[i];
        }
    }
    dir[u.dst_off + i] = out;
//#endif
//#endif
}
