//! wgoptim in the browser: JavaScript bindings over the same library (WebGPU through wgpu).
//! The in-browser trainer builds on this crate; for now it exposes device discovery.

use wasm_bindgen::prelude::*;

/// Acquire a WebGPU device and describe it (`name (backend, type)`); rejects with a plain message when the
/// browser has no WebGPU.
#[wasm_bindgen]
pub async fn describe_gpu() -> Result<String, JsValue> {
    let gpu = wgoptim::Gpu::new(wgoptim::GpuOptions::default()).await.map_err(|e| JsValue::from_str(&e.to_string()))?;
    Ok(gpu.describe())
}
