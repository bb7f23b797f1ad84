//! The optimizer builder: parameters, routing rules with per-group hyper-parameters, and the one-plan step.

use bytemuck::{Pod, Zeroable};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::gpu::{Gpu, PlanBuilder, Tensor};
use crate::optim::optimizer::{Optimizer, ParamSlot};
use crate::optim::stages::{diagnostics, encode_group, grid, layout_bucket, record_muon, schedule_free_plans, GroupUniform};
use crate::optim::{MomentumSchedule, OptimizerConfig, ParamStore, Schedule, StepSizeRule};

/// Which parameters a routing rule takes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Matcher {
    /// Every parameter.
    All,
    /// Names matching a glob (`*` matches any run of characters), e.g. `blocks.*.attn.*`.
    Name(String),
    /// Exactly these names.
    Names(Vec<String>),
    /// 2-D parameters whose name matches none of the globs (e.g. exclude `*emb*`, `lm_head*`): hidden matrices.
    MatricesExcept(Vec<String>),
    /// Parameters of this rank.
    Rank(usize),
}

impl Matcher {
    fn matches(&self, name: &str, shape: &[usize]) -> bool {
        match self {
            Matcher::All => true,
            Matcher::Name(g) => glob(g, name),
            Matcher::Names(v) => v.iter().any(|n| n == name),
            Matcher::MatricesExcept(ex) => shape.len() == 2 && !ex.iter().any(|g| glob(g, name)),
            Matcher::Rank(r) => shape.len() == *r,
        }
    }
}

/// `*`-only glob match.
fn glob(pattern: &str, s: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == s;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !s.starts_with(first) || !s[first.len()..].ends_with(last) || s.len() < first.len() + last.len() {
        return false;
    }
    let mut rest = &s[first.len()..s.len() - last.len()];
    for p in &parts[1..parts.len() - 1] {
        match rest.find(p) {
            Some(i) => rest = &rest[i + p.len()..],
            None => return false,
        }
    }
    true
}

/// A parameter group: an optimizer, its learning-rate schedule and optional momentum schedule.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Group {
    /// The optimizer and its hyper-parameters.
    pub optimizer: OptimizerConfig,
    /// Learning-rate schedule.
    #[serde(default)]
    pub schedule: Schedule,
    /// β1 warmup/cooldown.
    #[serde(default)]
    pub momentum: Option<MomentumSchedule>,
}

impl Group {
    /// A group with a constant learning rate.
    pub fn new(optimizer: OptimizerConfig) -> Group {
        Group { optimizer, schedule: Schedule::Constant, momentum: None }
    }
    /// Set the learning-rate schedule.
    pub fn schedule(mut self, s: Schedule) -> Group {
        self.schedule = s;
        self
    }
    /// Set the momentum schedule.
    pub fn momentum(mut self, m: MomentumSchedule) -> Group {
        self.momentum = Some(m);
        self
    }
}

/// The FusionOpt composite's parts (see [`OptimizerBuilder::fusion_opt`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FusionOptConfig {
    /// The spectral group's optimizer.
    pub spectral: crate::optim::SfNorMuonConfig,
    /// The scalar group's optimizer.
    pub scalar: crate::optim::ScheduleFreeAdamWConfig,
    /// The step-size rule both groups share.
    pub step_size: StepSizeRule,
    /// Learning-rate schedule of both groups (e.g. `Schedule::Warmup`).
    pub schedule: Schedule,
    /// Name globs of 2-D parameters that stay in the scalar group (embeddings, output heads).
    pub exclude: Vec<String>,
}

impl Default for FusionOptConfig {
    fn default() -> Self {
        FusionOptConfig {
            spectral: Default::default(),
            scalar: Default::default(),
            step_size: StepSizeRule::default(),
            schedule: Schedule::Constant,
            exclude: vec!["*emb*".into(), "*head*".into()],
        }
    }
}

/// What a step does when a gradient holds NaN or Inf: it is always skipped on the device (parameters and state
/// untouched) and counted; `Fail` additionally makes [`Optimizer::report`] return an error.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NonFinitePolicy {
    /// Skip and count.
    #[default]
    Skip,
    /// Skip, count, and report an error.
    Fail,
}

/// A bucket's identity: group index, parameter buffer, gradient buffer.
type BucketKey = (usize, wgpu::Buffer, wgpu::Buffer);

pub(crate) struct ParamEntry {
    pub name: String,
    pub param: Tensor,
    pub grad: Tensor,
}

/// Collects parameters, routing rules and step options; [`OptimizerBuilder::build`] makes the [`Optimizer`].
pub struct OptimizerBuilder {
    gpu: Gpu,
    params: Vec<ParamEntry>,
    rules: Vec<(Matcher, Group)>,
    clip: Option<f32>,
    policy: NonFinitePolicy,
    timing: bool,
    step_size: Option<StepSizeRule>,
    loss: Option<Tensor>,
    diagnose: Vec<String>,
}

impl OptimizerBuilder {
    /// An empty builder.
    pub fn new(gpu: &Gpu) -> OptimizerBuilder {
        OptimizerBuilder { gpu: gpu.clone(), params: Vec::new(), rules: Vec::new(), clip: None, policy: NonFinitePolicy::Skip, timing: false, step_size: None, loss: None, diagnose: Vec::new() }
    }

    /// Add a parameter and its gradient (tensors or views of caller-owned buffers; same shape).
    pub fn param(&mut self, name: &str, param: &Tensor, grad: &Tensor) -> Result<&mut Self> {
        let err = |detail: String| Err(Error::InvalidArgument { op: "OptimizerBuilder::param", name: "param", detail });
        if self.params.iter().any(|p| p.name == name) {
            return err(format!("duplicate parameter name `{name}`"));
        }
        if param.shape() != grad.shape() {
            return Err(Error::Shape {
                op: "OptimizerBuilder::param",
                detail: format!("`{name}`: parameter {:?} but gradient {:?}", param.shape(), grad.shape()),
            });
        }
        if param.numel() == 0 {
            return Err(Error::ZeroSize { op: "OptimizerBuilder::param", shape: param.shape().to_vec() });
        }
        if !param.gpu().same_device(&self.gpu) || !grad.gpu().same_device(&self.gpu) {
            return Err(Error::DeviceMismatch { op: "OptimizerBuilder::param" });
        }
        if param.buffer() == grad.buffer() {
            return err(format!("`{name}`: the gradient must not live in the parameter's buffer"));
        }
        let (a0, a1) = (param.offset(), param.offset() + param.numel());
        if let Some(other) = self.params.iter().find(|p| {
            p.param.buffer() == param.buffer() && p.param.offset() < a1 && a0 < p.param.offset() + p.param.numel()
        }) {
            return err(format!("`{name}` overlaps parameter `{}` in the same buffer", other.name));
        }
        self.params.push(ParamEntry { name: name.to_string(), param: param.clone(), grad: grad.clone() });
        Ok(self)
    }

    /// Add every parameter of a [`ParamStore`].
    pub fn params_from(&mut self, store: &ParamStore) -> Result<&mut Self> {
        for item in store.iter() {
            let (name, p, g) = item?;
            self.param(name, &p, &g)?;
        }
        Ok(self)
    }

    /// A routing rule: parameters matching `m` (and no earlier rule) join `group`.
    pub fn rule(&mut self, m: Matcher, group: Group) -> &mut Self {
        self.rules.push((m, group));
        self
    }

    /// Clip the global gradient norm to `max_norm` (computed on the device, applied inside the update kernels).
    pub fn clip_grad_norm(&mut self, max_norm: f32) -> &mut Self {
        self.clip = Some(max_norm);
        self
    }

    /// Behaviour on a non-finite gradient.
    pub fn on_nonfinite(&mut self, policy: NonFinitePolicy) -> &mut Self {
        self.policy = policy;
        self
    }

    /// A step-size rule shared by all groups, fed each step by the loss in `loss[0]` (a device tensor the
    /// training engine writes; no readback). A non-finite loss skips the step like a non-finite gradient.
    pub fn step_size(&mut self, rule: StepSizeRule, loss: &Tensor) -> &mut Self {
        self.step_size = Some(rule);
        self.loss(loss)
    }

    /// The loss of the current step in `loss[0]` (a device tensor; no readback), for optimizers that take it
    /// (ScheduleFree+) and step-size rules. A non-finite loss skips the step like a non-finite gradient.
    pub fn loss(&mut self, loss: &Tensor) -> &mut Self {
        self.loss = Some(loss.clone());
        self
    }

    /// The FusionOpt composite (seed 003, decisions §10–11): hidden 2-D matrices (names matching none of
    /// `cfg.exclude`) → SF-NorMuon, everything else → Schedule-Free AdamW, both scaled by one shared
    /// `polyak_clamp` step size fed by `loss`. Adds two routing rules after any already given.
    pub fn fusion_opt(&mut self, cfg: &FusionOptConfig, loss: &Tensor) -> &mut Self {
        self.rule(Matcher::MatricesExcept(cfg.exclude.clone()), Group::new(OptimizerConfig::SfNorMuon(cfg.spectral.clone())).schedule(cfg.schedule));
        self.rule(Matcher::All, Group::new(OptimizerConfig::ScheduleFreeAdamW(cfg.scalar)).schedule(cfg.schedule));
        self.step_size(cfg.step_size, loss)
    }

    /// Keep each step's update of these matrices for [`Optimizer::update_condition_numbers`] (the FISMO paper's
    /// κ analysis); costs one copy of each per step.
    pub fn diagnose(&mut self, names: &[&str]) -> &mut Self {
        self.diagnose.extend(names.iter().map(|n| n.to_string()));
        self
    }

    /// Time the stages (grad statistics, prologue, updates) with timestamp queries where supported.
    pub fn with_timing(&mut self, on: bool) -> &mut Self {
        self.timing = on;
        self
    }

    /// Options that do not depend on routing.
    fn check_options(&self) -> Result<()> {
        if self.params.is_empty() {
            return Err(Error::InvalidArgument { op: "OptimizerBuilder::build", name: "params", detail: "no parameters".into() });
        }
        if let Some(rule) = &self.step_size {
            rule.validate()?;
        }
        if let Some(loss) = &self.loss {
            if loss.numel() == 0 || !loss.gpu().same_device(&self.gpu) {
                return Err(Error::InvalidArgument { op: "OptimizerBuilder::build", name: "loss", detail: "the loss must be a non-empty tensor on this device".into() });
            }
        }
        if let Some(c) = self.clip {
            if !(c > 0.0 && c.is_finite()) {
                return Err(Error::InvalidArgument { op: "OptimizerBuilder::build", name: "clip_grad_norm", detail: format!("{c} must be > 0") });
            }
        }
        Ok(())
    }

    /// Route each parameter to the first matching rule; only rules that take something become groups, each
    /// validated. Returns the groups and each parameter's group index.
    fn route(&self) -> Result<(Vec<Group>, Vec<usize>)> {
        // Route each parameter to the first matching rule; only rules that take something become groups.
        let mut rule_of = Vec::with_capacity(self.params.len());
        for p in &self.params {
            let r = self.rules.iter().position(|(m, _)| m.matches(&p.name, p.param.shape())).ok_or_else(|| Error::InvalidArgument {
                op: "OptimizerBuilder::build",
                name: "rules",
                detail: format!("no routing rule takes parameter `{}` {:?}", p.name, p.param.shape()),
            })?;
            rule_of.push(r);
        }
        let mut used: Vec<usize> = rule_of.clone();
        used.sort_unstable();
        used.dedup();
        let groups: Vec<Group> = used.iter().map(|&r| self.rules[r].1.clone()).collect();
        for g in &groups {
            g.optimizer.validate()?;
            let bad = |detail: String| Error::InvalidArgument { op: "OptimizerBuilder::build", name: "schedule", detail };
            g.schedule.validate().map_err(bad)?;
            if let Some(m) = &g.momentum {
                m.validate().map_err(bad)?;
                if g.optimizer.is_schedule_free() {
                    return Err(Error::InvalidArgument {
                        op: "OptimizerBuilder::build",
                        name: "momentum",
                        detail: format!("{}: Schedule-Free interpolation β must stay constant (no momentum schedule)", g.optimizer.name()),
                    });
                }
                if g.optimizer.kernel().beta1 == 0.0 {
                    return Err(Error::InvalidArgument {
                        op: "OptimizerBuilder::build",
                        name: "momentum",
                        detail: format!("{}: a momentum schedule needs momentum > 0", g.optimizer.name()),
                    });
                }
            }
        }
        if self.loss.is_none() {
            if let Some(g) = groups.iter().find(|g| g.optimizer.takes_loss()) {
                return Err(Error::InvalidArgument {
                    op: "OptimizerBuilder::build",
                    name: "loss",
                    detail: format!("{} takes the loss: give it with OptimizerBuilder::loss", g.optimizer.name()),
                });
            }
        }
        let group_of: Vec<usize> = rule_of.iter().map(|r| used.iter().position(|u| u == r).unwrap_or(0)).collect();
        Ok((groups, group_of))
    }

    /// Buckets: parameters of the same group in the same parameter and gradient buffers.
    fn buckets(&self, group_of: &[usize]) -> (Vec<BucketKey>, Vec<Vec<usize>>) {
        let mut keys: Vec<BucketKey> = Vec::new();
        let mut members: Vec<Vec<usize>> = Vec::new();
        for (i, p) in self.params.iter().enumerate() {
            let key = (group_of[i], p.param.buffer().clone(), p.grad.buffer().clone());
            match keys.iter().position(|k| *k == key) {
                Some(b) => members[b].push(i),
                None => {
                    keys.push(key);
                    members.push(vec![i]);
                }
            }
        }
        (keys, members)
    }

    /// Route, bucket, allocate state, and build the one-submit step plan.
    pub fn build(&self) -> Result<Optimizer> {
        self.check_options()?;
        let (groups, group_of) = self.route()?;

        let (keys, members) = self.buckets(&group_of);
        let gpu = &self.gpu;
        let mut plan = PlanBuilder::new(gpu).with_timing(self.timing);
        let counters = Tensor::zeros(gpu, &[2 + groups.len()])?;
        let scalars = Tensor::zeros(gpu, &[8 + 16 * groups.len()])?;
        let group_data: Vec<GroupUniform> = groups.iter().map(encode_group).collect();
        let group_buf = Tensor::zeros(gpu, &[groups.len() * 32])?;
        group_buf.write(bytemuck::cast_slice(&group_data))?;
        let gstate = Tensor::zeros(gpu, &[groups.len() * 4 + 8])?;
        // Per group [lr_max, weight_sum, 0, 0] (lr_max starts at −1, or at eps for ScheduleFree+); then the Polyak
        // rule's [loss EMA, norm EMA, ratio, 0] and ScheduleFree+'s [e, 0, 0, 0].
        let mut init: Vec<f32> = groups
            .iter()
            .flat_map(|g| match g.optimizer {
                OptimizerConfig::ScheduleFreePlus(c) => [c.eps, 0.0, 0.0, 0.0],
                _ => [-1.0, 0.0, 0.0, 0.0],
            })
            .collect();
        init.extend([0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0]);
        gstate.write(&init)?;

        let mut buckets = Vec::new();
        let mut slots = Vec::new();
        let mut total_chunks = 0usize;
        for (b, idx) in members.iter().enumerate() {
            buckets.push(layout_bucket(gpu, &self.params, &groups, (b, keys[b].0), idx, &mut total_chunks, &mut slots)?);
        }
        // Reports, checkpoints and evaluation points list parameters in the order they were added.
        slots.sort_by_key(|(i, _)| *i);
        let slots: Vec<ParamSlot> = slots.into_iter().map(|(_, s)| s).collect();
        let partials = Tensor::zeros(gpu, &[4 * total_chunks])?;
        let wg = std::env::var("WGOPTIM_OPTIM_WG").ok().and_then(|v| v.parse::<u32>().ok()).filter(|w| w.is_power_of_two() && *w <= 256).unwrap_or(64);
        let types = |vec4: bool| -> [(&'static str, String); 4] {
            if vec4 {
                [("T", "vec4<f32>".into()), ("U", "vec4<u32>".into()), ("WG", wg.to_string()), ("TOTAL", "dot(v, vec4<f32>(1.0))".into())]
            } else {
                [("T", "f32".into()), ("U", "u32".into()), ("WG", wg.to_string()), ("TOTAL", "v".into())]
            }
        };

        plan.stage("grad_stats");
        for b in &buckets {
            for t in &b.tables {
                // ScheduleFree+ buckets also sum g·(z − x) for the Polyak step's correction.
                let inner = matches!(groups[b.group].optimizer, OptimizerConfig::ScheduleFreePlus(_));
                let mut defines = types(t.vec4).to_vec();
                defines.push(("INNER", (inner as u32).to_string()));
                let stats = gpu.kernel("optim/grad_stats.wgsl", "main", &defines)?;
                let (gx, gy) = grid(t.chunks);
                let u: [u32; 4] = [t.chunks as u32, t.chunk_base as u32, gx, 0];
                let mut tensors = vec![&t.table, &b.grad, &partials];
                if inner {
                    tensors.extend([&b.states[0].1, &b.states[1].1]);
                }
                plan.dispatch(&stats, &u, &tensors, [gx, gy, 1])?;
            }
        }
        plan.stage("prologue");
        let sfp_group = groups.iter().position(|g| matches!(g.optimizer, OptimizerConfig::ScheduleFreePlus(_)));
        let flag = |b: bool| (b as u32).to_string();
        let prologue = gpu.kernel(
            "optim/prologue.wgsl",
            "main",
            &[("POLYAK", flag(self.step_size.is_some())), ("SFPLUS", flag(sfp_group.is_some())), ("LOSS", flag(self.loss.is_some()))],
        )?;
        #[repr(C)]
        #[derive(Clone, Copy, Pod, Zeroable)]
        struct P {
            groups: u32,
            partials: u32,
            max_norm: f32,
            clip: u32,
            loss_off: u32,
            beta: f32,
            rmin: f32,
            rmax: f32,
            sfp_group: u32,
            _p: [u32; 3],
        }
        let (beta, rmin, rmax) = match self.step_size {
            Some(StepSizeRule::PolyakClamp { beta, min, max }) => (beta, min, max),
            None => (0.0, 1.0, 1.0),
        };
        let pu = P {
            groups: groups.len() as u32,
            partials: total_chunks as u32,
            max_norm: self.clip.unwrap_or(0.0),
            clip: self.clip.is_some() as u32,
            loss_off: self.loss.as_ref().map_or(0, |l| l.offset() as u32),
            beta,
            rmin,
            rmax,
            sfp_group: sfp_group.unwrap_or(0) as u32,
            _p: [0; 3],
        };
        let mut tensors = vec![&group_buf, &partials, &counters, &scalars, &gstate];
        if let Some(loss) = &self.loss {
            tensors.push(loss);
        }
        plan.dispatch(&prologue, &pu, &tensors, [1, 1, 1])?;
        let diagnostics = diagnostics(&self.gpu, &self.params, &self.diagnose, &mut plan)?;
        plan.stage("update");
        for b in &buckets {
            let spec = groups[b.group].optimizer.kernel();
            if let (OptimizerConfig::Adafactor(c), Some((table, count))) = (&groups[b.group].optimizer, &b.tensor_table) {
                let kernel = gpu.kernel("optim/adafactor.wgsl", "main", &[("MOMENTUM", (c.beta1.is_some() as u32).to_string())])?;
                #[repr(C)]
                #[derive(Clone, Copy, Pod, Zeroable)]
                struct A {
                    tensors: u32,
                    group: u32,
                    flags: u32,
                    _p: u32,
                    h: [f32; 4],
                    beta1: f32,
                    wd: f32,
                    _q: [f32; 2],
                }
                let u = A { tensors: *count as u32, group: b.group as u32, flags: spec.flags, _p: 0, h: spec.h, beta1: spec.beta1, wd: c.weight_decay, _q: [0.0; 2] };
                let mut tensors: Vec<&Tensor> = vec![table, &scalars, &b.grad, &b.param];
                tensors.extend(b.states.iter().map(|(_, s)| s));
                plan.dispatch(&kernel, &u, &tensors, [*count as u32, 1, 1])?;
                continue;
            }
            if let (Some(c), Some(parts)) = (groups[b.group].optimizer.muon_pipeline(), &b.muon) {
                record_muon(&mut plan, &c, &groups[b.group].optimizer, b, parts, &scalars, wg)?;
                continue;
            }
            let n = spec.states.len();
            let flag = |v: bool| (if v { "1" } else { "0" }).to_string();
            for t in &b.tables {
                let mut defines = vec![
                    (spec.define, "1".to_string()),
                    ("STATES_1", flag(n == 1)),
                    ("STATES_2", flag(n == 2)),
                    ("STATES_3", flag(n == 3)),
                    ("STATES_4", flag(n == 4)),
                    ("AMSGRAD", flag(spec.define == "OPT_ADAMW" && spec.flags & 1 == 1)),
                ];
                defines.extend(types(t.vec4));
                let kernel = gpu.kernel("optim/update.wgsl", "main", &defines)?;
                let (gx, gy) = grid(t.chunks);
                #[repr(C)]
                #[derive(Clone, Copy, Pod, Zeroable)]
                struct Upd {
                    chunks: u32,
                    group: u32,
                    groups_x: u32,
                    flags: u32,
                    h: [f32; 4],
                }
                let u = Upd { chunks: t.chunks as u32, group: b.group as u32, groups_x: gx, flags: spec.flags, h: spec.h };
                let mut tensors: Vec<&Tensor> = vec![&t.table, &scalars, &b.grad, &b.param];
                tensors.extend(b.states.iter().map(|(_, s)| s));
                plan.dispatch(&kernel, &u, &tensors, [gx, gy, 1])?;
            }
        }
        let plan = plan.build()?;
        let modes = schedule_free_plans(&self.gpu, &groups, &buckets, wg)?;
        let mut opt = Optimizer::new(gpu.clone(), plan, groups, buckets, slots, [counters, scalars, gstate], modes, self.policy, self.clip, self.step_size);
        opt.set_diagnostics(diagnostics);
        Ok(opt)
    }
}

#[cfg(test)]
mod tests {
    use super::glob;

    #[test]
    fn globs() {
        assert!(glob("blocks.*.attn.*", "blocks.3.attn.qkv"));
        assert!(glob("*emb*", "tok_emb"));
        assert!(!glob("*emb*", "lm_head"));
        assert!(glob("a*", "a"));
        assert!(!glob("ab*ba", "aba"));
        assert!(glob("exact", "exact") && !glob("exact", "exactly"));
    }
}
