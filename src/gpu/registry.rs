//! Every shader module the host compiles, with its full source (snippets and
//! preludes included), for checks that need no GPU (tests/backends.rs
//! translates each to SPIR-V, MSL and HLSL). The ops keep their own sources;
//! this list names them all in one place.

/// `(name, source)` of every module; `st` is left to the caller's prelude
/// (`alias st = f32;`, or `enable f16; alias st = f16;`).
pub fn shader_modules() -> Vec<(&'static str, &'static str)> {
    use crate::ops;
    vec![
        ("activation", ops::activation::SHADER),
        ("affine", ops::affine::SHADER),
        ("attack", crate::attack::fgsm::ATTACK_SHADER),
        ("binary", ops::binary::SHADER),
        ("concat", ops::concat::SHADER),
        ("conv", ops::conv::GEMM_SHADER),
        ("conv_backward_few", ops::conv::FEW_SHADER),
        ("conv_direct_vec4", ops::conv_direct::VEC4),
        ("conv_direct_scalar", ops::conv_direct::SCALAR),
        ("conv_same_direct", ops::conv::SAME_SHADER),
        ("depthwise", ops::conv::DW_SHADER),
        ("depthwise_direct", ops::conv::DW_DIRECT_SHADER),
        ("dlr", ops::loss::DLR_SHADER),
        ("elementwise", ops::elementwise::SHADER),
        ("pool", ops::pool::SHADER),
        ("softmax", ops::softmax::SHADER),
    ]
}

/// A Rust uniform struct's layout, to compare with its WGSL twin: the module
/// and struct name in WGSL, the Rust size and each named (non-padding) field's
/// offset.
#[derive(Debug, Clone)]
pub struct UniformLayout {
    pub module: &'static str,
    pub wgsl: &'static str,
    pub size: usize,
    pub fields: Vec<(&'static str, usize)>,
}

/// `uniform_layout!(module, wgsl_struct, RustType, [field, ...])`.
macro_rules! uniform_layout {
    ($module:expr, $wgsl:expr, $ty:ty, [$($f:ident),* $(,)?]) => {
        $crate::gpu::UniformLayout {
            module: $module,
            wgsl: $wgsl,
            size: std::mem::size_of::<$ty>(),
            fields: vec![$((stringify!($f), std::mem::offset_of!($ty, $f))),*],
        }
    };
}
pub(crate) use uniform_layout;

/// Every uniform struct the host writes, with its WGSL twin.
pub fn uniform_layouts() -> Vec<UniformLayout> {
    [
        crate::ops::conv_direct::uniform_layouts(),
        crate::ops::pool::uniform_layouts(),
        crate::ops::softmax::uniform_layouts(),
        crate::ops::elementwise::uniform_layouts(),
        crate::ops::binary::uniform_layouts(),
        crate::ops::conv::uniform_layouts(),
        crate::ops::concat::uniform_layouts(),
        crate::ops::affine::uniform_layouts(),
        crate::ops::activation::uniform_layouts(),
        crate::ops::loss::uniform_layouts(),
        crate::attack::minimal::uniform_layouts(),
        crate::attack::apgd::uniform_layouts(),
        crate::attack::family::uniform_layouts(),
        crate::attack::fgsm::uniform_layouts(),
    ]
    .concat()
}
