//! [`Lagged`]: asynchronous readback of small values (a loss) without stalling the pipeline. Each step copies
//! the value into one of a few staging buffers inside its own command encoder; the value of step t is awaited
//! only after step t + 1 has been submitted, so the device never idles while the host reads.

use std::collections::VecDeque;

use crate::error::{Error, Result};
use crate::gpu::{Gpu, Tensor};

struct InFlight {
    slot: usize,
    tag: u64,
    index: Option<wgpu::SubmissionIndex>,
    done: Option<futures_channel::oneshot::Receiver<std::result::Result<(), wgpu::BufferAsyncError>>>,
}

/// A ring of staging buffers for lagged reads of `len` f32 values.
pub struct Lagged {
    gpu: Gpu,
    len: usize,
    slots: Vec<wgpu::Buffer>,
    queue: VecDeque<InFlight>,
}

impl Lagged {
    /// `depth` staging buffers (at least 2) of `len` values each.
    pub fn new(gpu: &Gpu, len: usize, depth: usize) -> Lagged {
        let slots = (0..depth.max(2))
            .map(|_| {
                gpu.device().create_buffer(&wgpu::BufferDescriptor {
                    label: Some("wgoptim lagged readback"),
                    size: (len.max(1) * 4) as u64,
                    usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                })
            })
            .collect();
        Lagged { gpu: gpu.clone(), len, slots, queue: VecDeque::new() }
    }

    /// Reads recorded and not yet returned.
    pub fn in_flight(&self) -> usize {
        self.queue.len()
    }

    /// Record a copy of `src` (its first `len` values) into a free slot, labelled `tag`; call
    /// [`Lagged::submitted`] after submitting the encoder. Errors when every slot is still in flight.
    pub fn record(&mut self, encoder: &mut wgpu::CommandEncoder, src: &Tensor, tag: u64) -> Result<()> {
        if src.numel() < self.len {
            return Err(Error::Shape {
                op: "Lagged::record",
                detail: format!("{} values to read from a tensor of {}", self.len, src.numel()),
            });
        }
        let slot = (0..self.slots.len()).find(|s| !self.queue.iter().any(|f| f.slot == *s)).ok_or_else(|| {
            Error::InvalidArgument {
                op: "Lagged::record",
                name: "depth",
                detail: format!("all {} slots are in flight: await Lagged::next first", self.slots.len()),
            }
        })?;
        let bytes = (self.len * 4) as u64;
        encoder.copy_buffer_to_buffer(src.buffer(), (src.offset() * 4) as u64, &self.slots[slot], 0, bytes);
        self.queue.push_back(InFlight { slot, tag, index: None, done: None });
        Ok(())
    }

    /// The encoder with the last recorded copy was submitted as `index`: start mapping its slot.
    pub fn submitted(&mut self, index: wgpu::SubmissionIndex) {
        if let Some(f) = self.queue.back_mut().filter(|f| f.done.is_none()) {
            let (tx, rx) = futures_channel::oneshot::channel();
            self.slots[f.slot].map_async(wgpu::MapMode::Read, .., move |r| {
                let _ = tx.send(r);
            });
            f.index = Some(index);
            f.done = Some(rx);
        }
    }

    /// Await the oldest read: `(tag, values)`, or None when nothing is in flight. Natively this blocks until
    /// that submission (not later ones) has finished; on the web it yields to the event loop.
    pub async fn next(&mut self) -> Result<Option<(u64, Vec<f32>)>> {
        let Some(f) = self.queue.pop_front() else { return Ok(None) };
        let (Some(rx), Some(_index)) = (f.done, f.index) else {
            return Err(Error::InvalidArgument {
                op: "Lagged::next",
                name: "submitted",
                detail: "a read was recorded but Lagged::submitted was not called".into(),
            });
        };
        #[cfg(not(target_arch = "wasm32"))]
        self.gpu
            .device()
            .poll(wgpu::PollType::Wait { submission_index: Some(_index), timeout: None })
            .map_err(|e| Error::Device(e.to_string()))?;
        rx.await
            .map_err(|_| Error::Readback("the map callback was dropped".into()))?
            .map_err(|e| Error::Readback(e.to_string()))?;
        let slot = &self.slots[f.slot];
        let values = {
            let view = slot.get_mapped_range(..).map_err(|e| Error::Readback(e.to_string()))?;
            bytemuck::pod_collect_to_vec(&view[..self.len * 4])
        };
        slot.unmap();
        self.gpu.take_error()?;
        Ok(Some((f.tag, values)))
    }
}
