// Causal multi-head self-attention on a packed qkv [B, T, 3C] (q, k, v side by side; head h uses columns
// h·D … h·D + D − 1 of each), output [B, T, C]. One invocation per (batch, head, row); the probabilities P
// [B, H, T, T] are kept for the backward, which is split in a per-query pass (dS, dq) and a per-key pass
// (dk, dv) so every output element has exactly one writer (deterministic, no atomics).
// SUBGROUP (CPU adapters with 8-lane subgroups, D and T multiples of 8): the 8 lanes are 8 consecutive rows of
// one head and need the same K / V / Q / dY row at each step, so each lane loads every 8th value and the
// subgroup broadcasts them (a per-lane load costs ~10 FMAs on llvmpipe).
// DROPOUT (nanoGPT's attn_dropout): the probabilities multiplying v are P·mask/(1 − p), the mask hashed from the
// step block (bound last) and the element's index in P; P itself is stored undropped for the backward.
//#if SUBGROUP
// Subgroups stay converged by construction (T is a multiple of 8, so whole subgroups return together, and every
// loop bound is the subgroup's: rows up to i | 7); WGSL's uniformity analysis cannot see it from invocation ids.
diagnostic(off, subgroup_uniformity);
//#endif
struct U { batch: u32, t: u32, heads: u32, c: u32, qkv_off: u32, o_off: u32, g_off: u32, acc: u32, scale: f32,
           p: f32, salt: u32, head_dim: u32 }
@group(0) @binding(0) var<uniform> u: U;
const D: u32 = {{D}}u;

fn linear_id(gid: vec3<u32>, nw: vec3<u32>) -> u32 { return gid.x + gid.y * nw.x * 64u; }
fn row_base(b: u32, i: u32) -> u32 { return u.qkv_off + (b * u.t + i) * 3u * u.c; }
// (batch, head, row) of invocation `id`.
fn unpack(id: u32) -> vec3<u32> { return vec3<u32>(id / (u.t * u.heads), (id / u.t) % u.heads, id % u.t); }
fn lanes() -> u32 { return u.batch * u.heads * u.t; }

@group(0) @binding(1) var<storage, read> qkv: array<f32>;

// Element d of a register row, d known at run time only while loading or storing it. ROW_LOOPS (CPU adapters):
// the row's loads and stores are one site in a loop bounded at run time (`u.head_dim`), the element picked by a
// select over constant indices. llvmpipe compiles every unrolled site as eight bounds-checked lane accesses (the
// D = 32 kernels took 0.5–1.0 s, now ~0.1 s) and lowers a run-time array index into a ladder copying the site.
//#if ROW_LOOPS
fn row_len() -> u32 { return u.head_dim; }
fn set_at(row: ptr<function, array<f32, D>>, d: u32, x: f32) {
    for (var k = 0u; k < D; k++) { (*row)[k] = select((*row)[k], x, k == d); }
}
fn get_at(row: ptr<function, array<f32, D>>, d: u32) -> f32 {
    var x = 0.0;
    for (var k = 0u; k < D; k++) { x = select(x, (*row)[k], k == d); }
    return x;
}
//#else
fn row_len() -> u32 { return D; }
fn set_at(row: ptr<function, array<f32, D>>, d: u32, x: f32) { (*row)[d] = x; }
fn get_at(row: ptr<function, array<f32, D>>, d: u32) -> f32 { return (*row)[d]; }
//#endif

//#if DROPOUT
//#include "nn/dropout_mask.wgsl"
@group(0) @binding(4) var<storage, read> fstep: array<u32>;
@group(0) @binding(6) var<storage, read> bstep: array<u32>;
fn forward_step() -> vec2<u32> { return vec2<u32>(fstep[0], fstep[1]); }
fn backward_step() -> vec2<u32> { return vec2<u32>(bstep[0], bstep[1]); }
//#else
fn forward_step() -> vec2<u32> { return vec2<u32>(0u); }
fn backward_step() -> vec2<u32> { return vec2<u32>(0u); }
//#endif

// Probability `p` at index `idx` of P as it multiplies v: dropped and rescaled under DROPOUT.
fn dropped(p: f32, idx: u32, step: vec2<u32>) -> f32 {
//#if DROPOUT
    return select(0.0, p / (1.0 - u.p), dropout_keeps(step.x, step.y, u.salt, idx, u.p));
//#else
    return p;
//#endif
}

// Σ_d x[d]·src[base + d]
fn dot_qkv(x: ptr<function, array<f32, D>>, base: u32, lane: u32) -> f32 {
    var s = 0.0;
//#if SUBGROUP
    for (var c = 0u; c < D; c += 8u) {
        let v = qkv[base + c + lane];
{{DOT_QKV}}
    }
//#else
    for (var d = 0u; d < D; d++) { s = fma((*x)[d], qkv[base + d], s); }
//#endif
    return s;
}

// acc[d] += p·src[base + d]
fn axpy_qkv(acc: ptr<function, array<f32, D>>, p: f32, base: u32, lane: u32) {
//#if SUBGROUP
    for (var c = 0u; c < D; c += 8u) {
        let v = qkv[base + c + lane];
{{AXPY}}
    }
//#else
    for (var d = 0u; d < D; d++) { (*acc)[d] = fma(p, qkv[base + d], (*acc)[d]); }
//#endif
}

@group(0) @binding(2) var<storage, read_write> probs: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;

@compute @workgroup_size(64)
fn forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>{{LANE_ARG}}) {
    let id = linear_id(gid, nw);
    if (id >= lanes()) { return; }
    let bhi = unpack(id);
    let b = bhi.x;
    let i = bhi.z;
    let hd = bhi.y * D;
    let last = {{LAST_ROW}}; // the subgroup's last row: loops stay uniform across its lanes
    var q: array<f32, D>;
    let qb = row_base(b, i) + hd;
    for (var d = 0u; d < row_len(); d++) { set_at(&q, d, qkv[qb + d]); }
    let pb = id * u.t;
    let step = forward_step();
    var m = -3.0e38;
    for (var j = 0u; j <= last; j++) {
        let s = dot_qkv(&q, row_base(b, j) + u.c + hd, {{LANE}}) * u.scale;
        if (j <= i) {
            probs[pb + j] = s;
            m = max(m, s);
        }
    }
    var sum = 0.0;
    for (var j = 0u; j <= i; j++) { let e = exp(probs[pb + j] - m); probs[pb + j] = e; sum += e; }
    let inv = 1.0 / sum;
    var acc: array<f32, D>;
    for (var j = 0u; j <= last; j++) {
        var p = 0.0;
        if (j <= i) {
            p = probs[pb + j] * inv;
            probs[pb + j] = p;
        }
        axpy_qkv(&acc, dropped(p, pb + j, step), row_base(b, j) + 2u * u.c + hd, {{LANE}});
    }
    for (var j = i + 1u; j < u.t; j++) { probs[pb + j] = 0.0; }
    let ob = u.o_off + (b * u.t + i) * u.c + hd;
    for (var d = 0u; d < row_len(); d++) { y[ob + d] = get_at(&acc, d); }
}

// per query row: dP_ij = dy_i·v_j (through the dropout mask), dS_ij = P_ij (dP_ij − Σ_j P_ij dP_ij),
// dq_i = scale Σ_j dS_ij k_j
@group(0) @binding(2) var<storage, read> bprobs: array<f32>;
@group(0) @binding(3) var<storage, read> gy: array<f32>;
@group(0) @binding(4) var<storage, read_write> ds: array<f32>;
@group(0) @binding(5) var<storage, read_write> dqkv: array<f32>;

fn store_grad(o: u32, v: f32) {
    if (u.acc != 0u) { dqkv[o] = dqkv[o] + v; } else { dqkv[o] = v; }
}

@compute @workgroup_size(64)
fn backward_query(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>{{LANE_ARG}}) {
    let id = linear_id(gid, nw);
    if (id >= lanes()) { return; }
    let bhi = unpack(id);
    let b = bhi.x;
    let i = bhi.z;
    let hd = bhi.y * D;
    let last = {{LAST_ROW}};
    var g: array<f32, D>;
    let gb = u.g_off + (b * u.t + i) * u.c + hd;
    for (var d = 0u; d < row_len(); d++) { set_at(&g, d, gy[gb + d]); }
    let pb = id * u.t;
    let step = backward_step();
    var dot_pd = 0.0;
    for (var j = 0u; j <= last; j++) {
        let s = dropped(dot_qkv(&g, row_base(b, j) + 2u * u.c + hd, {{LANE}}), pb + j, step);
        if (j <= i) {
            ds[pb + j] = s;
            dot_pd = fma(bprobs[pb + j], s, dot_pd);
        }
    }
    var dq: array<f32, D>;
    for (var j = 0u; j <= last; j++) {
        var s = 0.0;
        if (j <= i) {
            s = bprobs[pb + j] * (ds[pb + j] - dot_pd);
            ds[pb + j] = s;
        }
        axpy_qkv(&dq, s, row_base(b, j) + u.c + hd, {{LANE}});
    }
    for (var j = i + 1u; j < u.t; j++) { ds[pb + j] = 0.0; }
    let ob = u.o_off + (b * u.t + i) * 3u * u.c + hd;
    for (var d = 0u; d < row_len(); d++) { store_grad(ob + d, get_at(&dq, d) * u.scale); }
}

// per key row j: dk_j = scale Σ_{i≥j} dS_ij q_i, dv_j = Σ_{i≥j} P̃_ij dy_i with P̃ the dropped P (P and dS are
// zero above the diagonal,
// so the loop may start at the subgroup's first row)
@group(0) @binding(4) var<storage, read> kds: array<f32>;
@group(0) @binding(5) var<storage, read_write> kdqkv: array<f32>;

// acc[d] += p·gy[base + d]
fn axpy_gy(acc: ptr<function, array<f32, D>>, p: f32, base: u32, lane: u32) {
//#if SUBGROUP
    for (var c = 0u; c < D; c += 8u) {
        let v = gy[base + c + lane];
{{AXPY}}
    }
//#else
    for (var d = 0u; d < D; d++) { (*acc)[d] = fma(p, gy[base + d], (*acc)[d]); }
//#endif
}

@compute @workgroup_size(64)
fn backward_key(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>{{LANE_ARG}}) {
    let id = linear_id(gid, nw);
    if (id >= lanes()) { return; }
    let bhi = unpack(id);
    let b = bhi.x;
    let j = bhi.z;
    let hd = bhi.y * D;
    let head_base = (b * u.heads + bhi.y) * u.t * u.t;
    var dk: array<f32, D>;
    var dv: array<f32, D>;
    let step = backward_step();
    for (var i = {{FIRST_ROW}}; i < u.t; i++) {
        let pij = dropped(bprobs[head_base + i * u.t + j], head_base + i * u.t + j, step);
        let sij = kds[head_base + i * u.t + j];
        axpy_qkv(&dk, sij, row_base(b, i) + hd, {{LANE}});
        axpy_gy(&dv, pij, u.g_off + (b * u.t + i) * u.c + hd, {{LANE}});
    }
    let ob = u.o_off + (b * u.t + j) * 3u * u.c + hd;
    for (var d = 0u; d < row_len(); d++) {
        var k = get_at(&dk, d) * u.scale;
        var v = get_at(&dv, d);
        if (u.acc != 0u) { k += kdqkv[ob + u.c + d]; v += kdqkv[ob + 2u * u.c + d]; }
        kdqkv[ob + u.c + d] = k;
        kdqkv[ob + 2u * u.c + d] = v;
    }
}
