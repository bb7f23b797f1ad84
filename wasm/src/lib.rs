//! wgoptim in the browser: JavaScript bindings over the same library (WebGPU through wgpu). [`WebTrainer`]
//! trains the character-level GPT of the native `gpt_shakespeare` example with the same engine, optimizers and
//! seeds; `wasm/www/` is the page that drives it.

use std::cell::RefCell;
use std::rc::Rc;

use js_sys::{Array, Promise, Uint8Array};
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::future_to_promise;
use wgoptim::nn::data::{TINY_SHAKESPEARE_SHA256, TINY_SHAKESPEARE_URL};
use wgoptim::nn::{CharData, Preset, Recipe, RunConfig, Split, Trainer};
use wgoptim::{Gpu, GpuOptions};

fn js_error(e: impl std::fmt::Display) -> JsValue {
    js_sys::Error::new(&e.to_string()).into()
}

thread_local! {
    // One device per page: its compiled kernels serve every later run (browsers compile shaders slowly).
    static GPU: RefCell<Option<Gpu>> = const { RefCell::new(None) };
}

/// The page's WebGPU device, acquired on first use.
async fn page_gpu() -> Result<Gpu, JsValue> {
    if let Some(gpu) = GPU.with(|g| g.borrow().clone()) {
        return Ok(gpu);
    }
    let gpu = Gpu::new(GpuOptions::default()).await.map_err(js_error)?;
    GPU.with(|g| *g.borrow_mut() = Some(gpu.clone()));
    Ok(gpu)
}

/// Acquire a WebGPU device and describe it (`name (backend, type)`); rejects with a plain message when the
/// browser has no WebGPU.
#[wasm_bindgen]
pub async fn describe_gpu() -> Result<String, JsValue> {
    Ok(page_gpu().await?.describe())
}

/// Where the page downloads Tiny Shakespeare from when it is not served beside it.
#[wasm_bindgen]
pub fn tiny_shakespeare_url() -> String {
    TINY_SHAKESPEARE_URL.into()
}

/// The sha256 (hex) a download must have.
#[wasm_bindgen]
pub fn tiny_shakespeare_sha256() -> String {
    TINY_SHAKESPEARE_SHA256.into()
}

/// Every optimizer name a training run accepts (matrices go to the named one, the rest to AdamW).
#[wasm_bindgen]
pub fn optimizer_names() -> Vec<String> {
    Recipe::names().into_iter().map(String::from).collect()
}

/// A GPT training run on the browser's GPU. Every method that touches the device returns a promise; one call
/// at a time (a second call while one runs rejects, and the run is left as it was).
#[wasm_bindgen]
pub struct WebTrainer {
    // Taken out while an async call runs, so overlapping calls fail cleanly instead of aliasing.
    slot: Rc<RefCell<Option<Trainer>>>,
    preset: Preset,
    adapter: String,
}

#[wasm_bindgen]
impl WebTrainer {
    /// A run on `text` with preset `tiny`, `small` or `baby` (its model, batch and schedule; `iters` overrides
    /// its length) and optimizer `optimizer`, seeded by `seed` exactly as the native example is.
    pub async fn create(
        text: String,
        preset: String,
        optimizer: String,
        seed: u32,
        iters: Option<u32>,
    ) -> Result<WebTrainer, JsValue> {
        let gpu = page_gpu().await?;
        let data = CharData::from_text(&text).map_err(js_error)?;
        let preset = Preset::named(&preset, data.vocab_size()).map_err(js_error)?;
        let preset = match iters {
            Some(n) => preset.with_iters(n),
            None => preset,
        };
        if !Recipe::names().contains(&optimizer.as_str()) {
            return Err(js_error(format!("unknown optimizer `{optimizer}` (known: {})", Recipe::names().join(", "))));
        }
        let recipe = Recipe { optimizer, lr: None, iters: preset.iters, warmup: preset.warmup, clip: Some(1.0) };
        let config = RunConfig { model: preset.model.clone(), batch: preset.batch, seed: seed as u64, recipe };
        let trainer = Trainer::new(&gpu, data, config).map_err(js_error)?;
        Ok(WebTrainer { slot: Rc::new(RefCell::new(Some(trainer))), preset, adapter: gpu.describe() })
    }

    /// The GPU the run uses.
    #[wasm_bindgen(getter)]
    pub fn adapter(&self) -> String {
        self.adapter.clone()
    }

    /// Planned training steps (the learning-rate schedule ends there).
    #[wasm_bindgen(getter)]
    pub fn iters(&self) -> u32 {
        self.preset.iters
    }

    /// Steps between validation estimates, as the native example does them.
    #[wasm_bindgen(getter)]
    pub fn eval_interval(&self) -> u32 {
        self.preset.eval_interval
    }

    /// Batches per loss estimate.
    #[wasm_bindgen(getter)]
    pub fn eval_iters(&self) -> u32 {
        self.preset.eval_iters as u32
    }

    /// Tokens per training step (batch × block).
    #[wasm_bindgen(getter)]
    pub fn tokens_per_step(&self) -> u32 {
        (self.preset.batch * self.preset.model.block) as u32
    }

    /// Model parameters (embeddings included).
    #[wasm_bindgen(getter)]
    pub fn parameters(&self) -> f64 {
        self.preset.model.param_specs().iter().map(|(_, s)| s.iter().product::<usize>()).sum::<usize>() as f64
    }

    /// Runs `f` on the trainer in a promise; rejects when another call holds it.
    fn with_trainer<F>(&self, f: impl FnOnce(Trainer) -> F + 'static) -> Promise
    where
        F: std::future::Future<Output = (Trainer, Result<JsValue, JsValue>)> + 'static,
    {
        let slot = self.slot.clone();
        future_to_promise(async move {
            let trainer = slot
                .borrow_mut()
                .take()
                .ok_or_else(|| js_error("the trainer is busy: await the previous call before starting another"))?;
            let (trainer, out) = f(trainer).await;
            *slot.borrow_mut() = Some(trainer);
            out
        })
    }

    /// Train `steps` steps (each one submit; losses read back one step late so the GPU never waits); resolves
    /// to an array of `[step, loss]` for every step it ran.
    pub fn train(&self, steps: u32) -> Promise {
        self.with_trainer(move |mut t| async move {
            let out = async {
                let losses = Array::new();
                let push = |(s, l): (u64, f32)| {
                    losses.push(&Array::of2(&(s as f64).into(), &(l as f64).into()));
                };
                for _ in 0..steps {
                    if let Some(l) = t.step().await? {
                        push(l);
                    }
                }
                t.flush().await?.into_iter().for_each(push);
                Ok::<_, wgoptim::Error>(losses.into())
            }
            .await
            .map_err(js_error);
            (t, out)
        })
    }

    /// Mean loss over `iters` batches of `split` (`"train"` or `"val"`) at the optimizer's evaluation point.
    pub fn evaluate(&self, split: String, iters: u32) -> Promise {
        self.with_trainer(move |mut t| async move {
            let split = match split.as_str() {
                "train" => Split::Train,
                "val" => Split::Val,
                other => return (t, Err(js_error(format!("unknown split `{other}` (train or val)")))),
            };
            let out = t.evaluate(split, iters as usize).await.map(|l| JsValue::from(l as f64)).map_err(js_error);
            (t, out)
        })
    }

    /// `n` characters generated after `prompt` with `temperature` and `top_k` (0: all characters).
    pub fn sample(&self, prompt: String, n: u32, temperature: f32, top_k: u32, seed: u32) -> Promise {
        self.with_trainer(move |mut t| async move {
            let out = t
                .sample(&prompt, n as usize, temperature, top_k as usize, seed as u64)
                .await
                .map(JsValue::from)
                .map_err(js_error);
            (t, out)
        })
    }

    /// Steps trained so far.
    pub fn steps(&self) -> Result<f64, JsValue> {
        let slot = self.slot.try_borrow().map_err(js_error)?;
        let t = slot.as_ref().ok_or_else(|| js_error("the trainer is busy"))?;
        Ok(t.steps() as f64)
    }

    /// The checkpoint (safetensors bytes: model, optimizer state, run configuration), as the native example
    /// writes it; [`WebTrainer::load`] and `gpt_shakespeare --resume` continue from it.
    pub fn save(&self) -> Promise {
        self.with_trainer(|mut t| async move {
            let out = t.save().await.map(|b| Uint8Array::from(b.as_slice()).into()).map_err(js_error);
            (t, out)
        })
    }

    /// Continue from a checkpoint of the same run configuration (a mismatch or a corrupt file rejects and
    /// leaves the run as it was).
    pub fn load(&self, bytes: Vec<u8>) -> Promise {
        self.with_trainer(move |mut t| async move {
            let out = t.load(&bytes).map(|_| JsValue::UNDEFINED).map_err(js_error);
            (t, out)
        })
    }
}
