//! FISMO and fismo_diag (docs/optimizers.md §5) against f64 references for 30 steps with a cosine schedule,
//! clipping and a skipped NaN step: every-step roots, amortized staggered roots, the diagonal variant; and bad
//! configs (resume, zero gradients, replay and the 10k-step least squares: tests/optim/kron.rs).
//!
//! FISMO's inverse roots `P^{-1/2}` are unique for its positive definite (damped) factors, so the reference is
//! independent of the device's eigenvectors from the first step on.

use super::cpu::{cpu_eigh, Mat};
use super::kron::{assert_matches, build, drive, initial, noisy_grads, stagger_offset};
use super::reference::newton_schulz;
use wgoptim::optim::*;
use wgoptim::Error;

fn grads_at(call: u64) -> Vec<Vec<f32>> {
    noisy_grads(8100, 13, call, (2, 4, f32::NAN))
}

/// `A^{-1/2}` and `A^{-1}` of a symmetric positive definite matrix.
fn inverse_roots(a: &Mat) -> (Mat, Mat) {
    let (vals, v) = cpu_eigh(a);
    let half: Vec<f64> = vals.iter().map(|l| 1.0 / l.sqrt()).collect();
    let full: Vec<f64> = vals.iter().map(|l| 1.0 / l).collect();
    (v.scale_cols(&half).mul(&v.t()), v.scale_cols(&full).mul(&v.t()))
}

/// One matrix's reference: parameters, momentum, factors P and Q (full, or diagonal as the diagonal of a Mat),
/// and the roots in use `(P^{-1/2}, P^{-1})`, `(Q^{-1/2}, Q^{-1})`.
struct Ref {
    p: Mat,
    m: Mat,
    f: [Mat; 2],
    roots: [(Mat, Mat); 2],
}

impl Ref {
    fn new(p: Mat) -> Ref {
        let (r, c) = (p.r, p.c);
        Ref {
            m: Mat::zeros(r, c),
            f: [Mat::eye(r), Mat::eye(c)],
            roots: [(Mat::eye(r), Mat::eye(r)), (Mat::eye(c), Mat::eye(c))],
            p,
        }
    }

    /// `norm(γF + (1−γ)(x + μI))` to trace d.
    fn factor(f: &Mat, x: &Mat, gamma: f64, mu: f64) -> Mat {
        let t = f.scale(gamma).add(&x.add(&Mat::eye(f.r).scale(mu)).scale(1.0 - gamma));
        let tr: f64 = (0..t.r).map(|i| t.at(i, i)).sum();
        t.scale(t.r as f64 / tr)
    }

    /// FISMO §5; `inline`: recompute the roots as each factor changes (root_every = 1).
    fn fismo(&mut self, c: &FismoConfig, g: &Mat, lr: f64, inline: bool) {
        let (gamma, mu, beta) = (c.gamma as f64, c.mu as f64, c.beta as f64);
        let (m, n) = (g.r as f64, g.c as f64);
        let l = g.mul(&self.roots[1].1).mul(&g.t()).scale(1.0 / n);
        self.f[0] = Self::factor(&self.f[0], &l, gamma, mu);
        if inline {
            self.roots[0] = inverse_roots(&self.f[0]);
        }
        let r = g.t().mul(&self.roots[0].1).mul(g).scale(1.0 / m);
        self.f[1] = Self::factor(&self.f[1], &r, gamma, mu);
        if inline {
            self.roots[1] = inverse_roots(&self.f[1]);
        }
        let (pl, pr) = (&self.roots[0].0, &self.roots[1].0);
        let whitened = pl.mul(g).mul(pr);
        self.m = self.m.scale(beta).add(&whitened.scale(1.0 - beta));
        let o = Mat { d: newton_schulz(&self.m.d, g.r, g.c, &c.polar), ..self.m.clone() };
        let u = pl.mul(&o).mul(pr);
        let scale = c.adjust_lr.scale(g.r, g.c) as f64;
        self.p = self.p.scale(1.0 - lr * c.weight_decay as f64).add(&u.scale(-lr * scale));
    }

    /// The amortized refresh: both roots from the current factors.
    fn refresh(&mut self) {
        for s in 0..2 {
            self.roots[s] = inverse_roots(&self.f[s]);
        }
    }

    /// fismo_diag §5: the factors are the diagonals of `f`.
    fn fismo_diag(&mut self, c: &FismoDiagConfig, g: &Mat, lr: f64) {
        let (gamma, mu, beta) = (c.gamma as f64, c.mu as f64, c.beta as f64);
        let (m, n) = (g.r, g.c);
        let diag = |f: &Mat, k: usize| f.at(k, k);
        let mut update = |s: usize, d: usize, other: usize, g2: &dyn Fn(usize, usize) -> f64| {
            let t: Vec<f64> = (0..d)
                .map(|i| {
                    let mean = (0..other).map(|j| g2(i, j) / diag(&self.f[1 - s], j)).sum::<f64>() / other as f64;
                    gamma * diag(&self.f[s], i) + (1.0 - gamma) * (mean + mu)
                })
                .collect();
            let sum: f64 = t.iter().sum();
            for (i, v) in t.iter().enumerate() {
                self.f[s].set(i, i, d as f64 * v / sum);
            }
        };
        update(0, m, n, &|i, j| g.at(i, j).powi(2));
        update(1, n, m, &|j, i| g.at(i, j).powi(2));
        let scale_by = |x: &Mat, f: &[Mat; 2]| {
            let mut o = x.clone();
            for i in 0..m {
                for j in 0..n {
                    o.set(i, j, x.at(i, j) / (diag(&f[0], i) * diag(&f[1], j)).sqrt());
                }
            }
            o
        };
        self.m = self.m.scale(beta).add(&scale_by(g, &self.f).scale(1.0 - beta));
        let o = Mat { d: newton_schulz(&self.m.d, m, n, &c.polar), ..self.m.clone() };
        let u = scale_by(&o, &self.f);
        let scale = c.adjust_lr.scale(m, n) as f64;
        self.p = self.p.scale(1.0 - lr * c.weight_decay as f64).add(&u.scale(-lr * scale));
    }
}

fn conformance(opt: OptimizerConfig) {
    let mut refs: Vec<Ref> = initial().into_iter().map(Ref::new).collect();
    let (store, dev) = drive(&opt, grads_at, |_, call, i, gm, lr| {
        let r = &mut refs[i];
        match &opt {
            OptimizerConfig::Fismo(c) => {
                r.fismo(c, gm, lr, c.root_every == 1);
                let k = c.root_every as u64;
                let offset = if c.stagger { stagger_offset(i, k) } else { 0 };
                let s = call + 1;
                if k > 1 && (call == 0 || (s >= offset && (s - offset).is_multiple_of(k))) {
                    r.refresh();
                }
            }
            OptimizerConfig::FismoDiag(c) => r.fismo_diag(c, gm, lr),
            _ => unreachable!(),
        }
    });
    // Measured on lavapipe: 2e-7 to 1.3e-6 relative.
    let want: Vec<f64> = refs.iter().flat_map(|r| r.p.d.clone()).collect();
    assert_matches(&opt, &store, &dev, &want, 1e-5);
}

pub(super) fn fismo() -> FismoConfig {
    FismoConfig { lr: 0.05, weight_decay: 0.1, mu: 1e-2, gamma: 0.9, ..FismoConfig::default() }
}

#[test]
fn fismo_matches_reference_with_roots_every_step() {
    conformance(OptimizerConfig::Fismo(fismo()));
}

#[test]
fn fismo_matches_reference_with_amortized_staggered_roots() {
    conformance(OptimizerConfig::Fismo(FismoConfig { root_every: 3, stagger: true, ..fismo() }));
}

#[test]
fn fismo_diag_matches_reference() {
    conformance(OptimizerConfig::FismoDiag(FismoDiagConfig {
        lr: 0.05,
        weight_decay: 0.1,
        gamma: 0.9,
        adjust_lr: AdjustLr::Moonlight,
        ..FismoDiagConfig::default()
    }));
}

#[test]
fn bad_fismo_configs_are_errors_and_states_are_named() {
    for opt in [
        OptimizerConfig::Fismo(FismoConfig { mu: 0.0, ..fismo() }),
        OptimizerConfig::Fismo(FismoConfig { gamma: 1.0, ..fismo() }),
        OptimizerConfig::Fismo(FismoConfig { root_every: 0, ..fismo() }),
        OptimizerConfig::FismoDiag(FismoDiagConfig { beta: -0.1, ..Default::default() }),
        OptimizerConfig::FismoDiag(FismoDiagConfig { mu: f32::NAN, ..Default::default() }),
    ] {
        assert!(matches!(build(opt.clone()), Err(Error::InvalidArgument { .. })), "{opt:?} was accepted");
    }
    assert!(OptimizerConfig::from_json("fismo", r#"{"root_every": 2, "bogus": 1}"#).is_err());
    assert!(OptimizerConfig::from_json("fismo_diag", r#"{"root_every": 2}"#).is_err());
    let (_, dev) = build(OptimizerConfig::Fismo(fismo())).unwrap();
    assert_eq!(
        dev.state_names("c").unwrap(),
        [
            "momentum_buffer",
            "factor_left",
            "basis_left",
            "inv_sqrt_eig_left",
            "factor_right",
            "basis_right",
            "inv_sqrt_eig_right"
        ]
    );
    let (_, dev) = build(OptimizerConfig::FismoDiag(FismoDiagConfig::default())).unwrap();
    assert_eq!(dev.state_names("c").unwrap(), ["momentum_buffer", "factor_left", "factor_right"]);
    assert_eq!(dev.state("c", "factor_right").unwrap().shape(), &[11]);
}
