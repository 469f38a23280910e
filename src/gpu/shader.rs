//! Every shader module the host compiles, in one place: a kernel is asked for
//! by [`Shader`], which owns the module's name (the pipeline cache's key), its
//! full source (shared preludes from `shaders/common/` included) and whether
//! it runs without wgpu's injected bounds checks.
//!
//! The sources live in `shaders/`, a folder per op family: `common/` (snippets
//! prepended to others), `conv/`, `elementwise/`, `pool/`, `loss/`, `attack/`.

/// A module's source: `shaders/common/grid.wgsl` (grid indexing, shared by
/// every kernel), then the named files under `shaders/`, in order.
macro_rules! module {
    ($($file:literal),+) => {
        concat!(
            include_str!("../../shaders/common/grid.wgsl"),
            $(include_str!(concat!("../../shaders/", $file))),+
        )
    };
}

/// Threads per workgroup of the element-wise (1-D) kernels and of per-image
/// reductions (a power of two).
pub const WORKGROUP_1D: u32 = 256;
/// Threads per workgroup of the kernels with one thread per image or row
/// (attack bookkeeping, the DLR loss).
pub const WORKGROUP_IMAGES: u32 = 64;
/// Threads per workgroup of the direct convolution kernels for CPU adapters.
pub const WORKGROUP_DIRECT: u32 = 64;

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
    /// The implicit-GEMM convolution on cooperative matrices (tensor cores;
    /// `--precision mixed` on adapters that have them).
    ConvCoop,
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
    /// The Square Attack's start, proposals and bookkeeping.
    Square,
    /// FAB-T's projections, steps and bookkeeping.
    Fab,
    /// Layer normalisation over channels, forward and backward.
    LayerNorm,
}

impl Shader {
    /// Every module.
    pub const ALL: [Shader; 20] = [
        Shader::Activation,
        Shader::Affine,
        Shader::Attack,
        Shader::Binary,
        Shader::Concat,
        Shader::Conv,
        Shader::ConvCoop,
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
        Shader::Square,
        Shader::Fab,
        Shader::LayerNorm,
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
            Shader::ConvCoop => "conv_coop",
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
            Shader::Square => "square",
            Shader::Fab => "fab",
            Shader::LayerNorm => "layer_norm",
        }
    }

    /// The module's full source, preludes included (every module starts with
    /// `shaders/common/grid.wgsl`).
    pub fn source(self) -> &'static str {
        match self {
            Shader::Activation => module!("common/act.wgsl", "elementwise/activation.wgsl"),
            Shader::Affine => module!("elementwise/affine.wgsl"),
            Shader::Attack => module!("common/random.wgsl", "attack/attack.wgsl"),
            Shader::Binary => module!("elementwise/binary.wgsl"),
            Shader::Concat => module!("elementwise/concat.wgsl"),
            Shader::Conv => module!("common/act.wgsl", "conv/gemm_params.wgsl", "conv/gemm.wgsl"),
            Shader::ConvCoop => {
                module!("common/act.wgsl", "conv/gemm_params.wgsl", "conv/coop.wgsl")
            }
            Shader::ConvBackwardFew => module!("conv/backward_few.wgsl"),
            Shader::ConvDirectVec4 => module!(
                "conv/pointwise_vec4.wgsl",
                "common/act.wgsl",
                "conv/pointwise_direct.wgsl"
            ),
            Shader::ConvDirectScalar => module!(
                "conv/pointwise_scalar.wgsl",
                "common/act.wgsl",
                "conv/pointwise_direct.wgsl"
            ),
            Shader::ConvSameDirect => module!(
                "common/act.wgsl",
                "common/window.wgsl",
                "conv/same_direct.wgsl"
            ),
            Shader::Depthwise => module!("common/act.wgsl", "conv/depthwise.wgsl"),
            Shader::DepthwiseDirect => module!(
                "common/act.wgsl",
                "common/window.wgsl",
                "conv/depthwise_direct.wgsl"
            ),
            Shader::Dlr => module!("loss/dlr.wgsl"),
            Shader::Elementwise => module!("elementwise/elementwise.wgsl"),
            Shader::Pool => module!("pool/pool.wgsl"),
            Shader::Softmax => module!("loss/softmax.wgsl"),
            Shader::Square => {
                module!(
                    "common/random.wgsl",
                    "common/reduce.wgsl",
                    "attack/square.wgsl"
                )
            }
            Shader::Fab => module!("common/reduce.wgsl", "attack/fab.wgsl"),
            Shader::LayerNorm => module!("common/reduce.wgsl", "norm/layer_norm.wgsl"),
        }
    }

    /// The workgroup sizes the module's `override`s take. The WGSL declares
    /// them without a default; [`crate::Context::kernel`] supplies these, so
    /// the sizes the host divides work by are written only here. (`Conv`'s
    /// 256 threads are structural to its tiles and written in gemm.wgsl.)
    pub fn workgroup_constants(self) -> &'static [(&'static str, u32)] {
        match self {
            Shader::Conv | Shader::ConvCoop => &[],
            Shader::Attack | Shader::Square | Shader::Fab => {
                &[("WG", WORKGROUP_1D), ("WG_IMAGES", WORKGROUP_IMAGES)]
            }
            Shader::Dlr => &[("WG", WORKGROUP_IMAGES)],
            Shader::ConvBackwardFew
            | Shader::ConvDirectVec4
            | Shader::ConvDirectScalar
            | Shader::ConvSameDirect
            | Shader::DepthwiseDirect => &[("WG", WORKGROUP_DIRECT)],
            Shader::Activation
            | Shader::Affine
            | Shader::Binary
            | Shader::Concat
            | Shader::Depthwise
            | Shader::Elementwise
            | Shader::Pool
            | Shader::Softmax
            | Shader::LayerNorm => &[("WG", WORKGROUP_1D)],
        }
    }

    /// Enable directives the module needs, written before everything else
    /// (the storage-type prelude included): the cooperative-matrix GEMM's
    /// f16 operands, cooperative matrices and subgroup ids.
    pub fn enables(self) -> &'static str {
        match self {
            Shader::ConvCoop => "enable f16;\nenable wgpu_cooperative_matrix;\n",
            _ => "",
        }
    }

    /// The device features the module needs beyond the storage type's.
    pub fn features(self) -> wgpu::Features {
        match self {
            Shader::ConvCoop => {
                wgpu::Features::SHADER_F16
                    | wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX
                    | wgpu::Features::SUBGROUP
            }
            _ => wgpu::Features::empty(),
        }
    }

    /// The module's full text for storage type `dtype`: its enables, the
    /// storage-type alias, then [`Shader::source`].
    pub fn text(self, dtype: crate::gpu::DType) -> String {
        let enables = self.enables();
        let alias = match dtype {
            crate::gpu::DType::F32 => "alias st = f32;\n",
            crate::gpu::DType::F16 if enables.contains("enable f16;") => "alias st = f16;\n",
            crate::gpu::DType::F16 => "enable f16;\nalias st = f16;\n",
        };
        format!("{enables}{alias}{}", self.source())
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

/// `(name, enables, source)` of every module, for checks that need no GPU
/// (tests/backends.rs translates each to SPIR-V, MSL and HLSL; the text the
/// host compiles is [`Shader::text`]: enables, storage alias, source).
pub fn shader_modules() -> Vec<(&'static str, &'static str, &'static str)> {
    Shader::ALL
        .iter()
        .map(|s| (s.name(), s.enables(), s.source()))
        .collect()
}
