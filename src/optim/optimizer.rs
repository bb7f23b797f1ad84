//! [`Optimizer`]: the built step (one submit, no readback), asynchronous reports, state access and checkpoints.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::gpu::{Gpu, Plan, Tensor};
use crate::optim::{Group, NonFinitePolicy, StepSizeRule};

const F32: safetensors::Dtype = safetensors::Dtype::F32;

/// A bucket's chunks of (param offset, grad offset, state offset, length), in vec4 units when `vec4`.
pub(crate) struct ChunkTable {
    pub vec4: bool,
    pub chunks: usize,
    pub chunk_base: usize,
    pub table: Tensor,
    /// Per-chunk learning-rate multipliers (Muon's shape convention).
    pub scale: Option<Tensor>,
}

/// Scratch of the optimizers that work on stacks of matrices (the Muon and Kronecker families): their input (the
/// Newton–Schulz input, or the gathered gradient) and output (the direction) in the bucket's state layout, and
/// the same-shape stacks `(state offset, count, rows, cols, row-state offset)`, each processed by batched calls.
pub(crate) struct StackParts {
    pub ns_in: Tensor,
    pub ns_out: Tensor,
    pub stacks: Vec<(usize, usize, usize, usize, usize)>,
    /// The parameters' original shape for each stack.
    pub stack_shapes: Vec<Vec<usize>>,
}

pub(crate) struct Bucket {
    pub group: usize,
    pub tables: Vec<ChunkTable>,
    /// Per-tensor table (and its row count) for optimizers that work tensor by tensor (Adafactor).
    pub tensor_table: Option<(Tensor, usize)>,
    pub stack: Option<StackParts>,
    /// The Kronecker family's factor states per stack.
    pub kron: Option<crate::optim::kron::KronParts>,
    pub grad: Tensor,
    pub param: Tensor,
    pub states: Vec<(String, Tensor)>,
}

impl Bucket {
    /// The bucket state buffer called `name`.
    pub(crate) fn state(&self, name: &str) -> Result<&Tensor> {
        self.states
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, t)| t)
            .ok_or_else(|| Error::Device(format!("bucket without state `{name}`")))
    }
}

/// Where one state tensor of a parameter lives: a bucket state buffer, an element offset and a shape.
pub(crate) struct StateView {
    pub name: String,
    pub buffer: usize,
    pub offset: usize,
    pub shape: Vec<usize>,
}

pub(crate) struct ParamSlot {
    pub name: String,
    pub param: Tensor,
    pub group: usize,
    pub bucket: usize,
    /// Offset of the parameter's range in the bucket's elementwise state layout (evaluation points).
    pub state_offset: usize,
    pub states: Vec<StateView>,
}

/// The Schedule-Free mode switches and evaluation point (see [`Optimizer::eval`]).
pub(crate) struct ModePlans {
    pub to_eval: Plan,
    pub to_train: Plan,
    pub eval_point: Plan,
    /// (bucket index, buffer holding that bucket's evaluation point in state layout)
    pub outs: Vec<(usize, Tensor)>,
}

/// The update diagnostics: a plan computing each chosen matrix's update Gram eigenvalues, and where they land.
pub(crate) struct Diagnostics {
    pub plan: Plan,
    pub entries: Vec<(String, Tensor)>,
}

/// What the device says about the steps so far (read asynchronously, never inside a step).
#[derive(Clone, Debug, PartialEq)]
pub struct StepReport {
    /// Steps submitted.
    pub attempted: u64,
    /// Steps skipped for a non-finite gradient.
    pub skipped: u64,
    /// Steps applied, per group.
    pub applied: Vec<u64>,
    /// Global gradient norm of the last step (NaN if it was skipped).
    pub grad_norm: f32,
    /// Learning rate each group used in the last step.
    pub lr: Vec<f32>,
    /// The shared step-size multiplier of the last step (1 without a step-size rule).
    pub step_size_ratio: f32,
}

/// A built optimizer: parameter groups routed to optimizers, state on the device, and the step plan.
pub struct Optimizer {
    gpu: Gpu,
    plan: Plan,
    groups: Vec<Group>,
    buckets: Vec<Bucket>,
    slots: Vec<ParamSlot>,
    counters: Tensor,
    scalars: Tensor,
    gstate: Tensor,
    modes: Option<ModePlans>,
    eval_mode: AtomicBool,
    policy: NonFinitePolicy,
    clip: Option<f32>,
    step_size: Option<StepSizeRule>,
    diagnostics: Option<Diagnostics>,
    /// The whitening optimizers' refreshes, run after the step plan on their cadence.
    refreshes: Vec<crate::optim::kron::Refresh>,
    /// Shampoo's direction, after the refreshes.
    post: Option<Plan>,
    /// Step calls so far (the refresh cadence; restored from the checkpoint's attempted-step counter).
    calls: AtomicU64,
}

#[derive(Serialize, Deserialize, PartialEq)]
struct GroupMeta {
    #[serde(flatten)]
    group: Group,
    params: Vec<String>,
}

/// When an optimizer's refreshes run ([`Optimizer::refresh_cadence`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RefreshCadence {
    /// Calls after which every bucket has made one refresh past its cold first one (staggered offsets included).
    pub warm_after: u64,
    /// Calls after which the pattern of refresh steps repeats: the least common multiple of the buckets' periods.
    pub period: u64,
}

/// Least common multiple of two positive numbers; `None` on overflow.
fn lcm(a: u64, b: u64) -> Option<u64> {
    let (mut x, mut y) = (a, b);
    while y != 0 {
        (x, y) = (y, x % y);
    }
    (a / x).checked_mul(b)
}

const FORMAT: &str = "wgoptim-checkpoint-1";

impl Optimizer {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        gpu: Gpu,
        plan: Plan,
        groups: Vec<Group>,
        buckets: Vec<Bucket>,
        slots: Vec<ParamSlot>,
        [counters, scalars, gstate]: [Tensor; 3],
        modes: Option<ModePlans>,
        policy: NonFinitePolicy,
        clip: Option<f32>,
        step_size: Option<StepSizeRule>,
    ) -> Optimizer {
        Optimizer {
            gpu,
            plan,
            groups,
            buckets,
            slots,
            counters,
            scalars,
            gstate,
            modes,
            eval_mode: AtomicBool::new(false),
            policy,
            clip,
            step_size,
            diagnostics: None,
            refreshes: Vec::new(),
            post: None,
            calls: AtomicU64::new(0),
        }
    }

    pub(crate) fn set_refreshes(&mut self, refreshes: Vec<crate::optim::kron::Refresh>, post: Option<Plan>) {
        self.refreshes = refreshes;
        self.post = post;
    }

    /// Record one step: the step plan, the refreshes due at this call, Shampoo's direction.
    fn record_step(&self, encoder: &mut wgpu::CommandEncoder) {
        self.plan.record(encoder);
        self.record_after_plan(encoder);
    }

    /// What follows the step plan within a step (counting the call): the whitening refreshes due at this call
    /// and Shampoo's direction.
    fn record_after_plan(&self, encoder: &mut wgpu::CommandEncoder) {
        self.record_refreshes(encoder);
        if let Some(p) = &self.post {
            p.record(encoder);
        }
    }

    /// The whitening refreshes due at this call, counting the call.
    fn record_refreshes(&self, encoder: &mut wgpu::CommandEncoder) {
        let call = self.calls.fetch_add(1, Ordering::Relaxed);
        for r in &self.refreshes {
            if let Some(p) = r.due(call) {
                p.record(encoder);
            }
        }
    }

    /// One step with device time per stage, waiting for it (refused in eval mode): the step plan's stages, then
    /// `direction` for the plan that follows the refreshes (Shampoo's and PSGD-Kron's directions and their
    /// apply; absent for other optimizers). The refreshes due at this call run between the two, untimed. Needs
    /// [`crate::optim::OptimizerBuilder::with_timing`] and an adapter with TIMESTAMP_QUERY.
    pub async fn timed_step(&self) -> Result<Vec<(String, f64)>> {
        self.check_train("Optimizer::timed_step")?;
        let mut stages = self.plan.run_timed().await?;
        let mut encoder = self.gpu.device().create_command_encoder(&Default::default());
        self.record_refreshes(&mut encoder);
        self.gpu.submit([encoder.finish()]);
        if let Some(p) = &self.post {
            stages.extend(p.run_timed().await?);
        }
        Ok(stages)
    }

    /// The cadence of the whitening refreshes (SOAP, Shampoo, SPlus, SPA, amortized FISMO), for timing steps
    /// fairly: a mean over fewer steps than a period, or over steps that include the cold first refreshes, is
    /// not what training sees. `None` without refreshes, with PSGD-Kron's (not periodic) schedule, or when the
    /// periods' pattern repeats only after more than 2⁶⁴ calls or a refresh's first two after more than 2²⁶.
    pub fn refresh_cadence(&self) -> Option<RefreshCadence> {
        let mut out: Option<RefreshCadence> = None;
        for r in &self.refreshes {
            // `warm`: the call of the refresh's first warm run, so `warm + 1` calls cover it.
            let (warm, period) = r.cadence()?;
            out = Some(match out {
                None => RefreshCadence { warm_after: warm + 1, period },
                Some(c) => RefreshCadence { warm_after: c.warm_after.max(warm + 1), period: lcm(c.period, period)? },
            });
        }
        out
    }

    /// Dispatches of the step plan plus Shampoo's direction plan, and of all SOAP/Shampoo refreshes together (the
    /// most a refresh step can add; 0 without).
    pub fn dispatch_counts(&self) -> (usize, usize) {
        let step = self.plan.dispatch_count() + self.post.as_ref().map_or(0, Plan::dispatch_count);
        (step, self.refreshes.iter().map(|r| r.dispatch_count()).sum())
    }

    pub(crate) fn set_diagnostics(&mut self, d: Option<Diagnostics>) {
        self.diagnostics = d;
    }

    /// The spectral condition number κ = σ_max/σ_min of the last step's update of each matrix named in
    /// [`crate::optim::OptimizerBuilder::diagnose`] (∞ when the update is rank-deficient, NaN before any applied
    /// step). Read asynchronously; call after a step and before the next.
    pub async fn update_condition_numbers(&self) -> Result<Vec<(String, f32)>> {
        let d = self.diagnostics.as_ref().ok_or_else(|| Error::InvalidArgument {
            op: "Optimizer::update_condition_numbers",
            name: "diagnose",
            detail: "no matrices were chosen with OptimizerBuilder::diagnose".into(),
        })?;
        // Before the first step the snapshot holds nothing: there is no update to describe.
        let attempted = self.counters.read().await?.get(1).map_or(0, |v| v.to_bits());
        if attempted == 0 {
            return Ok(d.entries.iter().map(|(n, _)| (n.clone(), f32::NAN)).collect());
        }
        d.plan.run();
        let mut out = Vec::with_capacity(d.entries.len());
        for (name, vals) in &d.entries {
            let v = vals.read().await?;
            let (lo, hi) = (v.first().copied().unwrap_or(0.0), v.last().copied().unwrap_or(0.0));
            let kappa = if hi <= 0.0 {
                f32::NAN
            } else if lo <= 0.0 {
                f32::INFINITY
            } else {
                (hi / lo).sqrt()
            };
            out.push((name.clone(), kappa));
        }
        Ok(out)
    }

    fn check_train(&self, op: &'static str) -> Result<()> {
        if self.eval_mode.load(Ordering::Relaxed) {
            return Err(Error::InvalidArgument {
                op,
                name: "mode",
                detail: "the optimizer is in eval mode: call train() first".into(),
            });
        }
        Ok(())
    }

    /// Run one step: exactly one submit, no CPU↔GPU synchronization. Refused in eval mode.
    pub fn step(&self) -> Result<wgpu::SubmissionIndex> {
        self.check_train("Optimizer::step")?;
        if self.refreshes.is_empty() && self.post.is_none() {
            self.calls.fetch_add(1, Ordering::Relaxed);
            return Ok(self.plan.run());
        }
        let mut encoder = self.gpu.device().create_command_encoder(&Default::default());
        self.record_step(&mut encoder);
        Ok(self.gpu.submit([encoder.finish()]))
    }

    /// Record one step into a caller's encoder (embedding). Refused in eval mode.
    pub fn record(&self, encoder: &mut wgpu::CommandEncoder) -> Result<()> {
        self.check_train("Optimizer::record")?;
        self.record_step(encoder);
        Ok(())
    }

    /// Whether the parameters currently hold the evaluation point (Schedule-Free x).
    pub fn is_eval(&self) -> bool {
        self.eval_mode.load(Ordering::Relaxed)
    }

    fn check_modes(&self, op: &'static str) -> Result<()> {
        if let Some(g) = self.groups.iter().find(|g| g.optimizer.keeps_x()) {
            return Err(Error::InvalidArgument {
                op,
                name: "mode",
                detail: format!(
                    "{} keeps x as a state: read it with eval_params() (mode switching is not offered)",
                    g.optimizer.name()
                ),
            });
        }
        Ok(())
    }

    /// Switch Schedule-Free parameters to the evaluation point x (`p ← lerp(p, z, 1 − 1/β)`); a no-op for other
    /// optimizers and when already in eval mode. One submit. Refused for ScheduleFree+ (see [`Optimizer::eval_params`]).
    pub fn eval(&self) -> Result<()> {
        self.check_modes("Optimizer::eval")?;
        if !self.eval_mode.swap(true, Ordering::Relaxed) {
            if let Some(m) = &self.modes {
                m.to_eval.run();
            }
        }
        Ok(())
    }

    /// Switch back to training (`p ← lerp(p, z, 1 − β)`, x → y); a no-op when already training.
    pub fn train(&self) -> Result<()> {
        self.check_modes("Optimizer::train")?;
        if self.eval_mode.swap(false, Ordering::Relaxed) {
            if let Some(m) = &self.modes {
                m.to_train.run();
            }
        }
        Ok(())
    }

    /// The evaluation point of every parameter without switching modes: Schedule-Free x for Schedule-Free
    /// groups (computed from y and z in training mode), the `x` state for ScheduleFree+ and SF-NorMuon, the
    /// parameter itself otherwise. Async readback.
    pub async fn eval_params(&self) -> Result<Vec<(String, Vec<f32>)>> {
        let sf_outs = match (&self.modes, self.is_eval()) {
            (Some(m), false) => {
                m.eval_point.run();
                Some(&m.outs)
            }
            _ => None,
        };
        let mut out = Vec::with_capacity(self.slots.len());
        for s in &self.slots {
            let point = sf_outs.and_then(|o| o.iter().find(|(b, _)| *b == s.bucket));
            let plus = self.groups[s.group].optimizer.keeps_x();
            let v = match point {
                Some((_, t)) => {
                    Tensor::from_buffer(&self.gpu, t.buffer().clone(), s.state_offset, s.param.shape())?.read().await?
                }
                None if plus => self.state(&s.name, "x")?.read().await?,
                None => s.param.read().await?,
            };
            out.push((s.name.clone(), v));
        }
        Ok(out)
    }

    /// The underlying plan (dispatch count, stage names, timed runs).
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// The groups, in the order the counters and reports use.
    pub fn groups(&self) -> &[Group] {
        &self.groups
    }

    /// Number of buckets (each is one dispatch of the update stage).
    pub fn bucket_count(&self) -> usize {
        self.buckets.len()
    }

    /// Parameter names in the order they were added.
    pub fn param_names(&self) -> impl Iterator<Item = &str> {
        self.slots.iter().map(|s| s.name.as_str())
    }

    /// The group index a parameter was routed to.
    pub fn group_of(&self, name: &str) -> Result<usize> {
        self.slot(name).map(|s| s.group)
    }

    fn slot(&self, name: &str) -> Result<&ParamSlot> {
        self.slots.iter().find(|s| s.name == name).ok_or_else(|| Error::InvalidArgument {
            op: "Optimizer",
            name: "name",
            detail: format!("no parameter `{name}`"),
        })
    }

    /// The names of the state tensors a parameter has (e.g. `exp_avg`, `exp_avg_sq`).
    pub fn state_names(&self, name: &str) -> Result<Vec<String>> {
        let s = self.slot(name)?;
        Ok(s.states.iter().map(|v| v.name.clone()).collect())
    }

    /// A view of one state tensor of a parameter, shaped like the parameter.
    pub fn state(&self, name: &str, state: &str) -> Result<Tensor> {
        let s = self.slot(name)?;
        let v = s.states.iter().find(|v| v.name == state).ok_or_else(|| Error::InvalidArgument {
            op: "Optimizer::state",
            name: "state",
            detail: format!("`{name}` has no state `{state}`"),
        })?;
        let buffer = self.buckets[s.bucket].states[v.buffer].1.buffer().clone();
        Tensor::from_buffer(&self.gpu, buffer, v.offset, &v.shape)
    }

    /// Counters and last-step scalars, read back asynchronously. With [`NonFinitePolicy::Fail`] a skipped step
    /// makes this an error.
    pub async fn report(&self) -> Result<StepReport> {
        let c: Vec<u32> = self.counters.read().await?.iter().map(|v| v.to_bits()).collect();
        let s = self.scalars.read().await?;
        let report = StepReport {
            attempted: c[1] as u64,
            skipped: c[0] as u64,
            applied: c[2..].iter().map(|&v| v as u64).collect(),
            grad_norm: s[2],
            lr: (0..self.groups.len()).map(|g| s[8 + 16 * g]).collect(),
            step_size_ratio: s[4],
        };
        if self.policy == NonFinitePolicy::Fail && report.skipped > 0 {
            return Err(Error::NonFiniteGradient { skipped: report.skipped });
        }
        Ok(report)
    }

    fn metadata(&self) -> Result<String> {
        let metas: Vec<GroupMeta> = self
            .groups
            .iter()
            .enumerate()
            .map(|(g, group)| GroupMeta {
                group: group.clone(),
                params: self.slots.iter().filter(|s| s.group == g).map(|s| s.name.clone()).collect(),
            })
            .collect();
        serde_json::to_string(&metas).map_err(|e| Error::Checkpoint(e.to_string()))
    }

    /// Parameters, every state tensor and the step counters as safetensors bytes, with a metadata block
    /// (format, wgoptim version, groups with their optimizer configs and parameter names, step options).
    pub async fn save(&self) -> Result<Vec<u8>> {
        let mut blobs: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
        for s in &self.slots {
            let shape = s.param.shape().to_vec();
            blobs.push((
                format!("param/{}", s.name),
                safetensors::Dtype::F32,
                shape.clone(),
                f32_bytes(s.param.read().await?),
            ));
            for view in &s.states {
                let v = self.state(&s.name, &view.name)?.read().await?;
                blobs.push((
                    format!("state/{}/{}", s.name, view.name),
                    safetensors::Dtype::F32,
                    view.shape.clone(),
                    f32_bytes(v),
                ));
            }
        }
        let counters: Vec<u8> = self.counters.read().await?.iter().flat_map(|v| v.to_bits().to_le_bytes()).collect();
        blobs.push(("counters".into(), safetensors::Dtype::U32, vec![self.counters.numel()], counters));
        blobs.push((
            "group_state".into(),
            safetensors::Dtype::F32,
            vec![self.gstate.numel()],
            f32_bytes(self.gstate.read().await?),
        ));
        let views = blobs
            .iter()
            .map(|(n, d, s, b)| {
                Ok((
                    n.clone(),
                    safetensors::tensor::TensorView::new(*d, s.clone(), b)
                        .map_err(|e| Error::Checkpoint(e.to_string()))?,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        let meta = HashMap::from([
            ("format".to_string(), FORMAT.to_string()),
            ("wgoptim_version".to_string(), env!("CARGO_PKG_VERSION").to_string()),
            ("groups".to_string(), self.metadata()?),
            (
                "clip_grad_norm".to_string(),
                serde_json::to_string(&self.clip).map_err(|e| Error::Checkpoint(e.to_string()))?,
            ),
            (
                "nonfinite".to_string(),
                serde_json::to_string(&self.policy).map_err(|e| Error::Checkpoint(e.to_string()))?,
            ),
            ("mode".to_string(), if self.is_eval() { "eval" } else { "train" }.to_string()),
            (
                "step_size".to_string(),
                serde_json::to_string(&self.step_size).map_err(|e| Error::Checkpoint(e.to_string()))?,
            ),
        ]);
        safetensors::serialize(views, Some(meta)).map_err(|e| Error::Checkpoint(e.to_string()))
    }

    /// Restore a checkpoint from [`Optimizer::save`]. Everything is checked first (format, groups and configs,
    /// every tensor's presence, dtype and shape, no extra tensors); on any mismatch nothing is written.
    pub fn load(&self, bytes: &[u8]) -> Result<()> {
        let st = safetensors::SafeTensors::deserialize(bytes)
            .map_err(|e| Error::Checkpoint(format!("unreadable or truncated file: {e}")))?;
        let (_, header) =
            safetensors::SafeTensors::read_metadata(bytes).map_err(|e| Error::Checkpoint(e.to_string()))?;
        let meta = header.metadata().clone().unwrap_or_default();
        let field = |k: &str| meta.get(k).cloned().ok_or_else(|| Error::Checkpoint(format!("metadata has no `{k}`")));
        if field("format")? != FORMAT {
            return Err(Error::Checkpoint(format!("not a {FORMAT} file (format `{}`)", field("format")?)));
        }
        let saved: Vec<GroupMeta> = serde_json::from_str(&field("groups")?)
            .map_err(|e| Error::Checkpoint(format!("bad groups metadata: {e}")))?;
        let ours: Vec<GroupMeta> =
            serde_json::from_str(&self.metadata()?).map_err(|e| Error::Checkpoint(e.to_string()))?;
        if saved.len() != ours.len() {
            return Err(Error::Checkpoint(format!("{} groups saved, this optimizer has {}", saved.len(), ours.len())));
        }
        for (g, (a, b)) in saved.iter().zip(&ours).enumerate() {
            if a.params != b.params {
                return Err(Error::Checkpoint(format!(
                    "group {g}: saved parameters {:?}, here {:?}",
                    a.params, b.params
                )));
            }
            if a.group != b.group {
                return Err(Error::Checkpoint(format!(
                    "group {g}: saved config {} differs from this optimizer's {}",
                    serde_json::to_string(&a.group).unwrap_or_default(),
                    serde_json::to_string(&b.group).unwrap_or_default()
                )));
            }
        }
        let mut writes: Vec<(Tensor, Vec<f32>)> = Vec::new();
        let ours_rule = serde_json::to_string(&self.step_size).map_err(|e| Error::Checkpoint(e.to_string()))?;
        if field("step_size")? != ours_rule {
            return Err(Error::Checkpoint(format!(
                "saved step-size rule {} differs from this optimizer's {ours_rule}",
                field("step_size")?
            )));
        }
        let mut expected = vec!["counters".to_string(), "group_state".to_string()];
        let eval = match meta.get("mode").map(String::as_str) {
            Some("eval") => true,
            Some("train") => false,
            other => return Err(Error::Checkpoint(format!("bad or missing `mode` metadata: {other:?}"))),
        };
        let gs = checked_tensor(&st, "group_state", F32, &[self.gstate.numel()], Error::Checkpoint)?;
        writes.push((self.gstate.clone(), bytemuck::pod_collect_to_vec(gs.data())));
        for s in &self.slots {
            let mut want = vec![(format!("param/{}", s.name), s.param.clone())];
            for view in &s.states {
                want.push((format!("state/{}/{}", s.name, view.name), self.state(&s.name, &view.name)?));
            }
            for (key, t) in want {
                let v = checked_tensor(&st, &key, F32, t.shape(), Error::Checkpoint)?;
                writes.push((t, bytemuck::pod_collect_to_vec(v.data())));
                expected.push(key);
            }
        }
        let c = checked_tensor(&st, "counters", safetensors::Dtype::U32, &[self.counters.numel()], Error::Checkpoint)?;
        if let Some(extra) = st.names().into_iter().find(|n| !expected.iter().any(|e| e == n)) {
            return Err(Error::Checkpoint(format!("unexpected tensor `{extra}`")));
        }
        let counters: Vec<u32> = bytemuck::pod_collect_to_vec(c.data());
        let calls = counters.get(1).copied().unwrap_or(0) as u64;
        writes.push((self.counters.clone(), bytemuck::pod_collect_to_vec(c.data())));
        for (t, v) in writes {
            t.write(&v)?;
        }
        self.calls.store(calls, Ordering::Relaxed);
        self.eval_mode.store(eval, Ordering::Relaxed);
        Ok(())
    }
}

/// The tensor `key` of a safetensors file if it has the expected dtype and shape; `err` wraps the message.
pub(crate) fn checked_tensor<'a>(
    st: &'a safetensors::SafeTensors<'a>,
    key: &str,
    dtype: safetensors::Dtype,
    shape: &[usize],
    err: impl Fn(String) -> Error,
) -> Result<safetensors::tensor::TensorView<'a>> {
    let v = st.tensor(key).map_err(|_| err(format!("missing tensor `{key}`")))?;
    if v.dtype() != dtype || v.shape() != shape {
        return Err(err(format!("`{key}`: saved {:?} {:?}, expected {dtype:?} {shape:?}", v.dtype(), v.shape())));
    }
    Ok(v)
}

fn f32_bytes(v: Vec<f32>) -> Vec<u8> {
    bytemuck::cast_slice(&v).to_vec()
}
