// PSGD-Kron (docs/optimizers.md §6): the elementwise and per-matrix kernels around the batched matmuls and
// triangular solves recorded by src/optim/kron/psgd.rs. Bindings: 0 the uniforms (kron_uniforms.wgsl), then the
// step scalars (group g's at 8 + 16g: lr, β1_t, 1 − β1^t, 1 − β2^t, t, …), then the phase's tensors. Kernels that
// write optimizer state store nothing on a skipped step (scalars[0] == 0); the rest skip their work then too.
//
// MH:      out = M[dst_off + i] / (1 − β1^t) (the debiased momentum; a scratch).
// NOISE:   out = a standard normal from the hash of (seed = flags, applied step t, dst_off + i) (Box–Muller).
// GIN:     x[i] ← x[i] + a·(l1[b]/(rows·cols))·v[src_off + i] in place (a = sqrt(ε_f32); l1: Σ|x| per matrix).
// LB:      per matrix (one workgroup each) of d×d: kron_torch's lower bound on the spectral norm (normalize by
//          max|A|, the column of largest norm, one power step), 0 for a zero matrix.
// TRIU:    out = triu(x)·a/max(lb[b], 1.17549435e-38) (a = precond_lr).
// BALANCE: in place on one side's factors q: q ← q·sqrt(n_other[b]/n_self[b]) (the max-norms; skipped at 0).
// CLIP:    out[dst_off + i] = x[i]·min(1, a/(‖x_b‖/sqrt(rows·cols) + 1e-12)) (a = the RMS clip).
//#include "optim/kron_uniforms.wgsl"
//#if LB
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read_write> lb: array<f32>;
var<workgroup> red: array<f32, 64>;
var<workgroup> arg: array<u32, 64>;
var<workgroup> y: array<f32, {{D}}>;
//#else
@group(0) @binding(1) var<storage, read> scalars: array<f32>;
//#endif
//#if MH
@group(0) @binding(2) var<storage, read> mom: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
//#endif
//#if NOISE
//#include "nn/dropout_mask.wgsl"
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
//#endif
// The per-matrix-grid phases (GIN, TRIU, BALANCE, CLIP) run on VT = vec4<f32> where the rows and offsets allow
// (cols, dst_off and src_off then counted in vec4s; W = 4 columns per invocation, LANES their offsets), else f32.
//#if GIN
@group(0) @binding(2) var<storage, read> l1: array<f32>;
@group(0) @binding(3) var<storage, read> v: array<{{VT}}>;
@group(0) @binding(4) var<storage, read_write> x: array<{{VT}}>;
//#endif
//#if TRIU
@group(0) @binding(2) var<storage, read> x: array<{{VT}}>;
@group(0) @binding(3) var<storage, read> lb: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<{{VT}}>;
//#endif
//#if BALANCE
@group(0) @binding(2) var<storage, read> n_self: array<f32>;
@group(0) @binding(3) var<storage, read> n_other: array<f32>;
@group(0) @binding(4) var<storage, read_write> q: array<{{VT}}>;
//#endif
//#if CLIP
@group(0) @binding(2) var<storage, read> x: array<{{VT}}>;
@group(0) @binding(3) var<storage, read> norms: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<{{VT}}>;
//#endif

//#if LB
var<workgroup> red_f: f32;
var<workgroup> red_u: u32;

// Workgroup reductions done by lane 0 in lane order after one barrier (three barriers per reduction where a
// tree took eight, each a coroutine switch on CPU drivers that also costs compile time there). Uniform
// control flow only.
fn reduce_sum(li: u32, v: f32) -> f32 {
    red[li] = v;
    workgroupBarrier();
    if (li == 0u) {
        var t = 0.0;
        for (var q = 0u; q < 64u; q++) { t += red[q]; }
        red_f = t;
    }
    return workgroupUniformLoad(&red_f);
}

fn reduce_max(li: u32, v: f32) -> f32 {
    red[li] = v;
    workgroupBarrier();
    if (li == 0u) {
        var t = red[0];
        for (var q = 1u; q < 64u; q++) { t = max(t, red[q]); }
        red_f = t;
    }
    return workgroupUniformLoad(&red_f);
}

// The index with the largest value, the smallest index on ties.
fn reduce_argmax(li: u32, v: f32, at: u32) -> u32 {
    red[li] = v;
    arg[li] = at;
    workgroupBarrier();
    if (li == 0u) {
        var b = red[0];
        var a = arg[0];
        for (var q = 1u; q < 64u; q++) {
            if (red[q] > b || (red[q] == b && arg[q] < a)) { b = red[q]; a = arg[q]; }
        }
        red_u = a;
    }
    return workgroupUniformLoad(&red_u);
}
//#endif

@compute @workgroup_size(64, 1, 1)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
//#if LB
    let d = u.d;
    let base = wg.x * d * d;
    // max |A|
    var mx = 0.0;
    for (var k = li; k < d * d; k += 64u) { mx = max(mx, abs(a[base + k])); }
    let amax = reduce_max(li, mx);
    let inv = 1.0 / max(amax, 1e-38);
    // The column of largest norm (the first on ties).
    var best = -1.0;
    var bj = 0u;
    for (var j = li; j < d; j += 64u) {
        var s = 0.0;
        for (var i = 0u; i < d; i++) { let e = a[base + i * d + j] * inv; s += e * e; }
        if (s > best) { best = s; bj = j; }
    }
    let j0 = reduce_argmax(li, best, bj);
    // y = xᵀA with x that column, then z = A·y/‖y‖.
    var yy = 0.0;
    for (var j = li; j < d; j += 64u) {
        var s = 0.0;
        for (var i = 0u; i < d; i++) { s += a[base + i * d + j0] * a[base + i * d + j]; }
        let e = s * inv * inv;
        y[j] = e;
        yy += e * e;
    }
    let ny = max(sqrt(reduce_sum(li, yy)), 1e-38);
    var zz = 0.0;
    for (var k = li; k < d; k += 64u) {
        var s = 0.0;
        for (var j = 0u; j < d; j++) { s += y[j] * a[base + k * d + j]; }
        let e = s * inv / ny;
        zz += e * e;
    }
    let nz = sqrt(reduce_sum(li, zz));
    if (li == 0u) { lb[wg.x] = select(nz * amax, 0.0, amax == 0.0); }
//#else
//#if MATRIX_GRID
    // Matrix wg.z, row wg.y, 64 columns per workgroup: indices without a division per element (scalarized on
    // CPU drivers).
    let col = wg.x * 64u + li;
    if (col >= u.cols) { return; }
    let b = wg.z;
    let row = wg.y;
    let i = (b * u.rows + row) * u.cols + col;
//#else
    let i = (wg.y * nw.x + wg.x) * 64u + li;
    if (i >= u.total) { return; }
//#endif
    let o = 8u + 16u * u.group;
//#if MH
    out[i] = mom[u.dst_off + i] / scalars[o + 2u];
//#endif
//#if NOISE
    // Two uniforms in (0, 1] from one key per element, then Box–Muller.
    let key = hash(hash(u.flags) + u32(scalars[o + 4u]));
    let k = u.dst_off + i;
    let u1 = (f32(hash(key ^ (2u * k)) >> 8u) + 1.0) * (1.0 / 16777216.0);
    let u2 = f32(hash(key ^ (2u * k + 1u)) >> 8u) * (1.0 / 16777216.0);
    out[i] = sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
//#endif
//#if GIN
    if (scalars[0] == 0.0) { return; }
    x[i] = x[i] + u.a * (l1[b] / f32(u.rows * u.cols * {{W}}u)) * v[u.src_off + i];
//#endif
//#if TRIU
    if (scalars[0] == 0.0) { return; }
    let keep = {{UT}}(row) <= {{UT}}(col * {{W}}u) + {{LANES}};
    out[i] = select({{VT}}(0.0), x[i] * u.a / max(lb[b], 1.17549435e-38), keep);
//#endif
//#if BALANCE
    if (scalars[0] == 0.0) { return; }
    let s = n_self[b];
    let t = n_other[b];
    if (s > 0.0 && t > 0.0) { q[i] = q[i] * sqrt(t / s); }
//#endif
//#if CLIP
    if (scalars[0] == 0.0) { return; }
    let rms = norms[b] / sqrt(f32(u.rows * u.cols * {{W}}u));
    out[u.dst_off + i] = x[i] * min(1.0, u.a / (rms + 1e-12));
//#endif
//#endif
}
