//! Pooling: max and average 2-D pooling (PyTorch semantics, including ceil_mode,
//! dilation for max, asymmetric padding and count_include_pad) and global average
//! pooling, forward and backward to the input.
//!
//! The backward passes are gathers: each input element sums the gradient of the
//! windows that use it, so no atomics are needed. Max pooling recomputes each
//! window's argmax (first maximum in row-major window order wins, padding never
//! wins) rather than storing indices.

use crate::error::{Error, Result};
use crate::gpu::{Binding, Context, KernelStyle, Recording, Shader, Shape, Tensor};
use crate::ops::elementwise::{count_u32, distinct, groups_1d};
use crate::ops::Pool2dParams;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    count: u32,
    ih: u32,
    iw: u32,
    oh: u32,
    ow: u32,
    kh: u32,
    kw: u32,
    sh: u32,
    sw: u32,
    pt: u32,
    pl: u32,
    dh: u32,
    dw: u32,
    hend: u32,
    wend: u32,
    include_pad: u32,
}

fn window_params(p: &Pool2dParams, x: Shape, y: Shape, count: u32) -> Params {
    let [pt, pl, pb, pr] = p.padding;
    Params {
        count,
        ih: x.h,
        iw: x.w,
        oh: y.h,
        ow: y.w,
        kh: p.kernel[0],
        kw: p.kernel[1],
        sh: p.stride[0],
        sw: p.stride[1],
        pt,
        pl,
        dh: p.dilation[0],
        dw: p.dilation[1],
        hend: x.h.saturating_add(pb),
        wend: x.w.saturating_add(pr),
        include_pad: p.count_include_pad as u32,
    }
}

/// Checks `y` (or `gy`) against the pooled shape of `x` (or `gx`).
fn check_window(op: &str, p: &Pool2dParams, x: Shape, y: Shape) -> Result<()> {
    let want = p.out_shape(x).map_err(|e| match e {
        Error::Shape { message, .. } => Error::shape(op, message),
        e => e,
    })?;
    if want != y {
        return Err(Error::shape(
            op,
            format!("input {x} pools to {want}, but the output tensor is {y}"),
        ));
    }
    Ok(())
}

fn check_avg(op: &str, p: &Pool2dParams) -> Result<()> {
    if p.dilation != [1, 1] {
        return Err(Error::shape(
            op,
            format!(
                "average pooling has no dilation (got {:?}), as in PyTorch",
                p.dilation
            ),
        ));
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn launch(
    ctx: &Context,
    rec: &mut Recording,
    entry: &'static str,
    p: &Pool2dParams,
    xs: Shape,
    ys: Shape,
    threads: u64,
    tensors: &[&Tensor],
) -> Result<()> {
    let count = count_u32(entry, threads)?;
    if count == 0 {
        return Ok(());
    }
    let mut bindings = vec![Binding::Read; tensors.len() - 1];
    bindings.push(Binding::ReadWrite);
    let k = ctx.kernel(
        Shader::Pool,
        tensors[tensors.len() - 1].dtype,
        entry,
        &bindings,
        &[],
    )?;
    let params = ctx.uniform(&window_params(p, xs, ys, count));
    rec.push(ctx.dispatch(entry, &k, &params, tensors, groups_1d(count))?);
    Ok(())
}

/// Max pooling: `y[n, c, oy, ox]` is the maximum of the window (PyTorch `max_pool2d`).
pub fn max_forward(
    ctx: &Context,
    rec: &mut Recording,
    p: &Pool2dParams,
    x: &Tensor,
    y: &Tensor,
) -> Result<()> {
    check_window("max_pool", p, x.shape, y.shape)?;
    distinct("max_pool", y, &[x])?;
    launch(
        ctx,
        rec,
        "max_forward",
        p,
        x.shape,
        y.shape,
        y.numel(),
        &[x, y],
    )
}

/// The pooling passes that choose between two kernels (the others have one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolKernel {
    /// Max pool backward as a gather: one thread per input element visits the
    /// windows that contain it.
    MaxBackwardGather,
    /// Max pool backward for disjoint windows (stride >= kernel, no dilation):
    /// one thread per window scatters its gradient, the rest cleared.
    MaxBackwardWindows,
    /// Global average pool, one workgroup per plane (GPUs).
    GlobalAvgPerWorkgroup,
    /// Global average pool, one thread per plane (CPU adapters: no barriers).
    GlobalAvgPerThread,
}

/// The kernel [`max_backward`] records for windows `p`.
pub fn select_max_backward(p: &Pool2dParams) -> PoolKernel {
    if p.dilation == [1, 1] && p.stride[0] >= p.kernel[0] && p.stride[1] >= p.kernel[1] {
        PoolKernel::MaxBackwardWindows
    } else {
        PoolKernel::MaxBackwardGather
    }
}

/// The kernel [`global_avg_forward`] records on adapters of `style`.
pub fn select_global_avg(style: KernelStyle) -> PoolKernel {
    match style {
        KernelStyle::Direct => PoolKernel::GlobalAvgPerThread,
        KernelStyle::Tiled => PoolKernel::GlobalAvgPerWorkgroup,
    }
}

/// Gradient of max pooling: `gx` receives each window's `gy` at the window's
/// argmax (first maximum on ties); `x` is the forward input.
pub fn max_backward(
    ctx: &Context,
    rec: &mut Recording,
    p: &Pool2dParams,
    x: &Tensor,
    gy: &Tensor,
    gx: &Tensor,
) -> Result<()> {
    check_window("max_pool backward", p, x.shape, gy.shape)?;
    if gx.shape != x.shape {
        return Err(Error::shape(
            "max_pool backward",
            format!("gx is {} but the input is {}", gx.shape, x.shape),
        ));
    }
    distinct("max_pool backward", gx, &[x, gy])?;
    if select_max_backward(p) == PoolKernel::MaxBackwardWindows {
        let (ys, xs) = (gy.shape, x.shape);
        let covered = p.padding == [0; 4]
            && p.stride == p.kernel
            && ys.h as u64 * p.kernel[0] as u64 == xs.h as u64
            && ys.w as u64 * p.kernel[1] as u64 == xs.w as u64;
        if !covered && gx.numel() > 0 {
            rec.push(crate::gpu::Step::Clear {
                buffer: gx.buffer.clone(),
            });
        }
        return launch(
            ctx,
            rec,
            "max_backward_windows",
            p,
            x.shape,
            gy.shape,
            gy.numel(),
            &[x, gy, gx],
        );
    }
    launch(
        ctx,
        rec,
        "max_backward",
        p,
        x.shape,
        gy.shape,
        x.numel(),
        &[x, gy, gx],
    )
}

/// Average pooling (PyTorch `avg_pool2d`, honouring `count_include_pad` and
/// `ceil_mode`; no dilation).
pub fn avg_forward(
    ctx: &Context,
    rec: &mut Recording,
    p: &Pool2dParams,
    x: &Tensor,
    y: &Tensor,
) -> Result<()> {
    check_avg("avg_pool", p)?;
    check_window("avg_pool", p, x.shape, y.shape)?;
    distinct("avg_pool", y, &[x])?;
    launch(
        ctx,
        rec,
        "avg_forward",
        p,
        x.shape,
        y.shape,
        y.numel(),
        &[x, y],
    )
}

/// Gradient of average pooling; `gx` has the forward input's shape.
pub fn avg_backward(
    ctx: &Context,
    rec: &mut Recording,
    p: &Pool2dParams,
    gy: &Tensor,
    gx: &Tensor,
) -> Result<()> {
    check_avg("avg_pool backward", p)?;
    check_window("avg_pool backward", p, gx.shape, gy.shape)?;
    distinct("avg_pool backward", gx, &[gy])?;
    launch(
        ctx,
        rec,
        "avg_backward",
        p,
        gx.shape,
        gy.shape,
        gx.numel(),
        &[gy, gx],
    )
}

/// Parameters of the global kernels: `count` work items over planes of `x`.
fn plane_params(count: u32, x: Shape) -> Params {
    Params {
        count,
        ih: x.h,
        iw: x.w,
        oh: 1,
        ow: 1,
        kh: x.h,
        kw: x.w,
        sh: 1,
        sw: 1,
        pt: 0,
        pl: 0,
        dh: 1,
        dw: 1,
        hend: x.h,
        wend: x.w,
        include_pad: 1,
    }
}

fn check_global(op: &str, x: Shape, y: Shape) -> Result<()> {
    if y != Shape::new(x.n, x.c, 1, 1) {
        return Err(Error::shape(
            op,
            format!(
                "input {x} averages to [{}, {}, 1, 1], but the output tensor is {y}",
                x.n, x.c
            ),
        ));
    }
    if x.h == 0 || x.w == 0 {
        return Err(Error::shape(op, format!("empty planes in input {x}")));
    }
    Ok(())
}

/// Global average pooling: `y[n, c, 0, 0]` is the mean of plane `x[n, c]`; one
/// workgroup reduces one plane (one thread on CPU adapters).
pub fn global_avg_forward(
    ctx: &Context,
    rec: &mut Recording,
    x: &Tensor,
    y: &Tensor,
) -> Result<()> {
    let op = "global_avg_pool";
    check_global(op, x.shape, y.shape)?;
    distinct(op, y, &[x])?;
    count_u32(op, x.numel())?;
    let planes = count_u32(op, y.numel())?;
    if planes == 0 {
        return Ok(());
    }
    let (entry, groups) = match select_global_avg(ctx.kernel_style()) {
        PoolKernel::GlobalAvgPerThread => ("global_avg_forward_thread", groups_1d(planes)),
        _ => ("global_avg_forward", planes),
    };
    let k = ctx.kernel(
        Shader::Pool,
        y.dtype,
        entry,
        &[Binding::Read, Binding::ReadWrite],
        &[],
    )?;
    let params = ctx.uniform(&plane_params(planes, x.shape));
    rec.push(ctx.dispatch(op, &k, &params, &[x, y], groups)?);
    Ok(())
}

/// Gradient of global average pooling: `gx[n, c, h, w] = gy[n, c] / (h * w)`.
pub fn global_avg_backward(
    ctx: &Context,
    rec: &mut Recording,
    gy: &Tensor,
    gx: &Tensor,
) -> Result<()> {
    let op = "global_avg_pool backward";
    check_global(op, gx.shape, gy.shape)?;
    distinct(op, gx, &[gy])?;
    let count = count_u32(op, gx.numel())?;
    if count == 0 {
        return Ok(());
    }
    let k = ctx.kernel(
        Shader::Pool,
        gx.dtype,
        "global_avg_backward",
        &[Binding::Read, Binding::ReadWrite],
        &[],
    )?;
    let params = ctx.uniform(&plane_params(count, gx.shape));
    rec.push(ctx.dispatch(op, &k, &params, &[gy, gx], groups_1d(count))?);
    Ok(())
}

/// This file's uniform structs and their WGSL twins (checked by
/// tests/backends.rs).
pub(crate) fn uniform_layouts() -> Vec<crate::gpu::UniformLayout> {
    vec![crate::gpu::uniform_layout!(
        "pool",
        "Params",
        Params,
        [
            count,
            ih,
            iw,
            oh,
            ow,
            kh,
            kw,
            sh,
            sw,
            pt,
            pl,
            dh,
            dw,
            hend,
            wend,
            include_pad
        ]
    )]
}
