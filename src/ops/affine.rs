//! Per-channel affine map `y = x * scale[c] + shift[c]` (input normalisation
//! `(x - mean) / std`, a batch norm that could not be folded) and its gradient
//! `gx = gy * scale[c]`. `scale` and `shift` are `[1, c, 1, 1]` tensors.

use crate::error::{Error, Result};
use crate::gpu::{Binding, Context, Recording, Shader, Tensor};
use crate::ops::elementwise::{count_u32, distinct, groups_1d, same_size};

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    count: u32,
    hw: u32,
    c: u32,
    _pad: u32,
}

fn check_channel(op: &str, x: &Tensor, v: &Tensor, what: &str) -> Result<()> {
    if v.numel() != x.shape.c as u64 {
        return Err(Error::shape(
            op,
            format!(
                "{what} {} must hold one value per channel of {}",
                v.shape, x.shape
            ),
        ));
    }
    Ok(())
}

fn params(op: &str, x: &Tensor) -> Result<Params> {
    Ok(Params {
        count: count_u32(op, x.numel())?,
        hw: x.shape.h * x.shape.w,
        c: x.shape.c,
        _pad: 0,
    })
}

/// `y = x * scale[c] + shift[c]`.
pub fn forward(
    ctx: &Context,
    rec: &mut Recording,
    x: &Tensor,
    scale: &Tensor,
    shift: &Tensor,
    y: &Tensor,
) -> Result<()> {
    let op = "affine";
    check_channel(op, x, scale, "scale")?;
    check_channel(op, x, shift, "shift")?;
    same_size(op, x, y)?;
    distinct(op, y, &[x, scale, shift])?;
    let p = params(op, x)?;
    if p.count == 0 {
        return Ok(());
    }
    let k = ctx.kernel(
        Shader::Affine,
        x.dtype,
        "forward",
        &[
            Binding::Read,
            Binding::Read,
            Binding::Read,
            Binding::ReadWrite,
        ],
        &[],
    )?;
    let groups = groups_1d(p.count);
    let params = ctx.uniform(&p);
    rec.push(ctx.dispatch(op, &k, &params, &[x, scale, shift, y], groups)?);
    Ok(())
}

/// `gx = gy * scale[c]`.
pub fn backward(
    ctx: &Context,
    rec: &mut Recording,
    gy: &Tensor,
    scale: &Tensor,
    gx: &Tensor,
) -> Result<()> {
    let op = "affine backward";
    check_channel(op, gy, scale, "scale")?;
    same_size(op, gy, gx)?;
    distinct(op, gx, &[gy, scale])?;
    let p = params(op, gy)?;
    if p.count == 0 {
        return Ok(());
    }
    let k = ctx.kernel(
        Shader::Affine,
        gy.dtype,
        "backward",
        &[Binding::Read, Binding::Read, Binding::ReadWrite],
        &[],
    )?;
    let groups = groups_1d(p.count);
    let params = ctx.uniform(&p);
    rec.push(ctx.dispatch(op, &k, &params, &[gy, scale, gx], groups)?);
    Ok(())
}

/// This file's uniform structs and their WGSL twins (checked by
/// tests/backends.rs).
pub(crate) fn uniform_layouts() -> Vec<crate::gpu::UniformLayout> {
    vec![crate::gpu::uniform_layout!(
        "affine",
        "Params",
        Params,
        [count, hw, c]
    )]
}
