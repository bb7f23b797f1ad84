// Cholesky A + jitter·I = L Lᵀ of each n×n matrix of a stack, right-looking, one workgroup per matrix
// (docs/optimizers.md §11.6). `l` holds a work copy of A on entry and L (lower, zeros above) on return.
// info[b] = 0 on success, else k+1 for the first non-positive pivot k (that pivot is clamped so L stays finite).
struct U { n: u32, _a: u32, jitter: f32, _b: u32 }
@group(0) @binding(0) var<uniform> u: U;
@group(0) @binding(1) var<storage, read_write> l: array<f32>;
@group(0) @binding(2) var<storage, read_write> info: array<f32>;

const WG: u32 = 256u;
var<workgroup> pivot: f32;

@compute @workgroup_size(256, 1, 1)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let n = u.n;
    let base = wg.x * n * n;
    if (li == 0u) { info[wg.x] = 0.0; }
    for (var k = 0u; k < n; k++) {
        if (li == 0u) {
            let d = l[base + k * n + k] + u.jitter;
            if (!(d > 0.0) && info[wg.x] == 0.0) { info[wg.x] = f32(k + 1u); }
            let s = sqrt(max(d, 1e-30));
            l[base + k * n + k] = s;
            pivot = 1.0 / s;
        }
        storageBarrier();
        let inv = workgroupUniformLoad(&pivot);
        for (var i = k + 1u + li; i < n; i += WG) { l[base + i * n + k] *= inv; }
        storageBarrier();
        let t = n - k - 1u;
        for (var e = li; e < t * t; e += WG) {
            let i = k + 1u + e / t;
            let j = k + 1u + e % t;
            if (j <= i) { l[base + i * n + j] -= l[base + i * n + k] * l[base + j * n + k]; }
        }
        storageBarrier();
    }
    for (var e = li; e < n * n; e += WG) {
        if (e % n > e / n) { l[base + e] = 0.0; }
    }
}
