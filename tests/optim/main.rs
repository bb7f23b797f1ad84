//! The optimizer conformance matrix: every elementwise optimizer against its f64 reference for 30 steps
//! (schedules, momentum warmup, clipping, a skipped NaN step), save/load round trip, bit-exact resume,
//! one submit per step, and bad input.
#![allow(clippy::needless_range_loop)] // the references index like the equations they transcribe

#[allow(dead_code)]
#[path = "../linalg/cpu.rs"]
mod cpu;
mod embed;
mod fismo;
mod kron;
mod kron_family;
mod psgd;
mod reference;
mod replay;
mod sfplus;
mod whiten;

pub use cpu::{gpu, noise};
use reference::*;
use wgoptim::linalg::{NsCoefficients, NsNormalization, PolarAlgorithm, PolarConfig};
use wgoptim::optim::*;
use wgoptim::{Error, Gpu, Tensor};

/// Shapes: a hidden matrix, a vector crossing a chunk boundary (4096), a scalar, a 3-D tensor.
/// Two same-shape 4-aligned matrices form one batched polar stack for Muon.
const SPECS: &[(&str, &[usize])] = &[
    // More than 64 rows and 1,024 values: NorMuon and AdaMuon split such matrices over several workgroups.
    ("h.weight", &[70, 17]),
    ("emb", &[5000]),
    ("scale", &[1]),
    ("conv", &[3, 1, 2]),
    ("h2.weight", &[9, 4]),
    ("q.weight", &[4, 6]),
    ("k.weight", &[4, 6]),
];

struct Run {
    store: ParamStore,
    opt: Optimizer,
}

fn build(groups: &[(Matcher, Group)], clip: Option<f32>) -> Result<Run, Error> {
    let gpu = gpu();
    let store = ParamStore::new(&gpu, SPECS)?;
    for (i, (name, shape)) in SPECS.iter().enumerate() {
        store.param(name)?.write(&noise(100 + i as u64, shape.iter().product()))?;
    }
    let mut b = OptimizerBuilder::new(&gpu);
    b.params_from(&store)?;
    for (m, g) in groups {
        b.rule(m.clone(), g.clone());
    }
    if let Some(c) = clip {
        b.clip_grad_norm(c);
    }
    Ok(Run { opt: b.build()?, store })
}

fn grads_at(step: u32, nan_at: Option<u32>) -> Vec<Vec<f32>> {
    SPECS
        .iter()
        .enumerate()
        .map(|(i, (_, shape))| {
            let mut g: Vec<f32> =
                noise(1000 * step as u64 + i as u64, shape.iter().product()).iter().map(|v| v * 0.5).collect();
            if nan_at == Some(step) && i == 1 {
                g[4095] = f32::NAN;
            }
            g
        })
        .collect()
}

fn write_grads(run: &Run, grads: &[Vec<f32>]) {
    for ((name, _), g) in SPECS.iter().zip(grads) {
        run.store.grad(name).unwrap().write(g).unwrap();
    }
}

fn read_params(run: &Run) -> Vec<Vec<f32>> {
    SPECS.iter().map(|(n, _)| run.store.param(n).unwrap().read_blocking().unwrap()).collect()
}

/// Run `steps` on the GPU and the reference; compare every parameter (relative Frobenius error over all).
fn conformance(groups: &[(Matcher, Group)], clip: Option<f32>, steps: u32, nan_at: Option<u32>) {
    let run = build(groups, clip).unwrap();
    let mut ref_groups = RefGroup::all(run.opt.groups());
    let init = read_params(&run);
    let mut ref_params: Vec<(usize, RefParam)> =
        SPECS.iter().zip(&init).map(|((n, s), p)| (run.opt.group_of(n).unwrap(), RefParam::new(p).shaped(s))).collect();
    let mut skipped = 0;
    for step in 1..=steps {
        let g = grads_at(step, nan_at);
        write_grads(&run, &g);
        let state_before: Option<Vec<f32>> = (nan_at == Some(step)).then(|| {
            let names = run.opt.state_names("emb").unwrap();
            names.iter().flat_map(|s| run.opt.state("emb", s).unwrap().read_blocking().unwrap()).collect()
        });
        let params_before = state_before.as_ref().map(|_| read_params(&run));
        run.opt.step().unwrap();
        let g64: Vec<Vec<f64>> = g.iter().map(|v| v.iter().map(|&x| x as f64).collect()).collect();
        if !engine_step(&mut ref_groups, &mut ref_params, &g64, clip) {
            skipped += 1;
            // The skipped step left parameters and state bit-identical.
            assert_eq!(read_params(&run), params_before.unwrap(), "skipped step changed parameters");
            let names = run.opt.state_names("emb").unwrap();
            let after: Vec<f32> =
                names.iter().flat_map(|s| run.opt.state("emb", s).unwrap().read_blocking().unwrap()).collect();
            assert_eq!(after, state_before.unwrap(), "skipped step changed state");
        }
    }
    let got: Vec<f64> = read_params(&run).into_iter().flatten().map(|v| v as f64).collect();
    let want: Vec<f64> = ref_params.iter().flat_map(|(_, x)| x.p.clone()).collect();
    let init: Vec<f64> = init.into_iter().flatten().map(|v| v as f64).collect();
    let diff = got.iter().zip(&want).map(|(a, b)| (a - b).powi(2)).sum::<f64>().sqrt();
    let moved = want.iter().zip(&init).map(|(a, b)| (a - b).powi(2)).sum::<f64>().sqrt();
    let norm = want.iter().map(|v| v * v).sum::<f64>().sqrt();
    assert!(
        moved > 1e-5 * norm,
        "{groups:?}: the reference barely moved ({}): the test would prove nothing",
        moved / norm
    );
    assert!(diff / norm <= 1e-5, "{groups:?}: relative error {} after {steps} steps", diff / norm);
    // The displacement from the initial point must match too (a strong check when steps are small).
    assert!(diff / moved <= 1e-2, "{groups:?}: displacement error {} after {steps} steps", diff / moved);
    let report = pollster::block_on(run.opt.report()).unwrap();
    assert_eq!(report.skipped, skipped);
    assert_eq!(report.attempted, steps as u64);
    assert!(report.applied.iter().all(|&a| a == (steps - skipped as u32) as u64));
}

fn matrices() -> Matcher {
    Matcher::MatricesExcept(vec!["emb*".into()])
}

fn cosine() -> Schedule {
    Schedule::WarmupCosine { warmup: 5, total: 25, min_ratio: 0.1 }
}

fn every_config() -> Vec<OptimizerConfig> {
    vec![
        OptimizerConfig::Sgd(SgdConfig { lr: 0.05, ..Default::default() }),
        OptimizerConfig::Sgd(SgdConfig {
            lr: 0.05,
            momentum: 0.9,
            dampening: 0.1,
            weight_decay: 0.01,
            ..Default::default()
        }),
        OptimizerConfig::Sgd(SgdConfig {
            lr: 0.05,
            momentum: 0.9,
            nesterov: true,
            maximize: true,
            ..Default::default()
        }),
        OptimizerConfig::AdamW(AdamWConfig::default()),
        OptimizerConfig::AdamW(AdamWConfig { lr: 3e-3, amsgrad: true, weight_decay: 0.1, ..Default::default() }),
        OptimizerConfig::AdamW(AdamWConfig {
            maximize: true,
            beta1: 0.8,
            beta2: 0.95,
            eps: 1e-6,
            ..Default::default()
        }),
        OptimizerConfig::Lion(LionConfig { lr: 1e-3, weight_decay: 0.1, ..Default::default() }),
        OptimizerConfig::Signum(SignumConfig { lr: 1e-3, ..Default::default() }),
        OptimizerConfig::Signum(SignumConfig { lr: 1e-3, lookahead: 0.5, weight_decay: 0.1, ..Default::default() }),
        // Compositions no named optimizer covers: Adam with Nesterov's lookahead and L2 decay, RMSprop with amsgrad
        // (no momentum), Nesterov heavy ball normalized by its sign with decoupled decay, Lion with maximize.
        OptimizerConfig::Composed(ComposedConfig {
            lr: 2e-3,
            weight_decay: DecayStage::Coupled(0.05),
            momentum: MomentumStage::Ema { beta: 0.9 },
            lookahead: LookaheadStage::Mix { weight: 0.1 },
            normalize: NormalizeStage::Adam { beta2: 0.99, eps: 1e-7, amsgrad: false },
            maximize: false,
        }),
        OptimizerConfig::Composed(ComposedConfig {
            lr: 1e-3,
            normalize: NormalizeStage::Adam { beta2: 0.95, eps: 1e-6, amsgrad: true },
            ..Default::default()
        }),
        OptimizerConfig::Composed(ComposedConfig {
            lr: 1e-3,
            weight_decay: DecayStage::Decoupled(0.1),
            momentum: MomentumStage::HeavyBall { beta: 0.8, dampening: 0.0, nesterov: true },
            normalize: NormalizeStage::Sign,
            ..Default::default()
        }),
        OptimizerConfig::Composed(ComposedConfig {
            lr: 1e-3,
            momentum: MomentumStage::Ema { beta: 0.99 },
            lookahead: LookaheadStage::Lion { beta: 0.9 },
            normalize: NormalizeStage::Sign,
            maximize: true,
            ..Default::default()
        }),
        OptimizerConfig::ScheduleFreeSgd(ScheduleFreeSgdConfig { lr: 0.05, weight_decay: 0.01, ..Default::default() }),
        OptimizerConfig::ScheduleFreeSgd(ScheduleFreeSgdConfig {
            lr: 0.05,
            r: 1.0,
            weight_lr_power: 1.0,
            ..Default::default()
        }),
        OptimizerConfig::ScheduleFreeAdamW(ScheduleFreeAdamWConfig {
            lr: 3e-3,
            weight_decay: 0.05,
            ..Default::default()
        }),
        OptimizerConfig::ScheduleFreeAdamW(ScheduleFreeAdamWConfig {
            lr: 3e-3,
            inner_momentum: 0.5,
            r: 0.5,
            ..Default::default()
        }),
        OptimizerConfig::Ona(OnaConfig { lr: 0.01, weight_decay: 0.05, ..Default::default() }),
        OptimizerConfig::Ona(OnaConfig { lr: 2e-3, adam: true, beta: 0.9, ..Default::default() }),
        OptimizerConfig::Adafactor(AdafactorConfig::default()),
        OptimizerConfig::Adafactor(AdafactorConfig {
            lr: Some(0.01),
            relative_step: false,
            scale_parameter: false,
            beta1: Some(0.9),
            weight_decay: 0.01,
            ..Default::default()
        }),
        OptimizerConfig::Adafactor(AdafactorConfig {
            warmup_init: true,
            clip_threshold: 0.5,
            beta1: Some(0.8),
            ..Default::default()
        }),
        OptimizerConfig::Muon(MuonConfig::default()),
        OptimizerConfig::Muon(MuonConfig {
            nesterov: false,
            momentum_kind: MomentumKind::Sum,
            adjust_lr: AdjustLr::Moonlight,
            weight_decay: 0.1,
            lr: 0.01,
            polar: PolarConfig {
                coefficients: NsCoefficients::PolarExpressModded,
                normalization: NsNormalization::Modded,
                ..Default::default()
            },
            ..Default::default()
        }),
        OptimizerConfig::Muon(MuonConfig {
            momentum_placement: MomentumPlacement::Outside,
            adjust_lr: AdjustLr::TorchOriginal,
            polar: PolarConfig {
                coefficients: NsCoefficients::You,
                normalization: NsNormalization::Optax,
                ..Default::default()
            },
            ..Default::default()
        }),
        OptimizerConfig::AdaMuon(AdaMuonConfig::default()),
        OptimizerConfig::AdaMuon(AdaMuonConfig { nesterov: false, weight_decay: 0.0, lr: 0.01, ..Default::default() }),
        OptimizerConfig::AdaMuon(AdaMuonConfig {
            variant: AdaMuonVariant::Simplified,
            momentum: 0.9,
            lr: 3e-3,
            polar: PolarConfig {
                coefficients: NsCoefficients::You,
                normalization: NsNormalization::Optax,
                ..Default::default()
            },
            ..Default::default()
        }),
        OptimizerConfig::SfNorMuon(SfNorMuonConfig::default()),
        OptimizerConfig::SfNorMuon(SfNorMuonConfig { weight_decay: 0.1, beta1: 0.8, lr: 0.01, ..Default::default() }),
        OptimizerConfig::NorMuon(NorMuonConfig::default()),
        OptimizerConfig::NorMuon(NorMuonConfig {
            scaling: NorMuonScaling::PaperRms02,
            weight_decay: 0.1,
            lr: 0.01,
            ..Default::default()
        }),
        OptimizerConfig::NorMuon(NorMuonConfig {
            nesterov: false,
            beta2: 0.9,
            polar: PolarConfig {
                coefficients: NsCoefficients::PolarExpressModded,
                normalization: NsNormalization::Modded,
                ..Default::default()
            },
            ..Default::default()
        }),
        OptimizerConfig::Muon(MuonConfig {
            adjust_lr: AdjustLr::SpectralNorm,
            polar: PolarConfig {
                coefficients: NsCoefficients::PolarExpressDao,
                algorithm: PolarAlgorithm::GramNewtonSchulz { restarts: vec![2] },
                ..Default::default()
            },
            ..Default::default()
        }),
    ]
}

#[test]
fn every_optimizer_matches_its_reference() {
    for cfg in every_config() {
        // Matrices get the optimizer under test with a warmup-cosine schedule; the rest AdamW, constant lr.
        let groups = [
            (matrices(), Group::new(cfg.clone()).schedule(cosine())),
            (Matcher::All, Group::new(OptimizerConfig::AdamW(AdamWConfig { lr: 2e-3, ..Default::default() }))),
        ];
        conformance(&groups, None, 30, None);
        // Everything under test, WSD schedule, momentum warmup, clipping, and a NaN step at 10.
        let wsd = Schedule::WarmupStableDecay { warmup: 3, total: 30, decay: 10, min_ratio: 0.0 };
        let momentum = MomentumSchedule { start: 0.5, warmup: 8, cooldown: 5, total: 30 };
        let no_momentum = matches!(cfg, OptimizerConfig::Sgd(SgdConfig { momentum, .. }) if momentum == 0.0)
            || matches!(cfg, OptimizerConfig::Adafactor(AdafactorConfig { beta1: None, .. }))
            || matches!(cfg, OptimizerConfig::Composed(ComposedConfig { momentum: MomentumStage::None, .. }))
            || cfg.is_schedule_free();
        let group = Group::new(cfg.clone()).schedule(wsd);
        if no_momentum {
            assert!(
                build(&[(Matcher::All, group.clone().momentum(momentum))], None).is_err(),
                "momentum schedule without momentum"
            );
        }
        let group = if no_momentum { group } else { group.momentum(momentum) };
        // Muon takes matrices only: the rest goes to AdamW.
        let one = if cfg.name().contains("muon") {
            vec![(matrices(), group), (Matcher::All, Group::new(OptimizerConfig::AdamW(AdamWConfig::default())))]
        } else {
            vec![(Matcher::All, group)]
        };
        conformance(&one, Some(2.0), 30, Some(10));
    }
}

#[test]
fn one_submit_per_step_and_one_dispatch_per_bucket() {
    let gpu = Gpu::new_blocking().unwrap(); // own device: the shared one counts other tests' submits
                                            // Sizes that are multiples of 4: each bucket is exactly one vec4 dispatch per stage.
    let store =
        ParamStore::new(&gpu, &[("a.weight", &[8, 4]), ("b", &[16]), ("c.weight", &[12, 3]), ("d", &[4, 2, 2])])
            .unwrap();
    let mut b = OptimizerBuilder::new(&gpu);
    b.params_from(&store).unwrap();
    b.rule(matrices(), Group::new(OptimizerConfig::AdamW(AdamWConfig::default())));
    b.rule(Matcher::All, Group::new(OptimizerConfig::Lion(LionConfig::default())));
    let opt = b.build().unwrap();
    assert_eq!(opt.bucket_count(), 2, "4 tensors in two groups share two buckets");
    assert_eq!(opt.plan().dispatch_count(), 2 + 1 + 2, "stats per bucket, prologue, update per bucket");
    let before = gpu.counters().submits();
    for _ in 0..3 {
        opt.step().unwrap();
    }
    assert_eq!(gpu.counters().submits() - before, 3);
    // Sizes that are not multiples of 4 add one scalar-tail dispatch per bucket and stage.
    let odd = ParamStore::new(&gpu, SPECS).unwrap();
    let mut b = OptimizerBuilder::new(&gpu);
    b.params_from(&odd).unwrap().rule(Matcher::All, Group::new(OptimizerConfig::AdamW(AdamWConfig::default())));
    assert_eq!(b.build().unwrap().plan().dispatch_count(), 2 + 1 + 2);
}

fn adamw_groups() -> Vec<(Matcher, Group)> {
    vec![
        (
            matrices(),
            Group::new(OptimizerConfig::AdamW(AdamWConfig { amsgrad: true, ..Default::default() })).schedule(cosine()),
        ),
        (Matcher::All, Group::new(OptimizerConfig::Sgd(SgdConfig { lr: 0.01, momentum: 0.9, ..Default::default() }))),
    ]
}

#[test]
fn resume_from_checkpoint_is_bit_exact() {
    let straight = build(&adamw_groups(), Some(1.0)).unwrap();
    for step in 1..=25 {
        write_grads(&straight, &grads_at(step, Some(7)));
        straight.opt.step().unwrap();
    }
    let first = build(&adamw_groups(), Some(1.0)).unwrap();
    for step in 1..=12 {
        write_grads(&first, &grads_at(step, Some(7)));
        first.opt.step().unwrap();
    }
    let bytes = pollster::block_on(first.opt.save()).unwrap();
    let resumed = build(&adamw_groups(), Some(1.0)).unwrap();
    resumed.opt.load(&bytes).unwrap();
    assert_eq!(read_params(&resumed), read_params(&first), "load restores parameters");
    for step in 13..=25 {
        write_grads(&resumed, &grads_at(step, Some(7)));
        resumed.opt.step().unwrap();
    }
    let (a, b) = (read_params(&straight), read_params(&resumed));
    for (x, y) in a.iter().zip(&b) {
        assert!(
            x.iter().zip(y).all(|(p, q)| p.to_bits() == q.to_bits()),
            "resumed run differs from the uninterrupted one"
        );
    }
    let (ra, rb) =
        (pollster::block_on(straight.opt.report()).unwrap(), pollster::block_on(resumed.opt.report()).unwrap());
    assert_eq!(ra, rb);
    assert_eq!(ra.skipped, 1);
}

#[test]
fn bad_checkpoints_are_refused_and_lose_nothing() {
    let run = build(&adamw_groups(), None).unwrap();
    write_grads(&run, &grads_at(1, None));
    run.opt.step().unwrap();
    let bytes = pollster::block_on(run.opt.save()).unwrap();
    let before = read_params(&run);
    // Truncated and garbage files.
    assert!(matches!(run.opt.load(&bytes[..bytes.len() / 2]), Err(Error::Checkpoint(_))));
    assert!(matches!(run.opt.load(b"not a checkpoint"), Err(Error::Checkpoint(_))));
    // A different configuration.
    let mut other = adamw_groups();
    other[1].1 = Group::new(OptimizerConfig::Sgd(SgdConfig { lr: 0.02, momentum: 0.9, ..Default::default() }));
    let other_run = build(&other, None).unwrap();
    let e = other_run.opt.load(&bytes).unwrap_err();
    assert!(e.to_string().contains("differs"), "{e}");
    // Different routing (different parameter sets per group).
    let rerouted = build(&[(Matcher::All, adamw_groups()[0].1.clone())], None).unwrap();
    assert!(matches!(rerouted.opt.load(&bytes), Err(Error::Checkpoint(_))));
    assert_eq!(read_params(&run), before, "a refused load changed nothing");
}

#[test]
fn bad_configs_and_params_are_rejected() {
    let gpu = gpu();
    let bad_cfgs = [
        OptimizerConfig::AdamW(AdamWConfig { lr: -1.0, ..Default::default() }),
        OptimizerConfig::AdamW(AdamWConfig { beta2: 1.0, ..Default::default() }),
        OptimizerConfig::AdamW(AdamWConfig { eps: 0.0, ..Default::default() }),
        OptimizerConfig::Sgd(SgdConfig { momentum: 0.9, dampening: 0.5, nesterov: true, ..Default::default() }),
        OptimizerConfig::Lion(LionConfig { lr: f32::NAN, ..Default::default() }),
        OptimizerConfig::Signum(SignumConfig { lookahead: 2.0, ..Default::default() }),
    ];
    for cfg in bad_cfgs {
        let e = build(&[(Matcher::All, Group::new(cfg.clone()))], None).err().expect("must be rejected");
        assert!(matches!(e, Error::InvalidArgument { .. }), "{cfg:?}: {e}");
    }
    // Bad stages name the stage's field.
    let composed = |c: ComposedConfig| OptimizerConfig::Composed(ComposedConfig { lr: 1e-3, ..c });
    for (cfg, field) in [
        (composed(ComposedConfig { weight_decay: DecayStage::Coupled(-0.1), ..Default::default() }), "weight_decay"),
        (
            composed(ComposedConfig { momentum: MomentumStage::Ema { beta: 1.0 }, ..Default::default() }),
            "momentum.beta",
        ),
        (
            composed(ComposedConfig {
                momentum: MomentumStage::HeavyBall { beta: 0.9, dampening: 0.1, nesterov: true },
                ..Default::default()
            }),
            "momentum.nesterov",
        ),
        (
            composed(ComposedConfig { lookahead: LookaheadStage::Mix { weight: 0.5 }, ..Default::default() }),
            "lookahead",
        ),
        (
            composed(ComposedConfig {
                normalize: NormalizeStage::Adam { beta2: 0.999, eps: 0.0, amsgrad: false },
                ..Default::default()
            }),
            "normalize.eps",
        ),
    ] {
        let e = build(&[(Matcher::All, Group::new(cfg.clone()))], None).err().expect("must be rejected");
        assert!(matches!(&e, Error::InvalidArgument { name, .. } if *name == field), "{cfg:?}: {e}");
    }
    // The JSON form names stages by their snake_case variants.
    let json = r#"{"lr": 0.01, "weight_decay": {"decoupled": 0.1}, "momentum": {"ema": {"beta": 0.9}},
                   "normalize": {"adam": {"beta2": 0.99, "eps": 1e-8, "amsgrad": false}}}"#;
    assert_eq!(
        OptimizerConfig::from_json("composed", json).unwrap(),
        OptimizerConfig::Composed(ComposedConfig {
            lr: 0.01,
            ..AdamWConfig { beta2: 0.99, weight_decay: 0.1, ..Default::default() }.into()
        })
    );
    let e = build(
        &[(
            Matcher::All,
            Group::new(OptimizerConfig::AdamW(AdamWConfig::default())).schedule(Schedule::WarmupCosine {
                warmup: 9,
                total: 3,
                min_ratio: 0.0,
            }),
        )],
        None,
    );
    assert!(e.is_err());
    // No rule takes the vector parameters: the error names one.
    let e = build(&[(matrices(), Group::new(OptimizerConfig::AdamW(AdamWConfig::default())))], None).err().unwrap();
    assert!(e.to_string().contains("emb"), "{e}");
    assert!(build(&[(Matcher::All, Group::new(OptimizerConfig::AdamW(AdamWConfig::default())))], Some(-1.0)).is_err());
    // JSON configs: unknown fields and names.
    assert!(OptimizerConfig::from_json("adamw", r#"{"lr": 0.01, "betas2": 0.9}"#).is_err());
    assert!(OptimizerConfig::from_json("adamz", "{}").is_err());
    assert!(OptimizerConfig::from_json("adamw", r#"{"beta1": 1.5}"#).is_err());
    assert_eq!(OptimizerConfig::from_json("lion", r#"{"lr": 0.5}"#).unwrap().lr(), 0.5);
    // Parameters: shape mismatch, duplicates, zero size, overlap, grad in the param buffer.
    let mut b = OptimizerBuilder::new(&gpu);
    let p = Tensor::zeros(&gpu, &[4, 4]).unwrap();
    let g = Tensor::zeros(&gpu, &[4, 4]).unwrap();
    assert!(matches!(b.param("a", &p, &Tensor::zeros(&gpu, &[16]).unwrap()), Err(Error::Shape { .. })));
    b.param("a", &p, &g).unwrap();
    assert!(b.param("a", &Tensor::zeros(&gpu, &[2]).unwrap(), &Tensor::zeros(&gpu, &[2]).unwrap()).is_err());
    assert!(b.param("z", &Tensor::zeros(&gpu, &[0]).unwrap(), &Tensor::zeros(&gpu, &[0]).unwrap()).is_err());
    let view = Tensor::from_buffer(&gpu, p.buffer().clone(), 8, &[4]).unwrap();
    assert!(b.param("overlap", &view, &Tensor::zeros(&gpu, &[4]).unwrap()).is_err());
    let same = Tensor::from_buffer(&gpu, g.buffer().clone(), 0, &[2]).unwrap();
    assert!(b.param("self", &same, &Tensor::from_buffer(&gpu, g.buffer().clone(), 2, &[2]).unwrap()).is_err());
    assert!(ParamStore::new(&gpu, &[("x", &[2]), ("x", &[3])]).is_err());
}

#[test]
fn nonfinite_policy_fail_reports_an_error() {
    let gpu = gpu();
    let store = ParamStore::new(&gpu, &[("w", &[8])]).unwrap();
    let mut b = OptimizerBuilder::new(&gpu);
    b.params_from(&store).unwrap().rule(Matcher::All, Group::new(OptimizerConfig::AdamW(AdamWConfig::default())));
    b.on_nonfinite(NonFinitePolicy::Fail);
    let opt = b.build().unwrap();
    store.grad("w").unwrap().write(&[1.0, 2.0, f32::INFINITY, 0.0, 0.0, 0.0, 0.0, 0.0]).unwrap();
    opt.step().unwrap();
    assert!(matches!(pollster::block_on(opt.report()), Err(Error::NonFiniteGradient { skipped: 1 })));
    assert_eq!(store.param("w").unwrap().read_blocking().unwrap(), vec![0.0; 8]);
}

fn sf_groups() -> Vec<(Matcher, Group)> {
    vec![
        (
            matrices(),
            Group::new(OptimizerConfig::ScheduleFreeAdamW(ScheduleFreeAdamWConfig {
                lr: 3e-3,
                weight_decay: 0.01,
                ..Default::default()
            }))
            .schedule(Schedule::Warmup { warmup: 5 }),
        ),
        (
            Matcher::All,
            Group::new(OptimizerConfig::ScheduleFreeSgd(ScheduleFreeSgdConfig { lr: 0.05, ..Default::default() })),
        ),
    ]
}

fn rel(a: &[f32], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (*x as f64 - y).powi(2)).sum::<f64>().sqrt()
        / b.iter().map(|y| y * y).sum::<f64>().sqrt().max(1e-30)
}

#[test]
fn schedule_free_eval_point_and_modes() {
    let run = build(&sf_groups(), None).unwrap();
    let mut ref_groups = RefGroup::all(run.opt.groups());
    let init = read_params(&run);
    let mut refs: Vec<(usize, RefParam)> =
        SPECS.iter().zip(&init).map(|((n, _), p)| (run.opt.group_of(n).unwrap(), RefParam::new(p))).collect();
    for step in 1..=20 {
        let g = grads_at(step, None);
        write_grads(&run, &g);
        run.opt.step().unwrap();
        let g64: Vec<Vec<f64>> = g.iter().map(|v| v.iter().map(|&x| x as f64).collect()).collect();
        engine_step(&mut ref_groups, &mut refs, &g64, None);
    }
    // The evaluation point without a mode switch is the reference's x; the parameters still hold y.
    let y = read_params(&run);
    let points = pollster::block_on(run.opt.eval_params()).unwrap();
    let names: Vec<&str> = points.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        SPECS.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
        "parameters are listed in the order they were added"
    );
    for ((name, x), (_, r)) in points.iter().zip(&refs) {
        assert!(rel(x, &r.s[1]) < 1e-5, "{name}: eval point {}", rel(x, &r.s[1]));
    }
    assert_eq!(read_params(&run), y, "eval_params must not touch the parameters");
    // eval(): parameters become x; stepping is refused; train() brings y back (up to rounding).
    run.opt.eval().unwrap();
    assert!(run.opt.is_eval());
    for (p, (_, r)) in read_params(&run).iter().zip(&refs) {
        assert!(rel(p, &r.s[1]) < 1e-5);
    }
    assert!(run.opt.step().is_err(), "step in eval mode must be refused");
    let bytes = pollster::block_on(run.opt.save()).unwrap();
    run.opt.train().unwrap();
    for (p, (_, r)) in read_params(&run).iter().zip(&refs) {
        assert!(rel(p, &r.p) < 1e-5);
    }
    // A checkpoint taken in eval mode restores eval mode; training on from it matches this run bit for bit.
    let resumed = build(&sf_groups(), None).unwrap();
    resumed.opt.load(&bytes).unwrap();
    assert!(resumed.opt.is_eval());
    resumed.opt.train().unwrap();
    for step in 21..=25 {
        for r in [&run, &resumed] {
            write_grads(r, &grads_at(step, None));
            r.opt.step().unwrap();
        }
    }
    assert_eq!(read_params(&run), read_params(&resumed));
}

#[test]
fn polyak_clamp_step_size_is_shared_and_skips_bad_losses() {
    let gpu = gpu();
    let groups = [
        (matrices(), Group::new(OptimizerConfig::AdamW(AdamWConfig { lr: 1e-3, ..Default::default() }))),
        (Matcher::All, Group::new(OptimizerConfig::Sgd(SgdConfig { lr: 0.01, momentum: 0.9, ..Default::default() }))),
    ];
    let rule = StepSizeRule::PolyakClamp { beta: 0.8, min: 0.1, max: 10.0 };
    let loss = Tensor::zeros(&gpu, &[1]).unwrap();
    let store = ParamStore::new(&gpu, SPECS).unwrap();
    for (i, (name, shape)) in SPECS.iter().enumerate() {
        store.param(name).unwrap().write(&noise(100 + i as u64, shape.iter().product())).unwrap();
    }
    let mut b = OptimizerBuilder::new(&gpu);
    b.params_from(&store).unwrap().step_size(rule, &loss);
    for (m, g) in &groups {
        b.rule(m.clone(), g.clone());
    }
    let opt = b.build().unwrap();
    let run = Run { store, opt };
    let mut ref_groups = RefGroup::all(run.opt.groups());
    let mut refs: Vec<(usize, RefParam)> = SPECS
        .iter()
        .zip(read_params(&run))
        .map(|((n, _), p)| (run.opt.group_of(n).unwrap(), RefParam::new(&p)))
        .collect();
    let mut pr = RefPolyak { beta: 0.8, min: 0.1, max: 10.0, loss_ema: 0.0, norm_ema: 0.0 };
    for step in 1..=25u32 {
        // Losses that push the ratio through both clamps and a NaN loss at step 9.
        let l = if step == 9 {
            f32::NAN
        } else if step < 6 {
            1e-4
        } else {
            40.0 + (step as f32).sin()
        };
        loss.write(&[l]).unwrap();
        let g = grads_at(step, None);
        write_grads(&run, &g);
        run.opt.step().unwrap();
        let g64: Vec<Vec<f64>> = g.iter().map(|v| v.iter().map(|&x| x as f64).collect()).collect();
        engine_step_with(&mut ref_groups, &mut refs, &g64, None, Some((&mut pr, l as f64)));
        let rep = pollster::block_on(run.opt.report()).unwrap();
        let want = (pr.loss_ema / pr.norm_ema).clamp(0.1, 10.0);
        assert!(
            (rep.step_size_ratio as f64 - want).abs() <= 1e-5 * want,
            "step {step}: ratio {} vs {want}",
            rep.step_size_ratio
        );
    }
    let rep = pollster::block_on(run.opt.report()).unwrap();
    assert_eq!(rep.skipped, 1, "the NaN loss skipped its step");
    let got: Vec<f64> = read_params(&run).into_iter().flatten().map(|v| v as f64).collect();
    let want: Vec<f64> = refs.iter().flat_map(|(_, x)| x.p.clone()).collect();
    let err = got.iter().zip(&want).map(|(a, b)| (a - b).powi(2)).sum::<f64>().sqrt()
        / want.iter().map(|v| v * v).sum::<f64>().sqrt();
    assert!(err < 1e-5, "polyak run: {err}");
    assert!(
        run.opt.load(&pollster::block_on(build(&groups, None).unwrap().opt.save()).unwrap()).is_err(),
        "a checkpoint without the rule is refused"
    );
}

#[test]
fn muon_takes_convolutions_and_batched_matrices() {
    let gpu = gpu();
    let specs: &[(&str, &[usize])] =
        &[("conv.weight", &[4, 2, 3, 2]), ("stack", &[2, 3, 5]), ("w", &[5, 6]), ("bias", &[5])];
    let muon = |placement| MuonConfig {
        momentum_placement: placement,
        adjust_lr: AdjustLr::TorchOriginal,
        ..Default::default()
    };
    let configs = [
        OptimizerConfig::Muon(muon(MomentumPlacement::Inside)),
        OptimizerConfig::Muon(muon(MomentumPlacement::Outside)),
        // NorMuon's statistics per kernel row over kw, its norm per (out, in) kernel (§3.1 gotcha 3).
        OptimizerConfig::NorMuon(NorMuonConfig { beta2: 0.9, ..Default::default() }),
        OptimizerConfig::NorMuon(NorMuonConfig { scaling: NorMuonScaling::PaperRms02, ..Default::default() }),
        // SF-NorMuon: NorMuon's groups (paper scaling) inside the Schedule-Free sequences.
        OptimizerConfig::SfNorMuon(SfNorMuonConfig { weight_decay: 0.1, beta2: 0.9, ..Default::default() }),
    ];
    for cfg in configs {
        let store = ParamStore::new(&gpu, specs).unwrap();
        for (i, (name, shape)) in specs.iter().enumerate() {
            store.param(name).unwrap().write(&noise(7 + i as u64, shape.iter().product())).unwrap();
        }
        let mut b = OptimizerBuilder::new(&gpu);
        b.params_from(&store).unwrap();
        b.rule(Matcher::Rank(1), Group::new(OptimizerConfig::AdamW(AdamWConfig::default())));
        b.rule(Matcher::All, Group::new(cfg.clone()));
        let opt = b.build().unwrap();
        let mut groups = RefGroup::all(opt.groups());
        let init: Vec<Vec<f32>> = specs.iter().map(|(n, _)| store.param(n).unwrap().read_blocking().unwrap()).collect();
        let mut refs: Vec<(usize, RefParam)> =
            specs.iter().zip(&init).map(|((n, s), p)| (opt.group_of(n).unwrap(), RefParam::new(p).shaped(s))).collect();
        for step in 1..=20u64 {
            let g: Vec<Vec<f32>> =
                specs.iter().enumerate().map(|(i, (_, s))| noise(100 * step + i as u64, s.iter().product())).collect();
            for ((name, _), gv) in specs.iter().zip(&g) {
                store.grad(name).unwrap().write(gv).unwrap();
            }
            opt.step().unwrap();
            let g64: Vec<Vec<f64>> = g.iter().map(|v| v.iter().map(|&x| x as f64).collect()).collect();
            engine_step(&mut groups, &mut refs, &g64, None);
        }
        for ((name, _), (_, r)) in specs.iter().zip(&refs) {
            let got = store.param(name).unwrap().read_blocking().unwrap();
            assert!(rel(&got, &r.p) < 1e-5, "{} {name}: {}", cfg.name(), rel(&got, &r.p));
        }
        if let OptimizerConfig::NorMuon(_) | OptimizerConfig::SfNorMuon(_) = cfg {
            let v = |p: &str| opt.state(p, "second_momentum_buffer").unwrap().shape().to_vec();
            assert_eq!(v("conv.weight"), [4, 2, 3, 1]);
            assert_eq!(v("stack"), [2, 3, 1]);
        }
    }
    // A 5-D tensor is no matrix: a routing error that names it.
    let store = ParamStore::new(&gpu, &[("odd", &[2, 2, 2, 2, 2])]).unwrap();
    let mut b = OptimizerBuilder::new(&gpu);
    b.params_from(&store).unwrap().rule(Matcher::All, Group::new(OptimizerConfig::Muon(MuonConfig::default())));
    assert!(b.build().err().unwrap().to_string().contains("odd"));
}

#[test]
fn update_condition_numbers_match_the_cpu() {
    let gpu = gpu();
    let (m, n) = (16, 24);
    for (cfg, bound) in [
        (OptimizerConfig::Muon(MuonConfig::default()), Some(3.0)),
        (OptimizerConfig::AdamW(AdamWConfig::default()), None),
    ] {
        let store = ParamStore::new(&gpu, &[("w", &[m, n])]).unwrap();
        store.param("w").unwrap().write(&noise(3, m * n)).unwrap();
        let mut b = OptimizerBuilder::new(&gpu);
        b.params_from(&store).unwrap().rule(Matcher::All, Group::new(cfg.clone())).diagnose(&["w"]);
        let opt = b.build().unwrap();
        assert!(pollster::block_on(opt.update_condition_numbers()).unwrap()[0].1.is_nan(), "no update yet");
        for step in 1..=6u64 {
            store.grad("w").unwrap().write(&noise(50 + step, m * n)).unwrap();
            let before = store.param("w").unwrap().read_blocking().unwrap();
            opt.step().unwrap();
            let after = store.param("w").unwrap().read_blocking().unwrap();
            let kappa = pollster::block_on(opt.update_condition_numbers()).unwrap()[0].1 as f64;
            // The same κ in f64 from the update the parameters show.
            let delta =
                cpu::Mat { r: m, c: n, d: before.iter().zip(&after).map(|(a, b)| *a as f64 - *b as f64).collect() };
            let (vals, _) = cpu::cpu_eigh(&delta.mul(&delta.t()));
            let want = (vals[m - 1] / vals[0]).sqrt();
            assert!((kappa - want).abs() <= 1e-3 * want, "{}: κ {kappa} vs {want}", cfg.name());
            if let Some(b) = bound {
                assert!(kappa < b, "a Keller-polar update keeps κ small: {kappa}");
            }
        }
    }
    let store = ParamStore::new(&gpu, &[("v", &[8])]).unwrap();
    let mut b = OptimizerBuilder::new(&gpu);
    b.params_from(&store)
        .unwrap()
        .rule(Matcher::All, Group::new(OptimizerConfig::AdamW(AdamWConfig::default())))
        .diagnose(&["v"]);
    assert!(b.build().is_err(), "a vector has no condition number");
}

#[test]
fn fusion_opt_composite_shares_one_polyak_step() {
    let gpu = gpu();
    let store = ParamStore::new(&gpu, SPECS).unwrap();
    for (i, (name, shape)) in SPECS.iter().enumerate() {
        store.param(name).unwrap().write(&noise(100 + i as u64, shape.iter().product())).unwrap();
    }
    let loss = Tensor::zeros(&gpu, &[1]).unwrap();
    let cfg = FusionOptConfig { schedule: Schedule::Warmup { warmup: 4 }, ..Default::default() };
    let mut b = OptimizerBuilder::new(&gpu);
    b.params_from(&store).unwrap().fusion_opt(&cfg, &loss);
    let opt = b.build().unwrap();
    assert_eq!(opt.groups().len(), 2);
    assert_eq!(opt.groups()[opt.group_of("h.weight").unwrap()].optimizer.name(), "sf_normuon");
    assert_eq!(opt.groups()[opt.group_of("emb").unwrap()].optimizer.name(), "adamw_schedulefree");
    let run = Run { store, opt };
    let mut groups = RefGroup::all(run.opt.groups());
    let init = read_params(&run);
    let mut refs: Vec<(usize, RefParam)> =
        SPECS.iter().zip(&init).map(|((n, s), p)| (run.opt.group_of(n).unwrap(), RefParam::new(p).shaped(s))).collect();
    let StepSizeRule::PolyakClamp { beta, min, max } = cfg.step_size;
    let mut pr = RefPolyak { beta: beta as f64, min: min as f64, max: max as f64, loss_ema: 0.0, norm_ema: 0.0 };
    for step in 1..=20u32 {
        let l = 2.0 / (1.0 + 0.05 * step as f32);
        loss.write(&[l]).unwrap();
        let g = grads_at(step, None);
        write_grads(&run, &g);
        run.opt.step().unwrap();
        let g64: Vec<Vec<f64>> = g.iter().map(|v| v.iter().map(|&x| x as f64).collect()).collect();
        engine_step_with(&mut groups, &mut refs, &g64, None, Some((&mut pr, l as f64)));
    }
    let got = read_params(&run);
    for (((name, _), p), (_, r)) in SPECS.iter().zip(&got).zip(&refs) {
        assert!(rel(p, &r.p) < 1e-5, "{name}: y error {}", rel(p, &r.p));
    }
    // Evaluation points: SF-NorMuon's x state and Schedule-Free AdamW's computed x.
    let points = pollster::block_on(run.opt.eval_params()).unwrap();
    for ((name, x), (g, r)) in points.iter().zip(&refs) {
        let want = if run.opt.groups()[*g].optimizer.name() == "sf_normuon" { &r.e } else { &r.s[1] };
        assert!(rel(x, want) < 1e-5, "{name}: x error {}", rel(x, want));
    }
    assert!(run.opt.eval().is_err(), "SF-NorMuon keeps x as a state: no mode switching");
}

/// The optimizers whose polar factors come from one call per bucket — FISMO, fismo_diag and the whitening grid's
/// Newton–Schulz basis (the Muon family: `every_optimizer_matches_its_reference`) — update each stack as in a
/// bucket of its own: `h2.weight` (9×4) and the `q`/`k` stack (4×6) share their small side, so their Newton–Schulz
/// middle products run as one batched product (CPU adapters) or as one padded stack (GPUs).
#[test]
fn stacks_sharing_a_polar_call_update_as_alone() {
    let configs = [
        OptimizerConfig::FismoDiag(FismoDiagConfig::default()),
        OptimizerConfig::Fismo(FismoConfig::default()),
        OptimizerConfig::Whiten(WhitenConfig {
            basis: Basis::NewtonSchulz,
            normalization: Normalization::Sign,
            ..Default::default()
        }),
        OptimizerConfig::Whiten(WhitenConfig { basis: Basis::NewtonSchulz, ..Default::default() }),
    ];
    let rest = (Matcher::All, Group::new(OptimizerConfig::AdamW(AdamWConfig::default())));
    let names = |v: &[&str]| Matcher::Names(v.iter().map(|s| s.to_string()).collect());
    let params = |run: &Run| read_params(run).into_iter().flatten().map(f64::from).collect::<Vec<_>>();
    for cfg in configs {
        let group = Group::new(cfg.clone());
        let shared = build(&[(matrices(), group.clone()), rest.clone()], None).unwrap();
        let alone = [(names(&["h2.weight"]), group.clone()), (names(&["q.weight", "k.weight"]), group.clone())];
        let alone = build(&[alone[0].clone(), alone[1].clone(), (matrices(), group), rest.clone()], None).unwrap();
        let init = params(&shared);
        for step in 1..=10 {
            let g = grads_at(step, None);
            for run in [&shared, &alone] {
                write_grads(run, &g);
                run.opt.step().unwrap();
            }
        }
        let (got, want) = (params(&shared), params(&alone));
        let dist = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum::<f64>().sqrt();
        let (diff, moved) = (dist(&got, &want), dist(&want, &init));
        assert!(moved > 1e-3 * dist(&want, &vec![0.0; want.len()]), "{cfg:?}: the parameters barely moved");
        // GPUs sum the padded group's norms in another order: rounding, amplified a little by the steps.
        assert!(diff <= 1e-5 * moved, "{cfg:?}: {} of the displacement away from the stacks alone", diff / moved);
    }
}
