//! FGSM: one forward + backward per batch, then every eps from that one gradient.
//!
//! Everything for a batch is recorded once and replayed in one submit: clean
//! forward, labels, loss, backward, the fused perturbation of all eps, their
//! norms, and one forward + argmax per eps. Only predictions, norms and (when
//! images are saved) 8-bit pixels come back.

use std::sync::Arc;

use super::Eps;
use crate::error::{Error, Result};
use crate::gpu::{Binding, Context, DType, Recording, Shape, Step, Tensor};
use crate::ops::loss::{argmax_prob, ARGMAX_PROB_WIDTH};
use crate::plan::{ForwardPlan, GpuModel, GradientPlan};

const SHADER: &str = include_str!("../../shaders/attack.wgsl");

/// Which class's loss the attack moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// Raise the loss of the label.
    Untargeted,
    /// Lower the loss of this class.
    Class(u32),
    /// Lower the loss of the class the clean model finds least likely.
    LeastLikely,
}

/// A prediction: class, its probability, and the label's probability.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pred {
    pub class: u32,
    pub prob: f32,
    pub label_prob: f32,
}

/// What one batch gives back.
pub struct BatchOutcome {
    /// Labels used for accuracy (given, or the clean prediction).
    pub labels: Vec<u32>,
    /// Classes whose loss was moved (labels, or targets).
    pub loss_labels: Vec<u32>,
    pub clean: Vec<Pred>,
    /// Per eps, per image.
    pub adv: Vec<Vec<Pred>>,
    /// Per eps, per image: (L-inf, L2) of the perturbation.
    pub norms: Vec<Vec<(f32, f32)>>,
    /// Per eps, per image: CHW 8-bit pixels (when asked for).
    pub images: Option<Vec<Vec<Vec<u8>>>>,
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params4 {
    a: u32,
    b: u32,
    c: u32,
    d: u32,
}

/// The recorded FGSM work for batches of a fixed size.
pub struct FgsmPlan {
    ctx: Arc<Context>,
    pub batch: u32,
    pub eps: Vec<Eps>,
    item: u64,
    grad: GradientPlan,
    fwd: ForwardPlan,
    true_labels: Tensor,
    adv_u8: Tensor,
    norms: Tensor,
    stats: Vec<Tensor>,
    head: Recording,
    tail: Recording,
    per_eps: Vec<(Recording, Recording)>,
}

fn labels_tensor(ctx: &Context, n: u32, label: &str) -> Result<Tensor> {
    ctx.tensor(Shape::new(n, 1, 1, 1), label)
}

impl FgsmPlan {
    pub fn new(
        gpu: &GpuModel,
        batch: u32,
        eps: &[Eps],
        quantize: bool,
        target: Target,
    ) -> Result<Self> {
        let ctx = gpu.ctx.clone();
        let c = &*ctx;
        let k = eps.len() as u32;
        if k == 0 {
            return Err(Error::Usage("no eps given".into()));
        }
        let sign = if target == Target::Untargeted {
            1.0
        } else {
            -1.0
        };
        let grad = gpu.gradient_plan(batch, sign)?;
        let fwd = gpu.forward_plan(batch)?;
        let shape = gpu.input_shape(batch);
        let item = shape.item();
        let numel = shape.numel();
        let true_labels = labels_tensor(c, batch, "true labels")?;
        let classes = gpu.num_classes();

        // Clean forward, then labels: unknown ones become the clean prediction.
        let mut head = Recording::new();
        let (mode, target_class) = match target {
            Target::Untargeted => (0.0, 0),
            Target::Class(t) => (1.0, t),
            Target::LeastLikely => (2.0, 0),
        };
        if let Target::Class(t) = target {
            if t >= classes {
                return Err(Error::Usage(format!(
                    "target class {t} is out of range (the model has {classes} classes)"
                )));
            }
        }
        let kl = c.kernel(
            "attack",
            SHADER,
            grad.logits.dtype,
            "resolve_labels",
            &[Binding::Read, Binding::ReadWriteF32, Binding::ReadWriteF32],
            &[("MODE", mode)],
        )?;
        let p = c.uniform(&Params4 {
            a: batch,
            b: classes,
            c: target_class,
            d: 0,
        });
        head.push(c.dispatch(
            "resolve_labels",
            &kl,
            &p,
            &[&grad.logits, &true_labels, &grad.labels],
            batch.div_ceil(64),
        )?);
        let clean_stats = c.tensor(Shape::new(batch, ARGMAX_PROB_WIDTH, 1, 1), "clean stats")?;
        argmax_prob(c, &mut head, &grad.logits, &true_labels, &clean_stats)?;

        // After backward: all eps at once, then norms.
        let mut tail = Recording::new();
        let eps_t = c.upload(
            &eps.iter().map(|e| e.value).collect::<Vec<_>>(),
            Shape::new(k, 1, 1, 1),
            "eps",
        )?;
        let adv = c.tensor(
            Shape::new(batch * k, shape.c, shape.h, shape.w),
            "adversarial",
        )?;
        let total = numel * k as u64;
        let words = u32::try_from(total.div_ceil(4)).map_err(|_| {
            Error::Usage("batch too large for the perturbation kernel; lower --batch-size".into())
        })?;
        let adv_u8 = c.tensor(Shape::new(words, 1, 1, 1), "adversarial u8")?;
        let kp = c.kernel(
            "attack",
            SHADER,
            DType::F32,
            "perturb",
            &[
                Binding::ReadF32,
                Binding::ReadF32,
                Binding::ReadF32,
                Binding::ReadWriteF32,
                Binding::ReadWriteF32,
            ],
            &[("QUANTIZE", if quantize { 1.0 } else { 0.0 })],
        )?;
        let p = c.uniform(&Params4 {
            a: numel as u32,
            b: k,
            c: words,
            d: 0,
        });
        tail.push(c.dispatch(
            "perturb",
            &kp,
            &p,
            &[&grad.input, &grad.input_grad, &eps_t, &adv, &adv_u8],
            words.div_ceil(256),
        )?);
        let norms = c.tensor(Shape::new(batch * k, 2, 1, 1), "norms")?;
        let kn = c.kernel(
            "attack",
            SHADER,
            DType::F32,
            "norms",
            &[Binding::ReadF32, Binding::ReadF32, Binding::ReadWriteF32],
            &[],
        )?;
        let p = c.uniform(&Params4 {
            a: item as u32,
            b: batch,
            c: batch * k,
            d: 0,
        });
        tail.push(c.dispatch("norms", &kn, &p, &[&grad.input, &adv, &norms], batch * k)?);

        // Per eps: copy its batch into the forward plan's input; forward; argmax.
        let mut stats = vec![clean_stats];
        let mut per_eps = Vec::new();
        let bytes = numel * 4;
        for e in 0..k as u64 {
            let mut pre = Recording::new();
            pre.push(Step::Copy {
                src: adv.buffer.clone(),
                src_offset: e * bytes,
                dst: fwd.input.buffer.clone(),
                dst_offset: 0,
                bytes,
            });
            let mut post = Recording::new();
            let s = c.tensor(Shape::new(batch, ARGMAX_PROB_WIDTH, 1, 1), "adv stats")?;
            argmax_prob(c, &mut post, &fwd.logits, &true_labels, &s)?;
            stats.push(s);
            per_eps.push((pre, post));
        }
        Ok(FgsmPlan {
            ctx,
            batch,
            eps: eps.to_vec(),
            item,
            grad,
            fwd,
            true_labels,
            adv_u8,
            norms,
            stats,
            head,
            tail,
            per_eps,
        })
    }

    /// Number of recorded dispatches per batch (all in one submit).
    pub fn dispatch_count(&self) -> usize {
        let per = self.fwd.recording.dispatch_count();
        self.grad.forward.dispatch_count()
            + self.head.dispatch_count()
            + self.grad.backward.dispatch_count()
            + self.tail.dispatch_count()
            + self
                .per_eps
                .iter()
                .map(|(a, b)| a.dispatch_count() + b.dispatch_count() + per)
                .sum::<usize>()
    }

    /// The clean logits of the last batch run (`[batch, classes]`; one more readback).
    pub fn clean_logits(&self) -> Result<Vec<f32>> {
        self.ctx.read(&self.grad.logits)
    }

    /// Every recording of one batch, in submit order.
    pub fn recordings(&self) -> Vec<&Recording> {
        let mut recs: Vec<&Recording> = vec![
            &self.grad.forward,
            &self.head,
            &self.grad.backward,
            &self.tail,
        ];
        for (pre, post) in &self.per_eps {
            recs.extend([pre, &self.fwd.recording, post]);
        }
        recs
    }

    /// Bytes the perturbation kernel moves per batch (x and g read, f32 and u8 written).
    pub fn perturb_bytes(&self) -> u64 {
        let numel = self.item * self.batch as u64;
        let k = self.eps.len() as u64;
        numel * 4 * 2 + numel * k * 5
    }

    /// Attack `count = labels.len()` images (`pixels` holds `count` CHW images in
    /// [0, 1]; fewer than the batch size are padded). `None` labels become the
    /// clean prediction.
    pub fn run(
        &self,
        pixels: &[f32],
        labels: &[Option<u32>],
        want_images: bool,
    ) -> Result<BatchOutcome> {
        let ctx = &*self.ctx;
        let count = labels.len();
        let n = self.batch as usize;
        let item = self.item as usize;
        if count == 0 || count > n || pixels.len() != count * item {
            return Err(Error::shape(
                "fgsm",
                format!(
                    "{count} images ({} values) for batch size {n}",
                    pixels.len()
                ),
            ));
        }
        // A partial batch leaves the previous images in the tail rows: their
        // results are never read, so nothing is copied to pad them.
        ctx.write(&self.grad.input, pixels);
        let mut raw: Vec<u32> = labels.iter().map(|l| l.unwrap_or(u32::MAX)).collect();
        raw.resize(n, 0);
        ctx.write_bytes(&self.true_labels, bytemuck::cast_slice(&raw));

        let recs = self.recordings();
        let mut reads: Vec<&Tensor> = vec![&self.true_labels, &self.grad.labels, &self.norms];
        reads.extend(self.stats.iter());
        if want_images {
            reads.push(&self.adv_u8);
        }
        let out = ctx.run_read_bytes(&recs, &reads)?;
        let u32s = |b: &[u8]| -> Vec<u32> { bytemuck::pod_collect_to_vec(b) };
        let f32s = |b: &[u8]| -> Vec<f32> { bytemuck::pod_collect_to_vec(b) };
        let true_labels = u32s(&out[0]);
        let loss_labels = u32s(&out[1]);
        let norms = f32s(&out[2]);
        let preds = |b: &[u8]| -> Vec<Pred> {
            let v = f32s(b);
            (0..count)
                .map(|i| Pred {
                    class: v[3 * i] as u32,
                    prob: v[3 * i + 1],
                    label_prob: v[3 * i + 2],
                })
                .collect()
        };
        let clean = preds(&out[3]);
        let k = self.eps.len();
        let adv: Vec<Vec<Pred>> = (0..k).map(|e| preds(&out[4 + e])).collect();
        let norms: Vec<Vec<(f32, f32)>> = (0..k)
            .map(|e| {
                (0..count)
                    .map(|i| (norms[2 * (e * n + i)], norms[2 * (e * n + i) + 1]))
                    .collect()
            })
            .collect();
        let images = want_images.then(|| {
            let bytes = &out[4 + k];
            (0..k)
                .map(|e| {
                    (0..count)
                        .map(|i| bytes[(e * n + i) * item..(e * n + i + 1) * item].to_vec())
                        .collect()
                })
                .collect()
        });
        Ok(BatchOutcome {
            labels: true_labels[..count].to_vec(),
            loss_labels: loss_labels[..count].to_vec(),
            clean,
            adv,
            norms,
            images,
        })
    }
}
