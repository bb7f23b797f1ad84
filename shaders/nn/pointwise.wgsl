// Pointwise ops and their backward: GELU (exact, erf form), bias add and its column-sum gradient, dropout
// (nn/dropout_mask.wgsl: backward and resume recompute the mask exactly).
struct U { n: u32, c: u32, x_off: u32, g_off: u32, o_off: u32, acc: u32, p: f32, salt: u32 }
@group(0) @binding(0) var<uniform> u: U;

fn linear_id(gid: vec3<u32>, nw: vec3<u32>) -> u32 { return gid.x + gid.y * nw.x * 64u; }

// erf by Abramowitz & Stegun 7.1.26 (|error| ≤ 1.5e-7, below f32 resolution of the result).
fn erf_approx(x: f32) -> f32 {
    let a = abs(x);
    let t = 1.0 / (1.0 + 0.3275911 * a);
    let poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))));
    return sign(x) * (1.0 - poly * exp(-a * a));
}

@group(0) @binding(1) var<storage, read> gx: array<f32>;
@group(0) @binding(2) var<storage, read_write> gy: array<f32>;

@compute @workgroup_size(64)
fn gelu_forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>) {
    let i = linear_id(gid, nw);
    if (i >= u.n) { return; }
    let x = gx[u.x_off + i];
    gy[u.o_off + i] = 0.5 * x * (1.0 + erf_approx(x * 0.70710678118654752));
}

@group(0) @binding(1) var<storage, read> bx: array<f32>;
@group(0) @binding(2) var<storage, read> bg: array<f32>;
@group(0) @binding(3) var<storage, read_write> bdx: array<f32>;

@compute @workgroup_size(64)
fn gelu_backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>) {
    let i = linear_id(gid, nw);
    if (i >= u.n) { return; }
    let x = bx[u.x_off + i];
    let cdf = 0.5 * (1.0 + erf_approx(x * 0.70710678118654752));
    let pdf = 0.3989422804014327 * exp(-0.5 * x * x);
    var d = bg[u.g_off + i] * (cdf + x * pdf);
    let o = u.o_off + i;
    if (u.acc != 0u) { d += bdx[o]; }
    bdx[o] = d;
}

// bias add: y[r, j] = x[r, j] + b[j] (g_off: the bias offset)
@group(0) @binding(1) var<storage, read> ax: array<f32>;
@group(0) @binding(2) var<storage, read> ab: array<f32>;
@group(0) @binding(3) var<storage, read_write> ay: array<f32>;

@compute @workgroup_size(64)
fn bias_forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>) {
    let i = linear_id(gid, nw);
    if (i >= u.n) { return; }
    ay[u.o_off + i] = ax[u.x_off + i] + ab[u.g_off + i % u.c];
}

// column sums of a [n / c, c] gradient: the bias gradient
@compute @workgroup_size(64)
fn col_sum(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>) {
    let j = linear_id(gid, nw);
    if (j >= u.c) { return; }
    var s = 0.0;
    for (var i = j; i < u.n; i += u.c) { s += gx[u.g_off + i]; }
    let o = u.o_off + j;
    if (u.acc != 0u) { s += gy[o]; }
    gy[o] = s;
}

//#include "nn/dropout_mask.wgsl"

// dropout: out = x·mask/(1 − p); the same call on a gradient is the backward (acc: accumulate into out)
@group(0) @binding(1) var<storage, read> dx: array<f32>;
@group(0) @binding(2) var<storage, read> step: array<u32>; // [step, seed, …]
@group(0) @binding(3) var<storage, read_write> dy: array<f32>;

@compute @workgroup_size(64)
fn dropout(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>) {
    let i = linear_id(gid, nw);
    if (i >= u.n) { return; }
    var d = select(0.0, dx[u.x_off + i] / (1.0 - u.p), dropout_keeps(step[0], step[1], u.salt, i, u.p));
    let o = u.o_off + i;
    if (u.acc != 0u) { d += dy[o]; }
    dy[o] = d;
}
