//! The bundled EfficientNet-Lite0 converted through the ONNX path
//! (tools/export_effnet_onnx.py: `torch.onnx.export` of the advex graph with its
//! normalisation inside) gives the same logits and top-1 as the bundled file on
//! the six example photos.

use std::path::PathBuf;
use std::sync::Arc;

use crate::common::*;
use advex::data::{load_image, Preprocessor};
use advex::model::Model;
use advex::onnx::{load_onnx_model, ImportOptions};
use advex::plan::GpuModel;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn logits(model: Model, pixels: &[f32], n: u32) -> Vec<f32> {
    let ctx = ctx();
    let gpu = GpuModel::new(ctx.clone(), Arc::new(model)).unwrap();
    let plan = gpu.forward_plan(n).unwrap();
    ctx.write(&plan.input, pixels);
    ctx.run_read(&[&plan.recording], &[&plan.logits])
        .unwrap()
        .remove(0)
}

fn argmax(v: &[f32]) -> usize {
    v.iter()
        .enumerate()
        .fold(
            (0, f32::NEG_INFINITY),
            |b, (i, &x)| if x > b.1 { (i, x) } else { b },
        )
        .0
}

#[test]
fn efficientnet_lite0_onnx_matches_bundled() {
    let bundled = Model::load(&root().join("weights/efficientnet_lite0.safetensors")).unwrap();
    let onnx = load_onnx_model(
        &root().join("tests/fixtures/onnx/efficientnet_lite0.onnx"),
        &ImportOptions::default(),
    )
    .unwrap();
    assert_eq!(onnx.input.to_vec(), bundled.input.to_vec(), "input shape");
    let k = bundled.num_classes() as usize;
    assert_eq!(onnx.num_classes() as usize, k, "classes");

    let pre = Preprocessor {
        channels: 3,
        height: 224,
        width: 224,
        resize: Some(256),
        filter: advex::data::Filter::Bilinear,
    };
    let mut photos: Vec<PathBuf> = std::fs::read_dir(root().join("examples/photos"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "png"))
        .collect();
    photos.sort();
    assert_eq!(photos.len(), 6, "bundled photos");
    let mut pixels = Vec::new();
    for p in &photos {
        pixels.extend(load_image(p, &pre).unwrap());
    }
    let n = photos.len() as u32;

    let want = logits(bundled, &pixels, n);
    let got = logits(onnx, &pixels, n);
    assert_eq!(got.len(), k * n as usize);
    assert_eq!(want.len(), got.len());
    let max_diff = got
        .iter()
        .zip(&want)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    eprintln!("max |logit difference| onnx vs bundled: {max_diff:e}");
    for (i, p) in photos.iter().enumerate() {
        let name = p.file_name().unwrap().to_string_lossy();
        let (g, w) = (&got[i * k..(i + 1) * k], &want[i * k..(i + 1) * k]);
        assert_close(&format!("{name} logits"), g, &to_f64(w), 1e-4);
        assert_eq!(argmax(g), argmax(w), "{name}: top-1");
    }
}
