//! GPT with nanoGPT's architecture (Karpathy, `model.py`): token + position embeddings, pre-LN blocks with
//! causal multi-head attention and a 4× GELU MLP, a final LayerNorm and a linear head tied to the token
//! embedding; nanoGPT's initialization (N(0, 0.02), residual projections N(0, 0.02/√(2·layers))).

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::nn::graph::{Graph, Var};
use crate::nn::rng::Rng;
use crate::nn::Tokens;
use crate::optim::ParamStore;

/// Model shape and regularization.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GptConfig {
    /// Vocabulary size.
    pub vocab: usize,
    /// Context length.
    pub block: usize,
    /// Transformer blocks.
    pub layers: usize,
    /// Attention heads per block.
    pub heads: usize,
    /// Embedding width (divisible by `heads`).
    pub width: usize,
    /// Dropout probability (embeddings, attention output, MLP output).
    pub dropout: f32,
    /// Biases in Linear and LayerNorm layers (nanoGPT's `bias`; its Shakespeare configs use false).
    pub bias: bool,
}

impl GptConfig {
    /// Check the shape: everything positive, width divisible by heads, head dim within the kernels' limit.
    pub fn validate(&self) -> Result<()> {
        let bad = |detail: String| Err(Error::InvalidArgument { op: "GptConfig", name: "model", detail });
        if [self.vocab, self.block, self.layers, self.heads, self.width].contains(&0) {
            return bad(format!("{self:?}: every size must be positive"));
        }
        if !self.width.is_multiple_of(self.heads) || self.width / self.heads > crate::nn::attention_max_head_dim {
            return bad(format!(
                "width {} must split into {} heads of at most {} each",
                self.width,
                self.heads,
                crate::nn::attention_max_head_dim
            ));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return bad(format!("dropout {} is not in [0, 1)", self.dropout));
        }
        Ok(())
    }

    /// Every parameter's name and shape, in nanoGPT's naming.
    pub fn param_specs(&self) -> Vec<(String, Vec<usize>)> {
        let c = self.width;
        let mut v = vec![("wte".to_string(), vec![self.vocab, c]), ("wpe".to_string(), vec![self.block, c])];
        let mut add = |name: String, shape: Vec<usize>, bias: bool| {
            if bias {
                v.push((format!("{name}.bias"), vec![shape[0]]));
            }
            v.push((format!("{name}.weight"), shape));
        };
        for l in 0..self.layers {
            add(format!("h.{l}.ln_1"), vec![c], self.bias);
            add(format!("h.{l}.attn.c_attn"), vec![3 * c, c], self.bias);
            add(format!("h.{l}.attn.c_proj"), vec![c, c], self.bias);
            add(format!("h.{l}.ln_2"), vec![c], self.bias);
            add(format!("h.{l}.mlp.c_fc"), vec![4 * c, c], self.bias);
            add(format!("h.{l}.mlp.c_proj"), vec![c, 4 * c], self.bias);
        }
        add("ln_f".into(), vec![c], self.bias);
        v
    }

    /// Parameters, counting the tied head once and excluding position embeddings (nanoGPT's count).
    pub fn non_embedding_params(&self) -> usize {
        self.param_specs().iter().filter(|(n, _)| n != "wpe").map(|(_, s)| s.iter().product::<usize>()).sum()
    }

    /// FLOPs of one forward + backward pass over `tokens` tokens (6 per parameter per token for the matmuls,
    /// plus attention's 12·layers·width·block per token, as in the PaLM appendix / nanoGPT's `estimate_mfu`).
    pub fn train_flops(&self, tokens: usize) -> f64 {
        let n = self.non_embedding_params() as f64;
        (6.0 * n + 12.0 * (self.layers * self.width * self.block) as f64) * tokens as f64
    }
}

/// A linear layer of the model as KFAC sees it: its weight's name, input activation and output.
#[derive(Clone, Debug)]
pub struct LinearSite {
    /// The weight's parameter name.
    pub weight: String,
    /// Input activations `[N, in]` (read with [`Graph::value`]).
    pub input: Var,
    /// Output `[N, out]`; its gradient ([`Graph::grad`]) is the layer's output gradient.
    pub output: Var,
}

/// The model's graph outputs.
pub struct GptOutputs {
    /// Logits `[batch·block, vocab]`.
    pub logits: Var,
    /// Every Linear layer's input and output (the tied head included, under `wte`).
    pub linears: Vec<LinearSite>,
}

/// GPT parameters in one [`ParamStore`].
pub struct Gpt {
    /// The shape.
    pub config: GptConfig,
    /// Parameters and gradients.
    pub store: ParamStore,
}

impl Gpt {
    /// Allocate the parameters and initialize them from `seed`.
    pub fn new(gpu: &Gpu, config: GptConfig, seed: u64) -> Result<Gpt> {
        config.validate()?;
        let specs = config.param_specs();
        let refs: Vec<(&str, &[usize])> = specs.iter().map(|(n, s)| (n.as_str(), s.as_slice())).collect();
        let store = ParamStore::new(gpu, &refs)?;
        let gpt = Gpt { config, store };
        gpt.init(seed)?;
        Ok(gpt)
    }

    /// nanoGPT's `_init_weights`: N(0, 0.02) for Linear and Embedding weights, N(0, 0.02/√(2·layers)) for the
    /// residual projections (`c_proj`), ones for LayerNorm weights, zeros for biases.
    pub fn init(&self, seed: u64) -> Result<()> {
        let mut rng = Rng::new(seed);
        let proj_std = 0.02 / (2.0 * self.config.layers as f64).sqrt();
        for (name, shape) in self.config.param_specs() {
            let n: usize = shape.iter().product();
            let values: Vec<f32> = if name.ends_with(".bias") {
                vec![0.0; n]
            } else if name.contains("ln_") {
                vec![1.0; n]
            } else {
                let std = if name.ends_with("c_proj.weight") { proj_std } else { 0.02 };
                (0..n).map(|_| (rng.normal() * std) as f32).collect()
            };
            self.store.param(&name)?.write(&values)?;
        }
        Ok(())
    }

    fn var(&self, g: &mut Graph, name: &str) -> Result<Var> {
        g.param(&self.store.param(name)?, &self.store.grad(name)?)
    }

    fn layer_norm(&self, g: &mut Graph, x: Var, name: &str) -> Result<Var> {
        let w = self.var(g, &format!("{name}.weight"))?;
        let b = if self.config.bias { Some(self.var(g, &format!("{name}.bias"))?) } else { None };
        g.layer_norm(x, w, b, 1e-5)
    }

    fn linear(&self, g: &mut Graph, x: Var, name: &str, sites: &mut Vec<LinearSite>) -> Result<Var> {
        let w = self.var(g, &format!("{name}.weight"))?;
        let b = if self.config.bias { Some(self.var(g, &format!("{name}.bias"))?) } else { None };
        let y = g.linear(x, w, b)?;
        sites.push(LinearSite { weight: format!("{name}.weight"), input: x, output: y });
        Ok(y)
    }

    /// Record the forward pass over `tokens` (whose block may be shorter than the model's).
    pub fn forward(&self, g: &mut Graph, tokens: &Tokens) -> Result<GptOutputs> {
        let cfg = &self.config;
        if tokens.block > cfg.block || tokens.vocab != cfg.vocab {
            return Err(Error::Shape {
                op: "Gpt::forward",
                detail: format!(
                    "tokens of block {} over vocab {} for a model of block {} and vocab {}",
                    tokens.block, tokens.vocab, cfg.block, cfg.vocab
                ),
            });
        }
        let mut sites = Vec::new();
        let (wte, wpe) = (self.var(g, "wte")?, self.var(g, "wpe")?);
        let mut x = g.embedding(tokens, wte, wpe)?;
        // Every dropout site (nanoGPT's: embeddings, attention probabilities, both residual branches) draws its
        // own mask.
        let mut salt = 0u32;
        let mut next_salt = || {
            salt += 1;
            salt
        };
        x = g.dropout(x, cfg.dropout, next_salt())?;
        for l in 0..cfg.layers {
            let h = self.layer_norm(g, x, &format!("h.{l}.ln_1"))?;
            let qkv = self.linear(g, h, &format!("h.{l}.attn.c_attn"), &mut sites)?;
            let a = g.causal_attention_dropout(qkv, tokens.batch, tokens.block, cfg.heads, cfg.dropout, next_salt())?;
            let a = self.linear(g, a, &format!("h.{l}.attn.c_proj"), &mut sites)?;
            let a = g.dropout(a, cfg.dropout, next_salt())?;
            x = g.add(x, a)?;
            let h = self.layer_norm(g, x, &format!("h.{l}.ln_2"))?;
            let f = self.linear(g, h, &format!("h.{l}.mlp.c_fc"), &mut sites)?;
            let f = g.gelu(f)?;
            let f = self.linear(g, f, &format!("h.{l}.mlp.c_proj"), &mut sites)?;
            let f = g.dropout(f, cfg.dropout, next_salt())?;
            x = g.add(x, f)?;
        }
        let x = self.layer_norm(g, x, "ln_f")?;
        let logits = g.linear(x, wte, None)?;
        sites.push(LinearSite { weight: "wte".into(), input: x, output: logits });
        Ok(GptOutputs { logits, linears: sites })
    }
}
