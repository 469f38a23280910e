//! Softmax over the channel axis (`[n, k, 1, 1]` logits, or `[n, c, h, w]` per
//! position), forward and backward. One workgroup per row, numerically stable
//! (the row maximum is subtracted before exponentiating).

use crate::error::Result;
use crate::gpu::{Binding, Context, Recording, Shader, Shape, Tensor};
use crate::ops::elementwise::{count_u32, distinct, same_shape};

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct Params {
    pub rows: u32,
    pub k: u32,
    pub hw: u32,
    pub sign: f32,
}

/// Row layout of `s` (rows = n * h * w of k channels), checking u32 indexing.
pub(crate) fn rows(op: &str, s: Shape, sign: f32) -> Result<Params> {
    count_u32(op, s.numel())?;
    Ok(Params {
        rows: s.n * s.h * s.w,
        k: s.c,
        hw: s.h * s.w,
        sign,
    })
}

/// `y = softmax(x)` over the channel axis.
pub fn forward(ctx: &Context, rec: &mut Recording, x: &Tensor, y: &Tensor) -> Result<()> {
    let op = "softmax";
    same_shape(op, x, y)?;
    distinct(op, y, &[x])?;
    let p = rows(op, x.shape, 0.0)?;
    if p.rows == 0 || p.k == 0 {
        return Ok(());
    }
    let k = ctx.kernel(
        Shader::Softmax,
        x.dtype,
        "softmax_forward",
        &[Binding::Read, Binding::ReadWrite],
        &[],
    )?;
    let params = ctx.uniform(&p);
    rec.push(ctx.dispatch(op, &k, &params, &[x, y], p.rows)?);
    Ok(())
}

/// `gx = y * (gy - sum_c(gy * y))` from the forward output `y`.
pub fn backward(
    ctx: &Context,
    rec: &mut Recording,
    y: &Tensor,
    gy: &Tensor,
    gx: &Tensor,
) -> Result<()> {
    let op = "softmax backward";
    same_shape(op, y, gy)?;
    same_shape(op, y, gx)?;
    distinct(op, gx, &[y, gy])?;
    let p = rows(op, y.shape, 0.0)?;
    if p.rows == 0 || p.k == 0 {
        return Ok(());
    }
    let k = ctx.kernel(
        Shader::Softmax,
        y.dtype,
        "softmax_backward",
        &[Binding::Read, Binding::Read, Binding::ReadWrite],
        &[],
    )?;
    let params = ctx.uniform(&p);
    rec.push(ctx.dispatch(op, &k, &params, &[y, gy, gx], p.rows)?);
    Ok(())
}

/// This file's uniform structs and their WGSL twins (checked by
/// tests/backends.rs).
pub(crate) fn uniform_layouts() -> Vec<crate::gpu::UniformLayout> {
    vec![crate::gpu::uniform_layout!(
        "softmax",
        "Params",
        Params,
        [rows, k, hw, sign]
    )]
}
