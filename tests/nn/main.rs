//! The nn engine's ops against f64 CPU references: forward values, and gradients from the recorded backward
//! pass against central finite differences of the reference, on awkward shapes; plus plan replay determinism.
#![allow(clippy::needless_range_loop)] // the references index like the equations they transcribe

#[allow(dead_code)]
#[path = "../linalg/cpu.rs"]
mod cpu;
mod kfac;
mod reference;
mod train;

use cpu::{gpu, noise};
use wgoptim::linalg::Trans;
use wgoptim::nn::{step_values, Graph, Mode, Tokens, Var};
use wgoptim::{Error, Result, Tensor};

type Build = dyn Fn(&mut Graph, &[Var]) -> Result<Var>;
type Reference = dyn Fn(&[Vec<f64>]) -> Vec<f64>;

/// Build the op over trainable inputs, seed the backward with a random upstream gradient R (or 1 for a scalar
/// loss), run the plan twice (identical results: nothing stale accumulates), and compare the output with the
/// reference and each input gradient with central differences of Σ reference(inputs)·R.
fn check(name: &str, inputs: &[(&[usize], Vec<f32>)], build: &Build, reference: &Reference, tol: f64) {
    let gpu = gpu();
    let mut g = Graph::new(&gpu, Mode::Train).unwrap();
    let mut vars = Vec::new();
    let mut grads = Vec::new();
    for (shape, data) in inputs {
        let value = Tensor::from_slice(&gpu, shape, data).unwrap();
        let grad = Tensor::zeros(&gpu, shape).unwrap();
        vars.push(g.param(&value, &grad).unwrap());
        grads.push(grad);
    }
    let out = build(&mut g, &vars).unwrap_or_else(|e| panic!("{name}: {e}"));
    let out_t = g.value(out).clone();
    let n_out = out_t.numel();
    let r: Vec<f32> = if n_out == 1 { vec![1.0] } else { noise(99, n_out) };
    if n_out == 1 {
        g.backward(out).unwrap();
    } else {
        g.backward_with(out, &Tensor::from_slice(&gpu, out_t.shape(), &r).unwrap()).unwrap();
    }
    let plan = g.build().unwrap();
    plan.set_params(&step_values(3, 7)).unwrap();
    let mut runs = Vec::new();
    for _ in 0..2 {
        plan.run();
        let gs: Vec<Vec<f32>> = grads.iter().map(|t| t.read_blocking().unwrap()).collect();
        runs.push((out_t.read_blocking().unwrap(), gs));
    }
    assert_eq!(runs[0], runs[1], "{name}: a second run of the plan differs");
    let (got, got_grads) = &runs[0];

    let x64: Vec<Vec<f64>> = inputs.iter().map(|(_, d)| d.iter().map(|&v| v as f64).collect()).collect();
    let want = reference(&x64);
    assert_eq!(want.len(), got.len(), "{name}: output size");
    let scale = want.iter().fold(1e-3f64, |m, v| m.max(v.abs()));
    for (i, (w, g)) in want.iter().zip(got).enumerate() {
        assert!((w - *g as f64).abs() <= tol * scale, "{name}: out[{i}] = {g}, reference {w}");
    }
    let objective = |x: &[Vec<f64>]| reference(x).iter().zip(&r).map(|(a, b)| a * *b as f64).sum::<f64>();
    for (k, gk) in got_grads.iter().enumerate() {
        let mut fd = vec![0.0; gk.len()];
        for i in 0..gk.len() {
            let h = 1e-6 * x64[k][i].abs().max(1.0);
            let mut xp = x64.clone();
            xp[k][i] += h;
            let mut xm = x64.clone();
            xm[k][i] -= h;
            fd[i] = (objective(&xp) - objective(&xm)) / (2.0 * h);
        }
        let scale = fd.iter().fold(1e-3f64, |m, v| m.max(v.abs()));
        for i in 0..gk.len() {
            assert!(
                (fd[i] - gk[i] as f64).abs() <= tol * scale,
                "{name}: d/d input{k}[{i}] = {}, finite differences {} (scale {scale})",
                gk[i],
                fd[i]
            );
        }
    }
}

#[test]
fn matmul_all_transposes() {
    let (m, k, n) = (5, 7, 3);
    for ta in [Trans::N, Trans::T] {
        for tb in [Trans::N, Trans::T] {
            let sa: &[usize] = if ta == Trans::N { &[m, k] } else { &[k, m] };
            let sb: &[usize] = if tb == Trans::N { &[k, n] } else { &[n, k] };
            check(
                &format!("matmul {ta:?}{tb:?}"),
                &[(sa, noise(1, m * k)), (sb, noise(2, k * n))],
                &move |g, v| g.matmul(v[0], v[1], ta, tb),
                &move |x| reference::matmul(&x[0], &x[1], m, k, n, ta == Trans::T, tb == Trans::T),
                2e-5,
            );
        }
    }
}

#[test]
fn linear_with_bias() {
    check(
        "linear",
        &[(&[6, 5], noise(3, 30)), (&[7, 5], noise(4, 35)), (&[7], noise(5, 7))],
        &|g, v| g.linear(v[0], v[1], Some(v[2])),
        &|x| {
            let y = reference::matmul(&x[0], &x[1], 6, 5, 7, false, true);
            y.iter().enumerate().map(|(i, v)| v + x[2][i % 7]).collect()
        },
        2e-5,
    );
}

#[test]
fn gelu_and_residual_accumulation() {
    // y = gelu(a) + a + b: `a` receives two gradient contributions (write, then accumulate).
    check(
        "gelu + residual",
        &[(&[3, 11], noise(6, 33).iter().map(|v| v * 3.0).collect()), (&[3, 11], noise(7, 33))],
        &|g, v| {
            let h = g.gelu(v[0])?;
            let s = g.add(h, v[0])?;
            g.add(s, v[1])
        },
        &|x| reference::gelu(&x[0]).iter().zip(&x[0]).zip(&x[1]).map(|((h, a), b)| h + a + b).collect(),
        2e-5,
    );
}

#[test]
fn layer_norm_with_and_without_bias() {
    // 150 rows: the weight/bias gradients sum three chunks of rows (the last one partial).
    for (rows, c) in [(7, 13), (150, 5)] {
        let x: Vec<f32> = noise(8, rows * c).iter().enumerate().map(|(i, v)| v * 2.0 + (i / c) as f32).collect();
        let w: Vec<f32> = noise(9, c).iter().map(|v| 1.0 + 0.5 * v).collect();
        check(
            "layer_norm bias",
            &[(&[rows, c], x.clone()), (&[c], w.clone()), (&[c], noise(10, c))],
            &|g, v| g.layer_norm(v[0], v[1], Some(v[2]), 1e-5),
            &move |x| reference::layer_norm(&x[0], &x[1], Some(&x[2]), c, 1e-5),
            1e-4,
        );
        check(
            "layer_norm",
            &[(&[rows, c], x), (&[c], w)],
            &|g, v| g.layer_norm(v[0], v[1], None, 1e-5),
            &move |x| reference::layer_norm(&x[0], &x[1], None, c, 1e-5),
            1e-4,
        );
    }
}

#[test]
fn causal_attention_matches_reference() {
    // The last three have head dims and blocks that are multiples of 8 (the subgroup variant on lavapipe); the
    // last one's head dim, 40, takes the unrolled row loads and stores that GPUs and heads over 32 use.
    for (batch, t, heads, c) in [(2, 5, 2, 6), (1, 9, 3, 15), (3, 1, 1, 4), (2, 16, 2, 32), (1, 8, 1, 8), (1, 8, 1, 40)]
    {
        check(
            &format!("attention b{batch} t{t} h{heads} c{c}"),
            &[(&[batch * t, 3 * c], noise(11, batch * t * 3 * c).iter().map(|v| v * 2.0).collect())],
            &move |g, v| g.causal_attention(v[0], batch, t, heads),
            &move |x| reference::causal_attention(&x[0], batch, t, heads, c),
            1e-4,
        );
    }
}

fn ids(seed: u64, n: usize, vocab: usize) -> Vec<u32> {
    noise(seed, n).iter().map(|v| (((v + 1.0) / 2.0 * vocab as f32) as u32).min(vocab as u32 - 1)).collect()
}

#[test]
fn embedding_tied_head_and_cross_entropy() {
    // A tiny language model: logits = (table[ids] + pos)·tableᵀ, mean cross-entropy. The table's gradient gets
    // the head's contribution (written) and the embedding's scatter-add (accumulated); the loss is the root.
    let (batch, block, vocab, c) = (2, 5, 11, 6);
    let (inputs, targets) = (ids(12, batch * block, vocab), ids(13, batch * block, vocab));
    let (i2, t2) = (inputs.clone(), targets.clone());
    check(
        "embedding + tied head + cross-entropy",
        &[(&[vocab, c], noise(14, vocab * c)), (&[block + 1, c], noise(15, (block + 1) * c))],
        &move |g, v| {
            let tokens = Tokens::new(g.gpu(), batch, block, vocab)?;
            tokens.write(&inputs, &targets)?;
            let x = g.embedding(&tokens, v[0], v[1])?;
            let logits = g.matmul(x, v[0], Trans::N, Trans::T)?;
            g.cross_entropy(logits, &tokens)
        },
        &move |x| {
            let e = reference::embedding(&i2, &x[0], &x[1], block, c);
            let logits = reference::matmul(&e, &x[0], batch * block, c, vocab, false, true);
            vec![reference::cross_entropy(&logits, &t2, vocab)]
        },
        2e-5,
    );
}

#[test]
fn cross_entropy_inside_a_larger_expression() {
    // 2·CE + p: the cross-entropy is not the root and its upstream gradient is 2 (a device scalar).
    let (n, vocab) = (7, 11);
    let targets = ids(16, n, vocab);
    let t2 = targets.clone();
    check(
        "cross-entropy (not the root)",
        &[(&[n, vocab], noise(17, n * vocab).iter().map(|v| v * 4.0).collect()), (&[1], vec![0.5])],
        &move |g, v| {
            let tokens = Tokens::new(g.gpu(), 1, n, vocab)?;
            tokens.write(&targets, &targets)?;
            let l = g.cross_entropy(v[0], &tokens)?;
            let l2 = g.add(l, v[1])?;
            g.add(l2, l)
        },
        &move |x| vec![2.0 * reference::cross_entropy(&x[0], &t2, vocab) + x[1][0]],
        2e-5,
    );
}

/// The dropout mask of nn/dropout_mask.wgsl, transcribed: element `i` survives at (step, seed, salt).
fn dropout_keeps(step: u32, seed: u32, salt: u32, i: u32, p: f32) -> bool {
    let hash = |v: u32| {
        let s = v.wrapping_mul(747796405).wrapping_add(2891336453);
        let w = ((s >> ((s >> 28) + 4)) ^ s).wrapping_mul(277803737);
        (w >> 22) ^ w
    };
    let key = hash(hash(seed ^ salt).wrapping_add(step));
    (hash(key ^ i) >> 8) as f32 * (1.0 / 16777216.0) >= p
}

#[test]
fn causal_attention_with_dropout_matches_reference() {
    // `check` runs at step 3 with seed 7.
    let (p, salt) = (0.3f32, 9u32);
    for (batch, t, heads, c) in [(2, 5, 2, 6), (1, 9, 3, 15), (2, 16, 2, 32), (1, 8, 1, 8)] {
        let mask =
            move |idx: usize| if dropout_keeps(3, 7, salt, idx as u32, p) { 1.0 / (1.0 - p as f64) } else { 0.0 };
        let causal = (0..batch * heads).map(|_| t * (t + 1) / 2).sum::<usize>();
        let dropped = (0..batch * heads * t * t).filter(|&k| k % t <= (k / t) % t && mask(k) == 0.0).count();
        assert!(dropped > 0 && dropped < causal, "the mask drops {dropped} of {causal}: the test would prove nothing");
        check(
            &format!("attention dropout b{batch} t{t} h{heads} c{c}"),
            &[(&[batch * t, 3 * c], noise(12, batch * t * 3 * c).iter().map(|v| v * 2.0).collect())],
            &move |g, v| g.causal_attention_dropout(v[0], batch, t, heads, p, salt),
            &move |x| reference::causal_attention_masked(&x[0], batch, t, heads, c, &mask),
            1e-4,
        );
    }
}

#[test]
fn dropout_masks_forward_and_backward_alike_and_follow_the_step() {
    let gpu = gpu();
    let n = 4000;
    let x: Vec<f32> = noise(18, n).iter().map(|v| v + 2.0).collect();
    let r = noise(19, n);
    let (xt, gx) = (Tensor::from_slice(&gpu, &[n], &x).unwrap(), Tensor::zeros(&gpu, &[n]).unwrap());
    let mut g = Graph::new(&gpu, Mode::Train).unwrap();
    let xv = g.param(&xt, &gx).unwrap();
    let y = g.dropout(xv, 0.3, 5).unwrap();
    let yt = g.value(y).clone();
    g.backward_with(y, &Tensor::from_slice(&gpu, &[n], &r).unwrap()).unwrap();
    let plan = g.build().unwrap();
    let run = |step: u64| {
        plan.set_params(&step_values(step, 42)).unwrap();
        plan.run();
        (yt.read_blocking().unwrap(), gx.read_blocking().unwrap())
    };
    let (y1, g1) = run(1);
    let dropped = y1.iter().filter(|&&v| v == 0.0).count() as f64 / n as f64;
    assert!((dropped - 0.3).abs() < 0.05, "dropped fraction {dropped}");
    for i in 0..n {
        let kept = y1[i] != 0.0;
        if kept {
            assert!((y1[i] - x[i] / 0.7).abs() <= 1e-6 * x[i].abs(), "kept values are scaled by 1/(1 − p)");
        }
        let want = if kept { r[i] / 0.7 } else { 0.0 };
        assert!((g1[i] - want).abs() <= 1e-6, "backward uses the forward's mask at {i}");
    }
    assert_eq!(run(1), (y1.clone(), g1), "same step, same mask");
    assert_ne!(run(2).0, y1, "another step, another mask");

    let mut eval = Graph::new(&gpu, Mode::Eval).unwrap();
    let xv = eval.param(&xt, &gx).unwrap();
    assert_eq!(eval.dropout(xv, 0.3, 5).unwrap(), xv, "dropout is the identity in eval graphs");
}

#[test]
fn bad_graphs_are_errors() {
    let gpu = gpu();
    let t = |shape: &[usize]| Tensor::zeros(&gpu, shape).unwrap();
    let mut g = Graph::new(&gpu, Mode::Train).unwrap();
    let a = g.param(&t(&[3, 4]), &t(&[3, 4])).unwrap();
    let b = g.param(&t(&[5, 4]), &t(&[5, 4])).unwrap();
    assert!(matches!(g.matmul(a, b, Trans::N, Trans::N), Err(Error::Shape { .. })));
    assert!(matches!(g.add(a, b), Err(Error::Shape { .. })));
    assert!(matches!(g.causal_attention(a, 1, 3, 1), Err(Error::Shape { .. })));
    assert!(matches!(g.dropout(a, 1.5, 0), Err(Error::InvalidArgument { .. })));
    assert!(matches!(g.param(&t(&[3, 4]), &t(&[4, 3])), Err(Error::Shape { .. })));
    let y = g.matmul(a, b, Trans::N, Trans::T).unwrap();
    assert!(matches!(g.backward(y), Err(Error::Shape { .. })), "backward needs a scalar loss");
    let tokens = Tokens::new(&gpu, 1, 3, 5).unwrap();
    assert!(matches!(tokens.write(&[0, 1, 9], &[0, 1, 2]), Err(Error::InvalidArgument { .. })), "ids < vocab");
    assert!(matches!(tokens.write(&[0, 1], &[0, 1]), Err(Error::Shape { .. })));
    let mut twice = Graph::new(&gpu, Mode::Train).unwrap();
    let p = twice.param(&t(&[1]), &t(&[1])).unwrap();
    let s = twice.add(p, p).unwrap();
    twice.backward(s).unwrap();
    assert!(matches!(twice.backward(s), Err(Error::InvalidArgument { .. })), "backward is recorded once");
    let mut e = Graph::new(&gpu, Mode::Eval).unwrap();
    let p = e.param(&t(&[1]), &t(&[1])).unwrap();
    let s = e.add(p, p).unwrap();
    assert!(e.backward(s).is_err(), "an eval graph has no backward");
}
