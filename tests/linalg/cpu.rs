//! f64 CPU references and helpers shared by the GPU kernel tests.

use std::sync::OnceLock;
use wgoptim::{Gpu, PlanBuilder, Tensor};

/// The device every test runs on. A missing adapter fails the test with instructions (never a skip).
pub fn gpu() -> Gpu {
    static GPU: OnceLock<Gpu> = OnceLock::new();
    GPU.get_or_init(|| match Gpu::new_blocking() {
        Ok(g) => {
            eprintln!("adapter: {}", g.describe());
            g
        }
        Err(e) => panic!("GPU tests need an adapter: {e}"),
    })
    .clone()
}

/// A dense row-major f64 matrix.
#[derive(Clone, Debug, PartialEq)]
pub struct Mat {
    pub r: usize,
    pub c: usize,
    pub d: Vec<f64>,
}

impl Mat {
    pub fn zeros(r: usize, c: usize) -> Mat {
        Mat { r, c, d: vec![0.0; r * c] }
    }
    pub fn eye(n: usize) -> Mat {
        let mut m = Mat::zeros(n, n);
        for i in 0..n {
            m.d[i * n + i] = 1.0;
        }
        m
    }
    pub fn at(&self, i: usize, j: usize) -> f64 {
        self.d[i * self.c + j]
    }
    pub fn set(&mut self, i: usize, j: usize, v: f64) {
        self.d[i * self.c + j] = v;
    }
    pub fn t(&self) -> Mat {
        let mut o = Mat::zeros(self.c, self.r);
        for i in 0..self.r {
            for j in 0..self.c {
                o.set(j, i, self.at(i, j));
            }
        }
        o
    }
    pub fn mul(&self, b: &Mat) -> Mat {
        assert_eq!(self.c, b.r);
        let mut o = Mat::zeros(self.r, b.c);
        for i in 0..self.r {
            for k in 0..self.c {
                let a = self.at(i, k);
                for j in 0..b.c {
                    o.d[i * b.c + j] += a * b.d[k * b.c + j];
                }
            }
        }
        o
    }
    pub fn scale(&self, s: f64) -> Mat {
        Mat { d: self.d.iter().map(|v| v * s).collect(), ..self.clone() }
    }
    pub fn add(&self, b: &Mat) -> Mat {
        Mat { d: self.d.iter().zip(&b.d).map(|(x, y)| x + y).collect(), ..self.clone() }
    }
    pub fn norm(&self) -> f64 {
        self.d.iter().map(|v| v * v).sum::<f64>().sqrt()
    }
    pub fn f32s(&self) -> Vec<f32> {
        self.d.iter().map(|&v| v as f32).collect()
    }
    pub fn from_f32(r: usize, c: usize, v: &[f32]) -> Mat {
        assert_eq!(v.len(), r * c);
        Mat { r, c, d: v.iter().map(|&x| x as f64).collect() }
    }
    /// Matrix with columns scaled: `self · diag(s)`.
    pub fn scale_cols(&self, s: &[f64]) -> Mat {
        let mut o = self.clone();
        for i in 0..self.r {
            for j in 0..self.c {
                o.d[i * self.c + j] *= s[j];
            }
        }
        o
    }
}

/// Deterministic pseudo-random numbers (SplitMix64), uniform in [-1, 1).
pub struct Rng(u64);
impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    pub fn next(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E3779B97F4A7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58476D1CE4E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D049BB133111EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
    }
    pub fn mat(&mut self, r: usize, c: usize) -> Mat {
        Mat { r, c, d: (0..r * c).map(|_| self.next()).collect() }
    }
    /// A random matrix with orthonormal columns (r ≥ c), by modified Gram–Schmidt in f64.
    pub fn orthonormal(&mut self, r: usize, c: usize) -> Mat {
        cpu_qr(&self.mat(r, c)).0
    }
}

/// Thin QR by twice-repeated modified Gram–Schmidt in f64 (R with non-negative diagonal).
pub fn cpu_qr(a: &Mat) -> (Mat, Mat) {
    let (m, n) = (a.r, a.c);
    let mut q = a.clone();
    let mut r = Mat::zeros(n, n);
    for j in 0..n {
        for _ in 0..2 {
            for i in 0..j {
                let dot: f64 = (0..m).map(|k| q.at(k, i) * q.at(k, j)).sum();
                r.d[i * n + j] += dot;
                for k in 0..m {
                    q.d[k * n + j] -= dot * q.at(k, i);
                }
            }
        }
        let nrm: f64 = (0..m).map(|k| q.at(k, j).powi(2)).sum::<f64>().sqrt();
        r.set(j, j, nrm);
        for k in 0..m {
            q.d[k * n + j] /= if nrm > 0.0 { nrm } else { 1.0 };
        }
    }
    (q, r)
}

/// Symmetric eigendecomposition by cyclic Jacobi in f64: ascending eigenvalues, eigenvectors as columns.
pub fn cpu_eigh(a: &Mat) -> (Vec<f64>, Mat) {
    let n = a.r;
    let mut a = a.clone();
    let mut v = Mat::eye(n);
    for _ in 0..100 {
        let off: f64 = (0..n)
            .flat_map(|i| (0..n).map(move |j| (i, j)))
            .filter(|(i, j)| i != j)
            .map(|(i, j)| a.at(i, j).powi(2))
            .sum();
        if off < 1e-30 * a.norm().powi(2).max(1e-300) {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                let apq = a.at(p, q);
                if apq.abs() < 1e-300 {
                    continue;
                }
                let tau = (a.at(q, q) - a.at(p, p)) / (2.0 * apq);
                let t = tau.signum() / (tau.abs() + (1.0 + tau * tau).sqrt());
                let t = if tau == 0.0 { 1.0 } else { t };
                let c = 1.0 / (1.0 + t * t).sqrt();
                let s = t * c;
                for k in 0..n {
                    let (akp, akq) = (a.at(k, p), a.at(k, q));
                    a.set(k, p, c * akp - s * akq);
                    a.set(k, q, s * akp + c * akq);
                }
                for k in 0..n {
                    let (apk, aqk) = (a.at(p, k), a.at(q, k));
                    a.set(p, k, c * apk - s * aqk);
                    a.set(q, k, s * apk + c * aqk);
                }
                for k in 0..n {
                    let (vkp, vkq) = (v.at(k, p), v.at(k, q));
                    v.set(k, p, c * vkp - s * vkq);
                    v.set(k, q, s * vkp + c * vkq);
                }
            }
        }
    }
    let mut idx: Vec<usize> = (0..n).collect();
    idx.sort_by(|&i, &j| a.at(i, i).partial_cmp(&a.at(j, j)).unwrap());
    let vals = idx.iter().map(|&i| a.at(i, i)).collect();
    let mut vs = Mat::zeros(n, n);
    for (new, &old) in idx.iter().enumerate() {
        for k in 0..n {
            vs.set(k, new, v.at(k, old));
        }
    }
    (vals, vs)
}

/// Relative error ‖got − want‖_F / max(‖want‖_F, tiny).
pub fn rel_err(got: &[f32], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len(), "length mismatch");
    let num: f64 = got.iter().zip(want).map(|(&g, &w)| (g as f64 - w).powi(2)).sum::<f64>().sqrt();
    let den: f64 = want.iter().map(|w| w * w).sum::<f64>().sqrt();
    num / den.max(1e-30)
}

/// Upload a stack of matrices as one `[b, r, c]` tensor.
pub fn upload(gpu: &Gpu, mats: &[Mat]) -> Tensor {
    let (r, c) = (mats[0].r, mats[0].c);
    let data: Vec<f32> = mats.iter().flat_map(|m| m.f32s()).collect();
    Tensor::from_slice(gpu, &[mats.len(), r, c], &data).unwrap()
}

/// Build a plan with `f`, run it once, wait.
pub fn run(gpu: &Gpu, f: impl FnOnce(&mut PlanBuilder)) {
    let mut pb = PlanBuilder::new(gpu);
    f(&mut pb);
    let plan = pb.build().unwrap();
    plan.run();
    gpu.wait().unwrap();
}

/// Split a downloaded `[b, r, c]` stack.
pub fn split(v: &[f32], b: usize) -> Vec<Vec<f32>> {
    let per = v.len() / b;
    (0..b).map(|i| v[i * per..(i + 1) * per].to_vec()).collect()
}

/// Awkward shapes every matrix kernel is checked on.
pub const SHAPES: &[(usize, usize)] = &[(1, 1), (1, 9), (9, 1), (7, 13), (13, 7), (64, 64), (127, 255)];

/// Deterministic values in [-1, 1) (for the optimizer and nn tests).
#[allow(dead_code)]
pub fn noise(seed: u64, n: usize) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E3779B97F4A7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0) as f32
        })
        .collect()
}
