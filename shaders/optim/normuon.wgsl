// NorMuon's row normalization of the polar factor (docs/optimizers.md §3.1), one workgroup per normalization group
// (a matrix of the stack; for a convolution each (out, in) kernel of kh rows × kw, as the official code's statistics
// over the last one / two dims of the 4-D tensor): vmean_i = mean_j O_ij², V2_i ← β2·V2_i + (1−β2)·vmean_i, O ← O / (sqrt(V2) + 1e-10) per row, then
// either the official code's ‖O‖_F restoration (O ← O·‖O_before‖_F / (‖O‖_F + 1e-10)) or the paper's RMS-0.2 scale
// (O ← O·0.2·sqrt(m n) / ‖O‖_F). Rewrites the polar output in place. Skipped with the step on a non-finite gradient.
struct U { rows: u32, cols: u32, o_off: u32, v_off: u32, beta2: f32, paper: u32, group: u32, total: u32 }
@group(0) @binding(0) var<uniform> u: U;
@group(0) @binding(1) var<storage, read> scalars: array<f32>;
@group(0) @binding(2) var<storage, read_write> o: array<f32>;
@group(0) @binding(3) var<storage, read_write> v2: array<f32>;

const WG: u32 = 64u;
var<workgroup> red: array<vec2<f32>, WG>;

@compute @workgroup_size(64, 1, 1)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
    let id = wg.x + wg.y * nw.x;
    if (scalars[0] == 0.0 || id >= u.total) { return; }
    let base = u.o_off + id * u.rows * u.cols;
    let vbase = u.v_off + id * u.rows;
    // Per row: update V2 and accumulate ‖O‖² before and after the row scaling.
    var acc = vec2<f32>(0.0);
    for (var r = li; r < u.rows; r += WG) {
        var ss = 0.0;
        for (var c = 0u; c < u.cols; c++) { let x = o[base + r * u.cols + c]; ss += x * x; }
        let v = u.beta2 * v2[vbase + r] + (1.0 - u.beta2) * (ss / f32(u.cols));
        v2[vbase + r] = v;
        let s = 1.0 / (sqrt(v) + 1e-10);
        acc += vec2<f32>(ss, ss * s * s);
    }
    red[li] = acc;
    workgroupBarrier();
    for (var w = WG / 2u; w > 0u; w >>= 1u) {
        if (li < w) { red[li] += red[li + w]; }
        workgroupBarrier();
    }
    let before = sqrt(red[0].x);
    let after = sqrt(red[0].y);
    var factor = before / (after + 1e-10);
    if (u.paper == 1u) { factor = 0.2 * sqrt(f32(u.rows * u.cols)) / after; }
    for (var r = li; r < u.rows; r += WG) {
        let s = factor / (sqrt(v2[vbase + r]) + 1e-10);
        for (var c = 0u; c < u.cols; c++) { o[base + r * u.cols + c] *= s; }
    }
}
