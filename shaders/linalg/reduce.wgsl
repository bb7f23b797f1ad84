// Deterministic tree reduction of `segments` segments of `count` strided elements each.
// Pass 1 (FINAL=0) writes one partial per (chunk, segment); pass 2 (FINAL=1, READ_PARTIALS=1) reduces them.
// Ops: 0 sum, 1 sum of squares, 2 max |x|, 3 L1, 4 non-finite count (as max of an indicator).
// VEC4 (contiguous segments, stride 1): the first pass reads vec4s, count, off, seg_stride and chunk_len then
// counted in vec4s; each vec4's components are combined pairwise before the lane's running value.
struct U {
    count: u32, stride: u32, seg_stride: u32, off: u32,
    chunks: u32, chunk_len: u32, out_off: u32, _p: u32,
}
@group(0) @binding(0) var<uniform> u: U;
//#if VEC4
@group(0) @binding(1) var<storage, read> src: array<vec4<f32>>;
//#else
@group(0) @binding(1) var<storage, read> src: array<f32>;
//#endif
@group(0) @binding(2) var<storage, read_write> dst: array<f32>;

var<workgroup> part: array<f32, 256>;

fn load(v: f32) -> f32 {
//#if READ_PARTIALS
    return v;
//#else
    switch {{OP}} {
        case 1u: { return v * v; }
        case 2u, 3u: { return abs(v); }
        case 4u: { return select(0.0, 1.0, (bitcast<u32>(v) & 0x7f800000u) == 0x7f800000u); }
        default: { return v; }
    }
//#endif
}

fn combine(p: f32, q: f32) -> f32 {
    switch {{OP}} {
        case 2u, 4u: { return max(p, q); }
        default: { return p + q; }
    }
}

fn finish(v: f32) -> f32 {
//#if FINAL
    switch {{POST}} {
        case 1u: { return sqrt(v); }
        case 2u: { return 1.0 - min(v, 1.0); }
        default: { return v; }
    }
//#else
    return v;
//#endif
}

@compute @workgroup_size(256, 1, 1)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let seg = wg.y;
    let chunk = wg.x;
    let begin = chunk * u.chunk_len;
    let end = min(begin + u.chunk_len, u.count);
    var acc = 0.0;
    for (var i = begin + li; i < end; i += 256u) {
//#if VEC4
        let v = src[u.off + seg * u.seg_stride + i];
        acc = combine(acc, combine(combine(load(v.x), load(v.y)), combine(load(v.z), load(v.w))));
//#else
        acc = combine(acc, load(src[u.off + seg * u.seg_stride + i * u.stride]));
//#endif
    }
    part[li] = acc;
    workgroupBarrier();
    for (var w = 128u; w > 0u; w >>= 1u) {
        if (li < w) { part[li] = combine(part[li], part[li + w]); }
        workgroupBarrier();
    }
    if (li == 0u) { dst[u.out_off + seg * u.chunks + chunk] = finish(part[0]); }
}
