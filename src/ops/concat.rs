//! Concatenation along the channel axis, forward and backward (the backward pass
//! slices the joint gradient back into one gradient per input). One dispatch per
//! input.

use crate::error::{Error, Result};
use crate::gpu::{Binding, Context, Recording, Shader, Shape, Tensor};
use crate::ops::elementwise::{count_u32, distinct, groups_1d};

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    count: u32,
    item_part: u32,
    item_all: u32,
    offset: u32,
}

/// The shape of the channel concatenation of `parts`.
pub fn out_shape(parts: &[Shape]) -> Result<Shape> {
    let first = *parts
        .first()
        .ok_or_else(|| Error::shape("concat", "no inputs"))?;
    let mut c = 0u32;
    for s in parts {
        if (s.n, s.h, s.w) != (first.n, first.h, first.w) {
            return Err(Error::shape(
                "concat",
                format!("input {s} does not match {first} outside the channel axis"),
            ));
        }
        c = c
            .checked_add(s.c)
            .ok_or_else(|| Error::shape("concat", "too many channels"))?;
    }
    Ok(Shape::new(first.n, c, first.h, first.w))
}

fn run(
    ctx: &Context,
    rec: &mut Recording,
    entry: &'static str,
    parts: &[&Tensor],
    joint: &Tensor,
) -> Result<()> {
    let op = if entry == "forward" {
        "concat"
    } else {
        "concat backward"
    };
    let shapes: Vec<Shape> = parts.iter().map(|t| t.shape).collect();
    let want = out_shape(&shapes).map_err(|e| match e {
        Error::Shape { message, .. } => Error::shape(op, message),
        e => e,
    })?;
    if want != joint.shape {
        return Err(Error::shape(
            op,
            format!(
                "inputs concatenate to {want}, but the joint tensor is {}",
                joint.shape
            ),
        ));
    }
    count_u32(op, joint.numel())?;
    let k = ctx.kernel(
        Shader::Concat,
        joint.dtype,
        entry,
        &[Binding::Read, Binding::ReadWrite],
        &[],
    )?;
    let hw = want.h * want.w;
    let mut offset = 0u32;
    for (i, part) in parts.iter().enumerate() {
        let count = part.numel() as u32;
        let p = ctx.uniform(&Params {
            count,
            item_part: part.shape.c * hw,
            item_all: want.c * hw,
            offset: offset * hw,
        });
        offset += part.shape.c;
        if count == 0 {
            continue;
        }
        let label = format!("{op} {i}");
        let step = if entry == "forward" {
            distinct(op, joint, &[part])?;
            ctx.dispatch(label, &k, &p, &[part, joint], groups_1d(count))?
        } else {
            distinct(op, part, &[joint])?;
            ctx.dispatch(label, &k, &p, &[joint, part], groups_1d(count))?
        };
        rec.push(step);
    }
    Ok(())
}

/// `y = concat(xs, axis = channels)`; the inputs agree in n, h and w.
pub fn forward(ctx: &Context, rec: &mut Recording, xs: &[&Tensor], y: &Tensor) -> Result<()> {
    run(ctx, rec, "forward", xs, y)
}

/// Slices `gy` back into the inputs' gradients `gxs` (overwritten).
pub fn backward(ctx: &Context, rec: &mut Recording, gy: &Tensor, gxs: &[&Tensor]) -> Result<()> {
    run(ctx, rec, "backward", gxs, gy)
}

/// This file's uniform structs and their WGSL twins (checked by
/// tests/backends.rs).
pub(crate) fn uniform_layouts() -> Vec<crate::gpu::UniformLayout> {
    vec![crate::gpu::uniform_layout!(
        "concat",
        "Params",
        Params,
        [count, item_part, item_all, offset]
    )]
}
