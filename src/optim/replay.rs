//! Replaying an optimizer on recorded gradients (`wgoptim replay`): a trace in safetensors in, the parameters
//! after every step out. Trace layout: `init/<name>`, `grad/<t>/<name>` (t = 0000…T−1), optional `loss/<t>` and
//! `rand/<t>/<name>` (for optimizers that take them), metadata `optimizer`, `config` (JSON, wgoptim's field
//! names, unknown fields are an error) and `params` (JSON list of `{name, shape}`). Optimizers with an evaluation
//! point (Schedule-Free x) also get `param_eval/<t>/<name>`. `optimizer = "fusion_opt"` replays the FusionOpt
//! composite with a `FusionOptConfig` JSON; it and ScheduleFree+ read `loss/<t>`.

use std::collections::HashMap;

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::optim::optimizer::checked_tensor;
use crate::optim::{FusionOptConfig, Group, Matcher, OptimizerBuilder, OptimizerConfig, ParamStore};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ParamSpec {
    name: String,
    shape: Vec<usize>,
}

fn bad(detail: String) -> Error {
    Error::Trace(detail)
}

/// Run the trace's optimizer over its gradients; returns RESULT bytes with `param/<t>/<name>` after each step.
pub async fn replay(gpu: &Gpu, trace: &[u8]) -> Result<Vec<u8>> {
    let st = safetensors::SafeTensors::deserialize(trace).map_err(|e| bad(format!("unreadable: {e}")))?;
    let (_, header) = safetensors::SafeTensors::read_metadata(trace).map_err(|e| bad(e.to_string()))?;
    let meta = header.metadata().clone().unwrap_or_default();
    let field = |k: &str| meta.get(k).cloned().ok_or_else(|| bad(format!("metadata has no `{k}`")));
    let name = field("optimizer")?;
    // `fusion_opt` names the composite (config: FusionOptConfig); everything else one optimizer for all params.
    let composite: Option<FusionOptConfig> = if name == "fusion_opt" {
        Some(serde_json::from_str(&field("config")?).map_err(|e| Error::InvalidArgument {
            op: "optimizer config",
            name: "config",
            detail: format!("fusion_opt: {e}"),
        })?)
    } else {
        None
    };
    let specs: Vec<ParamSpec> =
        serde_json::from_str(&field("params")?).map_err(|e| bad(format!("bad `params`: {e}")))?;
    let spec_refs: Vec<(&str, &[usize])> = specs.iter().map(|s| (s.name.as_str(), s.shape.as_slice())).collect();
    let store = ParamStore::new(gpu, &spec_refs)?;
    let load = |key: &str, shape: &[usize]| -> Result<Vec<f32>> {
        let v = checked_tensor(&st, key, safetensors::Dtype::F32, shape, bad)?;
        Ok(bytemuck::pod_collect_to_vec(v.data()))
    };
    for s in &specs {
        store.param(&s.name)?.write(&load(&format!("init/{}", s.name), &s.shape)?)?;
    }
    let steps = st
        .names()
        .iter()
        .filter_map(|n| n.strip_prefix("grad/")?.split('/').next()?.parse::<usize>().ok())
        .max()
        .map_or(0, |m| m + 1);
    if steps == 0 {
        return Err(bad("no `grad/<t>/<name>` tensors".into()));
    }
    let mut b = OptimizerBuilder::new(gpu);
    b.params_from(&store)?;
    // Optimizers and rules that take the loss read `loss/<t>` each step.
    let loss = crate::gpu::Tensor::zeros(gpu, &[1])?;
    let (takes_loss, eval_point) = match &composite {
        Some(cfg) => {
            b.fusion_opt(cfg, &loss);
            (true, true)
        }
        None => {
            let config = OptimizerConfig::from_json(&name, &field("config")?)?;
            b.rule(Matcher::All, Group::new(config.clone()));
            if config.takes_loss() {
                b.loss(&loss);
            }
            (config.takes_loss(), config.is_schedule_free() || config.keeps_x())
        }
    };
    let opt = b.build()?;
    // Optimizers with random probes (PSGD-Kron with `probes: external`) read `rand/<t>/<name>` each step.
    let mut probed = Vec::new();
    for s in &specs {
        if opt.state_names(&s.name)?.iter().any(|n| n == "probe") {
            probed.push(s);
        }
    }
    let mut out: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for t in 0..steps {
        for s in &specs {
            store.grad(&s.name)?.write(&load(&format!("grad/{t:04}/{}", s.name), &s.shape)?)?;
        }
        if takes_loss {
            loss.write(&load(&format!("loss/{t:04}"), &[1])?)?;
        }
        for s in &probed {
            opt.state(&s.name, "probe")?.write(&load(&format!("rand/{t:04}/{}", s.name), &s.shape)?)?;
        }
        opt.step()?;
        for s in &specs {
            let v = store.param(&s.name)?.read().await?;
            out.push((format!("param/{t:04}/{}", s.name), s.shape.clone(), bytemuck::cast_slice(&v).to_vec()));
        }
        if eval_point {
            for ((name, v), s) in opt.eval_params().await?.into_iter().zip(&specs) {
                out.push((format!("param_eval/{t:04}/{name}"), s.shape.clone(), bytemuck::cast_slice(&v).to_vec()));
            }
        }
    }
    opt.report().await?;
    let views = out
        .iter()
        .map(|(n, s, d)| {
            Ok((
                n.clone(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), d)
                    .map_err(|e| bad(e.to_string()))?,
            ))
        })
        .collect::<Result<Vec<_>>>()?;
    let meta = HashMap::from([("optimizer".to_string(), name), ("steps".to_string(), steps.to_string())]);
    safetensors::serialize(views, Some(meta)).map_err(|e| bad(e.to_string()))
}
