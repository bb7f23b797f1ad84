// The uniforms of the Kronecker engine's kernels (kron.wgsl, psgd.wgsl): the layout of `KronU` in
// src/optim/kron.rs.
struct U {
    total: u32, dst_off: u32, src_off: u32, group: u32,
    a: f32, b: f32, c: f32, flags: u32,
    d: u32, rows: u32, cols: u32, side: u32,
}
@group(0) @binding(0) var<uniform> u: U;
