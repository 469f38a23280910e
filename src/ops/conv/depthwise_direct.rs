//! Depthwise convolutions on CPU adapters (`shaders/conv/depthwise_direct.wgsl`,
//! no workgroup memory, 8 outputs per thread): `main` for 'same' stride-1
//! layers (forward, and backward with the kernel flipped) and `backward_s2`
//! for the backward pass of stride-2 layers. [`super::select`] says which
//! layers fit.

use super::{BackEpilogue, Epilogue, Geometry};
use crate::error::Result;
use crate::gpu::{Context, Recording, Shader, Tensor, WORKGROUP_DIRECT};

/// Threads per workgroup (8 outputs each).
const WG: u32 = WORKGROUP_DIRECT;

/// Parameters of `main` (the shader's header explains them).
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct DwDirectParams {
    planes: u32,
    c: u32,
    h: u32,
    w: u32,
    quads: u32,
    pairs: u32,
    items: u32,
    _pad: u32,
    act_alpha: f32,
    act_beta: f32,
    _pad1: [u32; 2],
}

/// Parameters of `backward_s2`.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct DwS2Params {
    planes: u32,
    h: u32,
    w8: u32,
    oh: u32,
    ow4: u32,
    items: u32,
    c: u32,
    act_alpha: f32,
}

/// y = act(depthwise(x, w) + b) on `[x, w, bias, y]`.
pub(super) fn forward(
    ctx: &Context,
    rec: &mut Recording,
    geo: &Geometry,
    epilogue: &Epilogue,
    tensors: [&Tensor; 4],
) -> Result<()> {
    let (mut params, shape_constants, groups) = main_params(geo, false);
    params.act_alpha = epilogue.alpha;
    params.act_beta = epilogue.beta;
    let mut constants = epilogue.constants().to_vec();
    constants.extend(shape_constants);
    let k = ctx.kernel(
        Shader::DepthwiseDirect,
        tensors[3].dtype,
        "main",
        &Epilogue::BINDINGS_DACT,
        &constants,
    )?;
    let u = ctx.uniform(&params);
    let label = format!("depthwise_conv2d{}", epilogue.suffix());
    // The input is bound at the derivative's slot (never read forward).
    let [x, w, b, y] = tensors;
    rec.push(ctx.dispatch(label, &k, &u, &[x, w, b, y, x], groups)?);
    Ok(())
}

/// gx from gy (`[gy, w, gx]`): `main` with the kernel flipped, and the
/// epilogue `back`.
pub(super) fn backward(
    ctx: &Context,
    rec: &mut Recording,
    geo: &Geometry,
    back: &BackEpilogue,
    [gy, w, gx]: [&Tensor; 3],
) -> Result<()> {
    let (mut params, shape_constants, groups) = main_params(geo, true);
    params.act_alpha = back.alpha;
    let mut constants = back.constants().to_vec();
    constants.extend(shape_constants);
    let k = ctx.kernel(
        Shader::DepthwiseDirect,
        gx.dtype,
        "main",
        &Epilogue::BINDINGS_DACT,
        &constants,
    )?;
    let u = ctx.uniform(&params);
    // No bias: the weight is bound in its place (never read).
    let label = back.label("depthwise_conv2d_backward");
    rec.push(ctx.dispatch(label, &k, &u, &[gy, w, w, gx, back.ay], groups)?);
    Ok(())
}

/// gx from gy (`[gy, w, gx]`) of a stride-2 layer: `backward_s2`, with the
/// epilogue `back`.
pub(super) fn backward_s2(
    ctx: &Context,
    rec: &mut Recording,
    geo: &Geometry,
    back: &BackEpilogue,
    [gy, w, gx]: [&Tensor; 3],
) -> Result<()> {
    let (x, y) = (geo.x, geo.y);
    let planes = x.n * x.c;
    let w8 = x.w / 8;
    let items = planes * x.h * w8;
    let [d0, d1] = back.constants();
    let constants = [
        d0,
        d1,
        ("KH", geo.kh as f64),
        ("KW", geo.kw as f64),
        ("PAD_T", geo.p.padding[0] as f64),
        ("PAD_L", geo.p.padding[1] as f64),
    ];
    let params = DwS2Params {
        planes,
        h: x.h,
        w8,
        oh: y.h,
        ow4: y.w / 4,
        items,
        c: x.c,
        act_alpha: back.alpha,
    };
    let k = ctx.kernel(
        Shader::DepthwiseDirect,
        gx.dtype,
        "backward_s2",
        &Epilogue::BINDINGS_DACT,
        &constants,
    )?;
    let u = ctx.uniform(&params);
    // No bias: the weight is bound in its place (never read).
    let groups = items.div_ceil(WG);
    let label = back.label("depthwise_conv2d_backward");
    rec.push(ctx.dispatch(label, &k, &u, &[gy, w, w, gx, back.ay], groups)?);
    Ok(())
}

/// (params, override constants, workgroups) of `main`; the backward pass
/// flips the kernel and its padding.
fn main_params(geo: &Geometry, backward: bool) -> (DwDirectParams, [(&'static str, f64); 6], u32) {
    let x = geo.x;
    let quads = x.h * x.w / 4;
    let planes = x.n * x.c;
    let pairs = quads.div_ceil(2);
    let items = planes * pairs;
    let [pt, pl, ..] = geo.p.padding;
    let (pad_t, pad_l) = if backward {
        (geo.kh - 1 - pt, geo.kw - 1 - pl)
    } else {
        (pt, pl)
    };
    let constants = [
        ("KH", geo.kh as f64),
        ("KW", geo.kw as f64),
        ("PAD_T", pad_t as f64),
        ("PAD_L", pad_l as f64),
        ("WMOD", (x.w % 4) as f64),
        ("FLIP", if backward { 1.0 } else { 0.0 }),
    ];
    let params = DwDirectParams {
        planes,
        c: x.c,
        h: x.h,
        w: x.w,
        quads,
        pairs,
        items,
        _pad: 0,
        act_alpha: 0.0,
        act_beta: 0.0,
        _pad1: [0; 2],
    };
    (params, constants, items.div_ceil(WG))
}

pub(super) fn uniform_layouts() -> Vec<crate::gpu::UniformLayout> {
    vec![
        crate::gpu::uniform_layout!(
            "depthwise_direct",
            "Params",
            DwDirectParams,
            [planes, c, h, w, quads, pairs, items, act_alpha, act_beta]
        ),
        crate::gpu::uniform_layout!(
            "depthwise_direct",
            "Params2",
            DwS2Params,
            [planes, h, w8, oh, ow4, items, c, act_alpha]
        ),
    ]
}
