//! Depthwise convolution (`shaders/conv/depthwise.wgsl`): groups == input
//! channels, channel multiplier >= 1, any stride, dilation and padding; a
//! direct kernel with 4 outputs per thread, forward and backward.

use super::{gcd, BackEpilogue, Epilogue, Geometry};
use crate::error::{Error, Result};
use crate::gpu::{Binding, Context, Recording, Shader, Tensor, WORKGROUP_1D};

/// Threads per workgroup and outputs per thread.
const THREADS: u32 = WORKGROUP_1D;
const PER_THREAD: u32 = 4;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct DwParams {
    batch: u32,
    in_c: u32,
    in_h: u32,
    in_w: u32,
    out_c: u32,
    out_h: u32,
    out_w: u32,
    mult: u32,
    k_h: u32,
    k_w: u32,
    stride_h: u32,
    stride_w: u32,
    dil_h: u32,
    dil_w: u32,
    pad_t: u32,
    pad_l: u32,
    quads: u32,
    items: u32,
    act_alpha: f32,
    act_beta: f32,
    step_h: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

/// y = act(depthwise(x, w) + b) on `[x, w, bias, y]`; `fixed`: through
/// `forward_fixed` (no dilation; see [`super::ConvKernel::DepthwiseFixed`]).
pub(super) fn forward(
    ctx: &Context,
    rec: &mut Recording,
    geo: &Geometry,
    epilogue: &Epilogue,
    tensors: [&Tensor; 4],
    fixed: bool,
) -> Result<()> {
    let (mut params, groups) = params(geo, false)?;
    params.act_alpha = epilogue.alpha;
    params.act_beta = epilogue.beta;
    let mut constants = epilogue.constants().to_vec();
    let entry = if fixed {
        constants.extend([
            ("KH", geo.kh as f64),
            ("KW", geo.kw as f64),
            ("SH", geo.p.stride[0] as f64),
            ("SW", geo.p.stride[1] as f64),
        ]);
        "forward_fixed"
    } else {
        "forward"
    };
    let k = ctx.kernel(
        Shader::Depthwise,
        tensors[3].dtype,
        entry,
        &Epilogue::BINDINGS,
        &constants,
    )?;
    let u = ctx.uniform(&params);
    let label = format!("depthwise_conv2d{}", epilogue.suffix());
    rec.push(ctx.dispatch(label, &k, &u, &tensors, groups)?);
    Ok(())
}

/// gx from gy on `[gy, w, gx]`.
pub(super) fn backward(
    ctx: &Context,
    rec: &mut Recording,
    geo: &Geometry,
    back: &BackEpilogue,
    tensors: [&Tensor; 3],
) -> Result<()> {
    let (mut params, groups) = params(geo, true)?;
    params.act_alpha = back.alpha;
    let bindings = [
        Binding::Read,
        Binding::Read,
        Binding::ReadWrite,
        Binding::Read,
    ];
    let k = ctx.kernel(
        Shader::Depthwise,
        tensors[2].dtype,
        "backward",
        &bindings,
        &back.constants(),
    )?;
    let u = ctx.uniform(&params);
    let [gy, w, gx] = tensors;
    let label = back.label("depthwise_conv2d_backward");
    rec.push(ctx.dispatch(label, &k, &u, &[gy, w, gx, back.ay], groups)?);
    Ok(())
}

fn params(geo: &Geometry, backward: bool) -> Result<(DwParams, u32)> {
    let (x, y, p) = (geo.x, geo.y, &geo.p);
    // Threads cover (n, c, h, ceil(w / 4)) of the tensor being written.
    let t = if backward { x } else { y };
    let quads = t.w.div_ceil(PER_THREAD);
    let items = t.n as u64 * t.c as u64 * t.h as u64 * quads as u64;
    let groups = items.div_ceil(THREADS as u64);
    let too_large = || {
        Error::shape(
            "depthwise conv2d",
            format!("tensor {t} is too large for 32-bit indexing; use a smaller batch"),
        )
    };
    let (Ok(items), Ok(groups)) = (u32::try_from(items), u32::try_from(groups)) else {
        return Err(too_large());
    };
    if items.checked_add(THREADS).is_none() {
        return Err(too_large());
    }
    Ok((
        DwParams {
            batch: x.n,
            in_c: x.c,
            in_h: x.h,
            in_w: x.w,
            out_c: geo.oc,
            out_h: y.h,
            out_w: y.w,
            mult: geo.oc / x.c,
            k_h: geo.kh,
            k_w: geo.kw,
            stride_h: p.stride[0],
            stride_w: p.stride[1],
            dil_h: p.dilation[0],
            dil_w: p.dilation[1],
            pad_t: p.padding[0],
            pad_l: p.padding[1],
            quads,
            items,
            act_alpha: 0.0,
            act_beta: 0.0,
            step_h: p.stride[0] / gcd(p.dilation[0], p.stride[0]),
            _pad0: 0,
            _pad1: 0,
            _pad2: 0,
        },
        groups,
    ))
}

pub(super) fn uniform_layouts() -> Vec<crate::gpu::UniformLayout> {
    vec![crate::gpu::uniform_layout!(
        "depthwise",
        "Params",
        DwParams,
        [
            batch, in_c, in_h, in_w, out_c, out_h, out_w, mult, k_h, k_w, stride_h, stride_w,
            dil_h, dil_w, pad_t, pad_l, quads, items, act_alpha, act_beta, step_h
        ]
    )]
}
