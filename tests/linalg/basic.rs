//! matmul (NN/NT/TN, alpha/beta, batched, broadcast), Gram, elementwise, reductions, transpose.

use crate::cpu::*;
use wgoptim::linalg::*;
use wgoptim::{Error, PlanBuilder, Tensor};

fn op(m: &Mat, t: Trans) -> Mat {
    if t == Trans::T {
        m.t()
    } else {
        m.clone()
    }
}

/// Every variant on awkward shapes (the adapter's own choice, scalar registers, workgroup-memory staging, and on
/// CPU adapters with 8-lane subgroups the subgroup-broadcast one), each bit-identical to the others: they sum every
/// output in the same order.
#[test]
fn matmul_all_transposes_and_shapes() {
    let gpu = gpu();
    let mut rng = Rng::new(1);
    let mut variants = vec![None, Some(MatmulVariant::Registers), Some(MatmulVariant::Shared)];
    if gpu.cpu_subgroup_size() == Some(8) {
        variants.push(Some(MatmulVariant::Subgroup));
    }
    for &(m, n) in SHAPES {
        for &k in &[1usize, 5, 33] {
            for (ta, tb) in [(Trans::N, Trans::N), (Trans::N, Trans::T), (Trans::T, Trans::N), (Trans::T, Trans::T)] {
                let batch = 2;
                let a: Vec<Mat> = (0..batch).map(|_| op(&rng.mat(m, k), ta)).collect();
                let b: Vec<Mat> = (0..batch).map(|_| op(&rng.mat(k, n), tb)).collect();
                let c: Vec<Mat> = (0..batch).map(|_| rng.mat(m, n)).collect();
                let (ga, gb, gc) = (upload(&gpu, &a), upload(&gpu, &b), upload(&gpu, &c));
                let mut first: Option<Vec<f32>> = None;
                for &variant in &variants {
                    let out = Tensor::zeros(&gpu, &[batch, m, n]).unwrap();
                    run(&gpu, |p| {
                        let mut mm = Matmul::new(&ga, &gb, &out).trans(ta, tb).scaled(0.5, Some(&gc), -2.0);
                        mm.variant = variant;
                        mm.record(p).unwrap()
                    });
                    let got = out.read_blocking().unwrap();
                    for (i, g) in split(&got, batch).iter().enumerate() {
                        let want = op(&a[i], ta).mul(&op(&b[i], tb)).scale(0.5).add(&c[i].scale(-2.0));
                        let e = rel_err(g, &want.d);
                        assert!(e < 1e-5, "{m}x{k}x{n} {ta:?}{tb:?} {variant:?} batch {i}: rel err {e}");
                    }
                    match &first {
                        None => first = Some(got),
                        Some(f) => {
                            assert_eq!(f, &got, "{m}x{k}x{n} {ta:?}{tb:?}: {variant:?} differs from the default")
                        }
                    }
                }
            }
        }
    }
}

/// `m` with zeros outside `tri`.
fn masked(m: Mat, tri: Option<Triangle>) -> Mat {
    let mut m = m;
    for i in 0..m.r {
        for j in 0..m.c {
            match tri {
                Some(Triangle::Upper) if i > j => m.set(i, j, 0.0),
                Some(Triangle::Lower) if i < j => m.set(i, j, 0.0),
                _ => {}
            }
        }
    }
    m
}

/// Products with triangular operands skip the zero terms and give exactly the full product's values: every
/// triangle of op(A) and op(B) with every transpose (the adapter's variant), and the other variants on some, on
/// shapes of several tiles each way with k beyond and below them.
#[test]
fn matmul_triangular_operands() {
    let gpu = gpu();
    let mut rng = Rng::new(17);
    let tris = [None, Some(Triangle::Upper), Some(Triangle::Lower)];
    let all = [(Trans::N, Trans::N), (Trans::N, Trans::T), (Trans::T, Trans::N), (Trans::T, Trans::T)];
    let mut cases = Vec::new();
    for ta_tri in tris {
        for tb_tri in tris {
            if (ta_tri, tb_tri) != (None, None) {
                cases.extend(all.map(|t| (None, [ta_tri, tb_tri], t)));
            }
        }
    }
    let (up, low) = (Some(Triangle::Upper), Some(Triangle::Lower));
    for v in [MatmulVariant::Registers, MatmulVariant::Shared, MatmulVariant::Vec4] {
        cases.push((Some(v), [up, up], (Trans::N, Trans::N)));
        cases.push((Some(v), [low, up], (Trans::T, Trans::N)));
    }
    for &(m, k, n) in &[(36usize, 68usize, 132usize), (132, 36, 20)] {
        for &(variant, [ta_tri, tb_tri], (ta, tb)) in &cases {
            let batch = 2;
            let a: Vec<Mat> = (0..batch).map(|_| op(&masked(rng.mat(m, k), ta_tri), ta)).collect();
            let b: Vec<Mat> = (0..batch).map(|_| op(&masked(rng.mat(k, n), tb_tri), tb)).collect();
            let c: Vec<Mat> = (0..batch).map(|_| rng.mat(m, n)).collect();
            let (ga, gb, gc) = (upload(&gpu, &a), upload(&gpu, &b), upload(&gpu, &c));
            let product = |tri: [Option<Triangle>; 2]| {
                let out = Tensor::zeros(&gpu, &[batch, m, n]).unwrap();
                run(&gpu, |p| {
                    let mut mm = Matmul::new(&ga, &gb, &out).trans(ta, tb).scaled(0.5, Some(&gc), -2.0);
                    mm.variant = variant;
                    mm.triangular(tri[0], tri[1]).record(p).unwrap()
                });
                out.read_blocking().unwrap()
            };
            let got = product([ta_tri, tb_tri]);
            let what = format!("{m}x{k}x{n} {ta:?}{tb:?} {variant:?} {ta_tri:?} {tb_tri:?}");
            for (i, g) in split(&got, batch).iter().enumerate() {
                let want = op(&a[i], ta).mul(&op(&b[i], tb)).scale(0.5).add(&c[i].scale(-2.0));
                assert!(rel_err(g, &want.d) < 1e-5, "{what} batch {i}: rel err {}", rel_err(g, &want.d));
            }
            assert!(got == product([None, None]), "{what}: differs from the full product");
        }
    }
}

#[test]
fn matmul_vector_load_variant() {
    aligned_shapes_all_transposes(MatmulVariant::Vec4);
}

#[test]
fn matmul_scalar_and_shared_variants() {
    aligned_shapes_all_transposes(MatmulVariant::Registers);
    aligned_shapes_all_transposes(MatmulVariant::Shared);
}

/// Rounded precisions go through each variant's loads and stores the same way: bf16-emulated products agree bit for
/// bit between scalar registers, workgroup-memory staging and the adapter's choice, and differ from f32.
#[test]
fn matmul_variants_agree_in_bf16() {
    let gpu = gpu();
    let mut rng = Rng::new(21);
    for &(m, k, n) in &[(7usize, 13usize, 9usize), (33, 70, 20)] {
        for (ta, tb) in [(Trans::N, Trans::N), (Trans::T, Trans::T)] {
            let a = upload(&gpu, &[op(&rng.mat(m, k), ta)]);
            let b = upload(&gpu, &[op(&rng.mat(k, n), tb)]);
            let product = |variant: Option<MatmulVariant>, precision: Precision| {
                let out = Tensor::zeros(&gpu, &[m, n]).unwrap();
                run(&gpu, |p| {
                    let mut mm = Matmul::new(&a, &b, &out).trans(ta, tb).precision(precision);
                    mm.variant = variant;
                    mm.record(p).unwrap()
                });
                out.read_blocking().unwrap()
            };
            let auto = product(None, Precision::Bf16Emulated);
            assert_eq!(auto, product(Some(MatmulVariant::Registers), Precision::Bf16Emulated), "{m}x{k}x{n}");
            assert_eq!(auto, product(Some(MatmulVariant::Shared), Precision::Bf16Emulated), "{m}x{k}x{n}");
            assert_ne!(auto, product(None, Precision::F32), "bf16 rounding must show");
        }
    }
}

/// A variant that cannot run a product is refused with a clear error, before anything is recorded.
#[test]
fn matmul_refuses_a_variant_that_does_not_fit() {
    let gpu = gpu();
    let a = Tensor::zeros(&gpu, &[6, 5]).unwrap();
    let b = Tensor::zeros(&gpu, &[5, 7]).unwrap();
    let o = Tensor::zeros(&gpu, &[6, 7]).unwrap();
    let mut p = PlanBuilder::new(&gpu);
    match Matmul::new(&a, &b, &o).variant(MatmulVariant::Vec4).record(&mut p) {
        Err(Error::InvalidArgument { op: "matmul", name: "variant", detail }) => {
            assert!(detail.contains("multiples of 4"), "{detail}")
        }
        other => panic!("expected a variant error, got {other:?}"),
    }
    assert_eq!(p.len(), 0);
}

fn aligned_shapes_all_transposes(variant: MatmulVariant) {
    let gpu = gpu();
    let mut rng = Rng::new(11);
    for &(m, k, n) in &[(4usize, 4usize, 4usize), (12, 8, 20), (68, 36, 132), (64, 128, 72)] {
        for (ta, tb) in [(Trans::N, Trans::N), (Trans::N, Trans::T), (Trans::T, Trans::N), (Trans::T, Trans::T)] {
            let batch = 2;
            let a: Vec<Mat> = (0..batch).map(|_| op(&rng.mat(m, k), ta)).collect();
            let b: Vec<Mat> = (0..batch).map(|_| op(&rng.mat(k, n), tb)).collect();
            let c: Vec<Mat> = (0..batch).map(|_| rng.mat(m, n)).collect();
            // B as a view 4 elements into its buffer (ParamStore-style offsets).
            let flat_b: Vec<f32> = [0.0; 4].into_iter().chain(b.iter().flat_map(|x| x.f32s())).collect();
            let gb_buf = Tensor::from_slice(&gpu, &[flat_b.len()], &flat_b).unwrap();
            let gb = Tensor::from_buffer(&gpu, gb_buf.buffer().clone(), 4, &[batch, b[0].r, b[0].c]).unwrap();
            let (ga, gc) = (upload(&gpu, &a), upload(&gpu, &c));
            let out = Tensor::zeros(&gpu, &[batch, m, n]).unwrap();
            run(&gpu, |p| {
                Matmul::new(&ga, &gb, &out)
                    .trans(ta, tb)
                    .scaled(0.5, Some(&gc), -2.0)
                    .variant(variant)
                    .record(p)
                    .unwrap()
            });
            let got = out.read_blocking().unwrap();
            for (i, g) in split(&got, batch).iter().enumerate() {
                let want = op(&a[i], ta).mul(&op(&b[i], tb)).scale(0.5).add(&c[i].scale(-2.0));
                let e = rel_err(g, &want.d);
                assert!(e < 1e-5, "{variant:?} {m}x{k}x{n} {ta:?}{tb:?} batch {i}: rel err {e}");
            }
        }
    }
}

#[test]
fn matmul_large_broadcast_and_inplace() {
    let gpu = gpu();
    let mut rng = Rng::new(2);
    let (m, k, n) = (200, 384, 136);
    let a = rng.mat(m, k);
    let bs: Vec<Mat> = (0..3).map(|_| rng.mat(k, n)).collect();
    let ga = upload(&gpu, std::slice::from_ref(&a));
    let gb = upload(&gpu, &bs);
    let cs: Vec<Mat> = (0..3).map(|_| rng.mat(m, n)).collect();
    let out = upload(&gpu, &cs);
    // A broadcast over the batch, C = out (accumulate in place).
    run(&gpu, |p| Matmul::new(&ga, &gb, &out).scaled(1.0, Some(&out), 1.0).record(p).unwrap());
    let got = out.read_blocking().unwrap();
    for (i, g) in split(&got, 3).iter().enumerate() {
        let want = a.mul(&bs[i]).add(&cs[i]);
        assert!(rel_err(g, &want.d) < 1e-5);
    }
}

/// Row ranges `[j.., :]` of each matrix of a stack, multiplied in place through `batch_strides`: rows above `j`
/// stay untouched; a stride that runs past the buffer or makes outputs overlap is a clear error.
#[test]
fn matmul_over_row_ranges_of_a_stack() {
    let gpu = gpu();
    let mut rng = Rng::new(4);
    let (b, m, n, k, j) = (3usize, 20usize, 12usize, 8usize, 7usize);
    let xs: Vec<Mat> = (0..b).map(|_| rng.mat(m, n)).collect();
    let vs: Vec<Mat> = (0..b).map(|_| rng.mat(m - j, k)).collect();
    let ws: Vec<Mat> = (0..b).map(|_| rng.mat(k, n)).collect();
    let (gx, gv, gw) = (upload(&gpu, &xs), upload(&gpu, &vs), upload(&gpu, &ws));
    let rows = Tensor::from_buffer(&gpu, gx.buffer().clone(), j * n, &[b, m - j, n]).unwrap();
    run(&gpu, |p| {
        Matmul::new(&gv, &gw, &rows)
            .scaled(-1.0, Some(&rows), 1.0)
            .batch_strides((m - j) * k, k * n, m * n)
            .record(p)
            .unwrap()
    });
    let got = gx.read_blocking().unwrap();
    for (i, g) in split(&got, b).iter().enumerate() {
        let mut want = xs[i].clone();
        let upd = vs[i].mul(&ws[i]);
        for r in j..m {
            for c in 0..n {
                want.set(r, c, xs[i].at(r, c) - upd.at(r - j, c));
            }
        }
        assert!(rel_err(g, &want.d) < 1e-5, "matrix {i}");
    }
    let mut p = PlanBuilder::new(&gpu);
    let past_end = Matmul::new(&gv, &gw, &rows).batch_strides((m - j) * k, k * n, m * n + 1).record(&mut p);
    assert!(matches!(past_end, Err(Error::Shape { .. })), "{past_end:?}");
    let overlap = Matmul::new(&gv, &gw, &rows).batch_strides((m - j) * k, k * n, n).record(&mut p);
    assert!(matches!(overlap, Err(Error::Shape { .. })), "{overlap:?}");
    assert!(p.is_empty());
}

/// The `r×c` block of `m` at `(i0, j0)`.
fn block(m: &Mat, (i0, j0): (usize, usize), (r, c): (usize, usize)) -> Mat {
    let mut out = Mat::zeros(r, c);
    for i in 0..r {
        for j in 0..c {
            out.set(i, j, m.at(i0 + i, j0 + j));
        }
    }
    out
}

/// Submatrix views through `row_strides`: blocks of larger stacks as A and B (every transpose), the trailing block
/// of a stack accumulated in place, with every variant that takes them; elements outside the output block stay as
/// they were. A row stride shorter than its row is an error, and the vector-load variant refuses strided operands.
#[test]
fn matmul_over_submatrix_views() {
    let gpu = gpu();
    let mut rng = Rng::new(5);
    let (b, k) = (2usize, 9usize);
    let (xr, xc, x0) = (23usize, 19usize, (5usize, 4usize));
    let (m, n) = (xr - x0.0, xc - x0.1);
    let (pr, pc) = (25usize, 30usize);
    for (ta, tb) in [(Trans::N, Trans::N), (Trans::N, Trans::T), (Trans::T, Trans::N), (Trans::T, Trans::T)] {
        let (a_shape, b_shape) =
            (if ta == Trans::N { (m, k) } else { (k, m) }, if tb == Trans::N { (k, n) } else { (n, k) });
        let (a0, b0) = ((2usize, 3usize), (1usize, 2usize));
        let pa: Vec<Mat> = (0..b).map(|_| rng.mat(pr, pc)).collect();
        let pb: Vec<Mat> = (0..b).map(|_| rng.mat(pr, pc)).collect();
        let xs: Vec<Mat> = (0..b).map(|_| rng.mat(xr, xc)).collect();
        let (gpa, gpb) = (upload(&gpu, &pa), upload(&gpu, &pb));
        let view = |t: &Tensor, (i0, j0): (usize, usize), (r, c): (usize, usize), ld: usize| {
            Tensor::from_buffer(&gpu, t.buffer().clone(), i0 * ld + j0, &[b, r, c]).unwrap()
        };
        let va = view(&gpa, a0, a_shape, pc);
        let vb = view(&gpb, b0, b_shape, pc);
        let mut first: Option<Vec<f32>> = None;
        for variant in [None, Some(MatmulVariant::Registers), Some(MatmulVariant::Shared)] {
            let gx = upload(&gpu, &xs);
            let vx = view(&gx, x0, (m, n), xc);
            run(&gpu, |p| {
                let mut mm = Matmul::new(&va, &vb, &vx)
                    .trans(ta, tb)
                    .scaled(-0.5, Some(&vx), 2.0)
                    .batch_strides(pr * pc, pr * pc, xr * xc)
                    .row_strides(pc, pc, xc);
                mm.variant = variant;
                mm.record(p).unwrap()
            });
            let got = gx.read_blocking().unwrap();
            for (i, g) in split(&got, b).iter().enumerate() {
                let prod = op(&block(&pa[i], a0, a_shape), ta).mul(&op(&block(&pb[i], b0, b_shape), tb));
                let mut want = xs[i].clone();
                for r in 0..m {
                    for c in 0..n {
                        want.set(x0.0 + r, x0.1 + c, 2.0 * xs[i].at(x0.0 + r, x0.1 + c) - 0.5 * prod.at(r, c));
                    }
                }
                let e = rel_err(g, &want.d);
                assert!(e < 1e-5, "{ta:?}{tb:?} {variant:?} matrix {i}: rel err {e}");
            }
            match &first {
                None => first = Some(got),
                Some(f) => assert_eq!(f, &got, "{ta:?}{tb:?}: {variant:?} differs from the default"),
            }
        }
    }
    let gx = upload(&gpu, &[rng.mat(xr, xc)]);
    let vx = Tensor::from_buffer(&gpu, gx.buffer().clone(), 0, &[m, n]).unwrap();
    let (ga, gb) = (Tensor::zeros(&gpu, &[m, 8]).unwrap(), Tensor::zeros(&gpu, &[8, n]).unwrap());
    let mut p = PlanBuilder::new(&gpu);
    let short = Matmul::new(&ga, &gb, &vx).row_strides(8, n - 1, xc).record(&mut p);
    assert!(matches!(short, Err(Error::Shape { .. })), "{short:?}");
    let past_end = Matmul::new(&ga, &gb, &vx).row_strides(8, n, 2 * xc).record(&mut p);
    assert!(matches!(past_end, Err(Error::Shape { .. })), "{past_end:?}");
    // Only the strided A keeps the vector loads out (16 columns: every other condition holds).
    let wide = Tensor::zeros(&gpu, &[m, 12]).unwrap();
    let strided_a = Tensor::from_buffer(&gpu, wide.buffer().clone(), 0, &[m, 8]).unwrap();
    let (gb16, out16) = (Tensor::zeros(&gpu, &[8, 16]).unwrap(), Tensor::zeros(&gpu, &[m, 16]).unwrap());
    let vec4 =
        Matmul::new(&strided_a, &gb16, &out16).row_strides(12, 16, 16).variant(MatmulVariant::Vec4).record(&mut p);
    assert!(matches!(vec4, Err(Error::InvalidArgument { .. })), "{vec4:?}");
    Matmul::new(&strided_a, &gb16, &out16)
        .row_strides(12, 16, 16)
        .variant(MatmulVariant::Registers)
        .record(&mut p)
        .unwrap();
    assert_eq!(p.len(), 1);
}

/// Transposed B operands whose rows lie a multiple of 256 elements apart, and untransposed A operands with rows a
/// multiple of 1024 apart (CPU adapters first transpose them into plan transients; see `relayout_for_cpu`): packed,
/// broadcast over the batch, both at once, as strided views, and in a Gram product, each bit for bit the
/// scalar-register variant's result (which reads them as stored) and close to f64.
#[test]
fn matmul_strided_transposed_operands_agree_with_direct_reads() {
    let gpu = gpu();
    let mut rng = Rng::new(6);
    // (m, k, n, batches of A and B, transposes)
    let cases = [
        (64, 256, 24, (2, 2), (Trans::N, Trans::T)),
        (70, 512, 17, (3, 1), (Trans::T, Trans::T)),
        (96, 256, 65, (1, 2), (Trans::N, Trans::T)),
        (64, 1024, 512, (2, 1), (Trans::N, Trans::N)),
        (66, 1024, 520, (1, 2), (Trans::N, Trans::T)),
    ];
    for (m, k, n, (ba, bb), (ta, tb)) in cases {
        let batch = ba.max(bb);
        let a: Vec<Mat> = (0..ba).map(|_| op(&rng.mat(m, k), ta)).collect();
        let b: Vec<Mat> = (0..bb).map(|_| op(&rng.mat(k, n), tb)).collect();
        let (ga, gb) = (upload(&gpu, &a), upload(&gpu, &b));
        let mut outs = Vec::new();
        for variant in [None, Some(MatmulVariant::Registers)] {
            let out = Tensor::zeros(&gpu, &[batch, m, n]).unwrap();
            run(&gpu, |p| {
                let mut mm = Matmul::new(&ga, &gb, &out).trans(ta, tb);
                mm.variant = variant;
                mm.record(p).unwrap()
            });
            let got = out.read_blocking().unwrap();
            for (i, g) in split(&got, batch).iter().enumerate() {
                let want = op(&a[i % ba], ta).mul(&op(&b[i % bb], tb));
                let e = rel_err(g, &want.d);
                assert!(e < 1e-5, "{m}x{k}x{n} {ta:?}{tb:?} {variant:?} batch {i}: rel err {e}");
            }
            outs.push(got);
        }
        assert_eq!(outs[0], outs[1], "{m}x{k}x{n} {ta:?}{tb:?}: the default differs from direct reads");
    }
    // Views: A is a block of a [2, 80, 1024] stack (rows 1024 apart), B of a [2, 520, 512] one (rows 512 apart).
    let (m, k, n, (lda, ldb)) = (66, 300, 512, (1024, 512));
    let pa: Vec<Mat> = (0..2).map(|_| rng.mat(80, lda)).collect();
    let pb: Vec<Mat> = (0..2).map(|_| rng.mat(520, ldb)).collect();
    let (gpa, gpb) = (upload(&gpu, &pa), upload(&gpu, &pb));
    let va = Tensor::from_buffer(&gpu, gpa.buffer().clone(), 3 * lda + 5, &[2, m, k]).unwrap();
    let vb = Tensor::from_buffer(&gpu, gpb.buffer().clone(), ldb + 7, &[2, n, k]).unwrap();
    let mut outs = Vec::new();
    for variant in [None, Some(MatmulVariant::Registers)] {
        let out = Tensor::zeros(&gpu, &[2, m, n]).unwrap();
        run(&gpu, |p| {
            let mut mm = Matmul::new(&va, &vb, &out)
                .trans(Trans::N, Trans::T)
                .batch_strides(80 * lda, 520 * ldb, m * n)
                .row_strides(lda, ldb, n);
            mm.variant = variant;
            mm.record(p).unwrap()
        });
        let got = out.read_blocking().unwrap();
        for (i, g) in split(&got, 2).iter().enumerate() {
            let want = block(&pa[i], (3, 5), (m, k)).mul(&block(&pb[i], (1, 7), (n, k)).t());
            assert!(rel_err(g, &want.d) < 1e-5, "views, {variant:?} matrix {i}");
        }
        outs.push(got);
    }
    assert_eq!(outs[0], outs[1], "views: the default differs from direct reads");
    // A Gram product X·Xᵀ with rows 512 apart equals the full product read directly.
    let x: Vec<Mat> = (0..2).map(|_| rng.mat(72, 512)).collect();
    let gx = upload(&gpu, &x);
    let (g_out, mm_out) = (Tensor::zeros(&gpu, &[2, 72, 72]).unwrap(), Tensor::zeros(&gpu, &[2, 72, 72]).unwrap());
    run(&gpu, |p| {
        gram(p, &gx, GramSide::Rows, &g_out, 1.0, None, 0.0, Precision::F32).unwrap();
        Matmul::new(&gx, &gx, &mm_out).trans(Trans::N, Trans::T).variant(MatmulVariant::Registers).record(p).unwrap();
    });
    assert_eq!(g_out.read_blocking().unwrap(), mm_out.read_blocking().unwrap(), "Gram X·Xᵀ");
}

/// A guarded product runs when its flag is non-zero and leaves `out` untouched when it is zero, in the register and
/// workgroup-memory variants; a Gram EMA in place likewise; a flag index past the tensor is an error.
#[test]
fn guarded_products_skip_on_a_zero_flag() {
    let gpu = gpu();
    let mut rng = Rng::new(8);
    let (a, b, c) = (rng.mat(20, 12), rng.mat(12, 30), rng.mat(20, 30));
    let (ga, gb) = (upload(&gpu, std::slice::from_ref(&a)), upload(&gpu, std::slice::from_ref(&b)));
    let flags = Tensor::from_slice(&gpu, &[3], &[1.0, 0.0, 1.0]).unwrap();
    // The flag is read where every variant stores (the subgroup one, slow to compile on lavapipe, shares it).
    for variant in [None, Some(MatmulVariant::Registers), Some(MatmulVariant::Shared)] {
        for (flag, runs) in [(0, true), (1, false)] {
            let out = upload(&gpu, std::slice::from_ref(&c));
            run(&gpu, |p| {
                let mut mm = Matmul::new(&ga, &gb, &out).scaled(2.0, Some(&out), 0.5).guarded(&flags, flag);
                mm.variant = variant;
                mm.record(p).unwrap()
            });
            let got = out.read_blocking().unwrap();
            let want = if runs { a.mul(&b).scale(2.0).add(&c.scale(0.5)) } else { c.clone() };
            assert!(rel_err(&got, &want.d) < 1e-5, "{variant:?} flag {flag}: rel err {}", rel_err(&got, &want.d));
        }
    }
    let x = rng.mat(9, 70);
    let r = rng.mat(9, 9);
    let f0 = r.mul(&r.t()); // symmetric, as a factor is (the Gram output reads C's upper triangle)
    let gx = upload(&gpu, std::slice::from_ref(&x));
    for (flag, runs) in [(2, true), (1, false)] {
        let f = upload(&gpu, std::slice::from_ref(&f0));
        run(&gpu, |p| {
            gram_guarded(p, &gx, GramSide::Rows, &f, 0.1, Some(&f), 0.9, Precision::F32, Some((&flags, flag))).unwrap()
        });
        let want = if runs { x.mul(&x.t()).scale(0.1).add(&f0.scale(0.9)) } else { f0.clone() };
        assert!(rel_err(&f.read_blocking().unwrap(), &want.d) < 1e-5, "Gram EMA, flag {flag}");
    }
    let out = Tensor::zeros(&gpu, &[20, 30]).unwrap();
    let mut p = PlanBuilder::new(&gpu);
    let past = Matmul::new(&ga, &gb, &out).guarded(&flags, 3).record(&mut p);
    assert!(matches!(past, Err(Error::InvalidArgument { .. })), "{past:?}");
    assert!(p.is_empty());
}

#[test]
fn gram_both_sides_exactly_symmetric() {
    gram_checks();
}

/// Gram products staged through workgroup memory (GPUs choose it by size; here it is forced for the process
/// for the duration of this test: other tests running meanwhile stay exact, only slower).
#[test]
fn gram_shared_variant() {
    std::env::set_var("WGOPTIM_MATMUL_VARIANT", "shared");
    gram_checks();
    std::env::remove_var("WGOPTIM_MATMUL_VARIANT");
}

fn gram_checks() {
    let gpu = gpu();
    let mut rng = Rng::new(3);
    for &(m, n) in SHAPES.iter().chain(&[(384, 96)]) {
        let x: Vec<Mat> = (0..2).map(|_| rng.mat(m, n)).collect();
        let gx = upload(&gpu, &x);
        for side in [GramSide::Rows, GramSide::Cols] {
            let s = if side == GramSide::Rows { m } else { n };
            let c: Vec<Mat> = (0..2)
                .map(|_| {
                    let r = rng.mat(s, s);
                    r.add(&r.t())
                })
                .collect();
            let gc = upload(&gpu, &c);
            let out = Tensor::zeros(&gpu, &[2, s, s]).unwrap();
            run(&gpu, |p| gram(p, &gx, side, &out, 2.0, Some(&gc), 0.5, Precision::F32).unwrap());
            let got = out.read_blocking().unwrap();
            for (i, g) in split(&got, 2).iter().enumerate() {
                let gm = if side == GramSide::Rows { x[i].mul(&x[i].t()) } else { x[i].t().mul(&x[i]) };
                let want = gm.scale(2.0).add(&c[i].scale(0.5));
                assert!(rel_err(g, &want.d) < 1e-5, "{m}x{n} {side:?}");
                let gg = Mat::from_f32(s, s, g);
                assert_eq!(gg, gg.t(), "Gram output must be exactly symmetric");
            }
        }
    }
}

#[test]
fn matmul_rejects_bad_shapes() {
    let gpu = gpu();
    let a = Tensor::zeros(&gpu, &[3, 4]).unwrap();
    let b = Tensor::zeros(&gpu, &[5, 6]).unwrap();
    let o = Tensor::zeros(&gpu, &[3, 6]).unwrap();
    let mut p = PlanBuilder::new(&gpu);
    assert!(matches!(Matmul::new(&a, &b, &o).record(&mut p), Err(Error::Shape { .. })));
    let z = Tensor::zeros(&gpu, &[0, 4]).unwrap();
    assert!(matches!(Matmul::new(&z, &b, &o).record(&mut p), Err(Error::ZeroSize { .. })));
    let b3 = Tensor::zeros(&gpu, &[2, 4, 6]).unwrap();
    let o3 = Tensor::zeros(&gpu, &[3, 3, 6]).unwrap();
    assert!(matches!(Matmul::new(&a, &b3, &o3).record(&mut p), Err(Error::Shape { .. })));
    let v = Tensor::zeros(&gpu, &[7]).unwrap();
    assert!(matches!(Matmul::new(&v, &b, &o).record(&mut p), Err(Error::Shape { .. })));
    assert!(Matmul::new(&a, &b, &a).record(&mut p).is_err());
    assert!(p.is_empty(), "failed calls must record nothing");
}

#[test]
fn bf16_emulation_rounds_products() {
    let gpu = gpu();
    let a = Tensor::from_slice(&gpu, &[1, 1], &[1.0 + 1.0 / 512.0]).unwrap();
    let b = Tensor::from_slice(&gpu, &[1, 1], &[1.0]).unwrap();
    let o = Tensor::zeros(&gpu, &[1, 1]).unwrap();
    run(&gpu, |p| Matmul::new(&a, &b, &o).precision(Precision::Bf16Emulated).record(p).unwrap());
    // 1 + 2^-9 is below half a bf16 ulp (2^-8) above 1: rounds down to 1.
    assert_eq!(o.read_blocking().unwrap(), vec![1.0]);
    // 1 + 1.5·2^-7 is a tie between 1 + 2^-7 (odd mantissa) and 1 + 2^-6 (even): rounds to even.
    let a2 = Tensor::from_slice(&gpu, &[1, 1], &[1.0 + 3.0 / 256.0]).unwrap();
    run(&gpu, |p| Matmul::new(&a2, &b, &o).precision(Precision::Bf16Emulated).record(p).unwrap());
    assert_eq!(o.read_blocking().unwrap(), vec![1.0 + 1.0 / 64.0]);
}

/// With a diagonal term (per element), and without one on sizes that read vec4s, in place too.
#[test]
fn axpby_with_batch_scalars_and_diagonal() {
    let gpu = gpu();
    let mut rng = Rng::new(4);
    for (m, n, diag) in [(7, 13, 0.5), (8, 12, 0.0)] {
        let x: Vec<Mat> = (0..3).map(|_| rng.mat(m, n)).collect();
        let y: Vec<Mat> = (0..3).map(|_| rng.mat(m, n)).collect();
        let (gx, gy) = (upload(&gpu, &x), upload(&gpu, &y));
        let s = Tensor::from_slice(&gpu, &[3], &[1.0, 4.0, 9.0]).unwrap();
        let out = Tensor::zeros(&gpu, &[3, m, n]).unwrap();
        run(&gpu, |p| {
            Axpby {
                x: Some(&gx),
                a: 2.0,
                diag,
                scale: Some(BatchScalar::of(&s).affine(1.0, 0.0, 0.0).pow(-0.5)),
                y: Some(&gy),
                b: -1.0,
                ..Axpby::new(&out)
            }
            .record(p)
            .unwrap()
        });
        let got = out.read_blocking().unwrap();
        for (i, g) in split(&got, 3).iter().enumerate() {
            let mut d = Mat::zeros(m, n);
            for j in 0..m.min(n) {
                d.set(j, j, diag as f64);
            }
            let sc = 1.0 / ((i + 1) as f64);
            let want = x[i].scale(2.0).add(&d).scale(sc).add(&y[i].scale(-1.0));
            assert!(rel_err(g, &want.d) < 1e-6, "{m}×{n}, diagonal {diag}");
        }
        // In place: out = 3·out.
        run(&gpu, |p| Axpby { x: Some(&out), a: 3.0, ..Axpby::new(&out) }.record(p).unwrap());
        let again = out.read_blocking().unwrap();
        assert!(again.iter().zip(&got).all(|(a, b)| (a - 3.0 * b).abs() <= 1e-6 * b.abs().max(1.0)));
    }
}

#[test]
fn reductions_match_cpu() {
    let gpu = gpu();
    let mut rng = Rng::new(5);
    // Odd lengths read scalars; multiples of 4 at offsets that are too read vec4s (one chunk or several); the
    // offset-2 view reads scalars again.
    for &(len, off) in &[(1usize, 0usize), (255, 0), (4097, 0), (100_003, 0), (64, 0), (40_000, 4), (40_000, 2)] {
        let segs = 3;
        let data: Vec<f64> = (0..len * segs).map(|_| rng.next() * 3.0).collect();
        let flat: Vec<f32> = std::iter::repeat_n(7.0, off).chain(data.iter().map(|&v| v as f32)).collect();
        let buf = Tensor::from_slice(&gpu, &[flat.len()], &flat).unwrap();
        let x = Tensor::from_buffer(&gpu, buf.buffer().clone(), off, &[segs, len]).unwrap();
        for op in [ReduceOp::Sum, ReduceOp::SumSq, ReduceOp::Norm, ReduceOp::MaxAbs, ReduceOp::L1, ReduceOp::AllFinite]
        {
            let out = Tensor::zeros(&gpu, &[segs]).unwrap();
            run(&gpu, |p| reduce(p, &x, op, segs, &out).unwrap());
            let got = out.read_blocking().unwrap();
            for s in 0..segs {
                let seg = data[s * len..(s + 1) * len].iter().map(|&v| v as f32 as f64);
                let want = match op {
                    ReduceOp::Sum => seg.sum(),
                    ReduceOp::SumSq => seg.map(|v| v * v).sum(),
                    ReduceOp::Norm => seg.map(|v| v * v).sum::<f64>().sqrt(),
                    ReduceOp::MaxAbs => seg.map(f64::abs).fold(0.0, f64::max),
                    ReduceOp::L1 => seg.map(f64::abs).sum(),
                    ReduceOp::AllFinite => 1.0,
                };
                let tol = if op == ReduceOp::Sum { 1e-4 * (len as f64).sqrt() } else { 1e-5 * want.abs().max(1.0) };
                assert!((got[s] as f64 - want).abs() <= tol, "{op:?} len {len} at {off}: {} vs {want}", got[s]);
            }
        }
    }
}

#[test]
fn reductions_are_deterministic_and_flag_nonfinite() {
    let gpu = gpu();
    let mut rng = Rng::new(6);
    let mut data: Vec<f32> = (0..50_000).map(|_| rng.next() as f32).collect();
    let x = Tensor::from_slice(&gpu, &[50_000], &data).unwrap();
    let out = Tensor::zeros(&gpu, &[1]).unwrap();
    let mut pb = PlanBuilder::new(&gpu);
    reduce(&mut pb, &x, ReduceOp::Sum, 1, &out).unwrap();
    let plan = pb.build().unwrap();
    let mut seen = Vec::new();
    for _ in 0..3 {
        plan.run();
        seen.push(out.read_blocking().unwrap()[0].to_bits());
    }
    assert!(seen.windows(2).all(|w| w[0] == w[1]), "sums differ between runs: {seen:?}");
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        data[31_337] = bad;
        x.write(&data).unwrap();
        run(&gpu, |p| reduce(p, &x, ReduceOp::AllFinite, 1, &out).unwrap());
        assert_eq!(out.read_blocking().unwrap(), vec![0.0], "{bad} not flagged");
    }
}

#[test]
fn trace_mean_sq_transpose() {
    let gpu = gpu();
    let mut rng = Rng::new(7);
    for &(m, n) in SHAPES {
        let x: Vec<Mat> = (0..2).map(|_| rng.mat(m, n)).collect();
        let gx = upload(&gpu, &x);
        let tr = Tensor::zeros(&gpu, &[2]).unwrap();
        let rows = Tensor::zeros(&gpu, &[2, m]).unwrap();
        let cols = Tensor::zeros(&gpu, &[2, n]).unwrap();
        let xt = Tensor::zeros(&gpu, &[2, n, m]).unwrap();
        run(&gpu, |p| {
            trace(p, &gx, &tr).unwrap();
            mean_sq(p, &gx, true, &rows).unwrap();
            mean_sq(p, &gx, false, &cols).unwrap();
            transpose(p, &gx, &xt).unwrap();
        });
        let (tr, rows, cols, xt) = (
            tr.read_blocking().unwrap(),
            rows.read_blocking().unwrap(),
            cols.read_blocking().unwrap(),
            xt.read_blocking().unwrap(),
        );
        for b in 0..2 {
            let t: f64 = (0..m.min(n)).map(|i| x[b].at(i, i)).sum();
            assert!((tr[b] as f64 - t).abs() < 1e-5);
            for i in 0..m {
                let want = (0..n).map(|j| x[b].at(i, j).powi(2)).sum::<f64>() / n as f64;
                assert!((rows[b * m + i] as f64 - want).abs() < 1e-5);
            }
            for j in 0..n {
                let want = (0..m).map(|i| x[b].at(i, j).powi(2)).sum::<f64>() / m as f64;
                assert!((cols[b * n + j] as f64 - want).abs() < 1e-5);
            }
            assert_eq!(&xt[b * m * n..(b + 1) * m * n], &x[b].t().f32s()[..]);
        }
    }
}
