// Muon's elementwise halves around the batched polar factor (docs/optimizers.md §2): the momentum kernel writes
// the Newton–Schulz input, the apply kernel scales the polar factor and updates the parameters. One workgroup
// per chunk of the bucket's chunk table; `scale` holds each chunk's learning-rate multiplier (shape convention).
// MOMENTUM (inside placement): M ← βM + (1−β)g (EMA) or βM + g (sum); U = Nesterov ? (1−β)g + βM / g + βM : M.
// COPY (outside placement): the (clipped) gradient itself is orthogonalized.
// APPLY: p ← p(1 − lr·wd) − lr·s·O; with OUTSIDE the momentum runs on O first ("The M in Muon"). Also the apply
// of the Kronecker family (src/optim/kron.rs): flag 4 puts the decay after the update (SOAP's WD-post), flag 8 makes a
// group's first applied step a no-op (SOAP's initialization call), flag 16 scales the decay by the chunk's scale
// (SPlus's shape-scaled lr); with EVAL_EMA (SPlus) the evaluation point x, the bias-corrected EMA of the
// parameters between update and decay, follows: x ← lerp(x, p, (1 − r)/(1 − r^t)) with r = sf_beta.
// APPLY_SF: SF-NorMuon's Schedule-Free update of z and x (the parameters hold y).
struct U { chunks: u32, group: u32, groups_x: u32, flags: u32, wd: f32, sf_beta: f32, _b: f32, _c: f32 }   // flags: 1 nesterov, 2 sum, 4 WD-post, 8 skip first, 16 scaled WD
@group(0) @binding(0) var<uniform> u: U;
@group(0) @binding(1) var<storage, read> table: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read> scalars: array<f32>;
//#if MOMENTUM
@group(0) @binding(3) var<storage, read> grad: array<{{T}}>;
@group(0) @binding(4) var<storage, read_write> mom: array<{{T}}>;
@group(0) @binding(5) var<storage, read_write> ns: array<{{T}}>;
//#endif
//#if COPY
@group(0) @binding(3) var<storage, read> grad: array<{{T}}>;
@group(0) @binding(4) var<storage, read_write> ns: array<{{T}}>;
//#endif
//#if APPLY
@group(0) @binding(3) var<storage, read> scale: array<f32>;
@group(0) @binding(4) var<storage, read_write> param: array<{{T}}>;
@group(0) @binding(5) var<storage, read> polar: array<{{T}}>;
//#if OUTSIDE
@group(0) @binding(6) var<storage, read_write> mom: array<{{T}}>;
//#endif
//#if EVAL_EMA
@group(0) @binding(6) var<storage, read_write> xs: array<{{T}}>;
//#endif
//#endif
//#if APPLY_SF
@group(0) @binding(3) var<storage, read_write> param: array<{{T}}>;
@group(0) @binding(4) var<storage, read> polar: array<{{T}}>;
@group(0) @binding(5) var<storage, read_write> zs: array<{{T}}>;
@group(0) @binding(6) var<storage, read_write> xs: array<{{T}}>;
//#endif

@compute @workgroup_size({{WG}}, 1, 1)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let c = wg.y * u.groups_x + wg.x;
    if (c >= u.chunks || scalars[0] == 0.0) { return; }
    let ch = table[c];
    let o = 8u + 16u * u.group;
    if ((u.flags & 8u) != 0u && scalars[o + 4u] < 1.5) { return; }
    let lr = scalars[o];
    let b = scalars[o + 1u];
    let nesterov = (u.flags & 1u) != 0u;
    let sum = (u.flags & 2u) != 0u;
    for (var i = li; i < ch.w; i += {{WG}}u) {
        let si = ch.z + i;
//#if MOMENTUM
        let g = scalars[1] * grad[ch.y + i];
        let m = select(b * mom[si] + (1.0 - b) * g, b * mom[si] + g, sum);
        mom[si] = m;
        let nsu = select(m, select((1.0 - b) * g + b * m, g + b * m, sum), nesterov);
//#if SIGN
        ns[si] = sign(nsu);   // AdaMuon orthogonalizes the sign matrix
//#else
//#if BIASCORR
        ns[si] = nsu / scalars[o + 2u];   // simplified AdaMuon: M / (1 − β^t)
//#else
        ns[si] = nsu;
//#endif
//#endif
//#endif
//#if COPY
        ns[si] = scalars[1] * grad[ch.y + i];
//#endif
//#if APPLY_SF
        // SF-NorMuon (§8.6): z ← z − η λ z − η Ô; x ← (1−c) x + c z; y = (1−β1) z + β1 x. First step: z = x = p.
        var z = zs[si];
        var x = xs[si];
        if (scalars[o + 4u] == 1.0) { z = param[ch.x + i]; x = z; }
        z = z - lr * u.wd * z - lr * polar[si];
        x = mix(x, z, scalars[o + 6u]);
        zs[si] = z;
        xs[si] = x;
        param[ch.x + i] = mix(z, x, u.sf_beta);
//#endif
//#if APPLY
        var upd = polar[si];
//#if OUTSIDE
        let m = select(b * mom[si] + (1.0 - b) * upd, b * mom[si] + upd, sum);
        mom[si] = m;
        upd = select(m, select((1.0 - b) * upd + b * m, upd + b * m, sum), nesterov);
//#endif
        let p = param[ch.x + i];
        let step = lr * scale[c] * upd;
        let decay = 1.0 - lr * u.wd * select(1.0, scale[c], (u.flags & 16u) != 0u);
        if ((u.flags & 4u) != 0u) {
            let moved = p - step;
//#if EVAL_EMA
            let r = u.sf_beta;
            xs[si] = mix(xs[si], moved, (1.0 - r) / (1.0 - pow(r, scalars[o + 4u])));
//#endif
            param[ch.x + i] = moved * decay;
        } else {
            param[ch.x + i] = p * decay - step;
        }
//#endif
    }
}
