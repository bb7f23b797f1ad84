// The step prologue (one invocation): global gradient norm and finiteness from the chunk partials (summed in a
// fixed order), the clip coefficient, then per group — only when the step is applied — the step counter, the
// scheduled learning rate and momentum, and the bias corrections. Writes `scalars`, read by every update kernel.
//
// scalars layout: [0] apply (1/0), [1] clip coefficient, [2] global grad norm, [3] skipped steps (f32 copy),
// [4] step-size ratio;
// group g at 8 + 16g: lr_t, beta1_t, 1 − beta1_t^t, 1 − beta2^t, t, (k = t − 1), Schedule-Free c, beta2,
// ScheduleFree+ βsf, then 7 spare.
// counters layout (u32, persistent state): [0] skipped steps, [1] steps attempted, [2 + g] applied steps of group g.
struct Group {
    lr: f32, beta1: f32, beta2: f32, kind: u32,        // kind: 0 constant, 1 warmup+cosine, 2 warmup-stable-decay
    warmup: f32, total: f32, decay: f32, min_ratio: f32,
    m_kind: u32, m_start: f32, m_warmup: f32, m_cooldown: f32,
    m_total: f32, sf: u32, r: f32, wlp: f32,             // sf: Schedule-Free averaging (docs §8) with r, weight_lr_power
    sfp: u32, sf_b1: f32, sf_max: f32, anneal: f32,      // ScheduleFree+ (§8.5): β_sf, its annealing target and length
    polyak_beta: f32, c_warmup: f32, eps: f32, _q: f32,
    _pad: array<vec4<f32>, 2>,
}
struct U { groups: u32, partials: u32, max_norm: f32, clip: u32, loss_off: u32, beta: f32, rmin: f32, rmax: f32, sfp_group: u32, _a: u32, _b: u32, _c: u32 }
@group(0) @binding(0) var<uniform> u: U;
@group(0) @binding(1) var<storage, read> groups: array<Group>;
@group(0) @binding(2) var<storage, read> partial: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> counters: array<u32>;
@group(0) @binding(4) var<storage, read_write> scalars: array<f32>;
// Persistent per-group floats: [lr_max (starts at −1), weight_sum, 0, 0].
// After the groups: [loss EMA, gradient-norm EMA, ratio, 0] for the Polyak rule, then [ê state e, 0, 0, 0] for
// ScheduleFree+.
@group(0) @binding(5) var<storage, read_write> gstate: array<vec4<f32>>;
//#if LOSS
@group(0) @binding(6) var<storage, read> loss: array<f32>;
//#endif

const PI: f32 = 3.14159265358979;

// Learning-rate multiplier at completed-step count k (docs in src/optim/schedule.rs).
fn lr_factor(g: Group, k: f32) -> f32 {
    if (g.kind == 1u) {
        if (k < g.warmup) { return (k + 1.0) / (g.warmup + 1.0); }
        let span = max(g.total - g.warmup, 1.0);
        let p = clamp((k - g.warmup) / span, 0.0, 1.0);
        return g.min_ratio + (1.0 - g.min_ratio) * 0.5 * (1.0 + cos(PI * p));
    }
    if (g.kind == 3u) { return min((k + 1.0) / g.warmup, 1.0); }
    if (g.kind == 2u) {
        if (k < g.warmup) { return (k + 1.0) / g.warmup; }
        let decay_start = g.total - g.decay;
        if (k < decay_start) { return 1.0; }
        let p = clamp((k - decay_start) / max(g.decay, 1.0), 0.0, 1.0);
        return 1.0 - (1.0 - g.min_ratio) * p;
    }
    return 1.0;
}

// Momentum (β1) at completed-step count k: warm up from m_start to beta1, cool down to m_start at the end.
fn momentum(g: Group, k: f32) -> f32 {
    if (g.m_kind == 0u) { return g.beta1; }
    var b = g.beta1;
    if (k < g.m_warmup) { b = mix(g.m_start, g.beta1, k / g.m_warmup); }
    let cool = g.m_total - g.m_cooldown;
    if (g.m_cooldown > 0.0 && k >= cool) { b = mix(g.beta1, g.m_start, min((k - cool) / g.m_cooldown, 1.0)); }
    return b;
}

@compute @workgroup_size(1, 1, 1)
fn main() {
    var ss = 0.0;
    var bad = 0.0;
    var l1 = 0.0;
    var ip = 0.0;
    for (var i = 0u; i < u.partials; i++) {
        let p = partial[i];
        ss += p.x;
        bad = max(bad, p.y);
        l1 += p.z;
        ip += p.w;
    }
    let norm = sqrt(ss);
    var apply = bad == 0.0;
//#if LOSS
    let f = loss[u.loss_off];
    apply = apply && (bitcast<u32>(f) & 0x7f800000u) != 0x7f800000u;
//#endif
    // The shared step-size multiplier: 1, or FusionOpt's clamp(loss_ema / gnorm_ema, min, max).
    var ratio = 1.0;
//#if POLYAK
    var pe = gstate[u.groups];
    if (apply) {
        pe.x = u.beta * pe.x + (1.0 - u.beta) * f;
        pe.y = u.beta * pe.y + (1.0 - u.beta) * norm;
        pe.z = clamp(select(u.rmax, pe.x / pe.y, pe.y > 0.0), u.rmin, u.rmax);
        gstate[u.groups] = pe;
    }
    ratio = pe.z;
//#endif
    counters[1] += 1u;
    if (!apply) { counters[0] += 1u; }
    scalars[0] = select(0.0, 1.0, apply);
    scalars[1] = select(1.0, min(1.0, u.max_norm / (norm + 1e-6)), u.clip == 1u);
    // A skipped step reports NaN as its norm, selected as bits: WGSL has no NaN constants (Tint rejects them).
    scalars[2] = bitcast<f32>(select(bitcast<u32>(norm), 0x7fc00000u, !apply));
    // ScheduleFree+ Polyak step: max(0, f + β_sf·Σ⟨g, z − x⟩) / ê, ê the bias-corrected EMA of ‖g‖₁·sqrt(π/2).
    var polyak = 0.0;
    var bsf = 0.0;
//#if SFPLUS
    let g0 = groups[u.sfp_group];
    let k0 = f32(counters[2u + u.sfp_group]);
    bsf = g0.sf_b1;
    if (g0.anneal > 0.0) {
        let pk = min(k0 / g0.anneal, 1.0);
        bsf = 1.0 - exp((1.0 - pk) * log(1.0 - g0.sf_b1) + pk * log(1.0 - g0.sf_max));
    }
    var es = gstate[u.groups + 1u];
    if (apply) {
        es.x = g0.polyak_beta * es.x + (1.0 - g0.polyak_beta) * l1 * sqrt(PI / 2.0);
        gstate[u.groups + 1u] = es;
    }
    let debias = select(1.0 - pow(g0.polyak_beta, k0 + 1.0), 1.0, g0.polyak_beta == 0.0);
    let ehat = es.x / debias;
    polyak = select(0.0, max(0.0, f + bsf * ip) / ehat, ehat > 0.0);
//#endif
    scalars[3] = f32(counters[0]);
    scalars[4] = ratio;
    for (var g = 0u; g < u.groups; g++) {
        if (apply) { counters[2u + g] += 1u; }
        let t = f32(counters[2u + g]);
        let k = max(t - 1.0, 0.0);
        let gr = groups[g];
        let b1 = momentum(gr, k);
        let o = 8u + 16u * g;
        let lr = gr.lr * lr_factor(gr, k) * ratio;
        // Schedule-Free weights (applied steps only): c = weight / Σ weight, weight = (k+1)^r · lr_max^power.
        var c = 0.0;
        var lr_used = lr;
        if (gr.sfp == 1u) {
            // lr_max starts at eps; c = 1 during c_warmup, then weight / Σ weight.
            lr_used = max(lr, gr.eps) * polyak;
            var st = gstate[g];
            if (apply) { st.x = max(lr_used, st.x); }
            c = 1.0;
            if (k >= gr.c_warmup) {
                let weight = pow(k + 1.0, gr.r) * pow(st.x, gr.wlp);
                if (apply) { st.y += weight; }
                c = select(0.0, weight / st.y, st.y > 0.0);
            }
            if (apply) { gstate[g] = st; }
        }
        if (gr.sf >= 1u) {
            var st = gstate[g];
            if (apply) {
                // sf 1: lr_max (facebookresearch); sf 2: the current lr (SF-NorMuon).
                st.x = select(max(lr, st.x), lr, gr.sf == 2u);
                st.y += pow(k + 1.0, gr.r) * pow(st.x, gr.wlp);
                gstate[g] = st;
            }
            let weight = pow(k + 1.0, gr.r) * pow(st.x, gr.wlp);
            c = select(0.0, weight / st.y, st.y > 0.0);
        }
        scalars[o] = lr_used;
        scalars[o + 1u] = b1;
        scalars[o + 2u] = 1.0 - pow(b1, t);
        scalars[o + 3u] = 1.0 - pow(gr.beta2, t);
        scalars[o + 4u] = t;
        scalars[o + 5u] = k;
        scalars[o + 6u] = c;
        scalars[o + 7u] = gr.beta2;
        scalars[o + 8u] = bsf;
    }
}
