// Blocked Householder QR, the per-panel part (docs/optimizers.md §11.5): one workgroup per matrix factors the
// panel of NB columns starting at j0 with unblocked Householder and writes the compact-WY form
// H_0 ⋯ H_{w−1} = I − V T Vᵀ: `v` gets V (m×NB, unit diagonal at row j0+k of column k, zero above it and in padding
// columns) and `t` gets T (NB×NB upper triangular). The trailing update and Q are matmuls on the host side.
// Entry `finish` flips signs so diag(R) ≥ 0 and extracts R from the reduced matrix.
struct U { m: u32, n: u32, j0: u32, w: u32, v_off: u32, t_off: u32, _p0: u32, _p1: u32 }
@group(0) @binding(0) var<uniform> u: U;
@group(0) @binding(1) var<storage, read_write> a: array<f32>;
@group(0) @binding(2) var<storage, read_write> v: array<f32>;
@group(0) @binding(3) var<storage, read_write> t: array<f32>;

const NB: u32 = 32u;
// Row groups: thread li owns panel column li % NB and rows ≡ li / NB (mod GROUPS). GPUs take 8; CPU adapters 1,
// since llvmpipe runs a workgroup's lanes 8 at a time as coroutines and every barrier switches them all.
const GROUPS: u32 = {{GROUPS}}u;
const WG: u32 = {{WG}}u;        // NB × GROUPS
var<workgroup> red: array<f32, {{WG}}>;
var<workgroup> sq: array<f32, {{WG}}>;    // per lane: Σ x² of its column's rows below the next reflector's diagonal
var<workgroup> tau: array<f32, 32>;
var<workgroup> gram: array<f32, 1024>;  // VᵀV above its diagonal, NB × NB
var<workgroup> tt: array<f32, 1024>;    // T, NB × NB
var<workgroup> scale: f32;

@compute @workgroup_size({{WG}}, 1, 1)
fn panel(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let m = u.m;
    let n = u.n;
    let abase = wg.x * m * n;
    let vbase = u.v_off + wg.x * m * NB;
    let c = li % NB;
    let g = select(li / NB, 0u, GROUPS == 1u);  // uniform on CPU adapters: the row loops then load v_k once per row
    // Copy the panel (rows ≥ j0) into V; zeros above it and in padding columns.
    for (var i = g; i < m; i += GROUPS) {
        var x = 0.0;
        if (i >= u.j0 && c < u.w) { x = a[abase + i * n + u.j0 + c]; }
        v[vbase + i * NB + c] = x;
    }
    storageBarrier();
    workgroupBarrier();
    // Σ x² below the diagonal of the first column; later columns get theirs from the update loop.
    var s0 = 0.0;
    if (c == 0u) {
        for (var i = u.j0 + 1u + g; i < m; i += GROUPS) { let x = v[vbase + i * NB]; s0 += x * x; }
    }
    sq[li] = s0;
    workgroupBarrier();
    for (var k = 0u; k < u.w; k++) {
        let r = u.j0 + k;
        if (li == 0u) {
            let alpha = v[vbase + r * NB + k];
            var sigma = 0.0;
            for (var q = 0u; q < GROUPS; q++) { sigma += sq[q * NB + k]; }
            if (sigma == 0.0) {
                tau[k] = 0.0;    // nothing below the diagonal: H = I
                scale = 0.0;
            } else {
                let nrm = sqrt(alpha * alpha + sigma);
                let beta = select(nrm, -nrm, alpha >= 0.0);
                tau[k] = (beta - alpha) / beta;
                scale = 1.0 / (alpha - beta);
            }
            v[vbase + r * NB + k] = 1.0;
        }
        storageBarrier();
        let sc = workgroupUniformLoad(&scale);
        // v_k = (0…0, 1, x[r+1:] / (alpha − beta)); rows above r of column k (R entries) become 0.
        for (var i = li; i < m; i += WG) {
            if (i > r) { v[vbase + i * NB + k] *= sc; } else if (i < r) { v[vbase + i * NB + k] = 0.0; }
        }
        storageBarrier();
        workgroupBarrier();
        // Panel columns c > k: x ← x − τ v (vᵀx), with vᵀx reduced over the row groups. Columns c < k (finished
        // reflectors, zero-free only where v_k is) give (VᵀV)[c, k] for T in the same pass.
        var d = 0.0;
        if (c != k) {
            for (var i = r + g; i < m; i += GROUPS) { d += v[vbase + i * NB + k] * v[vbase + i * NB + c]; }
        }
        red[li] = d;
        workgroupBarrier();
        var dot = 0.0;
        for (var q = 0u; q < GROUPS; q++) { dot += red[q * NB + c]; }
        if (c < k && g == 0u) { gram[c * NB + k] = dot; }
        dot *= tau[k];
        // Column k + 1 also sums its squares below row r + 1: the next reflector's norm, without a pass of its own.
        var s = 0.0;
        if (c > k) {
            for (var i = r + g; i < m; i += GROUPS) {
                let x = v[vbase + i * NB + c] - dot * v[vbase + i * NB + k];
                v[vbase + i * NB + c] = x;
                if (i > r + 1u) { s += x * x; }
            }
        }
        sq[li] = s;
        storageBarrier();
        workgroupBarrier();
    }
    for (var e = li; e < NB * NB; e += WG) { tt[e] = 0.0; }
    workgroupBarrier();
    // T: T_kk = τ_k, T[0:k, k] = −τ_k · T[0:k, 0:k] · (VᵀV)[0:k, k].
    for (var k = 0u; k < u.w; k++) {
        if (li < k) {
            var s = 0.0;
            for (var q = li; q < k; q++) { s += tt[li * NB + q] * gram[q * NB + k]; }
            tt[li * NB + k] = -tau[k] * s;
        }
        if (li == k) { tt[k * NB + k] = tau[k]; }
        workgroupBarrier();
    }
    let tbase = u.t_off + wg.x * NB * NB;
    for (var e = li; e < NB * NB; e += WG) { t[tbase + e] = tt[e]; }
}

// R = the upper triangle of the reduced matrix `a` (n×n part), rows scaled by sign(diag); Q's columns likewise.
// Here `v` is Q and `t` is R, at offsets v_off and t_off (panel views are bound whole, hence the offsets).
@compute @workgroup_size(256, 1, 1)
fn finish(@builtin(global_invocation_id) gid: vec3<u32>) {
    let m = u.m;
    let n = u.n;
    let b = gid.y;
    let e = gid.x;
    if (e >= m * n) { return; }
    let abase = b * m * n;
    let col = e % n;
    let qi = u.v_off + abase + e;
    if (a[abase + col * n + col] < 0.0) { v[qi] = -v[qi]; }
    if (e < n * n) {
        let row = e / n;
        let sgn = select(1.0, -1.0, a[abase + row * n + row] < 0.0);
        t[u.t_off + b * n * n + e] = select(0.0, sgn * a[abase + row * n + col], col >= row);
    }
}
