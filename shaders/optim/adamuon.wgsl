// AdaMuon's second-moment normalization of the polar factor (official code, docs/optimizers.md §3.2):
// V ← μV + (1−μ)O², Ô = O/(sqrt(V) + eps), Ô ← Ô·0.2·sqrt(min·max of the parameter's dims)/(‖Ô‖_F + eps); or the
// simplified form of §3.3. Rewrites the polar output in place. Skipped with the step on a non-finite gradient.
// Workgroups take blocks of `block` values of a matrix (x: blocks, y: matrices). The official form runs two passes:
// STATS normalizes by V and stores each block's ‖Ô‖² in `part`; the other totals the matrix's blocks and rescales.
// (One workgroup per matrix took 0.35 ms per GPT-small stack on an H100.)
struct U { size: u32, o_off: u32, group: u32, simplified: u32, eps: f32, minmax: f32, beta2: f32, scale: f32,
           blocks: u32, block: u32, _p1: u32, _p2: u32 }
@group(0) @binding(0) var<uniform> u: U;
@group(0) @binding(1) var<storage, read> scalars: array<f32>;
@group(0) @binding(2) var<storage, read_write> o: array<f32>;
@group(0) @binding(3) var<storage, read_write> v: array<f32>;
@group(0) @binding(4) var<storage, read_write> part: array<f32>;

const WG: u32 = 64u;

//#include "optim/block_sum.wgsl"

@compute @workgroup_size(64, 1, 1)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    if (scalars[0] == 0.0) { return; }
    let mu = scalars[8u + 16u * u.group + 1u];
    let base = u.o_off + wg.y * u.size;
    let first = wg.x * u.block;
    let end = min(first + u.block, u.size);
//#if STATS
    if (u.simplified == 1u) {
        // O·scale (Keller), V ← β2 V + (1−β2) O², u = O / (sqrt(V / (1 − β2^t)) + eps); no rescale (§3.3).
        let t = scalars[8u + 16u * u.group + 4u];
        let bc2 = 1.0 - pow(u.beta2, t);
        for (var i = first + li; i < end; i += WG) {
            let idx = base + i;
            let x = o[idx] * u.scale;
            let vv = u.beta2 * v[idx] + (1.0 - u.beta2) * x * x;
            v[idx] = vv;
            o[idx] = x / (sqrt(vv / bc2) + u.eps);
        }
        return;
    }
    var ss = 0.0;
    for (var i = first + li; i < end; i += WG) {
        let x = o[base + i];
        let vv = mu * v[base + i] + (1.0 - mu) * x * x;
        v[base + i] = vv;
        let y = x / (sqrt(vv) + u.eps);
        o[base + i] = y;
        ss += y * y;
    }
    let total = block_sum(li, vec2<f32>(ss, 0.0)).x;
    if (li == 0u) { part[wg.y * u.blocks + wg.x] = total; }
//#else
    var acc = 0.0;
    for (var b = li; b < u.blocks; b += WG) { acc += part[wg.y * u.blocks + b]; }
    let factor = 0.2 * sqrt(u.minmax) / (sqrt(block_sum(li, vec2<f32>(acc, 0.0)).x) + u.eps);
    for (var i = first + li; i < end; i += WG) { o[base + i] *= factor; }
//#endif
}
