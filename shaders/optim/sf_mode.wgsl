// Schedule-Free mode switches and evaluation point (docs/optimizers.md §8.1): p ← lerp(p, z, w) with
// w = 1 − 1/β (train → eval, y → x) or w = 1 − β (eval → train); with TO_OUT the result goes to `out` instead,
// leaving the parameters untouched (the evaluation point of a model in training).
struct U { chunks: u32, groups_x: u32, w: f32, _p: u32 }
@group(0) @binding(0) var<uniform> u: U;
@group(0) @binding(1) var<storage, read> table: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read> z: array<{{T}}>;
//#if TO_OUT
@group(0) @binding(3) var<storage, read> param: array<{{T}}>;
@group(0) @binding(4) var<storage, read_write> out: array<{{T}}>;
//#else
@group(0) @binding(3) var<storage, read_write> param: array<{{T}}>;
//#endif

@compute @workgroup_size({{WG}}, 1, 1)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let c = wg.y * u.groups_x + wg.x;
    if (c >= u.chunks) { return; }
    let ch = table[c];
    for (var i = li; i < ch.w; i += {{WG}}u) {
        let x = mix(param[ch.x + i], z[ch.z + i], u.w);
//#if TO_OUT
        out[ch.z + i] = x;
//#else
        param[ch.x + i] = x;
//#endif
    }
}
