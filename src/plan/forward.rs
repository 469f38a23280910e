//! The forward pass: recording it, and the forward-only plan.

use super::*;

impl GpuModel {
    /// Record the forward pass of every node up to `last` into `rec`. With
    /// `reuse`, a value's buffer is handed out again after its last consumer
    /// (forward-only plans); without, every value stays (backward needs them).
    pub(super) fn record_forward(
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
                    let xs: Vec<&Tensor> = (0..node.inputs.len()).map(x).collect();
                    let lower = Lowering {
                        ctx,
                        weights: &self.weights[i],
                        prepared: &self.prepared,
                        name,
                    };
                    lower.forward(rec, op, &xs, act, &y)?;
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

/// Forward pass only: images in, logits out.
pub struct ForwardPlan {
    pub batch: u32,
    pub input: Tensor,
    pub logits: Tensor,
    pub recording: Recording,
}
