//! advex: adversarial examples (FGSM) on the GPU, with WGSL compute shaders on wgpu.
//!
//! - [`gpu`]: device context, buffers, pipeline cache, recordings.
//! - [`ops`]: the WGSL kernels' host side, forward and backward to the input.
//! - [`model`]: the model file format (safetensors + JSON graph), loading, checks.
//! - [`plan`]: a model on the GPU and its recorded forward/backward passes.

pub mod attack;
pub mod bench;
pub mod data;
pub mod error;
pub mod gpu;
pub mod model;
pub mod onnx;
pub mod ops;
pub mod plan;
pub mod report;

pub use error::{Error, ModelError, Result};
pub use gpu::{Context, ContextOptions, DType, KernelStyle, Shape, Tensor};

/// Load a model file: an advex `.safetensors` (or its sidecar form), or an
/// `.onnx` file converted on the fly with default import options.
pub fn load_model(path: &std::path::Path) -> Result<model::Model> {
    if onnx::is_onnx_path(path) {
        onnx::load_onnx_model(path, &onnx::ImportOptions::default())
    } else {
        Ok(model::Model::load(path)?)
    }
}

/// The bundled default model, looked up next to the executable's crate root at
/// build time, then relative to the working directory.
pub fn default_model_path() -> std::path::PathBuf {
    let rel = std::path::Path::new("weights").join("efficientnet_lite0.safetensors");
    let built = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(&rel);
    if built.exists() {
        built
    } else {
        rel
    }
}
