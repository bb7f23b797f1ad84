//! The wgoptim command line: `info` (adapters), `bench matmul`, `bench polar`.

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

#[cfg(not(target_arch = "wasm32"))]
mod cli {
    use std::time::Instant;

    use clap::{Parser, Subcommand};
    use serde_json::json;
    use wgoptim::linalg::{polar, Matmul, PolarConfig};
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
    }

    #[derive(Subcommand)]
    enum Bench {
        /// f32 matmul GFLOPS for square sizes.
        Matmul {
            /// Comma-separated sizes.
            #[arg(long, default_value = "256,512,1024", value_delimiter = ',')]
            sizes: Vec<usize>,
            /// Print JSON instead of a table.
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
            Cmd::Bench { what: Bench::Matmul { sizes, json } } => bench_matmul(&sizes, json),
            Cmd::Bench { what: Bench::Polar { shape, batch, json } } => bench_polar(&shape, batch, json),
        }
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
            let mark = if used.as_ref().is_some_and(|u| u.name == i.name && u.backend == i.backend) { "  <- used" } else { "" };
            println!("{} ({:?}, {:?}){mark}", i.name, i.backend, i.device_type);
            println!("  driver: {} {}", i.driver, i.driver_info);
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
            println!("  features: {}", if feats.is_empty() { "none of interest".into() } else { feats.join(", ") });
            println!(
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
            println!("no adapter could be opened: {e}");
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
        let a = Tensor::from_slice(gpu, &[n, n], &(0..n * n).map(|i| (i % 7) as f32 * 0.1).collect::<Vec<_>>())?;
        let b = Tensor::from_slice(gpu, &[n, n], &(0..n * n).map(|i| (i % 5) as f32 * 0.1).collect::<Vec<_>>())?;
        let o = Tensor::zeros(gpu, &[n, n])?;
        let t = Instant::now();
        let mut pb = PlanBuilder::new(gpu);
        Matmul::new(&a, &b, &o).record(&mut pb)?;
        pb.build()?.run();
        gpu.wait()?;
        let first = t.elapsed().as_secs_f64();
        // Enough repetitions in one plan that submit overhead is negligible.
        let reps = (2e9 / (2.0 * (n as f64).powi(3))).clamp(1.0, 64.0) as usize;
        let mut pb = PlanBuilder::new(gpu);
        for _ in 0..reps {
            Matmul::new(&a, &b, &o).record(&mut pb)?;
        }
        let plan = pb.build()?;
        let secs = time_plan(gpu, &plan, 3)? / reps as f64;
        Ok((2.0 * (n as f64).powi(3) / secs / 1e9, first))
    }

    fn bench_matmul(sizes: &[usize], json: bool) -> Result<()> {
        let gpu = Gpu::new_blocking()?;
        let mut rows = Vec::new();
        for &n in sizes {
            if n == 0 {
                return Err(Error::InvalidArgument { op: "bench matmul", name: "sizes", detail: "sizes must be ≥ 1".into() });
            }
            let (gflops, first) = matmul_gflops(&gpu, n)?;
            if !json {
                println!("matmul f32 n={n:>5}: {gflops:8.2} GFLOPS   (first call incl. compile {:.0} ms)   on {}", first * 1e3, gpu.describe());
            }
            rows.push(json!({"n": n, "gflops": gflops, "first_call_s": first}));
        }
        if json {
            println!("{}", json!({"adapter": gpu.describe(), "bench": "matmul", "results": rows}));
        }
        Ok(())
    }

    fn bench_polar(shape: &str, batch: usize, json: bool) -> Result<()> {
        let bad = || Error::InvalidArgument { op: "bench polar", name: "shape", detail: format!("`{shape}` is not ROWSxCOLS") };
        let (m, n) = shape.split_once(['x', 'X']).ok_or_else(bad)?;
        let (m, n): (usize, usize) = (m.trim().parse().map_err(|_| bad())?, n.trim().parse().map_err(|_| bad())?);
        if m == 0 || n == 0 || batch == 0 {
            return Err(bad());
        }
        let gpu = Gpu::new_blocking()?;
        let g = Tensor::from_slice(&gpu, &[batch, m, n], &(0..batch * m * n).map(|i| ((i * 7919) % 1000) as f32 * 1e-3 - 0.5).collect::<Vec<_>>())?;
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
            println!(
                "{}",
                json!({"adapter": gpu.describe(), "bench": "polar", "shape": [m, n], "batch": batch, "steps": cfg.steps,
                       "ms_per_call": secs * 1e3, "gflops": gflops, "matmul_gflops_1024": mm, "fraction_of_matmul": gflops / mm,
                       "dispatches_per_call": plan.dispatch_count(), "submits_per_call": submits_per_call, "plan_build_s": build})
            );
        } else {
            println!("polar {m}x{n} x{batch}, {} Newton–Schulz steps on {}", cfg.steps, gpu.describe());
            println!("  {:.2} ms per call, {gflops:.2} GFLOPS ({:.0} % of matmul's {mm:.2} GFLOPS at n=1024)", secs * 1e3, 100.0 * gflops / mm);
            println!("  {} dispatches, {submits_per_call} submit(s) per call; plan built in {:.0} ms", plan.dispatch_count(), build * 1e3);
        }
        Ok(())
    }
}
