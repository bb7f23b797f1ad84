//! Embedding wgoptim in another engine: this program owns the wgpu device, the buffers and the gradient
//! computation (a least-squares problem, gradients by its own WGSL), and uses wgoptim only for the optimizer
//! step, recorded into its own command encoder — one submit per iteration, no readback until the end.
//!
//! Run: `cargo run --release --example embed`

use wgoptim::optim::{AdamWConfig, Group, Matcher, OptimizerBuilder, OptimizerConfig};
use wgoptim::{Gpu, Tensor};

const M: usize = 256; // equations
const N: usize = 32; // unknowns

/// The host's own gradient kernels: r = A·x − b, then g = Aᵀ·r / M.
const GRAD_WGSL: &str = r#"
@group(0) @binding(0) var<storage, read> a: array<f32>;
@group(0) @binding(1) var<storage, read> b: array<f32>;
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read_write> r: array<f32>;
@compute @workgroup_size(64) fn residual(@builtin(global_invocation_id) id: vec3<u32>) {
    if (id.x >= 256u) { return; }
    var s = -b[id.x];
    for (var j = 0u; j < 32u; j++) { s += a[id.x * 32u + j] * x[j]; }
    r[id.x] = s;
}
@group(0) @binding(0) var<storage, read> a2: array<f32>;
@group(0) @binding(1) var<storage, read> r2: array<f32>;
@group(0) @binding(2) var<storage, read_write> g: array<f32>;
@compute @workgroup_size(32) fn gradient(@builtin(global_invocation_id) id: vec3<u32>) {
    if (id.x >= 32u) { return; }
    var s = 0.0;
    for (var i = 0u; i < 256u; i++) { s += a2[i * 32u + id.x] * r2[i]; }
    g[id.x] = s / 256.0;
}
"#;

fn lcg(seed: &mut u64) -> f32 {
    *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    ((*seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
}

/// Solve the problem with `iters` AdamW steps; returns (initial loss, final loss).
pub fn run(iters: usize) -> Result<(f64, f64), Box<dyn std::error::Error>> {
    // The host's device, created with plain wgpu.
    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
    let adapter = pollster::block_on(instance.request_adapter(&Default::default()))?;
    let (device, queue) = pollster::block_on(adapter.request_device(&Default::default()))?;

    // The problem: b = A·x_true, so the optimum has loss 0.
    let mut seed = 7;
    let a: Vec<f32> = (0..M * N).map(|_| lcg(&mut seed)).collect();
    let x_true: Vec<f32> = (0..N).map(|_| lcg(&mut seed)).collect();
    let b: Vec<f32> = (0..M).map(|i| (0..N).map(|j| a[i * N + j] * x_true[j]).sum()).collect();
    let usage = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::COPY_SRC;
    let buffer = |label: &str, data: &[f32]| {
        let buf = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: (data.len() * 4) as u64,
            usage,
            mapped_at_creation: false,
        });
        queue.write_buffer(&buf, 0, bytemuck::cast_slice(data));
        buf
    };
    let (a_buf, b_buf) = (buffer("A", &a), buffer("b", &b));
    let (x_buf, r_buf, g_buf) = (buffer("x", &[0.0; N]), buffer("r", &[0.0; M]), buffer("g", &[0.0; N]));

    let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some("host grads"),
        source: wgpu::ShaderSource::Wgsl(GRAD_WGSL.into()),
    });
    let pipeline = |entry: &str| {
        device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(entry),
            layout: None,
            module: &module,
            entry_point: Some(entry),
            compilation_options: Default::default(),
            cache: None,
        })
    };
    let (residual, gradient) = (pipeline("residual"), pipeline("gradient"));
    let bind = |p: &wgpu::ComputePipeline, bufs: &[&wgpu::Buffer]| {
        let entries: Vec<wgpu::BindGroupEntry> = bufs
            .iter()
            .enumerate()
            .map(|(i, b)| wgpu::BindGroupEntry { binding: i as u32, resource: b.as_entire_binding() })
            .collect();
        device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: None,
            layout: &p.get_bind_group_layout(0),
            entries: &entries,
        })
    };
    let residual_bg = bind(&residual, &[&a_buf, &b_buf, &x_buf, &r_buf]);
    let gradient_bg = bind(&gradient, &[&a_buf, &r_buf, &g_buf]);

    // wgoptim sees the host's device and two of its buffers, nothing more.
    let gpu = Gpu::from_wgpu(device.clone(), queue.clone());
    let x = Tensor::from_buffer(&gpu, x_buf.clone(), 0, &[N])?;
    let g = Tensor::from_buffer(&gpu, g_buf.clone(), 0, &[N])?;
    let mut builder = OptimizerBuilder::new(&gpu);
    builder.param("x", &x, &g)?.rule(
        Matcher::All,
        Group::new(OptimizerConfig::AdamW(AdamWConfig { lr: 0.05, weight_decay: 0.0, ..Default::default() })),
    );
    let optimizer = builder.build()?;

    let loss = |x: &[f32]| -> f64 {
        (0..M)
            .map(|i| ((0..N).map(|j| a[i * N + j] as f64 * x[j] as f64).sum::<f64>() - b[i] as f64).powi(2))
            .sum::<f64>()
            / (2 * M) as f64
    };
    let initial = loss(&[0.0; N]);
    for _ in 0..iters {
        let mut encoder = device.create_command_encoder(&Default::default());
        {
            let mut pass = encoder.begin_compute_pass(&Default::default());
            pass.set_pipeline(&residual);
            pass.set_bind_group(0, &residual_bg, &[]);
            pass.dispatch_workgroups(M.div_ceil(64) as u32, 1, 1);
            pass.set_pipeline(&gradient);
            pass.set_bind_group(0, &gradient_bg, &[]);
            pass.dispatch_workgroups(1, 1, 1);
        }
        optimizer.record(&mut encoder)?;
        queue.submit([encoder.finish()]);
    }
    let final_x = x.read_blocking()?;
    Ok((initial, loss(&final_x)))
}

#[allow(dead_code)]
fn main() {
    match run(500) {
        Ok((first, last)) => println!(
            "least squares {M}×{N}: loss {first:.6} → {last:.3e} with wgoptim's AdamW inside the host's own encoder"
        ),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
}
