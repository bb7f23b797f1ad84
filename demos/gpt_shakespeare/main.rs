//! Train a character-level GPT on Tiny Shakespeare with any wgoptim optimizer, natively.
//!
//! `cargo run --release --example gpt_shakespeare -- [--preset tiny|small|baby] [--optimizer muon] …`
//! See `demos/gpt_shakespeare/README.md`.

mod data;
mod plot;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use plot::Curve;
use pollster::block_on;
use wgoptim::nn::{CharData, Preset, Recipe, RunConfig, Split, Trainer};
use wgoptim::Gpu;

/// Train nanoGPT's Shakespeare-char model on the GPU with wgoptim.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Tiny Shakespeare text file (default: $WGOPTIM_DATA_DIR/tinyshakespeare.txt, the cache, or a download).
    #[arg(long)]
    data: Option<PathBuf>,
    /// tiny (smoke run), small (nanoGPT's CPU config) or baby (nanoGPT's GPU config); default: small on a CPU
    /// adapter, baby on a GPU.
    #[arg(long)]
    preset: Option<String>,
    /// Optimizer for the hidden matrices (the rest use AdamW), or `fusion_opt` for the composite.
    #[arg(long, default_value = "adamw")]
    optimizer: String,
    /// Learning rate of the named optimizer (default: its own; AdamW 1e-3 as nanoGPT).
    #[arg(long)]
    lr: Option<f32>,
    /// Training steps.
    #[arg(long)]
    iters: Option<u32>,
    /// Sequences per step.
    #[arg(long)]
    batch: Option<usize>,
    /// Context length.
    #[arg(long)]
    block: Option<usize>,
    /// Transformer blocks.
    #[arg(long)]
    layers: Option<usize>,
    /// Embedding width.
    #[arg(long)]
    width: Option<usize>,
    /// Attention heads.
    #[arg(long)]
    heads: Option<usize>,
    /// Dropout probability.
    #[arg(long)]
    dropout: Option<f32>,
    /// Seed for initialization, batches and dropout.
    #[arg(long, default_value_t = 1337)]
    seed: u64,
    /// Steps between validation-loss estimates.
    #[arg(long)]
    eval_interval: Option<u32>,
    /// Batches per loss estimate.
    #[arg(long)]
    eval_iters: Option<usize>,
    /// Characters to generate at the end (0: none).
    #[arg(long, default_value_t = 500)]
    sample: usize,
    /// Sampling temperature.
    #[arg(long, default_value_t = 0.8)]
    temperature: f32,
    /// Sample only among the k most likely characters (0: all).
    #[arg(long, default_value_t = 200)]
    top_k: usize,
    /// Output folder (loss.csv, loss.png, checkpoint.safetensors, sample.txt).
    #[arg(long, default_value = "out/gpt_shakespeare")]
    out: PathBuf,
    /// Continue from the checkpoint in --out, bit-exactly.
    #[arg(long)]
    resume: bool,
    /// Train the same model from the same init with each of these optimizers (comma-separated) and compare.
    #[arg(long, value_delimiter = ',')]
    compare: Vec<String>,
}

struct Summary {
    name: String,
    val: f32,
    tokens_per_s: f64,
    ms_per_step: f64,
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<(), String> {
    let text = data::load(args.data.as_deref())?;
    let data = CharData::from_text(&text).map_err(|e| e.to_string())?;
    let gpu = Gpu::new_blocking().map_err(|e| e.to_string())?;
    println!("adapter: {}", gpu.describe());
    let preset_name = args.preset.clone().unwrap_or_else(|| {
        let name = if gpu.is_cpu() { "small" } else { "baby" };
        println!("no --preset: using `{name}` for a {} adapter", if gpu.is_cpu() { "CPU" } else { "GPU" });
        name.to_string()
    });
    let preset = apply_overrides(Preset::named(&preset_name, data.vocab_size()).map_err(|e| e.to_string())?, &args);
    preset.model.validate().map_err(|e| e.to_string())?;
    println!(
        "model: {} layers, {} heads, width {}, block {}, {:.2}M parameters; batch {}, {} steps, vocab {}",
        preset.model.layers,
        preset.model.heads,
        preset.model.width,
        preset.model.block,
        preset.model.non_embedding_params() as f64 / 1e6,
        preset.batch,
        preset.iters,
        data.vocab_size()
    );
    std::fs::create_dir_all(&args.out).map_err(|e| format!("cannot create {}: {e}", args.out.display()))?;
    if args.compare.is_empty() {
        let s = train(&gpu, &data, &preset, &args.optimizer, &args, &args.out, args.resume, args.sample)?;
        println!("{}: val loss {:.4}, {:.0} tokens/s, {:.1} ms/step", s.name, s.val, s.tokens_per_s, s.ms_per_step);
        return Ok(());
    }
    let mut curves = Vec::new();
    let mut table = String::from("| optimizer | final val loss | tokens/s | ms/step |\n|---|---|---|---|\n");
    for name in &args.compare {
        let dir = args.out.join(name);
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        println!("== {name}");
        let s = train(&gpu, &data, &preset, name, &args, &dir, false, 0)?;
        table += &format!("| {} | {:.4} | {:.0} | {:.1} |\n", s.name, s.val, s.tokens_per_s, s.ms_per_step);
        curves.push(read_curve(&dir.join("loss.csv"), name)?);
    }
    let title = format!("Tiny Shakespeare, {} preset, {}", preset.name, gpu.info().name);
    plot::write_png(&args.out.join("compare.png"), &title, &curves)?;
    std::fs::write(args.out.join("compare.md"), format!("{title}\n\n{table}")).map_err(|e| e.to_string())?;
    println!("\n{table}\nwrote {} and compare.md", args.out.join("compare.png").display());
    Ok(())
}

fn apply_overrides(mut p: Preset, a: &Args) -> Preset {
    let m = &mut p.model;
    m.block = a.block.unwrap_or(m.block);
    m.layers = a.layers.unwrap_or(m.layers);
    m.width = a.width.unwrap_or(m.width);
    m.heads = a.heads.unwrap_or(m.heads);
    m.dropout = a.dropout.unwrap_or(m.dropout);
    p.batch = a.batch.unwrap_or(p.batch);
    let iters = a.iters.unwrap_or(p.iters);
    let mut p = p.with_iters(iters);
    p.eval_interval = a.eval_interval.unwrap_or(p.eval_interval).max(1);
    p.eval_iters = a.eval_iters.unwrap_or(p.eval_iters).max(1);
    p
}

#[allow(clippy::too_many_arguments)]
fn train(
    gpu: &Gpu,
    data: &CharData,
    preset: &Preset,
    optimizer: &str,
    args: &Args,
    out: &Path,
    resume: bool,
    sample: usize,
) -> Result<Summary, String> {
    let e = |e: wgoptim::Error| e.to_string();
    let recipe = Recipe {
        optimizer: optimizer.to_string(),
        lr: args.lr,
        iters: preset.iters,
        warmup: preset.warmup,
        clip: Some(1.0),
    };
    let config = RunConfig { model: preset.model.clone(), batch: preset.batch, seed: args.seed, recipe };
    let mut t = Trainer::new(gpu, data.clone(), config).map_err(e)?;
    let ckpt_path = out.join("checkpoint.safetensors");
    let mut curve = Curve { name: optimizer.to_string(), train: Vec::new(), val: Vec::new() };
    if resume {
        let bytes =
            std::fs::read(&ckpt_path).map_err(|e| format!("--resume: cannot read {}: {e}", ckpt_path.display()))?;
        t.load(&bytes).map_err(e)?;
        if let Ok(prev) = read_curve(&out.join("loss.csv"), optimizer) {
            curve.train = prev.train.into_iter().filter(|p| p.0 < t.steps()).collect();
            curve.val = prev.val.into_iter().filter(|p| p.0 < t.steps()).collect();
        }
        println!("resumed at step {}", t.steps());
    }
    let bar = ProgressBar::new(preset.iters as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} {msg} [{elapsed} < {eta}]").map_err(|e| e.to_string())?,
    );
    bar.set_position(t.steps());
    let tokens_per_step = (preset.batch * preset.model.block) as f64;
    let first_step = t.steps();
    let mut train_time = 0.0f64;
    let mut val = f32::NAN;
    let (mut clock, mut segment_start) = (Instant::now(), t.steps());
    let record = |(step, loss): (u64, f32), curve: &mut Curve, tps: f64| -> Result<(), String> {
        if !loss.is_finite() {
            return Err(format!("the training loss became {loss} at step {step}; try a lower --lr"));
        }
        curve.train.push((step, loss));
        bar.set_position(step + 1);
        bar.set_message(format!("loss {loss:.4}, {tps:.0} tok/s"));
        Ok(())
    };
    while t.steps() < preset.iters as u64 {
        let lagged = block_on(t.step()).map_err(e)?;
        let tps = (t.steps() - segment_start) as f64 * tokens_per_step / clock.elapsed().as_secs_f64().max(1e-9);
        if let Some(l) = lagged {
            record(l, &mut curve, tps)?;
        }
        let done = t.steps();
        if done % preset.eval_interval as u64 == 0 || done == preset.iters as u64 {
            for l in block_on(t.flush()).map_err(e)? {
                record(l, &mut curve, tps)?;
            }
            train_time += clock.elapsed().as_secs_f64();
            let tr = block_on(t.evaluate(Split::Train, preset.eval_iters)).map_err(e)?;
            val = block_on(t.evaluate(Split::Val, preset.eval_iters)).map_err(e)?;
            curve.val.push((done - 1, val));
            let line = format!("step {done}: train loss {tr:.4}, val loss {val:.4}");
            if bar.is_hidden() {
                println!("{line}"); // not a terminal (a log file): plain lines
            } else {
                bar.println(line);
            }
            (clock, segment_start) = (Instant::now(), t.steps());
        }
    }
    bar.finish();
    if val.is_nan() {
        // Nothing left to train (a finished run resumed): still report where it stands.
        val = block_on(t.evaluate(Split::Val, preset.eval_iters)).map_err(e)?;
        println!("step {}: val loss {val:.4} ({} batches)", t.steps(), preset.eval_iters);
    }
    let steps_run = (t.steps() - first_step) as f64;
    let ckpt = block_on(t.save()).map_err(e)?;
    std::fs::write(&ckpt_path, ckpt).map_err(|e| format!("cannot write {}: {e}", ckpt_path.display()))?;
    plot::write_csv(&out.join("loss.csv"), &curve).map_err(|e| e.to_string())?;
    let title = format!("{optimizer} on Tiny Shakespeare ({} preset)", preset.name);
    plot::write_png(&out.join("loss.png"), &title, std::slice::from_ref(&curve))?;
    if sample > 0 {
        let text = block_on(t.sample("\n", sample, args.temperature, args.top_k, args.seed)).map_err(e)?;
        println!("---- sample ----\n{text}\n----------------");
        std::fs::write(out.join("sample.txt"), &text).map_err(|e| e.to_string())?;
    }
    println!("wrote loss.csv, loss.png, checkpoint.safetensors in {}", out.display());
    Ok(Summary {
        name: optimizer.to_string(),
        val,
        // NaN when this call trained no step (a finished run resumed).
        tokens_per_s: if steps_run > 0.0 { steps_run * tokens_per_step / train_time.max(1e-9) } else { f64::NAN },
        ms_per_step: if steps_run > 0.0 { 1e3 * train_time / steps_run } else { f64::NAN },
    })
}

/// Read a `loss.csv` back.
fn read_curve(path: &Path, name: &str) -> Result<Curve, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut c = Curve { name: name.to_string(), train: Vec::new(), val: Vec::new() };
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split(',').collect();
        let (Some(step), Some(loss)) = (f.first().and_then(|s| s.parse().ok()), f.get(1).and_then(|s| s.parse().ok()))
        else {
            continue;
        };
        c.train.push((step, loss));
        if let Some(v) = f.get(2).and_then(|s| s.parse().ok()) {
            c.val.push((step, v));
        }
    }
    Ok(c)
}
