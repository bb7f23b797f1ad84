// Symmetric eigendecomposition by parallel two-sided Jacobi (docs/optimizers.md §11.4): one workgroup per matrix,
// round-robin (circle) ordering gives m/2 disjoint pairs per round, m−1 rounds per sweep; the sweep loop stops
// once off(A)² ≤ tol²·‖A‖² or a sweep rotated nothing (every pair at rounding level). `a` and `v` are work
// copies: V starts as I or the previous basis (warm start); the sweeps here keep it transposed (V_T), while the
// rounds schedule hands over V itself for the sort alone. The result is written sorted ascending into `vals` and
// the columns of `vecs`.
struct U {
    n: u32, m: u32, max_sweeps: u32, warm: u32,
    tol: f32, skip: f32, _q: u32, _r: u32,
}
@group(0) @binding(0) var<uniform> u: U;
@group(0) @binding(1) var<storage, read_write> a: array<f32>;
@group(0) @binding(2) var<storage, read_write> v: array<f32>;
@group(0) @binding(3) var<storage, read_write> vals: array<f32>;
@group(0) @binding(4) var<storage, read_write> vecs: array<f32>;

const WG: u32 = {{WG}}u;   // 256 on CPU adapters; up to 1024 on GPUs, where one matrix has one compute unit
var<workgroup> rot: array<vec2<f32>, {{PAIRS}}>;
var<workgroup> idx: array<vec2<u32>, {{PAIRS}}>;
var<workgroup> red_off: array<f32, {{WG}}>;
var<workgroup> red_tot: array<f32, {{WG}}>;
var<workgroup> done: u32;
var<workgroup> rotated: atomic<u32>;
var<workgroup> abs_thr: f32;

fn pair(r: u32, k: u32) -> vec2<u32> {
    let h = u.m - 1u;
    var p = h;
    var q = r;
    if (k != 0u) {
        p = (r + k) % h;
        q = (r + h - k) % h;
    }
    return vec2<u32>(min(p, q), max(p, q));
}

// (x, y) of rows (or columns) p, q after the rotation cs = (c, s).
fn rotate(cs: vec2<f32>, x: f32, y: f32) -> vec2<f32> {
    return vec2<f32>(cs.x * x - cs.y * y, cs.y * x + cs.x * y);
}

@compute @workgroup_size({{WG}}, 1, 1)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let n = u.n;
    let base = wg.x * n * n;
    let pairs = u.m / 2u;
    for (var sweep = 0u; sweep <= u.max_sweeps; sweep++) {
        var off = 0.0;
        var tot = 0.0;
        for (var i = li; i < n * n; i += WG) {
            let x = a[base + i];
            tot += x * x;
            if (i / n != i % n) { off += x * x; }
        }
        red_off[li] = off;
        red_tot[li] = tot;
        workgroupBarrier();
        for (var w = WG / 2u; w > 0u; w >>= 1u) {
            if (li < w) {
                red_off[li] += red_off[li + w];
                red_tot[li] += red_tot[li + w];
            }
            workgroupBarrier();
        }
        if (li == 0u) {
            // Converged: small off-diagonal mass, or a whole sweep found no pair worth rotating.
            let idle = sweep > 0u && atomicLoad(&rotated) == 0u;
            done = select(0u, 1u, red_off[0] <= u.tol * u.tol * red_tot[0] || idle || sweep == u.max_sweeps);
            atomicStore(&rotated, 0u);
            abs_thr = max(u.tol / f32(n), select(0.0, 4.0 * 5.96e-8, u.warm == 1u)) * sqrt(red_tot[0]);
        }
        if (workgroupUniformLoad(&done) == 1u) { break; }
        for (var r = 0u; r + 1u < u.m; r++) {
            for (var k = li; k < pairs; k += WG) {
                let pq = pair(r, k);
                var cs = vec2<f32>(1.0, 0.0);
                if (pq.y < n) {
                    let apq = a[base + pq.x * n + pq.y];
                    let app = a[base + pq.x * n + pq.x];
                    let aqq = a[base + pq.y * n + pq.y];
                    // Rotate only above rounding level: relative to the pair (n·2⁻²⁴ at least, f32's floor for
                    // an n×n sweep) and absolute (tol·‖A‖_F / n, below which the pair cannot matter to tol; warm
                    // starts also 4·2⁻²⁴·‖A‖_F, the rounding that forming V₀ᵀAV₀ left, which rotations cannot undo).
                    let rel = max(u.skip, f32(n) * 5.96e-8);
                    if (abs(apq) > rel * sqrt(abs(app * aqq)) && abs(apq) > max(abs_thr, 1e-30)) {
                        atomicStore(&rotated, 1u);
                        let tau = (aqq - app) / (2.0 * apq);
                        var t = select(-1.0, 1.0, tau >= 0.0) / (abs(tau) + sqrt(1.0 + tau * tau));
                        if (abs(tau) > 1e18) { t = 0.5 / tau; }
                        let c = inverseSqrt(1.0 + t * t);
                        cs = vec2<f32>(c, t * c);
                    }
                }
                rot[k] = cs;
                idx[k] = pq;
            }
            storageBarrier();
            workgroupBarrier();
            // A ← Jᵀ A J by 2×2 blocks (rows of pair ki, columns of pair kj): each block needs only its two
            // rotations, so one pass reads and writes every element once (rows first, then columns, as the
            // two-pass form would round). A pair past n (odd n) has no rotation and no row.
            for (var i = li; i < pairs * pairs; i += WG) {
                let ri = rot[i / pairs];
                let rj = rot[i % pairs];
                if (ri.y != 0.0 || rj.y != 0.0) {
                    let pi = idx[i / pairs];
                    let pj = idx[i % pairs];
                    let hq_i = pi.y < n;
                    let hq_j = pj.y < n;
                    // rp, rq: the block's parts of rows p and q (columns p, q of pair kj).
                    var rp = vec2<f32>(a[base + pi.x * n + pj.x], 0.0);
                    var rq = vec2<f32>(0.0);
                    if (hq_j) { rp.y = a[base + pi.x * n + pj.y]; }
                    if (hq_i) { rq.x = a[base + pi.y * n + pj.x]; }
                    if (hq_i && hq_j) { rq.y = a[base + pi.y * n + pj.y]; }
                    if (ri.y != 0.0) {
                        let t = ri.x * rp - ri.y * rq;
                        rq = ri.y * rp + ri.x * rq;
                        rp = t;
                    }
                    if (rj.y != 0.0) {
                        rp = rotate(rj, rp.x, rp.y);
                        rq = rotate(rj, rq.x, rq.y);
                    }
                    a[base + pi.x * n + pj.x] = rp.x;
                    if (hq_j) { a[base + pi.x * n + pj.y] = rp.y; }
                    if (hq_i) { a[base + pi.y * n + pj.x] = rq.x; }
                    if (hq_i && hq_j) { a[base + pi.y * n + pj.y] = rq.y; }
                }
            }
            // V ← V J, held transposed (Vᵀ ← Jᵀ Vᵀ): rows p, q, contiguous like A's rows.
            for (var i = li; i < pairs * n; i += WG) {
                let k = i / n;
                let col = i % n;
                let cs = rot[k];
                if (cs.y != 0.0) {
                    let pq = idx[k];
                    let r = rotate(cs, v[base + pq.x * n + col], v[base + pq.y * n + col]);
                    v[base + pq.x * n + col] = r.x;
                    v[base + pq.y * n + col] = r.y;
                }
            }
            storageBarrier();
            workgroupBarrier();
        }
    }
    // Sort ascending (ties by index): rank each eigenvalue, scatter value and column.
    for (var i = li; i < n; i += WG) {
        let li_ = a[base + i * n + i];
        var rank = 0u;
        for (var j = 0u; j < n; j++) {
            let lj = a[base + j * n + j];
            if (lj < li_ || (lj == li_ && j < i)) { rank += 1u; }
        }
        vals[wg.x * n + rank] = li_;
        for (var row = 0u; row < n; row++) {
//#if V_T
            vecs[base + row * n + rank] = v[base + i * n + row];
//#else
            vecs[base + row * n + rank] = v[base + row * n + i];
//#endif
        }
    }
}
