// Triangular solves with many right-hand sides, one invocation per right-hand-side vector (docs/optimizers.md
// §11.6): an n×n diagonal block of a larger triangular matrix (rows t_ld apart, matrices t_batch apart). Each
// vector solves M y = b by forward (M lower) or backward substitution, where M_ij is read from the block at
// (i, j) or, when TRANS_M, at (j, i). Vectors are columns (left side) or rows (right side). Each operand starts
// at its view's offset (t_off, b_off, x_off). With IN_PLACE, b is x, and the solved block is also written packed
// into `solved` (vector v's element i at batch·n·count + v·s_vec + i·s_elem), the operand of the blocked solve's
// update, which cannot read x while it writes x.
struct U {
    n: u32, count: u32, lower: u32, trans: u32,
    v_stride: u32, e_stride: u32, per_batch: u32, t_off: u32,
    b_off: u32, x_off: u32, t_ld: u32, t_batch: u32,
    s_vec: u32, s_elem: u32, _p0: u32, _p1: u32,
}
@group(0) @binding(0) var<uniform> u: U;
@group(0) @binding(1) var<storage, read> t: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> x: array<f32>;
//#if IN_PLACE
@group(0) @binding(4) var<storage, read_write> solved: array<f32>;
//#endif

fn tm(base: u32, i: u32, j: u32) -> f32 {
    if (u.trans == 1u) { return t[base + j * u.t_ld + i]; }
    return t[base + i * u.t_ld + j];
}

fn rhs(bb: u32, xb: u32, i: u32) -> f32 {
//#if IN_PLACE
    return x[xb + i * u.e_stride];
//#else
    return b[bb + i * u.e_stride];
//#endif
}

@compute @workgroup_size(64, 1, 1)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let vec_id = gid.x;
    if (vec_id >= u.count) { return; }
    let batch = gid.y;
    let tb = u.t_off + batch * u.t_batch;
    let vb = batch * u.per_batch + vec_id * u.v_stride;
    let bb = u.b_off + vb;
    let xb = u.x_off + vb;
    for (var s = 0u; s < u.n; s++) {
        let i = select(u.n - 1u - s, s, u.lower == 1u);
        var acc = rhs(bb, xb, i);
        for (var r = 0u; r < s; r++) {
            let j = select(u.n - 1u - r, r, u.lower == 1u);
            acc -= tm(tb, i, j) * x[xb + j * u.e_stride];
        }
        let y = acc / tm(tb, i, i);
        x[xb + i * u.e_stride] = y;
//#if IN_PLACE
        solved[batch * u.n * u.count + vec_id * u.s_vec + i * u.s_elem] = y;
//#endif
    }
}
