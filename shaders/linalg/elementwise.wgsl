// Batched elementwise: out = s_b * (a*x + d*I) + bb*y, where s_b = pow(max(scal[b]*mult + add, floor), power)
// is a per-matrix scalar computed on the device (norms, traces) and I is the identity of each m×n matrix.
// T is vec4<f32> where the host found every count and offset a multiple of 4, no diagonal term and f32 (then
// total, per and the offsets count vec4s), else f32.
struct U {
    total: u32, per: u32, cols: u32, rows: u32,
    x_off: u32, y_off: u32, o_off: u32, s_off: u32,
    a: f32, d: f32, bb: f32, mult: f32,
    add: f32, floor: f32, power: f32, groups_x: u32,
}
@group(0) @binding(0) var<uniform> u: U;
@group(0) @binding(1) var<storage, read_write> o: array<{{T}}>;
//#if HAS_X
@group(0) @binding({{X_BIND}}) var<storage, read> x: array<{{T}}>;
//#endif
//#if HAS_Y
@group(0) @binding({{Y_BIND}}) var<storage, read> y: array<{{T}}>;
//#endif
//#if HAS_S
@group(0) @binding({{S_BIND}}) var<storage, read> scal: array<f32>;
//#endif

fn rnd(v: {{T}}) -> {{T}} {
//#if ROUND_BF16
    let bits = bitcast<u32>(v);
    return bitcast<f32>((bits + 0x7fffu + ((bits >> 16u) & 1u)) & 0xffff0000u);
//#else
//#if ROUND_F16
    // Round to f16's 10 mantissa bits (nearest even) and clamp to its range; done on the bit pattern
    // because drivers fold f32(f16(x)) away.
    let bits = bitcast<u32>(v);
    let r = bitcast<f32>((bits + 0xfffu + ((bits >> 13u) & 1u)) & 0xffffe000u);
    return clamp(r, -65504.0, 65504.0);
//#else
    return v;
//#endif
//#endif
}

@compute @workgroup_size(256, 1, 1)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let i = (wg.y * u.groups_x + wg.x) * 256u + li;
    if (i >= u.total) { return; }
    var v = {{T}}(0.0);
//#if HAS_X
    v = u.a * x[u.x_off + i];
//#endif
//#if X_INPLACE
    v = u.a * o[u.o_off + i];
//#endif
    // Integer division is the costliest thing here on CPU adapters (scalar per lane): only when it is needed.
    if (u.d != 0.0) {
        let within = i % u.per;
        if (within / u.cols == within % u.cols) { v += u.d; }
    }
//#if HAS_S
    v *= pow(max(scal[u.s_off + i / u.per] * u.mult + u.add, u.floor), u.power);
//#endif
//#if HAS_Y
    v += u.bb * y[u.y_off + i];
//#endif
//#if Y_INPLACE
    v += u.bb * o[u.o_off + i];
//#endif
    o[u.o_off + i] = rnd(v);
}
