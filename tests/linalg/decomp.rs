//! Jacobi eigendecomposition, Householder QR, Cholesky, triangular solves and matrix roots.

use crate::cpu::*;
use wgoptim::linalg::*;
use wgoptim::{Error, PlanBuilder, Tensor};

fn sym_with_eigs(rng: &mut Rng, eigs: &[f64]) -> Mat {
    let n = eigs.len();
    let v = rng.orthonormal(n, n);
    let a = v.scale_cols(eigs).mul(&v.t());
    a.add(&a.t()).scale(0.5)
}

fn max_abs_diff(a: &Mat, b: &Mat) -> f64 {
    a.d.iter().zip(&b.d).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max)
}

/// Checks V Λ Vᵀ = A, VᵀV = I and the eigenvalues against the f64 reference.
fn check_eigh(a: &Mat, vals: &[f32], vecs: &[f32], tol: f64) {
    let n = a.r;
    let v = Mat::from_f32(n, n, vecs);
    let lam: Vec<f64> = vals.iter().map(|&x| x as f64).collect();
    assert!(lam.windows(2).all(|w| w[0] <= w[1]), "eigenvalues must ascend: {lam:?}");
    let scale = a.norm().max(1e-30);
    let recon = v.scale_cols(&lam).mul(&v.t());
    assert!(max_abs_diff(&recon, a) / scale < tol, "reconstruction {}", max_abs_diff(&recon, a) / scale);
    assert!(max_abs_diff(&v.t().mul(&v), &Mat::eye(n)) < tol * 10.0, "orthogonality");
    let (want, _) = cpu_eigh(a);
    for (g, w) in lam.iter().zip(&want) {
        assert!((g - w).abs() / scale < tol, "eigenvalue {g} vs {w}");
    }
}

fn run_eigh(a: &[Mat], warm: Option<&Tensor>, cfg: &EighConfig) -> (Vec<f32>, Vec<f32>) {
    let gpu = gpu();
    let n = a[0].r;
    let ga = upload(&gpu, a);
    let vals = Tensor::zeros(&gpu, &[a.len(), n]).unwrap();
    let vecs = Tensor::zeros(&gpu, &[a.len(), n, n]).unwrap();
    run(&gpu, |p| eigh(p, &ga, &vals, &vecs, warm, cfg).unwrap());
    (vals.read_blocking().unwrap(), vecs.read_blocking().unwrap())
}

#[test]
fn eigh_random_rank_deficient_and_ill_conditioned() {
    let mut rng = Rng::new(21);
    for n in [1usize, 2, 7, 13, 64, 127] {
        let random: Vec<Mat> = (0..2)
            .map(|_| {
                let m = rng.mat(n, n);
                m.add(&m.t())
            })
            .collect();
        let low_rank = {
            let x = rng.mat(n, (n / 3).max(1));
            x.mul(&x.t())
        };
        let ill =
            sym_with_eigs(&mut rng, &(0..n).map(|i| 10f64.powf(-6.0 * i as f64 / n.max(2) as f64)).collect::<Vec<_>>());
        for batch in [random, vec![low_rank, ill]] {
            for method in [EighMethod::Workgroup, EighMethod::Rounds, EighMethod::Tridiagonal] {
                let (vals, vecs) = run_eigh(&batch, None, &EighConfig { method, ..EighConfig::default() });
                for (i, a) in batch.iter().enumerate() {
                    check_eigh(a, &vals[i * n..(i + 1) * n], &vecs[i * n * n..(i + 1) * n * n], 2e-5);
                }
            }
        }
    }
}

/// From n = 320 the tridiagonal method builds its Householder Q by matmuls over blocks of 32 reflectors (the
/// last block partial here); with a rank-deficient stack member, whose zero tails leave reflectors out.
#[test]
fn eigh_tridiagonal_large_builds_q_in_blocks() {
    let mut rng = Rng::new(27);
    let n = 333;
    let random = {
        let m = rng.mat(n, n);
        m.add(&m.t())
    };
    let low_rank = {
        let x = rng.mat(n, 5);
        x.mul(&x.t())
    };
    let batch = [random, low_rank];
    let (vals, vecs) = run_eigh(&batch, None, &EighConfig { method: EighMethod::Tridiagonal, ..Default::default() });
    for (i, a) in batch.iter().enumerate() {
        check_eigh(a, &vals[i * n..(i + 1) * n], &vecs[i * n * n..(i + 1) * n * n], 2e-5);
    }
}

/// On CPU adapters the reduction keeps the lower triangle and each lane owns groups of 8 columns: from n = 513 a
/// lane owns two groups (the row sums then gather over more groups than lanes). Checked by reconstruction and
/// orthogonality, which pin an eigendecomposition down (an f64 reference at this size would only repeat them).
#[test]
fn eigh_tridiagonal_with_more_column_groups_than_lanes() {
    let mut rng = Rng::new(31);
    let n = 600;
    let m = rng.mat(n, n);
    let a = m.add(&m.t());
    let (vals, vecs) =
        run_eigh(std::slice::from_ref(&a), None, &EighConfig { method: EighMethod::Tridiagonal, ..Default::default() });
    let v = Mat::from_f32(n, n, &vecs);
    let lam: Vec<f64> = vals.iter().map(|&x| x as f64).collect();
    assert!(lam.windows(2).all(|w| w[0] <= w[1]), "eigenvalues must ascend");
    let recon = max_abs_diff(&v.scale_cols(&lam).mul(&v.t()), &a) / a.norm();
    assert!(recon < 2e-5, "reconstruction {recon}");
    let orth = max_abs_diff(&v.t().mul(&v), &Mat::eye(n));
    assert!(orth < 2e-4, "orthogonality {orth}");
}

#[test]
fn eigh_warm_start_converges_in_few_sweeps() {
    let gpu = gpu();
    let mut rng = Rng::new(22);
    let n = 48;
    let a = {
        let m = rng.mat(n, n);
        m.add(&m.t())
    };
    let (_, v0) = run_eigh(std::slice::from_ref(&a), None, &EighConfig::default());
    let drift = {
        let m = rng.mat(n, n);
        m.add(&m.t()).scale(1e-3)
    };
    let a2 = a.add(&drift);
    let warm = Tensor::from_slice(&gpu, &[1, n, n], &v0).unwrap();
    let cfg = EighConfig { max_sweeps: 3, ..EighConfig::default() };
    let v0m = Mat::from_f32(n, n, &v0);
    for method in [EighMethod::Workgroup, EighMethod::Rounds, EighMethod::Tridiagonal] {
        let (vals, vecs) = run_eigh(std::slice::from_ref(&a2), Some(&warm), &EighConfig { method, ..cfg });
        check_eigh(&a2, &vals, &vecs, 2e-5);
        // The basis stays continuous: each eigenvector still points along its predecessor.
        let overlap = v0m.t().mul(&Mat::from_f32(n, n, &vecs));
        assert!((0..n).all(|i| overlap.d[i * n + i] > 0.9), "{method:?}: a warm-started eigenvector turned");
    }
    // Jacobi cold with only 1 sweep is far from converged: the warm start is what did the work.
    let cold = EighConfig { max_sweeps: 1, method: EighMethod::Workgroup, ..cfg };
    let (cv, cvec) = run_eigh(std::slice::from_ref(&a2), None, &cold);
    let v = Mat::from_f32(n, n, &cvec);
    let recon = v.scale_cols(&cv.iter().map(|&x| x as f64).collect::<Vec<_>>()).mul(&v.t());
    assert!(max_abs_diff(&recon, &a2) / a2.norm() > 1e-4);
}

#[test]
fn eigh_of_views_reads_them_in_place() {
    // Matrices 1..3 of a stack of 3 and a warm basis likewise at an offset (a staggered refresh's chunk): every
    // method must decompose those, not the stack's first matrices.
    let gpu = gpu();
    let mut rng = Rng::new(24);
    let n = 12;
    let a: Vec<Mat> = (0..3)
        .map(|_| {
            let m = rng.mat(n, n);
            m.add(&m.t())
        })
        .collect();
    let (_, v0) = run_eigh(&a, None, &EighConfig::default());
    let stack = upload(&gpu, &a);
    let view = Tensor::from_buffer(&gpu, stack.buffer().clone(), n * n, &[2, n, n]).unwrap();
    let bases = Tensor::from_slice(&gpu, &[3, n, n], &v0).unwrap();
    let warm = Tensor::from_buffer(&gpu, bases.buffer().clone(), n * n, &[2, n, n]).unwrap();
    for method in [EighMethod::Workgroup, EighMethod::Rounds, EighMethod::Tridiagonal] {
        for w in [None, Some(&warm)] {
            let vals = Tensor::zeros(&gpu, &[2, n]).unwrap();
            let vecs = Tensor::zeros(&gpu, &[2, n, n]).unwrap();
            let cfg = EighConfig { method, ..EighConfig::default() };
            run(&gpu, |p| eigh(p, &view, &vals, &vecs, w, &cfg).unwrap());
            let (vals, vecs) = (vals.read_blocking().unwrap(), vecs.read_blocking().unwrap());
            for i in 0..2 {
                let vi = &vecs[i * n * n..(i + 1) * n * n];
                check_eigh(&a[i + 1], &vals[i * n..(i + 1) * n], vi, 2e-5);
                if w.is_some() {
                    let overlap =
                        Mat::from_f32(n, n, &v0[(i + 1) * n * n..(i + 2) * n * n]).t().mul(&Mat::from_f32(n, n, vi));
                    assert!((0..n).all(|j| overlap.d[j * n + j] > 0.9), "{method:?}: not oriented by its own basis");
                }
            }
        }
    }
}

#[test]
fn eigh_of_zero_is_finite() {
    let (vals, vecs) = run_eigh(&[Mat::zeros(5, 5)], None, &EighConfig::default());
    assert!(vals.iter().all(|&v| v == 0.0));
    assert_eq!(Mat::from_f32(5, 5, &vecs), Mat::eye(5));
}

#[test]
fn qr_matches_gram_schmidt_and_is_orthogonal() {
    let gpu = gpu();
    let mut rng = Rng::new(23);
    for (m, n) in [(1usize, 1usize), (9, 1), (13, 7), (32, 32), (64, 64), (130, 33), (255, 127), (200, 200)] {
        let a: Vec<Mat> = (0..2).map(|_| rng.mat(m, n)).collect();
        let ga = upload(&gpu, &a);
        let q = Tensor::zeros(&gpu, &[2, m, n]).unwrap();
        let r = Tensor::zeros(&gpu, &[2, n, n]).unwrap();
        run(&gpu, |p| qr(p, &ga, &q, &r).unwrap());
        let (gq, gr) = (q.read_blocking().unwrap(), r.read_blocking().unwrap());
        for i in 0..2 {
            let (wq, wr) = cpu_qr(&a[i]);
            let qm = Mat::from_f32(m, n, &gq[i * m * n..(i + 1) * m * n]);
            let rm = Mat::from_f32(n, n, &gr[i * n * n..(i + 1) * n * n]);
            assert!(rel_err(&qm.f32s(), &wq.d) < 1e-4, "{m}x{n} Q");
            assert!(rel_err(&rm.f32s(), &wr.d) < 1e-5, "{m}x{n} R");
            assert!(max_abs_diff(&qm.t().mul(&qm), &Mat::eye(n)) < 1e-5);
            assert!(rel_err(&qm.mul(&rm).f32s(), &a[i].d) < 1e-5);
        }
    }
}

#[test]
fn qr_of_rank_deficient_input() {
    let gpu = gpu();
    let mut rng = Rng::new(24);
    // One-workgroup and blocked paths; the blocked one also gets a zero column inside a later panel.
    for (m, n, dup, zero) in [(40usize, 12usize, 5usize, 9usize), (120, 90, 40, 70)] {
        let mut a = rng.mat(m, n);
        for i in 0..m {
            let v = a.at(i, 0);
            a.set(i, dup, v); // duplicate column
            a.set(i, zero, 0.0); // zero column
        }
        let ga = upload(&gpu, &[a.clone()]);
        let q = Tensor::zeros(&gpu, &[1, m, n]).unwrap();
        let r = Tensor::zeros(&gpu, &[1, n, n]).unwrap();
        run(&gpu, |p| qr(p, &ga, &q, &r).unwrap());
        let qm = Mat::from_f32(m, n, &q.read_blocking().unwrap());
        let rm = Mat::from_f32(n, n, &r.read_blocking().unwrap());
        assert!(qm.d.iter().chain(&rm.d).all(|v| v.is_finite()));
        assert!(max_abs_diff(&qm.t().mul(&qm), &Mat::eye(n)) < 1e-5, "{m}x{n}: Householder Q stays orthogonal");
        assert!(rel_err(&qm.mul(&rm).f32s(), &a.d) < 1e-5, "{m}x{n}: QR = A");
    }
}

/// The in-place, Q-only form reduces its input and gives `qr`'s Q bit for bit; views and a shared buffer are
/// refused.
#[test]
fn qr_q_in_place_matches_qr() {
    let gpu = gpu();
    let mut rng = Rng::new(28);
    let (m, n) = (70, 45);
    let a: Vec<Mat> = (0..2).map(|_| rng.mat(m, n)).collect();
    let (ga, work) = (upload(&gpu, &a), upload(&gpu, &a));
    let (q, q2, r) = (
        Tensor::zeros(&gpu, &[2, m, n]).unwrap(),
        Tensor::zeros(&gpu, &[2, m, n]).unwrap(),
        Tensor::zeros(&gpu, &[2, n, n]).unwrap(),
    );
    run(&gpu, |p| {
        qr(p, &ga, &q, &r).unwrap();
        qr_q_in_place(p, &work, &q2).unwrap();
    });
    assert_eq!(q.read_blocking().unwrap(), q2.read_blocking().unwrap());
    let mut pb = PlanBuilder::new(&gpu);
    let view = Tensor::from_buffer(&gpu, work.buffer().clone(), 1, &[1, m, n]).unwrap();
    let q1 = Tensor::zeros(&gpu, &[1, m, n]).unwrap();
    assert!(matches!(qr_q_in_place(&mut pb, &view, &q1), Err(Error::InvalidArgument { .. })));
    let shared = Tensor::from_buffer(&gpu, work.buffer().clone(), 0, &[2, m, n]).unwrap();
    assert!(matches!(qr_q_in_place(&mut pb, &work, &shared), Err(Error::InvalidArgument { .. })));
}

/// Q and R may be views into larger buffers (offsets reach the kernels), on both QR paths.
#[test]
fn qr_writes_into_offset_views() {
    let gpu = gpu();
    let mut rng = Rng::new(26);
    for (m, n) in [(9usize, 5usize), (70, 40)] {
        let a = rng.mat(m, n);
        let ga = upload(&gpu, std::slice::from_ref(&a));
        let qbuf = Tensor::zeros(&gpu, &[3 + m * n]).unwrap();
        let rbuf = Tensor::zeros(&gpu, &[5 + n * n]).unwrap();
        let q = Tensor::from_buffer(&gpu, qbuf.buffer().clone(), 3, &[1, m, n]).unwrap();
        let r = Tensor::from_buffer(&gpu, rbuf.buffer().clone(), 5, &[1, n, n]).unwrap();
        run(&gpu, |p| qr(p, &ga, &q, &r).unwrap());
        let (wq, wr) = cpu_qr(&a);
        let (gq, gr) = (qbuf.read_blocking().unwrap(), rbuf.read_blocking().unwrap());
        assert!(gq[..3].iter().chain(&gr[..5]).all(|&x| x == 0.0), "{m}x{n}: nothing written before the views");
        assert!(rel_err(&gq[3..], &wq.d) < 1e-4, "{m}x{n} Q");
        assert!(rel_err(&gr[5..], &wr.d) < 1e-5, "{m}x{n} R");
    }
}

#[test]
fn cholesky_and_failure_report() {
    let gpu = gpu();
    let mut rng = Rng::new(25);
    for n in [1usize, 7, 64, 130] {
        let x = rng.mat(n, n);
        let a = x.mul(&x.t()).add(&Mat::eye(n));
        let bad = Mat::eye(n).scale(-1.0);
        let ga = upload(&gpu, &[a.clone(), bad]);
        let l = Tensor::zeros(&gpu, &[2, n, n]).unwrap();
        let info = Tensor::zeros(&gpu, &[2]).unwrap();
        run(&gpu, |p| cholesky(p, &ga, &l, &info, 0.0).unwrap());
        let gl = l.read_blocking().unwrap();
        let lm = Mat::from_f32(n, n, &gl[..n * n]);
        assert!((0..n).all(|i| (i + 1..n).all(|j| lm.at(i, j) == 0.0)), "L is lower triangular");
        assert!(rel_err(&lm.mul(&lm.t()).f32s(), &a.d) < 1e-5);
        assert_eq!(info.read_blocking().unwrap(), vec![0.0, 1.0]);
        assert!(gl.iter().all(|v| v.is_finite()));
    }
}

#[test]
fn trsm_every_side_triangle_and_transpose() {
    let gpu = gpu();
    let mut rng = Rng::new(26);
    // One diagonal block, and blocked (64-row blocks and a partial one; more vectors than a workgroup).
    for (n, r, lower) in [(23, 9, true), (23, 9, false), (150, 70, true), (150, 70, false)] {
        // A well-conditioned triangular T.
        let mut t = rng.mat(n, n).scale(2.3 / n as f64);
        for i in 0..n {
            for j in 0..n {
                if (lower && j > i) || (!lower && j < i) {
                    t.set(i, j, 0.0);
                }
            }
            t.set(i, i, 1.0 + t.at(i, i).abs());
        }
        for trans in [Trans::N, Trans::T] {
            for side in [Side::Left, Side::Right] {
                let b = if side == Side::Left { rng.mat(n, r) } else { rng.mat(r, n) };
                let (gt, gb) = (upload(&gpu, &[t.clone(), t.clone()]), upload(&gpu, &[b.clone(), b.clone()]));
                let x = Tensor::zeros(&gpu, gb.shape()).unwrap();
                run(&gpu, |p| trsm(p, &gt, lower, trans, side, &gb, &x).unwrap());
                let got = x.read_blocking().unwrap();
                let opt = if trans == Trans::T { t.t() } else { t.clone() };
                for xs in split(&got, 2) {
                    let xm = Mat::from_f32(b.r, b.c, &xs);
                    let back = if side == Side::Left { opt.mul(&xm) } else { xm.mul(&opt) };
                    assert!(rel_err(&back.f32s(), &b.d) < 1e-5, "n={n} lower={lower} {trans:?} {side:?}");
                }
                // Views at offsets: the second T and B of their stacks into the second half of a buffer.
                let view =
                    |t: &Tensor, m: &Mat| Tensor::from_buffer(&gpu, t.buffer().clone(), m.d.len(), &[1, m.r, m.c]);
                let (vt, vb) = (view(&gt, &t).unwrap(), view(&gb, &b).unwrap());
                let xo = Tensor::zeros(&gpu, gb.shape()).unwrap();
                let vx = view(&xo, &b).unwrap();
                run(&gpu, |p| trsm(p, &vt, lower, trans, side, &vb, &vx).unwrap());
                assert_eq!(split(&xo.read_blocking().unwrap(), 2)[1], split(&got, 2)[1], "views: {trans:?} {side:?}");
            }
        }
    }
}

fn cpu_root(a: &Mat, p: f64, eps: f64) -> Mat {
    let (vals, v) = cpu_eigh(a);
    v.scale_cols(&vals.iter().map(|&l| (l.max(0.0) + eps).powf(-1.0 / p)).collect::<Vec<_>>()).mul(&v.t())
}

#[test]
fn inverse_roots_agree_across_methods() {
    let gpu = gpu();
    let mut rng = Rng::new(27);
    let n = 32;
    let eigs: Vec<f64> = (0..n).map(|i| 10f64.powf(-3.0 * i as f64 / (n - 1) as f64)).collect();
    let a = sym_with_eigs(&mut rng, &eigs);
    let ga = upload(&gpu, &[a.clone(), a.scale(4.0)]);
    let eps = 1e-4;
    for p in [1u32, 2, 4] {
        let (newton, eig) = (Tensor::zeros(&gpu, &[2, n, n]).unwrap(), Tensor::zeros(&gpu, &[2, n, n]).unwrap());
        run(&gpu, |pl| {
            inverse_root_newton(pl, &ga, &newton, p, eps, 40).unwrap();
            inverse_root_eigh(pl, &ga, &eig, p, eps, &EighConfig::default()).unwrap();
        });
        let (gn, ge) = (newton.read_blocking().unwrap(), eig.read_blocking().unwrap());
        for (i, s) in [1.0, 4.0].iter().enumerate() {
            let want = cpu_root(&a.scale(*s), p as f64, eps as f64);
            let sl = i * n * n..(i + 1) * n * n;
            let (en, ee) = (rel_err(&gn[sl.clone()], &want.d), rel_err(&ge[sl], &want.d));
            assert!(ee < 1e-4, "p={p} eigen route {ee}");
            assert!(en < 2e-3, "p={p} coupled Newton {en}");
        }
    }
    let (inv, sq) = (Tensor::zeros(&gpu, &[2, n, n]).unwrap(), Tensor::zeros(&gpu, &[2, n, n]).unwrap());
    run(&gpu, |pl| sqrt_newton_schulz(pl, &ga, Some(&inv), Some(&sq), eps, 30).unwrap());
    let (gi, gs) = (inv.read_blocking().unwrap(), sq.read_blocking().unwrap());
    let want_inv = cpu_root(&a, 2.0, eps as f64);
    let want_sq = cpu_root(&a, -2.0, eps as f64);
    assert!(rel_err(&gi[..n * n], &want_inv.d) < 2e-3, "NS inverse sqrt {}", rel_err(&gi[..n * n], &want_inv.d));
    assert!(rel_err(&gs[..n * n], &want_sq.d) < 1e-4, "NS sqrt {}", rel_err(&gs[..n * n], &want_sq.d));
}

#[test]
fn roots_of_rank_deficient_and_zero_factors_stay_finite() {
    let gpu = gpu();
    let mut rng = Rng::new(28);
    let n = 20;
    let x = rng.mat(n, 3);
    let a = x.mul(&x.t());
    let ga = upload(&gpu, &[a.clone(), Mat::zeros(n, n)]);
    let outs: Vec<Tensor> = (0..3).map(|_| Tensor::zeros(&gpu, &[2, n, n]).unwrap()).collect();
    let jacobi = EighConfig { method: EighMethod::Workgroup, ..EighConfig::default() };
    run(&gpu, |pl| {
        inverse_root_eigh(pl, &ga, &outs[0], 4, 1e-3, &jacobi).unwrap();
        inverse_root_newton(pl, &ga, &outs[1], 4, 1e-3, 40).unwrap();
        sqrt_newton_schulz(pl, &ga, Some(&outs[2]), None, 1e-3, 40).unwrap();
    });
    for o in &outs {
        assert!(o.read_blocking().unwrap().iter().all(|v| v.is_finite()));
    }
    let ge = outs[0].read_blocking().unwrap();
    assert!(rel_err(&ge[..n * n], &cpu_root(&a, 4.0, 1e-3).d) < 1e-4);
    // Tridiagonalization + QL keeps eigenvalues to ~2⁻²⁴·‖A‖ absolutely, not the null space's relatively as Jacobi
    // does: ε = 1e-3 against ‖A‖ ≈ 60 leaves (ε + δ)^{-1/4} ~1e-4 off (measured 1.5e-4).
    let tri = Tensor::zeros(&gpu, &[2, n, n]).unwrap();
    let cfg = EighConfig { method: EighMethod::Tridiagonal, ..EighConfig::default() };
    run(&gpu, |pl| inverse_root_eigh(pl, &ga, &tri, 4, 1e-3, &cfg).unwrap());
    let gt = tri.read_blocking().unwrap();
    assert!(gt.iter().all(|v| v.is_finite()));
    assert!(rel_err(&gt[..n * n], &cpu_root(&a, 4.0, 1e-3).d) < 5e-4);
    // Zero factor: (0 + ε)^{-1/4} I.
    let z = Mat::eye(n).scale(1e-3f64.powf(-0.25));
    assert!(rel_err(&ge[n * n..], &z.d) < 1e-5);
}

#[test]
fn decompositions_reject_bad_input() {
    let gpu = gpu();
    let mut pb = PlanBuilder::new(&gpu);
    let rect = Tensor::zeros(&gpu, &[3, 4]).unwrap();
    let sq = Tensor::zeros(&gpu, &[4, 4]).unwrap();
    let v = Tensor::zeros(&gpu, &[4]).unwrap();
    assert!(matches!(eigh(&mut pb, &rect, &v, &sq, None, &EighConfig::default()), Err(Error::Shape { .. })));
    assert!(matches!(
        qr(&mut pb, &Tensor::zeros(&gpu, &[3, 5]).unwrap(), &rect, &sq),
        Err(Error::InvalidArgument { .. })
    ));
    assert!(matches!(inverse_root_newton(&mut pb, &sq, &sq, 0, 0.0, 5), Err(Error::InvalidArgument { .. })));
    assert!(matches!(
        inverse_root_eigh(&mut pb, &sq, &sq, 2, f32::NAN, &EighConfig::default()),
        Err(Error::InvalidArgument { .. })
    ));
    assert!(matches!(cholesky(&mut pb, &sq, &sq, &v, -1.0), Err(Error::InvalidArgument { .. })));
    assert!(matches!(sqrt_newton_schulz(&mut pb, &sq, None, None, 0.0, 5), Err(Error::InvalidArgument { .. })));
    assert!(pb.is_empty());
}

/// `V·diag(f(λ))·Vᵀ` against f64 where rows are wider than a workgroup, on vec4s (n = 300) and scalars (n = 259).
#[test]
fn eig_apply_matches_cpu_on_wide_and_odd_sizes() {
    let gpu = gpu();
    let mut rng = Rng::new(31);
    for n in [300usize, 259] {
        let v: Vec<Mat> = (0..2).map(|_| rng.mat(n, n).scale(1.0 / (n as f64).sqrt())).collect();
        let lam: Vec<f64> =
            (0..2 * n).map(|i| 0.01 + (i % 17) as f64 * 0.3 - if i % 5 == 0 { 0.5 } else { 0.0 }).collect();
        let gv = upload(&gpu, &v);
        let vals = Tensor::from_slice(&gpu, &[2, n], &lam.iter().map(|&x| x as f32).collect::<Vec<_>>()).unwrap();
        let out = Tensor::zeros(&gpu, &[2, n, n]).unwrap();
        let (power, eps, floor) = (-0.25, 1e-3, 0.0);
        run(&gpu, |p| eig_apply(p, &vals, &gv, &out, power, eps, floor).unwrap());
        let got = out.read_blocking().unwrap();
        for (b, g) in split(&got, 2).iter().enumerate() {
            let f: Vec<f64> =
                (0..n).map(|j| (lam[b * n + j].max(floor as f64) + eps as f64).powf(power as f64)).collect();
            let want = v[b].scale_cols(&f).mul(&v[b].t());
            assert!(rel_err(g, &want.d) < 1e-5, "n = {n}, matrix {b}: rel err {}", rel_err(g, &want.d));
        }
    }
}

#[test]
fn kernels_without_offsets_refuse_views() {
    let gpu = gpu();
    let big = Tensor::zeros(&gpu, &[2, 4, 4]).unwrap();
    let view = Tensor::from_buffer(&gpu, big.buffer().clone(), 16, &[1, 4, 4]).unwrap();
    let (vals, out, info) = (
        Tensor::zeros(&gpu, &[1, 4]).unwrap(),
        Tensor::zeros(&gpu, &[1, 4, 4]).unwrap(),
        Tensor::zeros(&gpu, &[1]).unwrap(),
    );
    let mut plan = wgoptim::gpu::PlanBuilder::new(&gpu);
    for r in [
        eig_apply(&mut plan, &vals, &view, &out, 1.0, 0.0, 0.0),
        eigh(&mut plan, &out, &vals, &view, None, &EighConfig::default()),
        cholesky(&mut plan, &out, &view, &info, 0.0),
    ] {
        assert!(matches!(r, Err(wgoptim::Error::InvalidArgument { .. })), "{r:?}");
    }
}
