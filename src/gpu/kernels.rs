//! The kernel registry: WGSL sources embedded at build time, specialized by light templating,
//! validated with naga and compiled once per (kernel, variant) into a cached pipeline.
//!
//! Templating: `{{NAME}}` is replaced by the define's value; lines between `//#if NAME` and
//! `//#endif` (with an optional `//#else`) are kept when `NAME` is defined and not `0`/`false`; a line
//! `//#include "path"` is replaced by that embedded file (functions shared between shaders).

use std::collections::HashMap;
use std::sync::Mutex;

use crate::error::{Error, Result};
use crate::gpu::Gpu;

macro_rules! shader_table {
    ($($path:literal),* $(,)?) => {
        /// Every embedded WGSL file, by its path under `shaders/`.
        pub const SHADERS: &[(&str, &str)] = &[$(($path, include_str!(concat!("../../shaders/", $path)))),*];
    };
}

shader_table!(
    "linalg/matmul.wgsl",
    "linalg/elementwise.wgsl",
    "linalg/reduce.wgsl",
    "linalg/row_col.wgsl",
    "linalg/transpose.wgsl",
    "linalg/jacobi.wgsl",
    "linalg/jacobi_rounds.wgsl",
    "linalg/tridiag_ql.wgsl",
    "linalg/tridiag_wy.wgsl",
    "linalg/qr_panel.wgsl",
    "linalg/cholesky.wgsl",
    "linalg/trsm.wgsl",
    "linalg/eig_apply.wgsl",
    "optim/grad_stats.wgsl",
    "optim/prologue.wgsl",
    "optim/update.wgsl",
    "optim/sf_mode.wgsl",
    "optim/adafactor.wgsl",
    "optim/muon.wgsl",
    "optim/normuon.wgsl",
    "optim/adamuon.wgsl",
    "optim/block_sum.wgsl",
    "optim/kron.wgsl",
    "optim/psgd.wgsl",
    "optim/kron_uniforms.wgsl",
    "nn/embedding.wgsl",
    "nn/layernorm.wgsl",
    "nn/pointwise.wgsl",
    "nn/dropout_mask.wgsl",
    "nn/attention.wgsl",
    "nn/cross_entropy.wgsl",
    "nn/kfac.wgsl",
);

/// A compiled compute pipeline plus its bind-group layout.
#[derive(Clone, Debug)]
pub struct Kernel {
    pub(crate) pipeline: wgpu::ComputePipeline,
    pub(crate) layout: wgpu::BindGroupLayout,
    pub(crate) name: String,
    /// File, entry point and the short define values (generated bodies left out), for reports.
    pub(crate) label: String,
    /// Storage bindings the kernel writes (WebGPU forbids binding a buffer there and anywhere else at once).
    pub(crate) writable: Vec<u32>,
    /// Storage bindings its entry point uses (entry points of one file may use different subsets).
    pub(crate) bindings: Vec<u32>,
}

/// Pipelines keyed by file and defines.
#[derive(Default)]
pub(crate) struct KernelCache {
    map: Mutex<HashMap<String, Kernel>>,
}

/// Apply `//#include` lines, `//#if` blocks and `{{KEY}}` substitutions.
pub fn specialize(source: &str, defines: &[(&str, String)]) -> std::result::Result<String, String> {
    let truthy = |k: &str| defines.iter().any(|(n, v)| *n == k && v != "0" && v != "false");
    let mut out = String::with_capacity(source.len());
    let mut stack: Vec<(bool, bool)> = Vec::new(); // (this block active, parent active)
    for line in source.lines() {
        let t = line.trim();
        let active = stack.last().map(|s| s.0).unwrap_or(true);
        if let Some(path) = t.strip_prefix("//#include ") {
            let path = path.trim().trim_matches('"');
            let (_, text) =
                SHADERS.iter().find(|(p, _)| *p == path).ok_or(format!("no shader file {path} to include"))?;
            if active {
                out.push_str(text);
                out.push('\n');
            }
        } else if let Some(name) = t.strip_prefix("//#if ") {
            stack.push((active && truthy(name.trim()), active));
        } else if t == "//#else" {
            let top = stack.last_mut().ok_or("//#else without //#if")?;
            top.0 = top.1 && !top.0;
        } else if t == "//#endif" {
            stack.pop().ok_or("//#endif without //#if")?;
        } else if active {
            out.push_str(line);
            out.push('\n');
        }
    }
    if !stack.is_empty() {
        return Err("unterminated //#if".into());
    }
    for (k, v) in defines {
        out = out.replace(&format!("{{{{{k}}}}}"), v);
    }
    if let Some(pos) = out.find("{{") {
        let end = out[pos..].find("}}").map(|e| pos + e + 2).unwrap_or(out.len());
        return Err(format!("undefined template key {}", &out[pos..end]));
    }
    Ok(out)
}

impl Gpu {
    /// The pipeline for `file` (a path under `shaders/`) specialized with `defines`, compiled on first use.
    pub fn kernel(&self, file: &str, entry: &str, defines: &[(&str, String)]) -> Result<Kernel> {
        let key = format!("{file}:{entry}:{defines:?}");
        let cache = &self.inner.kernels;
        if let Some(k) = cache.map.lock().map_err(|_| poisoned())?.get(&key) {
            return Ok(k.clone());
        }
        let kernel = self.compile(file, entry, defines, &key)?;
        cache.map.lock().map_err(|_| poisoned())?.insert(key, kernel.clone());
        Ok(kernel)
    }

    fn compile(&self, file: &str, entry: &str, defines: &[(&str, String)], key: &str) -> Result<Kernel> {
        let shader_err = |message: String| Error::Shader { kernel: key.to_string(), message };
        let source = SHADERS
            .iter()
            .find(|(p, _)| *p == file)
            .map(|(_, s)| *s)
            .ok_or_else(|| shader_err("no such shader file".into()))?;
        let code = specialize(source, defines).map_err(&shader_err)?;
        #[cfg(not(target_arch = "wasm32"))]
        dump_source(entry, &code);
        // Validate with naga first: wgpu reports shader errors asynchronously, we want them now.
        let module = naga::front::wgsl::parse_str(&code).map_err(|e| shader_err(e.emit_to_string(&code)))?;
        let info = naga::valid::Validator::new(naga::valid::ValidationFlags::all(), naga::valid::Capabilities::all())
            .validate(&module)
            .map_err(|e| shader_err(e.emit_to_string(&code)))?;
        let entries = layout_entries(&module, &info, entry).map_err(&shader_err)?;
        let desc = wgpu::ShaderModuleDescriptor { label: Some(key), source: wgpu::ShaderSource::Wgsl(code.into()) };
        let device = &self.inner.device;
        // SAFETY: every wgoptim kernel guards its indices against the sizes in its uniforms (audited, and tested
        // on awkward shapes), so removing the driver-side bounds checks cannot cause out-of-bounds access.
        // Bounds checks cost ~35 % on CPU adapters.
        #[cfg(not(target_arch = "wasm32"))]
        let shader = unsafe { device.create_shader_module_trusted(desc, wgpu::ShaderRuntimeChecks::unchecked()) };
        #[cfg(target_arch = "wasm32")]
        let shader = device.create_shader_module(desc);
        let layout =
            device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor { label: Some(key), entries: &entries });
        let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some(key),
            bind_group_layouts: &[Some(&layout)],
            immediate_size: 0,
        });
        let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(key),
            layout: Some(&pipeline_layout),
            module: &shader,
            entry_point: Some(entry),
            compilation_options: Default::default(),
            cache: None,
        });
        let writable = entries
            .iter()
            .filter(|e| {
                matches!(
                    e.ty,
                    wgpu::BindingType::Buffer { ty: wgpu::BufferBindingType::Storage { read_only: false }, .. }
                )
            })
            .map(|e| e.binding)
            .collect();
        let bindings = entries.iter().map(|e| e.binding).filter(|&b| b > 0).collect();
        let short: Vec<String> =
            defines.iter().filter(|(_, v)| v.len() <= 16).map(|(k, v)| format!("{k}={}", v.trim())).collect();
        let label = format!("{file}:{entry} {}", short.join(" "));
        Ok(Kernel { pipeline, layout, name: key.to_string(), label, writable, bindings })
    }
}

/// The bind-group layout of `entry`: the group-0 buffers it uses, as it declares them. The uniform block takes a
/// dynamic offset, so a plan binds one bind group per (kernel, tensors) however many uniform blocks it has —
/// Jacobi's rounds alone are thousands of dispatches that differ only in their round number.
fn layout_entries(
    module: &naga::Module,
    info: &naga::valid::ModuleInfo,
    entry: &str,
) -> std::result::Result<Vec<wgpu::BindGroupLayoutEntry>, String> {
    let index =
        module.entry_points.iter().position(|e| e.name == entry).ok_or_else(|| format!("no entry point {entry}"))?;
    let uses = info.get_entry_point(index);
    let mut entries = Vec::new();
    for (handle, var) in module.global_variables.iter() {
        let Some(binding) = &var.binding else { continue };
        if uses[handle].is_empty() {
            continue;
        }
        if binding.group != 0 {
            return Err(format!("binding group {} (wgoptim kernels use group 0 only)", binding.group));
        }
        let ty = match var.space {
            naga::AddressSpace::Uniform => wgpu::BufferBindingType::Uniform,
            naga::AddressSpace::Storage { access } => {
                wgpu::BufferBindingType::Storage { read_only: !access.contains(naga::StorageAccess::STORE) }
            }
            other => return Err(format!("binding {} in address space {other:?} (buffers only)", binding.binding)),
        };
        entries.push(wgpu::BindGroupLayoutEntry {
            binding: binding.binding,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer {
                has_dynamic_offset: ty == wgpu::BufferBindingType::Uniform,
                ty,
                min_binding_size: None,
            },
            count: None,
        });
    }
    entries.sort_by_key(|e| e.binding);
    Ok(entries)
}

/// `WGOPTIM_DUMP_WGSL=DIR`: every specialized kernel source is also written to DIR (one file per distinct source
/// and entry point, the entry named on the first line) so other WGSL compilers can check them: `cargo xtask test`
/// builds them with Chromium's WebGPU, which is stricter than naga in places (uniformity, constant NaNs, limits).
#[cfg(not(target_arch = "wasm32"))]
fn dump_source(entry: &str, code: &str) {
    let Some(dir) = std::env::var_os("WGOPTIM_DUMP_WGSL") else { return };
    let text = format!("// wgoptim entry point: {entry}\n{code}");
    let hash = text.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3));
    let path = std::path::Path::new(&dir).join(format!("{hash:016x}.wgsl"));
    // A diagnostic aid: failing to write must not fail the run (the browser check counts what arrived).
    let _ = std::fs::create_dir_all(&dir).and_then(|_| std::fs::write(path, text));
}

fn poisoned() -> Error {
    Error::Device("kernel cache lock poisoned".into())
}

#[cfg(test)]
mod tests {
    use super::specialize;

    #[test]
    fn templating_handles_blocks_and_keys() {
        let src = "a\n//#if X\nb {{N}}\n//#else\nc\n//#endif\n//#if Y\nd\n//#endif\n";
        assert_eq!(specialize(src, &[("X", "1".into()), ("N", "4".into())]).unwrap(), "a\nb 4\n");
        assert_eq!(specialize(src, &[("X", "0".into())]).unwrap(), "a\nc\n");
        assert!(specialize("{{Q}}", &[]).is_err());
        assert!(specialize("//#if A\n", &[]).is_err());
        let inc = specialize("//#if X\n//#include \"nn/dropout_mask.wgsl\"\n//#endif\n", &[("X", "1".into())]).unwrap();
        assert!(inc.contains("fn dropout_keeps"), "{inc}");
        assert!(specialize("//#include \"nn/none.wgsl\"\n", &[]).is_err());
    }

    #[test]
    fn every_shader_file_is_embedded() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("shaders");
        let mut stack = vec![dir.clone()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    stack.push(p);
                } else if p.extension().is_some_and(|x| x == "wgsl") {
                    let rel = p.strip_prefix(&dir).unwrap().to_string_lossy().replace('\\', "/");
                    assert!(super::SHADERS.iter().any(|(n, _)| *n == rel), "{rel} is not in SHADERS");
                }
            }
        }
    }
}
