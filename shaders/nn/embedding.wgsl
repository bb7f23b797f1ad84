// Token + position embedding: out[n, c] = wte[idx[n], c] + wpe[n % T, c], and its deterministic backward:
// the table gradient gathers, per (vocab row, column), the output gradients of that token's positions (a CSR
// list built on the CPU with the batch), so no atomics are needed; the position gradient sums over the batch.
struct U { n: u32, c: u32, t: u32, vocab: u32, a_off: u32, b_off: u32, o_off: u32, acc: u32 }
@group(0) @binding(0) var<uniform> u: U;

fn linear_id(gid: vec3<u32>, nw: vec3<u32>) -> u32 { return gid.x + gid.y * nw.x * 64u; }

// forward: a = wte, b = wpe
@group(0) @binding(1) var<storage, read> idx: array<u32>;
@group(0) @binding(2) var<storage, read> wte: array<f32>;
@group(0) @binding(3) var<storage, read> wpe: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(64)
fn forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>) {
    let i = linear_id(gid, nw);
    if (i >= u.n * u.c) { return; }
    let row = i / u.c;
    let col = i % u.c;
    let tok = min(idx[row], u.vocab - 1u);
    out[u.o_off + i] = wte[u.a_off + tok * u.c + col] + wpe[u.b_off + (row % u.t) * u.c + col];
}

// table gradient: a = gradient of out, o = gradient of wte
@group(0) @binding(1) var<storage, read> starts: array<u32>;
@group(0) @binding(2) var<storage, read> positions: array<u32>;
@group(0) @binding(3) var<storage, read> g_out: array<f32>;
@group(0) @binding(4) var<storage, read_write> g_table: array<f32>;

@compute @workgroup_size(64)
fn table_grad(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>) {
    let i = linear_id(gid, nw);
    if (i >= u.vocab * u.c) { return; }
    let v = i / u.c;
    let col = i % u.c;
    var s = 0.0;
    for (var p = starts[v]; p < starts[v + 1u]; p++) {
        s += g_out[u.a_off + positions[p] * u.c + col];
    }
    let o = u.o_off + i;
    if (u.acc != 0u) { s += g_table[o]; }
    g_table[o] = s;
}

// position gradient: a = gradient of out, o = gradient of wpe
@group(0) @binding(1) var<storage, read> g_rows: array<f32>;
@group(0) @binding(2) var<storage, read_write> g_pos: array<f32>;

@compute @workgroup_size(64)
fn position_grad(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>) {
    let i = linear_id(gid, nw);
    if (i >= u.t * u.c) { return; }
    var s = 0.0;
    for (var r = i; r < u.n * u.c; r += u.t * u.c) { s += g_rows[u.a_off + r]; }
    let o = u.o_off + i;
    if (u.acc != 0u) { s += g_pos[o]; }
    g_pos[o] = s;
}
