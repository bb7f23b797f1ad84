// The tridiagonal eigensolver's Q = H₀·H₁·…·H_{n−3} (docs/optimizers.md §11.4) in blocks of NB reflectors, each in
// the compact-WY form H_{k0}⋯H_{k0+NB−1} = I − V·T·Vᵀ, so that Q is built by matmuls (on the host side) rather
// than by rank-2 passes in one workgroup. Reflector k = I − β_k·v·vᵀ is stored by `reduce` in row k of the padded
// work matrix (v from column k+1 on) with β_k in aux; one workgroup per (block, matrix):
//   `V`:    V of the block, n × NB, reflector k0+j's vector in column j with rows ≤ k0+j zero (columns past the
//           last reflector all zero), and the block's rows of Z's start, the identity;
//   `TMAT`: T from β and G = VᵀV (a matmul of V): T_jj = β_j, T[0:j, j] = −β_j·T[0:j, 0:j]·G[0:j, j].
struct U { n: u32, np: u32, _a: u32, _b: u32 }
@group(0) @binding(0) var<uniform> u: U;
//#if V
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read_write> v: array<f32>;
@group(0) @binding(3) var<storage, read_write> z: array<f32>;
//#endif
//#if TMAT
@group(0) @binding(1) var<storage, read> aux: array<f32>;
@group(0) @binding(2) var<storage, read> gram: array<f32>;
@group(0) @binding(3) var<storage, read_write> t: array<f32>;
var<workgroup> tt: array<f32, 1024>;
//#endif

const NB: u32 = 32u;

// Reflectors k = 0…n−3 (none for n < 3).
fn reflectors() -> u32 { return select(0u, u.n - 2u, u.n >= 3u); }

@compute @workgroup_size(64, 1, 1)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
    let n = u.n;
    let np = u.np;
    let k0 = wg.x * NB;
    let block = wg.x * nw.y + wg.y;     // [blocks, matrices] order
//#if V
    let base = wg.y * n * np;
    // Z starts as the identity; block p writes rows k0+1…k0+NB (the first block from row 0, the last to n − 1).
    let lo = select(k0 + 1u, 0u, wg.x == 0u);
    let hi = select(min(k0 + NB + 1u, n), n, wg.x + 1u == nw.x);
    for (var r = lo; r < hi; r++) {
        for (var c = li; c < np; c += 64u) { z[base + r * np + c] = select(0.0, 1.0, r == c); }
    }
    for (var e = li; e < n * NB; e += 64u) {
        let i = e / NB;
        let k = k0 + e % NB;
        var x = 0.0;
        if (k < reflectors() && i > k) { x = a[base + k * np + i]; }
        v[block * n * NB + e] = x;
    }
//#endif
//#if TMAT
    let b0 = wg.y * (3u * n + 2u * np) + 2u * n;
    for (var e = li; e < NB * NB; e += 64u) { tt[e] = 0.0; }
    workgroupBarrier();
    for (var j = 0u; j < NB; j++) {
        let k = k0 + j;
        var beta = 0.0;
        if (k < reflectors()) { beta = aux[b0 + k]; }
        if (li < j) {
            var s = 0.0;
            for (var q = li; q < j; q++) { s += tt[li * NB + q] * gram[block * NB * NB + q * NB + j]; }
            tt[li * NB + j] = -beta * s;
        }
        if (li == j) { tt[j * NB + j] = beta; }
        workgroupBarrier();
    }
    for (var e = li; e < NB * NB; e += 64u) { t[block * NB * NB + e] = tt[e]; }
//#endif
}
