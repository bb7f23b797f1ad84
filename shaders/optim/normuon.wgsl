// NorMuon's row normalization of the polar factor (docs/optimizers.md §3.1) per normalization group (a matrix of
// the stack; for a convolution each (out, in) kernel of kh rows × kw, as the official code's statistics over the
// last one / two dims of the 4-D tensor): vmean_i = mean_j O_ij², V2_i ← β2·V2_i + (1−β2)·vmean_i,
// O ← O / (sqrt(V2) + 1e-10) per row, then either the official code's ‖O‖_F restoration
// (O ← O·‖O_before‖_F / (‖O‖_F + 1e-10)) or the paper's RMS-0.2 scale (O ← O·0.2·sqrt(m n) / ‖O‖_F). Rewrites the
// polar output in place. Skipped with the step on a non-finite gradient.
// Two passes over workgroups of WG / LPR rows (x: the group's row blocks, y and z: the groups), LPR lanes per row
// (CPU adapters 1: a lane walks its row; GPUs 16, so a row's loads coalesce): STATS updates V2 and stores each
// block's (‖O‖², ‖O after‖²) in `part`; the other pass totals the group's blocks and scales. (One workgroup per
// group took 0.14 ms per GPT-small stack on an H100: 4 workgroups on the device.)
struct U { rows: u32, cols: u32, o_off: u32, v_off: u32, beta2: f32, paper: u32, group: u32, total: u32,
           blocks: u32, _p0: u32, _p1: u32, _p2: u32 }
@group(0) @binding(0) var<uniform> u: U;
@group(0) @binding(1) var<storage, read> scalars: array<f32>;
@group(0) @binding(2) var<storage, read_write> o: array<f32>;
@group(0) @binding(3) var<storage, read_write> v2: array<f32>;
@group(0) @binding(4) var<storage, read_write> part: array<vec2<f32>>;

const WG: u32 = 64u;
const LPR: u32 = {{LPR}}u;
var<workgroup> row_red: array<f32, WG>;

// The sum of x over the LPR lanes of each row, for every lane of the row.
fn row_sum(li: u32, x: f32) -> f32 {
    row_red[li] = x;
    workgroupBarrier();
    for (var w = LPR / 2u; w > 0u; w >>= 1u) {
        if (li % LPR < w) { row_red[li] += row_red[li + w]; }
        workgroupBarrier();
    }
    return row_red[li - li % LPR];
}

//#include "optim/block_sum.wgsl"

@compute @workgroup_size(64, 1, 1)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
    let id = wg.y + wg.z * nw.y;
    if (scalars[0] == 0.0 || id >= u.total) { return; }
    let lane = li % LPR;
    // Row blocks wg.x, wg.x + nw.x, …: at most 65,535 workgroups per group.
    let stride = nw.x * (WG / LPR);
//#if STATS
    var acc = vec2<f32>(0.0);
    for (var r0 = wg.x * (WG / LPR); r0 < u.rows; r0 += stride) {
        let r = r0 + li / LPR;
        let row = u.o_off + (id * u.rows + r) * u.cols;
        var ss = 0.0;
        if (r < u.rows) {
            for (var c = lane; c < u.cols; c += LPR) { let x = o[row + c]; ss += x * x; }
        }
        ss = row_sum(li, ss);
        if (r < u.rows && lane == 0u) {
            let vr = u.v_off + id * u.rows + r;
            let v = u.beta2 * v2[vr] + (1.0 - u.beta2) * (ss / f32(u.cols));
            v2[vr] = v;
            let s = 1.0 / (sqrt(v) + 1e-10);
            acc += vec2<f32>(ss, ss * s * s);
        }
        workgroupBarrier();
    }
    let total = block_sum(li, acc);
    if (li == 0u) { part[id * u.blocks + wg.x] = total; }
//#else
    var acc = vec2<f32>(0.0);
    for (var b = li; b < u.blocks; b += WG) { acc += part[id * u.blocks + b]; }
    let total = block_sum(li, acc);
    let before = sqrt(total.x);
    let after = sqrt(total.y);
    var factor = before / (after + 1e-10);
    if (u.paper == 1u) { factor = 0.2 * sqrt(f32(u.rows * u.cols)) / after; }
    for (var r = wg.x * (WG / LPR) + li / LPR; r < u.rows; r += stride) {
        let s = factor / (sqrt(v2[u.v_off + id * u.rows + r]) + 1e-10);
        let row = u.o_off + (id * u.rows + r) * u.cols;
        for (var c = lane; c < u.cols; c += LPR) { o[row + c] *= s; }
    }
//#endif
}
