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
