//! Clean evaluation: forward only, predictions reduced on the GPU. A batch
//! whose tensors would exceed the adapter's largest storage binding runs in
//! parts that fit.

use std::sync::Arc;

use super::outcome::Pred;
use crate::error::{Error, Result};
use crate::gpu::{Binding, Context, Recording, Shader, Shape, Tensor, WORKGROUP_IMAGES};
use crate::ops::loss::{argmax_prob, ARGMAX_PROB_WIDTH};

/// Values per image of the read-out.
const W: usize = ARGMAX_PROB_WIDTH as usize;
use crate::plan::{ForwardPlan, GpuModel};

use super::batch_plan::{LabelMode, LabelParams};

pub struct EvalPlan {
    ctx: Arc<Context>,
    /// The batch size asked for.
    pub batch: u32,
    /// Images per submit (`batch`, or less where a batch would not fit).
    part: u32,
    item: usize,
    fwd: ForwardPlan,
    labels: Tensor,
    stats: Tensor,
    tail: Recording,
}

impl EvalPlan {
    pub fn new(gpu: &GpuModel, asked: u32) -> Result<Self> {
        let ctx = gpu.ctx.clone();
        let c = &*ctx;
        let per_image = gpu.largest_binding_per_image();
        let limit = c.max_binding_bytes();
        if per_image > limit {
            return Err(Error::Usage(format!(
                "one image needs a {per_image}-byte buffer, more than this adapter's largest \
                 storage binding ({limit} bytes): try --precision f16 or another adapter"
            )));
        }
        let batch = super::cascade::even_part(asked, limit / per_image);
        let fwd = gpu.forward_plan(batch)?;
        let labels = c.tensor(Shape::new(batch, 1, 1, 1), "labels")?;
        let scratch = c.tensor(Shape::new(batch, 1, 1, 1), "loss labels")?;
        let stats = c.tensor(Shape::new(batch, ARGMAX_PROB_WIDTH, 1, 1), "stats")?;
        let mut tail = Recording::new();
        let k = c.kernel(
            Shader::Attack,
            fwd.logits.dtype,
            "resolve_labels",
            &[Binding::Read, Binding::ReadWriteF32, Binding::ReadWriteF32],
            &[LabelMode::Untargeted.constant()],
        )?;
        let p = c.uniform(&LabelParams {
            n: batch,
            classes: gpu.num_classes(),
            target_class: 0,
            _pad: 0,
        });
        tail.push(c.dispatch(
            "resolve_labels",
            &k,
            &p,
            &[&fwd.logits, &labels, &scratch],
            batch.div_ceil(WORKGROUP_IMAGES),
        )?);
        argmax_prob(c, &mut tail, &fwd.logits, &labels, &stats)?;
        let item = gpu.input_shape(1).numel() as usize;
        Ok(EvalPlan {
            ctx,
            batch: asked,
            part: batch,
            item,
            fwd,
            labels,
            stats,
            tail,
        })
    }

    /// Images per submit (below [`EvalPlan::batch`] when batches are split).
    pub fn part(&self) -> u32 {
        self.part
    }

    /// Predictions for `labels.len()` images; returns (labels used, predictions).
    pub fn run(&self, pixels: &[f32], labels: &[Option<u32>]) -> Result<(Vec<u32>, Vec<Pred>)> {
        let count = labels.len();
        if count == 0 || count > self.batch as usize || pixels.len() != count * self.item {
            return Err(Error::shape(
                "eval",
                format!("{count} images for batch size {}", self.batch),
            ));
        }
        let part = self.part as usize;
        let (mut used, mut preds) = (Vec::new(), Vec::new());
        for r in super::cascade::parts(count, part) {
            let (u, p) =
                self.run_part(&pixels[r.start * self.item..r.end * self.item], &labels[r])?;
            used.extend(u);
            preds.extend(p);
        }
        Ok((used, preds))
    }

    fn run_part(&self, pixels: &[f32], labels: &[Option<u32>]) -> Result<(Vec<u32>, Vec<Pred>)> {
        let ctx = &*self.ctx;
        let count = labels.len();
        let n = self.part as usize;
        // A partial batch leaves the previous images in the tail rows: their
        // results are never read, so nothing is copied to pad them.
        ctx.write(&self.fwd.input, pixels);
        let mut raw: Vec<u32> = labels.iter().map(|l| l.unwrap_or(u32::MAX)).collect();
        raw.resize(n, 0);
        ctx.write_bytes(&self.labels, bytemuck::cast_slice(&raw));
        let out = ctx.run_read_bytes(
            &[&self.fwd.recording, &self.tail],
            &[&self.labels, &self.stats],
        )?;
        let l: Vec<u32> = bytemuck::pod_collect_to_vec(&out[0]);
        let s: Vec<f32> = bytemuck::pod_collect_to_vec(&out[1]);
        let preds = (0..count)
            .map(|i| Pred {
                class: s[W * i] as u32,
                prob: s[W * i + 1],
                label_prob: s[W * i + 2],
                label_logp: s[W * i + 3],
            })
            .collect();
        Ok((l[..count].to_vec(), preds))
    }
}
