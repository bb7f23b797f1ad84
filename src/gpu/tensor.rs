//! [`Tensor`]: an f32 buffer on the device with a shape. Views into a caller's buffer are allowed.

use crate::error::{Error, Result};
use crate::gpu::Gpu;

/// A row-major f32 array on the device: a buffer, an element offset into it, and a shape.
/// Cloning shares the buffer.
#[derive(Clone, Debug)]
pub struct Tensor {
    pub(crate) buffer: wgpu::Buffer,
    pub(crate) offset: usize,
    pub(crate) shape: Vec<usize>,
    pub(crate) gpu: Gpu,
}

const USAGE: wgpu::BufferUsages =
    wgpu::BufferUsages::STORAGE.union(wgpu::BufferUsages::COPY_SRC).union(wgpu::BufferUsages::COPY_DST);

impl Tensor {
    /// A zero-filled tensor.
    pub fn zeros(gpu: &Gpu, shape: &[usize]) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        let bytes = (n.max(1) * 4) as u64;
        if bytes > gpu.limits().max_buffer_size {
            return Err(Error::BindingTooLarge { op: "Tensor::zeros", bytes, limit: gpu.limits().max_buffer_size });
        }
        let buffer = gpu.device().create_buffer(&wgpu::BufferDescriptor {
            label: Some("wgoptim tensor"),
            size: bytes,
            usage: USAGE,
            mapped_at_creation: false,
        });
        Ok(Tensor { buffer, offset: 0, shape: shape.to_vec(), gpu: gpu.clone() })
    }

    /// A tensor holding `data` (its length must match the shape).
    pub fn from_slice(gpu: &Gpu, shape: &[usize], data: &[f32]) -> Result<Tensor> {
        let t = Tensor::zeros(gpu, shape)?;
        t.write(data)?;
        Ok(t)
    }

    /// A view of `shape` starting `offset` elements into a buffer the caller owns (embedding).
    /// The buffer needs `STORAGE` usage (and `COPY_SRC` / `COPY_DST` for reads and writes).
    pub fn from_buffer(gpu: &Gpu, buffer: wgpu::Buffer, offset: usize, shape: &[usize]) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        let need = ((offset + n) * 4) as u64;
        if need > buffer.size() {
            return Err(Error::Shape {
                op: "Tensor::from_buffer",
                detail: format!(
                    "view of {n} elements at offset {offset} needs {need} bytes, buffer has {}",
                    buffer.size()
                ),
            });
        }
        if !buffer.usage().contains(wgpu::BufferUsages::STORAGE) {
            return Err(Error::InvalidArgument {
                op: "Tensor::from_buffer",
                name: "buffer",
                detail: "the buffer needs STORAGE usage".into(),
            });
        }
        Ok(Tensor { buffer, offset, shape: shape.to_vec(), gpu: gpu.clone() })
    }

    /// The shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
    /// Whether this view and `other` share an element of one buffer (an empty view shares none).
    pub fn overlaps(&self, other: &Tensor) -> bool {
        let (a, b) = ((self.offset, self.numel()), (other.offset, other.numel()));
        self.buffer == other.buffer && a.1 > 0 && b.1 > 0 && a.0 < b.0 + b.1 && b.0 < a.0 + a.1
    }
    /// The underlying buffer (shared with any views).
    pub fn buffer(&self) -> &wgpu::Buffer {
        &self.buffer
    }
    /// Element offset of this view in its buffer.
    pub fn offset(&self) -> usize {
        self.offset
    }
    /// The device this tensor lives on.
    pub fn gpu(&self) -> &Gpu {
        &self.gpu
    }

    /// The same data with another shape of equal element count.
    pub fn reshape(&self, shape: &[usize]) -> Result<Tensor> {
        if shape.iter().product::<usize>() != self.numel() {
            return Err(Error::Shape {
                op: "Tensor::reshape",
                detail: format!(
                    "{:?} has {} elements, {:?} has {}",
                    self.shape,
                    self.numel(),
                    shape,
                    shape.iter().product::<usize>()
                ),
            });
        }
        Ok(Tensor { shape: shape.to_vec(), ..self.clone() })
    }

    /// Interpret as a stack of matrices: `[m, n]` → (1, m, n), `[b, m, n]` → (b, m, n).
    pub fn matrices(&self, op: &'static str) -> Result<(usize, usize, usize)> {
        let s = &self.shape;
        let dims = match s.len() {
            2 => (1, s[0], s[1]),
            3 => (s[0], s[1], s[2]),
            _ => {
                return Err(Error::Shape {
                    op,
                    detail: format!("expected a matrix [m, n] or a stack [b, m, n], got {s:?}"),
                })
            }
        };
        if dims.0 * dims.1 * dims.2 == 0 {
            return Err(Error::ZeroSize { op, shape: s.clone() });
        }
        Ok(dims)
    }

    /// Overwrite the contents (a queue write; ordered before the next submit).
    pub fn write(&self, data: &[f32]) -> Result<()> {
        if data.len() != self.numel() {
            return Err(Error::Shape {
                op: "Tensor::write",
                detail: format!("tensor {:?} has {} elements, data has {}", self.shape, self.numel(), data.len()),
            });
        }
        if !data.is_empty() {
            self.gpu.queue().write_buffer(&self.buffer, (self.offset * 4) as u64, bytemuck::cast_slice(data));
        }
        Ok(())
    }

    /// Read the contents back (async; on the web this must be awaited, never blocked on).
    pub async fn read(&self) -> Result<Vec<f32>> {
        let n = self.numel();
        if n == 0 {
            return Ok(Vec::new());
        }
        read_buffer(&self.gpu, &self.buffer, (self.offset * 4) as u64, (n * 4) as u64)
            .await
            .map(|bytes| bytemuck::pod_collect_to_vec(&bytes))
    }

    /// Blocking [`Tensor::read`] (native only).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn read_blocking(&self) -> Result<Vec<f32>> {
        pollster::block_on(self.read())
    }
}

/// Copy `size` bytes at `offset` of `buffer` into a staging buffer and map it.
pub(crate) async fn read_buffer(gpu: &Gpu, buffer: &wgpu::Buffer, offset: u64, size: u64) -> Result<Vec<u8>> {
    let device = gpu.device();
    let staging = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("wgoptim readback"),
        size,
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let mut enc = device.create_command_encoder(&Default::default());
    enc.copy_buffer_to_buffer(buffer, offset, &staging, 0, size);
    gpu.submit([enc.finish()]);
    let (tx, rx) = futures_channel::oneshot::channel();
    staging.map_async(wgpu::MapMode::Read, .., move |r| {
        let _ = tx.send(r);
    });
    #[cfg(not(target_arch = "wasm32"))]
    gpu.wait()?;
    rx.await
        .map_err(|_| Error::Readback("the map callback was dropped".into()))?
        .map_err(|e| Error::Readback(e.to_string()))?;
    let bytes = staging.get_mapped_range(..).map_err(|e| Error::Readback(e.to_string()))?.to_vec();
    staging.unmap();
    gpu.take_error()?;
    Ok(bytes)
}
