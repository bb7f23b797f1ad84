//! [`Tokens`]: one batch of token ids and next-token targets on the device, plus the per-token position lists
//! (CSR) the embedding's deterministic backward gathers from. Written once per step with queue writes.

use crate::error::{Error, Result};
use crate::gpu::{Gpu, Tensor};

/// Device buffers for a `[batch, block]` batch of tokens over a vocabulary of `vocab`.
#[derive(Clone, Debug)]
pub struct Tokens {
    /// Sequences per batch.
    pub batch: usize,
    /// Tokens per sequence.
    pub block: usize,
    /// Vocabulary size.
    pub vocab: usize,
    pub(crate) inputs: Tensor,
    pub(crate) targets: Tensor,
    pub(crate) starts: Tensor,
    pub(crate) positions: Tensor,
}

impl Tokens {
    /// Zeroed buffers for `batch × block` tokens.
    pub fn new(gpu: &Gpu, batch: usize, block: usize, vocab: usize) -> Result<Tokens> {
        if batch * block == 0 || vocab == 0 {
            return Err(Error::InvalidArgument {
                op: "Tokens::new",
                name: "shape",
                detail: format!("batch {batch}, block {block}, vocab {vocab}: all must be positive"),
            });
        }
        let n = batch * block;
        Ok(Tokens {
            batch,
            block,
            vocab,
            inputs: Tensor::zeros(gpu, &[n])?,
            targets: Tensor::zeros(gpu, &[n])?,
            starts: Tensor::zeros(gpu, &[vocab + 1])?,
            positions: Tensor::zeros(gpu, &[n])?,
        })
    }

    /// Number of tokens (`batch · block`).
    pub fn len(&self) -> usize {
        self.batch * self.block
    }

    /// Always false (a batch has at least one token).
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Upload a batch: `inputs` and `targets` are row-major `[batch, block]` token ids below `vocab`.
    pub fn write(&self, inputs: &[u32], targets: &[u32]) -> Result<()> {
        let n = self.len();
        for (name, v) in [("inputs", inputs), ("targets", targets)] {
            if v.len() != n {
                return Err(Error::Shape { op: "Tokens::write", detail: format!("{name}: {} ids for {n}", v.len()) });
            }
            if let Some(bad) = v.iter().find(|&&t| t as usize >= self.vocab) {
                return Err(Error::InvalidArgument {
                    op: "Tokens::write",
                    name: "ids",
                    detail: format!("{name} has id {bad}, the vocabulary has {}", self.vocab),
                });
            }
        }
        let (starts, positions) = position_lists(inputs, self.vocab);
        let queue = self.inputs.gpu().queue();
        queue.write_buffer(self.inputs.buffer(), 0, bytemuck::cast_slice(inputs));
        queue.write_buffer(self.targets.buffer(), 0, bytemuck::cast_slice(targets));
        queue.write_buffer(self.starts.buffer(), 0, bytemuck::cast_slice(&starts));
        queue.write_buffer(self.positions.buffer(), 0, bytemuck::cast_slice(&positions));
        Ok(())
    }
}

/// For each token id, the positions where it occurs, as CSR (`starts[v]..starts[v + 1]` into `positions`).
fn position_lists(ids: &[u32], vocab: usize) -> (Vec<u32>, Vec<u32>) {
    let mut starts = vec![0u32; vocab + 1];
    for &t in ids {
        starts[t as usize + 1] += 1;
    }
    for v in 0..vocab {
        starts[v + 1] += starts[v];
    }
    let mut next = starts.clone();
    let mut positions = vec![0u32; ids.len()];
    for (p, &t) in ids.iter().enumerate() {
        positions[next[t as usize] as usize] = p as u32;
        next[t as usize] += 1;
    }
    (starts, positions)
}

#[cfg(test)]
mod tests {
    #[test]
    fn position_lists_group_positions_by_token() {
        let (s, p) = super::position_lists(&[2, 0, 2, 1, 2], 4);
        assert_eq!(s, vec![0, 1, 2, 5, 5]);
        assert_eq!(p, vec![1, 3, 0, 2, 4]);
    }
}
