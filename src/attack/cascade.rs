//! Cascades (`--method apgd-ce,apgd-t`): AutoAttack's protocol of running
//! attacks in turn, each counting only for the images the earlier ones left
//! robust, per eps; the kept result of an image is the first attack's that
//! succeeded (else the last attack's): the pointwise worst case.
//!
//! Each attack is its own [`AttackPlan`], one submit per batch. A later attack
//! runs on the whole batch and its results are taken only where no earlier
//! attack succeeded: results are identical to running it on the robust images
//! alone (every image's attack is independent of the others'), without
//! AutoAttack's saving of skipping them.

use super::fgsm::{AttackPlan, BatchOutcome};
use super::method::Cascade;
use super::Target;
use crate::error::Result;
use crate::plan::GpuModel;
use crate::report::attack_success;

/// One plan per attack of a cascade (a single method is a cascade of one).
pub struct CascadePlan {
    pub stages: Vec<AttackPlan>,
}

impl CascadePlan {
    pub fn new(gpu: &GpuModel, batch: u32, cascade: &Cascade) -> Result<Self> {
        let stages = cascade
            .stages
            .iter()
            .map(|s| AttackPlan::with_spec(gpu, batch, s))
            .collect::<Result<Vec<_>>>()?;
        Ok(CascadePlan { stages })
    }

    pub fn batch(&self) -> u32 {
        self.stages[0].batch
    }

    /// Every attack on one batch (see [`AttackPlan::run_ids`]), combined.
    pub fn run_ids(
        &self,
        pixels: &[f32],
        labels: &[Option<u32>],
        ids: &[u32],
        want_images: bool,
    ) -> Result<BatchOutcome> {
        let outs = self
            .stages
            .iter()
            .map(|p| p.run_ids(pixels, labels, ids, want_images))
            .collect::<Result<Vec<_>>>()?;
        let targeted = self.stages[0].spec.target != Target::Untargeted;
        Ok(combine(outs, targeted))
    }
}

/// The pointwise worst case of the attacks' outcomes on one batch.
pub fn combine(mut outs: Vec<BatchOutcome>, targeted: bool) -> BatchOutcome {
    if outs.len() == 1 {
        return outs.pop().expect("one");
    }
    let n = outs.len();
    let k = outs[0].adv.len();
    let count = outs[0].labels.len();
    let mut stages = vec![vec![(0u8, 0u8); count]; k];
    for (e, row) in stages.iter_mut().enumerate() {
        for (j, cell) in row.iter_mut().enumerate() {
            let label = outs[0].labels[j];
            let tgt = targeted.then_some(outs[0].loss_labels[j]);
            let class = |s: usize| outs[s].adv[e][j].class;
            let kept = (0..n)
                .find(|&s| attack_success(class(s), label, tgt))
                .unwrap_or(n - 1);
            let still = (0..n).find(|&s| class(s) != label).unwrap_or(n);
            *cell = (kept as u8, still as u8);
        }
    }
    // --minimal: the smallest level any attack of the cascade needed.
    let min_eps = outs[0].min_eps.as_ref().map(|m0| {
        (0..m0.len())
            .map(|j| outs.iter().filter_map(|o| o.min_eps.as_ref()?[j]).min())
            .collect::<Vec<_>>()
    });
    let mut base = outs.remove(0);
    base.min_eps = min_eps;
    base.grad_norm = None; // the linear view is one method's
                           // `outs[s - 1]` is attack s now.
    for (e, row) in stages.iter().enumerate() {
        for (j, &(kept, _)) in row.iter().enumerate() {
            if kept == 0 {
                continue;
            }
            let o = &mut outs[kept as usize - 1];
            base.adv[e][j] = o.adv[e][j];
            base.norms[e][j] = o.norms[e][j];
            base.first_success[e][j] = o.first_success[e][j];
            if let (Some(b), Some(r)) = (base.raw_adv.as_mut(), o.raw_adv.as_ref()) {
                b[e][j] = r[e][j];
            }
            if let (Some(b), Some(i)) = (base.images.as_mut(), o.images.as_mut()) {
                b[e][j] = std::mem::take(&mut i[e][j]);
            }
        }
    }
    base.stages = Some(stages);
    base
}
