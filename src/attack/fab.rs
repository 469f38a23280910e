//! FAB-T (Croce & Hein 2020) on the GPU, L-inf and L2, with the semantics of
//! AutoAttack's `fab_base.py` / `fab_pt.py` (pyautoattack 0.2.0) as its
//! standard version runs it: one run per target class (the classes the clean
//! model ranks 2nd to 10th), each from the clean image without random start,
//! `--steps` iterations (100) of the linearised projection step with
//! alpha_max 0.1, eta 1.05 and beta 0.9, keeping each image's closest
//! misclassified point; a run's point counts where it lies inside the eps
//! ball, and later runs attack only the images no earlier run fooled.
//!
//! Every iteration is a forward and backward of `z_target - z_label` (the
//! gradient plan's `TargetMargin` loss), the projections on the GPU
//! (`shaders/attack/fab.wgsl`, Newton's method instead of the reference's sort)
//! and a forward of the new point, all recorded into the batch's one submit.

use std::sync::Arc;

use super::apgd::{kernel_numel, rank_targets, Io};
use super::method::{AttackSpec, Norm, FAB_ALPHA_MAX, FAB_BETA, FAB_ETA};
use super::replay::{Builder, Piece};
use crate::error::Result;
use crate::gpu::{
    Binding, Context, DType, Kernel, Shader, Shape, Tensor, WORKGROUP_1D, WORKGROUP_IMAGES,
};

/// f32 values of per-image state (`FB_S` in the shader).
const STATE: u32 = 8;

const PHASE_CLEAN: u32 = 0;
const PHASE_EPS: u32 = 1;
const PHASE_START: u32 = 2;
const PHASE_STEP: u32 = 3;
const PHASE_END: u32 = 4;

/// Mirrors `FabParams` in `shaders/attack/fab.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    item: u32,
    eta: f32,
    alpha_max: f32,
    beta: f32,
    _pad: [u32; 3],
}

/// Mirrors `FabTrackParams`.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct TrackParams {
    n: u32,
    classes: u32,
    phase: u32,
    step: u32,
    out0: u32,
    _pad: [u32; 3],
}

/// Mirrors `FabApplyParams`.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct ApplyParams {
    numel: u32,
    phase: u32,
    beta: f32,
    _pad: u32,
}

/// FAB-T's kernels, buffers and target ranking for one batch size.
pub(super) struct Fab {
    step: Arc<Kernel>,
    track: Arc<Kernel>,
    apply: Arc<Kernel>,
    /// Each run's closest misclassified point (x where none).
    best: Tensor,
    /// The point each eps scores: the first run's point inside the ball, else x.
    pub result: Tensor,
    state: Tensor,
    /// The ranked target classes, `[targets * batch]`.
    ranked: Tensor,
    targets: u32,
    steps: u32,
    batch: u32,
    classes: u32,
    numel: u32,
    item: u32,
}

impl Fab {
    pub fn new(
        c: &Context,
        spec: &AttackSpec,
        batch: u32,
        shape: Shape,
        classes: u32,
        logits: DType,
    ) -> Result<Self> {
        let mut spec = spec.clone();
        spec.fit_to_model(classes)?;
        let numel = kernel_numel(shape)?;
        let item = numel / batch;
        let l2 = ("NORM_L2", if spec.norm == Norm::L2 { 1.0 } else { 0.0 });
        let r = Binding::ReadF32;
        let rw = Binding::ReadWriteF32;
        let step = c.kernel(
            Shader::Fab,
            DType::F32,
            "fab_step",
            &[r, r, r, r, rw, rw],
            &[l2],
        )?;
        let track = c.kernel(
            Shader::Fab,
            logits,
            "fab_track",
            &[Binding::Read, r, rw, rw, r],
            &[],
        )?;
        let apply = c.kernel(
            Shader::Fab,
            DType::F32,
            "fab_apply",
            &[r, r, r, rw, rw, rw],
            &[("ITEM", item as f64)],
        )?;
        let targets = spec.targets;
        Ok(Fab {
            step,
            track,
            apply,
            best: c.tensor(shape, "fab best")?,
            result: c.tensor(shape, "fab result")?,
            state: c.tensor(Shape::new(batch * STATE, 1, 1, 1), "fab state")?,
            ranked: c.tensor(Shape::new(targets * batch, 1, 1, 1), "fab targets")?,
            targets,
            steps: spec.steps,
            batch,
            classes,
            numel,
            item,
        })
    }

    #[allow(clippy::too_many_arguments)] // the kernel's uniform, field by field
    fn track(
        &self,
        c: &Context,
        b: &mut Builder,
        logits: &Tensor,
        io: &Io,
        phase: u32,
        step: u32,
        out0: u32,
    ) -> Result<()> {
        let p = c.uniform(&TrackParams {
            n: self.batch,
            classes: self.classes,
            phase,
            step,
            out0,
            _pad: [0; 3],
        });
        let d = c.dispatch(
            "fab_track",
            &self.track,
            &p,
            &[logits, io.true_labels, &self.state, io.first, io.eps],
            self.batch.div_ceil(WORKGROUP_IMAGES),
        )?;
        b.push(d);
        Ok(())
    }

    fn apply(&self, c: &Context, b: &mut Builder, io: &Io, phase: u32) -> Result<()> {
        let p = c.uniform(&ApplyParams {
            numel: self.numel,
            phase,
            beta: FAB_BETA,
            _pad: 0,
        });
        let d = c.dispatch(
            "fab_apply",
            &self.apply,
            &p,
            &[
                io.clean,
                &io.fwd.input,
                &self.state,
                &io.grad.input,
                &self.best,
                &self.result,
            ],
            self.numel.div_ceil(WORKGROUP_1D),
        )?;
        b.push(d);
        Ok(())
    }

    /// After the clean forward: which images are right, the target ranking,
    /// and the labels the linearised function reads.
    pub fn record_clean(&self, c: &Context, b: &mut Builder, io: &Io) -> Result<()> {
        self.track(c, b, &io.grad.logits, io, PHASE_CLEAN, 0, 0)?;
        rank_targets(
            c,
            b,
            &io.grad.logits,
            &self.ranked,
            self.batch,
            self.classes,
            self.targets,
        )?;
        b.copy(io.true_labels, &io.grad.labels);
        Ok(())
    }

    /// Every target run at the images' eps (`Io::eps`), first successes into
    /// eps slot `slot`; returns the iterations it took per image.
    pub fn record_eps(&self, c: &Context, b: &mut Builder, io: &Io, slot: u32) -> Result<u32> {
        let out0 = slot * self.batch;
        self.track(c, b, &io.grad.logits, io, PHASE_EPS, 0, out0)?;
        b.copy(io.clean, &self.result);
        let p = c.uniform(&Params {
            n: self.batch,
            item: self.item,
            eta: FAB_ETA,
            alpha_max: FAB_ALPHA_MAX,
            beta: FAB_BETA,
            _pad: [0; 3],
        });
        let step = c.dispatch(
            "fab_step",
            &self.step,
            &p,
            &[
                io.clean,
                &io.grad.input,
                &io.grad.input_grad,
                &io.grad.loss,
                &io.fwd.input,
                &self.state,
            ],
            self.batch,
        )?;
        let mut total = 0u32;
        for t in 0..self.targets {
            b.copy_words(
                &self.ranked,
                (t * self.batch) as u64,
                &io.grad.targets,
                self.batch as u64,
            );
            self.track(c, b, &io.grad.logits, io, PHASE_START, total, out0)?;
            self.apply(c, b, io, 0)?;
            for _ in 0..self.steps {
                b.shared(Piece::GradForward);
                b.shared(Piece::GradBackward);
                b.push(step.clone());
                b.shared(Piece::Forward);
                total += 1;
                self.track(c, b, &io.fwd.logits, io, PHASE_STEP, total, out0)?;
                self.apply(c, b, io, 1)?;
            }
            self.track(c, b, &io.grad.logits, io, PHASE_END, total, out0)?;
            self.apply(c, b, io, 2)?;
        }
        Ok(total)
    }
}

/// This file's uniform structs and their WGSL twins (checked by
/// tests/backends.rs).
pub(crate) fn uniform_layouts() -> Vec<crate::gpu::UniformLayout> {
    vec![
        crate::gpu::uniform_layout!("fab", "FabParams", Params, [n, item, eta, alpha_max, beta]),
        crate::gpu::uniform_layout!(
            "fab",
            "FabTrackParams",
            TrackParams,
            [n, classes, phase, step, out0]
        ),
        crate::gpu::uniform_layout!("fab", "FabApplyParams", ApplyParams, [numel, phase, beta]),
    ]
}
