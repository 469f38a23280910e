//! ONNX import: small models built in Rust with the ONNX message types, one per
//! op and per bad input, and the real `torch.onnx.export` fixtures.

use std::path::{Path, PathBuf};

use advex::onnx::{import_onnx_full, load_onnx_model, ImportOptions};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/onnx")
}

#[test]
fn fixtures_load() {
    let mut failed = Vec::new();
    for f in [
        "resnet_basic.onnx",
        "resnet_bottleneck.onnx",
        "mobilenet_v2.onnx",
        "mobilenet_v2.legacy.onnx",
        "mobilenet_v3_small.onnx",
        "efficientnet_b0.onnx",
        "squeezenet1_1.onnx",
        "squeezenet1_1.legacy.onnx",
        "vgg11_bn.onnx",
    ] {
        let p = fixtures().join(f);
        match load_onnx_model(&p, &ImportOptions::default()) {
            Ok(m) => println!(
                "{f}: {} nodes, {} params, classes {}",
                m.nodes.len(),
                m.param_count(),
                m.num_classes()
            ),
            Err(e) => {
                println!("{f}: {e}");
                failed.push(f);
            }
        }
        let _ = import_onnx_full;
    }
    assert!(failed.is_empty(), "{failed:?}");
}
