//! `wgoptim replay`: traces written from the CPU reference, replayed on the device.

use crate::reference::*;
use std::collections::HashMap;
use wgoptim::optim::*;
use wgoptim::Error;

type Expected = (Vec<Vec<Vec<f64>>>, Vec<Vec<Vec<f64>>>);

fn trace(
    optimizer: &str,
    config: &str,
    params: &[(&str, Vec<usize>)],
    steps: usize,
    extra: bool,
) -> (Vec<u8>, Expected) {
    let cfg = OptimizerConfig::from_json(optimizer, config).unwrap();
    let mut groups = RefGroup::all(&[Group::new(cfg.clone())]);
    let mut blobs: Vec<(String, Vec<usize>, Vec<f32>)> = Vec::new();
    let mut state: Vec<(usize, RefParam)> = Vec::new();
    for (i, (name, shape)) in params.iter().enumerate() {
        let n: usize = shape.iter().product();
        let init: Vec<f32> = (0..n).map(|j| ((j * 31 + i * 7) % 17) as f32 / 17.0 - 0.5).collect();
        state.push((0, RefParam::new(&init)));
        blobs.push((format!("init/{name}"), shape.clone(), init));
    }
    let mut expected = Vec::new();
    let mut expected_eval = Vec::new();
    for t in 0..steps {
        let mut grads = Vec::new();
        for (i, (name, shape)) in params.iter().enumerate() {
            let n: usize = shape.iter().product();
            let g: Vec<f32> = (0..n).map(|j| (((j + 3 * t + i) * 2654435761) % 1000) as f32 / 1000.0 - 0.5).collect();
            grads.push(g.iter().map(|&v| v as f64).collect::<Vec<f64>>());
            blobs.push((format!("grad/{t:04}/{name}"), shape.clone(), g));
        }
        if extra {
            blobs.push((format!("loss/{t:04}"), vec![1], vec![1.0]));
        }
        engine_step(&mut groups, &mut state, &grads, None);
        expected.push(state.iter().map(|(_, x)| x.p.clone()).collect());
        expected_eval.push(state.iter().map(|(_, x)| x.s[1].clone()).collect::<Vec<Vec<f64>>>());
    }
    let specs: Vec<(&str, &[usize])> = params.iter().map(|(n, s)| (*n, s.as_slice())).collect();
    let bytes = write_trace(optimizer, config, &specs, &blobs);
    let eval = if cfg.is_schedule_free() { expected_eval } else { Vec::new() };
    (bytes, (expected, eval))
}

/// A trace file: `blobs` (name, shape, values) as float32 tensors, with the optimizer, its config JSON and the
/// parameter list in the metadata.
pub fn write_trace(
    optimizer: &str,
    config: &str,
    params: &[(&str, &[usize])],
    blobs: &[(String, Vec<usize>, Vec<f32>)],
) -> Vec<u8> {
    let specs: Vec<String> = params.iter().map(|(n, s)| format!(r#"{{"name":"{n}","shape":{s:?}}}"#)).collect();
    let meta = HashMap::from([
        ("optimizer".to_string(), optimizer.to_string()),
        ("config".to_string(), config.to_string()),
        ("params".to_string(), format!("[{}]", specs.join(","))),
    ]);
    let views: Vec<(String, safetensors::tensor::TensorView)> = blobs
        .iter()
        .map(|(n, s, v)| {
            let view =
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), bytemuck::cast_slice(v));
            (n.clone(), view.unwrap())
        })
        .collect();
    safetensors::serialize(views, Some(meta)).unwrap()
}

/// Every `<prefix>/<t>/<name>` of RESULT within 1e-5 (relative) of the reference's step t.
fn assert_steps(
    st: &safetensors::SafeTensors,
    prefix: &str,
    params: &[(&str, Vec<usize>)],
    want: &[Vec<Vec<f64>>],
    name: &str,
) {
    for (t, step) in want.iter().enumerate() {
        for ((pname, _), w) in params.iter().zip(step) {
            let got: Vec<f32> =
                bytemuck::pod_collect_to_vec(st.tensor(&format!("{prefix}/{t:04}/{pname}")).unwrap().data());
            let err = got.iter().zip(w).map(|(g, w)| (*g as f64 - w).powi(2)).sum::<f64>().sqrt()
                / w.iter().map(|w| w * w).sum::<f64>().sqrt();
            assert!(err < 1e-5, "{name} {prefix} step {t} {pname}: {err}");
        }
    }
}

#[test]
fn replay_reproduces_the_reference() {
    let gpu = crate::gpu();
    let params = [("w", vec![6, 5]), ("b", vec![5])];
    let cases = [
        ("adamw", r#"{"lr": 0.01, "weight_decay": 0.1}"#),
        ("sgd", r#"{"lr": 0.1, "momentum": 0.9, "nesterov": true}"#),
        ("lion", "{}"),
        ("signum", r#"{"lookahead": 0.25}"#),
        // Heavy-ball momentum under an Adam denominator (no bias correction of the buffer), L2 decay.
        (
            "composed",
            r#"{"lr": 0.01, "weight_decay": {"coupled": 0.01},
                "momentum": {"heavy_ball": {"beta": 0.9, "dampening": 0.0, "nesterov": false}},
                "normalize": {"adam": {"beta2": 0.99, "eps": 1e-8, "amsgrad": false}}}"#,
        ),
        ("sgd_schedulefree", r#"{"lr": 0.1}"#),
        ("adamw_schedulefree", r#"{"lr": 0.01, "inner_momentum": 0.3}"#),
    ];
    for (name, cfg) in cases {
        let (bytes, (expected, expected_eval)) = trace(name, cfg, &params, 25, true);
        let result = pollster::block_on(replay(&gpu, &bytes)).unwrap();
        let st = safetensors::SafeTensors::deserialize(&result).unwrap();
        assert_steps(&st, "param", &params, &expected, name);
        // Optimizers with an evaluation point also write param_eval/<t>/<name>.
        assert_steps(&st, "param_eval", &params, &expected_eval, name);
        assert_eq!(st.names().iter().any(|n| n.starts_with("param_eval/")), !expected_eval.is_empty());
    }
}

#[test]
fn bad_traces_are_clear_errors() {
    let gpu = crate::gpu();
    let params = [("w", vec![3])];
    let (good, _) = trace("adamw", "{}", &params, 2, false);
    assert!(matches!(pollster::block_on(replay(&gpu, &good[..good.len() - 5])), Err(Error::Trace(_))));
    // Unknown config fields and optimizer names are errors naming them.
    let mk = |opt: &str, cfg: &str| {
        let zeros = vec![0.0f32; 3];
        let blobs = [("init/w".to_string(), vec![3], zeros.clone()), ("grad/0000/w".to_string(), vec![3], zeros)];
        write_trace(opt, cfg, &[("w", &[3])], &blobs)
    };
    let e = pollster::block_on(replay(&gpu, &mk("adamw", r#"{"learning_rate": 0.1}"#))).unwrap_err();
    assert!(e.to_string().contains("learning_rate"), "{e}");
    let e = pollster::block_on(replay(&gpu, &mk("adam", "{}"))).unwrap_err();
    assert!(e.to_string().contains("adam"), "{e}");
}

#[test]
fn replay_runs_the_fusion_opt_composite() {
    let gpu = crate::gpu();
    let specs: [(&str, &[usize]); 2] = [("w.weight", &[6, 8]), ("b", &[8])];
    let steps = 12;
    let init: Vec<Vec<f32>> =
        specs.iter().enumerate().map(|(i, (_, s))| crate::noise(i as u64 + 1, s.iter().product())).collect();
    let grads: Vec<Vec<Vec<f32>>> = (0..steps)
        .map(|t| {
            specs
                .iter()
                .enumerate()
                .map(|(i, (_, s))| crate::noise(100 * t as u64 + i as u64, s.iter().product()))
                .collect()
        })
        .collect();
    let losses: Vec<f32> = (0..steps).map(|t| 3.0 - 0.1 * t as f32).collect();
    let cfg = FusionOptConfig::default();
    // The trace.
    let mut blobs: Vec<(String, Vec<usize>, Vec<f32>)> = Vec::new();
    for ((name, shape), v) in specs.iter().zip(&init) {
        blobs.push((format!("init/{name}"), shape.to_vec(), v.clone()));
    }
    for t in 0..steps {
        for ((name, shape), v) in specs.iter().zip(&grads[t]) {
            blobs.push((format!("grad/{t:04}/{name}"), shape.to_vec(), v.clone()));
        }
        blobs.push((format!("loss/{t:04}"), vec![1], vec![losses[t]]));
    }
    let trace = write_trace("fusion_opt", &serde_json::to_string(&cfg).unwrap(), &specs, &blobs);
    let result = pollster::block_on(replay(&gpu, &trace)).unwrap();
    let st = safetensors::SafeTensors::deserialize(&result).unwrap();
    // The same run through the builder directly.
    let store = ParamStore::new(&gpu, &specs).unwrap();
    for ((name, _), v) in specs.iter().zip(&init) {
        store.param(name).unwrap().write(v).unwrap();
    }
    let loss = wgoptim::Tensor::zeros(&gpu, &[1]).unwrap();
    let mut b = OptimizerBuilder::new(&gpu);
    b.params_from(&store).unwrap().fusion_opt(&cfg, &loss);
    let opt = b.build().unwrap();
    for t in 0..steps {
        for ((name, _), v) in specs.iter().zip(&grads[t]) {
            store.grad(name).unwrap().write(v).unwrap();
        }
        loss.write(&[losses[t]]).unwrap();
        opt.step().unwrap();
        for (name, _) in &specs {
            let direct = store.param(name).unwrap().read_blocking().unwrap();
            let replayed: Vec<f32> =
                bytemuck::pod_collect_to_vec(st.tensor(&format!("param/{t:04}/{name}")).unwrap().data());
            assert_eq!(direct, replayed, "step {t} {name}");
        }
        for (name, x) in pollster::block_on(opt.eval_params()).unwrap() {
            let replayed: Vec<f32> =
                bytemuck::pod_collect_to_vec(st.tensor(&format!("param_eval/{t:04}/{name}")).unwrap().data());
            assert_eq!(x, replayed, "eval step {t} {name}");
        }
    }
}
