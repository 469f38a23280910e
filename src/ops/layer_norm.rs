//! Layer normalisation over the channel axis (per `(n, h, w)` position, C
//! values), with a weight and bias per channel: ConvNeXt's LayerNorm.
//! Forward, and backward to the input (the weight and bias are constants of
//! the attacked model). One workgroup per position (`shaders/norm/layer_norm.wgsl`).

use crate::error::{Error, Result};
use crate::gpu::{Binding, Context, Recording, Shader, Tensor};
use crate::ops::elementwise::{count_u32, distinct};

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

fn same_shape(op: &str, a: &Tensor, b: &Tensor) -> Result<()> {
    if a.shape != b.shape {
        return Err(Error::shape(
            op,
            format!("tensor shapes {} and {} differ", a.shape, b.shape),
        ));
    }
    Ok(())
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
    let op = "layer_norm";
    same_shape(op, x, y)?;
    distinct(op, y, &[x, weight, bias])?;
    let p = params(op, x, weight, eps)?;
    if bias.numel() != weight.numel() {
        return Err(Error::shape(op, "bias and weight differ in length"));
    }
    if p.rows == 0 || p.k == 0 {
        return Ok(());
    }
    let k = ctx.kernel(
        Shader::LayerNorm,
        x.dtype,
        "ln_forward",
        &[
            Binding::Read,
            Binding::Read,
            Binding::Read,
            Binding::ReadWrite,
        ],
        &[],
    )?;
    let params = ctx.uniform(&p);
    rec.push(ctx.dispatch(op, &k, &params, &[x, weight, bias, y], p.rows)?);
    Ok(())
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
    let op = "layer_norm backward";
    same_shape(op, x, gy)?;
    same_shape(op, x, gx)?;
    distinct(op, gx, &[x, weight, gy])?;
    let p = params(op, x, weight, eps)?;
    if p.rows == 0 || p.k == 0 {
        return Ok(());
    }
    let k = ctx.kernel(
        Shader::LayerNorm,
        x.dtype,
        "ln_backward",
        &[
            Binding::Read,
            Binding::Read,
            Binding::Read,
            Binding::ReadWrite,
        ],
        &[],
    )?;
    let params = ctx.uniform(&p);
    rec.push(ctx.dispatch(op, &k, &params, &[x, weight, gy, gx], p.rows)?);
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
