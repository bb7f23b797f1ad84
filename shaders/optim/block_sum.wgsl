// The workgroup's total of one vec2 per lane (WG lanes, a power of two), returned to every lane.
var<workgroup> red: array<vec2<f32>, WG>;

fn block_sum(li: u32, x: vec2<f32>) -> vec2<f32> {
    red[li] = x;
    workgroupBarrier();
    for (var w = WG / 2u; w > 0u; w >>= 1u) {
        if (li < w) { red[li] += red[li + w]; }
        workgroupBarrier();
    }
    return red[0];
}
