//! [`ParamStore`]: every parameter and gradient of a model in two flat buffers, with named views, so that an
//! optimizer bucket of any number of tensors is one dispatch. Tensors start at multiples of 4 elements.

use crate::error::{Error, Result};
use crate::gpu::{Gpu, Tensor};

/// Flat parameter and gradient storage with a named view per tensor.
#[derive(Clone, Debug)]
pub struct ParamStore {
    params: Tensor,
    grads: Tensor,
    entries: Vec<(String, Vec<usize>, usize)>,
}

impl ParamStore {
    /// Allocate zeroed storage for `(name, shape)` specs (names unique, no zero-size shapes).
    pub fn new(gpu: &Gpu, specs: &[(&str, &[usize])]) -> Result<ParamStore> {
        let mut entries = Vec::with_capacity(specs.len());
        let mut total = 0usize;
        for (name, shape) in specs {
            if entries.iter().any(|(n, _, _): &(String, _, _)| n == name) {
                return Err(Error::InvalidArgument {
                    op: "ParamStore::new",
                    name: "name",
                    detail: format!("duplicate parameter `{name}`"),
                });
            }
            let n: usize = shape.iter().product();
            if n == 0 {
                return Err(Error::ZeroSize { op: "ParamStore::new", shape: shape.to_vec() });
            }
            entries.push((name.to_string(), shape.to_vec(), total));
            // Each tensor starts at a multiple of 4 elements: optimizers then use vec4 memory operations.
            total += n.div_ceil(4) * 4;
        }
        Ok(ParamStore { params: Tensor::zeros(gpu, &[total])?, grads: Tensor::zeros(gpu, &[total])?, entries })
    }

    fn entry(&self, name: &str) -> Result<&(String, Vec<usize>, usize)> {
        self.entries.iter().find(|e| e.0 == name).ok_or_else(|| Error::InvalidArgument {
            op: "ParamStore",
            name: "name",
            detail: format!("no parameter `{name}`"),
        })
    }

    fn view(flat: &Tensor, e: &(String, Vec<usize>, usize)) -> Result<Tensor> {
        Tensor::from_buffer(flat.gpu(), flat.buffer().clone(), e.2, &e.1)
    }

    /// The parameter `name` (a view into the flat buffer).
    pub fn param(&self, name: &str) -> Result<Tensor> {
        Self::view(&self.params, self.entry(name)?)
    }
    /// The gradient of `name` (a view into the flat gradient buffer).
    pub fn grad(&self, name: &str) -> Result<Tensor> {
        Self::view(&self.grads, self.entry(name)?)
    }
    /// Names in declaration order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|e| e.0.as_str())
    }
    /// `(name, param view, grad view)` in declaration order.
    pub fn iter(&self) -> impl Iterator<Item = Result<(&str, Tensor, Tensor)>> + '_ {
        self.entries.iter().map(|e| Ok((e.0.as_str(), Self::view(&self.params, e)?, Self::view(&self.grads, e)?)))
    }
    /// All parameters as one flat tensor.
    pub fn params_flat(&self) -> &Tensor {
        &self.params
    }
    /// All gradients as one flat tensor.
    pub fn grads_flat(&self) -> &Tensor {
        &self.grads
    }
}
