// The dropout mask, shared by every op that drops (included by nn/pointwise.wgsl and nn/attention.wgsl): a
// counter-based hash of (seed, salt, step, element index) decides it, so the backward and a resumed run
// recompute it exactly without storing it.

fn hash(v: u32) -> u32 {
    // PCG output permutation: a well-mixed 32-bit hash.
    let s = v * 747796405u + 2891336453u;
    let w = ((s >> ((s >> 28u) + 4u)) ^ s) * 277803737u;
    return (w >> 22u) ^ w;
}

// Whether element `i` survives dropout with probability `p` at step `step` (the step block's [step, seed]).
fn dropout_keeps(step: u32, seed: u32, salt: u32, i: u32, p: f32) -> bool {
    let key = hash(hash(seed ^ salt) + step);
    let r = f32(hash(key ^ i) >> 8u) * (1.0 / 16777216.0);
    return r >= p;
}
