//! Dense convolutions on CPU adapters (`shaders/conv/same_direct.wgsl`, no
//! workgroup memory): `main` for 'same' stride-1 layers (forward, and backward
//! with the kernel flipped, the reduction then over the output channels) and
//! `main_s2` for the forward pass of stride-2 layers. Both read the weights
//! repacked once per model (a tap's weights for 4 consecutive output channels
//! contiguous; flipped for the backward pass).

use super::{BackEpilogue, Epilogue, Geometry};
use crate::error::Result;
use crate::gpu::{Binding, Context, Recording, Shader, Shape, Tensor, WORKGROUP_DIRECT};
use crate::ops::prepared::{derived, PreparedWeights};

/// Threads per workgroup.
const WG: u32 = WORKGROUP_DIRECT;

/// Parameters of `same_direct.wgsl` (its header explains them).
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct SameParams {
    n: u32,
    r: u32,
    nout: u32,
    nout4: u32,
    h: u32,
    w: u32,
    quads: u32,
    pairs: u32,
    items: u32,
    act_alpha: f32,
    act_beta: f32,
    _pad: u32,
}

/// y = act(conv2d(x, w) + b) on `[x, w, bias, y]`: `main_s2` when `s2`, else
/// `main`.
pub(super) fn forward(
    ctx: &Context,
    rec: &mut Recording,
    geo: &Geometry,
    s2: bool,
    epilogue: &Epilogue,
    [x, w, bias, y]: [&Tensor; 4],
    prepared: Option<&PreparedWeights>,
) -> Result<()> {
    let (entry, (mut params, shape_constants, groups)) = if s2 {
        ("main_s2", s2_params(geo))
    } else {
        ("main", main_params(geo, false))
    };
    params.act_alpha = epilogue.alpha;
    params.act_beta = epilogue.beta;
    let wt = repack(ctx, rec, geo, &params, w, false, prepared)?;
    let mut constants = epilogue.constants().to_vec();
    constants.extend(shape_constants);
    let k = ctx.kernel(
        Shader::ConvSameDirect,
        y.dtype,
        entry,
        &Epilogue::BINDINGS_DACT,
        &constants,
    )?;
    let u = ctx.uniform(&params);
    let label = format!("conv2d{}", epilogue.suffix());
    // x is bound at the derivative's slot too (never read forward).
    rec.push(ctx.dispatch(label, &k, &u, &[x, &wt, bias, y, x], groups)?);
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
    prepared: Option<&PreparedWeights>,
) -> Result<()> {
    let (mut params, shape_constants, groups) = main_params(geo, true);
    params.act_alpha = back.alpha;
    let wt = repack(ctx, rec, geo, &params, w, true, prepared)?;
    let mut constants = back.constants().to_vec();
    constants.extend(shape_constants);
    let k = ctx.kernel(
        Shader::ConvSameDirect,
        gx.dtype,
        "main",
        &Epilogue::BINDINGS_DACT,
        &constants,
    )?;
    let u = ctx.uniform(&params);
    // No bias: the repacked weight is bound in its place (never read).
    let label = back.label("conv2d_backward");
    rec.push(ctx.dispatch(label, &k, &u, &[gy, &wt, &wt, gx, back.ay], groups)?);
    Ok(())
}

/// (params, override constants, workgroups) of `main_s2` (the parameter
/// fields as that entry reads them).
fn s2_params(geo: &Geometry) -> (SameParams, Vec<(&'static str, f64)>, u32) {
    let (x, y) = (geo.x, geo.y);
    let nout4 = 2 * geo.oc.div_ceil(8);
    let items = x.n * (nout4 / 2) * y.h * (y.w / 4);
    let params = SameParams {
        n: x.n,
        r: x.c,
        nout: geo.oc,
        nout4,
        h: x.h,
        w: x.w,
        quads: y.h,
        pairs: y.w / 4,
        items,
        act_alpha: 0.0,
        act_beta: 0.0,
        _pad: 0,
    };
    let constants = vec![
        ("KH", geo.kh as f64),
        ("KW", geo.kw as f64),
        ("PAD_T", geo.p.padding[0] as f64),
        ("PAD_L", geo.p.padding[1] as f64),
    ];
    (params, constants, items.div_ceil(WG))
}

/// (params, override constants, workgroups) of `main`; the reduction runs
/// over the input channels forward, the output channels backward.
fn main_params(geo: &Geometry, backward: bool) -> (SameParams, Vec<(&'static str, f64)>, u32) {
    let x = geo.x;
    let (r, nout) = if backward {
        (geo.oc, x.c)
    } else {
        (x.c, geo.oc)
    };
    let [pt, pl, ..] = geo.p.padding;
    let (pad_t, pad_l) = if backward {
        (geo.kh - 1 - pt, geo.kw - 1 - pl)
    } else {
        (pt, pl)
    };
    let quads = x.h * x.w / 4;
    let pairs = quads.div_ceil(2);
    let nout4 = nout.div_ceil(4);
    let items = x.n * nout4 * pairs;
    let params = SameParams {
        n: x.n,
        r,
        nout,
        nout4,
        h: x.h,
        w: x.w,
        quads,
        pairs,
        items,
        act_alpha: 0.0,
        act_beta: 0.0,
        _pad: 0,
    };
    let constants = vec![
        ("KH", geo.kh as f64),
        ("KW", geo.kw as f64),
        ("PAD_T", pad_t as f64),
        ("PAD_L", pad_l as f64),
        ("WMOD", (x.w % 4) as f64),
    ];
    (params, constants, items.div_ceil(WG))
}

/// The repacked weights (made once per model when `prepared` is given, else
/// recorded here).
fn repack(
    ctx: &Context,
    rec: &mut Recording,
    geo: &Geometry,
    params: &SameParams,
    w: &Tensor,
    backward: bool,
    prepared: Option<&PreparedWeights>,
) -> Result<Tensor> {
    let len = params.r * geo.kh * geo.kw * params.nout4 * 4;
    let key = || {
        format!(
            "same_repack flip{backward} r{} kh{} kw{} nout4 {} {:?}",
            params.r,
            geo.kh,
            geo.kw,
            params.nout4,
            bytemuck::bytes_of(params)
        )
    };
    derived(prepared, rec, w, key, |rec| {
        let wt = ctx.tensor_as(Shape::new(len, 1, 1, 1), w.dtype, "repacked weights")?;
        let constants = [
            ("KH", geo.kh as f64),
            ("KW", geo.kw as f64),
            ("FLIP", if backward { 1.0 } else { 0.0 }),
        ];
        let k = ctx.kernel(
            Shader::ConvSameDirect,
            w.dtype,
            "repack",
            &[Binding::Read, Binding::ReadWrite],
            &constants,
        )?;
        let u = ctx.uniform(&SameParams {
            items: len,
            ..*params
        });
        let label = if backward {
            "conv2d_backward_repack"
        } else {
            "conv2d_repack"
        };
        rec.push(ctx.dispatch(label, &k, &u, &[w, &wt], len.div_ceil(WG))?);
        Ok(wt)
    })
}

pub(super) fn uniform_layouts() -> Vec<crate::gpu::UniformLayout> {
    vec![crate::gpu::uniform_layout!(
        "conv_same_direct",
        "Params",
        SameParams,
        [n, r, nout, nout4, h, w, quads, pairs, items, act_alpha, act_beta]
    )]
}
