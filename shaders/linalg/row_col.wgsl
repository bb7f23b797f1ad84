// Per-row or per-column mean of squares of each matrix of a stack: one invocation per output, sequential sum.
struct U { batch: u32, rows: u32, cols: u32, off: u32, out_off: u32, _a: u32, _b: u32, _c: u32 }
@group(0) @binding(0) var<uniform> u: U;
@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(2) var<storage, read_write> dst: array<f32>;

@compute @workgroup_size(64, 1, 1)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let batch = gid.y;
    let base = u.off + batch * u.rows * u.cols;
    var acc = 0.0;
//#if PER_ROW
    let r = gid.x;
    if (r >= u.rows) { return; }
    for (var c = 0u; c < u.cols; c++) { let v = src[base + r * u.cols + c]; acc = fma(v, v, acc); }
    dst[u.out_off + batch * u.rows + r] = acc / f32(u.cols);
//#else
    let c = gid.x;
    if (c >= u.cols) { return; }
    for (var r = 0u; r < u.rows; r++) { let v = src[base + r * u.cols + c]; acc = fma(v, v, acc); }
    dst[u.out_off + batch * u.cols + c] = acc / f32(u.rows);
//#endif
}
