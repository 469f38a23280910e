//! Running a batch on an [`AttackPlan`]: upload the images, labels and ids,
//! submit the recorded work ([`AttackPlan::submit_ids`]), then wait and
//! decode what came back ([`AttackPlan::finish`]); the two halves let a
//! device overlap batches.

use super::{AttackPlan, W};
use crate::attack::method::Method;
use crate::attack::outcome::{BatchOutcome, Pred};
use crate::error::{Error, Result};
use crate::gpu::Tensor;

/// A batch submitted by [`AttackPlan::submit_ids`], not yet collected.
#[must_use = "AttackPlan::finish gives the outcome (and any error)"]
pub struct PendingBatch {
    pending: crate::gpu::Pending,
    count: usize,
    want_images: bool,
}

impl AttackPlan {
    /// Attack `count = labels.len()` images (`pixels` holds `count` CHW images in
    /// [0, 1]; fewer than the batch size are padded). `None` labels become the
    /// clean prediction. Random starts are keyed by the position in the batch;
    /// [`AttackPlan::run_ids`] keys them by the images' own ids.
    pub fn run(
        &self,
        pixels: &[f32],
        labels: &[Option<u32>],
        want_images: bool,
    ) -> Result<BatchOutcome> {
        let ids: Vec<u32> = (0..labels.len() as u32).collect();
        self.run_ids(pixels, labels, &ids, want_images)
    }

    /// [`AttackPlan::run`] with one id per image for the random numbers (see
    /// [`crate::attack::outcome::image_id`]), so that an image's result depends on nothing else.
    pub fn run_ids(
        &self,
        pixels: &[f32],
        labels: &[Option<u32>],
        ids: &[u32],
        want_images: bool,
    ) -> Result<BatchOutcome> {
        let p = self.submit_ids(pixels, labels, ids, want_images)?;
        self.finish(p)
    }

    /// The first half of [`AttackPlan::run_ids`]: upload the batch and submit
    /// its work without waiting. Another batch may be submitted (on this plan
    /// too) before [`AttackPlan::finish`] collects this one: the device runs
    /// them in order, and each keeps its own read-back.
    pub fn submit_ids(
        &self,
        pixels: &[f32],
        labels: &[Option<u32>],
        ids: &[u32],
        want_images: bool,
    ) -> Result<PendingBatch> {
        let ctx = &*self.ctx;
        let count = labels.len();
        let n = self.batch as usize;
        let item = self.item as usize;
        if count == 0 || count > n || pixels.len() != count * item || ids.len() != count {
            return Err(Error::shape(
                "attack",
                format!(
                    "{count} images ({} values, {} ids) for batch size {n}",
                    pixels.len(),
                    ids.len()
                ),
            ));
        }
        // A partial batch leaves the previous images in the tail rows: their
        // results are never read, so nothing is copied to pad them.
        ctx.write(&self.clean, pixels);
        let mut raw: Vec<u32> = labels.iter().map(|l| l.unwrap_or(u32::MAX)).collect();
        raw.resize(n, 0);
        ctx.write_bytes(&self.true_labels, bytemuck::cast_slice(&raw));
        let mut id_words = ids.to_vec();
        id_words.resize(n, 0);
        ctx.write_bytes(&self.ids, bytemuck::cast_slice(&id_words));

        let recs = self.recordings();
        let mut reads: Vec<&Tensor> = vec![
            &self.true_labels,
            &self.loss_labels,
            &self.norms,
            &self.first,
        ];
        reads.extend(self.stats.iter());
        reads.extend(self.raw_stats.iter());
        reads.extend(self.lohi.iter());
        reads.extend(self.g0_norm.iter());
        if want_images {
            reads.push(&self.adv_u8);
        }
        Ok(PendingBatch {
            pending: ctx.submit_read(&recs, &reads)?,
            count,
            want_images,
        })
    }

    /// The second half of [`AttackPlan::run_ids`]: wait for a submitted
    /// batch and decode what it read back.
    pub fn finish(&self, p: PendingBatch) -> Result<BatchOutcome> {
        let PendingBatch {
            pending,
            count,
            want_images,
        } = p;
        let n = self.batch as usize;
        let item = self.item as usize;
        let out = self.ctx.wait_read(pending)?;
        let u32s = |b: &[u8]| -> Vec<u32> { bytemuck::pod_collect_to_vec(b) };
        let f32s = |b: &[u8]| -> Vec<f32> { bytemuck::pod_collect_to_vec(b) };
        let true_labels = u32s(&out[0]);
        let loss_labels = u32s(&out[1]);
        let norms = f32s(&out[2]);
        let first = u32s(&out[3]);
        let preds = |b: &[u8]| -> Vec<Pred> {
            let v = f32s(b);
            (0..count)
                .map(|i| Pred {
                    class: v[W * i] as u32,
                    prob: v[W * i + 1],
                    label_prob: v[W * i + 2],
                    label_logp: v[W * i + 3],
                })
                .collect()
        };
        let k = self.eps.len();
        let clean = preds(&out[4]);
        let adv: Vec<Vec<Pred>> = (0..k).map(|e| preds(&out[5 + e])).collect();
        let raw_adv: Option<Vec<Vec<Pred>>> =
            (!self.raw_stats.is_empty()).then(|| (0..k).map(|e| preds(&out[5 + k + e])).collect());
        let norms: Vec<Vec<(f32, f32)>> = (0..k)
            .map(|e| {
                (0..count)
                    .map(|i| (norms[2 * (e * n + i)], norms[2 * (e * n + i) + 1]))
                    .collect()
            })
            .collect();
        let first_success: Vec<Vec<Option<u32>>> = (0..k)
            .map(|e| {
                (0..count)
                    .map(|i| Some(first[e * n + i]).filter(|&s| s != u32::MAX))
                    .collect()
            })
            .collect();
        let min_eps = self.lohi.as_ref().map(|_| {
            let v = f32s(&out[5 + k + self.raw_stats.len()]);
            crate::attack::minimal::min_levels(
                &v,
                count,
                (self.eps[0].exact * 255.0).round() as u32,
            )
        });
        let grad_norm = self.g0_norm.as_ref().map(|_| {
            let at = 5 + k + self.raw_stats.len() + self.lohi.is_some() as usize;
            let scale = if self.spec.method == Method::Fgsm {
                item as f32
            } else {
                1.0
            };
            f32s(&out[at])[..count].iter().map(|v| v * scale).collect()
        });
        let images = want_images.then(|| {
            let bytes = out.last().expect("u8 read last");
            let slot = self.slot_words as usize * 4;
            (0..k)
                .map(|e| {
                    (0..count)
                        .map(|i| bytes[e * slot + i * item..e * slot + (i + 1) * item].to_vec())
                        .collect()
                })
                .collect()
        });
        Ok(BatchOutcome {
            labels: true_labels[..count].to_vec(),
            loss_labels: loss_labels[..count].to_vec(),
            clean,
            adv,
            raw_adv,
            norms,
            first_success,
            images,
            stages: None,
            grad_norm,
            min_eps,
            passes: vec![self.passes_per_image(); count],
        })
    }
}
