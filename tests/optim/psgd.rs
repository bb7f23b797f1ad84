//! PSGD-Kron (docs/optimizers.md §6) against an f64 reference for 30 steps with a cosine schedule, clipping and
//! a skipped NaN step: with hashed probes (the hash and Box–Muller transcribed from shaders/nn/dropout_mask.wgsl
//! and shaders/optim/psgd.wgsl) and with external probes written before each step; the update schedule, state
//! names and bad configs (resume, zero gradients, replay, least squares: tests/optim/kron.rs). The reference
//! does not balance: balancing leaves the preconditioner and every update unchanged, so this also checks that.

use super::cpu::Mat;
use super::kron::{assert_matches, build, drive_with, initial, noisy_grads, SPECS};
use super::noise;
use wgoptim::optim::*;
use wgoptim::Error;

fn grads_at(call: u64) -> Vec<Vec<f32>> {
    noisy_grads(9100, 11, call, (3, 2, f32::NAN))
}

fn hash(v: u32) -> u32 {
    let s = v.wrapping_mul(747796405).wrapping_add(2891336453);
    let w = ((s >> ((s >> 28) + 4)) ^ s).wrapping_mul(277803737);
    (w >> 22) ^ w
}

/// The device's probe for element `k` of the bucket layout at applied step `t`.
fn hashed_normal(seed: u32, t: u32, k: u32) -> f64 {
    let key = hash(hash(seed).wrapping_add(t));
    let u1 = ((hash(key ^ k.wrapping_mul(2)) >> 8) as f64 + 1.0) / 16777216.0;
    let u2 = (hash(key ^ k.wrapping_mul(2).wrapping_add(1)) >> 8) as f64 / 16777216.0;
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// The inverse of an upper-triangular matrix by back substitution.
fn inv_upper(q: &Mat) -> Mat {
    let n = q.r;
    let mut x = Mat::zeros(n, n);
    for c in 0..n {
        for i in (0..n).rev() {
            let e = if i == c { 1.0 } else { 0.0 };
            let s: f64 = (i + 1..n).map(|k| q.at(i, k) * x.at(k, c)).sum();
            x.set(i, c, (e - s) / q.at(i, i));
        }
    }
    x
}

/// kron_torch's `_norm_lower_bound`.
fn lower_bound(a: &Mat) -> f64 {
    let amax = a.d.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    if amax == 0.0 {
        return 0.0;
    }
    let a = a.scale(1.0 / amax);
    let norms: Vec<f64> = (0..a.c).map(|j| (0..a.r).map(|i| a.at(i, j).powi(2)).sum()).collect();
    let j0 = (0..a.c).fold(0, |b, j| if norms[j] > norms[b] { j } else { b });
    let y: Vec<f64> = (0..a.c).map(|j| (0..a.r).map(|i| a.at(i, j0) * a.at(i, j)).sum()).collect();
    let ny = y.iter().map(|v| v * v).sum::<f64>().sqrt();
    let z: Vec<f64> = (0..a.r).map(|k| (0..a.c).map(|j| y[j] / ny * a.at(k, j)).sum()).collect();
    z.iter().map(|v| v * v).sum::<f64>().sqrt() * amax
}

fn triu(x: &Mat) -> Mat {
    let mut y = x.clone();
    for i in 0..x.r {
        for j in 0..i {
            y.set(i, j, 0.0);
        }
    }
    y
}

struct Ref {
    p: Mat,
    m: Mat,
    q: [Mat; 2],
    t: u32,
}

impl Ref {
    fn step(&mut self, c: &PsgdKronConfig, g: &Mat, v: &Mat, update: bool, lr: f64) {
        let b1 = c.beta1 as f64;
        self.t += 1;
        self.m = self.m.scale(b1).add(&g.scale(1.0 - b1));
        let mh = self.m.scale(1.0 / (1.0 - b1.powi(self.t as i32)));
        let [ql, qr] = self.q.clone();
        if update {
            let fit = if c.momentum_into_precond_update { mh.clone() } else { g.clone() };
            let mean = fit.d.iter().map(|x| x.abs()).sum::<f64>() / fit.d.len() as f64;
            let gin = fit.add(&v.scale(f32::EPSILON.sqrt() as f64 * mean));
            let a = ql.mul(&gin).mul(&qr.t());
            let b = inv_upper(&ql).t().mul(v).mul(&inv_upper(&qr));
            let terms = [(a.mul(&a.t()), b.mul(&b.t())), (a.t().mul(&a), b.t().mul(&b))];
            for (s, (t1, t2)) in terms.into_iter().enumerate() {
                let lb = lower_bound(&t1.add(&t2)).max(f32::MIN_POSITIVE as f64);
                let e = triu(&t1.add(&t2.scale(-1.0))).scale(c.precond_lr as f64 / lb);
                self.q[s] = self.q[s].add(&e.mul(&self.q[s]).scale(-1.0));
            }
        }
        let [ql, qr] = &self.q;
        let pd = ql.t().mul(ql).mul(&mh).mul(&qr.t()).mul(qr);
        let rms = pd.norm() / (pd.d.len() as f64).sqrt();
        let pd = pd.scale((c.rms_clip as f64 / (rms + 1e-12)).min(1.0));
        self.p = self.p.scale(1.0 - lr * c.weight_decay as f64).add(&pd.scale(-lr));
    }
}

/// External probes for call `call`, matrix `i`.
fn external(call: u64, i: usize) -> Vec<f32> {
    noise(7700 + 13 * call + i as u64, SPECS[i].1.iter().product())
}

fn conformance(c: PsgdKronConfig) {
    let opt = OptimizerConfig::PsgdKron(c.clone());
    let scale = (c.precond_init_scale as f64).sqrt();
    let mut refs: Vec<Ref> = initial()
        .into_iter()
        .map(|p| Ref { m: Mat::zeros(p.r, p.c), q: [Mat::eye(p.r).scale(scale), Mat::eye(p.c).scale(scale)], t: 0, p })
        .collect();
    let before = |dev: &Optimizer, call: u64| {
        if c.probes == Probes::External {
            for (i, (name, _)) in SPECS.iter().enumerate() {
                dev.state(name, "probe").unwrap().write(&external(call, i)).unwrap();
            }
        }
    };
    let (store, dev) = drive_with(&opt, grads_at, before, |dev, call, i, gm, lr| {
        let r = &mut refs[i];
        let v = match c.probes {
            Probes::External => Mat::from_f32(gm.r, gm.c, &external(call, i)),
            Probes::Hash { seed } => {
                let off = dev.state(SPECS[i].0, "exp_avg").unwrap().offset() as u32;
                let d = (0..gm.r * gm.c).map(|k| hashed_normal(seed, r.t + 1, off + k as u32)).collect();
                Mat { d, ..gm.clone() }
            }
        };
        r.step(&c, gm, &v, c.update_schedule.updates_at(call), lr);
    });
    let want: Vec<f64> = refs.iter().flat_map(|r| r.p.d.clone()).collect();
    assert_matches(&opt, &store, &dev, &want, 1e-4);
}

fn psgd() -> PsgdKronConfig {
    PsgdKronConfig { lr: 0.01, weight_decay: 0.1, ..PsgdKronConfig::default() }
}

#[test]
fn psgd_kron_matches_its_reference_with_hashed_probes() {
    conformance(PsgdKronConfig { probes: Probes::Hash { seed: 7 }, ..psgd() });
}

#[test]
fn psgd_kron_matches_its_reference_with_external_probes_and_a_sparse_schedule() {
    // The preconditioner updated on the calls the schedule picks (every call for 4, then thinning out), fitted to
    // the raw gradient, from a scaled start, with a tighter clip.
    let schedule = UpdateSchedule { flat_start: 4, decay: 0.3, min_prob: 0.2, ..UpdateSchedule::default() };
    conformance(PsgdKronConfig {
        probes: Probes::External,
        update_schedule: schedule,
        momentum_into_precond_update: false,
        precond_init_scale: 2.0,
        rms_clip: 0.5,
        beta1: 0.8,
        ..psgd()
    });
}

#[test]
fn psgd_kron_matches_its_reference_on_blocked_solves_and_wide_rows() {
    // Both factors' triangular solves blocked (n > 32, with a partial block) and rows wider than the 64 columns
    // (or vec4s) of one workgroup: 40×70 takes the scalar path of the per-matrix phases where a side is not a
    // multiple of 4, 36×264 the vec4 path. External probes, an update at every call.
    for (r, c) in [(40, 70), (36, 264)] {
        let cfg = PsgdKronConfig { probes: Probes::External, ..psgd() };
        let gpu = super::gpu();
        let store = ParamStore::new(&gpu, &[("w", &[r, c])]).unwrap();
        let p0 = noise(4100, r * c);
        store.param("w").unwrap().write(&p0).unwrap();
        let mut b = OptimizerBuilder::new(&gpu);
        b.params_from(&store).unwrap();
        b.rule(Matcher::All, Group::new(OptimizerConfig::PsgdKron(cfg.clone())));
        let dev = b.build().unwrap();
        let scale = (cfg.precond_init_scale as f64).sqrt();
        let q = [Mat::eye(r).scale(scale), Mat::eye(c).scale(scale)];
        let mut want = Ref { p: Mat::from_f32(r, c, &p0), m: Mat::zeros(r, c), q, t: 0 };
        for call in 0..12 {
            let (g, v) = (noise(4200 + call, r * c), noise(4300 + call, r * c));
            store.grad("w").unwrap().write(&g).unwrap();
            dev.state("w", "probe").unwrap().write(&v).unwrap();
            dev.step().unwrap();
            let (g, v) = (Mat::from_f32(r, c, &g), Mat::from_f32(r, c, &v));
            want.step(&cfg, &g, &v, cfg.update_schedule.updates_at(call), cfg.lr as f64);
        }
        let got: Vec<f64> = store.param("w").unwrap().read_blocking().unwrap().iter().map(|&x| x as f64).collect();
        let start = Mat::from_f32(r, c, &p0);
        let (diff, moved) = (super::kron::distance(&got, &want.p.d), super::kron::distance(&want.p.d, &start.d));
        assert!(moved > 1e-2 * want.p.norm(), "{r}×{c}: the reference barely moved");
        assert!(diff / moved < 1e-4, "{r}×{c}: displacement error {}", diff / moved);
    }
}

#[test]
fn the_update_schedule_is_kron_torchs_counter() {
    let s = UpdateSchedule::default();
    assert!((0..500).all(|n| s.updates_at(n)));
    assert!((s.prob(1000) - (-0.5f32).exp()).abs() < 1e-6);
    // Far out the probability sits at its floor 0.03: an update every ceil(1/0.03) = 34 calls.
    let at: Vec<u64> = (6000..6200).filter(|&n| s.updates_at(n)).collect();
    assert!(at.len() >= 5 && at.windows(2).all(|w| w[1] - w[0] == 34), "{at:?}");
    // p = 1/2 from the start: every second call.
    let half = UpdateSchedule { max_prob: 0.5, ..s };
    assert_eq!((0..6).map(|n| half.updates_at(n)).collect::<Vec<_>>(), [false, true, false, true, false, true]);
}

#[test]
fn psgd_kron_states_and_bad_configs() {
    let (_, dev) = build(OptimizerConfig::PsgdKron(psgd())).unwrap();
    assert_eq!(dev.state_names("c").unwrap(), ["exp_avg", "factor_left", "factor_right"]);
    assert_eq!(dev.state("c", "factor_right").unwrap().shape(), &[11, 11]);
    let (_, dev) = build(OptimizerConfig::PsgdKron(PsgdKronConfig { probes: Probes::External, ..psgd() })).unwrap();
    assert_eq!(dev.state_names("c").unwrap(), ["exp_avg", "probe", "factor_left", "factor_right"]);
    let bad = [
        PsgdKronConfig { precond_lr: 0.0, ..psgd() },
        PsgdKronConfig { beta1: 1.0, ..psgd() },
        PsgdKronConfig { rms_clip: -1.0, ..psgd() },
        PsgdKronConfig { precond_init_scale: 0.0, ..psgd() },
        PsgdKronConfig { update_schedule: UpdateSchedule { min_prob: 0.0, ..UpdateSchedule::default() }, ..psgd() },
    ];
    for c in bad {
        assert!(matches!(build(OptimizerConfig::PsgdKron(c.clone())), Err(Error::InvalidArgument { .. })), "{c:?}");
    }
    assert!(OptimizerConfig::from_json("psgd_kron", r#"{"probes": {"kind": "hash", "seed": 3}}"#).is_ok());
    assert!(OptimizerConfig::from_json("psgd_kron", r#"{"probes": {"kind": "gaussian"}}"#).is_err());
}
