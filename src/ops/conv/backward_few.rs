//! The backward pass of convolutions with at most 4 input channels (stems) on
//! CPU adapters (`shaders/conv/backward_few.wgsl`): no workgroup memory, vec4
//! loads, 4 pixels per thread, phase by phase for strided layers.

use super::{gcd, Geometry};
use crate::error::Result;
use crate::gpu::{Binding, Context, Recording, Shader, Tensor, WORKGROUP_DIRECT};

/// Threads per workgroup (4 pixels each).
const WG: u32 = WORKGROUP_DIRECT;

/// Parameters of `backward_few.wgsl` (its header explains them).
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct FewParams {
    batch: u32,
    in_c: u32,
    in_h: u32,
    in_w: u32,
    out_c: u32,
    out_h: u32,
    out_w: u32,
    k_h: u32,
    k_w: u32,
    stride_h: u32,
    stride_w: u32,
    dil_h: u32,
    dil_w: u32,
    pad_t: u32,
    pad_l: u32,
    step_h: u32,
    step_w: u32,
    ph_rows: u32,
    ph_cols: u32,
    tiles: u32,
    total_wg: u32,
    _pad: [u32; 3],
}

/// gx from gy on `[gy, w, gx]`.
pub(super) fn backward(
    ctx: &Context,
    rec: &mut Recording,
    geo: &Geometry,
    tensors: [&Tensor; 3],
) -> Result<()> {
    let params = params(geo);
    let bindings = [Binding::Read, Binding::Read, Binding::ReadWrite];
    let k = ctx.kernel(
        Shader::ConvBackwardFew,
        tensors[2].dtype,
        "backward",
        &bindings,
        &[],
    )?;
    let u = ctx.uniform(&params);
    rec.push(ctx.dispatch("conv2d_backward", &k, &u, &tensors, params.total_wg)?);
    Ok(())
}

fn params(geo: &Geometry) -> FewParams {
    let (x, y, p) = (geo.x, geo.y, &geo.p);
    let [sh, sw] = p.stride;
    let [dh, dw] = p.dilation;
    let ph_rows = x.h.div_ceil(sh);
    let ph_cols = x.w.div_ceil(sw);
    let per_phase = x.n * ph_rows * ph_cols;
    let tiles = per_phase.div_ceil(4 * WG);
    FewParams {
        batch: x.n,
        in_c: x.c,
        in_h: x.h,
        in_w: x.w,
        out_c: geo.oc,
        out_h: y.h,
        out_w: y.w,
        k_h: geo.kh,
        k_w: geo.kw,
        stride_h: sh,
        stride_w: sw,
        dil_h: dh,
        dil_w: dw,
        pad_t: p.padding[0],
        pad_l: p.padding[1],
        step_h: sh / gcd(dh, sh),
        step_w: sw / gcd(dw, sw),
        ph_rows,
        ph_cols,
        tiles,
        total_wg: tiles * sh * sw,
        _pad: [0; 3],
    }
}

pub(super) fn uniform_layouts() -> Vec<crate::gpu::UniformLayout> {
    vec![crate::gpu::uniform_layout!(
        "conv_backward_few",
        "Params",
        FewParams,
        [
            batch, in_c, in_h, in_w, out_c, out_h, out_w, k_h, k_w, stride_h, stride_w, dil_h,
            dil_w, pad_t, pad_l, step_h, step_w, ph_rows, ph_cols, tiles, total_wg
        ]
    )]
}
