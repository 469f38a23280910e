//! The half-precision path (`--precision f16`) beyond single ops: the ops'
//! own f16 tests run their f32 checks with `St::F16` beside the f32 ones
//! (conv, linear, activation, pool, binary, concat, affine, softmax and the
//! loss); here, the casts and element-wise helpers, dtype checks at dispatch,
//! and whole models in f16 against f32 (labels and gradient signs).
//!
//! Inputs are rounded to f16 before the reference sees them, so the reference
//! computes exactly what the GPU was given; the kernels accumulate in f32 and
//! round once on store, so results agree to about f16's half-ulp (2^-11
//! relative) of each element, plus the rounding of intermediate f16 values for
//! composite checks.

use std::sync::Arc;

use crate::common::*;
use advex::attack::{parse_eps_list, FgsmPlan, Target};
use advex::gpu::{Recording, Shape};
use advex::model::Model;
use advex::ops::{activation, elementwise, Activation};
use advex::plan::GpuModel;
use advex::{Context, DType, KernelStyle};

/// Per-element tolerance of f16 results (relative; `assert_close` adds a tenth
/// of it times the largest magnitude as absolute slack).
const TOL: f64 = 2e-3;

fn f16_ctx(style: KernelStyle) -> Arc<Context> {
    let c = ctx_style(style);
    assert!(
        c.supports_f16(),
        "adapter {} lacks SHADER_F16 (lavapipe has it)",
        c.summary.name
    );
    c
}

/// The storage-type conversions and the element-wise helpers in f16: casts
/// both ways (exact on f16 values), cast-and-scale (the f16 plans' input
/// gradient), accumulate and scale.
#[test]
fn f16_casts_accumulate_and_scale_match_reference() {
    let ctx = f16_ctx(KernelStyle::Tiled);
    let (n, k) = (3usize, 37usize);
    let s = Shape::new(n as u32, k as u32, 1, 1);
    let zv = St::F16.stored(&random(1, n * k).iter().map(|v| v * 6.0).collect::<Vec<_>>());
    let gyv = St::F16.random(2, n * k);
    let z = St::F16.upload(&ctx, &zv, s, "z");
    // casts: f16 -> f32 -> f16 and scale, accumulate
    let z32 = ctx.tensor(s, "z32").unwrap();
    let z16 = St::F16.poisoned(&ctx, s, "out");
    let acc = St::F16.upload(&ctx, &gyv, s, "acc");
    let scaled = St::F16.poisoned(&ctx, s, "out");

    let mut rec = Recording::new();
    elementwise::cast(&ctx, &mut rec, &z, &z32).unwrap();
    elementwise::cast(&ctx, &mut rec, &z32, &z16).unwrap();
    elementwise::accumulate(&ctx, &mut rec, &z, &acc).unwrap();
    elementwise::scale(&ctx, &mut rec, &z, 0.25, &scaled).unwrap();
    let got = ctx.run_read(&[&rec], &[&z32, &z16, &acc, &scaled]).unwrap();
    assert_eq!(got[0], zv, "f16 -> f32 cast is exact");
    assert_eq!(got[1], zv, "f32 -> f16 cast of f16 values is exact");
    // Cast and scale in one pass (the f16 plans' input gradient), f16 -> f32.
    let half32 = ctx.tensor(s, "half32").unwrap();
    let mut rec = Recording::new();
    elementwise::cast_scaled(&ctx, &mut rec, &z, &half32, 0.5).unwrap();
    assert!(elementwise::cast_scaled(&ctx, &mut rec, &z32, &half32, 0.5).is_err());
    let halved = ctx.run_read(&[&rec], &[&half32]).unwrap().remove(0);
    let want_half: Vec<f32> = zv.iter().map(|v| v * 0.5).collect();
    assert_eq!(halved, want_half, "cast_scaled");
    let want_acc: Vec<f64> = zv.iter().zip(&gyv).map(|(a, b)| (a + b) as f64).collect();
    assert_close("f16 accumulate", &got[2], &want_acc, TOL);
    let want_scaled: Vec<f64> = zv.iter().map(|&v| v as f64 * 0.25).collect();
    assert_close("f16 scale", &got[3], &want_scaled, 1e-12);
}

#[test]
fn dtype_mismatch_is_refused_at_dispatch() {
    let ctx = f16_ctx(KernelStyle::Tiled);
    let s = Shape::new(1, 8, 1, 1);
    let x16 = St::F16.upload(&ctx, &[0.5; 8], s, "x16");
    let y32 = ctx.tensor(s, "y").unwrap();
    let mut rec = Recording::new();
    let err = activation::forward(&ctx, &mut rec, Activation::Relu, &x16, &y32)
        .expect_err("an f32 output for an f16 kernel must be refused");
    let msg = err.to_string();
    assert!(msg.contains("f16") && msg.contains("f32"), "{msg}");
    // f16 tensors occupy half the bytes, rounded up to whole words.
    let odd = ctx
        .tensor_as(Shape::new(1, 3, 1, 1), DType::F16, "odd")
        .unwrap();
    assert_eq!(odd.bytes(), 8);
    assert_eq!(x16.bytes(), 16);
}

/// Sign agreement of two gradients over the elements where the f32 one is not
/// negligibly small (1e-3 of its largest magnitude).
fn sign_agreement(g16: &[f32], g32: &[f32]) -> f64 {
    let max = g32.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let (mut same, mut total) = (0usize, 0usize);
    for (a, b) in g16.iter().zip(g32) {
        if b.abs() > 1e-3 * max {
            total += 1;
            same += (a.signum() == b.signum()) as usize;
        }
    }
    same as f64 / total.max(1) as f64
}

#[test]
fn f16_every_op_network_matches_reference() {
    let dir = tempfile::tempdir().unwrap();
    let path =
        builder::every_op(7).write(dir.path(), "every_op.safetensors", advex::model::Dtype::F32);
    let model = Arc::new(Model::load(&path).unwrap());
    let ctx = f16_ctx(KernelStyle::Tiled);
    let g16 = GpuModel::with_precision(ctx.clone(), model.clone(), DType::F16).unwrap();
    let g32 = GpuModel::new(ctx.clone(), model.clone()).unwrap();
    let n = 2u32;
    let item = g16.input_shape(1).numel() as usize;
    let x: Vec<f32> = random(11, n as usize * item)
        .iter()
        .map(|v| 0.5 + 0.5 * v)
        .collect();
    let labels = [3u32, 5];
    let run = |g: &GpuModel| {
        let plan = g.gradient_plan(n, 1.0).unwrap();
        plan.set_batch(&ctx, &x, &labels).unwrap();
        assert_eq!(plan.logits.dtype, g.dtype);
        assert_eq!(
            plan.input_grad.dtype,
            DType::F32,
            "input gradients leave in f32"
        );
        plan.run(&ctx).unwrap()
    };
    let (o16, o32) = (run(&g16), run(&g32));
    let vals = crate::common::ref_graph::forward(&model, &to_f64(&x), n);
    let want = &vals[crate::common::ref_graph::logits_node(&model)];
    // f16 storage of every intermediate value: errors of a few f16 ulps.
    assert_close("f16 every-op logits", &o16.logits, want, 2e-2);
    assert_close("f16 every-op loss", &o16.loss, &to_f64(&o32.loss), 2e-2);
    let agree = sign_agreement(&o16.input_grad, &o32.input_grad);
    assert!(
        agree >= 0.97,
        "gradient sign agreement f16 vs f32: {agree:.4}"
    );
    // The seed's scale is undone: magnitudes match f32's.
    let n16: f64 = o16
        .input_grad
        .iter()
        .map(|v| (*v as f64).powi(2))
        .sum::<f64>()
        .sqrt();
    let n32: f64 = o32
        .input_grad
        .iter()
        .map(|v| (*v as f64).powi(2))
        .sum::<f64>()
        .sqrt();
    assert!(
        (n16 / n32 - 1.0).abs() < 0.05,
        "gradient norms f16 {n16:.4e} vs f32 {n32:.4e}"
    );
}

/// What f16 changes on a bundled model and image folder, against f32.
struct Agreement {
    images: usize,
    clean_same: usize,
    adv_same: usize,
    adv_total: usize,
    /// Sign agreement of the input gradients (see [`sign_agreement`]).
    signs: f64,
    /// Fraction of input-gradient elements that are exactly zero, f32 and f16.
    zeros: [f64; 2],
}

fn f16_against_f32(model_file: &str, images: &str, eps: &str) -> Agreement {
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let model = Arc::new(Model::load(&root.join(model_file)).unwrap());
    let [c, hh, ww] = model.input;
    let prep = advex::data::Preprocessor {
        channels: c,
        height: hh,
        width: ww,
        resize: model.preprocess.resize,
        filter: advex::data::Filter::from_name(&model.preprocess.interpolation),
    };
    let entries = advex::data::discover(&root.join(images)).unwrap().entries;
    assert!(entries.len() >= 6, "bundled images missing in {images}");
    let mut pixels = Vec::new();
    for e in &entries {
        pixels.extend(advex::data::load_image(&e.path, &prep).unwrap());
    }
    let n = entries.len() as u32;
    let labels = vec![None; n as usize];
    let eps = parse_eps_list(eps).unwrap();
    let ctx = f16_ctx(KernelStyle::Direct);
    let mut outs = Vec::new();
    let mut grads = Vec::new();
    for dtype in [DType::F32, DType::F16] {
        let gpu = GpuModel::with_precision(ctx.clone(), model.clone(), dtype).unwrap();
        let plan = FgsmPlan::new(&gpu, n, &eps, true, Target::Untargeted).unwrap();
        outs.push(plan.run(&pixels, &labels, false).unwrap());
        // The input gradient at the clean predictions (what FGSM took the sign of).
        let gp = gpu.gradient_plan(n, 1.0).unwrap();
        let clean: Vec<u32> = outs.last().unwrap().clean.iter().map(|p| p.class).collect();
        gp.set_batch(&ctx, &pixels, &clean).unwrap();
        grads.push(gp.run(&ctx).unwrap().input_grad);
    }
    let zeros = |g: &[f32]| g.iter().filter(|v| **v == 0.0).count() as f64 / g.len() as f64;
    let mut adv_same = 0;
    for e in 0..eps.len() {
        for i in 0..n as usize {
            adv_same += (outs[1].adv[e][i].class == outs[0].adv[e][i].class) as usize;
        }
    }
    let a = Agreement {
        images: n as usize,
        clean_same: (0..n as usize)
            .filter(|&i| outs[1].clean[i].class == outs[0].clean[i].class)
            .count(),
        adv_same,
        adv_total: eps.len() * n as usize,
        signs: sign_agreement(&grads[1], &grads[0]),
        zeros: [zeros(&grads[0]), zeros(&grads[1])],
    };
    eprintln!(
        "f16 vs f32, {model_file} on {images}: clean top-1 {}/{}, adversarial top-1 {}/{}, \
         gradient sign agreement {:.2}%, zero gradient elements {:.3}% (f32) {:.3}% (f16)",
        a.clean_same,
        a.images,
        a.adv_same,
        a.adv_total,
        a.signs * 100.0,
        a.zeros[0] * 100.0,
        a.zeros[1] * 100.0
    );
    a
}

/// The bundled EfficientNet-Lite0 on the bundled photos: the same clean top-1
/// as f32 on every photo, gradient signs that agree almost everywhere.
#[test]
fn f16_efficientnet_labels_agree_with_f32() {
    let a = f16_against_f32(
        "weights/efficientnet_lite0.safetensors",
        "examples/photos",
        "1/255,2/255,4/255",
    );
    assert_eq!(a.clean_same, a.images, "clean top-1 must not change");
    assert!(a.signs >= 0.95, "gradient sign agreement {:.4}", a.signs);
    assert!(
        a.adv_same * 10 >= a.adv_total * 8,
        "adversarial top-1 {}/{}",
        a.adv_same,
        a.adv_total
    );
}

/// The MNIST CNN on the bundled digits: confident predictions make the loss
/// gradient tiny, which f16 would flush to zero without the seed's scale
/// ([`advex::plan::F16_GRAD_SCALE`]); with it, no more zero signs than f32.
#[test]
fn f16_mnist_gradients_do_not_underflow() {
    let a = f16_against_f32(
        "weights/mnist_cnn.safetensors",
        "examples/digits",
        "0.05,0.1,0.2",
    );
    assert_eq!(a.clean_same, a.images, "clean top-1 must not change");
    assert!(
        a.zeros[1] <= a.zeros[0] + 0.002,
        "f16 zeroes {:.4} of the gradient, f32 {:.4}",
        a.zeros[1],
        a.zeros[0]
    );
    assert!(a.signs >= 0.98, "gradient sign agreement {:.4}", a.signs);
    assert!(
        a.adv_same * 100 >= a.adv_total * 97,
        "adversarial top-1 {}/{}",
        a.adv_same,
        a.adv_total
    );
}

/// A model whose logits overflow f16 (65504) is refused with advice instead of
/// reporting NaN probabilities; in f32 the same model runs.
#[test]
fn f16_overflow_is_an_error_that_says_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = builder::every_op(5);
    for v in b.tensor_mut("fc.weight").2.iter_mut() {
        *v *= 1.0e6;
    }
    let path = b.write(dir.path(), "big.safetensors", advex::model::Dtype::F32);
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut o = advex::run::RunOptions::new(&path, root.join("examples/photos"));
    o.eps = parse_eps_list("1/255").unwrap();
    o.batch_size = Some(2);
    let r = advex::run::run_attack(&o).expect("f32 runs");
    assert!(r.clean.accuracy.is_finite());
    o.precision = DType::F16;
    let err = advex::run::run_attack(&o).expect_err("f16 overflows");
    let msg = err.to_string();
    assert!(msg.contains("--precision f32"), "{msg}");
}
