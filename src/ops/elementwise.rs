//! Element-wise helpers: `dst += src` (summing the gradients of a value that has
//! several consumers), copies, casts between dtypes and scaling; plus small checks shared by the op
//! families of this crate's non-convolution kernels.

use std::sync::Arc;

use crate::error::{Error, Result};
use crate::gpu::{Binding, Context, DType, Recording, Shader, Step, Tensor, WORKGROUP_1D};

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    count: u32,
    alpha: f32,
    _p0: u32,
    _p1: u32,
}

/// Element count as the u32 the kernels index with.
pub(crate) fn count_u32(op: &str, n: u64) -> Result<u32> {
    u32::try_from(n).map_err(|_| Error::shape(op, format!("{n} elements exceed u32 indexing")))
}

/// Workgroups for one thread per element.
pub(crate) fn groups_1d(count: u32) -> u32 {
    count.div_ceil(WORKGROUP_1D)
}

/// An output must not share storage with an input of the same dispatch.
pub(crate) fn distinct(op: &str, out: &Tensor, inputs: &[&Tensor]) -> Result<()> {
    if inputs.iter().any(|t| Arc::ptr_eq(&t.buffer, &out.buffer)) {
        return Err(Error::shape(
            op,
            "the output tensor must not share storage with an input",
        ));
    }
    Ok(())
}

/// The two tensors have the same shape (not only the same element count).
pub(crate) fn same_shape(op: &str, a: &Tensor, b: &Tensor) -> Result<()> {
    if a.shape != b.shape {
        return Err(Error::shape(
            op,
            format!("tensor shapes {} and {} differ", a.shape, b.shape),
        ));
    }
    Ok(())
}

pub(crate) fn same_size(op: &str, a: &Tensor, b: &Tensor) -> Result<()> {
    if a.numel() != b.numel() {
        return Err(Error::shape(
            op,
            format!("tensor shapes {} and {} differ in size", a.shape, b.shape),
        ));
    }
    Ok(())
}

/// Checks `src` and `dst` (same element count, distinct storage) and records one
/// dispatch of `entry` over the elements: a kernel of storage type `dtype`,
/// `alpha` and `dims` in the parameters' spare words.
#[allow(clippy::too_many_arguments)]
fn launch(
    ctx: &Context,
    rec: &mut Recording,
    entry: &'static str,
    label: String,
    dtype: DType,
    bindings: [Binding; 2],
    alpha: f32,
    dims: [u32; 2],
    src: &Tensor,
    dst: &Tensor,
) -> Result<()> {
    same_size(entry, src, dst)?;
    distinct(entry, dst, &[src])?;
    let count = count_u32(entry, src.numel())?;
    if count == 0 {
        return Ok(());
    }
    let k = ctx.kernel(Shader::Elementwise, dtype, entry, &bindings, &[])?;
    let p = ctx.uniform(&Params {
        count,
        alpha,
        _p0: dims[0],
        _p1: dims[1],
    });
    rec.push(ctx.dispatch(label, &k, &p, &[src, dst], groups_1d(count))?);
    Ok(())
}

fn run(
    ctx: &Context,
    rec: &mut Recording,
    entry: &'static str,
    alpha: f32,
    src: &Tensor,
    dst: &Tensor,
) -> Result<()> {
    let bindings = [Binding::Read, Binding::ReadWrite];
    launch(
        ctx,
        rec,
        entry,
        entry.into(),
        dst.dtype,
        bindings,
        alpha,
        [0; 2],
        src,
        dst,
    )
}

/// `dst += src` (same element count, distinct storage).
pub fn accumulate(ctx: &Context, rec: &mut Recording, src: &Tensor, dst: &Tensor) -> Result<()> {
    run(ctx, rec, "accumulate", 1.0, src, dst)
}

/// `y = alpha * x` (same element count, distinct storage).
pub fn scale(ctx: &Context, rec: &mut Recording, x: &Tensor, alpha: f32, y: &Tensor) -> Result<()> {
    run(ctx, rec, "scale", alpha, x, y)
}

/// `dst = src` converted to `dst`'s dtype (a plain copy when the dtypes agree).
pub fn cast(ctx: &Context, rec: &mut Recording, src: &Tensor, dst: &Tensor) -> Result<()> {
    if src.dtype == dst.dtype {
        return copy(ctx, rec, src, dst);
    }
    cast_scaled(ctx, rec, src, dst, 1.0)
}

/// `dst = alpha * src` converted to `dst`'s dtype, in one pass; the dtypes must
/// differ (one f32, the other a storage type). Use [`scale`] for equal dtypes.
pub fn cast_scaled(
    ctx: &Context,
    rec: &mut Recording,
    src: &Tensor,
    dst: &Tensor,
    alpha: f32,
) -> Result<()> {
    if src.dtype == dst.dtype {
        return Err(Error::shape(
            "cast",
            format!("both tensors are {}; use scale", src.dtype),
        ));
    }
    // One side is f32, the other the kernel's storage type.
    let (entry, dtype, bindings) = if src.dtype == DType::F32 {
        (
            "to_storage",
            dst.dtype,
            [Binding::ReadF32, Binding::ReadWrite],
        )
    } else {
        (
            "from_storage",
            src.dtype,
            [Binding::Read, Binding::ReadWriteF32],
        )
    };
    let label = format!("cast_{}_{}", src.dtype, dst.dtype);
    launch(
        ctx, rec, entry, label, dtype, bindings, alpha, [0; 2], src, dst,
    )
}

/// `dst[b, c, r] = src[b, r, c]`: `batches` matrices of `rows` x `cols`
/// transposed (same dtype, same element count, distinct storage).
pub fn transpose(
    ctx: &Context,
    rec: &mut Recording,
    src: &Tensor,
    dst: &Tensor,
    batches: u32,
    rows: u32,
    cols: u32,
) -> Result<()> {
    let entry = "transpose";
    if batches as u64 * rows as u64 * cols as u64 != src.numel() {
        return Err(Error::shape(
            entry,
            format!(
                "{batches} x {rows} x {cols} matrices do not hold {} elements",
                src.numel()
            ),
        ));
    }
    let bindings = [Binding::Read, Binding::ReadWrite];
    launch(
        ctx,
        rec,
        entry,
        entry.into(),
        dst.dtype,
        bindings,
        1.0,
        [rows, cols],
        src,
        dst,
    )
}

/// `dst = src`, as a buffer copy (same element count and dtype, distinct storage).
pub fn copy(_ctx: &Context, rec: &mut Recording, src: &Tensor, dst: &Tensor) -> Result<()> {
    same_size("copy", src, dst)?;
    if src.dtype != dst.dtype {
        return Err(Error::shape(
            "copy",
            format!("dtypes differ ({} to {}); use cast", src.dtype, dst.dtype),
        ));
    }
    distinct("copy", dst, &[src])?;
    if src.numel() > 0 {
        rec.push(Step::Copy {
            src: src.buffer.clone(),
            src_offset: 0,
            dst: dst.buffer.clone(),
            dst_offset: 0,
            bytes: src.bytes(),
        });
    }
    Ok(())
}

/// This file's uniform structs and their WGSL twins (checked by
/// tests/backends.rs).
pub(crate) fn uniform_layouts() -> Vec<crate::gpu::UniformLayout> {
    vec![crate::gpu::uniform_layout!(
        "elementwise",
        "Params",
        Params,
        [count, alpha]
    )]
}
