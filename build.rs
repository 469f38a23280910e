//! Generates the ONNX protobuf message types (`prost`) from the vendored
//! `src/onnx/onnx.proto`. The proto is compiled by `protox`, a pure-Rust protobuf
//! compiler, so building advex needs no `protoc` binary.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=src/onnx/onnx.proto");
    let descriptors = protox::compile(["onnx.proto"], ["src/onnx"])?;
    prost_build::Config::new().compile_fds(descriptors)?;
    Ok(())
}
