//! Pointwise convolutions (1x1, stride 1, no padding) and linear layers on CPU
//! adapters: `shaders/conv/pointwise_direct.wgsl`, a register-blocked GEMM
//! without workgroup memory.
//!
//! [`super::select`] picks it on CPU adapters for pointwise layers with input
//! channels per group a multiple of 4 and at least 256 pixels in all (with
//! fewer, linear layers at small batch, the tiled GEMM is faster). Two layouts,
//! picked per layer ([`PwLayout`]): `vec4` (pixels per image a multiple of 4:
//! loads and stores 4 pixels at a time) and `scalar` (any size, e.g. 7 x 7
//! maps and linear layers at batch 256 and more). Two entries differ in how
//! they read the weights: `b_nk` (`w` as [n][k]) and `b_kn` (`[k][n]`, 4 FMAs
//! per weight load): the backward pass reads `w` through `b_kn`, the forward
//! pass `w` transposed per group (made once per model) when the output
//! channels per group come in fours, else `w` through `b_nk`.

use super::BackEpilogue;
use crate::error::Result;
use crate::gpu::{Binding, Context, Recording, Shader, Tensor, WORKGROUP_DIRECT};
use crate::ops::activation::Activation;
use crate::ops::elementwise;
use crate::ops::prepared::{derived, PreparedWeights};

/// One layout: its module and the tile constants its prelude sets (G pixel
/// groups of 4 per thread, TN_F / TN_B columns forward / backward).
#[derive(Clone, Copy)]
struct Layout {
    shader: Shader,
    g: u32,
    tn_f: u32,
    tn_b: u32,
}

/// The two layouts of the pointwise kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PwLayout {
    /// Pixels per image a multiple of 4: 4 consecutive pixels per load and store.
    Vec4,
    /// Any size: a thread's 4 pixels WG apart, loaded one by one.
    Scalar,
}

impl PwLayout {
    fn spec(self) -> Layout {
        match self {
            PwLayout::Vec4 => LAYOUT_VEC4,
            PwLayout::Scalar => LAYOUT_SCALAR,
        }
    }
}

const LAYOUT_VEC4: Layout = Layout {
    shader: Shader::ConvDirectVec4,
    g: 2,
    tn_f: 4,
    tn_b: 8,
};
const LAYOUT_SCALAR: Layout = Layout {
    shader: Shader::ConvDirectScalar,
    g: 1,
    tn_f: 16,
    tn_b: 16,
};

/// Threads per workgroup.
const WG: u32 = WORKGROUP_DIRECT;
/// Fewest GEMM rows (pixels) the direct kernels take: one scalar-layout tile.
const MIN_PIXELS: u64 = 4 * WG as u64;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    m: u32,
    hw: u32,
    kdim: u32,
    ncols: u32,
    a_c: u32,
    out_c: u32,
    tiles_m: u32,
    tiles_n: u32,
    total_wg: u32,
    act_alpha: f32,
    act_beta: f32,
    _pad: u32,
}

/// A pointwise convolution seen as per-group GEMMs over `batch * hw` pixels.
#[derive(Debug, Clone, Copy)]
pub(super) struct Pointwise {
    pub batch: u32,
    pub hw: u32,
    pub in_c: u32,
    pub out_c: u32,
    pub groups: u32,
}

impl Pointwise {
    fn icg(&self) -> u32 {
        self.in_c / self.groups
    }
    fn ocg(&self) -> u32 {
        self.out_c / self.groups
    }

    /// Whether the direct kernels take this layer (on a CPU adapter).
    pub fn eligible(&self) -> bool {
        self.groups > 0
            && self.in_c.is_multiple_of(self.groups)
            && self.out_c.is_multiple_of(self.groups)
            && self.icg().is_multiple_of(4)
            && self.ocg() > 0
            && self.batch > 0
            && self.hw > 0
            // at least one full tile of pixels: with fewer (linear layers at small
            // batch) most SIMD lanes would idle and the tiled GEMM is faster
            && self.batch as u64 * self.hw as u64 >= MIN_PIXELS
            // u32 pixel and element offsets (the tiled path has the same bound)
            && (self.batch as u64 * self.hw as u64 * self.in_c.max(self.out_c) as u64) < u32::MAX as u64
    }

    pub fn layout(&self) -> PwLayout {
        if self.hw.is_multiple_of(4) {
            PwLayout::Vec4
        } else {
            PwLayout::Scalar
        }
    }

    fn params(&self, kdim: u32, ncols: u32, a_c: u32, out_c: u32, tn: u32) -> Params {
        let g = self.layout().spec().g;
        let m = self.batch * self.hw;
        let tiles_m = m.div_ceil(4 * g * WG);
        let tiles_n = ncols.div_ceil(tn);
        Params {
            m,
            hw: self.hw,
            kdim,
            ncols,
            a_c,
            out_c,
            tiles_m,
            tiles_n,
            total_wg: tiles_m * tiles_n * self.groups,
            act_alpha: 0.0,
            act_beta: 0.0,
            _pad: 0,
        }
    }
}

/// y = act(pointwise_conv(x, w) + b); shapes validated by the caller.
/// Bindings of both entries: a, w, y, bias, and the activation output the
/// backward pass reads with DACT.
const BINDINGS: [Binding; 5] = [
    Binding::Read,
    Binding::Read,
    Binding::ReadWrite,
    Binding::Read,
    Binding::Read,
];

#[allow(clippy::too_many_arguments)]
pub(super) fn forward(
    ctx: &Context,
    rec: &mut Recording,
    pw: &Pointwise,
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    act: Activation,
    y: &Tensor,
    label: String,
    prepared: Option<&PreparedWeights>,
) -> Result<()> {
    let l = pw.layout().spec();
    let (code, alpha, beta) = act.code();
    let constants = [
        ("HAS_BIAS", if b.is_some() { 1.0 } else { 0.0 }),
        ("ACT", code as f64),
    ];
    // Without a bias the weight is bound in its place (never read).
    let bias = b.unwrap_or(w);
    // With output channels in fours: w^T per group and the [k][n] entry (4 FMAs
    // per weight load); else the [n][k] entry on w itself.
    let (entry, tn, wk) = if pw.ocg().is_multiple_of(4) {
        let (g, o, i) = (pw.groups, pw.ocg(), pw.icg());
        let wt = derived(
            prepared,
            rec,
            w,
            || format!("transpose g{g} o{o} i{i}"),
            |r| {
                let wt = ctx.tensor_as(w.shape, w.dtype, "transposed weights")?;
                elementwise::transpose(ctx, r, w, &wt, g, o, i)?;
                Ok(wt)
            },
        )?;
        ("b_kn", l.tn_b, wt)
    } else {
        ("b_nk", l.tn_f, w.clone())
    };
    let mut params = pw.params(pw.icg(), pw.ocg(), pw.in_c, pw.out_c, tn);
    params.act_alpha = alpha;
    params.act_beta = beta;
    let k = ctx.kernel(l.shader, x.dtype, entry, &BINDINGS, &constants)?;
    let u = ctx.uniform(&params);
    // x is bound at the derivative's slot too (never read forward).
    rec.push(ctx.dispatch(label, &k, &u, &[x, &wk, y, bias, x], params.total_wg)?);
    Ok(())
}

/// gx = pointwise_conv_backward(gy, w), overwriting gx; shapes validated by the
/// caller.
/// gx from gy through `b_kn`, with the epilogue `back`.
#[allow(clippy::too_many_arguments)]
pub(super) fn backward(
    ctx: &Context,
    rec: &mut Recording,
    pw: &Pointwise,
    back: &BackEpilogue,
    gy: &Tensor,
    w: &Tensor,
    gx: &Tensor,
    label: &str,
) -> Result<()> {
    let l = pw.layout().spec();
    let mut params = pw.params(pw.ocg(), pw.icg(), pw.out_c, pw.in_c, l.tn_b);
    params.act_alpha = back.alpha;
    let k = ctx.kernel(l.shader, gx.dtype, "b_kn", &BINDINGS, &back.constants())?;
    let u = ctx.uniform(&params);
    // No bias: the weight is bound in its place (never read).
    rec.push(ctx.dispatch(label, &k, &u, &[gy, w, gx, w, back.ay], params.total_wg)?);
    Ok(())
}

pub(super) fn uniform_layouts() -> Vec<crate::gpu::UniformLayout> {
    vec![crate::gpu::uniform_layout!(
        "conv_direct_vec4",
        "Params",
        Params,
        [m, hw, kdim, ncols, a_c, out_c, tiles_m, tiles_n, total_wg, act_alpha, act_beta]
    )]
}
