// Adafactor (HF transformers / fairseq semantics, docs/optimizers.md §7.2), one workgroup per tensor: every
// phase needs whole-tensor reductions (RMS of p, row/column means of g² + ε1, mean of R, RMS of the update), so
// the workgroup owns its tensor and separates the phases with barriers. Skipped on a non-finite gradient.
struct U {
    tensors: u32, group: u32, flags: u32, _p: u32,   // flags: 1 relative step, 2 scale parameter, 4 warmup init, 8 β1
    eps1: f32, eps2: f32, clip_threshold: f32, decay_rate: f32,
    _beta1: f32, wd: f32, _a: f32, _b: f32,
}
// A tensor: offsets of p and g, [batch, rows, cols] (factored over the last two dims), its state offset
// (factored: R rows, C cols, then mean(R) per batch; else V), momentum offset, factored flag.
struct Entry { p_off: u32, g_off: u32, batch: u32, rows: u32, cols: u32, s_off: u32, m_off: u32, factored: u32 }
@group(0) @binding(0) var<uniform> u: U;
@group(0) @binding(1) var<storage, read> table: array<Entry>;
@group(0) @binding(2) var<storage, read> scalars: array<f32>;
@group(0) @binding(3) var<storage, read> grad: array<f32>;
@group(0) @binding(4) var<storage, read_write> param: array<f32>;
@group(0) @binding(5) var<storage, read_write> st: array<f32>;
//#if MOMENTUM
@group(0) @binding(6) var<storage, read_write> mom: array<f32>;
//#endif

const WG: u32 = 128u;
var<workgroup> red: array<f32, WG>;
var<workgroup> total: f32;

// Sum of `v` over the workgroup (call in uniform control flow), added up in lane order by lane 0: three
// barriers, where a tree took nine, each a coroutine switch on CPU drivers that also costs compile time there.
fn wg_sum(v: f32, li: u32) -> f32 {
    red[li] = v;
    workgroupBarrier();
    if (li == 0u) {
        var t = 0.0;
        for (var q = 0u; q < WG; q++) { t += red[q]; }
        total = t;
    }
    return workgroupUniformLoad(&total);
}

// The unclipped, unscaled update g / sqrt(V̂) of element i, V̂ = (R/mean R) ⊗ C or V.
fn raw_update(e: Entry, i: u32, g: f32) -> f32 {
    if (e.factored == 1u) {
        let per = e.rows * e.cols;
        let b = i / per;
        let r = (i % per) / e.cols;
        let c = i % e.cols;
        let row = st[e.s_off + b * e.rows + r];
        let col = st[e.s_off + e.batch * e.rows + b * e.cols + c];
        let rmean = st[e.s_off + e.batch * (e.rows + e.cols) + b];
        return g * inverseSqrt(row / rmean) * inverseSqrt(col);
    }
    return g * inverseSqrt(st[e.s_off + i]);
}

@compute @workgroup_size(128, 1, 1)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    if (wg.x >= u.tensors || scalars[0] == 0.0) { return; }
    let e = table[wg.x];
    let n = e.batch * e.rows * e.cols;
    let clip = scalars[1];
    let o = 8u + 16u * u.group;
    let lr = scalars[o];
    let t = scalars[o + 4u];
    let b1 = scalars[o + 1u];   // β1, after any momentum schedule
    // RMS of the parameter before the update.
    var s = 0.0;
    for (var i = li; i < n; i += WG) { let p = param[e.p_off + i]; s += p * p; }
    let rms_p = sqrt(wg_sum(s, li) / f32(n));
    var rho = lr;
    if ((u.flags & 1u) != 0u) {
        let cap = select(1e-2, 1e-6 * t, (u.flags & 4u) != 0u);
        rho = min(cap, inverseSqrt(t)) * lr;   // lr is the schedule factor here (1 by default)
    }
    let alpha = select(1.0, max(u.eps2, rms_p), (u.flags & 2u) != 0u) * rho;
    let b2t = 1.0 - pow(t, u.decay_rate);
    if (e.factored == 1u) {
        let per = e.rows * e.cols;
        for (var k = li; k < e.batch * e.rows; k += WG) {
            let b = k / e.rows;
            let base = e.g_off + b * per + (k % e.rows) * e.cols;
            var acc = 0.0;
            for (var c = 0u; c < e.cols; c++) { let g = clip * grad[base + c]; acc += g * g + u.eps1; }
            st[e.s_off + k] = b2t * st[e.s_off + k] + (1.0 - b2t) * (acc / f32(e.cols));
        }
        for (var k = li; k < e.batch * e.cols; k += WG) {
            let b = k / e.cols;
            let base = e.g_off + b * per + k % e.cols;
            var acc = 0.0;
            for (var r = 0u; r < e.rows; r++) { let g = clip * grad[base + r * e.cols]; acc += g * g + u.eps1; }
            let ci = e.s_off + e.batch * e.rows + k;
            st[ci] = b2t * st[ci] + (1.0 - b2t) * (acc / f32(e.rows));
        }
        storageBarrier();
        for (var b = 0u; b < e.batch; b++) {
            var rs = 0.0;
            for (var r = li; r < e.rows; r += WG) { rs += st[e.s_off + b * e.rows + r]; }
            let total = wg_sum(rs, li);
            if (li == 0u) { st[e.s_off + e.batch * (e.rows + e.cols) + b] = total / f32(e.rows); }
        }
    } else {
        for (var i = li; i < n; i += WG) {
            let g = clip * grad[e.g_off + i];
            st[e.s_off + i] = b2t * st[e.s_off + i] + (1.0 - b2t) * (g * g + u.eps1);
        }
    }
    storageBarrier();
    // Update clipping by the RMS of the update.
    var su = 0.0;
    for (var i = li; i < n; i += WG) { let x = raw_update(e, i, clip * grad[e.g_off + i]); su += x * x; }
    let rms_u = sqrt(wg_sum(su, li) / f32(n));
    let scale = alpha / max(1.0, rms_u / u.clip_threshold);
    for (var i = li; i < n; i += WG) {
        var upd = scale * raw_update(e, i, clip * grad[e.g_off + i]);
//#if MOMENTUM
        upd = b1 * mom[e.m_off + i] + (1.0 - b1) * upd;
        mom[e.m_off + i] = upd;
//#endif
        let p = param[e.p_off + i];
        param[e.p_off + i] = p - u.wd * alpha * p - upd;
    }
}
