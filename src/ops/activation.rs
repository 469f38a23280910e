//! Element-wise activations: relu, relu6, leaky_relu, sigmoid, silu, hardswish,
//! hardsigmoid, gelu (exact and tanh forms). One shader, the function chosen by a specialisation constant.

use crate::error::{Error, Result};
use crate::gpu::{Binding, Context, Recording, Shader, Tensor, WORKGROUP_1D};

/// An element-wise activation function.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Activation {
    Relu,
    Relu6,
    LeakyRelu {
        negative_slope: f32,
    },
    Sigmoid,
    Silu,
    Hardswish,
    /// clamp(alpha * x + beta, 0, 1); PyTorch's hardsigmoid is alpha 1/6, beta 1/2.
    Hardsigmoid {
        alpha: f32,
        beta: f32,
    },
    Identity,
    /// x Phi(x), Phi the standard normal CDF (PyTorch's `approximate='none'`).
    Gelu,
    /// PyTorch's `approximate='tanh'`: x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) / 2.
    GeluTanh,
}

impl Activation {
    /// (ACT override code, alpha, beta) as `shaders/common/act.wgsl` reads them (in
    /// activation.wgsl and in every conv kernel's fused epilogue).
    pub(crate) fn code(&self) -> (u32, f32, f32) {
        match *self {
            Activation::Relu => (0, 0.0, 0.0),
            Activation::Relu6 => (1, 0.0, 0.0),
            Activation::LeakyRelu { negative_slope } => (2, negative_slope, 0.0),
            Activation::Sigmoid => (3, 0.0, 0.0),
            Activation::Silu => (4, 0.0, 0.0),
            Activation::Hardswish => (5, 0.0, 0.0),
            Activation::Hardsigmoid { alpha, beta } => (6, alpha, beta),
            Activation::Identity => (7, 0.0, 0.0),
            Activation::Gelu => (8, 0.0, 0.0),
            Activation::GeluTanh => (9, 0.0, 0.0),
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Activation::Relu => "relu",
            Activation::Relu6 => "relu6",
            Activation::LeakyRelu { .. } => "leaky_relu",
            Activation::Sigmoid => "sigmoid",
            Activation::Silu => "silu",
            Activation::Hardswish => "hardswish",
            Activation::Hardsigmoid { .. } => "hardsigmoid",
            Activation::Identity => "identity",
            Activation::Gelu => "gelu",
            Activation::GeluTanh => "gelu_tanh",
        }
    }

    /// Whether the derivative can be computed from the output alone (see
    /// [`backward_from_output`]): relu, relu6, identity, sigmoid, hardsigmoid and
    /// leaky_relu with a slope >= 0. silu and hardswish need the input.
    pub fn derivative_from_output(&self) -> bool {
        match *self {
            Activation::Relu
            | Activation::Relu6
            | Activation::Identity
            | Activation::Sigmoid
            | Activation::Hardsigmoid { .. } => true,
            Activation::LeakyRelu { negative_slope } => negative_slope >= 0.0,
            Activation::Silu | Activation::Hardswish | Activation::Gelu | Activation::GeluTanh => {
                false
            }
        }
    }

    /// Plain f64 reference of the function (used by tests and CPU checks).
    pub fn apply_f64(&self, x: f64) -> f64 {
        match *self {
            Activation::Relu => x.max(0.0),
            Activation::Relu6 => x.clamp(0.0, 6.0),
            Activation::LeakyRelu { negative_slope } => {
                if x >= 0.0 {
                    x
                } else {
                    x * negative_slope as f64
                }
            }
            Activation::Sigmoid => 1.0 / (1.0 + (-x).exp()),
            Activation::Silu => x / (1.0 + (-x).exp()),
            Activation::Hardswish => x * (x + 3.0).clamp(0.0, 6.0) / 6.0,
            Activation::Hardsigmoid { alpha, beta } => {
                (alpha as f64 * x + beta as f64).clamp(0.0, 1.0)
            }
            Activation::Identity => x,
            Activation::Gelu => x * 0.5 * libm::erfc(-x / std::f64::consts::SQRT_2),
            Activation::GeluTanh => {
                let k = (2.0 / std::f64::consts::PI).sqrt();
                0.5 * x * (1.0 + (k * (x + 0.044715 * x * x * x)).tanh())
            }
        }
    }
}

/// Mirrors `Params` in `shaders/elementwise/activation.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    count: u32,
    act_alpha: f32,
    act_beta: f32,
    _pad: u32,
}

fn params(ctx: &Context, act: Activation, count: u64) -> Result<(wgpu::Buffer, u32, f64)> {
    let count = u32::try_from(count)
        .map_err(|_| Error::shape(act.name(), format!("{count} elements exceed u32 indexing")))?;
    let (code, alpha, beta) = act.code();
    let buf = ctx.uniform(&Params {
        count,
        act_alpha: alpha,
        act_beta: beta,
        _pad: 0,
    });
    Ok((buf, count.div_ceil(WORKGROUP_1D), code as f64))
}

/// y = act(x).
pub fn forward(
    ctx: &Context,
    rec: &mut Recording,
    act: Activation,
    x: &Tensor,
    y: &Tensor,
) -> Result<()> {
    check(act, x, y)?;
    let (p, groups, code) = params(ctx, act, x.numel())?;
    let k = ctx.kernel(
        Shader::Activation,
        x.dtype,
        "forward",
        &[Binding::Read, Binding::ReadWrite],
        &[("ACT", code)],
    )?;
    rec.push(ctx.dispatch(act.name(), &k, &p, &[x, y], groups)?);
    Ok(())
}

/// gx = gy * act'(x).
pub fn backward(
    ctx: &Context,
    rec: &mut Recording,
    act: Activation,
    x: &Tensor,
    gy: &Tensor,
    gx: &Tensor,
) -> Result<()> {
    check(act, x, gy)?;
    check(act, x, gx)?;
    let (p, groups, code) = params(ctx, act, x.numel())?;
    let k = ctx.kernel(
        Shader::Activation,
        x.dtype,
        "backward",
        &[Binding::Read, Binding::Read, Binding::ReadWrite],
        &[("ACT", code)],
    )?;
    rec.push(ctx.dispatch(
        format!("{}_backward", act.name()),
        &k,
        &p,
        &[x, gy, gx],
        groups,
    )?);
    Ok(())
}

fn check(act: Activation, a: &Tensor, b: &Tensor) -> Result<()> {
    if a.numel() != b.numel() {
        return Err(Error::shape(
            act.name(),
            format!("tensor shapes {} and {} differ", a.shape, b.shape),
        ));
    }
    Ok(())
}

/// gx = gy * act'(x), computed from the forward OUTPUT y = act(x) instead of the
/// input, so a fused conv + activation need not keep its pre-activation tensor.
/// The derivative at the kinks is PyTorch's, exactly as [`backward`] from the
/// input: relu: y > 0; relu6: 0 < y < 6; leaky_relu (slope >= 0): y > 0;
/// sigmoid: y (1 - y); hardsigmoid: alpha where 0 < y < 1; identity: 1.
/// Activations whose derivative needs the input (silu, hardswish, leaky_relu with a
/// negative slope) are refused with [`Error::Usage`].
pub fn backward_from_output(
    ctx: &Context,
    rec: &mut Recording,
    act: Activation,
    y: &Tensor,
    gy: &Tensor,
    gx: &Tensor,
) -> Result<()> {
    if !act.derivative_from_output() {
        return Err(Error::Usage(format!(
            "the derivative of {} cannot be computed from its output; use the input",
            act.name()
        )));
    }
    check(act, y, gy)?;
    check(act, y, gx)?;
    // vec4 elements when the count allows (a quarter of the loads and stores)
    let vec4 = y.numel().is_multiple_of(4);
    let (entry, count) = if vec4 {
        ("backward_from_output4", y.numel() / 4)
    } else {
        ("backward_from_output", y.numel())
    };
    let (p, groups, code) = params(ctx, act, count)?;
    let k = ctx.kernel(
        Shader::Activation,
        y.dtype,
        entry,
        &[Binding::Read, Binding::Read, Binding::ReadWrite],
        &[("ACT", code)],
    )?;
    rec.push(ctx.dispatch(
        format!("{}_backward", act.name()),
        &k,
        &p,
        &[y, gy, gx],
        groups,
    )?);
    Ok(())
}

/// This file's uniform structs and their WGSL twins (checked by
/// tests/backends.rs).
pub(crate) fn uniform_layouts() -> Vec<crate::gpu::UniformLayout> {
    vec![crate::gpu::uniform_layout!(
        "activation",
        "Params",
        Params,
        [count, act_alpha, act_beta]
    )]
}
