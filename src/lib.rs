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
pub mod run;

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

/// The bundled default model, EfficientNet-Lite0 with ImageNet weights
/// (`weights/efficientnet_lite0.safetensors`), carried inside the binary so
/// that an installed or copied `advex` needs no file beside it.
pub static BUNDLED_MODEL: &[u8] = include_bytes!("../weights/efficientnet_lite0.safetensors");

/// How reports and messages name the bundled model.
pub const BUNDLED_MODEL_NAME: &str = "bundled:efficientnet_lite0.safetensors";

/// Load `path`, or the [bundled model](BUNDLED_MODEL) when it is `None`.
pub fn load_model_or_bundled(path: Option<&std::path::Path>) -> Result<model::Model> {
    match path {
        Some(p) => load_model(p),
        None => Ok(model::Model::from_bytes(
            std::path::Path::new(BUNDLED_MODEL_NAME),
            BUNDLED_MODEL,
            None,
        )?),
    }
}
