//! The step plan: dispatches whose bind groups are created once at build time, recorded into
//! one compute pass (one per stage when timing) of one encoder, and submitted once per run.

use std::collections::HashMap;

use crate::error::{Error, Result};
use crate::gpu::{Gpu, Kernel, Tensor};

/// `(binding, buffer)` for each storage binding a kernel uses.
type Bound = Vec<(u32, wgpu::Buffer)>;

struct Pending {
    kernel: Kernel,
    uniform: (u64, u64),
    buffers: Bound,
    workgroups: [u32; 3],
    stage: usize,
}

/// Collects dispatches; [`PlanBuilder::build`] turns them into a [`Plan`].
///
/// Every kernel takes its static arguments (sizes, offsets, alpha/beta) in a small uniform block at
/// binding 0 and its tensors as storage buffers at bindings 1, 2, … (those its entry point does not use are left
/// unbound, so entry points of one file can share a tensor list); all uniform blocks of a plan share
/// one buffer (identical blocks stored once), written once at build time, and bound by dynamic offset: one bind
/// group serves every dispatch of a kernel on the same tensors.
pub struct PlanBuilder {
    gpu: Gpu,
    items: Vec<Pending>,
    uniforms: Vec<u8>,
    uniform_offsets: HashMap<Vec<u8>, u64>,
    stages: Vec<String>,
    timing: bool,
    params: Option<Tensor>,
    transients: Vec<Option<Tensor>>,
}

impl PlanBuilder {
    /// An empty plan for `gpu`, with one stage named `main`.
    pub fn new(gpu: &Gpu) -> PlanBuilder {
        PlanBuilder {
            gpu: gpu.clone(),
            items: Vec::new(),
            uniforms: Vec::new(),
            uniform_offsets: HashMap::new(),
            stages: vec!["main".into()],
            timing: false,
            params: None,
            transients: Vec::new(),
        }
    }

    /// The device.
    pub fn gpu(&self) -> &Gpu {
        &self.gpu
    }

    /// Start a named stage: later dispatches are timed under this name when timing is on.
    pub fn stage(&mut self, name: &str) {
        if self.items.iter().any(|p| p.stage == self.stages.len() - 1) {
            self.stages.push(name.to_string());
        } else if let Some(last) = self.stages.last_mut() {
            *last = name.to_string();
        }
    }

    /// Measure device time per stage with timestamp queries (ignored where the adapter has none).
    pub fn with_timing(mut self, on: bool) -> PlanBuilder {
        self.timing = on && self.gpu.features().contains(wgpu::Features::TIMESTAMP_QUERY);
        self
    }

    /// A zero-filled workspace tensor owned by the plan's caller, allocated now (never per run).
    pub fn scratch(&mut self, shape: &[usize]) -> Result<Tensor> {
        Tensor::zeros(&self.gpu, shape)
    }

    /// A workspace tensor for an intermediate that one operation writes and reads back at once (e.g. an operand
    /// relaid out for a faster kernel). Every transient of one `slot` shares a buffer, grown as needed, so it stays
    /// valid only until the next dispatch that writes a transient of the same slot; dispatches run in order.
    pub fn transient(&mut self, slot: usize, shape: &[usize]) -> Result<Tensor> {
        let len: usize = shape.iter().product::<usize>().max(1);
        if self.transients.len() <= slot {
            self.transients.resize(slot + 1, None);
        }
        let buffer = match &self.transients[slot] {
            Some(t) if t.numel() >= len => t.buffer.clone(),
            _ => {
                let t = Tensor::zeros(&self.gpu, &[len])?;
                let buffer = t.buffer.clone();
                self.transients[slot] = Some(t);
                buffer
            }
        };
        Ok(Tensor { buffer, offset: 0, shape: shape.to_vec(), gpu: self.gpu.clone() })
    }

    /// The per-run parameter block (`len` f32 values, e.g. lr and step), written by [`Plan::set_params`]
    /// once per run; kernels bind it like any tensor.
    pub fn step_params(&mut self, len: usize) -> Result<Tensor> {
        if let Some(p) = &self.params {
            return Ok(p.clone());
        }
        let p = Tensor::zeros(&self.gpu, &[len.max(1)])?;
        self.params = Some(p.clone());
        Ok(p)
    }

    /// Number of dispatches recorded so far.
    pub fn len(&self) -> usize {
        self.items.len()
    }
    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Record one dispatch of `kernel` with `uniforms` at binding 0 and `tensors` at bindings 1…
    pub fn dispatch<U: bytemuck::Pod>(
        &mut self,
        kernel: &Kernel,
        uniforms: &U,
        tensors: &[&Tensor],
        workgroups: [u32; 3],
    ) -> Result<()> {
        let limits = self.gpu.limits();
        for t in tensors {
            if !t.gpu.same_device(&self.gpu) {
                return Err(Error::DeviceMismatch { op: "PlanBuilder::dispatch" });
            }
            let bytes = t.buffer.size();
            if bytes > limits.max_storage_buffer_binding_size {
                return Err(Error::BindingTooLarge {
                    op: "PlanBuilder::dispatch",
                    bytes,
                    limit: limits.max_storage_buffer_binding_size,
                });
            }
        }
        if let Some(&missing) = kernel.bindings.iter().find(|&&b| b as usize > tensors.len()) {
            return Err(Error::InvalidArgument {
                op: "PlanBuilder::dispatch",
                name: "tensors",
                detail: format!("{} uses binding {missing} but {} tensors were given", kernel.name, tensors.len()),
            });
        }
        let used: Vec<(u32, &Tensor)> =
            (1..).zip(tensors.iter().copied()).filter(|(binding, _)| kernel.bindings.contains(binding)).collect();
        for (i, &(bi, a)) in used.iter().enumerate() {
            for &(bj, b) in &used[i + 1..] {
                let writes = kernel.writable.contains(&bi) || kernel.writable.contains(&bj);
                if writes && a.buffer == b.buffer {
                    return Err(Error::InvalidArgument {
                        op: "PlanBuilder::dispatch",
                        name: "tensors",
                        detail: format!(
                            "bindings {} and {} of {} share one buffer and one of them is written: WebGPU rejects \
                             such aliasing (pass the buffer once)",
                            bi, bj, kernel.name
                        ),
                    });
                }
            }
        }
        let max = limits.max_compute_workgroups_per_dimension;
        if workgroups.iter().any(|&w| w > max) {
            return Err(Error::InvalidArgument {
                op: "PlanBuilder::dispatch",
                name: "workgroups",
                detail: format!("{workgroups:?} exceeds the device limit of {max} per dimension ({})", kernel.name),
            });
        }
        let align = limits.min_uniform_buffer_offset_alignment.max(16) as usize;
        let bytes = bytemuck::bytes_of(uniforms);
        let offset = match self.uniform_offsets.get(bytes) {
            Some(&o) => o,
            None => {
                let o = self.uniforms.len().div_ceil(align) * align;
                self.uniforms.resize(o, 0);
                self.uniforms.extend_from_slice(bytes);
                self.uniform_offsets.insert(bytes.to_vec(), o as u64);
                o as u64
            }
        };
        if offset > u32::MAX as u64 {
            return Err(Error::InvalidArgument {
                op: "PlanBuilder::dispatch",
                name: "uniforms",
                detail: "more than 4 GiB of uniform blocks in one plan".into(),
            });
        }
        self.items.push(Pending {
            kernel: kernel.clone(),
            uniform: (offset, bytes.len() as u64),
            buffers: used.iter().map(|(binding, t)| (*binding, t.buffer.clone())).collect(),
            workgroups,
            stage: self.stages.len() - 1,
        });
        Ok(())
    }

    /// Create the uniform buffer and every bind group.
    pub fn build(self) -> Result<Plan> {
        let device = self.gpu.device();
        let ubuf = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("wgoptim plan uniforms"),
            size: (self.uniforms.len().max(16) as u64).div_ceil(16) * 16,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        if !self.uniforms.is_empty() {
            let mut data = self.uniforms.clone();
            data.resize(ubuf.size() as usize, 0);
            self.gpu.queue().write_buffer(&ubuf, 0, &data);
        }
        // Buffers hash by identity, which their interior state never changes.
        #[allow(clippy::mutable_key_type)]
        let mut groups: HashMap<(String, u64, Bound), wgpu::BindGroup> = HashMap::new();
        let mut dispatches = Vec::with_capacity(self.items.len());
        for p in self.items {
            let key = (p.kernel.name.clone(), p.uniform.1, p.buffers);
            let bind_group = groups
                .entry(key)
                .or_insert_with_key(|(_, size, buffers)| {
                    let mut entries = vec![wgpu::BindGroupEntry {
                        binding: 0,
                        resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                            buffer: &ubuf,
                            offset: 0,
                            size: wgpu::BufferSize::new(*size),
                        }),
                    }];
                    for (binding, b) in buffers {
                        entries.push(wgpu::BindGroupEntry { binding: *binding, resource: b.as_entire_binding() });
                    }
                    device.create_bind_group(&wgpu::BindGroupDescriptor {
                        label: Some(&p.kernel.name),
                        layout: &p.kernel.layout,
                        entries: &entries,
                    })
                })
                .clone();
            dispatches.push(Dispatch {
                pipeline: p.kernel.pipeline.clone(),
                bind_group,
                offset: p.uniform.0 as u32,
                workgroups: p.workgroups,
                stage: p.stage,
                label: p.kernel.label.clone(),
            });
        }
        let timing = self.timing.then(|| Timing::new(device, self.stages.len()));
        self.gpu.take_error()?;
        Ok(Plan { gpu: self.gpu, dispatches, stages: self.stages, params: self.params, _uniforms: ubuf, timing })
    }
}

struct Dispatch {
    pipeline: wgpu::ComputePipeline,
    bind_group: wgpu::BindGroup,
    offset: u32,
    workgroups: [u32; 3],
    stage: usize,
    #[cfg_attr(target_arch = "wasm32", allow(dead_code))] // read by the native-only first-call report
    label: String,
}

/// `WGOPTIM_FIRST_CALLS` read once per process, not on every step's record.
#[cfg(not(target_arch = "wasm32"))]
fn first_calls_wanted() -> bool {
    static WANTED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *WANTED.get_or_init(|| std::env::var_os("WGOPTIM_FIRST_CALLS").is_some())
}

struct Timing {
    queries: wgpu::QuerySet,
    resolve: wgpu::Buffer,
}

impl Timing {
    fn new(device: &wgpu::Device, stages: usize) -> Timing {
        let count = 2 * stages as u32;
        Timing {
            queries: device.create_query_set(&wgpu::QuerySetDescriptor {
                label: Some("wgoptim stage timing"),
                ty: wgpu::QueryType::Timestamp,
                count,
            }),
            resolve: device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("wgoptim timestamps"),
                size: count as u64 * 8,
                usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: false,
            }),
        }
    }
}

/// A pre-built sequence of dispatches, replayed by [`Plan::run`] with one submit and no allocation.
pub struct Plan {
    gpu: Gpu,
    dispatches: Vec<Dispatch>,
    stages: Vec<String>,
    params: Option<Tensor>,
    _uniforms: wgpu::Buffer,
    timing: Option<Timing>,
}

impl Plan {
    /// Number of compute dispatches per run.
    pub fn dispatch_count(&self) -> usize {
        self.dispatches.len()
    }

    /// Stage names in order.
    pub fn stages(&self) -> &[String] {
        &self.stages
    }

    /// Write the per-run parameter block (see [`PlanBuilder::step_params`]).
    pub fn set_params(&self, values: &[f32]) -> Result<()> {
        match &self.params {
            Some(p) if p.numel() >= values.len() => {
                self.gpu.queue().write_buffer(&p.buffer, 0, bytemuck::cast_slice(values));
                Ok(())
            }
            Some(p) => Err(Error::Shape {
                op: "Plan::set_params",
                detail: format!("{} values for a parameter block of {}", values.len(), p.numel()),
            }),
            None => Err(Error::InvalidArgument {
                op: "Plan::set_params",
                name: "values",
                detail: "this plan has no parameter block".into(),
            }),
        }
    }

    /// Record every dispatch into a caller's encoder (embedding): one pass, or one per stage when timing.
    pub fn record(&self, encoder: &mut wgpu::CommandEncoder) {
        #[cfg(not(target_arch = "wasm32"))]
        if first_calls_wanted() {
            self.report_first_calls();
        }
        self.gpu.counters().add_dispatches(self.dispatches.len() as u64);
        let Some(t) = &self.timing else {
            let mut pass = encoder
                .begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some("wgoptim"), timestamp_writes: None });
            self.record_range(&mut pass, 0..self.dispatches.len());
            return;
        };
        for s in 0..self.stages.len() {
            let range = self.stage_range(s);
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some(&self.stages[s]),
                timestamp_writes: Some(wgpu::ComputePassTimestampWrites {
                    query_set: &t.queries,
                    beginning_of_pass_write_index: Some(2 * s as u32),
                    end_of_pass_write_index: Some(2 * s as u32 + 1),
                }),
            });
            self.record_range(&mut pass, range);
        }
        encoder.resolve_query_set(&t.queries, 0..2 * self.stages.len() as u32, &t.resolve, 0);
    }

    /// `WGOPTIM_FIRST_CALLS=1` (native, for measuring issue 2's first-call bound): each kernel variant this
    /// process has not run yet first runs alone twice, and the difference — its first-call cost, shader compile
    /// included (lavapipe compiles at the first dispatch, not at pipeline creation) — goes to stderr with the
    /// second run's time. On large tensors the first run also pays for memory first touched there (wgpu zero-fills
    /// a buffer at its first use), so compile costs are best read from small shapes: the kernel variant, and so
    /// its compile, does not depend on sizes. The extra runs change in-place state, so a run with it set measures
    /// and nothing else.
    #[cfg(not(target_arch = "wasm32"))]
    fn report_first_calls(&self) {
        static SEEN: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
        for (i, d) in self.dispatches.iter().enumerate() {
            {
                let Ok(mut seen) = SEEN.lock() else { return };
                if seen.contains(&d.label) {
                    continue;
                }
                seen.push(d.label.clone());
            }
            let run = || {
                let start = std::time::Instant::now();
                let mut encoder = self.gpu.device().create_command_encoder(&Default::default());
                self.record_range(&mut encoder.begin_compute_pass(&Default::default()), i..i + 1);
                self.gpu.queue().submit([encoder.finish()]);
                let _ = self.gpu.device().poll(wgpu::PollType::wait_indefinitely());
                start.elapsed().as_secs_f64()
            };
            let first = run();
            let again = run();
            eprintln!("first call {:7.1} ms (then {:.1} ms)  {}", (first - again) * 1e3, again * 1e3, d.label);
        }
    }

    fn stage_range(&self, s: usize) -> std::ops::Range<usize> {
        let start = self.dispatches.iter().position(|d| d.stage >= s).unwrap_or(self.dispatches.len());
        let end = self.dispatches.iter().position(|d| d.stage > s).unwrap_or(self.dispatches.len());
        start..end
    }

    fn record_range(&self, pass: &mut wgpu::ComputePass<'_>, range: std::ops::Range<usize>) {
        for d in &self.dispatches[range] {
            pass.set_pipeline(&d.pipeline);
            pass.set_bind_group(0, &d.bind_group, &[d.offset]);
            pass.dispatch_workgroups(d.workgroups[0], d.workgroups[1], d.workgroups[2]);
        }
    }

    /// Record and submit: exactly one submit, no readback.
    pub fn run(&self) -> wgpu::SubmissionIndex {
        let mut encoder = self.gpu.device().create_command_encoder(&Default::default());
        self.record(&mut encoder);
        self.gpu.submit([encoder.finish()])
    }

    /// Run once and return device seconds per stage (needs [`PlanBuilder::with_timing`] and TIMESTAMP_QUERY).
    pub async fn run_timed(&self) -> Result<Vec<(String, f64)>> {
        let Some(t) = &self.timing else {
            return Err(Error::InvalidArgument {
                op: "Plan::run_timed",
                name: "timing",
                detail: "the plan was built without timing, or the adapter has no TIMESTAMP_QUERY".into(),
            });
        };
        self.run();
        let raw = crate::gpu::tensor::read_buffer(&self.gpu, &t.resolve, 0, t.resolve.size()).await?;
        let ticks: Vec<u64> = bytemuck::pod_collect_to_vec(&raw);
        let period = self.gpu.queue().get_timestamp_period() as f64 * 1e-9;
        Ok(self
            .stages
            .iter()
            .enumerate()
            .map(|(i, s)| (s.clone(), ticks[2 * i + 1].saturating_sub(ticks[2 * i]) as f64 * period))
            .collect())
    }
}
