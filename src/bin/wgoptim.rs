//! The wgoptim command line: `info` (adapters), `bench` (matmul, polar, decomp, step, train), `replay`.

#[cfg(target_arch = "wasm32")]
fn main() {}

#[cfg(not(target_arch = "wasm32"))]
fn main() -> std::process::ExitCode {
    use clap::Parser;
    let cli = cli::Cli::parse();
    match cli::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// `println!` that ends the process quietly once stdout is closed (`wgoptim bench … | head`) instead of panicking.
#[cfg(not(target_arch = "wasm32"))]
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write;
        if let Err(e) = writeln!(std::io::stdout(), $($arg)*) {
            if e.kind() != std::io::ErrorKind::BrokenPipe {
                eprintln!("error: writing to stdout: {e}");
                std::process::exit(1);
            }
            std::process::exit(0);
        }
    }};
}

#[cfg(not(target_arch = "wasm32"))]
mod cli {
    use std::time::Instant;

    use clap::{Parser, Subcommand};
    use serde_json::json;
    use wgoptim::linalg::{polar, Matmul, MatmulVariant, PolarConfig, Trans};
    use wgoptim::{Error, Gpu, GpuOptions, PlanBuilder, Result, Tensor};

    /// wgoptim: WebGPU optimizer kernels. Adapter choice: WGPU_BACKEND, WGPU_ADAPTER_NAME.
    #[derive(Parser)]
    #[command(version, about)]
    pub struct Cli {
        #[command(subcommand)]
        cmd: Cmd,
    }

    #[derive(Subcommand)]
    enum Cmd {
        /// List adapters with backend, type, features and key limits, and say which one is used.
        Info,
        /// Measure kernel throughput on the chosen adapter.
        Bench {
            #[command(subcommand)]
            what: Bench,
        },
        /// Run an optimizer on recorded gradients (TRACE.safetensors) and write the parameters after every step.
        Replay {
            /// The trace: init/<name>, grad/<t>/<name>, metadata optimizer, config, params.
            trace: std::path::PathBuf,
            /// Where to write RESULT.safetensors (param/<t>/<name>).
            #[arg(long)]
            out: std::path::PathBuf,
        },
    }

    #[derive(Subcommand)]
    enum Bench {
        /// Time one optimizer step over a model's parameter set.
        Step {
            /// Optimizer name (see `OptimizerConfig::NAMES`). Matrix optimizers take the hidden matrices, AdamW
            /// the rest.
            #[arg(long, default_value = "adamw")]
            optimizer: String,
            /// The optimizer's config as JSON (its own field names; defaults for the rest), e.g.
            /// '{"precondition_frequency": 10}'.
            #[arg(long, default_value = "{}")]
            config: String,
            /// Parameter set: gpt-small (4 layers, width 128: 36 tensors, 805,248 values).
            #[arg(long, default_value = "gpt-small")]
            shapes: String,
            /// Untimed steps before the timed ones (matrix optimizers): the first refresh of each stack
            /// starts its decompositions cold, later ones warm; the warm-up's time is reported separately.
            /// Default: 20, or more until every stack has made one warm refresh (Shampoo's start step, staggered
            /// offsets).
            #[arg(long)]
            warmup: Option<usize>,
            /// Timed steps (matrix optimizers), each waited for, then as many queued back to back. Default: 20
            /// rounded up to whole refresh periods, so that the mean carries each stack's refreshes in the share
            /// training pays (at `precondition_frequency` 100: 100 steps).
            #[arg(long)]
            steps: Option<usize>,
            /// Print JSON instead of text.
            #[arg(long)]
            json: bool,
        },
        /// Time GPT training steps: tokens/s, ms per step, forward/backward/optimizer split, dispatches, submits.
        Train {
            /// Model preset: tiny, small or baby.
            #[arg(long, default_value = "small")]
            preset: String,
            /// Optimizer for the hidden matrices (the rest AdamW), or fusion_opt.
            #[arg(long, default_value = "adamw")]
            optimizer: String,
            /// Tiny Shakespeare (default: $WGOPTIM_DATA_DIR/tinyshakespeare.txt; without either, a synthetic text
            /// over the same 65 characters — step time does not depend on the text).
            #[arg(long)]
            data: Option<std::path::PathBuf>,
            /// Timed steps.
            #[arg(long, default_value_t = 10)]
            steps: usize,
            /// Also time every op kind separately (extra passes; for profiling).
            #[arg(long)]
            ops: bool,
            /// Print JSON instead of text.
            #[arg(long)]
            json: bool,
        },
        /// f32 matmul GFLOPS for square sizes.
        Matmul {
            /// Comma-separated sizes: N (square) or MxKxN.
            #[arg(long, default_value = "256,512,1024", value_delimiter = ',')]
            sizes: Vec<String>,
            /// Transposes of A and B: NN, NT, TN or TT.
            #[arg(long, default_value = "NN")]
            trans: String,
            /// Kernel variant: auto (the adapter's choice), registers, vec4, subgroup or shared.
            #[arg(long, default_value = "auto")]
            variant: String,
            /// Print JSON instead of a table.
            #[arg(long)]
            json: bool,
        },
        /// Time the decompositions behind SOAP and Shampoo refreshes on a stack of symmetric positive definite
        /// n×n matrices: Householder QR, cold and warm-started eigh, coupled-Newton inverse 4th root.
        Decomp {
            /// Matrix size n.
            #[arg(long, default_value_t = 512)]
            n: usize,
            /// Number of matrices in the stack.
            #[arg(long, default_value_t = 4)]
            batch: usize,
            /// Comma-separated subset of qr, eigh_cold, eigh_warm (from the exact basis), eigh_drift (from
            /// a nearby matrix's basis), inverse_root_newton (default: all).
            #[arg(long)]
            ops: Option<String>,
            /// Eigendecomposition method: auto, workgroup or rounds (Jacobi), tridiagonal.
            #[arg(long, default_value = "auto")]
            method: String,
            /// Print JSON instead of text.
            #[arg(long)]
            json: bool,
        },
        /// Time per polar call (5 Newton–Schulz steps, Keller coefficients) on a batch of matrices.
        Polar {
            /// Matrix shape ROWSxCOLS.
            #[arg(long, default_value = "384x1536")]
            shape: String,
            /// Number of matrices in the stack.
            #[arg(long, default_value_t = 4)]
            batch: usize,
            /// Print JSON instead of text.
            #[arg(long)]
            json: bool,
        },
    }

    pub fn run(cli: Cli) -> Result<()> {
        match cli.cmd {
            Cmd::Info => info(),
            Cmd::Bench { what: Bench::Matmul { sizes, trans, variant, json } } => {
                bench_matmul(&sizes, &trans, &variant, json)
            }
            Cmd::Bench { what: Bench::Polar { shape, batch, json } } => bench_polar(&shape, batch, json),
            Cmd::Bench { what: Bench::Decomp { n, batch, ops, method, json } } => {
                bench_decomp(n, batch, ops.as_deref(), &method, json)
            }
            Cmd::Bench { what: Bench::Step { optimizer, config, shapes, warmup, steps, json } } => {
                bench_step(&optimizer, &config, &shapes, (warmup, steps), json)
            }
            Cmd::Bench { what: Bench::Train { preset, optimizer, data, steps, ops, json } } => {
                bench_train(&preset, &optimizer, data.as_deref(), steps, ops, json)
            }
            Cmd::Replay { trace, out } => replay(&trace, &out),
        }
    }

    fn replay(trace: &std::path::Path, out: &std::path::Path) -> Result<()> {
        let bytes = std::fs::read(trace).map_err(|e| Error::Trace(format!("cannot read {}: {e}", trace.display())))?;
        let gpu = Gpu::new_blocking()?;
        let result = pollster::block_on(wgoptim::optim::replay(&gpu, &bytes))?;
        std::fs::write(out, result).map_err(|e| Error::Trace(format!("cannot write {}: {e}", out.display())))?;
        out!("wrote {} on {}", out.display(), gpu.describe());
        Ok(())
    }

    /// The small GPT demo's parameters: 4 layers of width 128, vocabulary 65, block 64, no linear biases.
    fn gpt_small() -> Vec<(String, Vec<usize>)> {
        let mut v = vec![("tok_emb".to_string(), vec![65, 128]), ("pos_emb".to_string(), vec![64, 128])];
        for l in 0..4 {
            for (n, s) in [
                ("ln1.weight", vec![128]),
                ("ln1.bias", vec![128]),
                ("attn.qkv.weight", vec![384, 128]),
                ("attn.proj.weight", vec![128, 128]),
                ("ln2.weight", vec![128]),
                ("ln2.bias", vec![128]),
                ("mlp.fc.weight", vec![512, 128]),
                ("mlp.proj.weight", vec![128, 512]),
            ] {
                v.push((format!("blocks.{l}.{n}"), s));
            }
        }
        v.push(("ln_f.weight".into(), vec![128]));
        v.push(("ln_f.bias".into(), vec![128]));
        v
    }

    /// Device buffer-copy bandwidth in GB/s (bytes read + written per second) for a 64 MiB copy: the best of five
    /// timed runs of four copies (a shared host's noise only ever slows a run; one run varied by half).
    fn copy_bandwidth(gpu: &Gpu) -> Result<f64> {
        let n = 16 << 20;
        let (a, b) = (Tensor::zeros(gpu, &[n])?, Tensor::zeros(gpu, &[n])?);
        let run = || {
            let mut e = gpu.device().create_command_encoder(&Default::default());
            for _ in 0..4 {
                e.copy_buffer_to_buffer(a.buffer(), 0, b.buffer(), 0, (n * 4) as u64);
            }
            gpu.submit([e.finish()]);
            gpu.wait()
        };
        run()?;
        let mut best = f64::INFINITY;
        for _ in 0..5 {
            let t = Instant::now();
            run()?;
            best = best.min(t.elapsed().as_secs_f64());
        }
        Ok(2.0 * 4.0 * (n * 4) as f64 / best / 1e9)
    }

    /// Matrix optimizers are compute-bound: bytes-moved figures do not describe them.
    fn bench_step(
        name: &str,
        config: &str,
        shapes: &str,
        (warmup, steps): (Option<usize>, Option<usize>),
        json: bool,
    ) -> Result<()> {
        use wgoptim::optim::{Group, Matcher, OptimizerBuilder, OptimizerConfig, ParamStore};
        if shapes != "gpt-small" {
            return Err(Error::InvalidArgument {
                op: "bench step",
                name: "shapes",
                detail: format!("unknown set `{shapes}` (known: gpt-small)"),
            });
        }
        let cfg = OptimizerConfig::from_json(name, config)?;
        let matrix = cfg.takes_matrices();
        let gpu = Gpu::new_blocking()?;
        let specs = gpt_small();
        let refs: Vec<(&str, &[usize])> = specs.iter().map(|(n, s)| (n.as_str(), s.as_slice())).collect();
        let store = ParamStore::new(&gpu, &refs)?;
        let numel = store.params_flat().numel();
        store.grads_flat().write(&(0..numel).map(|i| ((i * 7919) % 1000) as f32 * 1e-4 - 0.05).collect::<Vec<_>>())?;
        let mut b = OptimizerBuilder::new(&gpu);
        b.params_from(&store)?.with_timing(true);
        // Optimizers that take the loss (ScheduleFree+) get a fixed one: the step's work does not depend on it.
        if cfg.takes_loss() {
            b.loss(&Tensor::from_slice(&gpu, &[1], &[2.0])?);
        }
        // Matrix optimizers take the 16 hidden matrices; AdamW the embeddings and LayerNorm parameters.
        if matrix {
            b.rule(Matcher::MatricesExcept(vec!["*emb".into()]), Group::new(cfg));
            b.rule(Matcher::All, Group::new(OptimizerConfig::AdamW(Default::default())));
        } else {
            b.rule(Matcher::All, Group::new(cfg));
        }
        let opt = b.build()?;
        let (warmup, timed, period) = step_counts(&opt, warmup, steps)?;
        // The first step compiles shaders (CPU drivers do at the first dispatch) and runs the cold initial
        // decompositions (SOAP's first eigenbases); it is reported on its own.
        let first_start = Instant::now();
        opt.step()?;
        gpu.wait()?;
        let first_secs = first_start.elapsed().as_secs_f64();
        let warm_start = Instant::now();
        for _ in 0..if matrix { warmup } else { 0 } {
            opt.step()?;
        }
        gpu.wait()?;
        let warmup_secs = warm_start.elapsed().as_secs_f64();
        // Empty where the adapter has no timestamp queries.
        let stages: Vec<(String, f64)> = pollster::block_on(opt.timed_step()).unwrap_or_default();
        let submits = gpu.counters().submits();
        // Elementwise optimizers: the median of 20 replays of the step plan. Matrix optimizers: `timed` steps
        // (whole refresh periods), since refreshes make steps differ.
        let (secs, max_secs, runs) = if matrix {
            let mut times = Vec::new();
            for _ in 0..timed {
                let t = Instant::now();
                opt.step()?;
                gpu.wait()?;
                times.push(t.elapsed().as_secs_f64());
            }
            let max = times.iter().cloned().fold(0.0, f64::max);
            (times.iter().sum::<f64>() / times.len() as f64, max, timed as f64)
        } else {
            let s = time_plan(&gpu, opt.plan(), 20)?;
            (s, s, 21.0)
        };
        // Matrix optimizers again, as many steps queued back to back with one wait: the throughput a training
        // loop sees (the waits above add each step's submit and fence latency).
        let queued_secs = if matrix {
            let t = Instant::now();
            for _ in 0..timed {
                opt.step()?;
            }
            gpu.wait()?;
            t.elapsed().as_secs_f64() / timed as f64
        } else {
            secs
        };
        let runs = if matrix { runs + timed as f64 } else { runs };
        let submits_per_step = (gpu.counters().submits() - submits) as f64 / runs;
        let (dispatches, refresh_dispatches) = opt.dispatch_counts();
        // Bytes each element moves per step: the statistics pass reads g; the update reads g and p and every
        // state tensor and writes p and every state tensor.
        let states = opt.state_names(&specs[0].0)?.len() as f64;
        let bytes = 4.0 * numel as f64 * (1.0 + 2.0 + 2.0 * states + 1.0);
        let gbs = bytes / secs / 1e9;
        let copy = copy_bandwidth(&gpu)?;
        if json {
            out!(
                "{}",
                json!({"adapter": gpu.describe(), "bench": "step", "optimizer": name, "shapes": shapes, "tensors": specs.len(),
                       "values": numel, "first_step_s": first_secs, "warmup_steps": if matrix { warmup } else { 0 }, "timed_steps": if matrix { timed } else { 20 }, "refresh_period": period, "warmup_s": warmup_secs, "ms_per_step": secs * 1e3, "max_ms_per_step": max_secs * 1e3, "queued_ms_per_step": queued_secs * 1e3, "dispatches_per_step": dispatches, "refresh_dispatches": refresh_dispatches,
                       "submits_per_step": submits_per_step, "stage_ms": stages.iter().map(|(n, t)| (n.clone(), t * 1e3)).collect::<std::collections::BTreeMap<_, _>>(), "gb_per_s": gbs, "copy_gb_per_s": copy, "fraction_of_copy": gbs / copy})
            );
        } else {
            out!("{name} step over {shapes} ({} tensors, {numel} values) on {}", specs.len(), gpu.describe());
            let mean = if matrix { format!("mean (slowest {:.3} ms)", max_secs * 1e3) } else { "median".into() };
            out!(
                "  {:.3} ms per step {mean}, {dispatches} dispatches (+ up to {refresh_dispatches} on refresh steps), \
                 {submits_per_step} submit(s) per step, 0 readbacks",
                secs * 1e3,
            );
            if !matrix {
                out!("  {gbs:.2} GB/s moved vs {copy:.2} GB/s buffer copy ({:.0} %)", 100.0 * gbs / copy);
            } else {
                let whole = period.map_or(String::new(), |p| format!(", whole refresh periods of {p}"));
                out!("  over {timed} steps waited one by one{whole}");
                out!("  {:.3} ms per step with {timed} steps queued back to back (one wait)", queued_secs * 1e3);
            }
            if matrix && warmup > 0 {
                out!(
                    "  (after a first step of {first_secs:.3} s with shader compiles and cold initial decompositions, \
                     and {warmup} untimed warm-up steps: {warmup_secs:.3} s, first refreshes from cold included)"
                );
            }
            if !stages.is_empty() {
                let parts: Vec<String> = stages.iter().map(|(n, t)| format!("{n} {:.3} ms", t * 1e3)).collect();
                out!("  device time per stage: {}", parts.join(", "));
            }
        }
        Ok(())
    }

    /// Warm-up and timed step counts for `bench step`: by default 20 of each, the warm-up lengthened until every
    /// stack has made one warm refresh and the timed steps rounded up to whole refresh periods (also returned).
    fn step_counts(
        opt: &wgoptim::optim::Optimizer,
        warmup: Option<usize>,
        steps: Option<usize>,
    ) -> Result<(usize, usize, Option<u64>)> {
        const MOST: u64 = 10_000;
        let cadence = opt.refresh_cadence();
        // The first step runs before the warm-up.
        let warm = cadence.map_or(0, |c| c.warm_after.saturating_sub(1));
        let period = cadence.map(|c| c.period);
        let timed = match (steps, period) {
            (Some(0), _) => {
                return Err(Error::InvalidArgument { op: "bench step", name: "steps", detail: "must be ≥ 1".into() })
            }
            (Some(n), _) => n,
            (None, Some(p)) if p > MOST => {
                return Err(Error::InvalidArgument {
                    op: "bench step",
                    name: "steps",
                    detail: format!(
                        "the refreshes repeat every {p} steps, more than the {MOST} timed by default: pass --steps \
                         (fewer than a period give a mean without its share of refreshes)"
                    ),
                })
            }
            (None, Some(p)) => (20u64.div_ceil(p) * p) as usize,
            (None, None) => 20,
        };
        let warmup = warmup.unwrap_or(20.max(warm.min(MOST) as usize));
        Ok((warmup, timed, period))
    }

    fn training_text(path: Option<&std::path::Path>) -> Result<(String, String)> {
        let path = path.map(|p| p.to_path_buf()).or_else(|| {
            std::env::var_os("WGOPTIM_DATA_DIR").map(|d| std::path::PathBuf::from(d).join("tinyshakespeare.txt"))
        });
        if let Some(p) = path {
            let text = std::fs::read_to_string(&p).map_err(|e| Error::InvalidArgument {
                op: "bench train",
                name: "data",
                detail: format!("cannot read {}: {e}", p.display()),
            })?;
            return Ok((text, p.display().to_string()));
        }
        let chars: Vec<char> = "\n !$&',-.3:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz".chars().collect();
        let mut rng = wgoptim::nn::Rng::new(7);
        let text = (0..200_000).map(|_| chars[rng.below(chars.len() as u64) as usize]).collect();
        Ok((text, "synthetic text over Tiny Shakespeare's 65 characters".into()))
    }

    fn bench_train(
        preset: &str,
        optimizer: &str,
        data: Option<&std::path::Path>,
        steps: usize,
        ops: bool,
        json: bool,
    ) -> Result<()> {
        use wgoptim::nn::{CharData, Preset, Recipe, RunConfig, Trainer};
        let (text, source) = training_text(data)?;
        let data = CharData::from_text(&text)?;
        let gpu = Gpu::new_blocking()?;
        let p = Preset::named(preset, data.vocab_size())?;
        let recipe = Recipe::new(optimizer, p.iters);
        let config = RunConfig { model: p.model.clone(), batch: p.batch, seed: 1337, recipe };
        let flops = p.model.train_flops(p.batch * p.model.block);
        let mut t = Trainer::new(&gpu, data.clone(), config.clone())?;
        for _ in 0..2 {
            pollster::block_on(t.step())?; // warm up: CPU drivers compile shaders at first dispatch
        }
        pollster::block_on(t.flush())?;
        let (submits, dispatches) = (gpu.counters().submits(), gpu.counters().dispatches());
        let start = Instant::now();
        for _ in 0..steps.max(1) {
            pollster::block_on(t.step())?;
        }
        pollster::block_on(t.flush())?;
        let secs = start.elapsed().as_secs_f64() / steps.max(1) as f64;
        let submits_per_step = (gpu.counters().submits() - submits) as f64 / steps.max(1) as f64;
        let dispatches_per_step = (gpu.counters().dispatches() - dispatches) as f64 / steps.max(1) as f64;
        let tokens_per_s = (p.batch * p.model.block) as f64 / secs;
        let timing = if gpu.features().contains(wgpu::Features::TIMESTAMP_QUERY) {
            let mut timed = Trainer::new_timed(&gpu, data, config, ops)?;
            pollster::block_on(timed.timed_step())?;
            Some(pollster::block_on(timed.timed_step())?)
        } else {
            None
        };
        let (mm, _) = matmul_gflops(&gpu, 512)?;
        let gflops = flops / secs / 1e9;
        if json {
            let split = timing.as_ref().map(|s| json!({"forward_ms": s.forward * 1e3, "backward_ms": s.backward * 1e3,
                "optimizer_ms": s.optimizer * 1e3, "ops_ms": s.ops.iter().map(|(n, t)| (n.clone(), t * 1e3)).collect::<std::collections::BTreeMap<_, _>>()}));
            out!(
                "{}",
                json!({"adapter": gpu.describe(), "bench": "train", "preset": preset, "optimizer": optimizer, "data": source,
                       "ms_per_step": secs * 1e3, "tokens_per_s": tokens_per_s, "gflop_per_step": flops / 1e9,
                       "gflops": gflops, "matmul_gflops_512": mm, "fraction_of_matmul": gflops / mm,
                       "submits_per_step": submits_per_step, "dispatches_per_step": dispatches_per_step, "split": split})
            );
            return Ok(());
        }
        out!("train step, {preset} preset, {optimizer}, on {} ({source})", gpu.describe());
        out!("  {:.1} ms per step, {tokens_per_s:.0} tokens/s, {submits_per_step} submit(s) and {dispatches_per_step} dispatches per step", secs * 1e3);
        out!(
            "  {:.2} GFLOP per step → {gflops:.2} GFLOPS ({:.0} % of this device's {mm:.2} GFLOPS matmul at n=512)",
            flops / 1e9,
            100.0 * gflops / mm
        );
        if let Some(s) = timing {
            out!(
                "  device time: forward {:.1} ms, backward {:.1} ms, optimizer {:.1} ms",
                s.forward * 1e3,
                s.backward * 1e3,
                s.optimizer * 1e3
            );
            for (name, t) in &s.ops {
                out!("    {name:<24} {:.2} ms", t * 1e3);
            }
        }
        Ok(())
    }

    fn info() -> Result<()> {
        let options = GpuOptions::from_env();
        let chosen = Gpu::new_blocking();
        let adapters = Gpu::list_adapters(&options);
        if adapters.is_empty() {
            return Err(chosen.err().unwrap_or(Error::NoAdapter { detail: String::new() }));
        }
        let used = chosen.as_ref().ok().map(|g| g.info().clone());
        for a in adapters {
            let i = a.get_info();
            let f = a.features();
            let l = a.limits();
            let mark = if used.as_ref().is_some_and(|u| u.name == i.name && u.backend == i.backend) {
                "  <- used"
            } else {
                ""
            };
            out!("{} ({:?}, {:?}){mark}", i.name, i.backend, i.device_type);
            out!("  driver: {} {}", i.driver, i.driver_info);
            let feats: Vec<&str> = [
                (wgpu::Features::SHADER_F16, "SHADER_F16"),
                (wgpu::Features::SUBGROUP, "SUBGROUP"),
                (wgpu::Features::TIMESTAMP_QUERY, "TIMESTAMP_QUERY"),
                (wgpu::Features::TIMESTAMP_QUERY_INSIDE_PASSES, "TIMESTAMP_QUERY_INSIDE_PASSES"),
            ]
            .iter()
            .filter(|(flag, _)| f.contains(*flag))
            .map(|(_, n)| *n)
            .collect();
            out!("  features: {}", if feats.is_empty() { "none of interest".into() } else { feats.join(", ") });
            out!(
                "  limits: storage binding {} MiB, buffer {} MiB, workgroup memory {} KiB, {} invocations/workgroup, \
                 {} workgroups/dimension, subgroup size {}..{}",
                l.max_storage_buffer_binding_size >> 20,
                l.max_buffer_size >> 20,
                l.max_compute_workgroup_storage_size >> 10,
                l.max_compute_invocations_per_workgroup,
                l.max_compute_workgroups_per_dimension,
                i.subgroup_min_size,
                i.subgroup_max_size,
            );
        }
        if let Err(e) = chosen {
            out!("no adapter could be opened: {e}");
        }
        Ok(())
    }

    /// Seconds per run of `plan` (median of `runs` after one warm-up run).
    fn time_plan(gpu: &Gpu, plan: &wgoptim::Plan, runs: usize) -> Result<f64> {
        plan.run();
        gpu.wait()?;
        let mut times: Vec<f64> = (0..runs)
            .map(|_| {
                let t = Instant::now();
                plan.run();
                gpu.wait().map(|_| t.elapsed().as_secs_f64())
            })
            .collect::<Result<_>>()?;
        times.sort_by(f64::total_cmp);
        Ok(times[times.len() / 2])
    }

    /// Measured matmul GFLOPS for an n×n×n product, and the first-call seconds (compile + run).
    pub fn matmul_gflops(gpu: &Gpu, n: usize) -> Result<(f64, f64)> {
        let (gflops, first, _) = matmul_shape_gflops(gpu, [n, n, n], (Trans::N, Trans::N), None)?;
        Ok((gflops, first))
    }

    /// Measured GFLOPS of `op(A)·op(B)` with op(A) m×k and op(B) k×n, the first-call seconds, and the kernel
    /// variant that ran.
    fn matmul_shape_gflops(
        gpu: &Gpu,
        [m, k, n]: [usize; 3],
        (ta, tb): (Trans, Trans),
        variant: Option<MatmulVariant>,
    ) -> Result<(f64, f64, MatmulVariant)> {
        let product = |a, b, o| {
            let mut mm = Matmul::new(a, b, o).trans(ta, tb);
            mm.variant = variant;
            mm
        };
        let a = Tensor::from_slice(
            gpu,
            &if ta == Trans::N { [m, k] } else { [k, m] },
            &(0..m * k).map(|i| (i % 7) as f32 * 0.1).collect::<Vec<_>>(),
        )?;
        let b = Tensor::from_slice(
            gpu,
            &if tb == Trans::N { [k, n] } else { [n, k] },
            &(0..k * n).map(|i| (i % 5) as f32 * 0.1).collect::<Vec<_>>(),
        )?;
        let o = Tensor::zeros(gpu, &[m, n])?;
        let t = Instant::now();
        let mut pb = PlanBuilder::new(gpu);
        product(&a, &b, &o).record(&mut pb)?;
        pb.build()?.run();
        gpu.wait()?;
        let first = t.elapsed().as_secs_f64();
        let flops = 2.0 * (m * k * n) as f64;
        // Enough repetitions in one plan that submit overhead is negligible.
        let reps = (2e9 / flops).clamp(1.0, 64.0) as usize;
        let mut pb = PlanBuilder::new(gpu);
        for _ in 0..reps {
            product(&a, &b, &o).record(&mut pb)?;
        }
        let plan = pb.build()?;
        let secs = time_plan(gpu, &plan, 3)? / reps as f64;
        Ok((flops / secs / 1e9, first, product(&a, &b, &o).chosen_variant(gpu)?))
    }

    fn bench_matmul(sizes: &[String], trans: &str, variant: &str, json: bool) -> Result<()> {
        let variant: Option<MatmulVariant> = if variant == "auto" { None } else { Some(variant.parse()?) };
        let bad = |detail: String| Error::InvalidArgument { op: "bench matmul", name: "sizes", detail };
        let t = |c: char| if c == 'T' || c == 't' { Trans::T } else { Trans::N };
        let tr: Vec<char> = trans.chars().collect();
        if tr.len() != 2 || !tr.iter().all(|c| "NnTt".contains(*c)) {
            return Err(Error::InvalidArgument {
                op: "bench matmul",
                name: "trans",
                detail: format!("`{trans}`: NN, NT, TN or TT"),
            });
        }
        let gpu = Gpu::new_blocking()?;
        let mut rows = Vec::new();
        for size in sizes {
            let dims: Vec<usize> = size.split(['x', 'X']).map(|d| d.trim().parse().unwrap_or(0)).collect();
            let mkn = match dims[..] {
                [n] if n > 0 => [n, n, n],
                [m, k, n] if m * k * n > 0 => [m, k, n],
                _ => return Err(bad(format!("`{size}` is not N or MxKxN with positive sizes"))),
            };
            let (gflops, first, ran) = matmul_shape_gflops(&gpu, mkn, (t(tr[0]), t(tr[1])), variant)?;
            let ran = format!("{ran:?}").to_lowercase();
            let label = if variant.is_some() { ran } else { format!("auto: {ran}") };
            if !json {
                out!(
                    "matmul f32 {trans} {size:>12}: {gflops:8.2} GFLOPS   (first call incl. compile {:.0} ms, {})   on {}",
                    first * 1e3,
                    label,
                    gpu.describe()
                );
            }
            rows.push(json!({"size": size, "trans": trans, "variant": label, "gflops": gflops, "first_call_s": first}));
        }
        if json {
            out!("{}", json!({"adapter": gpu.describe(), "bench": "matmul", "results": rows}));
        }
        Ok(())
    }

    fn bench_decomp(n: usize, batch: usize, ops: Option<&str>, method: &str, json: bool) -> Result<()> {
        use wgoptim::linalg::{eigh, gram, inverse_root_newton, qr, EighConfig, EighMethod, GramSide};
        let method = match method {
            "auto" => EighMethod::Auto,
            "workgroup" => EighMethod::Workgroup,
            "rounds" => EighMethod::Rounds,
            "tridiagonal" => EighMethod::Tridiagonal,
            other => {
                return Err(Error::InvalidArgument {
                    op: "bench decomp",
                    name: "method",
                    detail: format!("`{other}` (known: auto, workgroup, rounds, tridiagonal)"),
                })
            }
        };
        let cfg = EighConfig { method, ..EighConfig::default() };
        if n == 0 || batch == 0 {
            return Err(Error::InvalidArgument {
                op: "bench decomp",
                name: "n",
                detail: "n and batch must be ≥ 1".into(),
            });
        }
        let gpu = Gpu::new_blocking()?;
        let x = Tensor::from_slice(
            &gpu,
            &[batch, n, 2 * n],
            &(0..batch * 2 * n * n).map(|i| ((i * 7919) % 1000) as f32 * 1e-3 - 0.5).collect::<Vec<_>>(),
        )?;
        let spd = Tensor::zeros(&gpu, &[batch, n, n])?;
        let mut pb = PlanBuilder::new(&gpu);
        gram(&mut pb, &x, GramSide::Rows, &spd, 1.0 / n as f32, None, 0.0, Default::default())?;
        pb.build()?.run();
        let (out, out2) = (Tensor::zeros(&gpu, &[batch, n, n])?, Tensor::zeros(&gpu, &[batch, n, n])?);
        let vals = Tensor::zeros(&gpu, &[batch, n])?;
        let wanted = |op: &str| ops.is_none_or(|o| o.split(',').any(|x| x == op));
        // The warm starts' bases (untimed): the matrix's own eigenvectors, and those of a matrix 1e-3 away (a
        // factor EMA a few steps earlier).
        let basis = Tensor::zeros(&gpu, &[batch, n, n])?;
        let drifted = Tensor::zeros(&gpu, &[batch, n, n])?;
        if wanted("eigh_warm") || wanted("eigh_drift") {
            let x2 = Tensor::from_slice(
                &gpu,
                &[batch, n, 2 * n],
                &(0..batch * 2 * n * n).map(|i| ((i * 6007 + 11) % 997) as f32 * 1e-3 - 0.5).collect::<Vec<_>>(),
            )?;
            let near = Tensor::zeros(&gpu, &[batch, n, n])?;
            let mut pb = PlanBuilder::new(&gpu);
            eigh(&mut pb, &spd, &vals, &basis, None, &cfg)?;
            gram(&mut pb, &x2, GramSide::Rows, &near, 1e-3 / n as f32, Some(&spd), 1.0, Default::default())?;
            eigh(&mut pb, &near, &vals, &drifted, None, &cfg)?;
            pb.build()?.run();
        }
        type Record<'a> = Box<dyn Fn(&mut PlanBuilder) -> Result<()> + 'a>;
        let cases: [(&str, Record); 5] = [
            ("qr", Box::new(|pb| qr(pb, &spd, &out, &out2))),
            ("eigh_cold", Box::new(|pb| eigh(pb, &spd, &vals, &out, None, &cfg))),
            // Warm start from the exact basis: the cost of a refresh when the factor barely moved.
            ("eigh_warm", Box::new(|pb| eigh(pb, &spd, &vals, &out2, Some(&basis), &cfg))),
            // Warm start from a nearby matrix's basis: a refresh in training, where the factor moved.
            ("eigh_drift", Box::new(|pb| eigh(pb, &spd, &vals, &out2, Some(&drifted), &cfg))),
            ("inverse_root_newton", Box::new(|pb| inverse_root_newton(pb, &spd, &out2, 4, 1e-6, 20))),
        ];
        let mut rows = Vec::new();
        if let Some(unknown) = ops.into_iter().flat_map(|o| o.split(',')).find(|o| !cases.iter().any(|c| c.0 == *o)) {
            return Err(Error::InvalidArgument {
                op: "bench decomp",
                name: "ops",
                detail: format!("unknown op `{unknown}`"),
            });
        }
        for (name, record) in cases.iter().filter(|c| wanted(c.0)) {
            let mut pb = PlanBuilder::new(&gpu);
            record(&mut pb)?;
            let plan = pb.build()?;
            let secs = time_plan(&gpu, &plan, 3)?;
            rows.push(json!({"op": name, "ms_per_call": secs * 1e3, "dispatches": plan.dispatch_count()}));
            if !json {
                out!(
                    "{name:>20} {n}x{n} x{batch}: {:10.2} ms per call, {} dispatches",
                    secs * 1e3,
                    plan.dispatch_count()
                );
            }
        }
        if json {
            out!("{}", json!({"adapter": gpu.describe(), "bench": "decomp", "n": n, "batch": batch, "results": rows}));
        } else {
            out!("  on {}", gpu.describe());
        }
        Ok(())
    }

    fn bench_polar(shape: &str, batch: usize, json: bool) -> Result<()> {
        let bad = || Error::InvalidArgument {
            op: "bench polar",
            name: "shape",
            detail: format!("`{shape}` is not ROWSxCOLS"),
        };
        let (m, n) = shape.split_once(['x', 'X']).ok_or_else(bad)?;
        let (m, n): (usize, usize) = (m.trim().parse().map_err(|_| bad())?, n.trim().parse().map_err(|_| bad())?);
        if m == 0 || n == 0 || batch == 0 {
            return Err(bad());
        }
        let gpu = Gpu::new_blocking()?;
        let g = Tensor::from_slice(
            &gpu,
            &[batch, m, n],
            &(0..batch * m * n).map(|i| ((i * 7919) % 1000) as f32 * 1e-3 - 0.5).collect::<Vec<_>>(),
        )?;
        let out = Tensor::zeros(&gpu, &[batch, m, n])?;
        let cfg = PolarConfig::default();
        let t = Instant::now();
        let mut pb = PlanBuilder::new(&gpu);
        polar(&mut pb, &g, &out, &cfg)?;
        let plan = pb.build()?;
        let build = t.elapsed().as_secs_f64();
        let submits = gpu.counters().submits();
        let secs = time_plan(&gpu, &plan, 5)?;
        let submits_per_call = (gpu.counters().submits() - submits) as f64 / 6.0;
        // Dense FLOPs per step on the small side k: X·Xᵀ (2k²N), A·A (2k³), B·X (2k²N).
        let (k, big) = (m.min(n) as f64, m.max(n) as f64);
        let flops = cfg.steps as f64 * batch as f64 * (4.0 * k * k * big + 2.0 * k * k * k);
        let gflops = flops / secs / 1e9;
        let (mm, _) = matmul_gflops(&gpu, 1024)?;
        if json {
            out!(
                "{}",
                json!({"adapter": gpu.describe(), "bench": "polar", "shape": [m, n], "batch": batch, "steps": cfg.steps,
                       "ms_per_call": secs * 1e3, "gflops": gflops, "matmul_gflops_1024": mm, "fraction_of_matmul": gflops / mm,
                       "dispatches_per_call": plan.dispatch_count(), "submits_per_call": submits_per_call, "plan_build_s": build})
            );
        } else {
            out!("polar {m}x{n} x{batch}, {} Newton–Schulz steps on {}", cfg.steps, gpu.describe());
            out!(
                "  {:.2} ms per call, {gflops:.2} GFLOPS ({:.0} % of matmul's {mm:.2} GFLOPS at n=1024)",
                secs * 1e3,
                100.0 * gflops / mm
            );
            out!(
                "  {} dispatches, {submits_per_call} submit(s) per call; plan built in {:.0} ms",
                plan.dispatch_count(),
                build * 1e3
            );
        }
        Ok(())
    }
}
