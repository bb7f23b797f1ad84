// Blocked Householder QR, the per-panel part (docs/optimizers.md §11.5): one workgroup per matrix factors the
// panel of NB columns starting at j0 and writes the compact-WY form H_0 ⋯ H_{w−1} = I − V T Vᵀ: `v` gets V (m×NB,
// unit diagonal at row j0+k of column k, zero above it and in padding columns) and `t` gets T (NB×NB upper
// triangular). The trailing update and Q are matmuls on the host side. The panel also writes its part of Q's start
// [D; 0] (D = diag(sign R_kk), so Q comes out with diag(R) ≥ 0 and needs no sign pass) and the signs, for `finish`.
//
// Inside the panel, columns go in sub-blocks of KB: each sub-block's reflectors are formed one by one on its own
// KB lanes (one SIMD group on CPU adapters), then applied at once to the panel's later columns as
// X ← X − V_s·T_sᵀ·(V_sᵀ·X). Per reflector k a single pass over the rows applies it to the sub-block's later
// columns and sums, for every sub-block lane, the products with column k+1 as the pass leaves it (its norm, the
// next dots, VᵀV); column k+1's own update is not stored but redone on the fly in pass k+1, so no lane reads what
// another writes in the same pass.
struct U { m: u32, n: u32, j0: u32, w: u32, v_off: u32, t_off: u32, q_off: u32, _p: u32 }
@group(0) @binding(0) var<uniform> u: U;
@group(0) @binding(1) var<storage, read_write> a: array<f32>;
@group(0) @binding(2) var<storage, read_write> v: array<f32>;
@group(0) @binding(3) var<storage, read_write> t: array<f32>;
@group(0) @binding(4) var<storage, read_write> q: array<f32>;
@group(0) @binding(5) var<storage, read_write> signs: array<f32>;

const NB: u32 = 32u;
const KB: u32 = 8u;
// Row groups: thread li owns panel column li % NB and rows ≡ li / NB (mod GROUPS). GPUs take 8; CPU adapters 1,
// since llvmpipe runs a workgroup's lanes 8 at a time as coroutines and every barrier switches them all.
const GROUPS: u32 = {{GROUPS}}u;
const WG: u32 = {{WG}}u;        // NB × GROUPS
var<workgroup> red: array<f32, {{WG}}>;
var<workgroup> red4: array<vec4<f32>, {{WG}}>;
var<workgroup> coef: array<f32, 32>;    // τ_k·(v_kᵀx_c): column c's coefficient in the current reflector
var<workgroup> tau: array<f32, 32>;
var<workgroup> sgn: array<f32, 32>;     // sign of R_kk
var<workgroup> gram: array<f32, 1024>;  // VᵀV above its diagonal, NB × NB
var<workgroup> tt: array<f32, 1024>;    // T, NB × NB
var<workgroup> scale: f32;

// A lane's partial sum over its rows, totalled over the row groups of its column (uniform call sites only).
fn column_sum(li: u32, x: f32) -> f32 {
    if (GROUPS == 1u) { return x; }
    red[li] = x;
    workgroupBarrier();
    var s = 0.0;
    for (var g = 0u; g < GROUPS; g++) { s += red[g * NB + li % NB]; }
    workgroupBarrier();
    return s;
}

//#if DENSE
// The dense passes' partial sums (lane li: column s + li % KB, row group li / KB), totalled per column and handed
// to the lanes of the column layout whose column c is in the sub-block (uniform call sites only).
fn block_sum(li: u32, x: f32, c: u32, s: u32, in_block: bool) -> f32 {
    red[li] = x;
    workgroupBarrier();
    var t = 0.0;
    if (in_block) {
        for (var q = c - s; q < WG; q += KB) { t += red[q]; }
    }
    workgroupBarrier();
    return t;
}
//#endif

fn column_sum4(li: u32, x: vec4<f32>) -> vec4<f32> {
    if (GROUPS == 1u) { return x; }
    red4[li] = x;
    workgroupBarrier();
    var s = vec4(0.0);
    for (var g = 0u; g < GROUPS; g++) { s += red4[g * NB + li % NB]; }
    workgroupBarrier();
    return s;
}

// Columns s…s+3 and s+4…s+7 of V's row at `at` (= row start + s).
fn v_lo(at: u32) -> vec4<f32> { return vec4(v[at], v[at + 1u], v[at + 2u], v[at + 3u]); }
fn v_hi(at: u32) -> vec4<f32> { return vec4(v[at + 4u], v[at + 5u], v[at + 6u], v[at + 7u]); }
// Σ over this lane's rows i ≥ first of V[i, c]·V[i, s…s+7]: its column against the 8 columns at s.
struct Dots8 { lo: vec4<f32>, hi: vec4<f32> }
fn dots8(vbase: u32, c: u32, s: u32, first: u32, g: u32) -> Dots8 {
    var d = Dots8(vec4(0.0), vec4(0.0));
    for (var i = first + g; i < u.m; i += GROUPS) {
        let at = vbase + i * NB;
        let x = v[at + c];
        d.lo += v_lo(at + s) * x;
        d.hi += v_hi(at + s) * x;
    }
    return d;
}

// Entry j of the 8-vector (lo, hi).
fn pick(lo: vec4<f32>, hi: vec4<f32>, j: u32) -> f32 { return select(lo, hi, j >= 4u)[j & 3u]; }

fn t_lo(at: u32) -> vec4<f32> { return vec4(tt[at], tt[at + 1u], tt[at + 2u], tt[at + 3u]); }
fn t_hi(at: u32) -> vec4<f32> { return vec4(tt[at + 4u], tt[at + 5u], tt[at + 6u], tt[at + 7u]); }

// T's columns k in [lo_k, hi_k), rows li in [lo_row(k), k): T[li, k] = −τ_k · Σ_{q=li}^{k−1} T[li, q]·(VᵀV)[q, k].
fn t_columns(li: u32, lo_k: u32, hi_k: u32, block_rows: bool) {
    for (var k = lo_k; k < hi_k; k++) {
        let lo = select(0u, lo_k, block_rows);
        let hi = select(k / KB * KB, k, block_rows);
        if (li >= lo && li < hi) {
            var s = 0.0;
            for (var c = li; c < k; c++) { s += tt[li * NB + c] * gram[c * NB + k]; }
            tt[li * NB + k] = -tau[k] * s;
        }
        if (block_rows && li == k) { tt[k * NB + k] = tau[k]; }
        workgroupBarrier();
    }
}

@compute @workgroup_size({{WG}}, 1, 1)
fn panel(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let m = u.m;
    let n = u.n;
    let j0 = u.j0;
    let w = u.w;
    let abase = wg.x * m * n;
    let vbase = u.v_off + wg.x * m * NB;
    let c = li % NB;
    let g = select(li / NB, 0u, GROUPS == 1u);  // uniform on CPU adapters: row loops then load shared values once
    // Copy the panel (rows ≥ j0) into V; zeros above it and in padding columns.
    for (var i = g; i < m; i += GROUPS) {
        var x = 0.0;
        if (i >= j0 && c < w) { x = a[abase + i * n + j0 + c]; }
        v[vbase + i * NB + c] = x;
    }
    for (var e = li; e < NB * NB; e += WG) { tt[e] = 0.0; gram[e] = 0.0; }
    storageBarrier();
    workgroupBarrier();
    for (var s = 0u; s < w; s += KB) {
        let s_end = min(s + KB, w);
        let in_block = c >= s && c < s_end;
        // The lane's column and row group in the row passes: on GPUs (DENSE) every lane, column s + li % KB and row
        // group li / KB (laid out by column, 3/4 of each warp's lanes sat out the passes; H100, 4 × 512² QR:
        // 4.1 → 3.4 ms); else the column layout. The KB lanes of a row group stay in one SIMD group: lane k stores
        // column k of a row that the group's other lanes load in the same iteration, which relies on their loads
        // issuing first.
//#if DENSE
        let pcol = s + li % KB;
        let pg = li / KB;
        let pstep = WG / KB;
        let pass_on = pcol < s_end;
//#else
        let pcol = c;
        let pg = g;
        let pstep = GROUPS;
        let pass_on = in_block;
//#endif
        // p: Σ over rows below the next reflector's diagonal of (the pass column)·(the next column).
        var p = 0.0;
        if (pass_on) {
            for (var i = j0 + s + 1u + pg; i < m; i += pstep) {
                p += v[vbase + i * NB + pcol] * v[vbase + i * NB + s];
            }
        }
        for (var k = s; k < s_end; k++) {
            let r = j0 + k;
//#if DENSE
            let pc = block_sum(li, p, c, s, in_block);
//#else
            let pc = column_sum(li, p);
//#endif
            // Column k's update by reflector k − 1 was left to this pass: x_k = stored − d_prev·v_{k−1}.
            let d_prev = select(0.0, coef[k], k > s);
            let kp = select(k, k - 1u, k > s);
            if (li == k) {
                let alpha = v[vbase + r * NB + k] - d_prev * v[vbase + r * NB + kp];
                let sigma = pc;  // this lane's product is column k with itself
                if (sigma == 0.0) {
                    tau[k] = 0.0;    // nothing below the diagonal: H = I, R_kk = alpha
                    scale = 0.0;
                    sgn[k] = select(1.0, -1.0, alpha < 0.0);
                } else {
                    let nrm = sqrt(alpha * alpha + sigma);
                    let beta = select(nrm, -nrm, alpha >= 0.0);
                    tau[k] = (beta - alpha) / beta;
                    scale = 1.0 / (alpha - beta);
                    sgn[k] = select(1.0, -1.0, beta < 0.0);
                }
            }
            let sc = workgroupUniformLoad(&scale);
            // v_k = (1, sc·x_k below); dots v_kᵀx_c = x_c[r] + sc·p_c. Finished columns give (VᵀV)[c, k].
            var dot = 0.0;
            if (in_block && c != k) { dot = v[vbase + r * NB + c] + sc * pc; }
            let d = tau[k] * dot;
            if (g == 0u) {
                if (c >= s && c < k) { gram[c * NB + k] = dot; }
                if (c > k && c < s_end) { coef[c] = d; }
            }
            workgroupBarrier();
            let has_next = k + 1u < s_end;
            let kn = select(k, k + 1u, has_next);
            let dn = select(0.0, coef[kn], has_next);
            // V above the unit diagonal is zero (those rows of column k hold R entries until here).
            if (c == k) {
                for (var i = j0 + g; i < r; i += GROUPS) { v[vbase + i * NB + k] = 0.0; }
            }
            p = 0.0;
            if (pass_on) {
                // The pass column's coefficient in reflector k (used only right of k).
                let dc = select(0.0, coef[pcol], pcol > k);
                for (var i = r + pg; i < m; i += pstep) {
                    let row = vbase + i * NB;
                    let vk = select(sc * (v[row + k] - d_prev * v[row + kp]), 1.0, i == r);
                    let own = v[row + pcol];
                    var now = own;
                    if (pcol == k) { now = vk; } else if (pcol > k) { now = own - dc * vk; }
                    if (pcol == k || pcol > kn) { v[row + pcol] = now; }
                    if (has_next && i > r + 1u) {
                        p += select(own, now, pcol >= k) * (v[row + kn] - dn * vk);
                    }
                }
            }
            storageBarrier();
            workgroupBarrier();
        }
        t_columns(li, s, s_end, true);
        // The sub-block's reflectors on the panel's later columns: X ← X − V_s·T_sᵀ·(V_sᵀ·X), rows ≥ j0 + s.
        if (s_end < w) {
            let later = c >= s_end && c < w;
            var w8 = Dots8(vec4(0.0), vec4(0.0));
            if (later) { w8 = dots8(vbase, c, s, j0 + s, g); }
            let wl = column_sum4(li, w8.lo);
            let wh = column_sum4(li, w8.hi);
            // y = T_sᵀ·w: y_j = Σ_l T[s+l, s+j]·w_l.
            let tb = s * NB + s;
            // A loop bounded at run time (always KB here): unrolled, its workgroup loads would compile per lane.
            var yl = vec4(0.0);
            var yh = vec4(0.0);
            for (var l = 0u; l < s_end - s; l++) {
                let wv = pick(wl, wh, l);
                yl += t_lo(tb + l * NB) * wv;
                yh += t_hi(tb + l * NB) * wv;
            }
            if (later) {
                for (var i = j0 + s + g; i < m; i += GROUPS) {
                    let at = vbase + i * NB;
                    v[at + c] -= dot(v_lo(at + s), yl) + dot(v_hi(at + s), yh);
                }
            }
            storageBarrier();
            workgroupBarrier();
        }
    }
    // VᵀV between sub-blocks (within them it came from the passes), then the rest of T.
    for (var sb = KB; sb < w; sb += KB) {
        var g8 = Dots8(vec4(0.0), vec4(0.0));
        if (c < sb) { g8 = dots8(vbase, c, sb, j0 + sb, g); }
        let gl = column_sum4(li, g8.lo);
        let gh = column_sum4(li, g8.hi);
        if (c < sb && g == 0u) {
            for (var j = 0u; j < min(KB, w - sb); j++) { gram[c * NB + sb + j] = pick(gl, gh, j); }
        }
    }
    workgroupBarrier();
    t_columns(li, KB, w, false);
    let tbase = u.t_off + wg.x * NB * NB;
    for (var e = li; e < NB * NB; e += WG) { t[tbase + e] = tt[e]; }
    // Q's start [D; 0] where only this panel's block of Q's build reaches it first: rows j0…j0+NB−1 from column j0
    // on, and the panel's columns below them.
    let qbase = u.q_off + wg.x * m * n;
    for (var i = j0 + g; i < min(j0 + NB, m); i += GROUPS) {
        for (var j = j0 + c; j < n; j += NB) {
            var x = 0.0;
            if (i == j) { x = sgn[j - j0]; }
            q[qbase + i * n + j] = x;
        }
    }
    for (var i = j0 + NB + g; i < m; i += GROUPS) {
        if (c < w) { q[qbase + i * n + j0 + c] = 0.0; }
    }
    if (li < w) { signs[wg.x * n + j0 + li] = sgn[li]; }
}

// R = the upper triangle of the reduced matrix `a` (n×n part) with its rows scaled by the panels' signs, so that
// diag(R) ≥ 0 like Q's columns. Here `v` is R (at v_off; panel views are bound whole, hence the offsets), `t` the
// signs. One invocation per entry: x the column, y the row, z the matrix.
@compute @workgroup_size(64, 1, 1)
fn finish(@builtin(global_invocation_id) gid: vec3<u32>) {
    let n = u.n;
    let col = gid.x;
    let row = gid.y;
    let b = gid.z;
    if (col >= n) { return; }
    var x = 0.0;
    if (col >= row) { x = t[b * n + row] * a[b * u.m * n + row * n + col]; }
    if (col == row) { x = abs(x); }  // the sign came from the panel's β; a rounding-level R_kk could differ
    v[u.v_off + b * n * n + row * n + col] = x;
}
