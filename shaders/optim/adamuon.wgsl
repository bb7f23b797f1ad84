// AdaMuon's second-moment normalization of the polar factor (official code, docs/optimizers.md §3.2), one
// workgroup per matrix: V ← μV + (1−μ)O², Ô = O/(sqrt(V) + eps), Ô ← Ô·0.2·sqrt(min·max of the parameter's
// dims)/(‖Ô‖_F + eps); or the simplified form of §3.3. Rewrites the polar output in place. Skipped with the step
// on a non-finite gradient.
struct U { size: u32, o_off: u32, group: u32, simplified: u32, eps: f32, minmax: f32, beta2: f32, scale: f32 }
@group(0) @binding(0) var<uniform> u: U;
@group(0) @binding(1) var<storage, read> scalars: array<f32>;
@group(0) @binding(2) var<storage, read_write> o: array<f32>;
@group(0) @binding(3) var<storage, read_write> v: array<f32>;

const WG: u32 = 64u;
var<workgroup> red: array<f32, WG>;

@compute @workgroup_size(64, 1, 1)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    if (scalars[0] == 0.0) { return; }
    let mu = scalars[8u + 16u * u.group + 1u];
    if (u.simplified == 1u) {
        // O·scale (Keller), V ← β2 V + (1−β2) O², u = O / (sqrt(V / (1 − β2^t)) + eps); no rescale (§3.3).
        let t = scalars[8u + 16u * u.group + 4u];
        let bc2 = 1.0 - pow(u.beta2, t);
        for (var i = li; i < u.size; i += WG) {
            let idx = u.o_off + wg.x * u.size + i;
            let x = o[idx] * u.scale;
            let vv = u.beta2 * v[idx] + (1.0 - u.beta2) * x * x;
            v[idx] = vv;
            o[idx] = x / (sqrt(vv / bc2) + u.eps);
        }
        return;
    }
    let base = u.o_off + wg.x * u.size;
    var ss = 0.0;
    for (var i = li; i < u.size; i += WG) {
        let x = o[base + i];
        let vv = mu * v[base + i] + (1.0 - mu) * x * x;
        v[base + i] = vv;
        let y = x / (sqrt(vv) + u.eps);
        o[base + i] = y;
        ss += y * y;
    }
    red[li] = ss;
    workgroupBarrier();
    for (var w = WG / 2u; w > 0u; w >>= 1u) {
        if (li < w) { red[li] += red[li + w]; }
        workgroupBarrier();
    }
    let factor = 0.2 * sqrt(u.minmax) / (sqrt(red[0]) + u.eps);
    for (var i = li; i < u.size; i += WG) { o[base + i] *= factor; }
}
