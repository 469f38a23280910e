//! Cascades (`--method apgd-ce,apgd-t`): AutoAttack's protocol of running
//! attacks in turn, each counting only for the images the earlier ones left
//! robust, per eps; the kept result of an image is the first attack's that
//! succeeded (else the last attack's): the pointwise worst case.
//!
//! A batch whose tensors would exceed the adapter's largest storage binding
//! is split: the plans are built for the largest sub-batch that fits and run
//! once per part (results are per image, so they do not change; one submit
//! per part instead of per batch).
//!
//! Each attack is its own [`AttackPlan`], one submit per batch. As in
//! AutoAttack, a later attack runs only on the images still robust at some
//! eps after the earlier ones (rounded to the 8-bit grid, or with
//! `--count-rounding` at the unrounded points, each a cascade of its own): they are packed, through the host, into a plan
//! of the smallest power-of-two batch that holds them (built on first use,
//! then kept), so its cost follows the robust count, and an attack with none
//! left is not run. Results are identical to running every attack on the
//! whole batch and keeping the first success, since an image's attack
//! depends on nothing but the image (its id keys the random numbers; tests
//! pin this). With `--minimal` every attack runs on every image, since a
//! later one may find a smaller eps.

use std::collections::BTreeMap;
use std::sync::Mutex;

use super::batch_plan::{AttackPlan, PendingBatch};
use super::method::Cascade;
use super::outcome::BatchOutcome;
use super::Target;
use crate::error::Result;
use crate::plan::GpuModel;
use crate::report::attack_success;

/// One plan per attack of a cascade (a single method is a cascade of one).
pub struct CascadePlan {
    pub stages: Vec<AttackPlan>,
    /// The batch size asked for; the plans run `stages[0].batch` at a time.
    batch: u32,
    /// Later attacks only on the images still robust (see the module's text).
    compact: bool,
    /// For building the smaller plans later attacks run on.
    gpu: GpuModel,
    /// Per later attack, its plans at the smaller batch sizes, by size.
    smaller: Vec<Mutex<BTreeMap<u32, AttackPlan>>>,
}

/// The largest tensor an attack plan binds, in bytes per image: the model's
/// (activations and gradients), and the 8-bit results of every eps.
pub fn bytes_per_image(gpu: &GpuModel, cascade: &Cascade) -> u64 {
    let s = &cascade.stages[0];
    let slots = s.eps.len() as u64 + s.minimal as u64;
    gpu.largest_binding_per_image()
        .max(slots * gpu.input_shape(1).numel())
}

/// The size of each part of a batch of `batch` whose parts may hold at most
/// `most` images: as few parts as possible, as even as possible (a batch of 32
/// with room for 27 runs as two parts of 16, not 27 and a padded 5).
pub fn even_part(batch: u32, most: u64) -> u32 {
    let most = most.clamp(1, batch.max(1) as u64) as u32;
    let parts = batch.div_ceil(most);
    batch.div_ceil(parts.max(1))
}

/// The image ranges of `count` images run `part` at a time.
pub fn parts(count: usize, part: usize) -> impl Iterator<Item = std::ops::Range<usize>> {
    let part = part.max(1);
    (0..count)
        .step_by(part)
        .map(move |start| start..(start + part).min(count))
}

impl CascadePlan {
    /// Plans for batches of `batch`, split into parts that fit the adapter's
    /// largest storage binding.
    pub fn new(gpu: &GpuModel, batch: u32, cascade: &Cascade) -> Result<Self> {
        let per_image = bytes_per_image(gpu, cascade);
        let limit = gpu.ctx.max_binding_bytes();
        if per_image > limit {
            return Err(crate::error::Error::Usage(format!(
                "one image needs a {per_image}-byte buffer, more than this adapter's largest \
                 storage binding ({limit} bytes): use fewer eps per run, --precision f16, or \
                 another adapter (--adapter)"
            )));
        }
        let part = even_part(batch, limit / per_image);
        if part < batch {
            log::info!(
                "batches of {batch} run in parts of {part}: larger tensors would exceed the \
                 adapter's largest storage binding ({limit} bytes)"
            );
        }
        let stages = cascade
            .stages
            .iter()
            .map(|s| AttackPlan::with_spec(gpu, part, s))
            .collect::<Result<Vec<_>>>()?;
        let compact = stages.len() > 1 && !cascade.stages.iter().any(|s| s.minimal);
        Ok(CascadePlan {
            smaller: (0..stages.len()).map(|_| Mutex::default()).collect(),
            stages,
            batch,
            compact,
            gpu: gpu.clone(),
        })
    }

    /// The smaller batch sizes later attack `stage` has run on so far
    /// (compacting: the plans built for the robust images).
    pub fn smaller_sizes(&self, stage: usize) -> Vec<u32> {
        self.smaller
            .get(stage)
            .map(|m| m.lock().expect("a plan cache").keys().copied().collect())
            .unwrap_or_default()
    }

    /// Whether later attacks run only on the images still robust (the
    /// default for cascades without `--minimal`); `false` runs every attack
    /// on every image, as before (for tests and measurements).
    pub fn set_compaction(&mut self, on: bool) {
        self.compact = on && self.stages.len() > 1;
    }

    /// The batch size asked for.
    pub fn batch(&self) -> u32 {
        self.batch
    }

    /// Images per submit (below [`CascadePlan::batch`] when batches are split).
    pub fn part(&self) -> u32 {
        self.stages[0].batch
    }

    /// [`CascadePlan::run_ids`] with the images' positions as their ids.
    pub fn run(
        &self,
        pixels: &[f32],
        labels: &[Option<u32>],
        want_images: bool,
    ) -> Result<BatchOutcome> {
        let ids: Vec<u32> = (0..labels.len() as u32).collect();
        self.run_ids(pixels, labels, &ids, want_images)
    }

    /// Every attack on one batch (see [`AttackPlan::run_ids`]), combined; a
    /// batch larger than [`CascadePlan::part`] runs in parts.
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

    /// The first half of [`CascadePlan::run_ids`]: every part and attack of
    /// the batch submitted, nothing waited for, so the next batch can be
    /// uploaded and submitted while this one runs.
    pub fn submit_ids(
        &self,
        pixels: &[f32],
        labels: &[Option<u32>],
        ids: &[u32],
        want_images: bool,
    ) -> Result<PendingCascade> {
        if labels.is_empty() {
            return Err(crate::error::Error::shape(
                "attack",
                "0 images: a batch holds at least one",
            ));
        }
        let part = self.part() as usize;
        let item = pixels.len() / labels.len();
        // Compacting, only the first attack is submitted now: the later ones
        // wait for its results (finish).
        let submitted = if self.compact { 1 } else { self.stages.len() };
        let mut parts_out = Vec::new();
        for r in parts(labels.len(), part) {
            let stages = self.stages[..submitted]
                .iter()
                .map(|p| {
                    p.submit_ids(
                        &pixels[r.start * item..r.end * item],
                        &labels[r.clone()],
                        &ids[r.clone()],
                        want_images,
                    )
                })
                .collect::<Result<Vec<_>>>()?;
            let input = self.compact.then(|| PartInput {
                pixels: pixels[r.start * item..r.end * item].to_vec(),
                labels: labels[r.clone()].to_vec(),
                ids: ids[r.clone()].to_vec(),
            });
            parts_out.push((stages, input));
        }
        Ok(PendingCascade {
            parts: parts_out,
            want_images,
        })
    }

    /// The second half of [`CascadePlan::run_ids`]: wait, decode, combine
    /// (compacting: each later attack on what is still robust, in turn).
    pub fn finish(&self, p: PendingCascade) -> Result<BatchOutcome> {
        let targeted = self.stages[0].spec.target != Target::Untargeted;
        let mut out: Option<BatchOutcome> = None;
        for (stages, input) in p.parts {
            let mut outs = self
                .stages
                .iter()
                .zip(stages)
                .map(|(plan, pending)| plan.finish(pending))
                .collect::<Result<Vec<_>>>()?;
            if let Some(input) = input {
                for s in 1..self.stages.len() {
                    let o = self.on_robust(s, &outs, &input, targeted, p.want_images)?;
                    outs.push(o);
                }
            }
            let o = combine(outs, targeted);
            match out.as_mut() {
                None => out = Some(o),
                Some(acc) => acc.append(o),
            }
        }
        Ok(out.expect("at least one part"))
    }

    /// Attack `s` of the cascade on the images of one part still robust at
    /// some eps after `done` (attacks 0..s), packed into the smallest plan
    /// that holds them; the outcome is the part's, with the rows of the
    /// others left as attack 0's (`combine` never reads them: an earlier
    /// attack succeeded at every eps there).
    fn on_robust(
        &self,
        s: usize,
        done: &[BatchOutcome],
        input: &PartInput,
        targeted: bool,
        want_images: bool,
    ) -> Result<BatchOutcome> {
        let first = &done[0];
        let count = first.labels.len();
        // Robust at some eps after rounding, or (with --count-rounding) at the
        // unrounded points: each is a cascade of its own (see `combine`).
        let rows: Vec<usize> = (0..count)
            .filter(|&j| {
                let label = first.labels[j];
                let tgt = targeted.then_some(first.loss_labels[j]);
                (0..first.adv.len()).any(|e| {
                    let rounded = done
                        .iter()
                        .any(|o| attack_success(o.adv[e][j].class, label, tgt));
                    let raw = done.iter().any(|o| {
                        o.raw_adv
                            .as_ref()
                            .is_some_and(|r| attack_success(r[e][j].class, label, tgt))
                    });
                    !rounded || (first.raw_adv.is_some() && !raw)
                })
            })
            .collect();
        let mut full = shadow(first, want_images);
        if rows.is_empty() {
            return Ok(full);
        }
        let item = input.pixels.len() / count;
        let pixels: Vec<f32> = rows
            .iter()
            .flat_map(|&j| input.pixels[j * item..(j + 1) * item].iter().copied())
            .collect();
        let labels: Vec<Option<u32>> = rows.iter().map(|&j| input.labels[j]).collect();
        let ids: Vec<u32> = rows.iter().map(|&j| input.ids[j]).collect();
        let size = (rows.len() as u32).next_power_of_two();
        let mut o = if size >= self.part() {
            self.stages[s].run_ids(&pixels, &labels, &ids, want_images)?
        } else {
            let mut plans = self.smaller[s].lock().expect("a plan cache");
            let plan = match plans.entry(size) {
                std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::btree_map::Entry::Vacant(e) => {
                    let spec = &self.stages[s].spec;
                    e.insert(AttackPlan::with_spec(&self.gpu, size, spec)?)
                }
            };
            plan.run_ids(&pixels, &labels, &ids, want_images)?
        };
        for (c, &j) in rows.iter().enumerate() {
            full.passes[j] = o.passes[c];
            for e in 0..full.adv.len() {
                full.adv[e][j] = o.adv[e][c];
                full.norms[e][j] = o.norms[e][c];
                full.first_success[e][j] = o.first_success[e][c];
                if let (Some(f), Some(r)) = (full.raw_adv.as_mut(), o.raw_adv.as_ref()) {
                    f[e][j] = r[e][c];
                }
                if let (Some(f), Some(i)) = (full.images.as_mut(), o.images.as_mut()) {
                    f[e][j] = std::mem::take(&mut i[e][c]);
                }
            }
        }
        Ok(full)
    }
}

/// `o`'s per-image results, the images left empty: the rows a later attack
/// does not run on (see [`CascadePlan::on_robust`]).
fn shadow(o: &BatchOutcome, want_images: bool) -> BatchOutcome {
    BatchOutcome {
        labels: o.labels.clone(),
        loss_labels: o.loss_labels.clone(),
        clean: o.clean.clone(),
        adv: o.adv.clone(),
        raw_adv: o.raw_adv.clone(),
        norms: o.norms.clone(),
        first_success: o.first_success.clone(),
        images: want_images.then(|| {
            o.adv
                .iter()
                .map(|row| vec![Vec::new(); row.len()])
                .collect()
        }),
        stages: None,
        grad_norm: None,
        min_eps: None,
        // the rows it runs on take their own
        passes: vec![(0, 0); o.labels.len()],
    }
}

/// A batch submitted by [`CascadePlan::submit_ids`]: per part, the attacks
/// submitted, and (compacting) the part's input for the later ones.
#[must_use = "CascadePlan::finish gives the outcome (and any error)"]
pub struct PendingCascade {
    parts: Vec<(Vec<PendingBatch>, Option<PartInput>)>,
    want_images: bool,
}

/// One part's images, labels and ids, kept for the later attacks.
struct PartInput {
    pixels: Vec<f32>,
    labels: Vec<Option<u32>>,
    ids: Vec<u32>,
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
    // With --count-rounding, the unrounded points are a cascade of their own:
    // per eps and image, the first attack whose unrounded point succeeded
    // (else the last), so they give the float robust accuracy.
    let raw_kept: Option<Vec<Vec<usize>>> = outs.iter().all(|o| o.raw_adv.is_some()).then(|| {
        (0..k)
            .map(|e| {
                (0..count)
                    .map(|j| {
                        let label = outs[0].labels[j];
                        let tgt = targeted.then_some(outs[0].loss_labels[j]);
                        (0..n)
                            .find(|&s| {
                                let r = outs[s].raw_adv.as_ref().expect("checked");
                                attack_success(r[e][j].class, label, tgt)
                            })
                            .unwrap_or(n - 1)
                    })
                    .collect()
            })
            .collect()
    });
    let raw_adv = raw_kept.map(|kept| {
        kept.iter()
            .enumerate()
            .map(|(e, row)| {
                row.iter()
                    .enumerate()
                    .map(|(j, &s)| outs[s].raw_adv.as_ref().expect("checked")[e][j])
                    .collect()
            })
            .collect()
    });
    let passes = (0..count)
        .map(|j| {
            outs.iter()
                .fold((0, 0), |(f, b), o| (f + o.passes[j].0, b + o.passes[j].1))
        })
        .collect();
    let mut base = outs.remove(0);
    base.min_eps = min_eps;
    base.passes = passes;
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
            if let (Some(b), Some(i)) = (base.images.as_mut(), o.images.as_mut()) {
                b[e][j] = std::mem::take(&mut i[e][j]);
            }
        }
    }
    if raw_adv.is_some() {
        base.raw_adv = raw_adv;
    }
    base.stages = Some(stages);
    base
}

#[cfg(test)]
mod tests {
    use super::even_part;

    #[test]
    fn parts_are_as_few_and_even_as_possible() {
        assert_eq!(even_part(32, 27), 16);
        assert_eq!(even_part(32, 10), 8);
        assert_eq!(even_part(32, 64), 32);
        assert_eq!(even_part(7, 1), 1);
        assert_eq!(even_part(5, 0), 1);
        assert_eq!(even_part(100, 47), 34);
        let r: Vec<_> = super::parts(10, 4).collect();
        assert_eq!(r, vec![0..4, 4..8, 8..10]);
    }
}
