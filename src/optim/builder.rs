//! The optimizer builder: parameters, routing rules with per-group hyper-parameters, and the one-plan step.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::gpu::{Gpu, PlanBuilder, Tensor};
use crate::optim::optimizer::{Optimizer, ParamSlot};
use crate::optim::stages::{
    diagnostics, layout_bucket, record_grad_stats, record_prologue, record_updates, schedule_free_plans, DeviceState,
    StepOptions,
};
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
        OptimizerBuilder {
            gpu: gpu.clone(),
            params: Vec::new(),
            rules: Vec::new(),
            clip: None,
            policy: NonFinitePolicy::Skip,
            timing: false,
            step_size: None,
            loss: None,
            diagnose: Vec::new(),
        }
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
        if let Some(other) = self.params.iter().find(|p| p.param.overlaps(param)) {
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
        self.rule(
            Matcher::MatricesExcept(cfg.exclude.clone()),
            Group::new(OptimizerConfig::SfNorMuon(cfg.spectral.clone())).schedule(cfg.schedule),
        );
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
            return Err(Error::InvalidArgument {
                op: "OptimizerBuilder::build",
                name: "params",
                detail: "no parameters".into(),
            });
        }
        if let Some(rule) = &self.step_size {
            rule.validate()?;
        }
        if let Some(loss) = &self.loss {
            if loss.numel() == 0 || !loss.gpu().same_device(&self.gpu) {
                return Err(Error::InvalidArgument {
                    op: "OptimizerBuilder::build",
                    name: "loss",
                    detail: "the loss must be a non-empty tensor on this device".into(),
                });
            }
        }
        if let Some(c) = self.clip {
            if !(c > 0.0 && c.is_finite()) {
                return Err(Error::InvalidArgument {
                    op: "OptimizerBuilder::build",
                    name: "clip_grad_norm",
                    detail: format!("{c} must be > 0"),
                });
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
            let r = self.rules.iter().position(|(m, _)| m.matches(&p.name, p.param.shape())).ok_or_else(|| {
                Error::InvalidArgument {
                    op: "OptimizerBuilder::build",
                    name: "rules",
                    detail: format!("no routing rule takes parameter `{}` {:?}", p.name, p.param.shape()),
                }
            })?;
            rule_of.push(r);
        }
        let mut used: Vec<usize> = rule_of.clone();
        used.sort_unstable();
        used.dedup();
        let groups: Vec<Group> = used.iter().map(|&r| self.rules[r].1.clone()).collect();
        for g in &groups {
            g.optimizer.validate()?;
            let bad =
                |detail: String| Error::InvalidArgument { op: "OptimizerBuilder::build", name: "schedule", detail };
            g.schedule.validate().map_err(bad)?;
            if let Some(m) = &g.momentum {
                m.validate().map_err(bad)?;
                if g.optimizer.is_schedule_free() {
                    return Err(Error::InvalidArgument {
                        op: "OptimizerBuilder::build",
                        name: "momentum",
                        detail: format!(
                            "{}: Schedule-Free interpolation β must stay constant (no momentum schedule)",
                            g.optimizer.name()
                        ),
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
        let state = DeviceState::new(gpu, &groups)?;
        let mut buckets = Vec::new();
        let mut slots = Vec::new();
        let mut total_chunks = 0usize;
        for (b, idx) in members.iter().enumerate() {
            buckets.push(layout_bucket(
                gpu,
                &self.params,
                &groups,
                (b, keys[b].0),
                idx,
                &mut total_chunks,
                &mut slots,
            )?);
        }
        // Reports, checkpoints and evaluation points list parameters in the order they were added.
        slots.sort_by_key(|(i, _)| *i);
        let slots: Vec<ParamSlot> = slots.into_iter().map(|(_, s)| s).collect();
        let partials = Tensor::zeros(gpu, &[4 * total_chunks])?;
        let wg = std::env::var("WGOPTIM_OPTIM_WG")
            .ok()
            .and_then(|v| v.parse::<u32>().ok())
            .filter(|w| w.is_power_of_two() && *w <= 256)
            .unwrap_or(64);

        plan.stage("grad_stats");
        record_grad_stats(&mut plan, &groups, &buckets, &partials, wg)?;
        plan.stage("prologue");
        let options = StepOptions { clip: self.clip, step_size: self.step_size, loss: self.loss.as_ref() };
        record_prologue(&mut plan, &groups, &state, &partials, total_chunks, &options)?;
        let diagnostics = diagnostics(&self.gpu, &self.params, &self.diagnose, &mut plan)?;
        plan.stage("update");
        record_updates(&mut plan, &groups, &buckets, &state.scalars, wg)?;
        let plan = plan.build()?;
        let modes = schedule_free_plans(&self.gpu, &groups, &buckets, wg)?;
        let (refreshes, post) = crate::optim::kron::plans(gpu, &groups, &buckets, &state.scalars, wg, self.timing)?;
        let mut opt = Optimizer::new(
            gpu.clone(),
            plan,
            groups,
            buckets,
            slots,
            [state.counters, state.scalars, state.gstate],
            modes,
            self.policy,
            self.clip,
            self.step_size,
        );
        opt.set_diagnostics(diagnostics);
        opt.set_refreshes(refreshes, post);
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
