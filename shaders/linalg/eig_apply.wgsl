// W = V · diag(f(λ)) with f(λ) = pow(max(λ, floor) + eps, power): the left factor of V f(Λ) Vᵀ.
struct U { n: u32, total: u32, floor: f32, eps: f32, power: f32, _a: u32, _b: u32, _c: u32 }
@group(0) @binding(0) var<uniform> u: U;
@group(0) @binding(1) var<storage, read> vals: array<f32>;
@group(0) @binding(2) var<storage, read> vecs: array<f32>;
@group(0) @binding(3) var<storage, read_write> w: array<f32>;

@compute @workgroup_size(256, 1, 1)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    if (i >= u.total) { return; }
    let batch = i / (u.n * u.n);
    let col = i % u.n;
    let lam = vals[batch * u.n + col];
    w[i] = vecs[i] * pow(max(lam, u.floor) + u.eps, u.power);
}
