//! Device acquisition: [`Gpu`] wraps a wgpu device and queue with what wgoptim needs to know about them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};
use crate::gpu::kernels::KernelCache;

/// How to pick an adapter. [`GpuOptions::from_env`] reads `WGPU_BACKEND` and `WGPU_ADAPTER_NAME`.
#[derive(Clone, Debug, Default)]
pub struct GpuOptions {
    /// Backends to consider (Vulkan, Metal, DX12, GL, BrowserWebGPU); `None` means all.
    pub backends: Option<wgpu::Backends>,
    /// Pick the first adapter whose name contains this (case-insensitive). Native only.
    pub adapter_name: Option<String>,
    /// Prefer the fallback (software) adapter.
    pub force_fallback_adapter: bool,
}

impl GpuOptions {
    /// Options from the environment: `WGPU_BACKEND` (e.g. `vulkan`, `metal,dx12`) and `WGPU_ADAPTER_NAME`.
    pub fn from_env() -> Self {
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        GpuOptions {
            backends: env("WGPU_BACKEND").map(|v| wgpu::Backends::from_comma_list(&v)),
            adapter_name: env("WGPU_ADAPTER_NAME"),
            force_fallback_adapter: false,
        }
    }
}

/// Features wgoptim uses when the adapter offers them.
const WANTED_FEATURES: wgpu::Features = wgpu::Features::SHADER_F16
    .union(wgpu::Features::SUBGROUP)
    .union(wgpu::Features::TIMESTAMP_QUERY)
    .union(wgpu::Features::TIMESTAMP_QUERY_INSIDE_ENCODERS);

/// Counts of work sent to the device, for benchmarks and tests that prove "one submit per step".
#[derive(Debug, Default)]
pub struct Counters {
    submits: AtomicU64,
    dispatches: AtomicU64,
}

impl Counters {
    /// Submits made through wgoptim on this device so far.
    pub fn submits(&self) -> u64 {
        self.submits.load(Ordering::Relaxed)
    }
    /// Compute dispatches recorded by wgoptim plans so far.
    pub fn dispatches(&self) -> u64 {
        self.dispatches.load(Ordering::Relaxed)
    }
    pub(crate) fn add_submit(&self) {
        self.submits.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn add_dispatches(&self, n: u64) {
        self.dispatches.fetch_add(n, Ordering::Relaxed);
    }
}

pub(crate) struct GpuInner {
    pub(crate) device: wgpu::Device,
    pub(crate) queue: wgpu::Queue,
    pub(crate) info: wgpu::AdapterInfo,
    pub(crate) limits: wgpu::Limits,
    pub(crate) features: wgpu::Features,
    pub(crate) kernels: KernelCache,
    pub(crate) counters: Counters,
    pub(crate) errors: Arc<Mutex<Vec<String>>>,
    /// Kernel variants are chosen as for a WebGPU GPU adapter (see [`Gpu::is_cpu`]).
    pub(crate) as_webgpu: bool,
}

/// A device and queue ready for wgoptim's kernels. Cheap to clone (shared handle).
#[derive(Clone)]
pub struct Gpu {
    pub(crate) inner: Arc<GpuInner>,
}

impl std::fmt::Debug for Gpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gpu").field("adapter", &self.inner.info.name).finish()
    }
}

impl Gpu {
    /// Acquire an adapter and device. Requests the adapter's own limits and the features in
    /// SHADER_F16 / SUBGROUP / TIMESTAMP_QUERY that it offers. Works natively and on the web.
    pub async fn new(options: GpuOptions) -> Result<Gpu> {
        let mut desc = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
        if let Some(b) = options.backends {
            desc.backends = b;
        }
        let instance = wgpu::Instance::new(desc);
        let adapter = pick_adapter(&instance, &options).await?;
        let info = adapter.get_info();
        let features = adapter.features() & WANTED_FEATURES;
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("wgoptim"),
                required_features: features,
                required_limits: adapter.limits(),
                ..Default::default()
            })
            .await
            .map_err(|e| Error::DeviceRequest { adapter: info.name.clone(), reason: e.to_string() })?;
        let errors = Arc::new(Mutex::new(Vec::new()));
        let sink = errors.clone();
        // The default handler panics; a library must report instead.
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            if let Ok(mut v) = sink.lock() {
                v.push(e.to_string());
            }
        }));
        Ok(Self::assemble(device, queue, info, errors))
    }

    /// Wrap a device and queue that another engine owns (embedding). wgoptim uses the device's
    /// features and limits as they are and leaves its error handler alone.
    pub fn from_wgpu(device: wgpu::Device, queue: wgpu::Queue) -> Gpu {
        let info = device.adapter_info();
        Self::assemble(device, queue, info, Arc::new(Mutex::new(Vec::new())))
    }

    fn assemble(
        device: wgpu::Device,
        queue: wgpu::Queue,
        info: wgpu::AdapterInfo,
        errors: Arc<Mutex<Vec<String>>>,
    ) -> Gpu {
        // `WGOPTIM_KERNELS_FOR=webgpu` (native): choose kernel variants as a browser's GPU adapter with WebGPU's
        // default limits would get them, on any device; `cargo xtask test` uses it to compile the web's kernels.
        let as_webgpu = cfg!(not(target_arch = "wasm32"))
            && std::env::var("WGOPTIM_KERNELS_FOR").is_ok_and(|v| v.trim().eq_ignore_ascii_case("webgpu"));
        let limits = if as_webgpu { wgpu::Limits::default() } else { device.limits() };
        let features = device.features();
        // On the web wgpu's handles are neither Send nor Sync; one Arc keeps `Gpu` the same type on every target.
        #[cfg_attr(target_arch = "wasm32", allow(clippy::arc_with_non_send_sync))]
        Gpu {
            inner: Arc::new(GpuInner {
                device,
                queue,
                info,
                limits,
                features,
                kernels: KernelCache::default(),
                counters: Counters::default(),
                errors,
                as_webgpu,
            }),
        }
    }

    /// Blocking [`Gpu::new`] with [`GpuOptions::from_env`] (native only).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn new_blocking() -> Result<Gpu> {
        pollster::block_on(Gpu::new(GpuOptions::from_env()))
    }

    /// Every adapter the instance sees, for `wgoptim info` (native only).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn list_adapters(options: &GpuOptions) -> Vec<wgpu::Adapter> {
        let mut desc = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
        if let Some(b) = options.backends {
            desc.backends = b;
        }
        let instance = wgpu::Instance::new(desc);
        pollster::block_on(instance.enumerate_adapters(desc_backends(options)))
    }

    /// The wgpu device.
    pub fn device(&self) -> &wgpu::Device {
        &self.inner.device
    }
    /// The wgpu queue.
    pub fn queue(&self) -> &wgpu::Queue {
        &self.inner.queue
    }
    /// Adapter name, backend, device type and driver.
    pub fn info(&self) -> &wgpu::AdapterInfo {
        &self.inner.info
    }
    /// Limits the device was created with (WebGPU's defaults under `WGOPTIM_KERNELS_FOR=webgpu`).
    pub fn limits(&self) -> &wgpu::Limits {
        &self.inner.limits
    }
    /// Features the device was created with.
    pub fn features(&self) -> wgpu::Features {
        self.inner.features
    }
    /// Whether f16 arithmetic is available in shaders.
    pub fn has_f16(&self) -> bool {
        self.inner.features.contains(wgpu::Features::SHADER_F16)
    }
    /// Whether the device is a CPU implementation (lavapipe, SwiftShader, WARP): kernel variants differ. False
    /// under `WGOPTIM_KERNELS_FOR=webgpu`, which picks the variants a browser's GPU adapter gets.
    pub fn is_cpu(&self) -> bool {
        !self.inner.as_webgpu
            && (self.inner.info.device_type == wgpu::DeviceType::Cpu
                || self.inner.info.name.to_lowercase().contains("swiftshader"))
    }
    /// The subgroup size when the adapter is a CPU device with subgroups of one fixed size (lavapipe: 8); the
    /// subgroup-broadcast kernel variants need it. None otherwise.
    pub fn cpu_subgroup_size(&self) -> Option<u32> {
        let i = &self.inner.info;
        let fixed = i.subgroup_min_size == i.subgroup_max_size && i.subgroup_min_size > 0;
        (self.is_cpu() && fixed && self.features().contains(wgpu::Features::SUBGROUP)).then_some(i.subgroup_min_size)
    }
    /// Submit and dispatch counters.
    pub fn counters(&self) -> &Counters {
        &self.inner.counters
    }
    /// A one-line description: `name (backend, type)`; browsers often keep the name to themselves (`unnamed`).
    pub fn describe(&self) -> String {
        let i = &self.inner.info;
        let name = if i.name.is_empty() { "unnamed adapter" } else { &i.name };
        format!("{name} ({:?}, {:?})", i.backend, i.device_type)
    }

    /// Errors the device reported since the last call (validation, out of memory), as an `Err`.
    pub fn take_error(&self) -> Result<()> {
        let mut v = self.inner.errors.lock().map_err(|_| Error::Device("error sink poisoned".into()))?;
        if v.is_empty() {
            Ok(())
        } else {
            Err(Error::Device(std::mem::take(&mut *v).join("; ")))
        }
    }

    /// Submit command buffers, counting the submit.
    pub fn submit(&self, buffers: impl IntoIterator<Item = wgpu::CommandBuffer>) -> wgpu::SubmissionIndex {
        self.inner.counters.add_submit();
        self.inner.queue.submit(buffers)
    }

    /// Block until all submitted work has finished (native; a no-op on the web).
    pub fn wait(&self) -> Result<()> {
        self.inner
            .device
            .poll(wgpu::PollType::wait_indefinitely())
            .map(|_| ())
            .map_err(|e| Error::Device(e.to_string()))?;
        self.take_error()
    }

    pub(crate) fn same_device(&self, other: &Gpu) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }
}

fn desc_backends(options: &GpuOptions) -> wgpu::Backends {
    options.backends.unwrap_or_else(|| wgpu::Backends::all().with_env())
}

async fn pick_adapter(instance: &wgpu::Instance, options: &GpuOptions) -> Result<wgpu::Adapter> {
    if let Some(name) = &options.adapter_name {
        let wanted = name.to_lowercase();
        let adapters = instance.enumerate_adapters(desc_backends(options)).await;
        let seen: Vec<String> = adapters.iter().map(|a| a.get_info().name).collect();
        return adapters.into_iter().find(|a| a.get_info().name.to_lowercase().contains(&wanted)).ok_or_else(|| {
            Error::NoAdapter { detail: format!(" matching WGPU_ADAPTER_NAME=\"{name}\" (adapters seen: {seen:?})") }
        });
    }
    instance
        .request_adapter(&wgpu::RequestAdapterOptions {
            power_preference: wgpu::PowerPreference::HighPerformance,
            force_fallback_adapter: options.force_fallback_adapter,
            compatible_surface: None,
            apply_limit_buckets: false,
        })
        .await
        .map_err(|e| Error::NoAdapter { detail: format!(" ({e})") })
}
