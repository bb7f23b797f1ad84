// Per-chunk gradient statistics for the step prologue (T = f32 or vec4<f32>, U the matching u32 type):
// partial[chunk] = (Σ g², 1 if any g is NaN/Inf, then for ScheduleFree+ buckets Σ |g| and Σ g·(z − x), else 0, 0).
// One workgroup per chunk of the bucket's chunk table; fixed reduction order (deterministic).
struct U { chunks: u32, out_base: u32, groups_x: u32, _p: u32 }
@group(0) @binding(0) var<uniform> u: U;
@group(0) @binding(1) var<storage, read> table: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read> grad: array<{{T}}>;
@group(0) @binding(3) var<storage, read_write> partial: array<vec4<f32>>;
//#if INNER
@group(0) @binding(4) var<storage, read> z: array<{{T}}>;
@group(0) @binding(5) var<storage, read> x: array<{{T}}>;
//#endif

var<workgroup> red: array<vec4<f32>, {{WG}}>;

fn total(v: {{T}}) -> f32 { return {{TOTAL}}; }

@compute @workgroup_size({{WG}}, 1, 1)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let c = wg.y * u.groups_x + wg.x;
    var acc = vec4<f32>(0.0);
    if (c < u.chunks) {
        let ch = table[c];
        for (var i = li; i < ch.w; i += {{WG}}u) {
            let g = grad[ch.y + i];
            // NaN/Inf by exponent bits: robust to drivers that assume finite math.
            if (any((bitcast<{{U}}>(g) & {{U}}(0x7f800000u)) == {{U}}(0x7f800000u))) {
                acc.y = 1.0;
            } else {
                acc.x += total(g * g);
//#if INNER
                acc.z += total(abs(g));
                acc.w += total(g * (z[ch.z + i] - x[ch.z + i]));
//#endif
            }
        }
    }
    red[li] = acc;
    workgroupBarrier();
//#if SERIAL_SUM
    // CPU adapters: one lane sums the lanes' partials in order; every barrier of a tree would switch through all
    // of the workgroup's lanes (llvmpipe runs them as coroutines).
    if (li == 0u && c < u.chunks) {
        var s = red[0];
        for (var l = 1u; l < {{WG}}u; l++) {
            let b = red[l];
            s = vec4<f32>(s.x + b.x, max(s.y, b.y), s.z + b.z, s.w + b.w);
        }
        partial[u.out_base + c] = s;
    }
//#else
    for (var w = {{WG}}u / 2u; w > 0u; w >>= 1u) {
        if (li < w) {
            let a = red[li];
            let b = red[li + w];
            red[li] = vec4<f32>(a.x + b.x, max(a.y, b.y), a.z + b.z, a.w + b.w);
        }
        workgroupBarrier();
    }
    if (li == 0u && c < u.chunks) { partial[u.out_base + c] = red[0]; }
//#endif
}
