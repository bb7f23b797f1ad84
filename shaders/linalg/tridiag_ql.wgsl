// Symmetric eigendecomposition by Householder tridiagonalization and implicit QL with Wilkinson-type shifts
// (docs/optimizers.md §11.4; the method CPU adapters use): A = Q·T·Qᵀ, then T = Z·Λ·Zᵀ by QL sweeps whose plane
// rotations are accumulated into Q. One workgroup per matrix; ~(4/3)n³ + n³ flops against Jacobi's ~8 sweeps of
// 6n³, and all of it in few passes. The QL recurrences are sequential in one lane; the rotations they produce are
// applied to the rows of Q by every lane, each row independently (a rotation of columns i, i+1 leaves column i+1
// final, so one carried value per row does). Results are sorted ascending into `vals` and the columns of `vecs`.
struct U { n: u32, np: u32, _b: u32, _c: u32 }
@group(0) @binding(0) var<uniform> u: U;
@group(0) @binding(1) var<storage, read> src: array<f32>;
// Work copy of A, rows padded to np (a multiple of 4) so lanes take 4 columns per vec4 access; row k ends up
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

const WG: u32 = {{WG}}u;
const EPS: f32 = 1.1920929e-7;
// A QL step count per eigenvalue no convergence needs (about two on average); a bound, so NaN input finishes.
const MAX_ITERS: u32 = 60u;
var<workgroup> part: array<f32, WG>;
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
fn z_at(i: u32) -> f32 { return z[i / 4u][i % 4u]; }

fn finite(x: f32) -> bool { return (bitcast<u32>(x) & 0x7f800000u) != 0x7f800000u; }

// One implicit QL step on the unreduced block starting at l, by lane 0: finds the block's end m, and unless
// d[l] has converged, chases the shifted rotation from m−1 down to l, storing each (c, s) at its index.
// Sets ql_top = m and ql_count = rotations stored (0: d[l] converged).
fn ql_step(d0: u32, l: u32, t_floor: f32) {
    let n = u.n;
    let e0 = d0 + n;
    let r0 = d0 + 3u * n;
    var m = l;
    while (m + 1u < n) {
        if (abs(aux[e0 + m]) <= max(EPS * (abs(aux[d0 + m]) + abs(aux[d0 + m + 1u])), t_floor)) { break; }
        m++;
    }
    ql_top = m;
    ql_count = 0u;
    let el = aux[e0 + l];
    // Non-finite input (WGSL may assume floats are finite, so test the bits): stop rather than iterate.
    if (m == l || !finite(el) || !finite(aux[d0 + l])) { return; }
    var g = (aux[d0 + l + 1u] - aux[d0 + l]) / (2.0 * el);
    var r = hypot(g, 1.0);
    g = aux[d0 + m] - aux[d0 + l] + el / (g + select(-r, r, g >= 0.0));
    var s = 1.0;
    var c = 1.0;
    var p = 0.0;
    var i = m;
    while (i > l) {
        i--;
        let f = s * aux[e0 + i];
        let b = c * aux[e0 + i];
        r = hypot(f, g);
        aux[e0 + i + 1u] = r;
        if (r == 0.0) {
            // The rotation would divide by zero: the block splits here; the rotations above i stand.
            aux[d0 + i + 1u] -= p;
            aux[e0 + m] = 0.0;
            ql_count = m - i - 1u;
            return;
        }
        s = f / r;
        c = g / r;
        g = aux[d0 + i + 1u] - p;
        r = (aux[d0 + i] - g) * s + 2.0 * c * b;
        p = s * r;
        aux[d0 + i + 1u] = g + p;
        g = c * r - b;
        aux[r0 + 2u * i] = c;
        aux[r0 + 2u * i + 1u] = s;
    }
    aux[d0 + l] -= p;
    aux[e0 + l] = g;
    aux[e0 + m] = 0.0;
    ql_count = m - l;
}

@compute @workgroup_size({{WG}}, 1, 1)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let n = u.n;
    let np = u.np;
    let n4 = np / 4u;
    let base = wg.x * n * np;     // of the padded matrices, in f32s (a multiple of 4)
    let b4 = base / 4u;
    let d0 = wg.x * (3u * n + 2u * np);
    let e0 = d0 + n;
    let b0 = d0 + 2u * n;
    let w0 = d0 + 3u * n;
    let lane_cols = vec4<u32>(0u, 1u, 2u, 3u);

    // 0. The padded work copy (padding columns zero, and never touched again).
    for (var i = li; i < n * n4; i += WG) {
        let r = i / n4;
        let c = 4u * (i % n4) + lane_cols;
        let s = wg.x * n * n + r * n;
        var x = vec4<f32>(0.0);
        for (var q = 0u; q < 4u; q++) { if (c[q] < n) { x[q] = src[s + c[q]]; } }
        a[b4 + i] = x;
    }
    storageBarrier();

    // 1. Tridiagonalize: reflector k = I − β·v·vᵀ on indices k+1.. maps row k's tail x to (α, 0, …);
    //    with p = β·S·v, K = β·vᵀp/2, w = p − K·v the trailing block S becomes S − v·wᵀ − w·vᵀ. Lanes take
    //    groups of 4 columns; columns left of k+1 are masked out of v and w, so their updates add zero.
    for (var k = 0u; k + 2u < n; k++) {
        let row = base + k * np;
        var tail = 0.0;
        for (var j = k + 2u + li; j < n; j += WG) { tail += a_at(row + j) * a_at(row + j); }
        part[li] = tail;
        workgroupBarrier();
        if (li == 0u) {
            var t = 0.0;
            for (var q = 0u; q < WG; q++) { t += part[q]; }
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
            aux[e0 + k] = alpha;
            aux[b0 + k] = beta;
            beta_now = beta;
        }
        storageBarrier();
        let beta = workgroupUniformLoad(&beta_now);
        if (beta == 0.0) { continue; }
        let r4 = row / 4u;
        let g0 = (k + 1u) / 4u;
        var vp = 0.0;
        for (var g = g0 + li; g < n4; g += WG) {
            let live = 4u * g + lane_cols > vec4<u32>(k);
            let vj = select(vec4<f32>(0.0), a[r4 + g], live);
            var p = vec4<f32>(0.0);
            for (var i = k + 1u; i < n; i++) { p += a[b4 + i * n4 + g] * a_at(row + i); }
            p = select(vec4<f32>(0.0), p * beta, live);
            for (var q = 0u; q < 4u; q++) { aux[w0 + 4u * g + q] = p[q]; }
            vp += dot(vj, p);
        }
        part[li] = vp;
        workgroupBarrier();
        var kk = 0.0;
        for (var q = 0u; q < WG; q++) { kk += part[q]; }
        kk *= 0.5 * beta;
        for (var g = g0 + li; g < n4; g += WG) {
            for (var q = 0u; q < 4u; q++) { aux[w0 + 4u * g + q] -= kk * a_at(row + 4u * g + q) * f32(4u * g + q > k); }
        }
        storageBarrier();
        for (var g = g0 + li; g < n4; g += WG) {
            let live = 4u * g + lane_cols > vec4<u32>(k);
            let vj = select(vec4<f32>(0.0), a[r4 + g], live);
            let wj = vec4<f32>(aux[w0 + 4u * g], aux[w0 + 4u * g + 1u], aux[w0 + 4u * g + 2u], aux[w0 + 4u * g + 3u]);
            for (var i = k + 1u; i < n; i++) {
                a[b4 + i * n4 + g] -= a_at(row + i) * wj + aux[w0 + i] * vj;
            }
        }
        storageBarrier();
    }
    if (li == 0u) {
        if (n >= 2u) {
            aux[d0 + n - 2u] = a_at(base + (n - 2u) * np + n - 2u);
            aux[e0 + n - 2u] = a_at(base + (n - 2u) * np + n - 1u);
        }
        aux[d0 + n - 1u] = a_at(base + (n - 1u) * np + n - 1u);
        aux[e0 + n - 1u] = 0.0;
    }

    // 2. Q = H₀·H₁·…·H_{n−3}, accumulated backwards from I (Z ← H_k·Z touches rows and columns k+1.. only);
    //    column groups stay with their lane across k, so no barriers.
    for (var i = li; i < n * n4; i += WG) {
        let c = 4u * (i % n4) + lane_cols;
        z[b4 + i] = select(vec4<f32>(0.0), vec4<f32>(1.0), c == vec4<u32>(i / n4));
    }
    storageBarrier();
    for (var kk = 0u; kk + 2u < n; kk++) {
        let k = n - 3u - kk;
        let beta = aux[b0 + k];
        if (beta == 0.0) { continue; }
        let row = base + k * np;
        for (var g = li; g < n4; g += WG) {
            if (4u * g + 3u <= k) { continue; }
            var s = vec4<f32>(0.0);
            for (var i = k + 1u; i < n; i++) { s += a_at(row + i) * z[b4 + i * n4 + g]; }
            s = select(vec4<f32>(0.0), s * beta, 4u * g + lane_cols > vec4<u32>(k));
            for (var i = k + 1u; i < n; i++) { z[b4 + i * n4 + g] -= a_at(row + i) * s; }
        }
    }
    storageBarrier();

    // 3. QL on (d, e), rotations applied to Z's rows: for each rotation i (descending), columns i and i+1. An
    //    off-diagonal at f32 rounding of T's norm counts as zero too: the reduction already left errors that size,
    //    and below it eigenvalues near zero would never converge relative to themselves.
    var t_floor = 0.0;
    if (li == 0u) {
        var t_norm = 0.0;
        for (var i = 0u; i < n; i++) { t_norm = max(t_norm, abs(aux[d0 + i]) + abs(aux[e0 + i])); }
        t_floor = EPS * t_norm;
    }
    for (var l = 0u; l < n; l++) {
        for (var it = 0u; it < MAX_ITERS; it++) {
            // Every lane has read the last ql_count before lane 0 writes the next one.
            workgroupBarrier();
            if (li == 0u) { ql_step(d0, l, t_floor); }
            storageBarrier();
            let count = workgroupUniformLoad(&ql_count);
            if (count == 0u) { break; }
            let m = ql_top;
            for (var r = li; r < n; r += WG) {
                let zr = base + r * np;
                var carry = z_at(zr + m);
                for (var i = m; i > m - count;) {
                    i--;
                    let c = aux[w0 + 2u * i];
                    let s = aux[w0 + 2u * i + 1u];
                    let zi = z_at(zr + i);
                    z[(zr + i + 1u) / 4u][(zr + i + 1u) % 4u] = s * zi + c * carry;
                    carry = c * zi - s * carry;
                }
                z[(zr + m - count) / 4u][(zr + m - count) % 4u] = carry;
            }
            storageBarrier();
        }
    }

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
        for (var row = 0u; row < n; row++) { along += z_at(base + row * np + i) * warm[out + row * n]; }
        let sign = select(1.0, -1.0, along < 0.0);
//#else
        var big = 0.0;
        for (var row = 0u; row < n; row++) {
            let x = z_at(base + row * np + i);
            if (abs(x) > abs(big)) { big = x; }
        }
        let sign = select(1.0, -1.0, big < 0.0);
//#endif
        for (var row = 0u; row < n; row++) { vecs[out + row * n] = sign * z_at(base + row * np + i); }
    }
}
