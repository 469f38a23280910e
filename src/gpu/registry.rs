//! Every uniform struct the host writes, with its WGSL twin's name, for the
//! layout check of tests/backends.rs (which needs no GPU).

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
        crate::ops::pool::uniform_layouts(),
        crate::ops::softmax::uniform_layouts(),
        crate::ops::layer_norm::uniform_layouts(),
        crate::ops::elementwise::uniform_layouts(),
        crate::ops::binary::uniform_layouts(),
        crate::ops::conv::uniform_layouts(),
        crate::ops::concat::uniform_layouts(),
        crate::ops::affine::uniform_layouts(),
        crate::ops::activation::uniform_layouts(),
        crate::ops::loss::uniform_layouts(),
        crate::attack::minimal::uniform_layouts(),
        crate::attack::apgd::uniform_layouts(),
        crate::attack::square::uniform_layouts(),
        crate::attack::fab::uniform_layouts(),
        crate::attack::family::uniform_layouts(),
        crate::attack::batch_plan::uniform_layouts(),
    ]
    .concat()
}
