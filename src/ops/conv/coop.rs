//! The implicit GEMM on cooperative matrices (`shaders/conv/coop.wgsl`):
//! tensor cores for `--precision mixed` (f16 operands, f32 accumulation).
//! Forward passes of dense and grouped layers (linear layers too) and
//! backward passes of stride-1 layers, on adapters whose cooperative
//! matrices [`crate::gpu::coop::CoopReport::check`] accepts. The GEMM and its
//! uniform block are gemm.wgsl's, with its 64 x 64 tile.

use super::gemm::{gemm_params, Tile};
use super::{Epilogue, Geometry, Pass};
use crate::error::Result;
use crate::gpu::{Binding, Context, Recording, Shader, Tensor};

/// Smallest GEMM width (n) and depth (k) worth a 16 x 16 x 16 matrix step:
/// narrower layers (a stem's 3-channel backward) stay on the scalar kernels.
pub(super) const MIN_DIM: u32 = 16;

/// Record the forward pass of `geo` on `[x, w, bias, y]`.
pub(super) fn forward(
    ctx: &Context,
    rec: &mut Recording,
    geo: &Geometry,
    epilogue: &Epilogue,
    tensors: [&Tensor; 4],
    label: String,
) -> Result<()> {
    let (mut params, _) = gemm_params(geo, Pass::Forward, Some(Tile::SQUARE))?;
    params.act_alpha = epilogue.alpha;
    params.act_beta = epilogue.beta;
    let k = ctx.kernel(
        Shader::ConvCoop,
        tensors[3].dtype,
        "forward",
        &Epilogue::BINDINGS,
        &epilogue.constants(),
    )?;
    let u = ctx.uniform(&params);
    rec.push(ctx.dispatch(label, &k, &u, &tensors, params.total_wg)?);
    Ok(())
}

/// Record the backward pass (stride 1) of `geo` on `[gy, w, gx]`.
pub(super) fn backward(
    ctx: &Context,
    rec: &mut Recording,
    geo: &Geometry,
    tensors: [&Tensor; 3],
    label: &str,
) -> Result<()> {
    let (params, _) = gemm_params(geo, Pass::Backward, Some(Tile::SQUARE))?;
    let bindings = [Binding::Read, Binding::Read, Binding::ReadWrite];
    let k = ctx.kernel(
        Shader::ConvCoop,
        tensors[2].dtype,
        "backward",
        &bindings,
        &[],
    )?;
    let u = ctx.uniform(&params);
    rec.push(ctx.dispatch(label, &k, &u, &tensors, params.total_wg)?);
    Ok(())
}

impl Geometry {
    /// Whether `coop.wgsl` covers this pass: not depthwise, the GEMM at least
    /// [`MIN_DIM`] wide and deep, and for the backward pass stride 1 (strided
    /// backward passes stay on gemm.wgsl's phases).
    pub(super) fn coop_fits(&self, pass: Pass) -> bool {
        let g = self.p.groups;
        let (icg, ocg) = (self.x.c / g, self.oc / g);
        let khw = self.kh * self.kw;
        if self.depthwise || self.y.numel() == 0 || self.x.numel() == 0 {
            return false;
        }
        match pass {
            Pass::Forward => ocg >= MIN_DIM && icg * khw >= MIN_DIM,
            Pass::Backward => self.p.stride == [1, 1] && icg >= MIN_DIM && ocg * khw >= MIN_DIM,
        }
    }
}

/// This kernel's uniform block is gemm.wgsl's `Params` (checked against its
/// WGSL twin by tests/backends.rs).
pub(super) fn uniform_layouts() -> Vec<crate::gpu::UniformLayout> {
    super::gemm::params_layout("conv_coop")
}
