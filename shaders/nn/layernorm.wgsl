// LayerNorm over the last dimension: y = (x − mean)·rstd·w (+ b), rstd = 1/sqrt(var + eps). Forward and the
// input gradient run one invocation per row; the weight/bias gradients sum chunks of rows, then the chunks.
struct U {
    rows: u32, c: u32, x_off: u32, w_off: u32,
    b_off: u32, o_off: u32, g_off: u32, acc: u32,
    eps: f32, has_b: u32, acc_b: u32, chunk_rows: u32,
}
@group(0) @binding(0) var<uniform> u: U;

fn linear_id(gid: vec3<u32>, nw: vec3<u32>) -> u32 { return gid.x + gid.y * nw.x * 64u; }

@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<f32>;
@group(0) @binding(3) var<storage, read> b: array<f32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;
@group(0) @binding(5) var<storage, read_write> stats: array<f32>; // [rows, 2]: mean, rstd

@compute @workgroup_size(64)
fn forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>) {
    let r = linear_id(gid, nw);
    if (r >= u.rows) { return; }
    let base = u.x_off + r * u.c;
    var s = 0.0;
    for (var j = 0u; j < u.c; j++) { s += x[base + j]; }
    let mean = s / f32(u.c);
    var v = 0.0;
    for (var j = 0u; j < u.c; j++) { let d = x[base + j] - mean; v += d * d; }
    let rstd = inverseSqrt(v / f32(u.c) + u.eps);
    for (var j = 0u; j < u.c; j++) {
        var o = (x[base + j] - mean) * rstd * w[u.w_off + j];
        if (u.has_b != 0u) { o += b[u.b_off + j]; }
        y[u.o_off + r * u.c + j] = o;
    }
    stats[2u * r] = mean;
    stats[2u * r + 1u] = rstd;
}

// input gradient: dx = rstd·(g·w − mean(g·w) − x̂·mean(g·w·x̂))
@group(0) @binding(1) var<storage, read> bx: array<f32>;
@group(0) @binding(2) var<storage, read> bw: array<f32>;
@group(0) @binding(3) var<storage, read> bstats: array<f32>;
@group(0) @binding(4) var<storage, read> bg: array<f32>;
@group(0) @binding(5) var<storage, read_write> dx: array<f32>;

@compute @workgroup_size(64)
fn input_grad(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>) {
    let r = linear_id(gid, nw);
    if (r >= u.rows) { return; }
    let mean = bstats[2u * r];
    let rstd = bstats[2u * r + 1u];
    let xb = u.x_off + r * u.c;
    let gb = u.g_off + r * u.c;
    var m1 = 0.0;
    var m2 = 0.0;
    for (var j = 0u; j < u.c; j++) {
        let gw = bg[gb + j] * bw[u.w_off + j];
        m1 += gw;
        m2 += gw * (bx[xb + j] - mean) * rstd;
    }
    m1 /= f32(u.c);
    m2 /= f32(u.c);
    for (var j = 0u; j < u.c; j++) {
        let xhat = (bx[xb + j] - mean) * rstd;
        var d = rstd * (bg[gb + j] * bw[u.w_off + j] - m1 - xhat * m2);
        let o = u.o_off + r * u.c + j;
        if (u.acc != 0u) { d += dx[o]; }
        dx[o] = d;
    }
}

// weight and bias gradients: dw[j] = Σ_r g·x̂, db[j] = Σ_r g, in two deterministic passes so long row counts spread
// over the device: partial sums over chunks of `chunk_rows` rows, one invocation per (chunk, column), into
// part [chunks, 2, C]; then one invocation per column adds its chunks in order (o_off: dw, b_off: db).
@group(0) @binding(1) var<storage, read> px: array<f32>;
@group(0) @binding(2) var<storage, read> pstats: array<f32>;
@group(0) @binding(3) var<storage, read> pg: array<f32>;
@group(0) @binding(4) var<storage, read_write> part: array<f32>;

@compute @workgroup_size(64)
fn param_partial(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>) {
    let id = linear_id(gid, nw);
    let chunks = (u.rows + u.chunk_rows - 1u) / u.chunk_rows;
    if (id >= chunks * u.c) { return; }
    let chunk = id / u.c;
    let j = id % u.c;
    var sw = 0.0;
    var sb = 0.0;
    for (var r = chunk * u.chunk_rows; r < min(u.rows, (chunk + 1u) * u.chunk_rows); r++) {
        let g = pg[u.g_off + r * u.c + j];
        sw += g * (px[u.x_off + r * u.c + j] - pstats[2u * r]) * pstats[2u * r + 1u];
        sb += g;
    }
    part[chunk * 2u * u.c + j] = sw;
    part[chunk * 2u * u.c + u.c + j] = sb;
}

@group(0) @binding(1) var<storage, read> sums: array<f32>;
@group(0) @binding(2) var<storage, read_write> dw: array<f32>;
// The bias gradient usually lives in dw's buffer (the flat gradients): binding it twice would be writable
// aliasing, which WebGPU rejects, so a separate db binding exists only when it is another buffer.
//#if SEPARATE_DB
@group(0) @binding(3) var<storage, read_write> db: array<f32>;
//#endif

@compute @workgroup_size(64)
fn param_grad(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>) {
    let j = linear_id(gid, nw);
    if (j >= u.c) { return; }
    let chunks = (u.rows + u.chunk_rows - 1u) / u.chunk_rows;
    var sw = 0.0;
    var sb = 0.0;
    for (var k = 0u; k < chunks; k++) {
        sw += sums[k * 2u * u.c + j];
        sb += sums[k * 2u * u.c + u.c + j];
    }
    if (u.acc != 0u) { sw += dw[u.o_off + j]; }
    dw[u.o_off + j] = sw;
    if (u.has_b != 0u) {
//#if SEPARATE_DB
        if (u.acc_b != 0u) { sb += db[u.b_off + j]; }
        db[u.b_off + j] = sb;
//#else
        if (u.acc_b != 0u) { sb += dw[u.b_off + j]; }
        dw[u.b_off + j] = sb;
//#endif
    }
}
