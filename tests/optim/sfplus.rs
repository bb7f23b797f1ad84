//! ScheduleFree+ (official `AdamCScheduleFreePlusPaper`, docs/optimizers.md §8.5) against an f64 reference.

use crate::*;
use wgoptim::optim::*;
use wgoptim::Tensor;

/// The reference over all parameters of one ScheduleFree+ group: returns false when the step is skipped.
struct RefPlus {
    c: ScheduleFreePlusConfig,
    k: u32,
    e: f64,
    lr_max: f64,
    weight_sum: f64,
    y: Vec<Vec<f64>>,
    z: Vec<Vec<f64>>,
    x: Vec<Vec<f64>>,
    m: Vec<Vec<f64>>,
    v: Vec<Vec<f64>>,
}

impl RefPlus {
    fn new(c: ScheduleFreePlusConfig, init: &[Vec<f32>]) -> RefPlus {
        let y: Vec<Vec<f64>> = init.iter().map(|p| p.iter().map(|&v| v as f64).collect()).collect();
        let zeros: Vec<Vec<f64>> = y.iter().map(|p| vec![0.0; p.len()]).collect();
        RefPlus {
            c,
            k: 0,
            e: 0.0,
            lr_max: c.eps as f64,
            weight_sum: 0.0,
            z: y.clone(),
            x: y.clone(),
            y,
            m: zeros.clone(),
            v: zeros,
        }
    }

    fn step(&mut self, g: &[Vec<f64>], f: f64, sched: f64) -> bool {
        if !f.is_finite() || g.iter().flatten().any(|v| !v.is_finite()) {
            return false;
        }
        let c = self.c;
        let k = self.k as f64;
        let fl = |v: f32| v as f64;
        let mut bsf = fl(c.sf_beta1);
        if c.sf_beta1_anneal_steps > 0 {
            let pk = (k / c.sf_beta1_anneal_steps as f64).min(1.0);
            bsf = 1.0 - ((1.0 - pk) * (1.0 - fl(c.sf_beta1)).ln() + pk * (1.0 - fl(c.sf_beta1_max)).ln()).exp();
        }
        let l1: f64 = g.iter().flatten().map(|v| v.abs()).sum();
        // Parameters have state from the second step on; before that z − x = 0.
        let ip: f64 = bsf
            * g.iter()
                .enumerate()
                .map(|(i, gi)| gi.iter().enumerate().map(|(j, v)| v * (self.z[i][j] - self.x[i][j])).sum::<f64>())
                .sum::<f64>();
        let pb = fl(c.polyak_beta);
        self.e = pb * self.e + (1.0 - pb) * l1 * (std::f64::consts::PI / 2.0).sqrt();
        let ehat = self.e / (1.0 - pb.powi(self.k as i32 + 1));
        let polyak = if ehat > 0.0 { (f + ip).max(0.0) / ehat } else { 0.0 };
        let lr = (fl(c.lr) * sched).max(fl(c.eps)) * polyak;
        self.lr_max = self.lr_max.max(lr);
        let cc = if (self.k) < c.c_warmup {
            1.0
        } else {
            let w = (k + 1.0).powf(fl(c.r)) * self.lr_max.powf(fl(c.weight_lr_power));
            self.weight_sum += w;
            w / self.weight_sum
        };
        let (b1, b2) = (fl(c.beta1), fl(c.beta2));
        let t = self.k as i32 + 1;
        for i in 0..g.len() {
            for j in 0..g[i].len() {
                let gv = g[i][j];
                self.z[i][j] -= lr * lr * fl(c.weight_decay) * self.y[i][j];
                self.m[i][j] = b1 * self.m[i][j] + (1.0 - b1) * gv;
                self.v[i][j] = b2 * self.v[i][j] + (1.0 - b2) * gv * gv;
                let denom = (self.v[i][j] / (1.0 - b2.powi(t))).sqrt() + fl(c.eps);
                self.z[i][j] -= lr * (self.m[i][j] / (1.0 - b1.powi(t))) / denom;
                self.x[i][j] = (1.0 - cc) * self.x[i][j] + cc * self.z[i][j];
                self.y[i][j] = bsf * self.x[i][j] + (1.0 - bsf) * self.z[i][j];
            }
        }
        self.k += 1;
        true
    }
}

fn rel(a: &[Vec<f32>], b: &[Vec<f64>]) -> f64 {
    let d: f64 = a.iter().flatten().zip(b.iter().flatten()).map(|(x, y)| (*x as f64 - y).powi(2)).sum();
    let n: f64 = b.iter().flatten().map(|y| y * y).sum();
    (d / n).sqrt()
}

#[test]
fn schedulefree_plus_matches_the_official_semantics() {
    let gpu = gpu();
    let configs = [
        ScheduleFreePlusConfig::default(),
        ScheduleFreePlusConfig {
            weight_decay: 20.0,
            polyak_beta: 0.9,
            c_warmup: 3,
            r: 1.0,
            sf_beta1_anneal_steps: 10,
            lr: 0.5,
            ..Default::default()
        },
    ];
    for cfg in configs {
        let store = ParamStore::new(&gpu, SPECS).unwrap();
        for (i, (name, shape)) in SPECS.iter().enumerate() {
            store.param(name).unwrap().write(&noise(100 + i as u64, shape.iter().product())).unwrap();
        }
        let loss = Tensor::zeros(&gpu, &[1]).unwrap();
        let mut b = OptimizerBuilder::new(&gpu);
        let schedule = Schedule::Warmup { warmup: 4 };
        b.params_from(&store)
            .unwrap()
            .loss(&loss)
            .rule(Matcher::All, Group::new(OptimizerConfig::ScheduleFreePlus(cfg)).schedule(schedule));
        let opt = b.build().unwrap();
        let run = Run { store, opt };
        let init = read_params(&run);
        let mut r = RefPlus::new(cfg, &init);
        let mut applied = 0;
        for step in 1..=25u32 {
            let f = if step == 7 { f32::NAN } else { 3.0 / (1.0 + 0.1 * step as f32) };
            loss.write(&[f]).unwrap();
            let g = grads_at(step, None);
            write_grads(&run, &g);
            run.opt.step().unwrap();
            let g64: Vec<Vec<f64>> = g.iter().map(|v| v.iter().map(|&x| x as f64).collect()).collect();
            if r.step(&g64, f as f64, schedule.factor(applied) as f64) {
                applied += 1;
            }
        }
        let e = rel(&read_params(&run), &r.y);
        assert!(e < 1e-5, "{cfg:?}: y error {e}");
        let moved = rel(&init, &r.y);
        assert!(moved > 1e-3, "{cfg:?}: the reference barely moved ({moved}): the test would prove nothing");
        assert!(e < 1e-2 * moved, "{cfg:?}: displacement error {}", e / moved);
        let x: Vec<Vec<f32>> = pollster::block_on(run.opt.eval_params()).unwrap().into_iter().map(|(_, v)| v).collect();
        assert!(rel(&x, &r.x) < 1e-5, "{cfg:?}: x error {}", rel(&x, &r.x));
        assert_eq!(pollster::block_on(run.opt.report()).unwrap().skipped, 1);
        assert!(run.opt.eval().is_err(), "mode switching is refused for ScheduleFree+");
    }
    // Without a loss the optimizer cannot be built.
    let store = ParamStore::new(&gpu, &[("w", &[4])]).unwrap();
    let mut b = OptimizerBuilder::new(&gpu);
    b.params_from(&store)
        .unwrap()
        .rule(Matcher::All, Group::new(OptimizerConfig::ScheduleFreePlus(Default::default())));
    let e = b.build().err().expect("needs a loss");
    assert!(e.to_string().contains("loss"), "{e}");
}
