//! Every shader module the host compiles, in one place: a kernel is asked for
//! by [`Shader`], which owns the module's name (the pipeline cache's key), its
//! full source (shared preludes from `shaders/common/` included) and whether
//! it runs without wgpu's injected bounds checks.
//!
//! The sources live in `shaders/`, a folder per op family: `common/` (snippets
//! prepended to others), `conv/`, `elementwise/`, `pool/`, `loss/`, `attack/`.

/// One compiled WGSL module. `st` (the storage type) is left to the prelude the
/// context adds (`alias st = f32;`, or `enable f16; alias st = f16;`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Shader {
    /// Element-wise activations, forward and backward.
    Activation,
    /// Per-channel scale and shift (folded batch norm).
    Affine,
    /// The attacks' kernels: perturbation, projection, scoring, APGD state.
    Attack,
    /// Broadcasting binary ops (add, mul, ...) and their backward.
    Binary,
    /// Channel concatenation and its backward.
    Concat,
    /// The tiled implicit-GEMM convolution (and linear layers).
    Conv,
    /// Backward of convolutions with at most 4 input channels (CPU adapters).
    ConvBackwardFew,
    /// Pointwise convolutions on CPU adapters, vec4 layout.
    ConvDirectVec4,
    /// Pointwise convolutions on CPU adapters, scalar layout.
    ConvDirectScalar,
    /// Dense 'same' and stride-2 convolutions on CPU adapters.
    ConvSameDirect,
    /// Depthwise convolution, forward and backward.
    Depthwise,
    /// Depthwise convolution on CPU adapters.
    DepthwiseDirect,
    /// The DLR losses (APGD-DLR, APGD-T).
    Dlr,
    /// Unary element-wise ops, casts, copies, reductions of the host's helpers.
    Elementwise,
    /// Pooling, forward and backward.
    Pool,
    /// Softmax, log-softmax and the cross-entropy loss.
    Softmax,
}

impl Shader {
    /// Every module.
    pub const ALL: [Shader; 16] = [
        Shader::Activation,
        Shader::Affine,
        Shader::Attack,
        Shader::Binary,
        Shader::Concat,
        Shader::Conv,
        Shader::ConvBackwardFew,
        Shader::ConvDirectVec4,
        Shader::ConvDirectScalar,
        Shader::ConvSameDirect,
        Shader::Depthwise,
        Shader::DepthwiseDirect,
        Shader::Dlr,
        Shader::Elementwise,
        Shader::Pool,
        Shader::Softmax,
    ];

    /// The module's name: labels, error messages, the pipeline cache's key.
    pub fn name(self) -> &'static str {
        match self {
            Shader::Activation => "activation",
            Shader::Affine => "affine",
            Shader::Attack => "attack",
            Shader::Binary => "binary",
            Shader::Concat => "concat",
            Shader::Conv => "conv",
            Shader::ConvBackwardFew => "conv_backward_few",
            Shader::ConvDirectVec4 => "conv_direct_vec4",
            Shader::ConvDirectScalar => "conv_direct_scalar",
            Shader::ConvSameDirect => "conv_same_direct",
            Shader::Depthwise => "depthwise",
            Shader::DepthwiseDirect => "depthwise_direct",
            Shader::Dlr => "dlr",
            Shader::Elementwise => "elementwise",
            Shader::Pool => "pool",
            Shader::Softmax => "softmax",
        }
    }

    /// The module's full source, preludes included.
    pub fn source(self) -> &'static str {
        match self {
            Shader::Activation => concat!(
                include_str!("../../shaders/common/act.wgsl"),
                include_str!("../../shaders/elementwise/activation.wgsl")
            ),
            Shader::Affine => include_str!("../../shaders/elementwise/affine.wgsl"),
            Shader::Attack => include_str!("../../shaders/attack/attack.wgsl"),
            Shader::Binary => include_str!("../../shaders/elementwise/binary.wgsl"),
            Shader::Concat => include_str!("../../shaders/elementwise/concat.wgsl"),
            Shader::Conv => concat!(
                include_str!("../../shaders/common/act.wgsl"),
                include_str!("../../shaders/conv/gemm.wgsl")
            ),
            Shader::ConvBackwardFew => include_str!("../../shaders/conv/backward_few.wgsl"),
            Shader::ConvDirectVec4 => concat!(
                include_str!("../../shaders/conv/pointwise_vec4.wgsl"),
                include_str!("../../shaders/common/act.wgsl"),
                include_str!("../../shaders/conv/pointwise_direct.wgsl")
            ),
            Shader::ConvDirectScalar => concat!(
                include_str!("../../shaders/conv/pointwise_scalar.wgsl"),
                include_str!("../../shaders/common/act.wgsl"),
                include_str!("../../shaders/conv/pointwise_direct.wgsl")
            ),
            Shader::ConvSameDirect => concat!(
                include_str!("../../shaders/common/act.wgsl"),
                include_str!("../../shaders/common/window.wgsl"),
                include_str!("../../shaders/conv/same_direct.wgsl")
            ),
            Shader::Depthwise => concat!(
                include_str!("../../shaders/common/act.wgsl"),
                include_str!("../../shaders/conv/depthwise.wgsl")
            ),
            Shader::DepthwiseDirect => concat!(
                include_str!("../../shaders/common/act.wgsl"),
                include_str!("../../shaders/common/window.wgsl"),
                include_str!("../../shaders/conv/depthwise_direct.wgsl")
            ),
            Shader::Dlr => include_str!("../../shaders/loss/dlr.wgsl"),
            Shader::Elementwise => include_str!("../../shaders/elementwise/elementwise.wgsl"),
            Shader::Pool => include_str!("../../shaders/pool/pool.wgsl"),
            Shader::Softmax => include_str!("../../shaders/loss/softmax.wgsl"),
        }
    }

    /// Whether the module runs WITHOUT wgpu's injected runtime checks (no
    /// bounds clamping of buffer / array / vector indices, no loop bounding,
    /// no integer-division guards). Only sound for shaders that guard every
    /// index themselves, whose loops all terminate and whose divisors are never
    /// zero: a shader is marked so only after such an audit (see the comment
    /// at the top of its file). Every other shader keeps the checked module.
    pub fn trusted(self) -> bool {
        matches!(self, Shader::Conv | Shader::Depthwise)
    }
}

impl std::fmt::Display for Shader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// `(name, source)` of every module, for checks that need no GPU
/// (tests/backends.rs translates each to SPIR-V, MSL and HLSL).
pub fn shader_modules() -> Vec<(&'static str, &'static str)> {
    Shader::ALL.iter().map(|s| (s.name(), s.source())).collect()
}
