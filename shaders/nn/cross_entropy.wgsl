// Softmax cross-entropy over rows of logits [N, V] with integer targets: per-row loss and, in the same pass,
// the gradient of the mean loss, (softmax − onehot)/N; then the mean of the row losses by one workgroup
// (fixed tree order: deterministic).
struct U { n: u32, v: u32, x_off: u32, o_off: u32, grad: u32, _a: u32, _b: u32, _c: u32 }
@group(0) @binding(0) var<uniform> u: U;

fn linear_id(gid: vec3<u32>, nw: vec3<u32>) -> u32 { return gid.x + gid.y * nw.x * 64u; }

@group(0) @binding(1) var<storage, read> logits: array<f32>;
@group(0) @binding(2) var<storage, read> targets: array<u32>;
@group(0) @binding(3) var<storage, read_write> row_loss: array<f32>;
@group(0) @binding(4) var<storage, read_write> dlogits: array<f32>;

@compute @workgroup_size(64)
fn rows(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>) {
    let r = linear_id(gid, nw);
    if (r >= u.n) { return; }
    let base = u.x_off + r * u.v;
    var m = -3.0e38;
    for (var j = 0u; j < u.v; j++) { m = max(m, logits[base + j]); }
    var s = 0.0;
    for (var j = 0u; j < u.v; j++) { s += exp(logits[base + j] - m); }
    let t = min(targets[r], u.v - 1u);
    row_loss[r] = m + log(s) - logits[base + t];
    if (u.grad != 0u) {
        let inv_n = 1.0 / f32(u.n);
        let inv_s = 1.0 / s;
        for (var j = 0u; j < u.v; j++) {
            let p = exp(logits[base + j] - m) * inv_s;
            dlogits[r * u.v + j] = (p - select(0.0, 1.0, j == t)) * inv_n;
        }
    }
}

@group(0) @binding(1) var<storage, read> losses: array<f32>;
@group(0) @binding(2) var<storage, read_write> mean_out: array<f32>;
var<workgroup> part: array<f32, 256>;

@compute @workgroup_size(256)
fn mean(@builtin(local_invocation_id) lid: vec3<u32>) {
    var s = 0.0;
    for (var i = lid.x; i < u.n; i += 256u) { s += losses[i]; }
    part[lid.x] = s;
    workgroupBarrier();
    for (var w = 128u; w > 0u; w >>= 1u) {
        if (lid.x < w) { part[lid.x] += part[lid.x + w]; }
        workgroupBarrier();
    }
    if (lid.x == 0u) { mean_out[u.o_off] = part[0] / f32(u.n); }
}
