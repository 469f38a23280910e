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

/// Buffers a plan may hand out again once the values in them are dead. Reuse is
/// safe inside one recording because the GPU runs its steps in order.
struct Arena<'a> {
    ctx: &'a Context,
    free: Vec<Arc<GpuBuffer>>,
}

impl<'a> Arena<'a> {
    fn new(ctx: &'a Context) -> Self {
        Arena {
            ctx,
            free: Vec::new(),
        }
    }

    fn tensor(&mut self, shape: Shape, dtype: DType, label: &str) -> Result<Tensor> {
        let need = shape.bytes_as(dtype);
        let best = self
            .free
            .iter()
            .enumerate()
            .filter(|(_, b)| b.size() >= need && b.size() <= need.saturating_mul(2).max(4096))
            .min_by_key(|(_, b)| b.size())
            .map(|(i, _)| i);
        match best {
            Some(i) => Ok(Tensor {
                buffer: self.free.swap_remove(i),
                shape,
                dtype,
            }),
            None => self.ctx.tensor_as(shape, dtype, label),
        }
    }

    fn release(&mut self, t: &Tensor) {
        if !self.free.iter().any(|b| Arc::ptr_eq(b, &t.buffer)) {
            self.free.push(t.buffer.clone());
        }
    }
}

/// Device copies of a model's parameters.
enum Params {
    None,
    Conv { w: Tensor, b: Option<Tensor> },
    Affine { scale: Tensor, shift: Tensor },
}

/// A model uploaded to a device.
pub struct GpuModel {
    pub ctx: Arc<Context>,
    pub model: Arc<Model>,
    params: Vec<Params>,
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
    pub prepared: ops::prepared::PreparedWeights,
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
        let mut params = Vec::with_capacity(model.nodes.len());
        for node in &model.nodes {
            params.push(match &node.op {
                Op::Conv2d { weight, bias, .. } | Op::Linear { weight, bias } => {
                    let [a, b, c, d] = weight.shape;
                    let w =
                        ctx.upload_as(&weight.data, Shape::new(a, b, c, d), dtype, &node.name)?;
                    let b = match bias {
                        Some(b) => Some(vector(&ctx, b, dtype, &node.name)?),
                        None => None,
                    };
                    Params::Conv { w, b }
                }
                Op::Affine { scale, shift } => Params::Affine {
                    scale: vector(&ctx, scale, dtype, &node.name)?,
                    shift: vector(&ctx, shift, dtype, &node.name)?,
                },
                _ => Params::None,
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
            params,
            fuse_into,
            fused_from,
            logits,
            dtype,
            prepared: ops::prepared::PreparedWeights::new(),
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

    /// Record the forward pass of every node up to `last` into `rec`. With
    /// `reuse`, a value's buffer is handed out again after its last consumer
    /// (forward-only plans); without, every value stays (backward needs them).
    fn record_forward(
        &self,
        rec: &mut Recording,
        input: &Tensor,
        n: u32,
        last: usize,
        reuse: bool,
    ) -> Result<Vec<Tensor>> {
        let ctx = &*self.ctx;
        let nodes = &self.model.nodes[..=last];
        // Flatten outputs share their input's buffer: track the owning value.
        let mut root: Vec<usize> = (0..nodes.len()).collect();
        let mut last_use: Vec<usize> = (0..nodes.len()).collect();
        for (i, node) in nodes.iter().enumerate() {
            if let (Op::Flatten, Src::Node(j)) = (&node.op, node.inputs[0]) {
                root[i] = root[j];
            }
            if let Some(j) = self.fused_from[i] {
                root[i] = root[j];
            }
            for s in &node.inputs {
                if let Src::Node(j) = s {
                    last_use[root[*j]] = last_use[root[*j]].max(i);
                }
            }
        }
        for i in 0..nodes.len() {
            let r = root[i];
            last_use[r] = last_use[r].max(last_use[i]);
        }
        last_use[root[last]] = usize::MAX;

        let mut arena = Arena::new(ctx);
        let mut values: Vec<Tensor> = Vec::with_capacity(nodes.len());
        for (i, node) in nodes.iter().enumerate() {
            let shape = node.shape.with_n(n);
            let x = |k: usize| self.src(&values, input, node.inputs[k]);
            let name = node.name.as_str();
            // The activation fused into node i's epilogue, if any.
            let act = match self.fuse_into[i].map(|j| &nodes[j].op) {
                Some(Op::Activation(a)) => *a,
                _ => Activation::Identity,
            };
            let y = match &node.op {
                Op::Flatten => x(0).reshaped(shape),
                // Computed by the conv it is fused into: the same tensor.
                _ if self.fused_from[i].is_some() => values[self.fused_from[i].unwrap()].clone(),
                op => {
                    let y = arena.tensor(shape, self.dtype, name)?;
                    match (op, &self.params[i]) {
                        (Op::Conv2d { params, .. }, Params::Conv { w, b }) => {
                            ops::conv::forward_act_with(
                                ctx,
                                rec,
                                params,
                                x(0),
                                w,
                                b.as_ref(),
                                act,
                                &y,
                                Some(&self.prepared),
                            )?
                        }
                        (Op::Linear { .. }, Params::Conv { w, b }) => {
                            ops::linear::forward_act(ctx, rec, x(0), w, b.as_ref(), act, &y)?
                        }
                        (Op::Affine { .. }, Params::Affine { scale, shift }) => {
                            ops::affine::forward(ctx, rec, x(0), scale, shift, &y)?
                        }
                        (Op::Activation(a), _) => ops::activation::forward(ctx, rec, *a, x(0), &y)?,
                        (Op::MaxPool(p), _) => ops::pool::max_forward(ctx, rec, p, x(0), &y)?,
                        (Op::AvgPool(p), _) => ops::pool::avg_forward(ctx, rec, p, x(0), &y)?,
                        (Op::GlobalAvgPool, _) => {
                            ops::pool::global_avg_forward(ctx, rec, x(0), &y)?
                        }
                        (Op::Add, _) => ops::binary::forward(
                            ctx,
                            rec,
                            ops::binary::BinaryOp::Add,
                            x(0),
                            x(1),
                            &y,
                        )?,
                        (Op::Mul, _) => ops::binary::forward(
                            ctx,
                            rec,
                            ops::binary::BinaryOp::Mul,
                            x(0),
                            x(1),
                            &y,
                        )?,
                        (Op::Concat, _) => {
                            let xs: Vec<&Tensor> = (0..node.inputs.len()).map(x).collect();
                            ops::concat::forward(ctx, rec, &xs, &y)?
                        }
                        (Op::Softmax, _) => ops::softmax::forward(ctx, rec, x(0), &y)?,
                        _ => {
                            return Err(Error::Validation {
                                context: format!("recording node {name}"),
                                message: "parameters missing for this op".into(),
                            })
                        }
                    }
                    y
                }
            };
            values.push(y);
            if reuse {
                for s in &node.inputs {
                    if let Src::Node(j) = *s {
                        let r = root[j];
                        if last_use[r] == i {
                            arena.release(&values[r]);
                        }
                    }
                }
            }
        }
        Ok(values)
    }

    /// Autotune every convolution and linear layer for batches of `batch`: each
    /// pass that runs on the tiled GEMM and is not in the context's tuning table
    /// yet has its tile variants timed (see [`ops::conv::tune`]), then the table
    /// is saved to its cache file. Plans built afterwards use the measured
    /// tiles. A second run on the same adapter finds everything cached.
    pub fn tune(&self, batch: u32) -> Result<TuneReport> {
        let start = std::time::Instant::now();
        let mut report = TuneReport::default();
        for node in &self.model.nodes {
            let input = match node.inputs.first() {
                Some(Src::Input) => self.input_shape(batch),
                Some(Src::Node(j)) => self.model.nodes[*j].shape.with_n(batch),
                None => continue,
            };
            let (p, x, w) = match &node.op {
                Op::Conv2d { params, weight, .. } => {
                    let [a, b, c, d] = weight.shape;
                    (*params, input, Shape::new(a, b, c, d))
                }
                Op::Linear { weight, .. } => {
                    let k = input.item() as u32;
                    (
                        ops::Conv2dParams::default(),
                        Shape::new(batch, k, 1, 1),
                        Shape::new(weight.shape[0], k, 1, 1),
                    )
                }
                _ => continue,
            };
            let c = ops::conv::tune(&self.ctx, &p, x, w, self.dtype, TUNE_REPS)?;
            report.timed += c.timed;
            report.cached += c.cached;
        }
        // A cache that cannot be written costs a re-tune next time, nothing more.
        report.path = match self.ctx.save_tuning() {
            Ok(p) => p,
            Err(e) => {
                log::warn!("autotune results not saved: {e}");
                None
            }
        };
        report.seconds = start.elapsed().as_secs_f64();
        Ok(report)
    }

    /// A forward-only plan for batches of `batch` images: buffers are reused as
    /// soon as their values are dead, so memory is a few layers' worth.
    pub fn forward_plan(&self, batch: u32) -> Result<ForwardPlan> {
        let input = self.ctx.tensor(self.input_shape(batch), "input")?;
        let mut recording = Recording::new();
        let input_st = self.storage_input(&mut recording, &input)?;
        let values = self.record_forward(&mut recording, &input_st, batch, self.logits, true)?;
        let logits = values[self.logits].clone();
        // weight copies this plan is the first to need, made before it runs
        self.prepared.flush(&self.ctx)?;
        Ok(ForwardPlan {
            batch,
            input,
            logits,
            recording,
        })
    }
}

/// Dispatches per timing in [`GpuModel::tune`].
const TUNE_REPS: u32 = 3;

/// What [`GpuModel::tune`] did.
#[derive(Debug, Clone, Default)]
pub struct TuneReport {
    /// Layer passes timed now.
    pub timed: usize,
    /// Layer passes found in the cache.
    pub cached: usize,
    pub seconds: f64,
    /// The cache file (`None`: in memory only).
    pub path: Option<std::path::PathBuf>,
}

impl TuneReport {
    /// One line for the user.
    pub fn describe(&self) -> String {
        let place = match &self.path {
            Some(p) => format!("saved to {}", p.display()),
            None => "kept in memory".into(),
        };
        format!(
            "autotune: timed {} convolution passes in {:.1} s ({} already known), {place}; \
             --no-tune skips it",
            self.timed, self.seconds, self.cached
        )
    }
}

/// Forward pass only: images in, logits out.
pub struct ForwardPlan {
    pub batch: u32,
    pub input: Tensor,
    pub logits: Tensor,
    pub recording: Recording,
}

/// Everything needed to run forward and backward for batches of `batch` images.
/// The loss a [`GradientPlan`] differentiates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LossKind {
    /// Softmax cross-entropy of the label.
    CrossEntropy,
    /// AutoAttack's DLR loss of the label ([`crate::ops::loss::dlr`]).
    Dlr,
    /// AutoAttack's targeted DLR loss: label in `labels`, target in `targets`.
    DlrTargeted,
}

pub struct GradientPlan {
    pub batch: u32,
    /// Images in [0, 1], NCHW.
    pub input: Tensor,
    /// u32 labels, one per image.
    pub labels: Tensor,
    /// u32 target classes, one per image (read by [`LossKind::DlrTargeted`] only).
    pub targets: Tensor,
    /// Logits `[batch, classes, 1, 1]`.
    pub logits: Tensor,
    /// Per-image loss `[batch, 1, 1, 1]`.
    pub loss: Tensor,
    /// Gradient of the summed loss with respect to `input`.
    pub input_grad: Tensor,
    /// The forward pass up to the logits.
    pub forward: Recording,
    /// Loss (on `labels`) and backward to the input.
    pub backward: Recording,
    /// Every node's output (kept for backward).
    pub values: Vec<Tensor>,
}

impl GpuModel {
    /// Build a plan for forward + loss + backward to the input at batch size `batch`.
    /// `sign` is +1 to ascend the loss of the label (untargeted), -1 to descend it
    /// (targeted).
    pub fn gradient_plan(&self, batch: u32, sign: f32) -> Result<GradientPlan> {
        self.gradient_plan_with(batch, sign, LossKind::CrossEntropy)
    }

    /// [`GpuModel::gradient_plan`] with another loss on the logits.
    pub fn gradient_plan_with(
        &self,
        batch: u32,
        sign: f32,
        kind: LossKind,
    ) -> Result<GradientPlan> {
        let ctx = &*self.ctx;
        let model = &self.model;
        let input32 = ctx.tensor(self.input_shape(batch), "input")?;
        let labels = ctx.tensor(Shape::new(batch, 1, 1, 1), "labels")?;
        let targets = ctx.tensor(Shape::new(batch, 1, 1, 1), "targets")?;
        let loss = ctx.tensor(Shape::new(batch, 1, 1, 1), "loss")?;
        let mut forward = Recording::new();
        let input = self.storage_input(&mut forward, &input32)?;
        let values = self.record_forward(&mut forward, &input, batch, self.logits, false)?;
        let mut rec = Recording::new();
        let last = self.logits;
        let logits = values[last].clone();

        // Which nodes lie on a path from the input to the logits.
        let mut needed = vec![false; last + 1];
        needed[last] = true;
        for i in (0..=last).rev() {
            if needed[i] {
                for s in &model.nodes[i].inputs {
                    if let Src::Node(j) = s {
                        needed[*j] = true;
                    }
                }
            }
        }

        // Gradient buffers are handed out again once consumed.
        let mut arena = Arena::new(ctx);
        let mut grads: Vec<Option<Tensor>> = vec![None; last + 1];
        let g_logits = arena.tensor(logits.shape, self.dtype, "grad logits")?;
        let seed = if self.dtype == DType::F16 {
            F16_GRAD_SCALE
        } else {
            1.0
        };
        match kind {
            LossKind::CrossEntropy => ops::loss::softmax_cross_entropy(
                ctx,
                &mut rec,
                &logits,
                &labels,
                sign * seed,
                &loss,
                &g_logits,
            )?,
            LossKind::Dlr | LossKind::DlrTargeted => ops::loss::dlr(
                ctx,
                &mut rec,
                &logits,
                &labels,
                (kind == LossKind::DlrTargeted).then_some(&targets),
                sign * seed,
                &loss,
                &g_logits,
            )?,
        }
        grads[last] = Some(g_logits);
        let mut input_grad: Option<Tensor> = None;

        for i in (0..=last).rev() {
            if !needed[i] {
                continue;
            }
            let node = &model.nodes[i];
            let Some(gy) = grads[i].clone() else {
                continue;
            };
            let x = |k: usize| self.src(&values, &input, node.inputs[k]).clone();
            if matches!(node.op, Op::Flatten) {
                // A view: its gradient is the output gradient seen with the input's shape.
                let shape = x(0).shape;
                let slot = match node.inputs[0] {
                    Src::Input => &mut input_grad,
                    Src::Node(j) => &mut grads[j],
                };
                match slot {
                    None => *slot = Some(gy.reshaped(shape)),
                    Some(dst) => {
                        ops::elementwise::accumulate(ctx, &mut rec, &gy.reshaped(shape), dst)?;
                        arena.release(&gy);
                    }
                }
                grads[i] = None;
                continue;
            }
            // Where input k's gradient goes: straight into its buffer when this is the
            // first contribution, else into scratch followed by an accumulate.
            let mut targets: Vec<(Tensor, Option<Tensor>)> = Vec::new();
            for (k, s) in node.inputs.iter().enumerate() {
                let shape = x(k).shape;
                let slot = match *s {
                    Src::Input => &mut input_grad,
                    Src::Node(j) => &mut grads[j],
                };
                match slot {
                    None => {
                        let t = arena.tensor(shape, self.dtype, &format!("grad {}", node.name))?;
                        *slot = Some(t.clone());
                        targets.push((t, None));
                    }
                    Some(existing) => {
                        let scratch = arena.tensor(
                            shape,
                            self.dtype,
                            &format!("grad scratch {}", node.name),
                        )?;
                        targets.push((scratch, Some(existing.clone())));
                    }
                }
            }
            let gx = |k: usize| &targets[k].0;
            match (&node.op, &self.params[i]) {
                (Op::Conv2d { params, .. }, Params::Conv { w, .. }) => ops::conv::backward_with(
                    ctx,
                    &mut rec,
                    params,
                    &gy,
                    w,
                    gx(0),
                    Some(&self.prepared),
                )?,
                (Op::Linear { .. }, Params::Conv { w, .. }) => {
                    ops::linear::backward(ctx, &mut rec, &gy, w, gx(0))?
                }
                (Op::Affine { .. }, Params::Affine { scale, .. }) => {
                    ops::affine::backward(ctx, &mut rec, &gy, scale, gx(0))?
                }
                (Op::Activation(a), _) if self.fused_from[i].is_some() => {
                    // Fused into the conv before it: the pre-activation was never
                    // stored, so the derivative comes from the output.
                    ops::activation::backward_from_output(
                        ctx,
                        &mut rec,
                        *a,
                        &values[i],
                        &gy,
                        gx(0),
                    )?
                }
                (Op::Activation(a), _) => {
                    ops::activation::backward(ctx, &mut rec, *a, &x(0), &gy, gx(0))?
                }
                (Op::MaxPool(p), _) => {
                    ops::pool::max_backward(ctx, &mut rec, p, &x(0), &gy, gx(0))?
                }
                (Op::AvgPool(p), _) => ops::pool::avg_backward(ctx, &mut rec, p, &gy, gx(0))?,
                (Op::GlobalAvgPool, _) => {
                    ops::pool::global_avg_backward(ctx, &mut rec, &gy, gx(0))?
                }
                (Op::Add, _) | (Op::Mul, _) => {
                    let op = if matches!(node.op, Op::Add) {
                        ops::binary::BinaryOp::Add
                    } else {
                        ops::binary::BinaryOp::Mul
                    };
                    ops::binary::backward(
                        ctx,
                        &mut rec,
                        op,
                        &x(0),
                        &x(1),
                        &gy,
                        Some(gx(0)),
                        Some(gx(1)),
                    )?
                }
                (Op::Concat, _) => {
                    let gs: Vec<&Tensor> = (0..node.inputs.len()).map(gx).collect();
                    ops::concat::backward(ctx, &mut rec, &gy, &gs)?
                }
                (Op::Softmax, _) => ops::softmax::backward(ctx, &mut rec, &values[i], &gy, gx(0))?,
                _ => {
                    return Err(Error::Validation {
                        context: format!("recording backward of node {}", node.name),
                        message: "parameters missing for this op".into(),
                    })
                }
            }
            for (t, acc) in &targets {
                if let Some(dst) = acc {
                    ops::elementwise::accumulate(ctx, &mut rec, t, dst)?;
                    arena.release(t);
                }
            }
            // This node's output gradient is consumed: free it unless a view shares it.
            let gy = grads[i].take().expect("present");
            let shared = grads
                .iter()
                .flatten()
                .chain(input_grad.iter())
                .any(|g| Arc::ptr_eq(&g.buffer, &gy.buffer));
            if !shared {
                arena.release(&gy);
            }
        }
        let input_grad = match input_grad {
            Some(g) if g.dtype == DType::F32 => g,
            Some(g) => {
                // Back to f32, undoing the seed's scale, in one pass.
                let g32 = ctx.tensor(input.shape, "input grad")?;
                ops::elementwise::cast_scaled(ctx, &mut rec, &g, &g32, 1.0 / seed)?;
                g32
            }
            None => {
                // The logits do not depend on the input: the gradient is zero.
                let g = ctx.tensor(input.shape, "input grad")?;
                rec.push(Step::Clear {
                    buffer: g.buffer.clone(),
                });
                g
            }
        };
        self.prepared.flush(ctx)?;
        Ok(GradientPlan {
            batch,
            input: input32,
            labels,
            targets,
            logits,
            loss,
            input_grad,
            forward,
            backward: rec,
            values,
        })
    }
}

impl GradientPlan {
    /// Upload a batch of images (`batch * C*H*W` values in [0, 1]) and labels.
    pub fn set_batch(&self, ctx: &Context, images: &[f32], labels: &[u32]) -> Result<()> {
        if images.len() as u64 != self.input.numel() || labels.len() != self.batch as usize {
            return Err(Error::shape(
                "batch",
                format!(
                    "expected {} image values and {} labels, got {} and {}",
                    self.input.numel(),
                    self.batch,
                    images.len(),
                    labels.len()
                ),
            ));
        }
        ctx.write(&self.input, images);
        ctx.write_bytes(&self.labels, bytemuck::cast_slice(labels));
        Ok(())
    }

    /// Run forward, loss and backward in one submit; read back the input gradient,
    /// logits and per-image loss.
    pub fn run(&self, ctx: &Context) -> Result<GradientResult> {
        let mut out = ctx.run_read(
            &[&self.forward, &self.backward],
            &[&self.input_grad, &self.logits, &self.loss],
        )?;
        let loss = out.pop().unwrap();
        let logits = out.pop().unwrap();
        let input_grad = out.pop().unwrap();
        Ok(GradientResult {
            input_grad,
            logits,
            loss,
        })
    }
}

/// What [`GradientPlan::run`] reads back.
pub struct GradientResult {
    pub input_grad: Vec<f32>,
    pub logits: Vec<f32>,
    pub loss: Vec<f32>,
}
