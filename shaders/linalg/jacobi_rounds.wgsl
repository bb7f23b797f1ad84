// Parallel two-sided Jacobi spread over the whole device (docs/optimizers.md §11.4): the same round-robin rounds,
// rotations and stopping rules as jacobi.wgsl, but one round is two dispatches over every element instead of a
// loop inside one workgroup per matrix, so large matrices use all compute units. Per round: `rows` writes JᵀA from
// `a_in` into `a_out`; `cols` applies J to the columns of `a_out` and `v` in place. Both take the rotations from
// `a_in`, which neither writes, so every thread computes identical (c, s). `check` runs before each sweep.
// flags (u32 per matrix ×4): done, rotated-in-this-sweep, _, absolute threshold (f32 bits).
struct U {
    n: u32, m: u32, round: u32, sweep: u32,
    tol: f32, skip: f32, warm: u32, _p: u32,
}
@group(0) @binding(0) var<uniform> u: U;
//#if CHECK
@group(0) @binding(1) var<storage, read> a_in: array<f32>;
@group(0) @binding(2) var<storage, read_write> flags: array<atomic<u32>>;
//#else
@group(0) @binding(1) var<storage, read> a_in: array<f32>;
@group(0) @binding(2) var<storage, read_write> a_out: array<f32>;
@group(0) @binding(3) var<storage, read_write> flags: array<atomic<u32>>;
//#endif
//#if COLS
@group(0) @binding(4) var<storage, read_write> v: array<f32>;
//#endif

// The partner of index i in round r of the circle ordering over m (even) slots; slot m−1 is fixed.
fn partner(r: u32, i: u32) -> u32 {
    let h = u.m - 1u;
    if (i == h) { return r; }
    if (i == r) { return h; }
    return (2u * r + h - i % h) % h;
}

// (c, s) of the pair {p, q} (p < q) from a_in; (1, 0) when the pair is padding or below the thresholds.
fn rotation(base: u32, p: u32, q: u32, abs_thr: f32) -> vec2<f32> {
    let n = u.n;
    if (q >= n) { return vec2<f32>(1.0, 0.0); }
    let apq = a_in[base + p * n + q];
    let app = a_in[base + p * n + p];
    let aqq = a_in[base + q * n + q];
    let rel = max(u.skip, f32(n) * 5.96e-8);
    if (!(abs(apq) > rel * sqrt(abs(app * aqq)) && abs(apq) > max(abs_thr, 1e-30))) { return vec2<f32>(1.0, 0.0); }
    let tau = (aqq - app) / (2.0 * apq);
    var t = select(-1.0, 1.0, tau >= 0.0) / (abs(tau) + sqrt(1.0 + tau * tau));
    if (abs(tau) > 1e18) { t = 0.5 / tau; }
    let c = inverseSqrt(1.0 + t * t);
    return vec2<f32>(c, t * c);
}

//#if CHECK
var<workgroup> red_off: array<f32, 256>;
var<workgroup> red_tot: array<f32, 256>;
var<workgroup> finished: u32;

@compute @workgroup_size(256, 1, 1)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let n = u.n;
    let base = wg.x * n * n;
    let f = wg.x * 4u;
    // A finished matrix skips the check; the flag goes through workgroup memory so the return is uniform (an
    // atomic load is not, and the barriers below need uniform control flow).
    if (li == 0u) { finished = atomicLoad(&flags[f]); }
    if (workgroupUniformLoad(&finished) == 1u) { return; }
    var off = 0.0;
    var tot = 0.0;
    for (var i = li; i < n * n; i += 256u) {
        let x = a_in[base + i];
        tot += x * x;
        if (i / n != i % n) { off += x * x; }
    }
    red_off[li] = off;
    red_tot[li] = tot;
    workgroupBarrier();
    for (var w = 128u; w > 0u; w >>= 1u) {
        if (li < w) {
            red_off[li] += red_off[li + w];
            red_tot[li] += red_tot[li + w];
        }
        workgroupBarrier();
    }
    if (li == 0u) {
        let idle = u.sweep > 0u && atomicLoad(&flags[f + 1u]) == 0u;
        if (red_off[0] <= u.tol * u.tol * red_tot[0] || idle) { atomicStore(&flags[f], 1u); }
        atomicStore(&flags[f + 1u], 0u);
        let thr = max(u.tol / f32(n), select(0.0, 4.0 * 5.96e-8, u.warm == 1u)) * sqrt(red_tot[0]);
        atomicStore(&flags[f + 3u], bitcast<u32>(thr));
    }
}
//#endif

//#if ROWS
// Row i of JᵀA: row p ← c·row p − s·row q, row q ← s·row p + c·row q. A finished matrix is copied through, so
// the result's buffer does not depend on when it finished.
@compute @workgroup_size(256, 1, 1)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let n = u.n;
    let e = gid.x;
    if (e >= n * n) { return; }
    let b = gid.y;
    let base = b * n * n;
    let i = e / n;
    let j = e % n;
    let x = a_in[base + e];
    if (atomicLoad(&flags[b * 4u]) == 1u) { a_out[base + e] = x; return; }
    let k = partner(u.round, i);
    let cs = rotation(base, min(i, k), max(i, k), bitcast<f32>(atomicLoad(&flags[b * 4u + 3u])));
    var out = x;
    if (cs.y != 0.0) {
        let y = a_in[base + k * n + j];
        out = select(cs.y * y + cs.x * x, cs.x * x - cs.y * y, i < k);
    }
    a_out[base + e] = out;
}
//#endif

//#if COLS
// Columns p, q of row i: (A J)[i][p] = c·x − s·y, (A J)[i][q] = s·x + c·y; likewise V.
@compute @workgroup_size(256, 1, 1)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let n = u.n;
    let pairs = u.m / 2u;
    let e = gid.x;
    if (e >= n * pairs) { return; }
    let b = gid.y;
    if (atomicLoad(&flags[b * 4u]) == 1u) { return; }
    let base = b * n * n;
    let row = e / pairs;
    let slot = e % pairs;
    // The slot-th pair of this round: (h, r) for slot 0, else ((r + slot) % h, (r + h − slot) % h).
    let h = u.m - 1u;
    var p = h;
    var q = u.round;
    if (slot != 0u) {
        p = (u.round + slot) % h;
        q = (u.round + h - slot) % h;
    }
    let lo = min(p, q);
    let hi = max(p, q);
    let cs = rotation(base, lo, hi, bitcast<f32>(atomicLoad(&flags[b * 4u + 3u])));
    if (cs.y == 0.0) { return; }
    if (row == 0u) { atomicStore(&flags[b * 4u + 1u], 1u); }
    let x = a_out[base + row * n + lo];
    let y = a_out[base + row * n + hi];
    a_out[base + row * n + lo] = cs.x * x - cs.y * y;
    a_out[base + row * n + hi] = cs.y * x + cs.x * y;
    let vx = v[base + row * n + lo];
    let vy = v[base + row * n + hi];
    v[base + row * n + lo] = cs.x * vx - cs.y * vy;
    v[base + row * n + hi] = cs.y * vx + cs.x * vy;
}
//#endif
