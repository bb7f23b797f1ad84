// Householder QR of each m×n matrix (m ≥ n) of a stack, one workgroup per matrix (docs/optimizers.md §11.5).
// `w` holds a work copy of A; on return Q (m×n, thin) and R (n×n) with a non-negative diagonal.
struct U { m: u32, n: u32, q_off: u32, r_off: u32 }
@group(0) @binding(0) var<uniform> u: U;
@group(0) @binding(1) var<storage, read_write> w: array<f32>;
@group(0) @binding(2) var<storage, read_write> q: array<f32>;
@group(0) @binding(3) var<storage, read_write> r: array<f32>;

const WG: u32 = 256u;
var<workgroup> red: array<f32, 256>;
var<workgroup> tau: array<f32, {{N}}>;
var<workgroup> scale: f32;

@compute @workgroup_size(256, 1, 1)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let m = u.m;
    let n = u.n;
    let base = wg.x * m * n;
    let qb = u.q_off + base;
    for (var k = 0u; k < n; k++) {
        var s = 0.0;
        for (var i = k + 1u + li; i < m; i += WG) { let x = w[base + i * n + k]; s += x * x; }
        red[li] = s;
        workgroupBarrier();
        for (var h = 128u; h > 0u; h >>= 1u) {
            if (li < h) { red[li] += red[li + h]; }
            workgroupBarrier();
        }
        if (li == 0u) {
            let alpha = w[base + k * n + k];
            let sigma = red[0];
            if (sigma == 0.0) {
                tau[k] = 0.0;          // already upper triangular in this column: H = I
                scale = 0.0;
            } else {
                let nrm = sqrt(alpha * alpha + sigma);
                let beta = select(nrm, -nrm, alpha >= 0.0);
                tau[k] = (beta - alpha) / beta;
                scale = 1.0 / (alpha - beta);
                w[base + k * n + k] = beta;
            }
        }
        storageBarrier();
        let sc = workgroupUniformLoad(&scale);
        // v = (1, x[k+1:] / (alpha − beta)) stored below the diagonal.
        for (var i = k + 1u + li; i < m; i += WG) { w[base + i * n + k] *= sc; }
        storageBarrier();
        let t = tau[k];
        // Trailing columns: A ← (I − τ v vᵀ) A.
        for (var j = k + 1u + li; j < n; j += WG) {
            var d = w[base + k * n + j];
            for (var i = k + 1u; i < m; i++) { d += w[base + i * n + k] * w[base + i * n + j]; }
            d *= t;
            w[base + k * n + j] -= d;
            for (var i = k + 1u; i < m; i++) { w[base + i * n + j] -= d * w[base + i * n + k]; }
        }
        storageBarrier();
    }
    // Q = H_0 ⋯ H_{n−1} [I; 0], accumulated backwards.
    for (var i = li; i < m * n; i += WG) { q[qb + i] = select(0.0, 1.0, i / n == i % n); }
    storageBarrier();
    for (var kk = 0u; kk < n; kk++) {
        let k = n - 1u - kk;
        let t = tau[k];
        // Columns j < k of Q are still e_j, zero in rows ≥ k: H_k leaves them alone.
        for (var j = k + li; j < n; j += WG) {
            var d = q[qb + k * n + j];
            for (var i = k + 1u; i < m; i++) { d += w[base + i * n + k] * q[qb + i * n + j]; }
            d *= t;
            q[qb + k * n + j] -= d;
            for (var i = k + 1u; i < m; i++) { q[qb + i * n + j] -= d * w[base + i * n + k]; }
        }
        storageBarrier();
    }
    // R from the upper triangle; flip signs so diag(R) ≥ 0 (then Q R is the unique thin QR of a full-rank A).
    let rbase = u.r_off + wg.x * n * n;
    for (var i = li; i < n * n; i += WG) {
        let row = i / n;
        let col = i % n;
        let sgn = select(1.0, -1.0, w[base + row * n + row] < 0.0);
        r[rbase + i] = select(0.0, sgn * w[base + row * n + col], col >= row);
    }
    for (var i = li; i < m * n; i += WG) {
        let col = i % n;
        if (w[base + col * n + col] < 0.0) { q[qb + i] = -q[qb + i]; }
    }
}
