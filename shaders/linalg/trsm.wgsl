// Triangular solves with many right-hand sides, one invocation per right-hand-side vector (docs/optimizers.md
// §11.6). Each vector solves M y = b by forward (M lower) or backward substitution, where M_ij is read from the
// triangular T at (i, j) or, when TRANS_M, at (j, i). Vectors are columns (left side) or rows (right side).
// Each operand starts at its view's offset (t_off, b_off, x_off).
struct U {
    n: u32, count: u32, lower: u32, trans: u32,
    v_stride: u32, e_stride: u32, per_batch: u32, t_off: u32,
    b_off: u32, x_off: u32, _p0: u32, _p1: u32,
}
@group(0) @binding(0) var<uniform> u: U;
@group(0) @binding(1) var<storage, read> t: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> x: array<f32>;

fn tm(base: u32, i: u32, j: u32) -> f32 {
    if (u.trans == 1u) { return t[base + j * u.n + i]; }
    return t[base + i * u.n + j];
}

@compute @workgroup_size(64, 1, 1)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let vec_id = gid.x;
    if (vec_id >= u.count) { return; }
    let batch = gid.y;
    let tb = u.t_off + batch * u.n * u.n;
    let vb = batch * u.per_batch + vec_id * u.v_stride;
    let bb = u.b_off + vb;
    let xb = u.x_off + vb;
    for (var s = 0u; s < u.n; s++) {
        let i = select(u.n - 1u - s, s, u.lower == 1u);
        var acc = b[bb + i * u.e_stride];
        for (var r = 0u; r < s; r++) {
            let j = select(u.n - 1u - r, r, u.lower == 1u);
            acc -= tm(tb, i, j) * x[xb + j * u.e_stride];
        }
        x[xb + i * u.e_stride] = acc / tm(tb, i, i);
    }
}
