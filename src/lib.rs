//! advex: adversarial examples (FGSM) on the GPU, with WGSL compute shaders on wgpu.

pub mod error;
pub mod gpu;
pub mod model;
pub mod ops;

pub use error::{Error, ModelError, Result};
pub use gpu::{Context, ContextOptions, Shape, Tensor};
