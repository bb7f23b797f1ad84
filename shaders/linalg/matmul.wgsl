// Batched out = alpha * op(A) op(B) + beta * C, f32 accumulation, one register tile per invocation; variants load
// operands straight from storage (scalar or vec4), share A by subgroup shuffles (CPU adapters) or stage blocks
// of A and B in workgroup memory (GPUs). Tile bodies are generated unrolled (named accumulators) by src/linalg/matmul.rs.
// Indices of loads are clamped into range and stores are guarded, so no access leaves its matrix.
struct U {
    m: u32, n: u32, k: u32, tiles_n: u32,
    a_off: u32, a_bs: u32, b_off: u32, b_bs: u32,
    c_off: u32, c_bs: u32, o_off: u32, o_bs: u32,
    alpha: f32, beta: f32, tiles_m: u32, lda: u32,         // ld*: elements between stored rows (submatrix views)
    ldb: u32, ldo: u32, guard: u32, _p1: u32,
}
@group(0) @binding(0) var<uniform> u: U;
//#if VEC4
// Vector loads: every operand's contiguous dimension, offset and batch stride are multiples of 4 (checked on
// the host), so 16-byte loads stay inside their matrix; k advances 4 at a time.
@group(0) @binding(1) var<storage, read> a4: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> b4: array<vec4<f32>>;
//#else
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
//#endif
@group(0) @binding(3) var<storage, read_write> o: array<f32>;
//#if HAS_C
@group(0) @binding(4) var<storage, read> c: array<f32>;
//#endif
//#if GUARD
// Outputs are left as they are when flags[u.guard] == 0 (checked at the store: no uniformity question before the
// barriers and subgroup operations; the products are computed regardless, on skipped steps only).
@group(0) @binding({{GUARD_BINDING}}) var<storage, read> flags: array<f32>;
//#endif

// Precision emulation of the inputs and outputs (f32: identity; bf16: round-to-nearest-even to 8 mantissa bits).
fn rnd(x: f32) -> f32 {
//#if ROUND_BF16
    let bits = bitcast<u32>(x);
    let lsb = (bits >> 16u) & 1u;
    return bitcast<f32>((bits + 0x7fffu + lsb) & 0xffff0000u);
//#else
//#if ROUND_F16
    // Round to f16's 10 mantissa bits (nearest even) and clamp to its range; done on the bit pattern
    // because drivers fold f32(f16(x)) away.
    let bits = bitcast<u32>(x);
    let r = bitcast<f32>((bits + 0xfffu + ((bits >> 13u) & 1u)) & 0xffffe000u);
    return clamp(r, -65504.0, 65504.0);
//#else
    return x;
//#endif
//#endif
}

//#if VEC4
//#else
fn la(batch: u32, r: u32, kk: u32) -> f32 {
//#if TRANS_A
    return rnd(a[u.a_off + batch * u.a_bs + kk * u.lda + r]);
//#else
    return rnd(a[u.a_off + batch * u.a_bs + r * u.lda + kk]);
//#endif
}

fn lb(batch: u32, kk: u32, cidx: u32) -> f32 {
//#if TRANS_B
    return rnd(b[u.b_off + batch * u.b_bs + cidx * u.ldb + kk]);
//#else
    return rnd(b[u.b_off + batch * u.b_bs + kk * u.ldb + cidx]);
//#endif
}
//#endif

// The k range a tile of rows r0.., columns c0.. sums over: all of k, or less where op(A) or op(B) is triangular
// (A_UPPER: op(A)_rk = 0 for k < r; A_LOWER: for k > r; B_UPPER: op(B)_kc = 0 for k > c; B_LOWER: for k < c),
// the start rounded down to the loop's step (the terms added multiply zeros).
fn k_range(r0: u32, c0: u32, step: u32) -> vec2<u32> {
    var lo = 0u;
    var hi = u.k;
//#if A_UPPER
    lo = max(lo, r0);
//#endif
//#if A_LOWER
    hi = min(hi, r0 + {{TILE_M}}u);
//#endif
//#if B_UPPER
    hi = min(hi, c0 + {{TILE_N}}u);
//#endif
//#if B_LOWER
    lo = max(lo, c0);
//#endif
    return vec2<u32>(lo / step * step, hi);
}

fn store(batch: u32, r: u32, cidx: u32, v: f32) {
    if (r >= u.m || cidx >= u.n) { return; }
//#if GUARD
    if (flags[u.guard] == 0.0) { return; }
//#endif
//#if SYM
    if (cidx < r) { return; }
//#endif
    var acc = u.alpha * v;
//#if HAS_C
    acc += u.beta * c[u.c_off + batch * u.c_bs + r * u.ldo + cidx];
//#endif
//#if C_INPLACE
    acc += u.beta * o[u.o_off + batch * u.o_bs + r * u.ldo + cidx];
//#endif
    o[u.o_off + batch * u.o_bs + r * u.ldo + cidx] = rnd(acc);
//#if SYM
    if (r != cidx) { o[u.o_off + batch * u.o_bs + cidx * u.ldo + r] = rnd(acc); }
//#endif
}

//#if SHARED
// Operand blocks staged in workgroup memory: sa[kk][row] (TILE_M rows, BK deep), sb[kk][col]; strides padded by one.
var<workgroup> sa: array<f32, {{SA_LEN}}>;
var<workgroup> sb: array<f32, {{SB_LEN}}>;

@compute @workgroup_size({{WG_X}}, {{WG_Y}}, 1)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
        @builtin(local_invocation_index) tid: u32) {
    let batch = wg.z;
    let tile_r = wg.y * {{TILE_M}}u;
    let tile_c = wg.x * {{TILE_N}}u;
//#if SYM
    // Symmetric output: tiles wholly below the diagonal have nothing to do (uniform per workgroup).
    if (tile_c + {{TILE_N}}u <= tile_r) { return; }
//#endif
    let row0 = tile_r + lid.y * {{TM}}u;
    let col0 = tile_c + lid.x;
    let arow = lid.y * {{TM}}u;
    let mlast = u.m - 1u;
    let nlast = u.n - 1u;
{{DECL}}
    let kr = k_range(tile_r, tile_c, {{BK}}u);
    for (var k0 = kr.x; k0 < kr.y; k0 += {{BK}}u) {
        let klast = u.k - 1u;
        for (var l = 0u; l < {{LOADS_A}}u; l++) {
            let e = tid + l * {{THREADS}}u;
//#if TRANS_A
            let r = e % {{TILE_M}}u;
            let kk = e / {{TILE_M}}u;
//#else
            let kk = e % {{BK}}u;
            let r = e / {{BK}}u;
//#endif
            let gr = tile_r + r;
            let gk = k0 + kk;
            if (kk < {{BK}}u && r < {{TILE_M}}u) {
                let v = la(batch, min(gr, mlast), min(gk, klast));
                sa[kk * {{SA_STRIDE}}u + r] = select(0.0, v, gr < u.m && gk < u.k);
            }
        }
        for (var l = 0u; l < {{LOADS_B}}u; l++) {
            let e = tid + l * {{THREADS}}u;
//#if TRANS_B
            let kk = e % {{BK}}u;
            let cc = e / {{BK}}u;
//#else
            let cc = e % {{TILE_N}}u;
            let kk = e / {{TILE_N}}u;
//#endif
            let gc = tile_c + cc;
            let gk = k0 + kk;
            if (kk < {{BK}}u && cc < {{TILE_N}}u) {
                let v = lb(batch, min(gk, klast), min(gc, nlast));
                sb[kk * {{SB_STRIDE}}u + cc] = select(0.0, v, gc < u.n && gk < u.k);
            }
        }
        workgroupBarrier();
        for (var kk = 0u; kk < {{BK}}u; kk++) {
{{BODY}}
        }
        workgroupBarrier();
    }
{{STORE}}
}
//#else
//#if SUBGROUP
// Subgroup builtins need a one-dimensional workgroup: rows of WG_X lanes are recovered from the index.
@compute @workgroup_size({{WG_N}}, 1, 1)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32,
        @builtin(subgroup_invocation_id) sg_lane: u32) {
    let lid = vec3<u32>(li % {{WG_X}}u, li / {{WG_X}}u, 0u);
//#else
@compute @workgroup_size({{WG_X}}, {{WG_Y}}, 1)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
//#endif
    let batch = wg.z;
    let ti = wg.y;
    let tj = wg.x;
//#if SYM
    // Symmetric output: tiles wholly below the diagonal have nothing to do (the upper tiles mirror into them).
    if ((tj + 1u) * {{TILE_N}}u <= ti * {{TILE_M}}u) { return; }
//#endif
    let row0 = ti * {{TILE_M}}u + {{ROW_LANE}};
    let col0 = tj * {{TILE_N}}u + {{LANE_COL}};
    let mlast = u.m - 1u;
    let nlast = u.n - 1u;
{{ROWS}}
{{COLS}}
{{DECL}}
//#if VEC4
    let abase = (u.a_off + batch * u.a_bs) / 4u;
    let bbase = (u.b_off + batch * u.b_bs) / 4u;
    let m4 = u.m / 4u;
    let n4 = u.n / 4u;
    let k4 = u.k / 4u;
    let kr = k_range(ti * {{TILE_M}}u, tj * {{TILE_N}}u, 4u);
    for (var kq = kr.x / 4u; kq < (kr.y + 3u) / 4u; kq++) {
        let kk = kq * 4u;
{{BODY}}
    }
//#else
//#if SUBGROUP
    let kr = k_range(ti * {{TILE_M}}u, tj * {{TILE_N}}u, {{K_STEP}}u);
    for (var kk = kr.x; kk < kr.y; kk += {{K_STEP}}u) {
{{BODY}}
    }
//#else
    let kr = k_range(ti * {{TILE_M}}u, tj * {{TILE_N}}u, 1u);
    for (var kk = kr.x; kk < kr.y; kk++) {
{{BODY}}
    }
//#endif
//#endif
{{STORE}}
}
//#endif
