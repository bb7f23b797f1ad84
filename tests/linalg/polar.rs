//! Polar factor: every coefficient set and normalization, wide/tall/square/degenerate shapes, batched,
//! Gram Newton–Schulz, emulated precisions, one submit per call.

use crate::cpu::*;
use wgoptim::linalg::*;
use wgoptim::{Error, PlanBuilder, Tensor};

/// X = U diag(s) Vᵀ and the exact result of `cfg` on it: U diag(map(s / denom)) Vᵀ.
fn case(rng: &mut Rng, m: usize, n: usize, cfg: &PolarConfig) -> (Mat, Mat) {
    let k = m.min(n);
    let s: Vec<f64> = (0..k).map(|i| 10f64.powf(-3.0 * i as f64 / (k.max(2) - 1) as f64) * 2.5).collect();
    let u = rng.orthonormal(m, k);
    let v = rng.orthonormal(n, k);
    let x = u.scale_cols(&s).mul(&v.t());
    let x32 = Mat::from_f32(m, n, &x.f32s());
    let (mult, add, floor) = cfg.normalization.params();
    let denom = (x32.norm() * mult as f64 + add as f64).max(floor as f64);
    let mapped: Vec<f64> = s.iter().map(|&si| cfg.coefficients.map_singular_value(cfg.steps, si / denom)).collect();
    (x32, u.scale_cols(&mapped).mul(&v.t()))
}

fn check(cfg: &PolarConfig, shapes: &[(usize, usize)], batch: usize, tol: f64) {
    let gpu = gpu();
    let mut rng = Rng::new(11);
    for &(m, n) in shapes {
        let cases: Vec<(Mat, Mat)> = (0..batch).map(|_| case(&mut rng, m, n, cfg)).collect();
        let x = upload(&gpu, &cases.iter().map(|c| c.0.clone()).collect::<Vec<_>>());
        let out = Tensor::zeros(&gpu, &[batch, m, n]).unwrap();
        let mut pb = PlanBuilder::new(&gpu);
        polar(&mut pb, &x, &out, cfg).unwrap();
        let plan = pb.build().unwrap();
        plan.run();
        gpu.wait().unwrap();
        let got = out.read_blocking().unwrap();
        for (i, g) in split(&got, batch).iter().enumerate() {
            let e = rel_err(g, &cases[i].1.d);
            assert!(e < tol, "{:?}/{:?} {m}x{n} batch {i}: rel err {e}", cfg.coefficients, cfg.algorithm);
        }
    }
}

const POLAR_SHAPES: &[(usize, usize)] = &[(1, 1), (1, 9), (9, 1), (7, 13), (13, 7), (24, 24), (127, 255), (255, 127)];

#[test]
fn every_coefficient_set_with_its_normalization() {
    let sets = [
        (NsCoefficients::Keller, NsNormalization::Keller),
        (NsCoefficients::You, NsNormalization::Optax),
        (NsCoefficients::PolarExpressPaper, NsNormalization::PolarExpress),
        (NsCoefficients::PolarExpressModded, NsNormalization::Modded),
        (NsCoefficients::PolarExpressDao, NsNormalization::Keller),
        (NsCoefficients::Classical, NsNormalization::TorchClamp),
    ];
    for (coefficients, normalization) in sets {
        let cfg = PolarConfig { coefficients, normalization, ..PolarConfig::default() };
        check(&cfg, POLAR_SHAPES, 2, 2e-4);
    }
}

#[test]
fn more_steps_and_custom_rows() {
    let cfg = PolarConfig { coefficients: NsCoefficients::PolarExpressPaper, steps: 8, ..PolarConfig::default() };
    check(&cfg, &[(13, 7), (64, 96)], 1, 2e-4);
    let cfg = PolarConfig {
        coefficients: NsCoefficients::Custom(vec![[1.5, -0.5, 0.0]]),
        steps: 12,
        normalization: NsNormalization::Custom { mult: 1.0, add: 0.0, floor: 1e-7 },
        ..PolarConfig::default()
    };
    check(&cfg, &[(9, 5)], 1, 2e-4);
}

#[test]
fn muon_sized_stack() {
    check(&PolarConfig::default(), &[(384, 1536)], 1, 2e-4);
}

#[test]
fn gram_newton_schulz_matches() {
    for restarts in [vec![2], vec![], vec![1, 3]] {
        let no_restarts = restarts.is_empty();
        let cfg = PolarConfig {
            coefficients: NsCoefficients::PolarExpressDao,
            algorithm: PolarAlgorithm::GramNewtonSchulz { restarts },
            ..PolarConfig::default()
        };
        // Without restarts the Gram iteration loses the small singular values to f32 roundoff (§1.4).
        let tol = if no_restarts { 3e-2 } else { 5e-4 };
        check(&cfg, &[(1, 9), (9, 1), (7, 13), (13, 7), (16, 16), (64, 200)], 2, tol);
    }
}

/// Newton–Schulz on the CPU rounding where the GPU kernels do: product inputs and every stored result.
fn ns_rounded(x: &Mat, cfg: &PolarConfig, r: impl Fn(f64) -> f64) -> Mat {
    let rm = |m: &Mat| Mat { d: m.d.iter().map(|&v| r(v)).collect(), ..m.clone() };
    let (mult, add, _) = cfg.normalization.params();
    let norm = x.norm();
    let mut x = rm(&x.scale(1.0 / (norm * mult as f64 + add as f64)));
    for [a, b, c] in cfg.coefficients.rows(cfg.steps) {
        let (a, b, c) = (a as f32 as f64, b as f32 as f64, c as f32 as f64);
        let am = rm(&rm(&x).mul(&rm(&x).t()));
        let bm = rm(&rm(&am).mul(&rm(&am)).scale(c).add(&am.scale(b)));
        x = rm(&rm(&bm).mul(&rm(&x)).add(&x.scale(a)));
    }
    x
}

fn bf16(v: f64) -> f64 {
    half::bf16::from_f32(v as f32).to_f64()
}
fn f16(v: f64) -> f64 {
    half::f16::from_f32(v as f32).to_f64()
}

#[test]
fn emulated_precisions_match_a_rounded_reference() {
    let gpu = gpu();
    let mut rng = Rng::new(13);
    let x = rng.mat(32, 80);
    let x = Mat::from_f32(32, 80, &x.f32s());
    let gx = upload(&gpu, std::slice::from_ref(&x));
    let exact = ns_rounded(&x, &PolarConfig::default(), |v| v);
    let mut precisions = vec![(Precision::Bf16Emulated, bf16 as fn(f64) -> f64)];
    if gpu.has_f16() {
        precisions.push((Precision::F16, f16));
    } else {
        let mut pb = PlanBuilder::new(&gpu);
        let cfg = PolarConfig { precision: Precision::F16, ..PolarConfig::default() };
        assert!(matches!(polar(&mut pb, &gx, &gx, &cfg), Err(Error::MissingFeature { .. })));
    }
    for (precision, round) in precisions {
        let cfg = PolarConfig { precision, ..PolarConfig::default() };
        let out = Tensor::zeros(&gpu, &[1, 32, 80]).unwrap();
        run(&gpu, |p| polar(p, &gx, &out, &cfg).unwrap());
        let got = out.read_blocking().unwrap();
        let want = ns_rounded(&x, &cfg, round);
        // Accumulation order differs (f32 on the GPU, f64 here), so an entry may round one ulp apart.
        let e = rel_err(&got, &want.d);
        let off = rel_err(&got, &exact.d);
        assert!(e < 5e-3, "{precision:?}: {e} from the rounded reference");
        assert!(off > 2.0 * e, "{precision:?} should differ from f32 ({off}) more than from its reference ({e})");
    }
}

#[test]
fn zero_and_rank_deficient_inputs_stay_finite() {
    let gpu = gpu();
    let mut rng = Rng::new(12);
    // Rank 1: all singular values but one are zero; the result is exactly the scalar map on that one.
    let u = rng.orthonormal(20, 1);
    let v = rng.orthonormal(30, 1);
    let x1 = u.mul(&v.t());
    let zero = Mat::zeros(20, 30);
    let x = upload(&gpu, &[x1.clone(), zero]);
    let out = Tensor::zeros(&gpu, &[2, 20, 30]).unwrap();
    run(&gpu, |p| polar(p, &x, &x.clone(), &PolarConfig::default()).map(|_| ()).unwrap());
    let _ = out;
    let got = x.read_blocking().unwrap();
    assert!(got.iter().all(|v| v.is_finite()));
    let scale = NsCoefficients::Keller.map_singular_value(5, 1.0 / (1.0 + 1e-7));
    let e = rel_err(&got[..600], &x1.scale(scale).d);
    assert!(e < 2e-4, "rank-1 rel err {e}, first {} vs {}", got[0], x1.scale(scale).d[0]);
    assert!(got[600..].iter().all(|&v| v == 0.0), "polar(0) must be 0");
}

#[test]
fn bad_configs_are_rejected() {
    let gpu = gpu();
    let x = Tensor::zeros(&gpu, &[4, 4]).unwrap();
    let y = Tensor::zeros(&gpu, &[4, 5]).unwrap();
    let mut pb = PlanBuilder::new(&gpu);
    assert!(matches!(polar(&mut pb, &x, &y, &PolarConfig::default()), Err(Error::Shape { .. })));
    let cfg = PolarConfig { steps: 0, ..PolarConfig::default() };
    assert!(matches!(polar(&mut pb, &x, &x, &cfg), Err(Error::InvalidArgument { .. })));
    let cfg = PolarConfig { coefficients: NsCoefficients::Custom(vec![]), ..PolarConfig::default() };
    assert!(matches!(polar(&mut pb, &x, &x, &cfg), Err(Error::InvalidArgument { .. })));
    // Stacks in one buffer: in place is fine, sharing an element with another stack (input or output) is not.
    let buf = Tensor::zeros(&gpu, &[40]).unwrap();
    let at = |offset: usize| Tensor::from_buffer(&gpu, buf.buffer().clone(), offset, &[4, 4]).unwrap();
    let (a, b, c) = (at(0), at(16), at(15));
    let cfg = PolarConfig::default();
    assert!(polar_stacks(&mut pb, &[(&a, &a), (&b, &b)], &cfg).is_ok());
    for pairs in [[(&a, &a), (&c, &c)], [(&a, &b), (&c, &x)], [(&b, &a), (&x, &c)]] {
        let err = polar_stacks(&mut pb, &pairs, &cfg);
        assert!(matches!(err, Err(Error::InvalidArgument { name: "stacks", .. })), "{err:?}");
    }
}

/// Stacks of several shapes in one buffer (views at offsets), wide, tall and square with one small side and a
/// stack with another: each as `polar` alone makes it and as the exact map; the middle products of a small side
/// run as one dispatch.
#[test]
fn stacks_share_their_middle_products() {
    // CPU adapters: per stack norm and scale; per step 4 Grams, 2 middle products, 4 applies. GPUs: k = 8's three
    // stacks copied into one padded stack, norm and scale, 3 products per step, copied out; k = 5 (alone): norm
    // and scale, 3 products per step.
    let counts = (2 * 4 + (4 + 2 + 4) * 5, 3 + 2 + 3 * 5 + 3 + 2 + 3 * 5);
    check_stacks(&[(2, 8, 20), (1, 20, 8), (3, 8, 8), (1, 5, 9)], counts);
}

/// GPUs pad only stacks whose long sides are alike: with a 4×64 and a 64×4 stack, padding a stack of 4×4 matrices
/// to 64 columns would more than double the values, so those run alone.
#[test]
fn padding_stays_bounded() {
    // CPU adapters: 3 norms and scales, per step 3 Grams, 1 middle product, 3 applies. GPUs: the 4×64 and the
    // 64×4 padded together (2 copies in, norm, scale, 3 products per step, 2 copies out); the 4×4 stack alone.
    let counts = (2 * 3 + (3 + 1 + 3) * 5, 2 + 2 + 3 * 5 + 2 + 2 + 3 * 5);
    check_stacks(&[(1, 4, 64), (4, 4, 4), (2, 64, 4)], counts);
}

/// `polar_stacks` over `shapes` as views of one buffer: its dispatch count (`counts`: CPU adapters, GPUs), and each
/// matrix against the exact map and against `polar` of its stack alone.
fn check_stacks(shapes: &[(usize, usize, usize)], counts: (usize, usize)) {
    let gpu = gpu();
    let cfg = PolarConfig::default();
    let mut rng = Rng::new(5);
    let cases: Vec<Vec<(Mat, Mat)>> =
        shapes.iter().map(|&(b, m, n)| (0..b).map(|_| case(&mut rng, m, n, &cfg)).collect()).collect();
    let data: Vec<f32> = cases.iter().flatten().flat_map(|c| c.0.f32s()).collect();
    let (x, out) =
        (Tensor::from_slice(&gpu, &[data.len()], &data).unwrap(), Tensor::zeros(&gpu, &[data.len()]).unwrap());
    let mut views = Vec::new();
    let mut offset = 0;
    for &(b, m, n) in shapes {
        let view = |t: &Tensor| Tensor::from_buffer(&gpu, t.buffer().clone(), offset, &[b, m, n]).unwrap();
        views.push((view(&x), view(&out)));
        offset += b * m * n;
    }
    let pairs: Vec<(&Tensor, &Tensor)> = views.iter().map(|(g, o)| (g, o)).collect();
    let mut pb = PlanBuilder::new(&gpu);
    polar_stacks(&mut pb, &pairs, &cfg).unwrap();
    let plan = pb.build().unwrap();
    let count = if gpu.is_cpu() { counts.0 } else { counts.1 };
    assert_eq!(plan.dispatch_count(), count, "{shapes:?} on {}", gpu.describe());
    plan.run();
    let got = out.read_blocking().unwrap();
    let mut at = 0;
    for (((b, m, n), cs), (g, _)) in shapes.iter().zip(&cases).zip(&views) {
        let alone = Tensor::zeros(&gpu, &[*b, *m, *n]).unwrap();
        let mut pb = PlanBuilder::new(&gpu);
        polar(&mut pb, g, &alone, &cfg).unwrap();
        pb.build().unwrap().run();
        let alone = alone.read_blocking().unwrap();
        for (i, c) in cs.iter().enumerate() {
            let size = m * n;
            let mine = &got[at + i * size..at + (i + 1) * size];
            let e = rel_err(mine, &c.1.d);
            assert!(e < 2e-4, "{m}x{n} matrix {i}: rel err {e} against the exact map");
            let d = rel_err(mine, &alone[i * size..(i + 1) * size].iter().map(|&v| v as f64).collect::<Vec<_>>());
            // GPUs sum the norm over the padded group (another order), which the steps amplify a little.
            assert!(d < 1e-5, "{m}x{n} matrix {i}: {d} away from polar alone");
        }
        at += b * m * n;
    }
}

#[test]
fn one_polar_call_is_one_submit() {
    // A device of its own: the shared one counts the submits of tests running in parallel.
    let gpu = wgoptim::Gpu::new_blocking().expect("GPU tests need an adapter");
    let x = Tensor::from_slice(&gpu, &[4, 24, 40], &vec![0.5; 4 * 24 * 40]).unwrap();
    let mut pb = PlanBuilder::new(&gpu);
    polar(&mut pb, &x, &x, &PolarConfig::default()).unwrap();
    let plan = pb.build().unwrap();
    let before = gpu.counters().submits();
    plan.run();
    assert_eq!(gpu.counters().submits() - before, 1);
    assert_eq!(plan.dispatch_count(), 2 + 3 * 5, "norm, scale, then Gram, Gram², apply per step");
}
