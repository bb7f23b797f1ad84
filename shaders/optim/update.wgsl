// Fused elementwise optimizer updates over a bucket: one workgroup per chunk of the chunk table
// (param offset, grad offset, state offset, length), so any number of tensors take one dispatch.
// The whole step is skipped when the prologue found a non-finite gradient (scalars[0] == 0).
// T is f32, or vec4<f32> for tables whose offsets and lengths are multiples of 4 (4× fewer per-lane memory
// operations on CPU adapters); the same expressions serve both.
// Semantics per optimizer: docs/optimizers.md §7 (AdamW §7.1, Lion §7.4, Signum §7.5) and torch.optim.SGD — those four
// are compositions of stages (OPT_COMPOSED), the Schedule-Free family and ONA have their own blocks.
struct U {
    chunks: u32, group: u32, groups_x: u32, flags: u32,     // flags: 2 maximize
    h0: f32, h1: f32, h2: f32, h3: f32,                      // per-optimizer hyper-parameters (see src/optim)
}
@group(0) @binding(0) var<uniform> u: U;
@group(0) @binding(1) var<storage, read> table: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read> scalars: array<f32>;
@group(0) @binding(3) var<storage, read> grad: array<{{T}}>;
@group(0) @binding(4) var<storage, read_write> param: array<{{T}}>;
//#if STATES_1
@group(0) @binding(5) var<storage, read_write> s0: array<{{T}}>;
//#endif
//#if STATES_2
@group(0) @binding(5) var<storage, read_write> s0: array<{{T}}>;
@group(0) @binding(6) var<storage, read_write> s1: array<{{T}}>;
//#endif
//#if STATES_3
@group(0) @binding(5) var<storage, read_write> s0: array<{{T}}>;
@group(0) @binding(6) var<storage, read_write> s1: array<{{T}}>;
@group(0) @binding(7) var<storage, read_write> s2: array<{{T}}>;
//#endif
//#if STATES_4
@group(0) @binding(5) var<storage, read_write> s0: array<{{T}}>;
@group(0) @binding(6) var<storage, read_write> s1: array<{{T}}>;
@group(0) @binding(7) var<storage, read_write> s2: array<{{T}}>;
@group(0) @binding(8) var<storage, read_write> s3: array<{{T}}>;
//#endif

@compute @workgroup_size({{WG}}, 1, 1)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let c = wg.y * u.groups_x + wg.x;
    if (c >= u.chunks || scalars[0] == 0.0) { return; }
    let ch = table[c];
    let clip = scalars[1];
    let o = 8u + 16u * u.group;
    let lr = scalars[o];
    let b1 = scalars[o + 1u];
    let bc1 = scalars[o + 2u];
    let bc2 = scalars[o + 3u];
    let t = scalars[o + 4u];
    let neg = select(1.0, -1.0, (u.flags & 2u) != 0u);
    for (var i = li; i < ch.w; i += {{WG}}u) {
        let pi = ch.x + i;
        let si = ch.z + i;
        let g = neg * clip * grad[ch.y + i];
        var p = param[pi];
//#if OPT_COMPOSED
        // Stages (src/optim/config/composed.rs), fused: weight decay → momentum → lookahead → normalization →
        // apply. h0 λ, h1 β2, h2 ε, h3 dampening / lookahead weight / Lion's EMA β; b1 the scheduled β1.
        var gg = g;
//#if WD_COUPLED
        gg += u.h0 * p;
//#endif
//#if WD_DECOUPLED
        p *= 1.0 - lr * u.h0;
//#endif
        var d = gg;
        var step = lr;
//#if MOM_EMA
//#if LOOK_LION
        // Lion (§7.4): the sign of β1·m + (1−β1)·g with the momentum before its update.
        let m_prev = s0[si];
        d = b1 * m_prev + (1.0 - b1) * gg;
        s0[si] = u.h3 * m_prev + (1.0 - u.h3) * gg;
//#else
        let m = mix(s0[si], gg, 1.0 - b1);
        s0[si] = m;
        d = m;
//#if LOOK_MIX
        d = (1.0 - u.h3) * m + u.h3 * gg;
//#endif
//#endif
//#endif
//#if MOM_HEAVY
        // torch.optim.SGD: the first step's buffer is the gradient.
        var buf = gg;
        if (t > 1.0) { buf = b1 * s0[si] + (1.0 - u.h3) * gg; }
        s0[si] = buf;
        d = buf;
//#if NESTEROV
        d = gg + b1 * buf;
//#endif
//#endif
//#if NORM_SIGN
        d = sign(d);
//#endif
//#if NORM_ADAM
        // torch Adam (§7.1): eps outside the square root, both moments bias-corrected.
        let v = u.h1 * {{V_STATE}}[si] + (1.0 - u.h1) * gg * gg;
        {{V_STATE}}[si] = v;
        var vv = v;
//#if AMSGRAD
        vv = max({{VMAX_STATE}}[si], v);
        {{VMAX_STATE}}[si] = vv;
//#endif
        let denom = sqrt(vv) / sqrt(bc2) + u.h2;
        d = d / denom;
//#if BIAS_CORRECT
        // torch's order, p − (lr/bc1)·m/denom: one division per element fewer than (m/bc1)/denom.
        step = lr / bc1;
//#endif
//#endif
        p -= step * d;
//#endif
//#if OPT_SF_SGD
        // h0 weight decay. SGDScheduleFree (§8.1, efficient form): the buffer holds y; z starts as the first y.
        let c = scalars[o + 6u];
        var z = s0[si];
        if (t == 1.0) { z = p; }
        let d = g + u.h0 * p;
        p = mix(p, z, c);
        p += lr * (b1 * (1.0 - c) - 1.0) * d;
        s0[si] = z - lr * d;
//#endif
//#if OPT_SF_ADAMW
        // h0 beta2, h1 eps, h2 weight decay, h3 inner momentum. AdamWScheduleFree (§8.2, efficient form).
        let c = scalars[o + 6u];
        var z = s0[si];
        if (t == 1.0) { z = p; }
        let v = u.h0 * s1[si] + (1.0 - u.h0) * g * g;
        s1[si] = v;
        let denom = sqrt(v / bc2) + u.h1;
        var d = g / denom;
//#if STATES_3
        let e = u.h3 * s2[si] + (1.0 - u.h3) * g;
        s2[si] = e;
        d = (e / (1.0 - pow(u.h3, t))) / denom;
//#endif
        d += u.h2 * p;
        p = mix(p, z, c);
        p += lr * (b1 * (1.0 - c) - 1.0) * d;
        s0[si] = z - lr * d;
//#endif
//#if OPT_SF_PLUS
        // h0 beta2, h1 eps, h2 weight decay (AdamC: × lr²). ScheduleFree+ (§8.5): states z, x, m, v; p holds y.
        let c = scalars[o + 6u];
        let bsf = scalars[o + 8u];
        var z = s0[si];
        var x = s1[si];
        if (t == 1.0) { z = p; x = p; }
        z -= lr * lr * u.h2 * p;
        let m = b1 * s2[si] + (1.0 - b1) * g;
        let v = u.h0 * s3[si] + (1.0 - u.h0) * g * g;
        s2[si] = m;
        s3[si] = v;
        z -= lr * (m / bc1) / (sqrt(v / bc2) + u.h1);
        x = mix(x, z, c);
        s0[si] = z;
        s1[si] = x;
        p = bsf * x + (1.0 - bsf) * z;
//#endif
//#if OPT_ONA
        // h0 beta_h, h1 kappa, h2 weight decay, h3 eps; flags 1 = Adam normalization. Provisional (§8.7).
        p *= 1.0 - lr * u.h2;
        let d = select(g - s0[si], g - g, t == 1.0);
        s0[si] = g;
        let h = u.h0 * s1[si] + (1.0 - u.h0) * d;
        s1[si] = h;
        let m = b1 * s2[si] + (1.0 - b1) * (g + u.h1 * h);
        s2[si] = m;
//#if STATES_4
        let b2 = scalars[o + 7u];
        let v = b2 * s3[si] + (1.0 - b2) * g * g;
        s3[si] = v;
        p -= lr * (m / bc1) / (sqrt(v / bc2) + u.h3);
//#else
        p -= lr * m;
//#endif
//#endif
        param[pi] = p;
    }
}
