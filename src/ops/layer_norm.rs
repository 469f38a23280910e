//! Layer normalisation over the channel axis (per `(n, h, w)` position, C
//! values), with a weight and bias per channel: ConvNeXt's LayerNorm.
//! Forward, and backward to the input (the weight and bias are constants of
//! the attacked model), `shaders/norm/layer_norm.wgsl`: one thread per
//! position, or one workgroup per position when the positions are too few to
//! fill a device and long enough to share out ([`Layout::pick`]).

use crate::error::{Error, Result};
use crate::gpu::{Binding, Context, Recording, Shader, Tensor};
use crate::ops::elementwise::{count_u32, distinct, groups_1d, same_shape};

/// How the positions are shared out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// One thread per position, looping over its channels (no barriers).
    ThreadPerRow,
    /// One workgroup per position, its channels shared out and summed by a
    /// tree reduction.
    GroupPerRow,
}

impl Layout {
    /// A workgroup per position only when there are fewer positions than a
    /// device has threads in flight (4096) and each has at least 512 channels
    /// (a ViT-B/16 token at a small batch); else a thread per position. On
    /// llvmpipe the thread per position takes ConvNeXt-T's layer norms from
    /// 9.2 s to 0.9 s per batch of 4 (BENCHMARKS.md, session 11); neither
    /// layout has a GPU figure yet.
    pub fn pick(rows: u32, channels: u32) -> Layout {
        if rows < 4096 && channels >= 512 {
            Layout::GroupPerRow
        } else {
            Layout::ThreadPerRow
        }
    }

    fn entry(self, backward: bool) -> &'static str {
        match (self, backward) {
            (Layout::ThreadPerRow, false) => "ln_forward_rows",
            (Layout::ThreadPerRow, true) => "ln_backward_rows",
            (Layout::GroupPerRow, false) => "ln_forward",
            (Layout::GroupPerRow, true) => "ln_backward",
        }
    }

    fn groups(self, rows: u32) -> u32 {
        match self {
            Layout::ThreadPerRow => groups_1d(rows),
            Layout::GroupPerRow => rows,
        }
    }
}

/// Mirrors `Params` in `shaders/norm/layer_norm.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    rows: u32,
    k: u32,
    hw: u32,
    eps: f32,
}

fn params(op: &str, x: &Tensor, weight: &Tensor, eps: f32) -> Result<Params> {
    count_u32(op, x.numel())?;
    let s = x.shape;
    if weight.numel() != s.c as u64 {
        return Err(Error::shape(
            op,
            format!("weight has {} values for {} channels", weight.numel(), s.c),
        ));
    }
    if !(eps.is_finite() && eps >= 0.0) {
        return Err(Error::shape(
            op,
            format!("eps {eps} must be finite and >= 0"),
        ));
    }
    Ok(Params {
        rows: s.n * s.h * s.w,
        k: s.c,
        hw: s.h * s.w,
        eps,
    })
}

/// `y = (x - mean_c) / sqrt(var_c + eps) * weight[c] + bias[c]`.
pub fn forward(
    ctx: &Context,
    rec: &mut Recording,
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    eps: f32,
    y: &Tensor,
) -> Result<()> {
    let s = x.shape;
    let layout = Layout::pick(s.n * s.h * s.w, s.c);
    forward_with(ctx, rec, layout, x, weight, bias, eps, y)
}

/// [`forward`] with the layout chosen by the caller (tests pin both).
#[allow(clippy::too_many_arguments)]
pub fn forward_with(
    ctx: &Context,
    rec: &mut Recording,
    layout: Layout,
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    eps: f32,
    y: &Tensor,
) -> Result<()> {
    let op = "layer_norm";
    same_shape(op, x, y)?;
    distinct(op, y, &[x, weight, bias])?;
    let p = params(op, x, weight, eps)?;
    if bias.numel() != weight.numel() {
        return Err(Error::shape(op, "bias and weight differ in length"));
    }
    record(ctx, rec, layout, false, op, &p, [x, weight, bias, y])
}

/// The gradient to the input from the forward's input `x` and `gy`.
pub fn backward(
    ctx: &Context,
    rec: &mut Recording,
    x: &Tensor,
    weight: &Tensor,
    eps: f32,
    gy: &Tensor,
    gx: &Tensor,
) -> Result<()> {
    let s = x.shape;
    let layout = Layout::pick(s.n * s.h * s.w, s.c);
    backward_with(ctx, rec, layout, x, weight, eps, gy, gx)
}

/// [`backward`] with the layout chosen by the caller.
#[allow(clippy::too_many_arguments)]
pub fn backward_with(
    ctx: &Context,
    rec: &mut Recording,
    layout: Layout,
    x: &Tensor,
    weight: &Tensor,
    eps: f32,
    gy: &Tensor,
    gx: &Tensor,
) -> Result<()> {
    let op = "layer_norm backward";
    same_shape(op, x, gy)?;
    same_shape(op, x, gx)?;
    distinct(op, gx, &[x, weight, gy])?;
    let p = params(op, x, weight, eps)?;
    record(ctx, rec, layout, true, op, &p, [x, weight, gy, gx])
}

/// One dispatch of the forward or backward entry: three inputs read, the
/// last tensor written.
fn record(
    ctx: &Context,
    rec: &mut Recording,
    layout: Layout,
    backward: bool,
    op: &str,
    p: &Params,
    tensors: [&Tensor; 4],
) -> Result<()> {
    if p.rows == 0 || p.k == 0 {
        return Ok(());
    }
    let r = Binding::Read;
    let k = ctx.kernel(
        Shader::LayerNorm,
        tensors[0].dtype,
        layout.entry(backward),
        &[r, r, r, Binding::ReadWrite],
        &[],
    )?;
    let params = ctx.uniform(p);
    rec.push(ctx.dispatch(op, &k, &params, &tensors, layout.groups(p.rows))?);
    Ok(())
}

/// This file's uniform structs and their WGSL twins (checked by
/// tests/backends.rs).
pub(crate) fn uniform_layouts() -> Vec<crate::gpu::UniformLayout> {
    vec![crate::gpu::uniform_layout!(
        "layer_norm",
        "Params",
        Params,
        [rows, k, hw, eps]
    )]
}
