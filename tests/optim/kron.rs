//! SOAP and Shampoo against f64 references (docs/optimizers.md §4.2, §4.6) for 30 steps spanning several
//! refreshes, with a cosine schedule, clipping and a skipped NaN step; the initial eigenbasis, bit-exact resume
//! across refreshes, one submit per step, and bad input.
//!
//! The eigenbasis of a rank-deficient factor is not unique (after one gradient, `GᵀG` of a wide matrix has a
//! null space), and SOAP's update depends on the basis chosen inside it. So the reference adopts the device's
//! initial bases after the first call — they are checked separately against the CPU eigendecomposition where
//! unique — and is independent from there on: every later refresh (power step + QR of a full-rank factor) is
//! unique up to column signs, which the update does not see.

use super::cpu::{cpu_eigh, cpu_qr, Mat};
use super::{cosine, gpu, noise};
use wgoptim::optim::*;
use wgoptim::Error;

/// Two same-shape 8×8 matrices (one stack), a wide 7×11 and a tall 5×3 with odd sizes (stacks of their own). The
/// sizes put the 8×8 stack at a multiple of 4 in the state layout and the others not, so kernels with a vec4 path
/// (taken where a stack's elements and offset are multiples of 4) are checked on both paths.
/// Stacks are ordered by shape: [5,3] (0), [7,11] (1), [8,8]×2 (2).
pub(super) const SPECS: &[(&str, &[usize])] = &[("a", &[8, 8]), ("b", &[8, 8]), ("c", &[7, 11]), ("d", &[5, 3])];
pub(super) const STACK: [u64; 4] = [2, 2, 1, 0];
pub(super) const STACKS: u64 = 3;
pub(super) const STEPS: u64 = 30;
pub(super) const NAN_AT: u64 = 7;
pub(super) const CLIP: f32 = 2.0;

pub(super) fn build(opt: OptimizerConfig) -> Result<(ParamStore, Optimizer), Error> {
    build_on(&gpu(), opt)
}

/// The parameters [`build`] starts from.
pub(super) fn initial() -> Vec<Mat> {
    SPECS.iter().enumerate().map(|(i, (_, s))| Mat::from_f32(s[0], s[1], &noise(300 + i as u64, s[0] * s[1]))).collect()
}

pub(super) fn build_on(gpu: &wgoptim::Gpu, opt: OptimizerConfig) -> Result<(ParamStore, Optimizer), Error> {
    let store = ParamStore::new(gpu, SPECS)?;
    for ((name, _), p) in SPECS.iter().zip(initial()) {
        store.param(name)?.write(&p.f32s())?;
    }
    let mut b = OptimizerBuilder::new(gpu);
    b.params_from(&store)?;
    b.rule(Matcher::All, Group::new(opt).schedule(cosine()));
    b.clip_grad_norm(CLIP);
    Ok((store, b.build()?))
}

/// Call `call`'s gradients: noise seeded `base + stride·call + i` for matrix i, with `bad = (i, k, v)` putting
/// the non-finite `v` at element k of matrix i on call NAN_AT.
pub(super) fn noisy_grads(base: u64, stride: u64, call: u64, bad: (usize, usize, f32)) -> Vec<Vec<f32>> {
    SPECS
        .iter()
        .enumerate()
        .map(|(i, (_, s))| {
            let mut g: Vec<f32> = noise(base + stride * call + i as u64, s.iter().product());
            if call == NAN_AT && i == bad.0 {
                g[bad.1] = bad.2;
            }
            g
        })
        .collect()
}

fn grads_at(call: u64) -> Vec<Vec<f32>> {
    noisy_grads(7000, 31, call, (0, 3, f32::NAN))
}

/// Drive `opt` over SPECS for STEPS calls of `grads` with a cosine schedule and clipping (the call NAN_AT is
/// skipped and must leave the state untouched), handing every applied call's clipped gradient of matrix i and
/// the scheduled lr to `each(dev, call, i, g, lr)`. Returns the store and the optimizer.
pub(super) fn drive(
    opt: &OptimizerConfig,
    grads: impl Fn(u64) -> Vec<Vec<f32>>,
    each: impl FnMut(&Optimizer, u64, usize, &Mat, f64),
) -> (ParamStore, Optimizer) {
    drive_with(opt, grads, |_, _| {}, each)
}

/// [`drive`] with `before(dev, call)` run before every step (e.g. to write inputs besides the gradients).
pub(super) fn drive_with(
    opt: &OptimizerConfig,
    grads: impl Fn(u64) -> Vec<Vec<f32>>,
    mut before: impl FnMut(&Optimizer, u64),
    mut each: impl FnMut(&Optimizer, u64, usize, &Mat, f64),
) -> (ParamStore, Optimizer) {
    let (store, dev) = build(opt.clone()).unwrap();
    let state = |dev: &Optimizer| -> Vec<f32> {
        dev.state_names("a").unwrap().iter().flat_map(|s| read(dev, "a", s)).collect()
    };
    let mut applied = 0u32;
    for call in 0..STEPS {
        let g = grads(call);
        write(&store, &g);
        before(&dev, call);
        let kept = if call == NAN_AT { state(&dev) } else { Vec::new() };
        dev.step().unwrap();
        if call == NAN_AT {
            assert_eq!(kept, state(&dev), "{}: the skipped step changed the state", opt.name());
            continue;
        }
        applied += 1;
        let norm = g.iter().flatten().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
        let coef = (CLIP as f64 / (norm + 1e-6)).min(1.0);
        let lr = opt.lr() as f64 * cosine().factor(applied - 1) as f64;
        for (i, (_, shape)) in SPECS.iter().enumerate() {
            each(&dev, call, i, &Mat::from_f32(shape[0], shape[1], &g[i]).scale(coef), lr);
        }
    }
    (store, dev)
}

/// The device's parameters against the reference's `want`, relative to its norm (≤ `tol`) and to how far it
/// moved from [`initial`] (≤ 10·`tol`, after checking that it moved at all); and the step report (one skipped
/// call). Returns the reference's norm.
pub(super) fn assert_matches(
    opt: &OptimizerConfig,
    store: &ParamStore,
    dev: &Optimizer,
    want: &[f64],
    tol: f64,
) -> f64 {
    let got: Vec<f64> =
        SPECS.iter().flat_map(|(n, _)| store.param(n).unwrap().read_blocking().unwrap()).map(|v| v as f64).collect();
    let start: Vec<f64> = initial().iter().flat_map(|m| m.d.clone()).collect();
    let (diff, moved) = (distance(&got, want), distance(want, &start));
    let norm = want.iter().map(|v| v * v).sum::<f64>().sqrt();
    assert!(moved > 1e-2 * norm, "{opt:?}: the reference barely moved: the test would prove nothing");
    assert!(diff / norm <= tol, "{opt:?}: relative error {} after {STEPS} steps", diff / norm);
    assert!(diff / moved <= 10.0 * tol, "{opt:?}: displacement error {}", diff / moved);
    let report = pollster::block_on(dev.report()).unwrap();
    assert_eq!((report.attempted, report.skipped), (STEPS, 1));
    norm
}

pub(super) fn distance(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum::<f64>().sqrt()
}

pub(super) fn write(store: &ParamStore, g: &[Vec<f32>]) {
    for ((name, _), g) in SPECS.iter().zip(g) {
        store.grad(name).unwrap().write(g).unwrap();
    }
}

pub(super) fn read(opt: &Optimizer, name: &str, state: &str) -> Vec<f32> {
    opt.state(name, state).unwrap().read_blocking().unwrap()
}

pub(super) fn elementwise(a: &Mat, b: &Mat, f: impl Fn(f64, f64) -> f64) -> Mat {
    Mat { d: a.d.iter().zip(&b.d).map(|(x, y)| f(*x, *y)).collect(), ..a.clone() }
}

/// Columns of `q` in descending order of `est` (ties by index), with the permutation.
fn sorted(q: &Mat, est: &[f64]) -> (Mat, Vec<usize>) {
    let mut order: Vec<usize> = (0..est.len()).collect();
    order.sort_by(|&i, &j| est[j].partial_cmp(&est[i]).unwrap().then(i.cmp(&j)));
    let mut o = q.clone();
    for (new, &old) in order.iter().enumerate() {
        for k in 0..q.r {
            o.set(k, new, q.at(k, old));
        }
    }
    (o, order)
}

/// One matrix's reference state.
pub(super) struct RefMat {
    pub(super) p: Mat,
    pub(super) m: Mat,
    pub(super) v: Mat,
    pub(super) f: [Mat; 2],
    pub(super) q: [Mat; 2],
    pub(super) has: [bool; 2],
    pub(super) t: u32,
}

impl RefMat {
    pub(super) fn new(p: Mat, max_dim: usize) -> RefMat {
        let (r, c) = (p.r, p.c);
        RefMat {
            m: Mat::zeros(r, c),
            v: Mat::zeros(r, c),
            f: [Mat::zeros(r, r), Mat::zeros(c, c)],
            q: [Mat::eye(r), Mat::eye(c)],
            has: [r <= max_dim, c <= max_dim],
            t: 0,
            p,
        }
    }

    fn left(&self, x: &Mat, back: bool) -> Mat {
        match (self.has[0], back) {
            (false, _) => x.clone(),
            (true, false) => self.q[0].t().mul(x),
            (true, true) => self.q[0].mul(x),
        }
    }

    pub(super) fn sandwich(&self, x: &Mat, back: bool) -> Mat {
        let y = self.left(x, back);
        match (self.has[1], back) {
            (false, _) => y,
            (true, false) => y.mul(&self.q[1]),
            (true, true) => y.mul(&self.q[1].t()),
        }
    }

    pub(super) fn factor_ema(&mut self, g: &Mat, beta: f64, w: f64) {
        let outer = [g.mul(&g.t()), g.t().mul(g)];
        for s in 0..2 {
            self.f[s] = self.f[s].scale(beta).add(&outer[s].scale(w));
        }
    }

    /// SOAP §4.6: `step` is SOAP's own count (the first call excluded).
    fn soap(&mut self, c: &SoapConfig, g: &Mat, lr: f64, refresh: bool) {
        let (b1, b2, eps) = (c.beta1 as f64, c.beta2 as f64, c.eps as f64);
        let beta = c.factor_beta() as f64;
        if self.t == 0 {
            self.t = 1;
            self.factor_ema(g, beta, 1.0 - beta);
            return; // the bases come from the device (see the module docs)
        }
        self.t += 1;
        let s = (self.t - 1) as i32;
        let gp = self.sandwich(g, false);
        self.m = self.m.scale(b1).add(&gp.scale(1.0 - b1));
        self.v = elementwise(&self.v.scale(b2), &gp, |v, x| v + (1.0 - b2) * x * x);
        let n = self.sandwich(&elementwise(&self.m, &self.v, |m, v| m / (v.sqrt() + eps)), true);
        let ss = if c.correct_bias { lr * (1.0 - b2.powi(s)).sqrt() / (1.0 - b1.powi(s)) } else { lr };
        self.p = self.p.add(&n.scale(-ss)).scale(1.0 - lr * c.weight_decay as f64);
        self.factor_ema(g, beta, 1.0 - beta);
        if refresh {
            let m_orig = self.sandwich(&self.m, true);
            for side in 0..2 {
                if !self.has[side] {
                    continue;
                }
                let fq = self.f[side].mul(&self.q[side]);
                let est: Vec<f64> =
                    (0..fq.c).map(|i| (0..fq.r).map(|k| self.q[side].at(k, i) * fq.at(k, i)).sum()).collect();
                let (qs, order) = sorted(&self.q[side], &est);
                let mut v = self.v.clone();
                for (new, &old) in order.iter().enumerate() {
                    for k in 0..(if side == 0 { v.c } else { v.r }) {
                        if side == 0 {
                            v.set(new, k, self.v.at(old, k));
                        } else {
                            v.set(k, new, self.v.at(k, old));
                        }
                    }
                }
                self.v = v;
                self.q[side] = cpu_qr(&self.f[side].mul(&qs)).0;
            }
            self.m = self.sandwich(&m_orig, false);
        }
    }

    /// Shampoo §4.2 (`q` holds the inverse roots, `m` the gradient EMA, `v` the grafting state).
    fn shampoo(&mut self, c: &ShampooConfig, g: &Mat, lr: f64, refresh: [bool; 2]) {
        self.t += 1;
        let t = self.t as i32;
        let (b1, b2) = (c.beta1 as f64, c.beta2 as f64);
        self.factor_ema(g, b2, if b2 == 1.0 { 1.0 } else { 1.0 - b2 });
        for s in (0..2).filter(|&s| refresh[s]) {
            let bc = if c.use_bias_correction && b2 < 1.0 { 1.0 - b2.powi(t) } else { 1.0 };
            let a = self.f[s].scale(1.0 / bc).add(&Mat::eye(self.f[s].r).scale(c.epsilon as f64));
            let (mut vals, vecs) = cpu_eigh(&a);
            let lo = vals.iter().cloned().fold(f64::INFINITY, f64::min);
            if lo < c.epsilon as f64 {
                vals.iter_mut().for_each(|l| *l = *l - lo + c.epsilon as f64);
            }
            let w: Vec<f64> = vals.iter().map(|l| l.powf(-1.0 / c.root as f64)).collect();
            self.q[s] = vecs.scale_cols(&w).mul(&vecs.t());
        }
        let gbar = if b1 > 0.0 {
            let b3 = c.filter_beta() as f64;
            let old = self.m.clone();
            self.m = old.scale(b1).add(&g.scale(1.0 - b1));
            let gb = old.scale(b3).add(&g.scale(1.0 - b3));
            if c.use_bias_correction {
                gb.scale(1.0 / (1.0 - b3 * b1.powi(t - 1)))
            } else {
                gb
            }
        } else {
            g.clone()
        };
        let pre = self.q[0].mul(&gbar).mul(&self.q[1]);
        let dir = match c.grafting {
            None => pre,
            Some(gr) => {
                let (eps, bc) = match gr {
                    Grafting::Adam { beta2, eps } => {
                        self.v = elementwise(&self.v.scale(beta2 as f64), g, |v, x| v + (1.0 - beta2 as f64) * x * x);
                        (eps as f64, 1.0 - (beta2 as f64).powi(t))
                    }
                    Grafting::Rmsprop { beta2, eps } => {
                        self.v = elementwise(&self.v.scale(beta2 as f64), g, |v, x| v + (1.0 - beta2 as f64) * x * x);
                        (eps as f64, 1.0)
                    }
                    Grafting::Adagrad { eps } => {
                        self.v = elementwise(&self.v, g, |v, x| v + x * x);
                        (eps as f64, 1.0)
                    }
                };
                let graft = elementwise(&gbar, &self.v, |x, v| x / ((v / bc).sqrt() + eps));
                if (t as u32) < c.start() {
                    graft
                } else {
                    pre.scale(graft.norm() / (pre.norm() + 1e-16))
                }
            }
        };
        self.p = self.p.scale(1.0 - lr * c.weight_decay as f64).add(&dir.scale(-lr));
    }
}

/// The refresh offset of matrix `i` under staggering over `period` calls, by the library's rule: each stack (in
/// stack order; parameter order within) in chunks of ⌈matrices / period⌉ (at least GPU_MIN_STAGGER_CHUNK on GPUs),
/// chunk j of J at j·period/J.
pub(super) fn stagger_offset(i: usize, period: u64) -> u64 {
    let (mine, chunks) = stagger_chunk(i, period);
    mine as u64 * period / chunks as u64
}

/// Matrix `i`'s chunk j under staggering over `period` calls, and the number of chunks J.
fn stagger_chunk(i: usize, period: u64) -> (usize, usize) {
    let min_chunk = if gpu().is_cpu() { 1 } else { GPU_MIN_STAGGER_CHUNK };
    let size = SPECS.len().div_ceil(period as usize).max(min_chunk);
    let (mut chunks, mut mine) = (0, 0);
    for s in 0..STACKS {
        let members: Vec<usize> = (0..SPECS.len()).filter(|&j| STACK[j] == s).collect();
        if let Some(pos) = members.iter().position(|&j| j == i) {
            mine = chunks + pos / size;
        }
        chunks += members.len().div_ceil(size);
    }
    (mine, chunks)
}

fn soap_refresh_due(c: &SoapConfig, call: u64, i: usize) -> bool {
    let f = c.precondition_frequency as u64;
    let offset = if c.stagger { stagger_offset(i, f) } else { 0 };
    call > 0 && call >= offset && (call - offset).is_multiple_of(f)
}

/// Whether each side's root of matrix `i` is refreshed at `call`. Staggered on GPUs, each chunk's sides are calls
/// of their own: chunk j of J's side s at (2j + s)·period/(2J).
fn shampoo_refresh_due(c: &ShampooConfig, call: u64, i: usize) -> [bool; 2] {
    let period = c.precondition_frequency as u64;
    let offset = |s: usize| match (c.stagger, gpu().is_cpu()) {
        (false, _) => 0,
        (true, true) => stagger_offset(i, period),
        (true, false) => {
            let (mine, chunks) = stagger_chunk(i, period);
            (2 * mine + s) as u64 * period / (2 * chunks) as u64
        }
    };
    [0, 1].map(|s| call + 1 > offset(s) && c.refreshes_at(call + 1 - offset(s)))
}

/// Run the device and the reference side by side; compare the parameters at the end.
fn conformance(opt: OptimizerConfig) {
    let max_dim = match &opt {
        OptimizerConfig::Soap(c) => c.max_precond_dim,
        _ => usize::MAX,
    };
    let mut refs: Vec<RefMat> = initial().into_iter().map(|p| RefMat::new(p, max_dim)).collect();
    let (store, dev) = drive(&opt, grads_at, |dev, call, i, gm, lr| {
        let r = &mut refs[i];
        match &opt {
            OptimizerConfig::Soap(c) => {
                r.soap(c, gm, lr, soap_refresh_due(c, call, i));
                if call == 0 {
                    for (s, side) in ["basis_left", "basis_right"].iter().enumerate() {
                        if r.has[s] {
                            let d = SPECS[i].1[s];
                            r.q[s] = Mat::from_f32(d, d, &read(dev, SPECS[i].0, side));
                        }
                    }
                }
            }
            OptimizerConfig::Shampoo(c) => r.shampoo(c, gm, lr, shampoo_refresh_due(c, call, i)),
            _ => unreachable!(),
        }
    });
    let want: Vec<f64> = refs.iter().flat_map(|r| r.p.d.clone()).collect();
    assert_matches(&opt, &store, &dev, &want, 1e-4);
}

fn soap() -> SoapConfig {
    SoapConfig { lr: 0.02, precondition_frequency: 4, ..SoapConfig::default() }
}

#[test]
fn soap_matches_its_reference() {
    conformance(OptimizerConfig::Soap(soap()));
}

#[test]
fn soap_variants_match_their_reference() {
    // One-sided for the 7×11 (its 11 columns stay in the original basis), staggered refreshes, no bias
    // correction, its own factor β, heavier weight decay.
    conformance(OptimizerConfig::Soap(SoapConfig {
        beta1: 0.9,
        beta2: 0.99,
        shampoo_beta: Some(0.8),
        correct_bias: false,
        weight_decay: 0.3,
        max_precond_dim: 9,
        stagger: true,
        ..soap()
    }));
}

#[test]
fn shampoo_matches_its_reference() {
    // Well-conditioned factors: ε large enough that f32 roots are accurate to the test's tolerance.
    conformance(OptimizerConfig::Shampoo(ShampooConfig { lr: 0.1, epsilon: 0.05, ..ShampooConfig::default() }));
}

#[test]
fn shampoo_variants_match_their_reference() {
    let base = ShampooConfig { lr: 0.01, epsilon: 0.05, weight_decay: 0.1, ..ShampooConfig::default() };
    let variants = [
        // Period 4 over 3 chunks: on GPUs each chunk's sides refresh at different calls.
        ShampooConfig {
            beta2: 0.95,
            precondition_frequency: 4,
            start_preconditioning_step: Some(5),
            grafting: Some(Grafting::Adam { beta2: 0.99, eps: 1e-8 }),
            stagger: true,
            ..base.clone()
        },
        ShampooConfig {
            beta1: 0.0,
            root: 2,
            precondition_frequency: 2,
            grafting: Some(Grafting::Adagrad { eps: 1e-6 }),
            ..base.clone()
        },
        ShampooConfig {
            root_method: RootMethod::CoupledNewton { iterations: 40 },
            precondition_frequency: 4,
            ..base.clone()
        },
        ShampooConfig {
            beta3: Some(0.5),
            beta2: 0.9,
            use_bias_correction: false,
            grafting: Some(Grafting::Rmsprop { beta2: 0.9, eps: 1e-6 }),
            ..base
        },
    ];
    for v in variants {
        conformance(OptimizerConfig::Shampoo(v));
    }
}

#[test]
fn soap_first_call_initializes_the_sorted_eigenbasis_without_updating() {
    let c = soap();
    let (store, dev) = build(OptimizerConfig::Soap(c.clone())).unwrap();
    let before = store.param("a").unwrap().read_blocking().unwrap();
    let g = grads_at(0);
    write(&store, &g);
    dev.step().unwrap();
    assert_eq!(store.param("a").unwrap().read_blocking().unwrap(), before, "the first call must not update");
    let gm = Mat::from_f32(8, 8, &g[0])
        .scale((CLIP as f64 / g.iter().flatten().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt()).min(1.0));
    let f = gm.mul(&gm.t()).scale(1.0 - c.factor_beta() as f64);
    let got_f = read(&dev, "a", "factor_left");
    assert!(got_f.iter().zip(&f.d).all(|(a, b)| (*a as f64 - b).abs() < 1e-5), "factor_left");
    let (vals, vecs) = cpu_eigh(&f);
    let q = Mat::from_f32(8, 8, &read(&dev, "a", "basis_left"));
    for j in 0..8 {
        // Descending order: device column j is the CPU's column 7 − j, up to sign.
        let dot: f64 = (0..8).map(|k| q.at(k, j) * vecs.at(k, 7 - j)).sum();
        assert!((dot.abs() - 1.0).abs() < 1e-4, "column {j}: |dot| = {} (λ = {})", dot.abs(), vals[7 - j]);
    }
}

#[test]
fn whitening_resume_is_bit_exact_across_refreshes() {
    let soap = OptimizerConfig::Soap(SoapConfig { stagger: true, ..soap() });
    let shampoo = OptimizerConfig::Shampoo(ShampooConfig {
        precondition_frequency: 3,
        grafting: Some(Grafting::Adam { beta2: 0.99, eps: 1e-8 }),
        epsilon: 1e-3,
        ..ShampooConfig::default()
    });
    let family = [
        OptimizerConfig::KlShampoo(KlShampooConfig { stagger: true, precondition_frequency: 4, ..Default::default() }),
        OptimizerConfig::Splus(SplusConfig {
            stagger: true,
            inverse_every: 4,
            ema_rate: Some(0.9),
            ..Default::default()
        }),
        OptimizerConfig::Spa(SpaConfig { precondition_frequency: 3, ..SpaConfig::default() }),
        OptimizerConfig::Fismo(super::fismo::fismo()),
        OptimizerConfig::Fismo(FismoConfig { root_every: 3, stagger: true, ..super::fismo::fismo() }),
        OptimizerConfig::FismoDiag(FismoDiagConfig::default()),
        OptimizerConfig::Whiten(WhitenConfig {
            stagger: true,
            precondition_frequency: 3,
            ..WhitenConfig::cell(Basis::Eigen, Normalization::VarianceFactorized)
        }),
        OptimizerConfig::Whiten(WhitenConfig::cell(Basis::NewtonSchulz, Normalization::VarianceFull)),
        OptimizerConfig::PsgdKron(PsgdKronConfig {
            update_schedule: UpdateSchedule { flat_start: 2, decay: 0.5, ..UpdateSchedule::default() },
            ..PsgdKronConfig::default()
        }),
    ];
    for opt in [soap, shampoo].into_iter().chain(family) {
        let (store, dev) = build(opt.clone()).unwrap();
        for call in 0..5 {
            write(&store, &grads_at(call));
            dev.step().unwrap();
        }
        let saved = pollster::block_on(dev.save()).unwrap();
        let (store2, dev2) = build(opt.clone()).unwrap();
        dev2.load(&saved).unwrap();
        for call in 5..13 {
            write(&store, &grads_at(call));
            dev.step().unwrap();
            write(&store2, &grads_at(call));
            dev2.step().unwrap();
        }
        // The parameters, and the evaluation points (SPlus's EMA; the parameters for the others).
        let values = |store: &ParamStore, dev: &Optimizer| {
            let mut v = pollster::block_on(dev.eval_params()).unwrap();
            v.extend(SPECS.iter().map(|(n, _)| (n.to_string(), store.param(n).unwrap().read_blocking().unwrap())));
            v
        };
        for ((n, x), (_, y)) in values(&store, &dev).into_iter().zip(values(&store2, &dev2)) {
            assert!(x.iter().zip(&y).all(|(p, q)| p.to_bits() == q.to_bits()), "{}: `{n}` differs", opt.name());
        }
    }
}

#[test]
fn whitening_steps_are_one_submit_even_with_refreshes() {
    let gpu = wgoptim::Gpu::new_blocking().unwrap(); // own device: the shared one counts other tests' submits
    let (store, dev) = build_on(&gpu, OptimizerConfig::Shampoo(ShampooConfig::default())).unwrap();
    for call in 0..3 {
        write(&store, &grads_at(call));
        let before = gpu.counters().submits();
        dev.step().unwrap();
        assert_eq!(gpu.counters().submits() - before, 1, "shampoo call {call}");
    }
    let (store, dev) = build_on(&gpu, OptimizerConfig::Soap(soap())).unwrap();
    for call in 0..9 {
        write(&store, &grads_at(call % 5));
        let before = gpu.counters().submits();
        dev.step().unwrap();
        assert_eq!(gpu.counters().submits() - before, 1, "call {call}");
    }
    let (step, refresh) = dev.dispatch_counts();
    assert!(step > 0 && refresh > 0);
    assert_eq!(
        dev.state_names("c").unwrap(),
        ["exp_avg", "exp_avg_sq", "factor_left", "basis_left", "factor_right", "basis_right"]
    );
    assert_eq!(dev.state("c", "basis_right").unwrap().shape(), &[11, 11]);
}

#[test]
fn refresh_cadence_matches_the_refresh_steps() {
    // `Optimizer::refresh_cadence` (which `bench step` times by) against the refresh steps the references take:
    // the warm-up must reach every stack's first refresh after its cold one, the period is the frequency.
    let warm_after = |due: &dyn Fn(u64) -> bool, cold: usize| (0..1000).filter(|&c| due(c)).nth(cold).unwrap() + 1;
    for f in [3u32, 10] {
        for stagger in [false, true] {
            let c = SoapConfig { precondition_frequency: f, stagger, ..soap() };
            let (_, dev) = build(OptimizerConfig::Soap(c.clone())).unwrap();
            // SOAP's cold refresh is call 0's initialization, which `soap_refresh_due` leaves out.
            let warm = (0..SPECS.len()).map(|i| warm_after(&|call| soap_refresh_due(&c, call, i), 0)).max();
            let want = RefreshCadence { warm_after: warm.unwrap(), period: f as u64 };
            assert_eq!(dev.refresh_cadence(), Some(want), "soap f = {f}, stagger {stagger}");
        }
    }
    for (f, start, stagger) in [(4u32, None, false), (10, None, true), (5, Some(7), true), (5, Some(3), false)] {
        let c = ShampooConfig {
            precondition_frequency: f,
            start_preconditioning_step: start,
            stagger,
            ..Default::default()
        };
        let (_, dev) = build(OptimizerConfig::Shampoo(c.clone())).unwrap();
        let warm = (0..SPECS.len())
            .flat_map(|i| [0, 1].map(|s| warm_after(&|call| shampoo_refresh_due(&c, call, i)[s], 1)))
            .max();
        let want = RefreshCadence { warm_after: warm.unwrap(), period: f as u64 };
        assert_eq!(dev.refresh_cadence(), Some(want), "shampoo f = {f}, start {start:?}, stagger {stagger}");
    }
    // Two groups: the pattern repeats after the periods' least common multiple.
    let gpu = gpu();
    let store = ParamStore::new(&gpu, SPECS).unwrap();
    let mut b = OptimizerBuilder::new(&gpu);
    b.params_from(&store).unwrap();
    let shampoo = ShampooConfig { precondition_frequency: 6, ..Default::default() };
    b.rule(Matcher::Names(vec!["a".into(), "b".into()]), Group::new(OptimizerConfig::Soap(soap())));
    b.rule(Matcher::All, Group::new(OptimizerConfig::Shampoo(shampoo)));
    let dev = b.build().unwrap();
    assert_eq!(dev.refresh_cadence().map(|c| c.period), Some(lcm(soap().precondition_frequency as u64, 6)));
    // No refreshes, or PSGD-Kron's schedule, which is not periodic.
    for opt in [OptimizerConfig::Muon(Default::default()), OptimizerConfig::PsgdKron(Default::default())] {
        assert_eq!(build(opt).unwrap().1.refresh_cadence(), None);
    }
}

fn lcm(a: u64, b: u64) -> u64 {
    (1..=a * b).find(|m| m % a == 0 && m % b == 0).unwrap()
}

#[test]
fn bad_whitening_configs_are_errors() {
    let bad = [
        OptimizerConfig::Soap(SoapConfig { precondition_frequency: 0, ..soap() }),
        OptimizerConfig::Soap(SoapConfig { beta2: 1.0, ..soap() }),
        OptimizerConfig::Shampoo(ShampooConfig { root: 3, ..ShampooConfig::default() }),
        OptimizerConfig::Shampoo(ShampooConfig { epsilon: 0.0, ..ShampooConfig::default() }),
        OptimizerConfig::Shampoo(ShampooConfig {
            root_method: RootMethod::CoupledNewton { iterations: 0 },
            ..ShampooConfig::default()
        }),
        OptimizerConfig::Shampoo(ShampooConfig {
            grafting: Some(Grafting::Adam { beta2: 1.5, eps: 1e-8 }),
            ..ShampooConfig::default()
        }),
    ];
    for opt in bad {
        assert!(matches!(build(opt.clone()), Err(Error::InvalidArgument { .. })), "{opt:?} was accepted");
    }
    // A vector routed to SOAP is a routing error naming it.
    let gpu = gpu();
    let store = ParamStore::new(&gpu, &[("w", &[4, 4]), ("bias", &[4])]).unwrap();
    let mut b = OptimizerBuilder::new(&gpu);
    b.params_from(&store).unwrap();
    b.rule(Matcher::All, Group::new(OptimizerConfig::Soap(soap())));
    match b.build() {
        Err(Error::InvalidArgument { detail, .. }) => assert!(detail.contains("bias"), "{detail}"),
        other => panic!("expected a routing error, got {:?}", other.map(|_| ())),
    }
    assert!(OptimizerConfig::from_json("soap", r#"{"lr": 0.1, "bogus": 1}"#).is_err());
    assert!(
        OptimizerConfig::from_json("shampoo", r#"{"grafting": {"kind": "adam", "beta2": 0.9, "eps": 1e-8}}"#).is_ok()
    );
}

/// `min ½‖XW − Y‖²/N` with a rank-3 design X (N = 24, 6 features) and W of 6×10: the gradient `Xᵀ(XW − Y)/N` and
/// with it the left factor are rank-deficient every step. Returns (initial loss, final loss, all finite).
fn least_squares(opt: OptimizerConfig, steps: u32) -> (f64, f64, bool) {
    let (n, m, k) = (24usize, 6usize, 10usize);
    let basis = noise(11, n * 3);
    let mix = noise(12, 3 * m);
    // X = B·C with B: N×3, C: 3×6.
    let x: Vec<f64> =
        (0..n * m).map(|i| (0..3).map(|r| basis[(i / m) * 3 + r] as f64 * mix[r * m + i % m] as f64).sum()).collect();
    let w_star = noise(13, m * k);
    let y: Vec<f64> =
        (0..n * k).map(|i| (0..m).map(|j| x[(i / k) * m + j] * w_star[j * k + i % k] as f64).sum()).collect();
    let gpu = gpu();
    let store = ParamStore::new(&gpu, &[("w", &[m, k])]).unwrap();
    let mut b = OptimizerBuilder::new(&gpu);
    b.params_from(&store).unwrap();
    let schedule = Schedule::WarmupCosine { warmup: 50, total: steps, min_ratio: 0.01 };
    b.rule(Matcher::All, Group::new(opt).schedule(schedule));
    let dev = b.build().unwrap();
    let (w, g) = (store.param("w").unwrap(), store.grad("w").unwrap());
    let loss_grad = |wv: &[f32]| {
        let r: Vec<f64> = (0..n * k)
            .map(|i| (0..m).map(|j| x[(i / k) * m + j] * wv[j * k + i % k] as f64).sum::<f64>() - y[i])
            .collect();
        let loss = r.iter().map(|v| v * v).sum::<f64>() / (2.0 * n as f64);
        let grad: Vec<f32> = (0..m * k)
            .map(|e| ((0..n).map(|s| x[s * m + e / k] * r[s * k + e % k]).sum::<f64>() / n as f64) as f32)
            .collect();
        (loss, grad)
    };
    let mut wv = w.read_blocking().unwrap();
    let (first, _) = loss_grad(&wv);
    let mut finite = true;
    for _ in 0..steps {
        let (_, grad) = loss_grad(&wv);
        g.write(&grad).unwrap();
        dev.step().unwrap();
        wv = w.read_blocking().unwrap();
        finite &= wv.iter().all(|v| v.is_finite());
    }
    (first, loss_grad(&wv).0, finite)
}

#[test]
fn rank_deficient_least_squares_converges_for_10000_steps() {
    let runs = [
        OptimizerConfig::Soap(SoapConfig { lr: 0.01, weight_decay: 0.0, ..SoapConfig::default() }),
        OptimizerConfig::Shampoo(ShampooConfig {
            lr: 0.05,
            precondition_frequency: 10,
            epsilon: 1e-6,
            ..ShampooConfig::default()
        }),
        OptimizerConfig::Splus(SplusConfig {
            lr: 0.05,
            weight_decay: 0.0,
            inverse_every: 10,
            ..SplusConfig::default()
        }),
        OptimizerConfig::Spa(SpaConfig { lr: 0.01, ..SpaConfig::default() }),
        OptimizerConfig::KlShampoo(KlShampooConfig { lr: 0.005, weight_decay: 0.0, ..KlShampooConfig::default() }),
        OptimizerConfig::Fismo(FismoConfig { lr: 0.01, ..FismoConfig::default() }),
        OptimizerConfig::FismoDiag(FismoDiagConfig { lr: 0.01, ..FismoDiagConfig::default() }),
        OptimizerConfig::Whiten(WhitenConfig {
            lr: 0.01,
            ..WhitenConfig::cell(Basis::Eigen, Normalization::VarianceFactorized)
        }),
        OptimizerConfig::PsgdKron(PsgdKronConfig { lr: 0.003, ..PsgdKronConfig::default() }),
    ];
    for opt in runs {
        let (first, last, finite) = least_squares(opt.clone(), 10_000);
        eprintln!("{}: loss {first:.3e} → {last:.3e}", opt.name());
        assert!(finite, "{}: non-finite parameters", opt.name());
        assert!(last < 1e-3 * first, "{}: loss {first} → {last}", opt.name());
    }
}

#[test]
fn zero_gradients_never_produce_nan() {
    let gpu = gpu();
    for opt in [
        OptimizerConfig::Soap(soap()),
        OptimizerConfig::Shampoo(ShampooConfig::default()),
        OptimizerConfig::Shampoo(ShampooConfig {
            root_method: RootMethod::CoupledNewton { iterations: 20 },
            grafting: Some(Grafting::Adam { beta2: 0.99, eps: 1e-8 }),
            ..ShampooConfig::default()
        }),
        OptimizerConfig::Splus(SplusConfig { inverse_every: 4, ..SplusConfig::default() }),
        OptimizerConfig::Spa(SpaConfig { precondition_frequency: 4, ..SpaConfig::default() }),
        OptimizerConfig::KlShampoo(KlShampooConfig { precondition_frequency: 4, ..KlShampooConfig::default() }),
        OptimizerConfig::Fismo(FismoConfig::default()),
        OptimizerConfig::Fismo(FismoConfig { root_every: 4, ..FismoConfig::default() }),
        OptimizerConfig::FismoDiag(FismoDiagConfig::default()),
        OptimizerConfig::Whiten(WhitenConfig {
            precondition_frequency: 4,
            ..WhitenConfig::cell(Basis::Eigen, Normalization::VarianceFactorized)
        }),
        OptimizerConfig::Whiten(WhitenConfig::cell(Basis::Identity, Normalization::VarianceFactorized)),
        OptimizerConfig::Whiten(WhitenConfig::cell(Basis::NewtonSchulz, Normalization::VarianceFull)),
        OptimizerConfig::PsgdKron(PsgdKronConfig::default()),
    ] {
        let (store, dev) = build_on(&gpu, opt.clone()).unwrap();
        for call in 0..12 {
            // Zero gradients, then one real one: the refreshes of zero factors must stay finite.
            let g = if call == 9 {
                grads_at(call)
            } else {
                SPECS.iter().map(|(_, s)| vec![0.0; s.iter().product()]).collect()
            };
            write(&store, &g);
            dev.step().unwrap();
        }
        for (n, _) in SPECS {
            for s in dev.state_names(n).unwrap() {
                assert!(read(&dev, n, &s).iter().all(|v| v.is_finite()), "{}: `{n}` state `{s}`", opt.name());
            }
            assert!(store.param(n).unwrap().read_blocking().unwrap().iter().all(|v| v.is_finite()));
        }
    }
}

#[test]
fn replay_runs_the_whitening_optimizers_like_a_direct_run() {
    let gpu = gpu();
    let params: [(&str, &[usize]); 2] = [("w", &[8, 8]), ("c", &[7, 11])];
    for (name, config) in [
        ("soap", r#"{"lr": 0.02, "precondition_frequency": 3}"#),
        ("shampoo", r#"{"lr": 0.01, "epsilon": 0.05, "precondition_frequency": 2}"#),
        ("splus", r#"{"inverse_every": 3, "ema_rate": 0.9}"#),
        ("spa", r#"{"precondition_frequency": 3}"#),
        ("kl_shampoo", r#"{"lr": 0.01, "precondition_frequency": 3}"#),
        ("fismo", r#"{"root_every": 3, "stagger": true}"#),
        ("fismo_diag", r#"{"lr": 0.01}"#),
        ("whiten", r#"{"normalization": "variance_factorized", "precondition_frequency": 3}"#),
        ("psgd_kron", r#"{"lr": 0.01}"#),
        ("psgd_kron", r#"{"probes": {"kind": "external"}}"#),
    ] {
        let mut blobs: Vec<(String, Vec<usize>, Vec<f32>)> = Vec::new();
        for (i, (n, s)) in params.iter().enumerate() {
            blobs.push((format!("init/{n}"), s.to_vec(), noise(40 + i as u64, s.iter().product())));
        }
        for t in 0..8u64 {
            for (i, (n, s)) in params.iter().enumerate() {
                blobs.push((
                    format!("grad/{t:04}/{n}"),
                    s.to_vec(),
                    noise(900 + 10 * t + i as u64, s.iter().product()),
                ));
                // Random probes: read by PSGD-Kron with external probes, ignored by the rest.
                blobs.push((
                    format!("rand/{t:04}/{n}"),
                    s.to_vec(),
                    noise(5000 + 10 * t + i as u64, s.iter().product()),
                ));
            }
        }
        let trace = super::replay::write_trace(name, config, &params, &blobs);
        let result = pollster::block_on(replay(&gpu, &trace)).unwrap();
        let st = safetensors::SafeTensors::deserialize(&result).unwrap();
        // The same steps run directly.
        let store = ParamStore::new(&gpu, &params).unwrap();
        let mut b = OptimizerBuilder::new(&gpu);
        b.params_from(&store).unwrap();
        b.rule(Matcher::All, Group::new(OptimizerConfig::from_json(name, config).unwrap()));
        let dev = b.build().unwrap();
        for (n, _) in &params {
            let init = blobs.iter().find(|(k, _, _)| *k == format!("init/{n}")).unwrap();
            store.param(n).unwrap().write(&init.2).unwrap();
        }
        for t in 0..8u64 {
            for (n, _) in &params {
                let g = blobs.iter().find(|(k, _, _)| *k == format!("grad/{t:04}/{n}")).unwrap();
                store.grad(n).unwrap().write(&g.2).unwrap();
                if dev.state_names(n).unwrap().iter().any(|s| s == "probe") {
                    let r = blobs.iter().find(|(k, _, _)| *k == format!("rand/{t:04}/{n}")).unwrap();
                    dev.state(n, "probe").unwrap().write(&r.2).unwrap();
                }
            }
            dev.step().unwrap();
            for (n, _) in &params {
                let got: Vec<f32> =
                    bytemuck::pod_collect_to_vec(st.tensor(&format!("param/{t:04}/{n}")).unwrap().data());
                assert_eq!(got, store.param(n).unwrap().read_blocking().unwrap(), "{name} step {t} `{n}`");
            }
        }
        // SPlus's evaluation point (its parameter EMA) is replayed too.
        let eval = pollster::block_on(dev.eval_params()).unwrap();
        for (n, want) in &eval {
            match st.tensor(&format!("param_eval/0007/{n}")) {
                Ok(v) => assert_eq!(&bytemuck::pod_collect_to_vec::<u8, f32>(v.data()), want, "{name} `{n}`"),
                Err(_) => assert_ne!(name, "splus", "no evaluation point for `{n}`"),
            }
        }
    }
}
