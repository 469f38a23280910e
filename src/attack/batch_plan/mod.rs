//! The FGSM family on the GPU: FGSM and FGM (one gradient serves every eps),
//! BIM, PGD and MI-FGSM (their steps per eps).
//!
//! Everything for a batch is recorded once and replayed in one submit: clean
//! forward, labels, the clean gradient, every step of every eps (forward,
//! backward and the step kernel, with no host round trip), the in-ball 8-bit
//! rounding, norms, and a forward of the rounded point (with
//! `--count-rounding`, of the unrounded point too). Only
//! predictions, norms, first-success steps and (when images are saved) 8-bit
//! pixels come back.
//!
//! (About 590 lines: `AttackPlan::with_spec` records the whole replay list in
//! one piece so its order, which the GPU relies on, reads top to bottom.)
//! Running a batch (upload, submit, read back, decode) is in `batch.rs`.

use std::sync::Arc;

mod batch;
pub use batch::PendingBatch;

use super::apgd::{Apgd, Io};
use super::fab::Fab;
use super::family::{Family, Success};
use super::method::{AttackSpec, Method};
use super::minimal::Bisect;
use super::outcome::Target;
use super::replay::{Builder, Piece};
use super::square::Square;
use super::Eps;
use crate::error::{Error, Result};
use crate::gpu::{
    Binding, Context, DType, Recording, Shader, Shape, Tensor, WORKGROUP_1D, WORKGROUP_IMAGES,
};
use crate::ops::loss::{argmax_prob, ARGMAX_PROB_WIDTH};

/// Values per image of the read-out.
const W: usize = ARGMAX_PROB_WIDTH as usize;
use crate::plan::{ForwardPlan, GpuModel, GradientPlan, LossKind};

/// Mirrors `FinalParams` in `shaders/attack/attack.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct FinalParams {
    numel: u32,
    words: u32,
    word0: u32,
    item: u32,
}

/// `resolve_labels`' MODE override (attack.wgsl): the class whose loss the
/// attack moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum LabelMode {
    /// The label (untargeted attacks; also evaluation).
    Untargeted = 0,
    /// A fixed target class (`target_class`).
    Class = 1,
    /// The clean model's least-likely class.
    LeastLikely = 2,
}

impl LabelMode {
    /// The pipeline constant.
    pub(super) fn constant(self) -> (&'static str, f64) {
        ("MODE", self as u32 as f64)
    }
}

/// Mirrors `LabelParams`.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
pub(super) struct LabelParams {
    pub n: u32,
    pub classes: u32,
    pub target_class: u32,
    pub _pad: u32,
}

/// Mirrors `NormParams`.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct NormParams {
    item: u32,
    n: u32,
    images: u32,
    out0: u32,
}

/// The attack body of a plan: the FGSM family, APGD, or Square.
enum Body {
    Family(Family),
    Apgd(Apgd),
    Square(Square),
    Fab(Fab),
}

impl Body {
    fn record_eps(
        &self,
        c: &Context,
        b: &mut Builder,
        io: &Io,
        success: &Success,
        slot: u32,
    ) -> Result<u32> {
        match self {
            Body::Family(f) => f.record_eps(c, b, io, success, slot),
            Body::Apgd(a) => a.record_eps(c, b, io, slot),
            Body::Square(s) => s.record_eps(c, b, io, slot),
            Body::Fab(f) => f.record_eps(c, b, io, slot),
        }
    }

    fn point(&self) -> &Tensor {
        match self {
            Body::Family(f) => f.point(),
            Body::Apgd(a) => &a.result,
            Body::Square(s) => &s.result,
            Body::Fab(f) => &f.result,
        }
    }

    /// The final point's success is recorded already.
    fn scored(&self) -> bool {
        match self {
            Body::Family(f) => f.scored(),
            Body::Apgd(_) | Body::Square(_) | Body::Fab(_) => true,
        }
    }
}

/// The recorded attack for batches of a fixed size: the clean pass, every
/// step of every eps (and restart), the in-ball rounding, and one forward per
/// eps of the rounded point (and of the unrounded one with
/// `--count-rounding`), all replayed in one submit.
pub struct AttackPlan {
    ctx: Arc<Context>,
    pub batch: u32,
    pub eps: Vec<Eps>,
    pub spec: AttackSpec,
    item: u64,
    grad: GradientPlan,
    fwd: ForwardPlan,
    clean: Tensor,
    ids: Tensor,
    true_labels: Tensor,
    /// The class whose loss moves (the gradient plan's labels, except for
    /// apgd-t whose loss reads the label and a target).
    loss_labels: Tensor,
    adv_u8: Tensor,
    /// u32 words per eps slot of `adv_u8`.
    slot_words: u64,
    norms: Tensor,
    /// Per eps and image: total steps when the attack first succeeded (u32::MAX: never).
    first: Tensor,
    /// Clean stats, then one per eps.
    stats: Vec<Tensor>,
    /// Per eps, the unrounded point's stats (only with `--count-rounding`).
    raw_stats: Vec<Tensor>,
    /// --minimal: per image the bisection's (lo, hi) levels.
    lohi: Option<Tensor>,
    /// FGSM/FGM: the clean gradient's norm per image (see `BatchOutcome`).
    g0_norm: Option<Tensor>,
    own: Vec<Recording>,
    pieces: Vec<Piece>,
}

/// The plan of `advex attack` before there were other methods.
pub type FgsmPlan = AttackPlan;

fn labels_tensor(ctx: &Context, n: u32, label: &str) -> Result<Tensor> {
    ctx.tensor(Shape::new(n, 1, 1, 1), label)
}

impl AttackPlan {
    /// FGSM over `eps` (see [`AttackPlan::with_spec`]).
    pub fn new(
        gpu: &GpuModel,
        batch: u32,
        eps: &[Eps],
        quantize: bool,
        target: Target,
    ) -> Result<Self> {
        Self::with_spec(gpu, batch, &AttackSpec::fgsm(eps, quantize, target))
    }

    pub fn with_spec(gpu: &GpuModel, batch: u32, spec: &AttackSpec) -> Result<Self> {
        let ctx = gpu.ctx.clone();
        let c = &*ctx;
        let eps = &spec.eps;
        let target = spec.target;
        let k = eps.len() as u32;
        if k == 0 {
            return Err(Error::Usage("no eps given".into()));
        }
        if spec.minimal && k != 1 {
            return Err(Error::Usage(
                "--minimal searches below one eps; give only the largest, e.g. --eps 16/255".into(),
            ));
        }
        let targeted = target != Target::Untargeted;
        let loss_kind = match spec.method {
            Method::ApgdDlr => LossKind::Dlr,
            Method::ApgdT => LossKind::DlrTargeted,
            Method::FabT => LossKind::TargetMargin,
            _ => LossKind::CrossEntropy,
        };
        // The DLR losses are raised either way; cross-entropy descends to a target.
        let sign = if targeted && loss_kind == LossKind::CrossEntropy {
            -1.0
        } else {
            1.0
        };
        let grad = gpu.gradient_plan_with(batch, sign, loss_kind)?;
        let fwd = gpu.forward_plan(batch)?;
        let shape = gpu.input_shape(batch);
        let item = shape.item();
        let numel = shape.numel();
        let numel32 = u32::try_from(numel).map_err(|_| {
            Error::Usage("batch too large for the attack kernels; lower --batch-size".into())
        })?;
        let true_labels = labels_tensor(c, batch, "true labels")?;
        let ids = labels_tensor(c, batch, "image ids")?;
        let clean = c.tensor(shape, "clean images")?;
        let classes = gpu.num_classes();
        let loss_labels = if matches!(spec.method, Method::ApgdT | Method::FabT) {
            labels_tensor(c, batch, "loss labels")?
        } else {
            grad.labels.clone()
        };
        let mut b = Builder {
            own: Vec::new(),
            pieces: Vec::new(),
        };

        // Clean forward, then labels: unknown ones become the clean prediction.
        b.copy(&clean, &grad.input);
        b.shared(Piece::GradForward);
        let (mode, target_class) = match target {
            Target::Untargeted => (LabelMode::Untargeted, 0),
            Target::Class(t) => (LabelMode::Class, t),
            Target::LeastLikely => (LabelMode::LeastLikely, 0),
        };
        if let Target::Class(t) = target {
            if t >= classes {
                return Err(Error::Usage(format!(
                    "target class {t} is out of range (the model has {classes} classes)"
                )));
            }
        }
        let kl = c.kernel(
            Shader::Attack,
            grad.logits.dtype,
            "resolve_labels",
            &[Binding::Read, Binding::ReadWriteF32, Binding::ReadWriteF32],
            &[mode.constant()],
        )?;
        let p = c.uniform(&LabelParams {
            n: batch,
            classes,
            target_class,
            _pad: 0,
        });
        let step = c.dispatch(
            "resolve_labels",
            &kl,
            &p,
            &[&grad.logits, &true_labels, &loss_labels],
            batch.div_ceil(WORKGROUP_IMAGES),
        )?;
        b.push(step);
        let clean_stats = c.tensor(Shape::new(batch, ARGMAX_PROB_WIDTH, 1, 1), "clean stats")?;
        argmax_prob(c, b.rec(), &grad.logits, &true_labels, &clean_stats)?;

        // First successes: one slot per eps, and a scratch one for --minimal's rounds.
        let slots = k + spec.minimal as u32;
        let first = c.tensor(Shape::new(batch * slots, 1, 1, 1), "first success")?;
        let unset = c.tensor(Shape::new(batch * slots, 1, 1, 1), "unset")?;
        c.write_bytes(
            &unset,
            bytemuck::cast_slice(&vec![u32::MAX; (batch * slots) as usize]),
        );
        b.copy(&unset, &first);
        // Each image's eps: one tensor per eps of the run, filled once (bound
        // directly, no copy per batch), and one the bisection writes.
        let eps_img = c.tensor(Shape::new(batch, 1, 1, 1), "eps per image")?;
        let mut eps_fill = Vec::new();
        for e in eps {
            let t = c.tensor(Shape::new(batch, 1, 1, 1), "eps")?;
            c.write(&t, &vec![e.value; batch as usize]);
            eps_fill.push(t);
        }
        let io = Io {
            grad: &grad,
            fwd: &fwd,
            clean: &clean,
            ids: &ids,
            true_labels: &true_labels,
            loss_labels: &loss_labels,
            first: &first,
            eps: &eps_img,
        };
        let success = Success::new(c, batch, classes, targeted, grad.logits.dtype)?;
        let bisect = if spec.minimal {
            Some(Bisect::new(
                c,
                batch,
                classes,
                targeted,
                &eps[0],
                grad.logits.dtype,
            )?)
        } else {
            None
        };
        if let Some(bs) = &bisect {
            bs.update(c, &mut b, &io, &grad.logits, 0)?;
        }
        let body = if spec.method.apgd() {
            let a = Apgd::new(c, spec, batch, shape, classes, grad.logits.dtype)?;
            a.record_clean(c, &mut b, &io)?;
            Body::Apgd(a)
        } else if spec.method == Method::FabT {
            let f = Fab::new(c, spec, batch, shape, classes, grad.logits.dtype)?;
            f.record_clean(c, &mut b, &io)?;
            Body::Fab(f)
        } else if spec.method == Method::Square {
            let s = Square::new(c, spec, batch, shape, classes, grad.logits.dtype)?;
            s.record_clean(c, &mut b, &io)?;
            Body::Square(s)
        } else {
            // The clean gradient: FGSM's only one, every other attack's first.
            b.shared(Piece::GradBackward);
            Body::Family(Family::new(c, &mut b, &io, spec, shape, classes)?)
        };

        // The rounded images: one u8 slot per eps (and a scratch one).
        let words = numel.div_ceil(4);
        let slot_words = words;
        let total_words = u32::try_from(words * slots as u64).map_err(|_| {
            Error::Usage("batch too large for the perturbation kernel; lower --batch-size".into())
        })?;
        let adv_u8 = c.tensor(Shape::new(total_words, 1, 1, 1), "adversarial u8")?;
        let kf = c.kernel(
            Shader::Attack,
            DType::F32,
            "finalize",
            &[
                Binding::ReadF32,
                Binding::ReadF32,
                Binding::ReadWriteF32,
                Binding::ReadWriteF32,
                Binding::ReadF32,
            ],
            &[
                ("ITEM", item as f64),
                ("QUANTIZE", if spec.quantize { 1.0 } else { 0.0 }),
                (
                    "TOWARD_CLEAN",
                    if spec.norm == super::Norm::L2 {
                        1.0
                    } else {
                        0.0
                    },
                ),
            ],
        )?;
        let finalize = |b: &mut Builder, point: &Tensor, eps: &Tensor, slot: u32| -> Result<()> {
            let p = c.uniform(&FinalParams {
                numel: numel32,
                words: words as u32,
                word0: (slot as u64 * slot_words) as u32,
                item: item as u32,
            });
            let d = c.dispatch(
                "perturb",
                &kf,
                &p,
                &[&clean, point, &fwd.input, &adv_u8, eps],
                (words as u32).div_ceil(WORKGROUP_1D),
            )?;
            b.push(d);
            Ok(())
        };
        let norms = c.tensor(Shape::new(batch * k, 2, 1, 1), "norms")?;
        let kn = c.kernel(
            Shader::Attack,
            DType::F32,
            "norms",
            &[Binding::ReadF32, Binding::ReadF32, Binding::ReadWriteF32],
            &[],
        )?;

        let mut stats = vec![clean_stats];
        let mut raw_stats = Vec::new();
        for (e, fill) in eps_fill.iter().enumerate() {
            let e32 = e as u32;
            // Every image at this eps: its filled tensor is the per-image eps.
            let io = Io { eps: fill, ..io };
            let total = body.record_eps(c, &mut b, &io, &success, e32)?;
            let point = body.point();
            // The scored and saved image: rounded inside the ball.
            finalize(&mut b, point, fill, e32)?;
            let p = c.uniform(&NormParams {
                item: item as u32,
                n: batch,
                images: batch,
                out0: e32 * batch,
            });
            let d = c.dispatch("norms", &kn, &p, &[&clean, &fwd.input, &norms], batch)?;
            b.push(d);
            b.shared(Piece::Forward);
            let s = c.tensor(Shape::new(batch, ARGMAX_PROB_WIDTH, 1, 1), "adv stats")?;
            argmax_prob(c, b.rec(), &fwd.logits, &true_labels, &s)?;
            stats.push(s);
            if let Some(bs) = &bisect {
                bs.update(c, &mut b, &io, &fwd.logits, 1)?;
            }
            // Whether the last step succeeded (restarts and APGD have scored
            // theirs already), and with --count-rounding what rounding cost.
            // By default one forward per eps: the last step is judged by the
            // image it gives, as scored (with --no-quantize that is the
            // unrounded point itself). --count-rounding adds a forward of the
            // unrounded point, which then judges the last step.
            let scored = body.scored();
            let count_rounding = spec.quantize && spec.count_rounding;
            if !scored && !count_rounding {
                success.record(c, &mut b, &io, &fwd.logits, e32, total)?;
            }
            if count_rounding {
                b.copy(point, &fwd.input);
                b.shared(Piece::Forward);
                if !scored {
                    success.record(c, &mut b, &io, &fwd.logits, e32, total)?;
                }
                let s = c.tensor(Shape::new(batch, ARGMAX_PROB_WIDTH, 1, 1), "raw stats")?;
                argmax_prob(c, b.rec(), &fwd.logits, &true_labels, &s)?;
                raw_stats.push(s);
            }
        }
        // --minimal: bisection rounds below the eps, each a whole attack at
        // every image's own eps and a forward of its rounded result.
        if let Some(bs) = &bisect {
            for _ in 0..bs.rounds() {
                bs.mid(c, &mut b, &io)?;
                body.record_eps(c, &mut b, &io, &success, k)?;
                finalize(&mut b, body.point(), &eps_img, k)?;
                b.shared(Piece::Forward);
                bs.update(c, &mut b, &io, &fwd.logits, 2)?;
            }
        }
        let lohi = bisect.map(|bs| bs.lohi);
        let g0_norm = match &body {
            Body::Family(f) => f.g0_norm.clone(),
            Body::Apgd(_) | Body::Square(_) | Body::Fab(_) => None,
        };
        Ok(AttackPlan {
            ctx,
            batch,
            eps: eps.to_vec(),
            spec: spec.clone(),
            item,
            grad,
            fwd,
            clean,
            ids,
            true_labels,
            loss_labels,
            adv_u8,
            slot_words,
            norms,
            first,
            stats,
            raw_stats,
            lohi,
            g0_norm,
            own: b.own,
            pieces: b.pieces,
        })
    }

    /// Number of recorded dispatches per batch (all in one submit).
    pub fn dispatch_count(&self) -> usize {
        self.recordings().iter().map(|r| r.dispatch_count()).sum()
    }

    /// The clean logits of the last batch run (`[batch, classes]`; one more
    /// readback). Single-step methods only: the iterative ones reuse the
    /// buffer for every step's forward, so an error says so.
    pub fn clean_logits(&self) -> Result<Vec<f32>> {
        if self.spec.method.iterative() || self.spec.restarts > 1 {
            return Err(Error::Usage(format!(
                "clean logits are not kept by {} (its steps reuse the buffer)",
                self.spec.method.name()
            )));
        }
        self.ctx.read(&self.grad.logits)
    }

    /// The model passes each image of a batch goes through, (forward,
    /// backward): the forward and backward recordings in the replay list.
    pub fn passes_per_image(&self) -> (u32, u32) {
        let count = |f: fn(&Piece) -> bool| self.pieces.iter().filter(|p| f(p)).count() as u32;
        (
            count(|p| matches!(p, Piece::GradForward | Piece::Forward)),
            count(|p| matches!(p, Piece::GradBackward)),
        )
    }

    /// Every recording of one batch, in submit order.
    pub fn recordings(&self) -> Vec<&Recording> {
        self.pieces
            .iter()
            .map(|p| match *p {
                Piece::Own(i) => &self.own[i],
                Piece::GradForward => &self.grad.forward,
                Piece::GradBackward => &self.grad.backward,
                Piece::Forward => &self.fwd.recording,
            })
            .collect()
    }

    /// Bytes the rounding kernel moves per batch (x and the point read, f32 and
    /// u8 written, per eps).
    pub fn perturb_bytes(&self) -> u64 {
        let numel = self.item * self.batch as u64;
        let k = self.eps.len() as u64;
        numel * k * (4 * 3 + 1)
    }
}

/// This file's uniform structs and their WGSL twins (checked by
/// tests/backends.rs).
pub(crate) fn uniform_layouts() -> Vec<crate::gpu::UniformLayout> {
    vec![
        crate::gpu::uniform_layout!(
            "attack",
            "FinalParams",
            FinalParams,
            [numel, words, word0, item]
        ),
        crate::gpu::uniform_layout!(
            "attack",
            "LabelParams",
            LabelParams,
            [n, classes, target_class]
        ),
        crate::gpu::uniform_layout!("attack", "NormParams", NormParams, [item, n, images, out0]),
    ]
}
