//! Forward, loss and backward to the input: the gradient plan.

use super::*;

/// The loss a [`GradientPlan`] differentiates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LossKind {
    /// Softmax cross-entropy of the label.
    CrossEntropy,
    /// AutoAttack's DLR loss of the label ([`crate::ops::loss::dlr`]).
    Dlr,
    /// AutoAttack's targeted DLR loss: label in `labels`, target in `targets`.
    DlrTargeted,
    /// FAB-T's function `z_target - z_label` (label in `labels`, target in
    /// `targets`), whose gradient the attack linearises.
    TargetMargin,
}

/// Everything needed to run forward and backward for batches of `batch` images.
pub struct GradientPlan {
    pub batch: u32,
    /// Images in [0, 1], NCHW.
    pub input: Tensor,
    /// u32 labels, one per image.
    pub labels: Tensor,
    /// u32 target classes, one per image (read by [`LossKind::DlrTargeted`] and
    /// [`LossKind::TargetMargin`] only).
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

        let mut consumers = vec![0usize; last + 1];
        for node in &model.nodes[..=last] {
            for s in &node.inputs {
                if let Src::Node(j) = s {
                    consumers[*j] += 1;
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
            LossKind::TargetMargin => ops::loss::target_margin(
                ctx,
                &mut rec,
                &logits,
                &labels,
                &targets,
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
            // A convolution reading the output of an activation fused into the
            // convolution before: its backward pass applies the activation's
            // derivative as it writes, and its gradient goes straight to the
            // convolution before (the activation's own backward pass is left out).
            let through = self.backward_through(i, &consumers, &values, &grads);
            // Where input k's gradient goes: straight into its buffer when this is the
            // first contribution, else into scratch followed by an accumulate.
            let mut targets: Vec<(Tensor, Option<Tensor>)> = Vec::new();
            for (k, s) in node.inputs.iter().enumerate() {
                let shape = x(k).shape;
                let slot = match (*s, through) {
                    (Src::Node(_), Some((before, _))) => &mut grads[before],
                    (Src::Input, _) => &mut input_grad,
                    (Src::Node(j), None) => &mut grads[j],
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
            let xs: Vec<Tensor> = (0..node.inputs.len()).map(x).collect();
            let xs: Vec<&Tensor> = xs.iter().collect();
            let gxs: Vec<&Tensor> = (0..node.inputs.len()).map(gx).collect();
            let lower = Lowering {
                ctx,
                weights: &self.weights[i],
                prepared: &self.prepared,
                name: &node.name,
            };
            let fused = self.fused_from[i].is_some();
            let act = through.map(|(_, a)| a);
            lower.backward(&mut rec, &node.op, &xs, &values[i], &gy, &gxs, fused, act)?;
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

impl GpuModel {
    /// For node `i`'s backward pass: `Some((before, act))` when node `i` is a
    /// convolution whose only input is the output of activation `act`, fused
    /// into convolution `before` and read by node `i` alone, and the kernel of
    /// node `i`'s backward pass can apply `act`'s derivative as it writes
    /// ([`ops::conv::backward_through`]). Then that pass writes the gradient of
    /// `before`'s output (not yet written by anyone) directly.
    fn backward_through(
        &self,
        i: usize,
        consumers: &[usize],
        values: &[Tensor],
        grads: &[Option<Tensor>],
    ) -> Option<(usize, Activation)> {
        let node = &self.model.nodes[i];
        let (Op::Conv2d { params, .. }, Weights::Conv { w, .. }) = (&node.op, &self.weights[i])
        else {
            return None;
        };
        let [Src::Node(j)] = node.inputs[..] else {
            return None;
        };
        let before = self.fused_from[j]?;
        let Op::Activation(act) = self.model.nodes[j].op else {
            return None;
        };
        let fits = act != Activation::Identity
            && act.derivative_from_output()
            && consumers[j] == 1
            && grads[j].is_none()
            && grads[before].is_none()
            && ops::conv::backward_fuses(&self.ctx, params, values[j].shape, w.shape);
        fits.then_some((before, act))
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
