// Batched transpose (or, with COPY, copy) of a stack of rows × cols matrices between strided views: rows `*_ld`
// apart, matrices `*_bs` apart (a source stride 0: one matrix shared by the batch).
struct U { rows: u32, cols: u32, in_off: u32, out_off: u32, in_ld: u32, in_bs: u32, out_ld: u32, out_bs: u32 }
@group(0) @binding(0) var<uniform> u: U;
@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(2) var<storage, read_write> dst: array<f32>;
//#if COPY
@compute @workgroup_size(16, 16, 1)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let r = gid.y;
    let c = gid.x;
    if (r < u.rows && c < u.cols) {
        dst[u.out_off + gid.z * u.out_bs + r * u.out_ld + c] = src[u.in_off + gid.z * u.in_bs + r * u.in_ld + c];
    }
}
//#else
//#if STRIPS
// CPU adapters: no workgroup memory or barriers (costly on llvmpipe); lane x takes one source column and copies a
// strip of STRIP rows of it, so loads run along source rows across lanes and each lane's stores are contiguous.
@compute @workgroup_size(8, 8, 1)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let c = gid.x;
    let r0 = gid.y * {{STRIP}}u;
    if (c >= u.cols) { return; }
    let src0 = u.in_off + gid.z * u.in_bs + c;
    let dst0 = u.out_off + gid.z * u.out_bs + c * u.out_ld;
    for (var i = 0u; i < {{STRIP}}u; i++) {
        let r = r0 + i;
        if (r < u.rows) { dst[dst0 + r] = src[src0 + r * u.in_ld]; }
    }
}
//#else
// GPUs: through a 16×16 workgroup tile (coalesced reads and writes).
var<workgroup> tile: array<array<f32, 17>, 16>;

@compute @workgroup_size(16, 16, 1)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let r = wg.y * 16u + lid.y;
    let c = wg.x * 16u + lid.x;
    if (r < u.rows && c < u.cols) { tile[lid.y][lid.x] = src[u.in_off + wg.z * u.in_bs + r * u.in_ld + c]; }
    workgroupBarrier();
    let orow = wg.x * 16u + lid.y;
    let ocol = wg.y * 16u + lid.x;
    if (orow < u.cols && ocol < u.rows) { dst[u.out_off + wg.z * u.out_bs + orow * u.out_ld + ocol] = tile[lid.x][lid.y]; }
}
//#endif
//#endif
