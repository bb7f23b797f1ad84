//! Criterion benchmarks of the core kernels on the present adapter (named in each group).
//! Run: `cargo bench --bench linalg`.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use wgoptim::linalg::{eigh, polar, EighConfig, Matmul, PolarConfig};
use wgoptim::{Gpu, PlanBuilder, Tensor};

fn gpu() -> Gpu {
    Gpu::new_blocking().unwrap_or_else(|e| panic!("benchmarks need an adapter: {e}"))
}

/// One timed unit: submit the plan and wait for the device.
fn run(gpu: &Gpu, plan: &wgoptim::Plan) {
    plan.run();
    gpu.wait().unwrap();
}

fn filled(gpu: &Gpu, shape: &[usize]) -> Tensor {
    let n: usize = shape.iter().product();
    Tensor::from_slice(gpu, shape, &(0..n).map(|i| ((i * 7919) % 1000) as f32 * 1e-3 - 0.5).collect::<Vec<_>>())
        .unwrap()
}

fn bench(c: &mut Criterion) {
    let gpu = gpu();
    let adapter = gpu.describe();
    let mut g = c.benchmark_group(format!("matmul on {adapter}"));
    g.sample_size(10);
    for n in [256usize, 512] {
        let (a, b, o) = (filled(&gpu, &[n, n]), filled(&gpu, &[n, n]), Tensor::zeros(&gpu, &[n, n]).unwrap());
        let mut pb = PlanBuilder::new(&gpu);
        Matmul::new(&a, &b, &o).record(&mut pb).unwrap();
        let plan = pb.build().unwrap();
        g.throughput(Throughput::Elements(2 * (n as u64).pow(3)));
        g.bench_function(format!("n={n}"), |bch| bch.iter(|| run(&gpu, &plan)));
    }
    g.finish();

    let mut g = c.benchmark_group(format!("polar on {adapter}"));
    g.sample_size(10);
    for (m, n, batch) in [(128usize, 512usize, 4usize), (384, 1536, 1)] {
        let x = filled(&gpu, &[batch, m, n]);
        let out = Tensor::zeros(&gpu, &[batch, m, n]).unwrap();
        let mut pb = PlanBuilder::new(&gpu);
        polar(&mut pb, &x, &out, &PolarConfig::default()).unwrap();
        let plan = pb.build().unwrap();
        g.bench_function(format!("{m}x{n}x{batch}"), |bch| bch.iter(|| run(&gpu, &plan)));
    }
    g.finish();

    let mut g = c.benchmark_group(format!("eigh on {adapter}"));
    g.sample_size(10);
    let n = 128;
    let x = filled(&gpu, &[n, n]);
    let sym = Tensor::zeros(&gpu, &[n, n]).unwrap();
    let (vals, vecs) = (Tensor::zeros(&gpu, &[n]).unwrap(), Tensor::zeros(&gpu, &[n, n]).unwrap());
    let mut pb = PlanBuilder::new(&gpu);
    wgoptim::linalg::gram(&mut pb, &x, wgoptim::linalg::GramSide::Rows, &sym, 1.0, None, 0.0, Default::default())
        .unwrap();
    eigh(&mut pb, &sym, &vals, &vecs, None, &EighConfig::default()).unwrap();
    let plan = pb.build().unwrap();
    g.bench_function(format!("jacobi n={n}"), |bch| bch.iter(|| run(&gpu, &plan)));
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
