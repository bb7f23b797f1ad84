// K-FAC family helpers (optimizers.md §10): guarded EMA of Kronecker factors, division by the (corrected)
// eigenvalues in the Kronecker eigenbasis, Adam in that basis (KFAC-SOAP), per-site dot products and the KL-clip
// coefficient.
struct U {
    n: u32, rows: u32, cols: u32, a_off: u32,
    b_off: u32, o_off: u32, mode: u32, sites: u32,
    beta: f32, scale: f32, damping: f32, eps: f32,
    kl_clip: f32, beta2: f32, _p0: f32, _p1: f32,
}
@group(0) @binding(0) var<uniform> u: U;

fn linear_id(gid: vec3<u32>, nw: vec3<u32>) -> u32 { return gid.x + gid.y * nw.x * 64u; }

// F ← β·F + (1 − β)·scale·F_new, unless F_new had a non-finite entry (flag[0] = 0, see ReduceOp::AllFinite):
// then F stays as it was.
@group(0) @binding(1) var<storage, read> f_new: array<f32>;
@group(0) @binding(2) var<storage, read> flag: array<f32>;
@group(0) @binding(3) var<storage, read_write> f: array<f32>;

@compute @workgroup_size(64)
fn ema(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>) {
    let i = linear_id(gid, nw);
    if (i >= u.n || flag[0] < 1.0) { return; }
    f[u.o_off + i] = u.beta * f[u.o_off + i] + (1.0 - u.beta) * u.scale * f_new[u.a_off + i];
}

// mode 0 (K-FAC): T[i, j] /= λ_G[i]·λ_A[j] + damping, eigenvalues below 1e-10 taken as 0;
// mode 1 (EKFAC): T[i, j] /= S[i, j] + damping  (a: λ_G or S, b: λ_A).
@group(0) @binding(1) var<storage, read> lam_g: array<f32>;
@group(0) @binding(2) var<storage, read> lam_a: array<f32>;
@group(0) @binding(3) var<storage, read_write> t: array<f32>;

@compute @workgroup_size(64)
fn divide(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>) {
    let i = linear_id(gid, nw);
    if (i >= u.rows * u.cols) { return; }
    var d: f32;
    if (u.mode == 0u) {
        let lg = lam_g[u.a_off + i / u.cols];
        let la = lam_a[u.b_off + i % u.cols];
        d = select(0.0, lg, lg > 1e-10) * select(0.0, la, la > 1e-10);
    } else {
        d = lam_g[u.a_off + i];
    }
    t[u.o_off + i] = t[u.o_off + i] / (d + u.damping);
}

// KFAC-SOAP: V ← β2·V + (1 − β2)·P_g², T ← (P_m / bc1) / (sqrt(V / bc2) + eps), with P_g / P_m the gradient and the
// momentum in the eigenbasis (a: P_g, o: T holding P_m on entry); bc1 = params[1], bc2 = params[2].
@group(0) @binding(1) var<storage, read> pg: array<f32>;
@group(0) @binding(2) var<storage, read> sparams: array<f32>;
@group(0) @binding(3) var<storage, read_write> v: array<f32>;
@group(0) @binding(4) var<storage, read_write> pm: array<f32>;

@compute @workgroup_size(64)
fn adam_basis(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>) {
    let i = linear_id(gid, nw);
    if (i >= u.n) { return; }
    let g = pg[u.a_off + i];
    let vi = u.beta2 * v[u.b_off + i] + (1.0 - u.beta2) * g * g;
    v[u.b_off + i] = vi;
    pm[u.o_off + i] = (pm[u.o_off + i] / sparams[1]) / (sqrt(vi / sparams[2]) + u.eps);
}

// x ← x² (EKFAC's squared projections)
@group(0) @binding(1) var<storage, read_write> sq: array<f32>;

@compute @workgroup_size(64)
fn square(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>) {
    let i = linear_id(gid, nw);
    if (i >= u.n) { return; }
    sq[i] = sq[i] * sq[i];
}

// dots[site] = Σ x·y over n values, one workgroup (fixed tree order).
@group(0) @binding(1) var<storage, read> dx: array<f32>;
@group(0) @binding(2) var<storage, read> dy: array<f32>;
@group(0) @binding(3) var<storage, read_write> dots: array<f32>;
var<workgroup> part: array<f32, 256>;

@compute @workgroup_size(256)
fn dot(@builtin(local_invocation_id) lid: vec3<u32>) {
    var s = 0.0;
    for (var i = lid.x; i < u.n; i += 256u) { s += dx[u.a_off + i] * dy[u.b_off + i]; }
    part[lid.x] = s;
    workgroupBarrier();
    for (var w = 128u; w > 0u; w >>= 1u) {
        if (lid.x < w) { part[lid.x] += part[lid.x + w]; }
        workgroupBarrier();
    }
    if (lid.x == 0u) { dots[u.o_off] = part[0]; }
}

// ν = min(1, sqrt(kl_clip / (lr²·Σ_sites dots))) with lr = params[0]; written to nu[0].
@group(0) @binding(1) var<storage, read> kdots: array<f32>;
@group(0) @binding(2) var<storage, read> params: array<f32>;
@group(0) @binding(3) var<storage, read_write> nu: array<f32>;

@compute @workgroup_size(1)
fn kl_clip() {
    var s = 0.0;
    for (var k = 0u; k < u.sites; k++) { s += kdots[k]; }
    let lr = params[0];
    let vg = lr * lr * s;
    nu[0] = select(1.0, min(1.0, sqrt(u.kl_clip / vg)), vg > 0.0);
}
