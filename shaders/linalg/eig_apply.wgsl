// W = V · diag(f(λ)) with f(λ) = pow(max(λ, floor) + eps, power): the left factor of V f(Λ) Vᵀ. Two passes:
// WEIGHTS computes f once per eigenvalue (b·n of them); the other scales V's columns on a per-matrix grid (matrix
// wg.z, row wg.y, 64 invocations of W columns each; VT = vec4<f32>, W = 4 where n is a multiple of 4), so no
// element divides its index or takes a pow.
struct U { n: u32, total: u32, floor: f32, eps: f32, power: f32, _a: u32, _b: u32, _c: u32 }
@group(0) @binding(0) var<uniform> u: U;
//#if WEIGHTS
@group(0) @binding(1) var<storage, read> vals: array<f32>;
@group(0) @binding(4) var<storage, read_write> f: array<f32>;

@compute @workgroup_size(64, 1, 1)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    if (i < u.total) { f[i] = pow(max(vals[i], u.floor) + u.eps, u.power); }
}
//#else
@group(0) @binding(2) var<storage, read> vecs: array<{{VT}}>;
@group(0) @binding(3) var<storage, read_write> w: array<{{VT}}>;
@group(0) @binding(4) var<storage, read> f: array<{{VT}}>;

@compute @workgroup_size(64, 1, 1)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let nw = u.n / {{W}}u;
    let c = wg.x * 64u + li;
    if (c >= nw) { return; }
    let i = (wg.z * u.n + wg.y) * nw + c;
    w[i] = vecs[i] * f[wg.z * nw + c];
}
//#endif
