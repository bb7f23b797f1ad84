//! K-FAC, EKFAC and KFAC-SOAP on the Linear layers of an [`nn`](crate::nn) graph (optimizers.md §10; reference
//! alecwangcq/KFAC-Pytorch; KFAC-SOAP from the Shakespeare-char experiment of seed 001).
//!
//! A [`Kfac`] turns each weight's gradient into a preconditioned direction, in place, between the backward pass
//! and the optimizer step (recorded into the same encoder); the optimizer then applies it (SGD with momentum for
//! K-FAC / EKFAC as the reference does, plain SGD for KFAC-SOAP, whose direction is already Adam-normalized).
//! Factors `A = aᵀa/N` of the layer inputs and `G = gsᵀgs·N` of the output gradients (batch-averaged loss) are
//! EMAs started at the identity, updated every `t_cov` steps (skipped when non-finite); their eigenbases are
//! refreshed every `t_inv` steps by warm-started Jacobi — all layers at step 0, then staggered: layer `k` of `L`
//! refreshes when `step ≡ ⌊k·t_inv/L⌋ (mod t_inv)`, so no single step pays for every eigendecomposition.
//!
//! * **K-FAC**: `ΔW = Q_G [(Q_Gᵀ ∇W Q_A) / (λ_G λ_Aᵀ + damping)] Q_Aᵀ` (eigenvalues < 1e-10 as 0), then KL clipping
//!   `ν = min(1, sqrt(kl_clip / Σ lr²⟨ΔW, ∇W⟩))`, gradient ← ν·ΔW.
//! * **EKFAC** (George et al. 2018): the divisor is `S + damping`, `S` an EMA (every `t_scal` steps, started at
//!   ones) of the mean squared per-example gradient in the eigenbasis, `N·(G̃∘G̃)ᵀ(Ã∘Ã)` with `Ã = a Q_A`,
//!   `G̃ = gs Q_G` — the textbook projection (§10 notes the reference's transposed form as a bug).
//! * **KFAC-SOAP**: Adam in the K-FAC eigenbasis, as SOAP does in Shampoo's: `M` is an EMA of raw gradients
//!   (projected each step, so it follows basis changes), `V` an EMA of squared projected gradients (kept, not
//!   rotated, across refreshes, as SOAP), bias-corrected; direction `Q_G [M̃/bc1 / (sqrt(V/bc2) + eps)] Q_Aᵀ`.
//!   Unlike SOAP the first step is not skipped: the basis is computed before the first update.

use bytemuck::{Pod, Zeroable};
use serde::{Deserialize, Serialize};

use super::ops::launch;
use crate::error::{Error, Result};
use crate::gpu::{Gpu, Plan, PlanBuilder, Tensor};
use crate::linalg::{eigh, gram, identity, reduce, Axpby, BatchScalar, EighConfig, GramSide, Matmul, ReduceOp, Trans};

/// Which member of the family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KfacVariant {
    /// Kronecker-factored natural gradient with KL clipping.
    Kfac,
    /// Eigenvalue-corrected K-FAC.
    Ekfac,
    /// Adam in the K-FAC eigenbasis.
    KfacSoap,
}

/// Settings; defaults are KFAC-Pytorch's (`stat_decay = 0.95, damping = 1e-3, kl_clip = 1e-3, TCov = 10,
/// TInv = 100, TScal = 10`) and SOAP's for the Adam part (`betas = (0.95, 0.95), eps = 1e-8`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KfacConfig {
    /// The variant.
    pub variant: KfacVariant,
    /// EMA decay of the factors (and of EKFAC's S).
    pub stat_decay: f32,
    /// Added to the eigenvalue products (EKFAC: to S).
    pub damping: f32,
    /// KL clipping bound (K-FAC, EKFAC).
    pub kl_clip: f32,
    /// Steps between factor updates.
    pub t_cov: u32,
    /// Steps between eigenbasis refreshes.
    pub t_inv: u32,
    /// Steps between EKFAC scale updates.
    pub t_scal: u32,
    /// KFAC-SOAP's momentum decay.
    pub beta1: f32,
    /// KFAC-SOAP's second-moment decay.
    pub beta2: f32,
    /// KFAC-SOAP's epsilon.
    pub eps: f32,
}

impl Default for KfacConfig {
    fn default() -> Self {
        KfacConfig {
            variant: KfacVariant::Kfac,
            stat_decay: 0.95,
            damping: 1e-3,
            kl_clip: 1e-3,
            t_cov: 10,
            t_inv: 100,
            t_scal: 10,
            beta1: 0.95,
            beta2: 0.95,
            eps: 1e-8,
        }
    }
}

impl KfacConfig {
    /// Check ranges; the error names the field.
    pub fn validate(&self) -> Result<()> {
        let bad = |name: &'static str, detail: String| Err(Error::InvalidArgument { op: "KfacConfig", name, detail });
        for (name, v) in [("stat_decay", self.stat_decay), ("beta1", self.beta1), ("beta2", self.beta2)] {
            if !(0.0..1.0).contains(&v) {
                return bad(name, format!("{v} is not in [0, 1)"));
            }
        }
        for (name, v) in [("damping", self.damping), ("kl_clip", self.kl_clip), ("eps", self.eps)] {
            if !(v > 0.0 && v.is_finite()) {
                return bad(name, format!("{v} must be positive"));
            }
        }
        if self.t_cov == 0 || self.t_inv == 0 || self.t_scal == 0 {
            return bad("t_cov", "t_cov, t_inv and t_scal must be ≥ 1".into());
        }
        Ok(())
    }
}

/// One Linear layer as K-FAC needs it.
pub struct KfacLayer {
    /// Name (for checkpoints).
    pub name: String,
    /// The weight's gradient `[out, in]`, overwritten with the preconditioned direction.
    pub grad: Tensor,
    /// Layer inputs `[N, in]`.
    pub input: Tensor,
    /// Gradient of the layer outputs `[N, out]`.
    pub output_grad: Tensor,
}

struct Site {
    name: String,
    fa: Tensor,
    fg: Tensor,
    qa: Tensor,
    qg: Tensor,
    la: Tensor,
    lg: Tensor,
    s: Tensor,
    m: Tensor,
    v: Tensor,
}

impl Site {
    fn states(&self) -> [(&'static str, &Tensor); 9] {
        [
            ("A", &self.fa),
            ("G", &self.fg),
            ("Q_A", &self.qa),
            ("Q_G", &self.qg),
            ("lambda_A", &self.la),
            ("lambda_G", &self.lg),
            ("S", &self.s),
            ("M", &self.m),
            ("V", &self.v),
        ]
    }
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct U {
    n: u32,
    rows: u32,
    cols: u32,
    a_off: u32,
    b_off: u32,
    o_off: u32,
    mode: u32,
    sites: u32,
    beta: f32,
    scale: f32,
    damping: f32,
    eps: f32,
    kl_clip: f32,
    beta2: f32,
    _p: [f32; 2],
}

/// The preconditioner: its state and its four pre-built plans.
pub struct Kfac {
    cfg: KfacConfig,
    sites: Vec<Site>,
    stats: Plan,
    refresh: Vec<Plan>,
    scale: Option<Plan>,
    precondition: Plan,
}

fn u0(cfg: &KfacConfig) -> U {
    U {
        n: 0,
        rows: 0,
        cols: 0,
        a_off: 0,
        b_off: 0,
        o_off: 0,
        mode: 0,
        sites: 0,
        beta: cfg.stat_decay,
        scale: 1.0,
        damping: cfg.damping,
        eps: cfg.eps,
        kl_clip: cfg.kl_clip,
        beta2: cfg.beta2,
        _p: [0.0; 2],
    }
}

/// `f ← β f + (1 − β)·new`, skipped when `new` has a non-finite entry.
fn guarded_ema(plan: &mut PlanBuilder, cfg: &KfacConfig, new: &Tensor, f: &Tensor) -> Result<()> {
    let flag = plan.scratch(&[1])?;
    reduce(plan, new, ReduceOp::AllFinite, 1, &flag)?;
    let n = f.numel();
    let u = U { n: n as u32, a_off: new.offset() as u32, o_off: f.offset() as u32, ..u0(cfg) };
    launch(plan, "nn/kfac.wgsl", "ema", &[], &u, &[new, &flag, f], n)
}

/// `out = op(Q1)·X·op(Q2)` through `tmp`.
fn sandwich(
    plan: &mut PlanBuilder,
    q1: (&Tensor, Trans),
    x: &Tensor,
    q2: (&Tensor, Trans),
    tmp: &Tensor,
    out: &Tensor,
) -> Result<()> {
    Matmul::new(q1.0, x, tmp).trans(q1.1, Trans::N).record(plan)?;
    Matmul::new(tmp, q2.0, out).trans(Trans::N, q2.1).record(plan)
}

impl Kfac {
    /// State for every layer and the plans; `lr` enters each step through [`Kfac::record`].
    pub fn new(gpu: &Gpu, cfg: KfacConfig, layers: &[KfacLayer]) -> Result<Kfac> {
        cfg.validate()?;
        if layers.is_empty() {
            return Err(Error::InvalidArgument { op: "Kfac::new", name: "layers", detail: "no layers".into() });
        }
        let mut sites = Vec::new();
        let mut stats = PlanBuilder::new(gpu);
        let mut refresh = Vec::new();
        let mut scale = PlanBuilder::new(gpu);
        let mut pre = PlanBuilder::new(gpu);
        let params = pre.step_params(4)?;
        let mut init = PlanBuilder::new(gpu);
        let dots = Tensor::zeros(gpu, &[layers.len()])?;
        let nu = Tensor::zeros(gpu, &[1])?;
        let mut directions = Vec::new();
        for (k, l) in layers.iter().enumerate() {
            let (rows, d_in, d_out) = match (l.input.shape(), l.output_grad.shape()) {
                ([r, i], [_, o]) => (*r, *i, *o),
                _ => (0, 0, 0),
            };
            if rows * d_in * d_out == 0 || l.output_grad.shape() != [rows, d_out] || l.grad.shape() != [d_out, d_in] {
                return Err(Error::Shape {
                    op: "Kfac::new",
                    detail: format!(
                        "{}: input {:?}, output gradient {:?}, weight gradient {:?}",
                        l.name,
                        l.input.shape(),
                        l.output_grad.shape(),
                        l.grad.shape()
                    ),
                });
            }
            let z = |shape: &[usize]| Tensor::zeros(gpu, shape);
            let site = Site {
                name: l.name.clone(),
                fa: z(&[d_in, d_in])?,
                fg: z(&[d_out, d_out])?,
                qa: z(&[d_in, d_in])?,
                qg: z(&[d_out, d_out])?,
                la: z(&[d_in])?,
                lg: z(&[d_out])?,
                s: z(&[d_out, d_in])?,
                m: z(&[d_out, d_in])?,
                v: z(&[d_out, d_in])?,
            };
            for f in [&site.fa, &site.fg, &site.qa, &site.qg] {
                identity(&mut init, f, 1.0)?;
            }
            let ones = Tensor::from_slice(gpu, &[d_out, d_in], &vec![1.0; d_out * d_in])?;
            Axpby { x: Some(&ones), ..Axpby::new(&site.s) }.record(&mut init)?;

            // Factor statistics.
            let (ga, gg) = (stats.scratch(&[d_in, d_in])?, stats.scratch(&[d_out, d_out])?);
            gram(&mut stats, &l.input, GramSide::Cols, &ga, 1.0 / rows as f32, None, 0.0, Default::default())?;
            gram(&mut stats, &l.output_grad, GramSide::Cols, &gg, rows as f32, None, 0.0, Default::default())?;
            guarded_ema(&mut stats, &cfg, &ga, &site.fa)?;
            guarded_ema(&mut stats, &cfg, &gg, &site.fg)?;

            // Eigenbases, warm-started from the previous ones.
            let ecfg = EighConfig::default();
            let mut r = PlanBuilder::new(gpu);
            eigh(&mut r, &site.fa, &site.la, &site.qa, Some(&site.qa), &ecfg)?;
            eigh(&mut r, &site.fg, &site.lg, &site.qg, Some(&site.qg), &ecfg)?;
            refresh.push(r.build()?);

            // EKFAC's corrected eigenvalues.
            if cfg.variant == KfacVariant::Ekfac {
                let (at, gt) = (scale.scratch(&[rows, d_in])?, scale.scratch(&[rows, d_out])?);
                Matmul::new(&l.input, &site.qa, &at).record(&mut scale)?;
                Matmul::new(&l.output_grad, &site.qg, &gt).record(&mut scale)?;
                for t in [&at, &gt] {
                    let u = U { n: t.numel() as u32, ..u0(&cfg) };
                    launch(&mut scale, "nn/kfac.wgsl", "square", &[], &u, &[t], t.numel())?;
                }
                let s_new = scale.scratch(&[d_out, d_in])?;
                Matmul::new(&gt, &at, &s_new)
                    .trans(Trans::T, Trans::N)
                    .scaled(rows as f32, None, 0.0)
                    .record(&mut scale)?;
                guarded_ema(&mut scale, &cfg, &s_new, &site.s)?;
            }

            // The direction.
            let (t1, t2, t3) =
                (pre.scratch(&[d_out, d_in])?, pre.scratch(&[d_out, d_in])?, pre.scratch(&[d_out, d_in])?);
            let (qg, qa) = (&site.qg, &site.qa);
            if cfg.variant == KfacVariant::KfacSoap {
                Axpby { x: Some(&l.grad), a: 1.0 - cfg.beta1, y: Some(&site.m), b: cfg.beta1, ..Axpby::new(&site.m) }
                    .record(&mut pre)?;
                sandwich(&mut pre, (qg, Trans::T), &l.grad, (qa, Trans::N), &t3, &t1)?;
                sandwich(&mut pre, (qg, Trans::T), &site.m, (qa, Trans::N), &t3, &t2)?;
                let u = U { n: (d_out * d_in) as u32, ..u0(&cfg) };
                launch(&mut pre, "nn/kfac.wgsl", "adam_basis", &[], &u, &[&t1, &params, &site.v, &t2], d_out * d_in)?;
                sandwich(&mut pre, (qg, Trans::N), &t2, (qa, Trans::T), &t3, &l.grad)?;
            } else {
                sandwich(&mut pre, (qg, Trans::T), &l.grad, (qa, Trans::N), &t3, &t1)?;
                let (divisor, mode) = if cfg.variant == KfacVariant::Ekfac { (&site.s, 1) } else { (&site.lg, 0) };
                let u = U { rows: d_out as u32, cols: d_in as u32, mode, ..u0(&cfg) };
                launch(&mut pre, "nn/kfac.wgsl", "divide", &[], &u, &[divisor, &site.la, &t1], d_out * d_in)?;
                sandwich(&mut pre, (qg, Trans::N), &t1, (qa, Trans::T), &t3, &t2)?;
                let u = U { n: (d_out * d_in) as u32, b_off: l.grad.offset() as u32, o_off: k as u32, ..u0(&cfg) };
                let kernel = gpu.kernel("nn/kfac.wgsl", "dot", &[])?;
                pre.dispatch(&kernel, &u, &[&t2, &l.grad, &dots], [1, 1, 1])?;
                directions.push((t2, l.grad.clone()));
            }
            sites.push(site);
        }
        if cfg.variant != KfacVariant::KfacSoap {
            let u = U { sites: layers.len() as u32, ..u0(&cfg) };
            let kernel = gpu.kernel("nn/kfac.wgsl", "kl_clip", &[])?;
            pre.dispatch(&kernel, &u, &[&dots, &params, &nu], [1, 1, 1])?;
            for (d, g) in &directions {
                Axpby { x: Some(d), scale: Some(BatchScalar::of(&nu)), ..Axpby::new(g) }.record(&mut pre)?;
            }
        }
        init.build()?.run();
        Ok(Kfac {
            cfg: cfg.clone(),
            sites,
            stats: stats.build()?,
            refresh,
            scale: if cfg.variant == KfacVariant::Ekfac { Some(scale.build()?) } else { None },
            precondition: pre.build()?,
        })
    }

    /// The settings.
    pub fn config(&self) -> &KfacConfig {
        &self.cfg
    }

    /// Record step `step`'s work (statistics, refresh and scale on their cadence, then the direction) into
    /// `encoder`, after the backward pass and before the optimizer. `lr` is the step's learning rate (KL clip).
    pub fn record(&self, encoder: &mut wgpu::CommandEncoder, step: u64, lr: f32) -> Result<()> {
        let t = (step + 1) as i32;
        let bc1 = 1.0 - self.cfg.beta1.powi(t);
        let bc2 = 1.0 - self.cfg.beta2.powi(t);
        self.precondition.set_params(&[lr, bc1, bc2, 0.0])?;
        if step.is_multiple_of(self.cfg.t_cov as u64) {
            self.stats.record(encoder);
        }
        let (t_inv, layers) = (self.cfg.t_inv as u64, self.refresh.len() as u64);
        for (k, plan) in self.refresh.iter().enumerate() {
            if step == 0 || step % t_inv == (k as u64 * t_inv / layers) % t_inv {
                plan.record(encoder);
            }
        }
        if let Some(s) = &self.scale {
            if step.is_multiple_of(self.cfg.t_scal as u64) {
                s.record(encoder);
            }
        }
        self.precondition.record(encoder);
        Ok(())
    }

    /// Every state tensor as `(name, tensor)`, for checkpoints: `kfac/<layer>/<state>`.
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        self.sites.iter().flat_map(|s| s.states().map(|(n, t)| (format!("kfac/{}/{n}", s.name), t.clone()))).collect()
    }
}
