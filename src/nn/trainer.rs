//! [`Trainer`]: a GPT, its data and its optimizer as pre-built plans. A training step is one submit — batch
//! upload (queue writes), forward + backward plan, optimizer plan, and a copy of the loss into a lagged readback
//! slot, all in one command encoder — and the only host wait is for the previous step's loss.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::gpu::{Gpu, Lagged, Plan, Tensor};
use crate::nn::data::{CharData, Split};
use crate::nn::gpt::{Gpt, GptConfig, LinearSite};
use crate::nn::graph::{step_values, Graph, Mode};
use crate::nn::kfac::{Kfac, KfacLayer};
use crate::nn::recipe::Recipe;
use crate::nn::rng::Rng;
use crate::nn::Tokens;
use crate::optim::{Optimizer, OptimizerBuilder};

const CHECKPOINT_FORMAT: &str = "wgoptim-gpt-1";

/// Everything that defines a run (stored in checkpoints; a resume must match it).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunConfig {
    /// The model.
    pub model: GptConfig,
    /// Sequences per step.
    pub batch: usize,
    /// Seed of initialization, batches and dropout.
    pub seed: u64,
    /// The optimizer routing.
    pub recipe: Recipe,
}

/// A forward-only graph over its own token buffers.
struct Forward {
    tokens: Tokens,
    plan: Plan,
    loss: Option<Tensor>,
    logits: Tensor,
}

impl Forward {
    fn new(gpu: &Gpu, model: &Gpt, batch: usize, with_loss: bool) -> Result<Forward> {
        let tokens = Tokens::new(gpu, batch, model.config.block, model.config.vocab)?;
        let mut g = Graph::new(gpu, Mode::Eval)?;
        let out = model.forward(&mut g, &tokens)?;
        let loss = if with_loss { Some(g.cross_entropy(out.logits, &tokens)?) } else { None };
        let loss = loss.map(|l| g.value(l).clone());
        let logits = g.value(out.logits).clone();
        Ok(Forward { tokens, plan: g.build()?, loss, logits })
    }
}

/// Device time of one step's parts (seconds), where the adapter has timestamp queries.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StepTiming {
    /// Forward pass.
    pub forward: f64,
    /// Backward pass.
    pub backward: f64,
    /// Optimizer step.
    pub optimizer: f64,
    /// Per op kind (`forward/matmul`, `backward/attention`, …) when built with per-op timing.
    pub ops: Vec<(String, f64)>,
}

/// A GPT training run: model, data, optimizer, plans, and the lagged loss readback.
pub struct Trainer {
    gpu: Gpu,
    config: RunConfig,
    data: CharData,
    model: Gpt,
    tokens: Tokens,
    train: Plan,
    loss: Tensor,
    optimizer: Optimizer,
    eval: Forward,
    sampler: Forward,
    linears: Vec<LinearSite>,
    kfac: Option<Kfac>,
    rng: Rng,
    step: u64,
    lagged: Lagged,
}

impl Trainer {
    /// Build the model (initialized from the seed), the train / eval / sampling plans and the optimizer.
    /// `config.model.vocab` must equal the data's vocabulary size.
    pub fn new(gpu: &Gpu, data: CharData, config: RunConfig) -> Result<Trainer> {
        Self::build(gpu, data, config, None)
    }

    /// As [`Trainer::new`], with timestamp queries on the stages (for [`Trainer::timed_step`]); `per_op` times
    /// every op separately (more passes: for profiling, not for training).
    pub fn new_timed(gpu: &Gpu, data: CharData, config: RunConfig, per_op: bool) -> Result<Trainer> {
        Self::build(gpu, data, config, Some(per_op))
    }

    fn build(gpu: &Gpu, data: CharData, config: RunConfig, timing: Option<bool>) -> Result<Trainer> {
        if config.model.vocab != data.vocab_size() {
            return Err(Error::InvalidArgument {
                op: "Trainer::new",
                name: "vocab",
                detail: format!("model vocab {} for data with {} characters", config.model.vocab, data.vocab_size()),
            });
        }
        if config.batch == 0 {
            return Err(Error::InvalidArgument {
                op: "Trainer::new",
                name: "batch",
                detail: "must be positive".into(),
            });
        }
        let model = Gpt::new(gpu, config.model.clone(), config.seed)?;
        let tokens = Tokens::new(gpu, config.batch, model.config.block, model.config.vocab)?;
        let mut g = match timing {
            Some(true) => Graph::new(gpu, Mode::Train)?.with_op_timing(true),
            Some(false) => Graph::new(gpu, Mode::Train)?.with_timing(true),
            None => Graph::new(gpu, Mode::Train)?,
        };
        let out = model.forward(&mut g, &tokens)?;
        let loss_var = g.cross_entropy(out.logits, &tokens)?;
        g.backward(loss_var)?;
        let loss = g.value(loss_var).clone();
        let kfac = match config.recipe.kfac() {
            Some(cfg) => Some(Kfac::new(gpu, cfg, &kfac_layers(&g, &model, &out.linears)?)?),
            None => None,
        };
        let train = g.build()?;
        let mut b = OptimizerBuilder::new(gpu);
        b.params_from(&model.store)?;
        config.recipe.apply(&mut b, &loss)?;
        b.with_timing(timing.is_some());
        let optimizer = b.build()?;
        let eval = Forward::new(gpu, &model, config.batch, true)?;
        let sampler = Forward::new(gpu, &model, 1, false)?;
        let rng = Rng::new(config.seed ^ 0x5EED_DA7A);
        Ok(Trainer {
            gpu: gpu.clone(),
            data,
            model,
            tokens,
            train,
            loss,
            optimizer,
            eval,
            sampler,
            linears: out.linears,
            kfac,
            rng,
            step: 0,
            lagged: Lagged::new(gpu, 1, 3),
            config,
        })
    }

    /// The run's configuration.
    pub fn config(&self) -> &RunConfig {
        &self.config
    }
    /// The data.
    pub fn data(&self) -> &CharData {
        &self.data
    }
    /// The model.
    pub fn model(&self) -> &Gpt {
        &self.model
    }
    /// The optimizer.
    pub fn optimizer(&self) -> &Optimizer {
        &self.optimizer
    }
    /// Steps taken.
    pub fn steps(&self) -> u64 {
        self.step
    }
    /// The model's Linear layers (inputs and outputs in the train graph).
    pub fn linears(&self) -> &[LinearSite] {
        &self.linears
    }
    /// The forward + backward plan.
    pub fn train_plan(&self) -> &Plan {
        &self.train
    }

    fn dropout_seed(&self) -> u32 {
        (self.config.seed ^ (self.config.seed >> 32)) as u32
    }

    /// The next training batch and the step's parameter block (queue writes, ordered before the next submit).
    fn upload_batch(&mut self) -> Result<()> {
        let (x, y) = self.data.batch(Split::Train, &mut self.rng, self.config.batch, self.model.config.block)?;
        self.tokens.write(&x, &y)?;
        self.train.set_params(&step_values(self.step, self.dropout_seed()))
    }

    /// Submit one training step (one submit, no wait) and queue its loss for a lagged read.
    pub fn submit_step(&mut self) -> Result<()> {
        if self.lagged.in_flight() >= 2 {
            return Err(Error::InvalidArgument {
                op: "Trainer::submit_step",
                name: "lag",
                detail: "two losses are unread: await Trainer::next_loss first".into(),
            });
        }
        self.upload_batch()?;
        let mut encoder = self.gpu.device().create_command_encoder(&Default::default());
        self.train.record(&mut encoder);
        if let Some(k) = &self.kfac {
            k.record(&mut encoder, self.step, self.config.recipe.lr_at(self.step))?;
        }
        self.optimizer.record(&mut encoder)?;
        self.lagged.record(&mut encoder, &self.loss, self.step)?;
        let index = self.gpu.submit([encoder.finish()]);
        self.lagged.submitted(index);
        self.step += 1;
        Ok(())
    }

    /// Await the oldest unread loss: `(step, loss)` (None when none is pending).
    pub async fn next_loss(&mut self) -> Result<Option<(u64, f32)>> {
        Ok(self.lagged.next().await?.map(|(s, v)| (s, v[0])))
    }

    /// One step with a one-step lag: submit step t, then return the loss of step t − 1 (None on the first).
    pub async fn step(&mut self) -> Result<Option<(u64, f32)>> {
        self.submit_step()?;
        if self.lagged.in_flight() > 1 {
            return self.next_loss().await;
        }
        Ok(None)
    }

    /// Every loss still unread, in step order.
    pub async fn flush(&mut self) -> Result<Vec<(u64, f32)>> {
        let mut out = Vec::new();
        while let Some(l) = self.next_loss().await? {
            out.push(l);
        }
        Ok(out)
    }

    /// Run `f` with the parameters at the optimizer's evaluation point (Schedule-Free x), then restore them.
    async fn at_eval_point<T>(&mut self, f: impl AsyncFnOnce(&mut Self) -> Result<T>) -> Result<T> {
        let keeps_x = self.optimizer.groups().iter().any(|g| g.optimizer.keeps_x());
        if keeps_x {
            let saved = self.model.store.params_flat().read().await?;
            for (name, values) in self.optimizer.eval_params().await? {
                self.model.store.param(&name)?.write(&values)?;
            }
            let out = f(self).await;
            self.model.store.params_flat().write(&saved)?;
            return out;
        }
        self.optimizer.eval()?;
        let out = f(self).await;
        self.optimizer.train()?;
        out
    }

    /// Mean loss over `iters` random batches of `split` (nanoGPT's `estimate_loss`), at the evaluation point.
    /// Batches come from a generator seeded by the step, so the training stream is unaffected.
    pub async fn evaluate(&mut self, split: Split, iters: usize) -> Result<f32> {
        self.require_no_pending()?;
        let seed = self.config.seed ^ self.step.wrapping_mul(0x9E37) ^ (split == Split::Val) as u64;
        self.at_eval_point(async move |t: &mut Trainer| {
            let mut rng = Rng::new(seed);
            let mut reads = Lagged::new(&t.gpu, 1, 2);
            let mut total = 0.0f64;
            let loss = t.eval.loss.clone().ok_or_else(|| Error::Device("eval graph without loss".into()))?;
            for i in 0..iters.max(1) {
                let (x, y) = t.data.batch(split, &mut rng, t.config.batch, t.model.config.block)?;
                t.eval.tokens.write(&x, &y)?;
                let mut encoder = t.gpu.device().create_command_encoder(&Default::default());
                t.eval.plan.record(&mut encoder);
                reads.record(&mut encoder, &loss, i as u64)?;
                reads.submitted(t.gpu.submit([encoder.finish()]));
                if reads.in_flight() > 1 {
                    total += reads.next().await?.map_or(0.0, |(_, v)| v[0] as f64);
                }
            }
            while let Some((_, v)) = reads.next().await? {
                total += v[0] as f64;
            }
            Ok((total / iters.max(1) as f64) as f32)
        })
        .await
    }

    fn require_no_pending(&self) -> Result<()> {
        if self.lagged.in_flight() > 0 {
            return Err(Error::InvalidArgument {
                op: "Trainer::evaluate",
                name: "pending",
                detail: "read the pending training losses (Trainer::flush) before evaluating or sampling".into(),
            });
        }
        Ok(())
    }

    /// Generate `n` characters after `prompt` (empty: a newline), sampling with `temperature` and `top_k`
    /// (0: all), at the evaluation point. One forward pass and one readback per character.
    pub async fn sample(
        &mut self,
        prompt: &str,
        n: usize,
        temperature: f32,
        top_k: usize,
        seed: u64,
    ) -> Result<String> {
        self.require_no_pending()?;
        let mut ids = self.data.encode(if prompt.is_empty() { "\n" } else { prompt })?;
        let start = ids.len();
        self.at_eval_point(async move |t: &mut Trainer| {
            let mut rng = Rng::new(seed);
            let (block, vocab) = (t.model.config.block, t.model.config.vocab);
            for _ in 0..n {
                let ctx = &ids[ids.len().saturating_sub(block)..];
                let mut window = ctx.to_vec();
                window.resize(block, 0);
                t.sampler.tokens.write(&window, &window)?;
                t.sampler.plan.run();
                let row =
                    Tensor::from_buffer(&t.gpu, t.sampler.logits.buffer().clone(), (ctx.len() - 1) * vocab, &[vocab])?;
                let logits = row.read().await?;
                ids.push(pick(&logits, temperature, top_k, &mut rng));
            }
            Ok(t.data.decode(&ids[start..]))
        })
        .await
    }

    /// One step with per-stage device times (needs [`Trainer::new_timed`] and TIMESTAMP_QUERY); waits for it.
    pub async fn timed_step(&mut self) -> Result<StepTiming> {
        self.upload_batch()?;
        let stages = self.train.run_timed().await?;
        if let Some(k) = &self.kfac {
            let mut encoder = self.gpu.device().create_command_encoder(&Default::default());
            k.record(&mut encoder, self.step, self.config.recipe.lr_at(self.step))?;
            self.gpu.submit([encoder.finish()]);
        }
        // The whitening optimizers' refreshes run untimed within it.
        let opt = self.optimizer.timed_step().await?;
        self.step += 1;
        let time = |name: &str| stages.iter().filter(|(s, _)| s.starts_with(name)).map(|(_, t)| t).sum::<f64>();
        let mut ops: Vec<(String, f64)> = Vec::new();
        for (name, t) in stages.iter().filter(|(s, _)| s.contains('/')) {
            match ops.iter_mut().find(|(n, _)| n == name) {
                Some(entry) => entry.1 += t,
                None => ops.push((name.clone(), *t)),
            }
        }
        Ok(StepTiming {
            forward: time("forward"),
            backward: time("backward"),
            optimizer: opt.iter().map(|(_, t)| t).sum(),
            ops,
        })
    }

    /// A checkpoint: the optimizer's safetensors (parameters, states, counters) with the run's configuration,
    /// step and data-generator state added to the metadata.
    pub async fn save(&mut self) -> Result<Vec<u8>> {
        self.require_no_pending()?;
        let bytes = self.optimizer.save().await?;
        let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| Error::Checkpoint(e.to_string()))?;
        let mut extra = Vec::new();
        for (name, t) in self.kfac.iter().flat_map(|k| k.state_tensors()) {
            extra.push((name, t.shape().to_vec(), bytemuck::cast_slice::<f32, u8>(&t.read().await?).to_vec()));
        }
        let mut views = st.tensors();
        for (name, shape, data) in &extra {
            let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), data)
                .map_err(|e| Error::Checkpoint(e.to_string()))?;
            views.push((name.clone(), view));
        }
        let (_, header) =
            safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| Error::Checkpoint(e.to_string()))?;
        let mut meta: HashMap<String, String> = header.metadata().clone().unwrap_or_default();
        let run = serde_json::to_string(&self.config).map_err(|e| Error::Checkpoint(e.to_string()))?;
        meta.insert("trainer_format".into(), CHECKPOINT_FORMAT.into());
        meta.insert("run".into(), run);
        meta.insert("step".into(), self.step.to_string());
        meta.insert("data_rng".into(), self.rng.state.to_string());
        meta.insert("vocab".into(), self.data.vocab().iter().collect());
        safetensors::serialize(views, Some(meta)).map_err(|e| Error::Checkpoint(e.to_string()))
    }

    /// Restore a checkpoint of the same run configuration and data; on any mismatch nothing changes.
    pub fn load(&mut self, bytes: &[u8]) -> Result<()> {
        let (_, header) = safetensors::SafeTensors::read_metadata(bytes)
            .map_err(|e| Error::Checkpoint(format!("unreadable or truncated checkpoint: {e}")))?;
        let meta = header.metadata().clone().unwrap_or_default();
        let field = |k: &str| meta.get(k).cloned().ok_or_else(|| Error::Checkpoint(format!("metadata has no `{k}`")));
        if field("trainer_format")? != CHECKPOINT_FORMAT {
            return Err(Error::Checkpoint(format!("not a {CHECKPOINT_FORMAT} checkpoint")));
        }
        let run: RunConfig =
            serde_json::from_str(&field("run")?).map_err(|e| Error::Checkpoint(format!("bad run metadata: {e}")))?;
        if run != self.config {
            return Err(Error::Checkpoint(format!(
                "the checkpoint is of another run: {run:?}, this one is {:?}",
                self.config
            )));
        }
        if field("vocab")? != self.data.vocab().iter().collect::<String>() {
            return Err(Error::Checkpoint("the checkpoint was trained on text with another vocabulary".into()));
        }
        let parse = |k: &str| field(k)?.parse::<u64>().map_err(|e| Error::Checkpoint(format!("bad `{k}`: {e}")));
        let (step, rng) = (parse("step")?, parse("data_rng")?);
        // The preconditioner's tensors are checked here; the rest is the optimizer's checkpoint.
        let st = safetensors::SafeTensors::deserialize(bytes)
            .map_err(|e| Error::Checkpoint(format!("unreadable or truncated checkpoint: {e}")))?;
        let mut kfac_values = Vec::new();
        for (name, t) in self.kfac.iter().flat_map(|k| k.state_tensors()) {
            let view = st.tensor(&name).map_err(|_| Error::Checkpoint(format!("no tensor `{name}`")))?;
            if view.dtype() != safetensors::Dtype::F32 || view.shape() != t.shape() {
                return Err(Error::Checkpoint(format!(
                    "`{name}` is {:?} {:?}, expected F32 {:?}",
                    view.dtype(),
                    view.shape(),
                    t.shape()
                )));
            }
            kfac_values.push((t, bytemuck::pod_collect_to_vec::<u8, f32>(view.data())));
        }
        let rest: Vec<(String, safetensors::tensor::TensorView<'_>)> =
            st.tensors().into_iter().filter(|(n, _)| !n.starts_with("kfac/")).collect();
        let optimizer_bytes =
            safetensors::serialize(rest, Some(meta.clone())).map_err(|e| Error::Checkpoint(e.to_string()))?;
        self.optimizer.load(&optimizer_bytes)?;
        for (t, v) in kfac_values {
            t.write(&v)?;
        }
        self.step = step;
        self.rng = Rng::new(rng);
        Ok(())
    }
}

/// The K-FAC view of the model's Linear layers (the tied head stays with the embedding's optimizer).
fn kfac_layers(g: &Graph, model: &Gpt, sites: &[LinearSite]) -> Result<Vec<KfacLayer>> {
    sites
        .iter()
        .filter(|s| !crate::nn::recipe::EMBEDDINGS.contains(&s.weight.as_str()))
        .map(|s| {
            let output_grad = g.grad(s.output).cloned().ok_or_else(|| Error::InvalidArgument {
                op: "Trainer::new",
                name: "kfac",
                detail: format!("no gradient reaches the output of {}", s.weight),
            })?;
            Ok(KfacLayer {
                name: s.weight.clone(),
                grad: model.store.grad(&s.weight)?,
                input: g.value(s.input).clone(),
                output_grad,
            })
        })
        .collect()
}

/// Sample an id from logits with temperature and top-k.
fn pick(logits: &[f32], temperature: f32, top_k: usize, rng: &mut Rng) -> u32 {
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    if top_k > 0 {
        order.truncate(top_k);
    }
    if temperature <= 0.0 {
        return order[0] as u32;
    }
    let m = logits[order[0]] as f64;
    let w: Vec<f64> = order.iter().map(|&i| ((logits[i] as f64 - m) / temperature as f64).exp()).collect();
    let mut r = rng.uniform() * w.iter().sum::<f64>();
    for (k, wk) in w.iter().enumerate() {
        r -= wk;
        if r <= 0.0 {
            return order[k] as u32;
        }
    }
    order[order.len() - 1] as u32
}
