//! Execution plans: a model's weights on the device, and for a given batch size
//! every activation and gradient buffer plus the recorded forward, loss and
//! backward passes. A plan is built once and replayed for every batch, so a batch
//! costs uploads, one submit and a small readback.

use std::sync::Arc;

use crate::error::{Error, Result};
use crate::gpu::{Context, DType, GpuBuffer, Recording, Shape, Step, Tensor};
use crate::model::{Model, Op, Src};
use crate::ops;
use crate::ops::Activation;

mod arena;
mod forward;
mod gradient;
mod lower;
mod tune;

use crate::ops::binary::BinaryOp;
use crate::ops::prepared::PreparedWeights;
use arena::Arena;
pub use forward::ForwardPlan;
pub use gradient::{GradientPlan, GradientResult, LossKind};
use lower::Lowering;
pub use tune::TuneReport;

/// Device copies of a model's parameters.
#[derive(Clone)]
enum Weights {
    None,
    Conv { w: Tensor, b: Option<Tensor> },
    Affine { scale: Tensor, shift: Tensor },
}

/// A model uploaded to a device. Clones are cheap and share the device
/// copies (weights, prepared layouts).
#[derive(Clone)]
pub struct GpuModel {
    pub ctx: Arc<Context>,
    pub model: Arc<Model>,
    weights: Vec<Weights>,
    /// `fuse_into[i] = Some(j)`: conv/linear node `i` applies node `j`'s activation
    /// in its epilogue (its only consumer, with a derivative computable from the
    /// output); `fused_from[j] = Some(i)` the other way round.
    fuse_into: Vec<Option<usize>>,
    fused_from: Vec<Option<usize>>,
    /// Node whose output is the logits (the model's output, or the input of a final softmax).
    pub logits: usize,
    /// Storage type of weights, activations and gradients on the device (F16:
    /// `--precision f16`; arithmetic stays f32). Images in, input gradients,
    /// losses and read-outs are f32 either way.
    pub dtype: DType,
    /// Weight copies in the layouts some kernels need, made once for every
    /// plan of this model (see [`ops::prepared`]).
    pub prepared: Arc<ops::prepared::PreparedWeights>,
}

fn vector(ctx: &Context, data: &[f32], dtype: DType, label: &str) -> Result<Tensor> {
    ctx.upload_as(data, Shape::new(1, data.len() as u32, 1, 1), dtype, label)
}

/// Factor on the loss gradient of F16 plans: the backward pass runs in half
/// precision, whose normal range ends at 6.1e-5, and input gradients of image
/// models are often far smaller; scaling the seed keeps them representable. The
/// sign of the gradient, all FGSM reads, is unchanged; the input gradient is
/// divided back before it leaves the plan. Logit gradients are at most 1 in
/// magnitude, so 2^10 leaves ample headroom below f16's 65504.
pub const F16_GRAD_SCALE: f32 = 1024.0;

impl GpuModel {
    /// The model on the device in f32.
    pub fn new(ctx: Arc<Context>, model: Arc<Model>) -> Result<Self> {
        Self::with_precision(ctx, model, DType::F32)
    }

    /// The model on the device with weights, activations and gradients stored as
    /// `dtype` (F16 needs the adapter's `SHADER_F16`).
    pub fn with_precision(ctx: Arc<Context>, model: Arc<Model>, dtype: DType) -> Result<Self> {
        ctx.check_dtype(dtype)?;
        let mut weights = Vec::with_capacity(model.nodes.len());
        for node in &model.nodes {
            weights.push(match &node.op {
                Op::Conv2d { weight, bias, .. } | Op::Linear { weight, bias } => {
                    let [a, b, c, d] = weight.shape;
                    let w =
                        ctx.upload_as(&weight.data, Shape::new(a, b, c, d), dtype, &node.name)?;
                    let b = match bias {
                        Some(b) => Some(vector(&ctx, b, dtype, &node.name)?),
                        None => None,
                    };
                    Weights::Conv { w, b }
                }
                Op::Affine { scale, shift }
                | Op::LayerNorm {
                    weight: scale,
                    bias: shift,
                    ..
                } => Weights::Affine {
                    scale: vector(&ctx, scale, dtype, &node.name)?,
                    shift: vector(&ctx, shift, dtype, &node.name)?,
                },
                _ => Weights::None,
            });
        }
        let mut logits = model.output;
        if matches!(model.nodes[logits].op, Op::Softmax) {
            if let Src::Node(i) = model.nodes[logits].inputs[0] {
                log::warn!(
                    "model {} ends in softmax; attacking its input logits `{}` (softmax precision masks gradients)",
                    model.name,
                    model.nodes[i].name
                );
                logits = i;
            }
        }
        let n = model.nodes.len();
        let mut consumers = vec![0usize; n];
        for node in &model.nodes {
            for s in &node.inputs {
                if let Src::Node(j) = s {
                    consumers[*j] += 1;
                }
            }
        }
        let mut fuse_into = vec![None; n];
        let mut fused_from = vec![None; n];
        for (j, node) in model.nodes.iter().enumerate() {
            if let (Op::Activation(a), Some(Src::Node(i))) = (&node.op, node.inputs.first()) {
                let producer = &model.nodes[*i].op;
                if matches!(producer, Op::Conv2d { .. } | Op::Linear { .. })
                    && consumers[*i] == 1
                    && *i != logits
                    && a.derivative_from_output()
                {
                    fuse_into[*i] = Some(j);
                    fused_from[j] = Some(*i);
                }
            }
        }
        Ok(GpuModel {
            ctx,
            model,
            weights,
            fuse_into,
            fused_from,
            logits,
            dtype,
            prepared: Arc::new(ops::prepared::PreparedWeights::new()),
        })
    }

    /// The largest tensor a plan of this model binds, in bytes per image: every
    /// node's output (and its gradient) in the storage type, the f32 image and
    /// its gradient. A batch fits the adapter when this times the batch size is
    /// within [`Context::max_binding_bytes`].
    pub fn largest_binding_per_image(&self) -> u64 {
        let image = self.input_shape(1).numel() * 4;
        self.model
            .nodes
            .iter()
            .map(|n| n.shape.item() * self.dtype.size())
            .fold(image, u64::max)
    }

    pub fn num_classes(&self) -> u32 {
        self.model.nodes[self.logits].shape.item() as u32
    }

    /// Input shape for a batch of `n`.
    pub fn input_shape(&self, n: u32) -> Shape {
        let [c, h, w] = self.model.input;
        Shape::new(n, c, h, w)
    }

    /// Bytes of device memory a gradient plan needs per image (activations and
    /// gradients), for choosing batch sizes.
    pub fn bytes_per_image(&self) -> u64 {
        let acts: u64 = self
            .model
            .nodes
            .iter()
            .map(|n| n.shape.bytes_as(self.dtype))
            .sum();
        self.input_shape(1).bytes() * 2 + acts * 2
    }

    /// The f32 input as the network's storage type: itself in f32, else a cast
    /// recorded into `rec`.
    fn storage_input(&self, rec: &mut Recording, input: &Tensor) -> Result<Tensor> {
        if input.dtype == self.dtype {
            return Ok(input.clone());
        }
        let t = self
            .ctx
            .tensor_as(input.shape, self.dtype, "input (storage type)")?;
        ops::elementwise::cast(&self.ctx, rec, input, &t)?;
        Ok(t)
    }

    fn src<'a>(&self, values: &'a [Tensor], input: &'a Tensor, s: Src) -> &'a Tensor {
        match s {
            Src::Input => input,
            Src::Node(i) => &values[i],
        }
    }
}
