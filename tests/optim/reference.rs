//! f64 CPU references of the elementwise optimizers (docs/optimizers.md §7; torch.optim.SGD), with the
//! engine's step semantics: schedules on the applied-step count, global-norm clipping, skipped non-finite steps.

use wgoptim::optim::*;

/// One parameter's reference state.
#[derive(Clone, Debug)]
pub struct RefParam {
    pub p: Vec<f64>,
    pub s: [Vec<f64>; 3],
    /// Schedule-Free inner momentum.
    pub e: Vec<f64>,
    /// The parameter's shape (Adafactor factors over the last two dimensions).
    pub shape: Vec<usize>,
}

impl RefParam {
    pub fn new(p: &[f32]) -> RefParam {
        let z = vec![0.0; p.len()];
        RefParam {
            p: p.iter().map(|&v| v as f64).collect(),
            s: [z.clone(), z.clone(), z.clone()],
            e: z,
            shape: vec![p.len()],
        }
    }

    pub fn shaped(mut self, shape: &[usize]) -> RefParam {
        self.shape = shape.to_vec();
        self
    }
}

fn sgn(x: f64) -> f64 {
    if x > 0.0 {
        1.0
    } else if x < 0.0 {
        -1.0
    } else {
        0.0
    }
}

/// A group's reference: its config and schedules, and how many steps it applied.
#[derive(Clone, Debug)]
pub struct RefGroup {
    pub group: Group,
    pub t: u32,
    /// Schedule-Free: lr_max (starts at −1) and the running weight sum.
    pub lr_max: f64,
    pub weight_sum: f64,
    /// The shared step-size multiplier of the current step.
    pub ratio: f64,
}

impl RefGroup {
    /// Fresh references of an optimizer's groups (no step applied yet).
    pub fn all(groups: &[Group]) -> Vec<RefGroup> {
        groups.iter().map(|g| RefGroup { group: g.clone(), t: 0, lr_max: -1.0, weight_sum: 0.0, ratio: 1.0 }).collect()
    }

    /// (lr, β1) for the step about to be applied (t already incremented).
    fn scalars(&self) -> (f64, f64) {
        let k = self.t - 1;
        let cfg = &self.group.optimizer;
        let beta1 = match cfg {
            OptimizerConfig::Sgd(c) => c.momentum,
            OptimizerConfig::AdamW(c) => c.beta1,
            OptimizerConfig::Lion(c) => c.beta1,
            OptimizerConfig::Signum(c) => c.beta1,
            // The scheduled β: Lion's interpolation when there is one, else the momentum's.
            OptimizerConfig::Composed(c) => match (c.lookahead, c.momentum) {
                (LookaheadStage::Lion { beta }, _) => beta,
                (_, MomentumStage::Ema { beta } | MomentumStage::HeavyBall { beta, .. }) => beta,
                (_, MomentumStage::None) => 0.0,
            },
            OptimizerConfig::ScheduleFreeSgd(c) => c.momentum,
            OptimizerConfig::ScheduleFreeAdamW(c) => c.beta1,
            OptimizerConfig::Ona(c) => c.beta,
            OptimizerConfig::Adafactor(c) => c.beta1.unwrap_or(0.0),
            OptimizerConfig::ScheduleFreePlus(c) => c.beta1,
            OptimizerConfig::Muon(ref c) => c.momentum,
            OptimizerConfig::NorMuon(ref c) => c.momentum,
            OptimizerConfig::AdaMuon(ref c) => c.momentum,
            OptimizerConfig::SfNorMuon(ref c) => c.momentum,
            OptimizerConfig::Soap(ref c) => c.beta1,
            OptimizerConfig::Shampoo(ref c) => c.beta1,
            OptimizerConfig::KlShampoo(ref c) => c.beta1,
            OptimizerConfig::Splus(ref c) => c.beta1,
            OptimizerConfig::Spa(ref c) => c.beta1,
            OptimizerConfig::Fismo(ref c) => c.beta,
            OptimizerConfig::FismoDiag(ref c) => c.beta,
            OptimizerConfig::Whiten(ref c) => c.beta1,
            OptimizerConfig::PsgdKron(ref c) => c.beta1,
        };
        let b1 = self.group.momentum.map_or(beta1, |m| m.beta1(beta1, k));
        ((cfg.lr() * self.group.schedule.factor(k)) as f64 * self.ratio, b1 as f64)
    }

    /// Schedule-Free averaging coefficient c for the step being applied (after `advance`).
    fn sf_c(&self) -> f64 {
        if let OptimizerConfig::SfNorMuon(_) = self.group.optimizer {
            let lr = self.scalars().0;
            return lr * lr / self.weight_sum;
        }
        let (r, wlp) = match &self.group.optimizer {
            OptimizerConfig::ScheduleFreeSgd(c) => (c.r, c.weight_lr_power),
            OptimizerConfig::ScheduleFreeAdamW(c) => (c.r, c.weight_lr_power),
            _ => return 0.0,
        };
        let weight = (self.t as f64).powf(r as f64) * self.lr_max.powf(wlp as f64);
        if self.weight_sum > 0.0 {
            weight / self.weight_sum
        } else {
            0.0
        }
    }

    /// Advance the step counter and the Schedule-Free sums.
    pub fn advance(&mut self) {
        self.t += 1;
        if let OptimizerConfig::SfNorMuon(_) = self.group.optimizer {
            let lr = self.scalars().0;
            self.weight_sum += lr * lr;
        }
        if let OptimizerConfig::ScheduleFreeSgd(ScheduleFreeSgdConfig { r, weight_lr_power: wlp, .. })
        | OptimizerConfig::ScheduleFreeAdamW(ScheduleFreeAdamWConfig { r, weight_lr_power: wlp, .. }) =
            self.group.optimizer
        {
            let (lr, _) = self.scalars();
            self.lr_max = self.lr_max.max(lr);
            self.weight_sum += (self.t as f64).powf(r as f64) * self.lr_max.powf(wlp as f64);
        }
    }

    pub fn step(&self, x: &mut RefParam, g: &[f64]) {
        let (lr, b1) = self.scalars();
        let t = self.t as i32;
        let f = |v: f32| v as f64;
        match &self.group.optimizer {
            OptimizerConfig::Soap(_) | OptimizerConfig::Shampoo(_) | OptimizerConfig::KlShampoo(_) => {
                unreachable!("SOAP, Shampoo and KL-Shampoo have their own reference (tests/optim/kron.rs)")
            }
            OptimizerConfig::Splus(_) | OptimizerConfig::Spa(_) => {
                unreachable!("SPlus and SPA have their own reference (tests/optim/kron_family.rs)")
            }
            OptimizerConfig::Whiten(_) => {
                unreachable!("the whitening grid has its own reference (tests/optim/whiten.rs)")
            }
            OptimizerConfig::PsgdKron(_) => unreachable!("PSGD-Kron has its own reference (tests/optim/psgd.rs)"),
            OptimizerConfig::Fismo(_) | OptimizerConfig::FismoDiag(_) => {
                unreachable!("FISMO has its own reference (tests/optim/fismo.rs)")
            }
            OptimizerConfig::SfNorMuon(c) => {
                // s = [m, v (rows), z], e = x; p holds y. Matrices and normalization groups as NorMuon's.
                let (count, m, n) = muon_matrices(&x.shape);
                let (rows, cols) = norm_groups(&x.shape, m, n);
                if t == 1 {
                    x.s[2] = x.p.clone();
                    x.e = x.p.clone();
                }
                for i in 0..x.p.len() {
                    x.s[0][i] = b1 * x.s[0][i] + (1.0 - b1) * g[i];
                }
                let mut o: Vec<f64> = (0..count)
                    .flat_map(|k| newton_schulz(&x.s[0][k * m * n..(k + 1) * m * n], m, n, &c.polar))
                    .collect();
                x.s[1].resize(o.len() / cols, 0.0);
                for (og, vg) in o.chunks_mut(rows * cols).zip(x.s[1].chunks_mut(rows)) {
                    normalize_rows(og, vg, (rows, cols), c.beta2 as f64);
                    let factor = 0.2 * ((rows * cols) as f64).sqrt() / og.iter().map(|v| v * v).sum::<f64>().sqrt();
                    og.iter_mut().for_each(|v| *v *= factor);
                }
                let cc = self.sf_c();
                let beta = c.beta1 as f64;
                for i in 0..x.p.len() {
                    x.s[2][i] = x.s[2][i] - lr * c.weight_decay as f64 * x.s[2][i] - lr * o[i];
                    x.e[i] = (1.0 - cc) * x.e[i] + cc * x.s[2][i];
                    x.p[i] = (1.0 - beta) * x.s[2][i] + beta * x.e[i];
                }
            }
            OptimizerConfig::AdaMuon(c) if c.variant == AdaMuonVariant::Simplified => {
                let (m, n) = (x.shape[0], x.shape[1..].iter().product::<usize>());
                let bc1 = 1.0 - b1.powi(t);
                for i in 0..x.p.len() {
                    x.s[0][i] = b1 * x.s[0][i] + (1.0 - b1) * g[i];
                }
                let u: Vec<f64> = x.s[0].iter().map(|v| v / bc1).collect();
                let scale = AdjustLr::Keller.scale_for(&x.shape) as f64;
                let o: Vec<f64> = newton_schulz(&u, m, n, &c.polar).iter().map(|v| v * scale).collect();
                let b2 = c.beta2 as f64;
                let bc2 = 1.0 - b2.powi(t);
                for i in 0..x.p.len() {
                    x.s[1][i] = b2 * x.s[1][i] + (1.0 - b2) * o[i] * o[i];
                    let step = o[i] / ((x.s[1][i] / bc2).sqrt() + c.eps as f64);
                    x.p[i] = x.p[i] * (1.0 - lr * c.weight_decay as f64) - lr * step;
                }
            }
            OptimizerConfig::AdaMuon(c) => {
                let (m, n) = (x.shape[0], x.shape[1..].iter().product::<usize>());
                for i in 0..x.p.len() {
                    x.s[0][i] = b1 * x.s[0][i] + (1.0 - b1) * g[i];
                }
                let sign: Vec<f64> = (0..g.len())
                    .map(|i| if c.nesterov { (1.0 - b1) * g[i] + b1 * x.s[0][i] } else { x.s[0][i] })
                    .map(|v| {
                        if v > 0.0 {
                            1.0
                        } else if v < 0.0 {
                            -1.0
                        } else {
                            0.0
                        }
                    })
                    .collect();
                let o = newton_schulz(&sign, m, n, &c.polar);
                let eps = c.eps as f64;
                let mut oh = vec![0.0; o.len()];
                for i in 0..o.len() {
                    x.s[1][i] = b1 * x.s[1][i] + (1.0 - b1) * o[i] * o[i];
                    oh[i] = o[i] / (x.s[1][i].sqrt() + eps);
                }
                let minmax = (x.shape.iter().min().unwrap() * x.shape.iter().max().unwrap()) as f64;
                let factor = 0.2 * minmax.sqrt() / (oh.iter().map(|v| v * v).sum::<f64>().sqrt() + eps);
                for i in 0..x.p.len() {
                    x.p[i] = x.p[i] * (1.0 - lr * c.weight_decay as f64) - lr * factor * oh[i];
                }
            }
            OptimizerConfig::NorMuon(c) => {
                // Matrices as Muon's (3-D: a batch; 4-D: out × in·kh·kw); statistics per normalization group:
                // the matrix, or each (out, in) kernel of kh rows × kw for a convolution (§3.1 gotcha 3).
                let (count, m, n) = muon_matrices(&x.shape);
                let (rows, cols) = norm_groups(&x.shape, m, n);
                for i in 0..x.p.len() {
                    x.s[0][i] = b1 * x.s[0][i] + (1.0 - b1) * g[i];
                }
                let u: Vec<f64> = if c.nesterov {
                    (0..g.len()).map(|i| (1.0 - b1) * g[i] + b1 * x.s[0][i]).collect()
                } else {
                    x.s[0].clone()
                };
                let mut o: Vec<f64> =
                    (0..count).flat_map(|k| newton_schulz(&u[k * m * n..(k + 1) * m * n], m, n, &c.polar)).collect();
                x.s[1].resize(o.len() / cols, 0.0);
                let keller = AdjustLr::Keller.scale_for(&x.shape) as f64;
                for (og, vg) in o.chunks_mut(rows * cols).zip(x.s[1].chunks_mut(rows)) {
                    let vnorm = og.iter().map(|v| v * v).sum::<f64>().sqrt();
                    normalize_rows(og, vg, (rows, cols), c.beta2 as f64);
                    let after = og.iter().map(|v| v * v).sum::<f64>().sqrt();
                    let factor = match c.scaling {
                        NorMuonScaling::Official => keller * vnorm / (after + 1e-10),
                        NorMuonScaling::PaperRms02 => 0.2 * ((rows * cols) as f64).sqrt() / after,
                    };
                    og.iter_mut().for_each(|v| *v *= factor);
                }
                for i in 0..x.p.len() {
                    x.p[i] = x.p[i] * (1.0 - lr * c.weight_decay as f64) - lr * o[i];
                }
            }
            OptimizerConfig::Muon(c) => {
                let (count, m, n) = muon_matrices(&x.shape);
                let sum = c.momentum_kind == MomentumKind::Sum;
                let accumulate = |mom: &mut Vec<f64>, v: &[f64]| -> Vec<f64> {
                    for i in 0..v.len() {
                        mom[i] = if sum { b1 * mom[i] + v[i] } else { b1 * mom[i] + (1.0 - b1) * v[i] };
                    }
                    if c.nesterov {
                        (0..v.len())
                            .map(|i| if sum { v[i] + b1 * mom[i] } else { (1.0 - b1) * v[i] + b1 * mom[i] })
                            .collect()
                    } else {
                        mom.clone()
                    }
                };
                let ns = |v: &[f64]| -> Vec<f64> {
                    (0..count).flat_map(|k| newton_schulz(&v[k * m * n..(k + 1) * m * n], m, n, &c.polar)).collect()
                };
                let upd = if c.momentum_placement == MomentumPlacement::Inside {
                    let u = accumulate(&mut x.s[0], g);
                    ns(&u)
                } else {
                    let o = ns(g);
                    accumulate(&mut x.s[0], &o)
                };
                let scale = c.adjust_lr.scale_for(&x.shape) as f64;
                for i in 0..x.p.len() {
                    x.p[i] = x.p[i] * (1.0 - lr * c.weight_decay as f64) - lr * scale * upd[i];
                }
            }
            OptimizerConfig::Sgd(c) => {
                let sign = if c.maximize { -1.0 } else { 1.0 };
                for i in 0..x.p.len() {
                    let mut d = sign * g[i] + f(c.weight_decay) * x.p[i];
                    if b1 != 0.0 {
                        let buf = if t > 1 { b1 * x.s[0][i] + (1.0 - f(c.dampening)) * d } else { d };
                        x.s[0][i] = buf;
                        d = if c.nesterov { d + b1 * buf } else { buf };
                    }
                    x.p[i] -= lr * d;
                }
            }
            OptimizerConfig::AdamW(c) => {
                let (b2, eps, wd) = (f(c.beta2), f(c.eps), f(c.weight_decay));
                let (bc1, bc2) = (1.0 - b1.powi(t), 1.0 - b2.powi(t));
                for i in 0..x.p.len() {
                    let gi = if c.maximize { -g[i] } else { g[i] };
                    x.p[i] *= 1.0 - lr * wd;
                    x.s[0][i] = b1 * x.s[0][i] + (1.0 - b1) * gi;
                    x.s[1][i] = b2 * x.s[1][i] + (1.0 - b2) * gi * gi;
                    let mut v = x.s[1][i];
                    if c.amsgrad {
                        x.s[2][i] = x.s[2][i].max(v);
                        v = x.s[2][i];
                    }
                    x.p[i] -= (lr / bc1) * x.s[0][i] / (v.sqrt() / bc2.sqrt() + eps);
                }
            }
            OptimizerConfig::Lion(c) => {
                for i in 0..x.p.len() {
                    x.p[i] *= 1.0 - lr * f(c.weight_decay);
                    x.p[i] -= lr * sgn(b1 * x.s[0][i] + (1.0 - b1) * g[i]);
                    x.s[0][i] = f(c.beta2) * x.s[0][i] + (1.0 - f(c.beta2)) * g[i];
                }
            }
            // Reference forms (schedule_free `*_reference.py`): explicit x, y (= p) and z; s = [z, x, v, e].
            OptimizerConfig::ScheduleFreeSgd(c) => {
                let cc = self.sf_c();
                for i in 0..x.p.len() {
                    if t == 1 {
                        x.s[0][i] = x.p[i];
                        x.s[1][i] = x.p[i];
                    }
                    x.s[0][i] -= lr * (g[i] + f(c.weight_decay) * x.p[i]);
                    x.s[1][i] = (1.0 - cc) * x.s[1][i] + cc * x.s[0][i];
                    x.p[i] = b1 * x.s[1][i] + (1.0 - b1) * x.s[0][i];
                }
            }
            OptimizerConfig::ScheduleFreeAdamW(c) => {
                let cc = self.sf_c();
                let (b2, mu) = (f(c.beta2), f(c.inner_momentum));
                let bc2 = 1.0 - b2.powi(t);
                for i in 0..x.p.len() {
                    if t == 1 {
                        x.s[0][i] = x.p[i];
                        x.s[1][i] = x.p[i];
                    }
                    x.s[2][i] = b2 * x.s[2][i] + (1.0 - b2) * g[i] * g[i];
                    let denom = (x.s[2][i] / bc2).sqrt() + f(c.eps);
                    let gn = if mu > 0.0 {
                        x.e[i] = mu * x.e[i] + (1.0 - mu) * g[i];
                        x.e[i] / (1.0 - mu.powi(t)) / denom
                    } else {
                        g[i] / denom
                    };
                    x.s[0][i] -= lr * f(c.weight_decay) * x.p[i];
                    x.s[0][i] -= lr * gn;
                    x.s[1][i] = (1.0 - cc) * x.s[1][i] + cc * x.s[0][i];
                    x.p[i] = b1 * x.s[1][i] + (1.0 - b1) * x.s[0][i];
                }
            }
            OptimizerConfig::ScheduleFreePlus(_) => unreachable!("ScheduleFree+ has its own reference (sfplus.rs)"),
            OptimizerConfig::Adafactor(c) => {
                let n = x.p.len();
                let rms_p = (x.p.iter().map(|v| v * v).sum::<f64>() / n as f64).sqrt();
                let rho = if c.relative_step {
                    let cap = if c.warmup_init { 1e-6 * t as f64 } else { 1e-2 };
                    cap.min(1.0 / (t as f64).sqrt()) * lr
                } else {
                    lr
                };
                let alpha = if c.scale_parameter { (c.eps2 as f64).max(rms_p) } else { 1.0 } * rho;
                let b2t = 1.0 - (t as f64).powf(c.decay_rate as f64);
                let eps1 = c.eps1 as f64;
                let sh = &x.shape;
                let mut u: Vec<f64> = vec![0.0; n];
                if sh.len() >= 2 {
                    let (rows, cols) = (sh[sh.len() - 2], sh[sh.len() - 1]);
                    let batch = n / (rows * cols);
                    x.s[0].resize(batch * rows, 0.0);
                    x.s[1].resize(batch * cols, 0.0);
                    for b in 0..batch {
                        let at = |r: usize, cc: usize| b * rows * cols + r * cols + cc;
                        for r in 0..rows {
                            let mean = (0..cols).map(|cc| g[at(r, cc)].powi(2) + eps1).sum::<f64>() / cols as f64;
                            x.s[0][b * rows + r] = b2t * x.s[0][b * rows + r] + (1.0 - b2t) * mean;
                        }
                        for cc in 0..cols {
                            let mean = (0..rows).map(|r| g[at(r, cc)].powi(2) + eps1).sum::<f64>() / rows as f64;
                            x.s[1][b * cols + cc] = b2t * x.s[1][b * cols + cc] + (1.0 - b2t) * mean;
                        }
                        let rmean = x.s[0][b * rows..(b + 1) * rows].iter().sum::<f64>() / rows as f64;
                        for r in 0..rows {
                            for cc in 0..cols {
                                u[at(r, cc)] =
                                    g[at(r, cc)] / (x.s[0][b * rows + r] / rmean).sqrt() / x.s[1][b * cols + cc].sqrt();
                            }
                        }
                    }
                } else {
                    for i in 0..n {
                        x.s[0][i] = b2t * x.s[0][i] + (1.0 - b2t) * (g[i] * g[i] + eps1);
                        u[i] = g[i] / x.s[0][i].sqrt();
                    }
                }
                let rms_u = (u.iter().map(|v| v * v).sum::<f64>() / n as f64).sqrt();
                let scale = alpha / (rms_u / c.clip_threshold as f64).max(1.0);
                for i in 0..n {
                    let mut upd = scale * u[i];
                    if c.beta1.is_some() {
                        x.s[2][i] = b1 * x.s[2][i] + (1.0 - b1) * upd;
                        upd = x.s[2][i];
                    }
                    x.p[i] -= c.weight_decay as f64 * alpha * x.p[i] + upd;
                }
            }
            OptimizerConfig::Ona(c) => {
                let (bh, kappa, b2) = (f(c.beta_h), f(c.kappa), f(c.beta2));
                let (bc1, bc2) = (1.0 - b1.powi(t), 1.0 - b2.powi(t));
                for i in 0..x.p.len() {
                    x.p[i] *= 1.0 - lr * f(c.weight_decay);
                    let d = if t == 1 { 0.0 } else { g[i] - x.s[0][i] };
                    x.s[0][i] = g[i];
                    x.s[1][i] = bh * x.s[1][i] + (1.0 - bh) * d;
                    x.s[2][i] = b1 * x.s[2][i] + (1.0 - b1) * (g[i] + kappa * x.s[1][i]);
                    if c.adam {
                        x.e[i] = b2 * x.e[i] + (1.0 - b2) * g[i] * g[i];
                        x.p[i] -= lr * (x.s[2][i] / bc1) / ((x.e[i] / bc2).sqrt() + f(c.eps));
                    } else {
                        x.p[i] -= lr * x.s[2][i];
                    }
                }
            }
            // Stages in order: weight decay, momentum, lookahead, normalization, apply (s = [momentum?, v, v_max]).
            OptimizerConfig::Composed(c) => {
                let sign = if c.maximize { -1.0 } else { 1.0 };
                let vs = usize::from(c.momentum != MomentumStage::None);
                for i in 0..x.p.len() {
                    let mut gi = sign * g[i];
                    match c.weight_decay {
                        DecayStage::Coupled(l) => gi += f(l) * x.p[i],
                        DecayStage::Decoupled(l) => x.p[i] *= 1.0 - lr * f(l),
                        DecayStage::None => {}
                    }
                    let mut bc1 = 1.0;
                    let mut d = match (c.momentum, c.lookahead) {
                        (MomentumStage::None, _) => gi,
                        (MomentumStage::Ema { beta }, LookaheadStage::Lion { .. }) => {
                            let prev = x.s[0][i];
                            x.s[0][i] = f(beta) * prev + (1.0 - f(beta)) * gi;
                            b1 * prev + (1.0 - b1) * gi
                        }
                        (MomentumStage::Ema { .. }, look) => {
                            x.s[0][i] = b1 * x.s[0][i] + (1.0 - b1) * gi;
                            bc1 = 1.0 - b1.powi(t);
                            match look {
                                LookaheadStage::Mix { weight } => (1.0 - f(weight)) * x.s[0][i] + f(weight) * gi,
                                _ => x.s[0][i],
                            }
                        }
                        (MomentumStage::HeavyBall { dampening, nesterov, .. }, _) => {
                            let buf = if t > 1 { b1 * x.s[0][i] + (1.0 - f(dampening)) * gi } else { gi };
                            x.s[0][i] = buf;
                            if nesterov {
                                gi + b1 * buf
                            } else {
                                buf
                            }
                        }
                    };
                    match c.normalize {
                        NormalizeStage::None => {}
                        NormalizeStage::Sign => d = sgn(d),
                        NormalizeStage::Adam { beta2, eps, amsgrad } => {
                            let b2 = f(beta2);
                            x.s[vs][i] = b2 * x.s[vs][i] + (1.0 - b2) * gi * gi;
                            let mut v = x.s[vs][i];
                            if amsgrad {
                                x.s[vs + 1][i] = x.s[vs + 1][i].max(v);
                                v = x.s[vs + 1][i];
                            }
                            d = (d / bc1) / (v.sqrt() / (1.0 - b2.powi(t)).sqrt() + f(eps));
                        }
                    }
                    x.p[i] -= lr * d;
                }
            }
            OptimizerConfig::Signum(c) => {
                let la = f(c.lookahead);
                for i in 0..x.p.len() {
                    x.s[0][i] = b1 * x.s[0][i] + (1.0 - b1) * g[i];
                    let u = sgn((1.0 - la) * x.s[0][i] + la * g[i]);
                    x.p[i] -= lr * (u + f(c.weight_decay) * x.p[i]);
                }
            }
        }
    }
}

/// The Polyak-clamp rule's state: (beta, min, max) and the loss and gradient-norm EMAs.
#[derive(Clone, Debug)]
pub struct RefPolyak {
    pub beta: f64,
    pub min: f64,
    pub max: f64,
    pub loss_ema: f64,
    pub norm_ema: f64,
}

/// One engine step over all params: clip by the global norm, skip on non-finite, advance each group's counter.
pub fn engine_step(
    groups: &mut [RefGroup],
    params: &mut [(usize, RefParam)],
    grads: &[Vec<f64>],
    clip: Option<f32>,
) -> bool {
    engine_step_with(groups, params, grads, clip, None)
}

/// [`engine_step`] with the Polyak rule fed by `loss`.
pub fn engine_step_with(
    groups: &mut [RefGroup],
    params: &mut [(usize, RefParam)],
    grads: &[Vec<f64>],
    clip: Option<f32>,
    polyak: Option<(&mut RefPolyak, f64)>,
) -> bool {
    if grads.iter().flatten().any(|g| !g.is_finite()) || polyak.as_ref().is_some_and(|(_, l)| !l.is_finite()) {
        return false;
    }
    let norm = grads.iter().flatten().map(|g| g * g).sum::<f64>().sqrt();
    let ratio = match polyak {
        Some((p, loss)) => {
            p.loss_ema = p.beta * p.loss_ema + (1.0 - p.beta) * loss;
            p.norm_ema = p.beta * p.norm_ema + (1.0 - p.beta) * norm;
            (if p.norm_ema > 0.0 { p.loss_ema / p.norm_ema } else { p.max }).clamp(p.min, p.max)
        }
        None => 1.0,
    };
    for g in groups.iter_mut() {
        g.ratio = ratio;
    }
    let coef = clip.map_or(1.0, |c| (c as f64 / (norm + 1e-6)).min(1.0));
    for g in groups.iter_mut() {
        g.advance();
    }
    for ((group, x), g) in params.iter_mut().zip(grads) {
        let gs: Vec<f64> = g.iter().map(|v| v * coef).collect();
        groups[*group].step(x, &gs);
    }
    true
}

/// The polar factor in f64: §1.2 normalization, the configured rows (at the f32 values the device uses), iterating
/// on the small side.
pub fn newton_schulz(u: &[f64], m: usize, n: usize, cfg: &wgoptim::linalg::PolarConfig) -> Vec<f64> {
    let tall = m > n;
    let (r, c) = if tall { (n, m) } else { (m, n) };
    // X is r×c (wide), transposed when the matrix is tall.
    let mut x: Vec<f64> = if tall { (0..r * c).map(|k| u[(k % c) * n + k / c]).collect() } else { u.to_vec() };
    let (mult, add, floor) = cfg.normalization.params();
    let norm = x.iter().map(|v| v * v).sum::<f64>().sqrt();
    let denom = (norm * mult as f64 + add as f64).max(floor as f64);
    x.iter_mut().for_each(|v| *v /= denom);
    let mul = |a: &[f64], b: &[f64], p: usize, q: usize, s: usize| -> Vec<f64> {
        let mut o = vec![0.0; p * s];
        for i in 0..p {
            for k in 0..q {
                for j in 0..s {
                    o[i * s + j] += a[i * q + k] * b[k * s + j];
                }
            }
        }
        o
    };
    for [a, b, cc] in cfg.coefficients.rows(cfg.steps) {
        let (a, b, cc) = (a as f32 as f64, b as f32 as f64, cc as f32 as f64);
        let xt: Vec<f64> = (0..r * c).map(|k| x[(k % r) * c + k / r]).collect();
        let g = mul(&x, &xt, r, c, r);
        let g2 = mul(&g, &g, r, r, r);
        let bm: Vec<f64> = g.iter().zip(&g2).map(|(p, q)| b * p + cc * q).collect();
        let bx = mul(&bm, &x, r, r, c);
        x = x.iter().zip(&bx).map(|(p, q)| a * p + q).collect();
    }
    if tall {
        (0..m * n).map(|k| x[(k % n) * c + k / n]).collect()
    } else {
        x
    }
}

/// The matrices Muon orthogonalizes: `(count, rows, cols)`; 3-D: a batch; 4-D: one out × in·kh·kw matrix.
fn muon_matrices(shape: &[usize]) -> (usize, usize, usize) {
    match *shape {
        [b, m, n] => (b, m, n),
        [o, i, h, w] => (1, o, i * h * w),
        _ => (1, shape[0], shape[1]),
    }
}

/// NorMuon's normalization groups: the matrix, or each (out, in) kernel of kh rows × kw of a convolution.
fn norm_groups(shape: &[usize], m: usize, n: usize) -> (usize, usize) {
    match *shape {
        [_, _, kh, kw] => (kh, kw),
        _ => (m, n),
    }
}

/// NorMuon's row statistic (§3.1): `v_r ← β2 v_r + (1−β2) mean_j O_rj²`, then `O_r ← O_r / (sqrt(v_r) + 1e-10)`.
fn normalize_rows(o: &mut [f64], v: &mut [f64], (m, n): (usize, usize), b2: f64) {
    for r in 0..m {
        let vmean = (0..n).map(|j| o[r * n + j].powi(2)).sum::<f64>() / n as f64;
        v[r] = b2 * v[r] + (1.0 - b2) * vmean;
        for j in 0..n {
            o[r * n + j] /= v[r].sqrt() + 1e-10;
        }
    }
}
