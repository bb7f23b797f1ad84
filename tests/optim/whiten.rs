//! The matrix-whitening grid (`whiten`, seed 004 Table 2): all twelve basis × normalization cells against an f64
//! reference for 30 steps with a cosine schedule, clipping and a skipped NaN step, plus state names, presets and
//! bad configs (resume, zero gradients, replay, 10k-step least squares: tests/optim/kron.rs).
//!
//! The eigenbasis cells adopt the device's bases at every refresh after checking that they diagonalize the
//! reference's factors (an eigenbasis is unique only up to the order and signs of its columns, and the second
//! moment lives on the columns, so the reference must use the same order). Sign cells assert a margin as in
//! tests/optim/kron_family.rs: every signed entry lies at least `MARGIN`·rms away from zero.

use super::cpu::Mat;
use super::kron::{
    assert_matches, build, drive, elementwise, initial, noisy_grads, read, stagger_offset, RefMat, SPECS,
};
use super::kron_family::assert_diagonalizes;
use super::reference::newton_schulz;
use wgoptim::optim::*;
use wgoptim::Error;

const SEED: u64 = 8202;
const MARGIN: f64 = 1e-4;

fn grads_at(call: u64) -> Vec<Vec<f32>> {
    noisy_grads(SEED, 13, call, (2, 4, f32::NEG_INFINITY))
}

/// One matrix's reference: momentum, full second moment and factors in `r`; the rank-1 second moment's row and
/// column EMAs; the smallest sign margin seen.
struct Ref {
    r: RefMat,
    rows: Vec<f64>,
    cols: Vec<f64>,
    margin: f64,
}

impl Ref {
    fn sign(&mut self, x: &Mat) -> Mat {
        let rms = x.norm() / (x.d.len() as f64).sqrt();
        let low = x.d.iter().fold(f64::INFINITY, |a, v| a.min(v.abs() / rms));
        self.margin = self.margin.min(low);
        Mat { d: x.d.iter().map(|v| if *v == 0.0 { 0.0 } else { v.signum() }).collect(), ..x.clone() }
    }

    fn step(&mut self, c: &WhitenConfig, g: &Mat, lr: f64) {
        let (b1, b2, eps) = (c.beta1 as f64, c.beta2 as f64, c.eps as f64);
        let a = c.effective_lookahead() as f64;
        self.r.t += 1;
        let t = self.r.t as i32;
        self.r.m = self.r.m.scale(b1).add(&g.scale(1.0 - b1));
        let look = self.r.m.scale(1.0 - a).add(&g.scale(a));
        let (x, stat) = match c.basis {
            Basis::Identity => (look, g.clone()),
            Basis::Eigen => (self.r.sandwich(&look, false), self.r.sandwich(g, false)),
            Basis::NewtonSchulz => {
                let o = Mat { d: newton_schulz(&look.d, g.r, g.c, &c.polar), ..look };
                (o.clone(), o)
            }
        };
        let bc1 = if c.basis == Basis::NewtonSchulz { 1.0 } else { 1.0 - b1.powi(t) };
        let bc2 = 1.0 - b2.powi(t);
        let n = match c.normalization {
            Normalization::Sign | Normalization::SignLookahead if c.basis == Basis::NewtonSchulz => x,
            Normalization::Sign | Normalization::SignLookahead => self.sign(&x),
            Normalization::VarianceFull => {
                self.r.v = elementwise(&self.r.v.scale(b2), &stat, |v, s| v + (1.0 - b2) * s * s);
                elementwise(&x, &self.r.v, |x, v| x / bc1 / ((v / bc2).sqrt() + eps))
            }
            Normalization::VarianceFactorized => {
                let (m, n) = (g.r, g.c);
                for i in 0..m {
                    let mean = (0..n).map(|j| stat.at(i, j).powi(2)).sum::<f64>() / n as f64;
                    self.rows[i] = b2 * self.rows[i] + (1.0 - b2) * mean;
                }
                for j in 0..n {
                    let mean = (0..m).map(|i| stat.at(i, j).powi(2)).sum::<f64>() / m as f64;
                    self.cols[j] = b2 * self.cols[j] + (1.0 - b2) * mean;
                }
                let rmean = self.rows.iter().sum::<f64>() / m as f64;
                let mut out = x.clone();
                for i in 0..m {
                    for j in 0..n {
                        let v = self.rows[i] * self.cols[j] / rmean;
                        out.set(i, j, x.at(i, j) / bc1 / ((v / bc2).sqrt() + eps));
                    }
                }
                out
            }
        };
        let u = if c.basis == Basis::Eigen { self.r.sandwich(&n, true) } else { n };
        let s = c.shape_scale(g.r, g.c) as f64;
        self.r.p = self.r.p.scale(1.0 - lr * c.weight_decay as f64).add(&u.scale(-lr * s));
        if c.basis == Basis::Eigen {
            self.r.factor_ema(g, b2, 1.0 - b2);
        }
    }
}

fn conformance(c: WhitenConfig) {
    let opt = OptimizerConfig::Whiten(c.clone());
    let max_dim = if c.basis == Basis::Eigen { c.max_dim - 1 } else { 0 };
    let mut refs: Vec<Ref> = initial()
        .into_iter()
        .map(|p| Ref { rows: vec![0.0; p.r], cols: vec![0.0; p.c], margin: f64::INFINITY, r: RefMat::new(p, max_dim) })
        .collect();
    let (store, dev) = drive(&opt, grads_at, |dev, call, i, gm, lr| {
        let r = &mut refs[i];
        r.step(&c, gm, lr);
        let period = c.precondition_frequency as u64;
        let offset = if c.stagger { stagger_offset(i, period) } else { 0 };
        let s = call + 1;
        if !(call == 0 || (s >= offset && (s - offset).is_multiple_of(period))) {
            return;
        }
        let (name, shape) = SPECS[i];
        for (k, side) in ["basis_left", "basis_right"].iter().enumerate() {
            if r.r.has[k] {
                let q = Mat::from_f32(shape[k], shape[k], &read(dev, name, side));
                assert_diagonalizes(&q, &r.r.f[k], &format!("{c:?} call {call} `{name}` {side}"));
                r.r.q[k] = q;
            }
        }
    });
    let margin = refs.iter().map(|r| r.margin).fold(f64::INFINITY, f64::min);
    assert!(margin >= MARGIN, "{c:?}: a signed entry came within {margin:e}·rms of zero: pick another SEED");
    let want: Vec<f64> = refs.iter().flat_map(|r| r.r.p.d.clone()).collect();
    let tol = if c.basis == Basis::Eigen { 1e-4 } else { 1e-5 };
    assert_matches(&opt, &store, &dev, &want, tol);
}

const NORMALIZATIONS: [Normalization; 4] =
    [Normalization::Sign, Normalization::SignLookahead, Normalization::VarianceFull, Normalization::VarianceFactorized];

fn cell(basis: Basis, normalization: Normalization) -> WhitenConfig {
    WhitenConfig {
        lr: 0.01,
        beta2: 0.95,
        lookahead: 0.3,
        weight_decay: 0.1,
        precondition_frequency: 3,
        ..WhitenConfig::cell(basis, normalization)
    }
}

#[test]
fn identity_basis_cells_match_their_reference() {
    for n in NORMALIZATIONS {
        conformance(cell(Basis::Identity, n));
    }
}

#[test]
fn eigenbasis_cells_match_their_reference() {
    for n in NORMALIZATIONS {
        conformance(cell(Basis::Eigen, n));
    }
    // Staggered refreshes, and max_dim 9: the 7×11 is one-sided (its 11 columns stay in the original basis).
    conformance(WhitenConfig { stagger: true, max_dim: 9, ..cell(Basis::Eigen, Normalization::VarianceFactorized) });
}

#[test]
fn newton_schulz_cells_match_their_reference() {
    for n in NORMALIZATIONS {
        conformance(cell(Basis::NewtonSchulz, n));
    }
    // An explicit shape scale on a variance cell.
    conformance(WhitenConfig {
        shape_scale: ShapeScale::Keller,
        ..cell(Basis::NewtonSchulz, Normalization::VarianceFull)
    });
}

#[test]
fn states_follow_the_cell() {
    let names = |c: WhitenConfig| build(OptimizerConfig::Whiten(c)).unwrap().1.state_names("c").unwrap();
    assert_eq!(names(cell(Basis::Identity, Normalization::Sign)), ["exp_avg"]);
    assert_eq!(names(cell(Basis::NewtonSchulz, Normalization::VarianceFull)), ["exp_avg", "exp_avg_sq"]);
    assert_eq!(
        names(cell(Basis::Identity, Normalization::VarianceFactorized)),
        ["exp_avg", "exp_avg_sq_left", "exp_avg_sq_right"]
    );
    assert_eq!(
        names(cell(Basis::Eigen, Normalization::VarianceFull)),
        ["exp_avg", "exp_avg_sq", "factor_left", "basis_left", "factor_right", "basis_right"]
    );
}

#[test]
fn presets_are_the_named_cells() {
    let p = |n| WhitenConfig::preset(n).unwrap();
    assert_eq!((p("soap").basis, p("soap").normalization), (Basis::Eigen, Normalization::VarianceFull));
    assert_eq!((p("splus").basis, p("splus").normalization), (Basis::Eigen, Normalization::Sign));
    assert_eq!((p("muon").basis, p("muon").normalization), (Basis::NewtonSchulz, Normalization::SignLookahead));
    assert_eq!(p("muon").effective_lookahead(), 1.0 - p("muon").beta1);
    assert_eq!(p("adamuon").normalization, Normalization::VarianceFull);
    assert_eq!(p("adafactor").normalization, Normalization::VarianceFactorized);
    // The automatic shape scales: SPlus's 2/(m+n), Muon's sqrt(max(1, m/n)), none for variance cells.
    assert_eq!(p("splus").shape_scale(6, 10), 2.0 / 16.0);
    assert_eq!(p("muon").shape_scale(12, 3), 2.0);
    assert_eq!(p("adamuon").shape_scale(12, 3), 1.0);
    assert!(WhitenConfig::preset("lamb").is_none());
    for name in ["adam", "adafactor", "signum", "soap", "splus", "muon", "adamuon"] {
        OptimizerConfig::Whiten(p(name)).validate().unwrap();
    }
}

#[test]
fn bad_whiten_configs_are_errors() {
    let base = cell(Basis::Eigen, Normalization::VarianceFull);
    let bad = [
        WhitenConfig { eps: 0.0, ..base.clone() },
        WhitenConfig { beta1: 1.0, ..base.clone() },
        WhitenConfig { lookahead: 1.5, ..base.clone() },
        WhitenConfig { precondition_frequency: 0, ..base.clone() },
        WhitenConfig { max_dim: 0, ..base.clone() },
        WhitenConfig { weight_decay: -1.0, ..base.clone() },
    ];
    for c in bad {
        assert!(matches!(build(OptimizerConfig::Whiten(c.clone())), Err(Error::InvalidArgument { .. })), "{c:?}");
    }
    // A sign cell needs no ε.
    build(OptimizerConfig::Whiten(WhitenConfig { eps: 0.0, ..cell(Basis::Eigen, Normalization::Sign) })).unwrap();
    let json = r#"{"basis": "newton_schulz", "normalization": "variance_factorized", "lr": 0.02}"#;
    let c = OptimizerConfig::from_json("whiten", json).unwrap();
    let want = WhitenConfig { lr: 0.02, ..WhitenConfig::cell(Basis::NewtonSchulz, Normalization::VarianceFactorized) };
    assert_eq!(c, OptimizerConfig::Whiten(want));
    assert!(OptimizerConfig::from_json("whiten", r#"{"basis": "diagonal"}"#).is_err());
}
