// Batched transpose through a 16×16 workgroup tile (coalesced reads and writes).
struct U { rows: u32, cols: u32, in_off: u32, out_off: u32 }
@group(0) @binding(0) var<uniform> u: U;
@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(2) var<storage, read_write> dst: array<f32>;
var<workgroup> tile: array<array<f32, 17>, 16>;

@compute @workgroup_size(16, 16, 1)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let per = u.rows * u.cols;
    let r = wg.y * 16u + lid.y;
    let c = wg.x * 16u + lid.x;
    if (r < u.rows && c < u.cols) { tile[lid.y][lid.x] = src[u.in_off + wg.z * per + r * u.cols + c]; }
    workgroupBarrier();
    let orow = wg.x * 16u + lid.y;
    let ocol = wg.y * 16u + lid.x;
    if (orow < u.cols && ocol < u.rows) { dst[u.out_off + wg.z * per + orow * u.rows + ocol] = tile[lid.x][lid.y]; }
}
