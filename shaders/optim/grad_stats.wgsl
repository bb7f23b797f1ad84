// Per-chunk gradient statistics (T = f32 or vec4<f32>, U the matching u32 type) for the step prologue: partial[chunk] = (Σ g², 1 if any g is NaN/Inf).
// One workgroup per chunk of the bucket's chunk table; fixed reduction order (deterministic).
struct U { chunks: u32, out_base: u32, groups_x: u32, _p: u32 }
@group(0) @binding(0) var<uniform> u: U;
@group(0) @binding(1) var<storage, read> table: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read> grad: array<{{T}}>;
@group(0) @binding(3) var<storage, read_write> partial: array<vec2<f32>>;

var<workgroup> ss: array<f32, {{WG}}>;
var<workgroup> bad: array<f32, {{WG}}>;

@compute @workgroup_size({{WG}}, 1, 1)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let c = wg.y * u.groups_x + wg.x;
    var s = 0.0;
    var b = 0.0;
    if (c < u.chunks) {
        let ch = table[c];
        for (var i = li; i < ch.w; i += {{WG}}u) {
            let g = grad[ch.y + i];
            // NaN/Inf by exponent bits: robust to drivers that assume finite math.
            if (any((bitcast<{{U}}>(g) & {{U}}(0x7f800000u)) == {{U}}(0x7f800000u))) { b = 1.0; } else { s += {{SQ}}; }
        }
    }
    ss[li] = s;
    bad[li] = b;
    workgroupBarrier();
    for (var w = {{WG}}u / 2u; w > 0u; w >>= 1u) {
        if (li < w) { ss[li] += ss[li + w]; bad[li] = max(bad[li], bad[li + w]); }
        workgroupBarrier();
    }
    if (li == 0u && c < u.chunks) { partial[u.out_base + c] = vec2<f32>(ss[0], bad[0]); }
}
