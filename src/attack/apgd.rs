//! AutoAttack's APGD (Croce & Hein 2020) on the GPU, L-inf and L2: `apgd-ce`,
//! `apgd-dlr` and `apgd-t`, with the semantics of `autopgd_base.py` in the
//! reference code: a normalised uniform random start, step 2 eps with momentum
//! 0.75, checkpoints after 22%, then 19%, 16%, ... (at least 6%) of the steps
//! where the step is halved and the attack goes back to its best point if the
//! loss rose on at most 75% of the steps since the last checkpoint (or neither
//! the step was reduced at the last checkpoint nor the best loss has improved
//! since), the last fooling point of each run kept, and runs (restarts; for
//! apgd-t one per target class, the classes the clean model ranks 2nd, 3rd,
//! ...) whose results count only for images no earlier run fooled.
//!
//! Every run, step and checkpoint decision is recorded into the batch's replay
//! list (`shaders/attack/attack.wgsl`, `apgd_*` kernels): no host round trip.

use std::sync::Arc;

use super::method::{AttackSpec, Method, Norm};
use super::replay::{Builder, Piece};
use crate::error::{Error, Result};
use crate::gpu::{
    Binding, Context, DType, Kernel, Shader, Shape, Tensor, WORKGROUP_1D, WORKGROUP_IMAGES,
};
use crate::plan::{ForwardPlan, GradientPlan};

/// f32 values of per-image state (`APGD_S` in the shader).
const STATE: u32 = 12;

/// Phases of `apgd_track` (see the shader).
const PHASE_START: u32 = 0;
const PHASE_STEP: u32 = 1;
const PHASE_END: u32 = 2;
const PHASE_EPS: u32 = 3;
const PHASE_CLEAN: u32 = 4;

/// The reference's checkpoints for `n_iter` steps: for each step, the
/// oscillation threshold (0.75 k, k the steps since the last checkpoint) when
/// a checkpoint ends it. `n_iter_2 = max(int(0.22 n), 1)` steps to the first,
/// each later interval `size_decr = max(int(0.03 n), 1)` shorter, down to
/// `n_iter_min = max(int(0.06 n), 1)`.
pub fn checkpoints(n_iter: u32) -> Vec<Option<f32>> {
    let n = n_iter as f64;
    let first = ((0.22 * n) as i64).max(1);
    let min = ((0.06 * n) as i64).max(1);
    let decr = ((0.03 * n) as i64).max(1);
    let mut k = first;
    let mut since = 0;
    (0..n_iter)
        .map(|_| {
            since += 1;
            if since == k {
                let t = (k as f64 * 0.75) as f32;
                k = (k - decr).max(min);
                since = 0;
                Some(t)
            } else {
                None
            }
        })
        .collect()
}

/// Elements of a batch of `shape`, as the attack kernels index them (u32).
pub(super) fn kernel_numel(shape: Shape) -> Result<u32> {
    u32::try_from(shape.numel()).map_err(|_| {
        Error::Usage("batch too large for the attack kernels; lower --batch-size".into())
    })
}

/// Mirrors `ApgdStartParams` in `shaders/attack/attack.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct StartParams {
    item: u32,
    n: u32,
    _pad0: u32,
    restart: u32,
    seed_lo: u32,
    seed_hi: u32,
    random: u32,
    _pad: u32,
}

/// Mirrors `ApgdStepParams`.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct StepParams {
    numel: u32,
    item: u32,
    _pad: u32,
    first: u32,
}

/// Mirrors `ApgdTrackParams`.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct TrackParams {
    n: u32,
    classes: u32,
    targeted: u32,
    phase: u32,
    step: u32,
    out0: u32,
    negate: u32,
    _pad0: u32,
    check: f32,
    _pad1: [u32; 3],
}

/// Mirrors `ApgdApplyParams`.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct ApplyParams {
    numel: u32,
    item: u32,
    _pad: [u32; 2],
}

/// Mirrors `ApgdTargetParams`.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct TargetParams {
    n: u32,
    classes: u32,
    count: u32,
    _pad: u32,
}

/// The tensors of the attack plan that the attack bodies read and write.
#[derive(Clone, Copy)]
pub(super) struct Io<'a> {
    pub grad: &'a GradientPlan,
    /// The forward-only plan (the scored point's forward; Square's queries).
    pub fwd: &'a ForwardPlan,
    pub clean: &'a Tensor,
    pub ids: &'a Tensor,
    /// Labels after `resolve_labels`.
    pub true_labels: &'a Tensor,
    /// The class whose loss the attack moves (the target when targeted).
    pub loss_labels: &'a Tensor,
    /// First-success steps, `[eps * batch]`.
    pub first: &'a Tensor,
    /// Each image's eps (`[batch]` f32).
    pub eps: &'a Tensor,
}

/// APGD's kernels, buffers and run list for one batch size.
pub(super) struct Apgd {
    start: Arc<Kernel>,
    step: Arc<Kernel>,
    track: Arc<Kernel>,
    apply: Arc<Kernel>,
    adv: Tensor,
    old: Tensor,
    best: Tensor,
    best_adv: Tensor,
    g_best: Tensor,
    /// The point each eps scores: a run's last fooling point, else x.
    pub result: Tensor,
    state: Tensor,
    /// apgd-t without `--target`: the ranked target classes, `[targets * batch]`.
    ranked: Option<(Tensor, u32)>,
    spec: AttackSpec,
    batch: u32,
    classes: u32,
    numel: u32,
    item: u32,
    /// Success means reaching `loss_labels` (not leaving the label).
    targeted: bool,
    /// The loss to raise is minus the plan's (targeted cross-entropy).
    negate: bool,
}

impl Apgd {
    pub fn new(
        c: &Context,
        spec: &AttackSpec,
        batch: u32,
        shape: Shape,
        classes: u32,
        logits: DType,
    ) -> Result<Self> {
        let m = spec.method;
        // Too few classes for the DLR loss is a usage error; the target count fits.
        let mut spec = spec.clone();
        spec.fit_to_model(classes)?;
        let numel = kernel_numel(shape)?;
        let item = numel / batch;
        let rw = Binding::ReadWriteF32;
        let r = Binding::ReadF32;
        let l2 = spec.norm == Norm::L2;
        let start = c.kernel(
            Shader::Attack,
            DType::F32,
            "apgd_start",
            &[r, r, rw, rw, rw, rw, rw, r],
            &[("APGD_L2", l2 as u32 as f64)],
        )?;
        let step = if l2 {
            c.kernel(
                Shader::Attack,
                DType::F32,
                "apgd_step_l2",
                &[r, r, r, rw, rw, rw, r],
                &[],
            )?
        } else {
            c.kernel(
                Shader::Attack,
                DType::F32,
                "apgd_step",
                &[r, r, r, rw, rw, rw, r],
                &[("ITEM", item as f64)],
            )?
        };
        let track = c.kernel(
            Shader::Attack,
            logits,
            "apgd_track",
            &[Binding::Read, r, r, r, rw, rw, r],
            &[],
        )?;
        let apply = c.kernel(
            Shader::Attack,
            DType::F32,
            "apgd_apply",
            &[r, rw, rw, rw, rw, rw, rw],
            &[("ITEM", item as f64)],
        )?;
        let t = |label: &str| c.tensor(shape, label);
        let targeted = spec.target != super::Target::Untargeted;
        let ranked = if m == Method::ApgdT && !targeted {
            let n = spec.targets;
            Some((c.tensor(Shape::new(n * batch, 1, 1, 1), "apgd targets")?, n))
        } else {
            None
        };
        Ok(Apgd {
            start,
            step,
            track,
            apply,
            adv: t("apgd x_adv")?,
            old: t("apgd x_adv_old")?,
            best: t("apgd x_best")?,
            best_adv: t("apgd x_best_adv")?,
            g_best: t("apgd grad_best")?,
            result: t("apgd result")?,
            state: c.tensor(Shape::new(batch, STATE, 1, 1), "apgd state")?,
            ranked,
            spec,
            batch,
            classes,
            numel,
            item,
            targeted,
            negate: targeted && m == Method::ApgdCe,
        })
    }

    #[allow(clippy::too_many_arguments)] // the kernel's uniform, field by field
    fn track(
        &self,
        c: &Context,
        b: &mut Builder,
        io: &Io,
        phase: u32,
        step: u32,
        out0: u32,
        check: Option<f32>,
    ) -> Result<()> {
        let p = c.uniform(&TrackParams {
            n: self.batch,
            classes: self.classes,
            targeted: self.targeted as u32,
            phase,
            step,
            out0,
            negate: self.negate as u32,
            _pad0: 0,
            check: check.unwrap_or(-1.0),
            _pad1: [0; 3],
        });
        let d = c.dispatch(
            "apgd_track",
            &self.track,
            &p,
            &[
                &io.grad.logits,
                io.true_labels,
                io.loss_labels,
                &io.grad.loss,
                &self.state,
                io.first,
                io.eps,
            ],
            self.batch.div_ceil(WORKGROUP_IMAGES),
        )?;
        b.push(d);
        Ok(())
    }

    fn apply(&self, c: &Context, b: &mut Builder, io: &Io) -> Result<()> {
        let p = c.uniform(&ApplyParams {
            numel: self.numel,
            item: self.item,
            _pad: [0; 2],
        });
        let d = c.dispatch(
            "apgd_apply",
            &self.apply,
            &p,
            &[
                &self.state,
                &self.adv,
                &self.best,
                &self.best_adv,
                &io.grad.input_grad,
                &self.g_best,
                &self.result,
            ],
            self.numel.div_ceil(WORKGROUP_1D),
        )?;
        b.push(d);
        Ok(())
    }

    /// After the clean forward (`grad.logits` clean, labels resolved): which
    /// images start unfooled, the loss's labels, and apgd-t's target ranking.
    pub fn record_clean(&self, c: &Context, b: &mut Builder, io: &Io) -> Result<()> {
        self.track(c, b, io, PHASE_CLEAN, 0, 0, None)?;
        if self.spec.method != Method::ApgdT {
            return Ok(());
        }
        // The targeted DLR reads the label from `labels` and the target from
        // `targets`.
        match &self.ranked {
            Some((ranked, count)) => rank_targets(
                c,
                b,
                &io.grad.logits,
                ranked,
                self.batch,
                self.classes,
                *count,
            )?,
            None => b.copy(io.loss_labels, &io.grad.targets),
        }
        b.copy(io.true_labels, &io.grad.labels);
        Ok(())
    }

    /// Every run at the images' eps (`Io::eps`), first successes into eps slot
    /// `slot`; returns the steps it took per image.
    pub fn record_eps(&self, c: &Context, b: &mut Builder, io: &Io, slot: u32) -> Result<u32> {
        let out0 = slot * self.batch;
        self.track(c, b, io, PHASE_EPS, 0, out0, None)?;
        b.copy(io.clean, &self.result);
        let schedule = checkpoints(self.spec.steps);
        // L2 steps: a workgroup per image (its norms); L-inf: per element.
        let step_groups = match self.spec.norm {
            Norm::L2 => self.batch,
            Norm::Linf => self.numel.div_ceil(WORKGROUP_1D),
        };
        let targets = self.ranked.as_ref().map_or(1, |r| r.1);
        let mut total = 0u32;
        for ti in 0..targets {
            if let Some((ranked, _)) = &self.ranked {
                b.copy_words(
                    ranked,
                    (ti * self.batch) as u64,
                    &io.grad.targets,
                    self.batch as u64,
                );
            }
            for r in 0..self.spec.restarts {
                let p = c.uniform(&StartParams {
                    item: self.item,
                    n: self.batch,
                    _pad0: 0,
                    restart: ti * self.spec.restarts + r,
                    seed_lo: self.spec.seed as u32,
                    seed_hi: (self.spec.seed >> 32) as u32,
                    random: self.spec.random_start as u32,
                    _pad: 0,
                });
                let d = c.dispatch(
                    "apgd_start",
                    &self.start,
                    &p,
                    &[
                        io.clean,
                        io.ids,
                        &self.adv,
                        &self.old,
                        &self.best,
                        &self.best_adv,
                        &io.grad.input,
                        io.eps,
                    ],
                    self.batch,
                )?;
                b.push(d);
                b.shared(Piece::GradForward);
                b.shared(Piece::GradBackward);
                self.track(c, b, io, PHASE_START, total, out0, None)?;
                b.copy(&io.grad.input_grad, &self.g_best);
                for (i, check) in schedule.iter().enumerate() {
                    let p = c.uniform(&StepParams {
                        numel: self.numel,
                        item: self.item,
                        _pad: 0,
                        first: (i == 0) as u32,
                    });
                    let d = c.dispatch(
                        "perturb",
                        &self.step,
                        &p,
                        &[
                            io.clean,
                            &io.grad.input_grad,
                            &self.state,
                            &self.adv,
                            &self.old,
                            &io.grad.input,
                            io.eps,
                        ],
                        step_groups,
                    )?;
                    b.push(d);
                    b.shared(Piece::GradForward);
                    b.shared(Piece::GradBackward);
                    total += 1;
                    self.track(c, b, io, PHASE_STEP, total, out0, *check)?;
                    self.apply(c, b, io)?;
                }
                self.track(c, b, io, PHASE_END, total, out0, None)?;
                self.apply(c, b, io)?;
            }
        }
        Ok(total)
    }
}

/// Per image, the classes the clean logits rank 2nd, 3rd, ... (`count` of
/// them) into `ranked[r * n + i]`: the reference's
/// `output.sort(dim=1)[1][:, -(r + 2)]` (apgd-t's and fab-t's targets).
pub(super) fn rank_targets(
    c: &Context,
    b: &mut Builder,
    logits: &Tensor,
    ranked: &Tensor,
    n: u32,
    classes: u32,
    count: u32,
) -> Result<()> {
    let k = c.kernel(
        Shader::Attack,
        logits.dtype,
        "apgd_targets",
        &[Binding::Read, Binding::ReadWriteF32],
        &[],
    )?;
    let p = c.uniform(&TargetParams {
        n,
        classes,
        count,
        _pad: 0,
    });
    let d = c.dispatch(
        "apgd_targets",
        &k,
        &p,
        &[logits, ranked],
        n.div_ceil(WORKGROUP_IMAGES),
    )?;
    b.push(d);
    Ok(())
}

/// This file's uniform structs and their WGSL twins (checked by
/// tests/backends.rs).
pub(crate) fn uniform_layouts() -> Vec<crate::gpu::UniformLayout> {
    vec![
        crate::gpu::uniform_layout!(
            "attack",
            "ApgdStartParams",
            StartParams,
            [item, n, restart, seed_lo, seed_hi, random]
        ),
        crate::gpu::uniform_layout!("attack", "ApgdStepParams", StepParams, [numel, item, first]),
        crate::gpu::uniform_layout!(
            "attack",
            "ApgdTrackParams",
            TrackParams,
            [n, classes, targeted, phase, step, out0, negate, check]
        ),
        crate::gpu::uniform_layout!("attack", "ApgdApplyParams", ApplyParams, [numel, item]),
        crate::gpu::uniform_layout!(
            "attack",
            "ApgdTargetParams",
            TargetParams,
            [n, classes, count]
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoints_follow_the_reference() {
        let at = |n| -> Vec<(usize, f32)> {
            checkpoints(n)
                .iter()
                .enumerate()
                .filter_map(|(i, c)| c.map(|t| (i, t)))
                .collect()
        };
        // n_iter 100: k = 22, 19, 16, 13, 10, 7, 6, 6 (p_j of the paper).
        assert_eq!(
            at(100),
            vec![
                (21, 16.5),
                (40, 14.25),
                (56, 12.0),
                (69, 9.75),
                (79, 7.5),
                (86, 5.25),
                (92, 4.5),
                (98, 4.5)
            ]
        );
        // Few steps: every interval at least one step.
        assert_eq!(at(3).len(), 3);
        assert_eq!(at(10)[0], (1, 1.5));
    }
}
