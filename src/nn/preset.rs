//! The demo's model presets: `tiny` (a sub-minute smoke run), `small` (nanoGPT's CPU configuration of
//! `train_shakespeare_char.py`) and `baby` (nanoGPT's GPU configuration, "baby GPT").

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::nn::gpt::GptConfig;

/// A model size with its training length and evaluation cadence.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Preset {
    /// `tiny`, `small` or `baby`.
    pub name: String,
    /// The model (vocabulary filled in from the data).
    pub model: GptConfig,
    /// Sequences per step.
    pub batch: usize,
    /// Training steps.
    pub iters: u32,
    /// Learning-rate warmup steps.
    pub warmup: u32,
    /// Steps between validation-loss estimates.
    pub eval_interval: u32,
    /// Batches per loss estimate.
    pub eval_iters: usize,
}

impl Preset {
    /// The preset called `name`, for a vocabulary of `vocab`.
    pub fn named(name: &str, vocab: usize) -> Result<Preset> {
        let model = |layers, heads, width, block, dropout| GptConfig {
            vocab,
            block,
            layers,
            heads,
            width,
            dropout,
            bias: false,
        };
        let p = |model, batch, iters, warmup, eval_interval, eval_iters| Preset {
            name: name.to_string(),
            model,
            batch,
            iters,
            warmup,
            eval_interval,
            eval_iters,
        };
        Ok(match name {
            "tiny" => p(model(2, 2, 64, 32, 0.0), 8, 300, 30, 100, 10),
            "small" => p(model(4, 4, 128, 64, 0.0), 12, 2000, 100, 250, 20),
            "baby" => p(model(6, 6, 384, 256, 0.2), 64, 5000, 100, 250, 200),
            other => {
                return Err(Error::InvalidArgument {
                    op: "Preset::named",
                    name: "preset",
                    detail: format!("unknown preset `{other}` (known: tiny, small, baby)"),
                })
            }
        })
    }

    /// The same preset trained for `iters` steps (at least 1), its warmup clamped to a tenth of them.
    pub fn with_iters(mut self, iters: u32) -> Preset {
        self.iters = iters.max(1);
        self.warmup = self.warmup.min(self.iters / 10);
        self
    }
}
