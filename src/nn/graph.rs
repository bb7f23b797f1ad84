//! The autodiff graph: ops record their forward dispatches into one plan as they are called and push a
//! backward recorder onto a tape; [`Graph::backward`] replays the tape in reverse, recording the backward
//! dispatches into the same plan. The result is a static [`Plan`] — forward + backward in one submit —
//! replayed every step with new inputs (the WebGPU counterpart of a CUDA graph).
//!
//! Gradients are never zeroed: the first backward op that reaches a tensor writes its gradient, later ones
//! accumulate (`acc` flag of every backward kernel, `beta = 1` for matmul), decided at build time.

use crate::error::{Error, Result};
use crate::gpu::{Gpu, Plan, PlanBuilder, Tensor};

/// A handle to a tensor of a [`Graph`] (an input, a parameter, or an op's output).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Var(pub(crate) usize);

/// What a graph is built for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Gradients (after [`Graph::backward`]) and dropout.
    Train,
    /// Forward only: parameters take no gradient, dropout is the identity.
    Eval,
}

struct Node {
    value: Tensor,
    grad: Option<Tensor>,
    needs_grad: bool,
    written: bool,
}

type BackwardFn = Box<dyn FnOnce(&mut Backward<'_>) -> Result<()>>;

/// Length of the per-step parameter block: `[step (u32 bits), seed (u32 bits), …]`.
pub const STEP_PARAMS: usize = 4;

/// A graph under construction; see the module docs.
pub struct Graph {
    pub(crate) plan: PlanBuilder,
    nodes: Vec<Node>,
    tape: Vec<(&'static str, BackwardFn)>,
    mode: Mode,
    backward_done: bool,
    profile: bool,
    op: &'static str,
    step: Tensor,
}

impl Graph {
    /// An empty graph; in [`Mode::Train`] gradients are recorded when [`Graph::backward`] is called.
    pub fn new(gpu: &Gpu, mode: Mode) -> Result<Graph> {
        let mut plan = PlanBuilder::new(gpu);
        plan.stage("forward");
        let step = plan.step_params(STEP_PARAMS)?;
        Ok(Graph {
            plan,
            nodes: Vec::new(),
            tape: Vec::new(),
            mode,
            backward_done: false,
            profile: false,
            op: "",
            step,
        })
    }

    /// Measure device time of the forward and backward stages (where the adapter supports timestamps).
    pub fn with_timing(mut self, on: bool) -> Graph {
        self.plan = self.plan.with_timing(on);
        self
    }

    /// Time every op separately: stages are named `forward/<op>` and `backward/<op>` (implies timing).
    pub fn with_op_timing(mut self, on: bool) -> Graph {
        self.plan = self.plan.with_timing(on);
        self.profile = on;
        self
    }

    /// The device.
    pub fn gpu(&self) -> &Gpu {
        self.plan.gpu()
    }

    /// Train or eval.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The per-step parameter block (see [`STEP_PARAMS`]); kernels that need the step bind it.
    pub(crate) fn step_block(&self) -> &Tensor {
        &self.step
    }

    /// A tensor with no gradient (data, targets).
    pub fn input(&mut self, value: &Tensor) -> Var {
        self.push(value.clone(), None, false)
    }

    /// A trainable tensor whose gradient goes to `grad` (e.g. a [`ParamStore`](crate::optim::ParamStore) view);
    /// in an eval graph it is a plain input.
    pub fn param(&mut self, value: &Tensor, grad: &Tensor) -> Result<Var> {
        if value.shape() != grad.shape() {
            return Err(Error::Shape {
                op: "Graph::param",
                detail: format!("value {:?} and gradient {:?} differ", value.shape(), grad.shape()),
            });
        }
        let train = self.mode == Mode::Train;
        Ok(self.push(value.clone(), train.then(|| grad.clone()), train))
    }

    fn push(&mut self, value: Tensor, grad: Option<Tensor>, needs_grad: bool) -> Var {
        self.nodes.push(Node { value, grad, needs_grad, written: false });
        Var(self.nodes.len() - 1)
    }

    /// A new output of op `op` (which starts recording now) of `shape`; it needs a gradient when any of
    /// `inputs` does.
    pub(crate) fn output(&mut self, op: &'static str, shape: &[usize], inputs: &[Var]) -> Result<Var> {
        self.op = op;
        if self.profile {
            self.plan.stage(&format!("forward/{op}"));
        }
        let value = Tensor::zeros(self.gpu(), shape)?;
        let needs = inputs.iter().any(|v| self.nodes[v.0].needs_grad);
        Ok(self.push(value, None, needs))
    }

    /// Whether `v` needs a gradient.
    pub fn needs_grad(&self, v: Var) -> bool {
        self.nodes[v.0].needs_grad
    }

    /// The forward value of `v`.
    pub fn value(&self, v: Var) -> &Tensor {
        &self.nodes[v.0].value
    }

    /// The shape of `v`.
    pub fn shape(&self, v: Var) -> &[usize] {
        self.nodes[v.0].value.shape()
    }

    /// The gradient of `v` after [`Graph::backward`] (None when nothing flows into it). Together with
    /// [`Graph::value`] this exposes each layer's input activations and output gradients (for KFAC).
    pub fn grad(&self, v: Var) -> Option<&Tensor> {
        self.nodes[v.0].grad.as_ref().filter(|_| self.nodes[v.0].written)
    }

    /// Register the backward recorder of an op whose output needs a gradient.
    pub(crate) fn on_backward(&mut self, out: Var, f: impl FnOnce(&mut Backward<'_>) -> Result<()> + 'static) {
        if self.nodes[out.0].needs_grad {
            self.tape.push((self.op, Box::new(f)));
        }
    }

    /// Record the backward pass of the scalar `loss` (its gradient is 1) into the plan.
    pub fn backward(&mut self, loss: Var) -> Result<()> {
        if self.nodes[loss.0].value.numel() != 1 {
            return Err(Error::Shape {
                op: "Graph::backward",
                detail: format!("the loss must be a scalar, got {:?}", self.shape(loss)),
            });
        }
        let seed = Tensor::from_slice(self.gpu(), &[1], &[1.0])?;
        self.backward_from(loss, seed, true)
    }

    /// Record the vector–Jacobian product of `out` with the upstream gradient `seed` (same shape), e.g. for
    /// gradient checks or when the loss lives outside the graph.
    pub fn backward_with(&mut self, out: Var, seed: &Tensor) -> Result<()> {
        if seed.shape() != self.shape(out) {
            return Err(Error::Shape {
                op: "Graph::backward_with",
                detail: format!("seed {:?} for an output {:?}", seed.shape(), self.shape(out)),
            });
        }
        self.backward_from(out, seed.clone(), false)
    }

    fn backward_from(&mut self, out: Var, seed: Tensor, unit: bool) -> Result<()> {
        if self.mode != Mode::Train {
            return Err(Error::InvalidArgument {
                op: "Graph::backward",
                name: "mode",
                detail: "an eval graph has no backward pass".into(),
            });
        }
        if !self.nodes[out.0].needs_grad {
            return Err(Error::InvalidArgument {
                op: "Graph::backward",
                name: "loss",
                detail: "the output does not depend on any parameter".into(),
            });
        }
        if self.backward_done {
            return Err(Error::InvalidArgument {
                op: "Graph::backward",
                name: "loss",
                detail: "backward was already recorded for this graph".into(),
            });
        }
        let node = &mut self.nodes[out.0];
        node.grad = Some(seed.clone());
        node.written = true;
        self.plan.stage("backward");
        self.backward_done = true;
        let tape = std::mem::take(&mut self.tape);
        let profile = self.profile;
        let mut b = Backward { graph: self, root: unit.then_some(out), seed };
        for (op, f) in tape.into_iter().rev() {
            if profile {
                b.plan().stage(&format!("backward/{op}"));
            }
            f(&mut b)?;
        }
        Ok(())
    }

    /// Finish: the plan (forward, then backward when recorded). Write the step block with
    /// [`step_values`] before each run.
    pub fn build(self) -> Result<Plan> {
        self.plan.build()
    }
}

/// The per-step parameter block's values for step `step` and dropout seed `seed`.
pub fn step_values(step: u64, seed: u32) -> [f32; STEP_PARAMS] {
    [f32::from_bits(step as u32), f32::from_bits(seed), 0.0, 0.0]
}

/// What a backward recorder sees: output gradients to read, input gradients to write or accumulate.
pub struct Backward<'g> {
    graph: &'g mut Graph,
    root: Option<Var>,
    seed: Tensor,
}

impl Backward<'_> {
    /// The plan to record into.
    pub fn plan(&mut self) -> &mut PlanBuilder {
        &mut self.graph.plan
    }

    /// The value of `v`.
    pub fn value(&self, v: Var) -> Tensor {
        self.graph.nodes[v.0].value.clone()
    }

    /// Whether `v` is the loss of [`Graph::backward`] (its gradient is exactly 1).
    pub fn is_root(&self, v: Var) -> bool {
        self.root == Some(v)
    }

    /// The gradient of an op output, or None when nothing downstream used it (skip the op then).
    pub fn grad_out(&self, v: Var) -> Option<Tensor> {
        self.graph.grad(v).cloned()
    }

    /// Where to put the gradient of input `v`: None when `v` needs none, else the tensor and whether to
    /// accumulate into it (another op already wrote it). Marks it written.
    pub fn grad_in(&mut self, v: Var) -> Result<Option<(Tensor, bool)>> {
        let gpu = self.graph.gpu().clone();
        let node = &mut self.graph.nodes[v.0];
        if !node.needs_grad {
            return Ok(None);
        }
        if node.grad.is_none() {
            node.grad = Some(Tensor::zeros(&gpu, node.value.shape())?);
        }
        let acc = node.written;
        node.written = true;
        Ok(node.grad.clone().map(|g| (g, acc)))
    }

    /// Hand over a computed tensor as the gradient of `v` when nothing was written yet (no copy); returns
    /// false when `v` already has a gradient (the caller accumulates instead).
    pub fn adopt_grad(&mut self, v: Var, grad: &Tensor) -> bool {
        let node = &mut self.graph.nodes[v.0];
        // The seed is an input of the plan: adopting it would let later accumulations change it between runs.
        if !node.needs_grad || node.written || node.grad.is_some() || grad.buffer() == self.seed.buffer() {
            return false;
        }
        node.grad = Some(grad.clone());
        node.written = true;
        true
    }
}
