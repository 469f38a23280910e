//! A whole random network mixing every op: GPU logits match the CPU reference,
//! the GPU input gradient matches central finite differences of the f64 CPU
//! forward, and forward + backward is a single submit.

use std::sync::Arc;

use crate::common::builder::ModelBuilder;
use crate::common::*;
use advex::model::{Dtype, Model};
use advex::plan::GpuModel;
use rand::Rng;
use serde_json::json;

/// 30 nodes: every op of the format, a residual add, squeeze-excite, two
/// pooling branches joined by concat, a BatchNorm that cannot be folded, and a
/// final softmax (dropped for the loss).
fn every_op_network(seed: u64) -> ModelBuilder {
    let mut b = ModelBuilder::new("every_op", [3, 12, 11], seed);
    b.set(
        "preprocess",
        json!({"mean": [0.4, 0.5, 0.6], "std": [0.2, 0.25, 0.3]}),
    );
    b.node(
        "norm",
        "normalize",
        &["input"],
        json!({"mean": [0.1, 0.0, -0.1], "std": [1.5, 1.0, 0.8]}),
        [3, 12, 11],
    );
    b.conv("c1", "norm", 8, 3, 1, [1, 1, 1, 1], 1, true);
    b.bn("c1_bn", "c1");
    b.unary("c1_act", "relu6", "c1_bn");
    b.conv("dw", "c1_act", 8, 3, 2, [0, 0, 1, 1], 8, false); // TF-SAME depthwise, stride 2
    b.bn("dw_bn", "dw");
    b.unary("dw_act", "silu", "dw_bn");
    b.conv("pw", "dw_act", 12, 1, 1, [0, 0, 0, 0], 1, false);
    b.unary("pw_act", "hardswish", "pw");
    b.global_avg_pool("se_pool", "pw_act");
    b.conv("se_reduce", "se_pool", 4, 1, 1, [0, 0, 0, 0], 1, true);
    b.unary("se_relu", "relu", "se_reduce");
    b.conv("se_expand", "se_relu", 12, 1, 1, [0, 0, 0, 0], 1, true);
    b.unary("se_gate", "hardsigmoid", "se_expand");
    let s = b.shape("pw_act");
    b.node("se_mul", "mul", &["pw_act", "se_gate"], json!({}), s);
    b.conv("gconv", "se_mul", 12, 3, 1, [1, 1, 1, 1], 3, true);
    b.node(
        "gconv_act",
        "leaky_relu",
        &["gconv"],
        json!({"negative_slope": 0.1}),
        s,
    );
    b.node("res", "add", &["gconv_act", "se_mul"], json!({}), s);
    b.bn("res_bn", "res"); // not after a conv: stays an affine op
                           // ConvNeXt's layer norm over channels, then GELU
    let lnw = b.tensor("ln.weight", &[12], 0.5, 1.5);
    let lnb = b.tensor("ln.bias", &[12], -0.5, 0.5);
    b.node(
        "ln",
        "layer_norm",
        &["res_bn"],
        json!({"weight": lnw, "bias": lnb, "eps": 1e-6}),
        s,
    );
    b.unary("ln_gelu", "gelu", "ln");
    // dilated 3x3, padding 2 keeps 6x6
    let w = b.tensor("dil.weight", &[8, 12, 3, 3], -0.2, 0.2);
    b.node(
        "dil",
        "conv2d",
        &["ln_gelu"],
        json!({"weight": w, "padding": 2, "dilation": 2}),
        [8, 6, 6],
    );
    b.unary("dil_act", "sigmoid", "dil");
    b.pool("mp", "max_pool", "dil_act", 3, 2, 1);
    b.pool("ap", "avg_pool", "dil_act", 3, 2, 1);
    b.node(
        "cat",
        "concat",
        &["mp", "ap"],
        json!({"axis": 1}),
        [16, 3, 3],
    );
    b.conv("c5", "cat", 10, 3, 1, [1, 1, 1, 1], 1, true);
    b.unary("c5_act", "relu", "c5");
    b.unary("drop", "dropout", "c5_act");
    b.flatten("flat", "drop");
    b.linear("fc", "flat", 7, true);
    b.unary("prob", "softmax", "fc");
    b
}

#[test]
fn whole_network_gradient_matches_finite_differences() {
    let dir = tempfile::tempdir().unwrap();
    let path = every_op_network(7).write(dir.path(), "every_op.safetensors", Dtype::F32);
    let model = Arc::new(Model::load(&path).unwrap());
    assert!(model.nodes.len() >= 15, "{} nodes", model.nodes.len());
    // A context of its own, so other tests' submits do not count here.
    let ctx = Arc::new(advex::Context::new(advex::ContextOptions::default()).unwrap());
    let gpu = GpuModel::new(ctx.clone(), model.clone()).unwrap();
    let n = 2u32;
    let item = gpu.input_shape(1).numel() as usize;
    let x: Vec<f32> = random(11, n as usize * item)
        .iter()
        .map(|v| 0.5 + 0.5 * v)
        .collect();
    let labels = [3u32, 5];
    let plan = gpu.gradient_plan(n, 1.0).unwrap();
    plan.set_batch(&ctx, &x, &labels).unwrap();
    let before = ctx.submit_count();
    let out = plan.run(&ctx).unwrap();
    assert_eq!(
        ctx.submit_count() - before,
        1,
        "forward + loss + backward must be one submit"
    );
    assert!(plan.forward.dispatch_count() + plan.backward.dispatch_count() > 40);
    // Activations fused into a convolution and read by one convolution have no
    // backward pass of their own: the reading convolution's backward applies
    // the derivative (c1's relu6 in dw's). se_reduce's relu keeps its pass
    // where se_expand's backward runs on the stems' kernel (4 input channels,
    // CPU adapters), and c5's relu, which feeds the linear layer, keeps its own.
    let backward: Vec<&str> = plan
        .backward
        .steps
        .iter()
        .filter_map(|s| match s {
            advex::gpu::Step::Dispatch { label, .. } => Some(label.as_str()),
            _ => None,
        })
        .collect();
    let count = |l: &str| backward.iter().filter(|b| **b == l).count();
    assert_eq!(count("depthwise_conv2d_backward+relu6'"), 1, "{backward:?}");
    assert_eq!(count("relu6_backward"), 0, "{backward:?}");
    let stems = ctx.kernel_style() == advex::KernelStyle::Direct;
    let relu_apart = if stems { 2 } else { 1 };
    assert_eq!(count("relu_backward"), relu_apart, "{backward:?}");
    assert_eq!(
        count("conv2d_backward+relu'"),
        2 - relu_apart,
        "{backward:?}"
    );

    // Logits against the f64 reference.
    let xd = to_f64(&x);
    let vals = ref_graph::forward(&model, &xd, n);
    let logits = &vals[ref_graph::logits_node(&model)];
    assert_close("logits", &out.logits, logits, 1e-4);

    // Directional derivatives along random directions, and single coordinates.
    let g: Vec<f64> = to_f64(&out.input_grad);
    let gnorm = g.iter().map(|v| v * v).sum::<f64>().sqrt();
    assert!(gnorm > 1e-3, "gradient is degenerate ({gnorm})");
    let h = 1e-5;
    let fd = |dir: &[f64]| {
        let plus: Vec<f64> = xd.iter().zip(dir).map(|(a, d)| a + h * d).collect();
        let minus: Vec<f64> = xd.iter().zip(dir).map(|(a, d)| a - h * d).collect();
        (ref_graph::loss(&model, &plus, n, &labels) - ref_graph::loss(&model, &minus, n, &labels))
            / (2.0 * h)
    };
    let mut r = rng(5);
    for t in 0..6 {
        let dir: Vec<f64> = (0..xd.len())
            .map(|_| r.random::<f64>() * 2.0 - 1.0)
            .collect();
        let want = fd(&dir);
        let got: f64 = g.iter().zip(&dir).map(|(a, b)| a * b).sum();
        // f32 rounding in each element adds up like a random walk: bound it by
        // the gradient's norm, far below what a wrong term would cost.
        let abs_sum: f64 = g.iter().zip(&dir).map(|(a, b)| (a * b).abs()).sum();
        assert!(
            (got - want).abs() <= 1e-3 * want.abs() + 1e-3 * gnorm,
            "direction {t}: GPU gradient gives {got}, finite differences {want} (|g| {gnorm:.3e}, sum |g d| {abs_sum:.3e})"
        );
    }
    let gmax = g.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    for _ in 0..24 {
        let i = r.random_range(0..xd.len());
        let mut dir = vec![0.0; xd.len()];
        dir[i] = 1.0;
        let want = fd(&dir);
        assert!(
            (g[i] - want).abs() <= 1e-3 * want.abs() + 1e-4 * gmax,
            "element {i}: GPU gradient {} vs finite differences {want}",
            g[i]
        );
    }
}

#[test]
fn f16_and_bf16_models_run() {
    for dtype in [Dtype::F16, Dtype::BF16] {
        let dir = tempfile::tempdir().unwrap();
        let path = every_op_network(3).write(dir.path(), "m.safetensors", dtype);
        let model = Arc::new(Model::load(&path).unwrap());
        let gpu = GpuModel::new(ctx(), model.clone()).unwrap();
        let item = gpu.input_shape(1).numel() as usize;
        let x: Vec<f32> = random(1, item).iter().map(|v| 0.5 + 0.5 * v).collect();
        let plan = gpu.gradient_plan(1, 1.0).unwrap();
        plan.set_batch(&ctx(), &x, &[1]).unwrap();
        let out = plan.run(&ctx()).unwrap();
        let vals = ref_graph::forward(&model, &to_f64(&x), 1);
        assert_close(
            &format!("{dtype:?} logits"),
            &out.logits,
            &vals[ref_graph::logits_node(&model)],
            1e-4,
        );
    }
}

/// Weight copies (transposed pointwise weights, repacked 3x3 weights) are made
/// once per model, not recorded into every pass: the bundled EfficientNet's
/// plans hold no transpose or repack dispatch, a second plan makes no new
/// copy, and a plan built when the copies exist gives the same logits as the
/// plan of a fresh model that makes them (submitted before it first runs).
#[test]
fn weight_copies_are_made_once_per_model() {
    let ctx = ctx();
    let model = Arc::new(advex::load_model_or_bundled(None).unwrap());
    let gpu = GpuModel::new(ctx.clone(), model.clone()).unwrap();
    let labels = |recs: &[&advex::gpu::Recording]| -> Vec<String> {
        recs.iter()
            .flat_map(|r| r.steps.iter())
            .filter_map(|s| match s {
                advex::gpu::Step::Dispatch { label, .. } => Some(label.clone()),
                _ => None,
            })
            .collect()
    };
    let grad = gpu.gradient_plan(1, 1.0).unwrap();
    let made = gpu.prepared.len();
    let all = labels(&[&grad.forward, &grad.backward]);
    assert!(
        !all.iter().any(|l| l.contains("repack") || l == "transpose"),
        "a plan still makes weight copies: {:?}",
        all.iter()
            .filter(|l| l.contains("repack") || *l == "transpose")
            .collect::<Vec<_>>()
    );
    let fwd = gpu.forward_plan(1).unwrap();
    assert!(!labels(&[&fwd.recording])
        .iter()
        .any(|l| l.contains("repack") || l == "transpose"));
    assert_eq!(gpu.prepared.len(), made, "a second plan made copies again");
    let img: Vec<f32> = random(5, 3 * 224 * 224)
        .iter()
        .map(|v| v * 0.5 + 0.5)
        .collect();
    let run = |g: &GpuModel| {
        let p = g.forward_plan(1).unwrap();
        ctx.write(&p.input, &img);
        ctx.run_read(&[&p.recording], &[&p.logits])
            .unwrap()
            .remove(0)
    };
    let fresh = GpuModel::new(ctx.clone(), model).unwrap();
    assert_eq!(run(&gpu), run(&fresh));
}
