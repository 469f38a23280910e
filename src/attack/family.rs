//! The FGSM family's steps on the GPU: FGSM and FGM (one step from the clean
//! gradient), BIM, PGD (random start, restarts keeping each image's best) and
//! MI-FGSM (momentum), recorded for one eps (per image, `Io::eps`).

use std::sync::Arc;

use super::apgd::{kernel_numel, Io};
use super::method::{AttackSpec, Method};
use super::replay::{Builder, Piece};
use crate::error::Result;
use crate::gpu::{
    Binding, Context, DType, Kernel, Shader, Shape, Step, Tensor, WORKGROUP_1D, WORKGROUP_IMAGES,
};

/// Which of the step kernel's variants (`STEP` in `shaders/attack/attack.wgsl`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum StepKind {
    Sign = 0,
    Momentum = 1,
    L2 = 2,
    /// L2 BIM/PGD: its own per-image kernel (`step_l2`).
    L2Iter = 3,
}

/// Mirrors `StepParams` in `shaders/attack/attack.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct StepParams {
    numel: u32,
    item: u32,
    step_abs: f32,
    step_rel: f32,
    decay: f32,
    _pad: [u32; 3],
}

/// Mirrors `StartParams`.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct StartParams {
    numel: u32,
    item: u32,
    _pad0: u32,
    restart: u32,
    seed_lo: u32,
    seed_hi: u32,
    _pad1: [u32; 2],
}

/// Mirrors `SuccessParams`.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct SuccessParams {
    n: u32,
    classes: u32,
    step: u32,
    targeted: u32,
    out0: u32,
    _pad: [u32; 3],
}

/// Mirrors `GradNormParams`.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct GradNormParams {
    item: u32,
    n: u32,
    _pad: [u32; 2],
}

/// Mirrors `ScoreParams`.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct ScoreParams {
    n: u32,
    classes: u32,
    restart: u32,
    targeted: u32,
}

/// Mirrors `KeepParams`.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct KeepParams {
    numel: u32,
    item: u32,
    _pad: [u32; 2],
}

/// Records `first_success`: per image, the step count where the attack first
/// succeeds, into eps slot `slot` of `Io::first`.
pub(super) struct Success {
    kernel: Arc<Kernel>,
    batch: u32,
    classes: u32,
    targeted: bool,
}

impl Success {
    pub fn new(
        c: &Context,
        batch: u32,
        classes: u32,
        targeted: bool,
        logits: DType,
    ) -> Result<Self> {
        let kernel = c.kernel(
            Shader::Attack,
            logits,
            "first_success",
            &[
                Binding::Read,
                Binding::ReadF32,
                Binding::ReadF32,
                Binding::ReadWriteF32,
            ],
            &[],
        )?;
        Ok(Success {
            kernel,
            batch,
            classes,
            targeted,
        })
    }

    pub fn record(
        &self,
        c: &Context,
        b: &mut Builder,
        io: &Io,
        logits: &Tensor,
        slot: u32,
        step: u32,
    ) -> Result<()> {
        let p = c.uniform(&SuccessParams {
            n: self.batch,
            classes: self.classes,
            step,
            targeted: self.targeted as u32,
            out0: slot * self.batch,
            _pad: [0; 3],
        });
        let d = c.dispatch(
            "first_success",
            &self.kernel,
            &p,
            &[logits, io.true_labels, io.loss_labels, io.first],
            self.batch.div_ceil(WORKGROUP_IMAGES),
        )?;
        b.push(d);
        Ok(())
    }
}

/// The FGSM family's kernels and buffers for one batch size.
pub(super) struct Family {
    kind: StepKind,
    step: Arc<Kernel>,
    /// `step` moving from x (every kind but L2 BIM/PGD, whose step kernel
    /// reads the point it moves).
    step_from_x: Option<Arc<Kernel>>,
    norm: Arc<Kernel>,
    start: Arc<Kernel>,
    score: Arc<Kernel>,
    keep: Arc<Kernel>,
    step_p: wgpu::Buffer,
    norm_p: wgpu::Buffer,
    adv: Tensor,
    momentum: Tensor,
    gnorm: Tensor,
    /// PGD restarts: the best point so far, its score and the per-image flag.
    best: Option<(Tensor, Tensor, Tensor)>,
    /// The gradient of the first step from x (the clean gradient).
    g0: Tensor,
    /// FGSM and FGM: per image the clean gradient's dual norm (L1 for FGSM,
    /// L2 for FGM), for the first-order prediction of the loss increase.
    pub g0_norm: Option<Tensor>,
    spec: AttackSpec,
    batch: u32,
    classes: u32,
    numel: u32,
    item: u32,
}

impl Family {
    /// After the clean backward: keeps its gradient for the first step.
    pub fn new(
        c: &Context,
        b: &mut Builder,
        io: &Io,
        spec: &AttackSpec,
        shape: Shape,
        classes: u32,
    ) -> Result<Self> {
        let batch = shape.n;
        let numel = kernel_numel(shape)?;
        let item = numel / batch;
        let (r, rw) = (Binding::ReadF32, Binding::ReadWriteF32);
        let g0 = if spec.method.iterative() {
            let g0 = c.tensor(shape, "clean gradient")?;
            b.copy(&io.grad.input_grad, &g0);
            g0
        } else {
            io.grad.input_grad.clone()
        };
        let kind = match (spec.method, spec.norm) {
            (Method::Fgm, _) => StepKind::L2,
            (Method::Mifgsm, _) => StepKind::Momentum,
            (_, super::Norm::L2) => StepKind::L2Iter,
            _ => StepKind::Sign,
        };
        let adv = c.tensor(shape, "adversarial (f32)")?;
        let momentum = if kind == StepKind::Momentum {
            c.tensor(shape, "momentum")?
        } else {
            adv.clone() // bound, never touched
        };
        let best = if spec.restarts > 1 {
            Some((
                c.tensor(shape, "best point")?,
                c.tensor(Shape::new(batch, 1, 1, 1), "restart score")?,
                c.tensor(Shape::new(batch, 1, 1, 1), "restart flag")?,
            ))
        } else {
            None
        };
        let f32k = |entry: &'static str, bind: &[Binding], consts: &[(&str, f64)]| {
            c.kernel(Shader::Attack, DType::F32, entry, bind, consts)
        };
        let step_kind = [("STEP", kind as u32 as f64), ("ITEM", item as f64)];
        let (abs, rel) = spec.step_rule();
        let norm = f32k("grad_norm", &[r, rw], &step_kind)?;
        let norm_p = c.uniform(&GradNormParams {
            item,
            n: batch,
            _pad: [0; 2],
        });
        let g0_norm = if spec.method.iterative() {
            None
        } else {
            // mean |g| (FGSM; times the pixels it is the L1 norm) or ||g||_2 (FGM)
            let t = c.tensor(Shape::new(batch, 1, 1, 1), "clean gradient norm")?;
            b.push(c.dispatch("grad_norm", &norm, &norm_p, &[&g0, &t], batch)?);
            Some(t)
        };
        Ok(Family {
            kind,
            step: if kind == StepKind::L2Iter {
                f32k("step_l2", &[r, r, r, rw, rw, r], &[])?
            } else {
                f32k("step", &[r, r, r, rw, rw, r], &step_kind)?
            },
            // The first step from x itself (no copy of x into adv first).
            step_from_x: (kind != StepKind::L2Iter)
                .then(|| {
                    f32k(
                        "step",
                        &[r, r, r, rw, rw, r],
                        &[step_kind[0], step_kind[1], ("FROM_X", 1.0)],
                    )
                })
                .transpose()?,
            norm,
            start: f32k(
                if kind == StepKind::L2Iter {
                    "random_start_l2"
                } else {
                    "random_start"
                },
                &[r, r, rw, r],
                &[],
            )?,
            score: c.kernel(
                Shader::Attack,
                io.grad.logits.dtype,
                "restart_score",
                &[Binding::Read, r, r, rw, rw],
                &[],
            )?,
            keep: f32k("keep_best", &[r, r, rw], &[("ITEM", item as f64)])?,
            step_p: c.uniform(&StepParams {
                numel,
                item,
                step_abs: abs as f32,
                step_rel: rel as f32,
                decay: spec.decay,
                _pad: [0; 3],
            }),
            norm_p,
            adv,
            momentum,
            gnorm: c.tensor(Shape::new(batch, 1, 1, 1), "gradient norms")?,
            best,
            g0,
            g0_norm,
            spec: spec.clone(),
            batch,
            classes,
            numel,
            item,
        })
    }

    /// The point the last [`Family::record_eps`] ends at.
    pub fn point(&self) -> &Tensor {
        self.best.as_ref().map_or(&self.adv, |b| &b.0)
    }

    /// Whether the success of the final point is already recorded (restarts
    /// score every restart's point).
    pub fn scored(&self) -> bool {
        self.best.is_some()
    }

    /// Workgroups of the step and start kernels: per image for L2 BIM/PGD.
    fn groups(&self) -> u32 {
        if self.kind == StepKind::L2Iter {
            self.batch
        } else {
            self.numel.div_ceil(WORKGROUP_1D)
        }
    }

    fn one_step(
        &self,
        c: &Context,
        b: &mut Builder,
        io: &Io,
        g: &Tensor,
        from_x: bool,
    ) -> Result<()> {
        if matches!(self.kind, StepKind::Momentum | StepKind::L2) {
            b.push(c.dispatch(
                "grad_norm",
                &self.norm,
                &self.norm_p,
                &[g, &self.gnorm],
                self.batch,
            )?);
        }
        let kernel = match &self.step_from_x {
            Some(k) if from_x => k,
            _ => &self.step,
        };
        b.push(c.dispatch(
            "perturb",
            kernel,
            &self.step_p,
            &[io.clean, g, &self.gnorm, &self.adv, &self.momentum, io.eps],
            self.groups(),
        )?);
        Ok(())
    }

    /// Every restart and step at the images' eps; returns the steps taken.
    pub fn record_eps(
        &self,
        c: &Context,
        b: &mut Builder,
        io: &Io,
        success: &Success,
        slot: u32,
    ) -> Result<u32> {
        let s = &self.spec;
        let groups = self.numel.div_ceil(WORKGROUP_1D);
        let mut total = 0u32;
        for r in 0..s.restarts {
            if s.random_start {
                let p = c.uniform(&StartParams {
                    numel: self.numel,
                    item: self.item,
                    _pad0: 0,
                    restart: r,
                    seed_lo: s.seed as u32,
                    seed_hi: (s.seed >> 32) as u32,
                    _pad1: [0; 2],
                });
                b.push(c.dispatch(
                    "random_start",
                    &self.start,
                    &p,
                    &[io.clean, io.ids, &self.adv, io.eps],
                    self.groups(),
                )?);
            } else if self.step_from_x.is_none() {
                b.copy(io.clean, &self.adv);
            }
            if self.kind == StepKind::Momentum {
                b.push(Step::Clear {
                    buffer: self.momentum.buffer.clone(),
                });
            }
            for t in 0..s.steps {
                if t == 0 && !s.random_start {
                    // From x: the step kernel reads x as its start (or, for
                    // L2 BIM, the copy above).
                    self.one_step(c, b, io, &self.g0, true)?;
                } else {
                    b.copy(&self.adv, &io.grad.input);
                    b.shared(Piece::GradForward);
                    success.record(c, b, io, &io.grad.logits, slot, total)?;
                    b.shared(Piece::GradBackward);
                    self.one_step(c, b, io, &io.grad.input_grad, false)?;
                }
                total += 1;
            }
            if let Some((best, score, flag)) = &self.best {
                b.copy(&self.adv, &io.grad.input);
                b.shared(Piece::GradForward);
                success.record(c, b, io, &io.grad.logits, slot, total)?;
                let p = c.uniform(&ScoreParams {
                    n: self.batch,
                    classes: self.classes,
                    restart: r,
                    targeted: (s.target != super::Target::Untargeted) as u32,
                });
                b.push(c.dispatch(
                    "restart_score",
                    &self.score,
                    &p,
                    &[&io.grad.logits, io.true_labels, io.loss_labels, score, flag],
                    self.batch.div_ceil(WORKGROUP_IMAGES),
                )?);
                let p = c.uniform(&KeepParams {
                    numel: self.numel,
                    item: self.item,
                    _pad: [0; 2],
                });
                b.push(c.dispatch(
                    "keep_best",
                    &self.keep,
                    &p,
                    &[flag, &self.adv, best],
                    groups,
                )?);
            }
        }
        Ok(total)
    }
}

/// This file's uniform structs and their WGSL twins (checked by
/// tests/backends.rs).
pub(crate) fn uniform_layouts() -> Vec<crate::gpu::UniformLayout> {
    vec![
        crate::gpu::uniform_layout!(
            "attack",
            "StepParams",
            StepParams,
            [numel, item, step_abs, step_rel, decay]
        ),
        crate::gpu::uniform_layout!(
            "attack",
            "StartParams",
            StartParams,
            [numel, item, restart, seed_lo, seed_hi]
        ),
        crate::gpu::uniform_layout!(
            "attack",
            "SuccessParams",
            SuccessParams,
            [n, classes, step, targeted, out0]
        ),
        crate::gpu::uniform_layout!("attack", "GradNormParams", GradNormParams, [item, n]),
        crate::gpu::uniform_layout!(
            "attack",
            "ScoreParams",
            ScoreParams,
            [n, classes, restart, targeted]
        ),
        crate::gpu::uniform_layout!("attack", "KeepParams", KeepParams, [numel, item]),
    ]
}
