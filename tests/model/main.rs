//! Models in and out: the advex model format, ONNX import (op by op, a fuzzer,
//! parity with PyTorch fixtures, EfficientNet-Lite0 end to end) and the
//! image preprocessing, in one test binary.

#[path = "../common/mod.rs"]
mod common;
#[path = "../onnx_build/mod.rs"]
mod onnx_build;

mod model_format;
mod onnx_effnet;
mod onnx_fuzz;
mod onnx_import;
mod onnx_parity;
mod preprocess;
