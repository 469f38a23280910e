//! ONNX import parity with PyTorch: every fixture in tests/fixtures/onnx (real
//! `torch.onnx.export` files) is imported, run on the GPU and compared with the
//! PyTorch reference stored beside it: logits (1e-4 relative), the sign of the
//! input gradient (>= 99.9% agreement where |g| > 1e-6 max|g|) and FGSM top-1 at
//! each eps.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::common::*;
use advex::attack::{parse_eps_list, FgsmPlan, Target};
use advex::onnx::{load_onnx_model, ImportOptions};
use advex::plan::GpuModel;
use serde_json::Value;

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/onnx")
}

fn check(family: &str, file: &str) {
    let fx: Value = serde_json::from_str(
        &std::fs::read_to_string(dir().join(format!("{family}.json"))).unwrap(),
    )
    .unwrap();
    let model = Arc::new(load_onnx_model(&dir().join(file), &ImportOptions::default()).unwrap());
    let shape: Vec<u32> = fx["input_shape"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    assert_eq!(model.input.to_vec(), shape, "{file}: input shape");
    let k = fx["num_classes"].as_u64().unwrap() as usize;
    assert_eq!(model.num_classes() as usize, k, "{file}: classes");
    let gpu = GpuModel::new(ctx(), model).unwrap();

    let images = fx["images"].as_array().unwrap();
    let n = images.len();
    let mut pixels = Vec::new();
    let mut labels = Vec::new();
    for im in images {
        pixels.extend(
            im["u8"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as f32 / 255.0),
        );
        labels.push(im["label"].as_u64().unwrap() as u32);
    }

    // Logits and input gradient.
    let plan = gpu.gradient_plan(n as u32, 1.0).unwrap();
    plan.set_batch(&gpu.ctx, &pixels, &labels).unwrap();
    let out = plan.run(&gpu.ctx).unwrap();
    let item = pixels.len() / n;
    let (mut worst_logit, mut worst_rate) = (0.0f64, 1.0f64);
    for (i, im) in images.iter().enumerate() {
        let want: Vec<f64> = im["logits"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        for (g, w) in out.logits[i * k..(i + 1) * k].iter().zip(&want) {
            worst_logit = worst_logit.max((*g as f64 - w).abs() / scale.max(1e-12));
        }
        assert_close(
            &format!("{file} image {i} logits"),
            &out.logits[i * k..(i + 1) * k],
            &want,
            1e-4,
        );
        let sign = im["grad"]["sign"].as_str().unwrap().as_bytes();
        assert_eq!(sign.len(), item, "{file}: gradient length");
        let max_abs = im["grad"]["max_abs"].as_f64().unwrap();
        let g = &out.input_grad[i * item..(i + 1) * item];
        let (mut agree, mut counted) = (0usize, 0usize);
        for (j, &s) in sign.iter().enumerate() {
            let v = g[j] as f64;
            if v.abs() <= 1e-6 * max_abs {
                continue;
            }
            counted += 1;
            let ours = if v > 0.0 { b'+' } else { b'-' };
            agree += (ours == s) as usize;
        }
        let rate = agree as f64 / counted.max(1) as f64;
        worst_rate = worst_rate.min(rate);
        assert!(
            counted > item / 4 && rate >= 0.999,
            "{file} image {i}: gradient signs agree on {agree} of {counted} ({:.4}%)",
            rate * 100.0
        );
    }

    // FGSM top-1 at each eps (8-bit rounding, as the fixture's rule).
    let eps_text: Vec<String> = images[0]["fgsm"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["eps"].as_str().unwrap().to_string())
        .collect();
    let eps = parse_eps_list(&eps_text.join(",")).unwrap();
    let fgsm = FgsmPlan::new(&gpu, n as u32, &eps, true, Target::Untargeted).unwrap();
    let given: Vec<Option<u32>> = labels.iter().map(|&l| Some(l)).collect();
    let res = fgsm.run(&pixels, &given, false).unwrap();
    let mut labels_checked = 0;
    for (i, im) in images.iter().enumerate() {
        labels_checked += im["fgsm"].as_array().unwrap().len() + 1;
        assert_eq!(
            res.clean[i].class, labels[i],
            "{file} image {i}: clean top-1"
        );
        for (e, f) in im["fgsm"].as_array().unwrap().iter().enumerate() {
            assert_eq!(
                res.adv[e][i].class as u64,
                f["top1"].as_u64().unwrap(),
                "{file} image {i}: FGSM top-1 at eps {}",
                f["eps"]
            );
        }
    }
    // Run with --nocapture to see the parity figures.
    println!(
        "parity {file}: worst logit error {worst_logit:.2e} of max|logit|, gradient sign agreement >= {:.3}%, {labels_checked}/{labels_checked} labels (clean + FGSM) equal",
        worst_rate * 100.0
    );
}

#[test]
fn resnet_basic() {
    check("resnet_basic", "resnet_basic.onnx");
}

#[test]
fn resnet_bottleneck() {
    check("resnet_bottleneck", "resnet_bottleneck.onnx");
}

#[test]
fn mobilenet_v2() {
    check("mobilenet_v2", "mobilenet_v2.onnx");
    check("mobilenet_v2", "mobilenet_v2.legacy.onnx");
}

#[test]
fn mobilenet_v3_small() {
    check("mobilenet_v3_small", "mobilenet_v3_small.onnx");
}

#[test]
fn efficientnet_b0() {
    check("efficientnet_b0", "efficientnet_b0.onnx");
}

#[test]
fn vgg11_bn() {
    check("vgg11_bn", "vgg11_bn.onnx");
}

#[test]
fn squeezenet1_1() {
    check("squeezenet1_1", "squeezenet1_1.onnx");
    check("squeezenet1_1", "squeezenet1_1.legacy.onnx");
}

#[test]
fn convnext() {
    check("convnext", "convnext.onnx");
    check("convnext", "convnext.legacy.onnx");
}

#[test]
fn wide_resnet() {
    check("wide_resnet", "wide_resnet.onnx");
}
