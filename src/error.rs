//! The one error type of the library: every fallible public function returns [`Result`].

use thiserror::Error;

/// Everything that can go wrong in wgoptim, with enough context to act on it.
#[derive(Debug, Error)]
pub enum Error {
    /// No GPU adapter matched the request (no driver, or a filter excluded every adapter).
    #[error(
        "no GPU adapter found{detail}. On Linux without a GPU install lavapipe (Mesa's Vulkan CPU driver): \
             `apt-get install mesa-vulkan-drivers` (Debian 12: from bookworm-backports), or run `cargo xtask test`, \
             which installs it; in a browser enable WebGPU"
    )]
    NoAdapter {
        /// What was asked for, e.g. ` matching WGPU_ADAPTER_NAME="foo"`.
        detail: String,
    },
    /// The adapter refused to create a device.
    #[error("could not create a device on adapter `{adapter}`: {reason}")]
    DeviceRequest {
        /// Adapter name.
        adapter: String,
        /// The driver's message.
        reason: String,
    },
    /// Two tensors that must agree in shape do not.
    #[error("shape mismatch in {op}: {detail}")]
    Shape {
        /// The operation that checked the shapes.
        op: &'static str,
        /// What was expected and what was given.
        detail: String,
    },
    /// A tensor with no elements where work is expected.
    #[error("zero-size tensor in {op}: shape {shape:?}")]
    ZeroSize {
        /// The operation.
        op: &'static str,
        /// The offending shape.
        shape: Vec<usize>,
    },
    /// A tensor larger than the device can bind to one shader.
    #[error("{op}: buffer of {bytes} bytes exceeds the device's storage binding limit of {limit} bytes")]
    BindingTooLarge {
        /// The operation.
        op: &'static str,
        /// Size of the buffer.
        bytes: u64,
        /// The device's `max_storage_buffer_binding_size`.
        limit: u64,
    },
    /// A configuration value out of its valid range.
    #[error("invalid argument `{name}` in {op}: {detail}")]
    InvalidArgument {
        /// The operation.
        op: &'static str,
        /// The field or argument.
        name: &'static str,
        /// Why it is invalid.
        detail: String,
    },
    /// The adapter lacks a feature the request needs (e.g. SHADER_F16).
    #[error("{op} needs the device feature {feature}, which adapter `{adapter}` does not offer")]
    MissingFeature {
        /// The operation.
        op: &'static str,
        /// The feature's name.
        feature: &'static str,
        /// Adapter name.
        adapter: String,
    },
    /// Tensors from two different devices were mixed.
    #[error("{op}: tensors belong to different devices")]
    DeviceMismatch {
        /// The operation.
        op: &'static str,
    },
    /// A kernel failed to compile (a bug in wgoptim; the message has the details).
    #[error("kernel `{kernel}` failed to compile: {message}")]
    Shader {
        /// Kernel name and variant.
        kernel: String,
        /// Compiler diagnostics.
        message: String,
    },
    /// Reading a buffer back from the device failed.
    #[error("reading back from the device failed: {0}")]
    Readback(String),
    /// A checkpoint could not be read or does not match the optimizer it is loaded into.
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    /// A replay trace is malformed or incomplete.
    #[error("trace: {0}")]
    Trace(String),
    /// Steps were skipped because a gradient held NaN or Inf (with `NonFinitePolicy::Fail`).
    #[error("{skipped} optimizer step(s) skipped: non-finite gradient (parameters and state were left untouched)")]
    NonFiniteGradient {
        /// Steps skipped so far.
        skipped: u64,
    },
    /// The device reported an error (validation, out of memory, lost device).
    #[error("device error: {0}")]
    Device(String),
}

/// Shorthand for `std::result::Result<T, wgoptim::Error>`.
pub type Result<T> = std::result::Result<T, Error>;
