//! The attack's loss and the read-out of predictions, both from logits
//! `[n, k, 1, 1]` and u32 labels (a `[n, 1, 1, 1]` tensor holding u32 bits,
//! written with [`Context::write_bytes`]). One workgroup per sample.

use crate::error::{Error, Result};
use crate::gpu::{Binding, Context, Recording, Shader, Shape, Tensor, WORKGROUP_IMAGES};
use crate::ops::elementwise::distinct;
use crate::ops::softmax::rows;

/// Values per sample written by [`argmax_prob`].
pub const ARGMAX_PROB_WIDTH: u32 = 4;

fn check(op: &str, logits: &Tensor, labels: &Tensor) -> Result<Shape> {
    let s = logits.shape;
    if s.h != 1 || s.w != 1 || s.c == 0 {
        return Err(Error::shape(
            op,
            format!("logits must be [n, k, 1, 1] with k > 0, got {s}"),
        ));
    }
    if labels.numel() != s.n as u64 {
        return Err(Error::shape(
            op,
            format!("{} labels for {} samples", labels.numel(), s.n),
        ));
    }
    Ok(s)
}

/// Softmax cross-entropy of `logits` against `labels`.
///
/// Writes the per-sample loss `logsumexp(z) - z[label]` to `loss` (`[n, 1, 1, 1]`)
/// and `grad = sign * (softmax(z) - onehot(label))` to `grad` (`[n, k, 1, 1]`):
/// the gradient of the batch's summed loss (no 1/n), times `sign` (+1 to ascend
/// the loss of the true label, -1 to descend towards a target label). A label
/// `>= k` gives a NaN loss and a gradient without the one-hot term.
pub fn softmax_cross_entropy(
    ctx: &Context,
    rec: &mut Recording,
    logits: &Tensor,
    labels: &Tensor,
    sign: f32,
    loss: &Tensor,
    grad: &Tensor,
) -> Result<()> {
    let op = "softmax_cross_entropy";
    let s = check(op, logits, labels)?;
    if loss.numel() != s.n as u64 {
        return Err(Error::shape(
            op,
            format!("loss tensor {} must hold {} values", loss.shape, s.n),
        ));
    }
    if grad.shape != s {
        return Err(Error::shape(
            op,
            format!("gradient tensor {} must match the logits {s}", grad.shape),
        ));
    }
    distinct(op, loss, &[logits, labels, grad])?;
    distinct(op, grad, &[logits, labels])?;
    let p = rows(op, s, sign)?;
    if p.rows == 0 {
        return Ok(());
    }
    let k = ctx.kernel(
        Shader::Softmax,
        logits.dtype,
        "cross_entropy",
        &[
            Binding::Read,
            Binding::ReadF32,
            Binding::ReadWriteF32,
            Binding::ReadWrite,
        ],
        &[],
    )?;
    let params = ctx.uniform(&p);
    rec.push(ctx.dispatch(op, &k, &params, &[logits, labels, loss, grad], p.rows)?);
    Ok(())
}

/// Predictions and probabilities, reduced on the GPU.
///
/// `out` is `[n, 4, 1, 1]` (see [`ARGMAX_PROB_WIDTH`]); row `i` holds, as f32:
/// - `out[4i]`: the predicted class, `argmax(logits[i])` (the first maximum on
///   ties, like `torch.argmax`), an integer value exact below 2^24;
/// - `out[4i + 1]`: its softmax probability;
/// - `out[4i + 2]`: the softmax probability of `labels[i]` (NaN for a label `>= k`,
///   e.g. `u32::MAX` when no label is known);
/// - `out[4i + 3]`: its log-probability, minus the cross-entropy loss,
///   computed without underflow (NaN for a label `>= k`).
pub fn argmax_prob(
    ctx: &Context,
    rec: &mut Recording,
    logits: &Tensor,
    labels: &Tensor,
    out: &Tensor,
) -> Result<()> {
    let op = "argmax_prob";
    let s = check(op, logits, labels)?;
    if out.numel() != s.n as u64 * ARGMAX_PROB_WIDTH as u64 {
        return Err(Error::shape(
            op,
            format!(
                "output tensor {} must be [{}, {ARGMAX_PROB_WIDTH}, 1, 1]",
                out.shape, s.n
            ),
        ));
    }
    distinct(op, out, &[logits, labels])?;
    let p = rows(op, s, 0.0)?;
    if p.rows == 0 {
        return Ok(());
    }
    let k = ctx.kernel(
        Shader::Softmax,
        logits.dtype,
        "argmax_prob",
        &[Binding::Read, Binding::ReadF32, Binding::ReadWriteF32],
        &[],
    )?;
    let params = ctx.uniform(&p);
    rec.push(ctx.dispatch(op, &k, &params, &[logits, labels, out], p.rows)?);
    Ok(())
}

/// Mirrors `DlrParams` in `shaders/loss/dlr.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct DlrParams {
    n: u32,
    k: u32,
    scale: f32,
    _pad: u32,
}

/// The difference-of-logits-ratio loss of AutoAttack (Croce & Hein 2020).
///
/// Untargeted (`targets = None`): `-(z_y - max_{i != y} z_i) / (z_(1) - z_(3))`;
/// targeted: `-(z_y - z_t) / (z_(1) - (z_(3) + z_(4)) / 2)`, with `z_(i)` the
/// i-th largest logit (plus 1e-12 in the denominators, as the reference code).
/// Writes the per-sample loss to `loss` and `scale` times the gradient of the
/// summed loss with respect to the logits to `grad`. Needs at least 3 classes
/// (4 when targeted).
#[allow(clippy::too_many_arguments)]
pub fn dlr(
    ctx: &Context,
    rec: &mut Recording,
    logits: &Tensor,
    labels: &Tensor,
    targets: Option<&Tensor>,
    scale: f32,
    loss: &Tensor,
    grad: &Tensor,
) -> Result<()> {
    dlr_kernel(ctx, rec, logits, labels, targets, false, scale, loss, grad)
}

/// FAB-T's linearised function, the target's logit minus the label's:
/// `loss = z_t - z_y` per sample, `grad = scale * (e_t - e_y)`. Needs 2 classes.
#[allow(clippy::too_many_arguments)]
pub fn target_margin(
    ctx: &Context,
    rec: &mut Recording,
    logits: &Tensor,
    labels: &Tensor,
    targets: &Tensor,
    scale: f32,
    loss: &Tensor,
    grad: &Tensor,
) -> Result<()> {
    dlr_kernel(
        ctx,
        rec,
        logits,
        labels,
        Some(targets),
        true,
        scale,
        loss,
        grad,
    )
}

#[allow(clippy::too_many_arguments)]
fn dlr_kernel(
    ctx: &Context,
    rec: &mut Recording,
    logits: &Tensor,
    labels: &Tensor,
    targets: Option<&Tensor>,
    margin: bool,
    scale: f32,
    loss: &Tensor,
    grad: &Tensor,
) -> Result<()> {
    let op = if margin { "target_margin" } else { "dlr" };
    let s = check(op, logits, labels)?;
    let need = match (margin, targets.is_some()) {
        (true, _) => 2,
        (false, true) => 4,
        (false, false) => 3,
    };
    if s.c < need {
        return Err(Error::shape(
            op,
            format!(
                "the {} needs at least {need} classes, the logits have {}",
                if margin { "target margin" } else { "DLR loss" },
                s.c
            ),
        ));
    }
    if loss.numel() != s.n as u64 || grad.shape != s {
        return Err(Error::shape(
            op,
            format!(
                "loss {} must hold {} values and grad {} match the logits {s}",
                loss.shape, s.n, grad.shape
            ),
        ));
    }
    if let Some(t) = targets {
        if t.numel() != s.n as u64 {
            return Err(Error::shape(
                op,
                format!("{} targets for {} samples", t.numel(), s.n),
            ));
        }
    }
    distinct(op, loss, &[logits, labels, grad])?;
    distinct(op, grad, &[logits, labels])?;
    if s.n == 0 {
        return Ok(());
    }
    let k = ctx.kernel(
        Shader::Dlr,
        logits.dtype,
        "dlr",
        &[
            Binding::Read,
            Binding::ReadF32,
            Binding::ReadF32,
            Binding::ReadWriteF32,
            Binding::ReadWrite,
        ],
        &[
            ("TARGETED", if targets.is_some() { 1.0 } else { 0.0 }),
            ("MARGIN", if margin { 1.0 } else { 0.0 }),
        ],
    )?;
    let params = ctx.uniform(&DlrParams {
        n: s.n,
        k: s.c,
        scale,
        _pad: 0,
    });
    let t = targets.unwrap_or(labels);
    rec.push(ctx.dispatch(
        op,
        &k,
        &params,
        &[logits, labels, t, loss, grad],
        s.n.div_ceil(WORKGROUP_IMAGES),
    )?);
    Ok(())
}

/// This file's uniform structs and their WGSL twins (checked by
/// tests/backends.rs).
pub(crate) fn uniform_layouts() -> Vec<crate::gpu::UniformLayout> {
    vec![crate::gpu::uniform_layout!(
        "dlr",
        "DlrParams",
        DlrParams,
        [n, k, scale]
    )]
}
