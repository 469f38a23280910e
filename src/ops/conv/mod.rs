//! 2-D convolution, forward and backward to the input.
//!
//! One file per kernel family, and one place that chooses among them
//! (`select.rs`, used by the forward and backward passes and by the autotune):
//! - `gemm.rs` (`shaders/conv/gemm.wgsl`): the tiled implicit GEMM, any dense or
//!   grouped convolution and `linear`; the general case, and every layer on GPUs
//!   but the depthwise ones;
//! - `coop.rs` (`shaders/conv/coop.wgsl`): the same GEMM on cooperative
//!   matrices (tensor cores, f16 operands and f32 accumulation) for
//!   `--precision mixed`, where the adapter has them;
//! - `depthwise.rs` (`shaders/conv/depthwise.wgsl`): depthwise convolutions, a
//!   direct kernel with 4 outputs per thread;
//! - on CPU adapters ([`crate::gpu::KernelStyle::Direct`]), families without workgroup
//!   memory, as llvmpipe charges per load instruction and per barrier:
//!   `pointwise.rs` (1x1 and linear layers), `same_direct.rs` (dense 'same' and
//!   stride-2 layers), `depthwise_direct.rs` and `backward_few.rs` (the backward
//!   pass of stems).
//!
//! Every forward kernel applies bias and an optional activation in its
//! epilogue ([`forward_act`]). Shapes travel in a uniform block, so one
//! pipeline per (entry, bias flag, activation, tile) serves every layer.
//!
//! `gemm.wgsl` and `depthwise.wgsl` run as trusted modules, without wgpu's
//! injected bounds checks (see [`crate::gpu::Shader::trusted`]): they guard
//! every index themselves; keep it so.

mod backward_few;
mod coop;
mod depthwise;
mod depthwise_direct;
mod gemm;
mod pointwise;
mod same_direct;
mod select;
mod tune;

pub use pointwise::PwLayout;
pub use select::{ConvKernel, Pass};
pub use tune::{tune, tune_key, tuned_tiles, TuneCount};

use crate::error::{Error, Result};
use crate::gpu::{Binding, Context, Recording, Shape, Tensor};
use crate::ops::activation::Activation;
use crate::ops::params::Conv2dParams;
use crate::ops::prepared::PreparedWeights;

/// y = conv2d(x, w) (+ b). `w` is `[oc, ic / groups, kh, kw]`, `b` is `[1, oc, 1, 1]`
/// (any shape of `oc` elements), `y` must have the shape [`Conv2dParams::out_shape`]
/// gives. Same as [`forward_act`] with [`Activation::Identity`].
pub fn forward(
    ctx: &Context,
    rec: &mut Recording,
    p: &Conv2dParams,
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    y: &Tensor,
) -> Result<()> {
    forward_act(ctx, rec, p, x, w, b, Activation::Identity, y)
}

/// y = act(conv2d(x, w) (+ b)) in one dispatch: the activation runs in the kernel's
/// epilogue (same formulas as [`crate::ops::activation::forward`]), so the
/// pre-activation tensor is never written. For the backward pass of the fused op,
/// [`crate::ops::activation::backward_from_output`] turns the output gradient into
/// the pre-activation gradient from `y` alone (relu, relu6, ...), then [`backward`].
#[allow(clippy::too_many_arguments)]
pub fn forward_act(
    ctx: &Context,
    rec: &mut Recording,
    p: &Conv2dParams,
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    act: Activation,
    y: &Tensor,
) -> Result<()> {
    forward_act_with(ctx, rec, p, x, w, b, act, y, None)
}

/// [`forward_act`] with weight copies (transposed, repacked) taken from a
/// model's [`PreparedWeights`] instead of remade in the recording.
#[allow(clippy::too_many_arguments)]
pub fn forward_act_with(
    ctx: &Context,
    rec: &mut Recording,
    p: &Conv2dParams,
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    act: Activation,
    y: &Tensor,
    prepared: Option<&PreparedWeights>,
) -> Result<()> {
    let geo = Geometry::new(p, x.shape, w.shape, y.shape, "output")?;
    if let Some(b) = b {
        if b.numel() != geo.oc as u64 {
            return Err(Error::shape(
                "conv2d",
                format!(
                    "bias has shape {} ({} values) but the convolution has {} output channels",
                    b.shape,
                    b.numel(),
                    geo.oc
                ),
            ));
        }
    }
    check_index_range(&[x, w, y])?;
    if y.numel() == 0 {
        return Ok(());
    }
    let epilogue = Epilogue::new(b.is_some(), act);
    // Without a bias the weight is bound in its place (never read).
    let tensors = [x, w, b.unwrap_or(w), y];
    let label = || format!("conv2d{}", epilogue.suffix());
    match select::select(&geo, ctx.kernel_style(), ctx.coop(), Pass::Forward) {
        ConvKernel::Gemm => gemm::forward(ctx, rec, &geo, None, &epilogue, tensors, label()),
        ConvKernel::Coop => coop::forward(ctx, rec, &geo, &epilogue, tensors, label()),
        ConvKernel::Depthwise => depthwise::forward(ctx, rec, &geo, &epilogue, tensors, false),
        ConvKernel::DepthwiseFixed => depthwise::forward(ctx, rec, &geo, &epilogue, tensors, true),
        ConvKernel::DepthwiseDirect => {
            depthwise_direct::forward(ctx, rec, &geo, &epilogue, tensors)
        }
        ConvKernel::PointwiseDirect(_) => {
            let pw = geo.pointwise().expect("select checked it");
            pointwise::forward(ctx, rec, &pw, x, w, b, act, y, label(), prepared)
        }
        ConvKernel::SameDirect => {
            same_direct::forward(ctx, rec, &geo, false, &epilogue, tensors, prepared)
        }
        ConvKernel::SameDirectS2 => {
            same_direct::forward(ctx, rec, &geo, true, &epilogue, tensors, prepared)
        }
        k @ (ConvKernel::DepthwiseDirectS2 | ConvKernel::FewInputs | ConvKernel::Clear) => {
            unreachable!("select picks {k:?} for backward passes only")
        }
    }
}

/// gx = d(sum gy * conv2d(x, w)) / dx: the gradient with respect to the input only.
/// `gx` (shape of the forward input) is overwritten; `gy` has the forward output's
/// shape.
pub fn backward(
    ctx: &Context,
    rec: &mut Recording,
    p: &Conv2dParams,
    gy: &Tensor,
    w: &Tensor,
    gx: &Tensor,
) -> Result<()> {
    backward_with(ctx, rec, p, gy, w, gx, None)
}

/// [`backward`] with weight copies from a model's [`PreparedWeights`].
pub fn backward_with(
    ctx: &Context,
    rec: &mut Recording,
    p: &Conv2dParams,
    gy: &Tensor,
    w: &Tensor,
    gx: &Tensor,
    prepared: Option<&PreparedWeights>,
) -> Result<()> {
    backward_through(ctx, rec, p, gy, w, gx, None, prepared)
}

/// The activation whose derivative a backward pass applies as it writes
/// (see [`backward_through`]): `act` ran in the epilogue of the convolution
/// before, and `y` is its output (the tensor this convolution read).
#[derive(Clone, Copy)]
pub struct Through<'a> {
    pub act: Activation,
    pub y: &'a Tensor,
}

/// gx = backward(gy) * act'(y) in one pass, with `through = Some((act, y))`:
/// the backward pass of this convolution and of the activation fused into the
/// convolution before it, whose output `y` (the forward input of this one, of
/// `gx`'s shape) gives the derivative (`act` must be one whose derivative its
/// output determines). Without the fusion the activation's backward is a pass
/// of its own that reads y and this gradient and writes another: two fewer
/// passes over the tensor, and one dispatch less. Kernels without the
/// epilogue refuse; [`backward_fuses`] says beforehand. `through = None` is
/// [`backward_with`].
#[allow(clippy::too_many_arguments)]
pub fn backward_through(
    ctx: &Context,
    rec: &mut Recording,
    p: &Conv2dParams,
    gy: &Tensor,
    w: &Tensor,
    gx: &Tensor,
    through: Option<Through>,
    prepared: Option<&PreparedWeights>,
) -> Result<()> {
    let geo = Geometry::new(p, gx.shape, w.shape, gy.shape, "output gradient")?;
    check_index_range(&[gy, w, gx])?;
    let kernel = select::select(&geo, ctx.kernel_style(), ctx.coop(), Pass::Backward);
    let back = BackEpilogue::new(through, gy, gx)?;
    if back.dact() && !kernel.fuses_dact() {
        return Err(Error::Validation {
            context: "conv2d backward".into(),
            message: format!(
                "kernel {kernel:?} applies no activation derivative; record the activation's backward pass apart"
            ),
        });
    }
    if gx.numel() == 0 {
        return Ok(());
    }
    let tensors = [gy, w, gx];
    let label = back.label("conv2d_backward");
    let label = label.as_str();
    match kernel {
        ConvKernel::Gemm => gemm::backward(ctx, rec, &geo, None, &back, tensors, label),
        ConvKernel::Coop => coop::backward(ctx, rec, &geo, tensors, label),
        ConvKernel::Depthwise => depthwise::backward(ctx, rec, &geo, &back, tensors),
        ConvKernel::DepthwiseDirect => depthwise_direct::backward(ctx, rec, &geo, &back, tensors),
        ConvKernel::DepthwiseDirectS2 => {
            depthwise_direct::backward_s2(ctx, rec, &geo, &back, tensors)
        }
        ConvKernel::PointwiseDirect(_) => {
            let pw = geo.pointwise().expect("select checked it");
            pointwise::backward(ctx, rec, &pw, &back, gy, w, gx, label)
        }
        ConvKernel::SameDirect => same_direct::backward(ctx, rec, &geo, &back, tensors, prepared),
        ConvKernel::FewInputs => backward_few::backward(ctx, rec, &geo, tensors),
        ConvKernel::Clear => {
            // No output elements (zero channels): the gradient is zero.
            rec.push(crate::gpu::Step::Clear {
                buffer: gx.buffer.clone(),
            });
            Ok(())
        }
        k @ (ConvKernel::SameDirectS2 | ConvKernel::DepthwiseFixed) => {
            unreachable!("select picks {k:?} for forward passes only")
        }
    }
}

/// Whether [`backward_through`] can apply an activation's derivative for the
/// backward pass of `p` with input shape `x` and weight shape `w` on `ctx`
/// (the kernel it selects has the epilogue). False for shapes it refuses.
pub fn backward_fuses(ctx: &Context, p: &Conv2dParams, x: Shape, w: Shape) -> bool {
    kernel_for(ctx, p, x, w, Pass::Backward).is_ok_and(|k| k.fuses_dact())
}

/// The kernel the `pass` of the convolution `p` with input shape `x` and
/// weight shape `w` runs on, on `ctx`: what [`forward_act`] and [`backward`]
/// record (tests assert it).
pub fn kernel_for(
    ctx: &Context,
    p: &Conv2dParams,
    x: Shape,
    w: Shape,
    pass: Pass,
) -> Result<ConvKernel> {
    let y = p.out_shape(x, w.dims())?;
    let geo = Geometry::new(p, x, w, y, "output")?;
    Ok(select::select(&geo, ctx.kernel_style(), ctx.coop(), pass))
}

/// The forward kernels' epilogue: bias flag and activation (override
/// constants), the activation's parameters (uniforms) and the label suffix.
pub(super) struct Epilogue {
    has_bias: bool,
    act: Activation,
    code: u32,
    alpha: f32,
    beta: f32,
}

impl Epilogue {
    /// Bindings of a kernel with an epilogue: x, w, bias, y.
    const BINDINGS: [Binding; 4] = [
        Binding::Read,
        Binding::Read,
        Binding::Read,
        Binding::ReadWrite,
    ];

    /// Bindings of a module whose entry serves both a forward pass with an
    /// epilogue and a backward pass that applies an activation's derivative
    /// (`depthwise_direct.wgsl`, `same_direct.wgsl`): x or gy, w, bias, y or
    /// gx, and the activation output the backward pass reads.
    const BINDINGS_DACT: [Binding; 5] = [
        Binding::Read,
        Binding::Read,
        Binding::Read,
        Binding::ReadWrite,
        Binding::Read,
    ];

    fn new(has_bias: bool, act: Activation) -> Self {
        let (code, alpha, beta) = act.code();
        Epilogue {
            has_bias,
            act,
            code,
            alpha,
            beta,
        }
    }

    fn constants(&self) -> [(&'static str, f64); 2] {
        [
            ("HAS_BIAS", if self.has_bias { 1.0 } else { 0.0 }),
            ("ACT", self.code as f64),
        ]
    }

    /// "" or "+relu6" (after the op's name in a dispatch's label).
    fn suffix(&self) -> String {
        match self.act {
            Activation::Identity => String::new(),
            a => format!("+{}", a.name()),
        }
    }
}

/// The backward kernels' epilogue: with `dact`, the gradient is multiplied by
/// the derivative of activation `code` (parameter `alpha`) read from `ay`, the
/// activation's output, as it is written. Without, `ay` is the output gradient
/// (bound, never read: the kernels' layouts always hold the binding).
pub(super) struct BackEpilogue<'a> {
    /// `Identity`: no derivative applied.
    act: Activation,
    /// The activation's parameter (uniform `act_alpha`).
    alpha: f32,
    ay: &'a Tensor,
}

impl<'a> BackEpilogue<'a> {
    fn new(through: Option<Through<'a>>, gy: &'a Tensor, gx: &Tensor) -> Result<Self> {
        let Some(Through { act, y }) = through else {
            return Ok(BackEpilogue {
                act: Activation::Identity,
                alpha: 0.0,
                ay: gy,
            });
        };
        let context = || "conv2d backward through an activation".to_string();
        if !act.derivative_from_output() {
            return Err(Error::Validation {
                context: context(),
                message: format!(
                    "{}'s derivative needs its input; record the activation's backward pass apart",
                    act.name()
                ),
            });
        }
        if y.shape != gx.shape || y.dtype != gx.dtype {
            return Err(Error::shape(
                "conv2d backward",
                format!(
                    "the activation's output {} ({:?}) must have the gradient's shape {} ({:?})",
                    y.shape, y.dtype, gx.shape, gx.dtype
                ),
            ));
        }
        Ok(BackEpilogue {
            act,
            alpha: act.code().1,
            ay: y,
        })
    }

    /// Whether a derivative is applied (DACT).
    fn dact(&self) -> bool {
        self.act != Activation::Identity
    }

    fn constants(&self) -> [(&'static str, f64); 2] {
        [
            ("DACT", if self.dact() { 1.0 } else { 0.0 }),
            ("ACT", self.act.code().0 as f64),
        ]
    }

    /// `base`, or `base+relu6'` when the derivative is applied.
    fn label(&self, base: &str) -> String {
        if self.dact() {
            format!("{base}+{}'", self.act.name())
        } else {
            base.to_string()
        }
    }
}

/// Validated convolution geometry.
pub(super) struct Geometry {
    x: Shape,
    y: Shape,
    oc: u32,
    kh: u32,
    kw: u32,
    p: Conv2dParams,
    depthwise: bool,
}

impl Geometry {
    fn new(p: &Conv2dParams, x: Shape, w: Shape, y: Shape, y_name: &str) -> Result<Self> {
        let wd = w.dims();
        let out = p.out_shape(x, wd)?;
        if y != out {
            return Err(Error::shape(
                "conv2d",
                format!(
                    "{y_name} has shape {y}, but input {x} with weight {w} and {p:?} gives {out}"
                ),
            ));
        }
        Ok(Geometry {
            x,
            y,
            oc: wd[0],
            kh: wd[2],
            kw: wd[3],
            p: *p,
            depthwise: p.is_depthwise(x, wd),
        })
    }

    /// The layer as a pointwise GEMM (1x1 kernel, stride 1, no padding), if it is one.
    fn pointwise(&self) -> Option<pointwise::Pointwise> {
        (self.kh == 1
            && self.kw == 1
            && self.p.stride == [1, 1]
            && self.p.padding == [0; 4]
            && !self.depthwise)
            .then_some(pointwise::Pointwise {
                batch: self.x.n,
                hw: self.x.h * self.x.w,
                in_c: self.x.c,
                out_c: self.oc,
                groups: self.p.groups,
            })
    }
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// Kernels index with u32: every tensor must have fewer than 2^32 elements.
fn check_index_range(tensors: &[&Tensor]) -> Result<()> {
    for t in tensors {
        if t.numel() >= u32::MAX as u64 {
            return Err(Error::shape(
                "conv2d",
                format!(
                    "tensor {} is too large for 32-bit indexing; use a smaller batch",
                    t.shape
                ),
            ));
        }
    }
    Ok(())
}

/// The uniform structs of every convolution kernel and their WGSL twins
/// (checked by tests/backends.rs).
pub(crate) fn uniform_layouts() -> Vec<crate::gpu::UniformLayout> {
    [
        gemm::uniform_layouts(),
        coop::uniform_layouts(),
        depthwise::uniform_layouts(),
        depthwise_direct::uniform_layouts(),
        same_direct::uniform_layouts(),
        backward_few::uniform_layouts(),
        pointwise::uniform_layouts(),
    ]
    .concat()
}
