//! ONNX import: small models built in Rust with the ONNX message types (one per
//! op family and per bad input), checked on the emitted description and, where
//! the translation does arithmetic (folding, transposes, constants), on the
//! CPU reference forward against a direct computation. Then the real
//! `torch.onnx.export` fixtures load. No GPU needed.

use std::path::{Path, PathBuf};

use crate::common::ref_conv::RefConv;
use crate::common::ref_graph;
use crate::onnx_build::*;
use advex::model::{Model, NodeSpec, Op};
use advex::onnx::proto::{tensor_proto::DataLocation, TensorProto};
use advex::onnx::{
    convert_onnx, import_onnx, load_onnx_model, parse_floats, parse_size, ImportOptions, Imported,
    MAX_OPSET,
};

/// The model's output for one image, on the CPU reference.
fn cpu(m: &Model, x: &[f32]) -> Vec<f64> {
    let x: Vec<f64> = x.iter().map(|&v| v as f64).collect();
    ref_graph::forward(m, &x, 1)[m.output].clone()
}

fn close(what: &str, got: &[f64], want: &[f64]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= 1e-5 * (1.0 + w.abs()),
            "{what}[{i}]: {g} vs {w}"
        );
    }
}

fn ops(i: &Imported) -> Vec<&str> {
    i.spec.nodes.iter().map(|n| n.op.as_str()).collect()
}

fn node<'a>(i: &'a Imported, op: &str) -> &'a NodeSpec {
    i.spec
        .nodes
        .iter()
        .find(|n| n.op == op)
        .unwrap_or_else(|| panic!("no {op} node in {:?}", ops(i)))
}

fn tensor<'a>(i: &'a Imported, name: &str) -> &'a (String, Vec<usize>, Vec<f32>) {
    i.tensors
        .iter()
        .find(|t| t.0 == name)
        .unwrap_or_else(|| panic!("no tensor {name}"))
}

/// Flatten then Gemm (transB=1) to `k` classes: makes any `[1, C, 1, 1]` value
/// a classifier output. `from` is the value to classify, `c` its channels.
fn head(g: &mut G, from: &str, c: usize, k: usize) {
    g.init(tf("fc.w", &[k as i64, c as i64], &vals(99, k * c)))
        .init(tf("fc.b", &[k as i64], &vals(98, k)))
        .n(
            "flat",
            "Flatten",
            &[from],
            &["flat_out"],
            vec![a_int("axis", 1)],
        )
        .n(
            "fc",
            "Gemm",
            &["flat_out", "fc.w", "fc.b"],
            &["y"],
            vec![a_int("transB", 1)],
        );
}

fn fc_ref(x: &[f64], k: usize) -> Vec<f64> {
    let c = x.len();
    let w = vals(99, k * c);
    let b = vals(98, k);
    (0..k)
        .map(|o| b[o] as f64 + (0..c).map(|j| w[o * c + j] as f64 * x[j]).sum::<f64>())
        .collect()
}

fn conv_ref(
    x: &[f32],
    xs: [usize; 4],
    w: &[f32],
    ws: [usize; 4],
    b: &[f32],
    pad: [usize; 4],
    stride: usize,
) -> Vec<f64> {
    let r = RefConv {
        x: xs,
        w: ws,
        stride: [stride, stride],
        padding: pad,
        dilation: [1, 1],
        groups: 1,
    };
    let f = |v: &[f32]| v.iter().map(|&a| a as f64).collect::<Vec<_>>();
    r.forward(&f(x), &f(w), Some(&f(b)))
}

fn gap(x: &[f64], c: usize) -> Vec<f64> {
    let hw = x.len() / c;
    (0..c)
        .map(|i| x[i * hw..(i + 1) * hw].iter().sum::<f64>() / hw as f64)
        .collect()
}

// ---- ops ------------------------------------------------------------------

#[test]
fn conv_batchnorm_relu_pool_gemm_end_to_end() {
    let (c, h, w, oc) = (2usize, 5usize, 6usize, 3usize);
    let wv = vals(1, oc * c * 9);
    let bv = vals(2, oc);
    let (gamma, beta, mean) = (vals(3, oc), vals(4, oc), vals(5, oc));
    let var: Vec<f32> = vals(6, oc).iter().map(|v| v.abs() + 0.5).collect();
    let mut g = G::new(13, c as i64, h as i64, w as i64);
    g.init(tf("conv.w", &[oc as i64, c as i64, 3, 3], &wv))
        .init(tf("conv.b", &[oc as i64], &bv))
        .init(tf("bn.g", &[oc as i64], &gamma))
        .init(tf("bn.b", &[oc as i64], &beta))
        .init(tf("bn.m", &[oc as i64], &mean))
        .init(tf_fields("bn.v", &[oc as i64], &var))
        .n(
            "conv",
            "Conv",
            &["x", "conv.w", "conv.b"],
            &["c1"],
            vec![
                a_ints("kernel_shape", &[3, 3]),
                a_ints("pads", &[0, 1, 1, 2]),
                a_ints("strides", &[1, 1]),
            ],
        )
        .n(
            "bn",
            "BatchNormalization",
            &["c1", "bn.g", "bn.b", "bn.m", "bn.v"],
            &["b1"],
            vec![a_float("epsilon", 1e-3)],
        )
        .n("relu", "Relu", &["b1"], &["r1"], vec![])
        .n("gap", "GlobalAveragePool", &["r1"], &["p1"], vec![]);
    head(&mut g, "p1", oc, 4);
    let imp = g.import().unwrap();
    assert_eq!(
        ops(&imp),
        ["conv2d", "batch_norm", "relu", "global_avg_pool", "linear"]
    );
    let conv = node(&imp, "conv2d");
    assert_eq!(
        conv.padding.unwrap().0,
        [0, 1, 1, 2],
        "pads [x1_begin, x2_begin, x1_end, x2_end] -> [top, left, bottom, right]"
    );
    assert_eq!(
        conv.weight.as_deref(),
        Some("conv.w"),
        "initializer names are kept"
    );
    assert_eq!(node(&imp, "batch_norm").eps, Some(1e-3));
    let m = imp.to_model(Path::new("t.onnx")).unwrap();
    assert_eq!(m.input, [c as u32, h as u32, w as u32]);
    assert!(
        matches!(m.nodes[0].op, Op::Conv2d { .. }),
        "batch_norm folds into the conv"
    );

    let x = vals(7, c * h * w);
    let y = conv_ref(&x, [1, c, h, w], &wv, [oc, c, 3, 3], &bv, [0, 1, 1, 2], 1);
    let hw = y.len() / oc;
    let y: Vec<f64> = y
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            let o = i / hw;
            let s = gamma[o] as f64 / (var[o] as f64 + 1e-3).sqrt();
            (s * (v - mean[o] as f64) + beta[o] as f64).max(0.0)
        })
        .collect();
    close("logits", &cpu(&m, &x), &fc_ref(&gap(&y, oc), 4));
}

#[test]
fn gemm_transposes_and_scales_weights() {
    // Gemm(x, B[K, M], C scalar) with transB = 0, alpha 0.5, beta 2.
    let (k, out) = (6usize, 3usize);
    let b = vals(10, k * out);
    let mut g = G::new(13, k as i64, 1, 1);
    g.init(tf("B", &[k as i64, out as i64], &b))
        .init(tf("C", &[], &[0.25]))
        .n("flat", "Flatten", &["x"], &["f"], vec![])
        .n(
            "gemm",
            "Gemm",
            &["f", "B", "C"],
            &["y"],
            vec![a_float("alpha", 0.5), a_float("beta", 2.0)],
        );
    let imp = g.import().unwrap();
    let lin = node(&imp, "linear");
    let wt = tensor(&imp, lin.weight.as_deref().unwrap());
    assert_eq!(wt.1, [out, k]);
    assert_eq!(
        wt.2[k + 2],
        0.5 * b[2 * out + 1],
        "weight[1, 2] = alpha * B[2, 1]"
    );
    assert_eq!(tensor(&imp, lin.bias.as_deref().unwrap()).2, [0.5; 3]);
    let m = imp.to_model(Path::new("t.onnx")).unwrap();
    let x = vals(11, k);
    let want: Vec<f64> = (0..out)
        .map(|o| {
            0.5 + 0.5
                * (0..k)
                    .map(|j| x[j] as f64 * b[j * out + o] as f64)
                    .sum::<f64>()
        })
        .collect();
    close("gemm", &cpu(&m, &x), &want);
}

#[test]
fn matmul_then_add_is_one_linear() {
    let (k, out) = (5usize, 4usize);
    let b = vals(20, k * out);
    let bias = vals(21, out);
    let mut g = G::new(13, k as i64, 1, 1);
    g.init(tf("W", &[k as i64, out as i64], &b))
        .init(tf("bias", &[out as i64], &bias))
        .init(ti("shape", &[2], &[1, -1]))
        .n("view", "Reshape", &["x", "shape"], &["f"], vec![])
        .n("mm", "MatMul", &["f", "W"], &["mm_out"], vec![])
        .n("add", "Add", &["mm_out", "bias"], &["y"], vec![]);
    let imp = g.import().unwrap();
    assert_eq!(ops(&imp), ["linear"], "the bias joins the linear node");
    let m = imp.to_model(Path::new("t.onnx")).unwrap();
    let x = vals(22, k);
    let want: Vec<f64> = (0..out)
        .map(|o| {
            bias[o] as f64
                + (0..k)
                    .map(|j| x[j] as f64 * b[j * out + o] as f64)
                    .sum::<f64>()
        })
        .collect();
    close("matmul+add", &cpu(&m, &x), &want);

    // The MatMul's output also feeds a ReLU: the bias must not join the
    // linear node (the ReLU reads the product without it).
    let mut g = G::new(13, k as i64, 1, 1);
    g.init(tf("W", &[k as i64, out as i64], &b))
        .init(tf("bias", &[out as i64], &bias))
        .n("flat", "Flatten", &["x"], &["f"], vec![])
        .n("mm", "MatMul", &["f", "W"], &["mm_out"], vec![])
        .n("add", "Add", &["mm_out", "bias"], &["a"], vec![])
        .n("relu", "Relu", &["mm_out"], &["r"], vec![])
        .n("sum", "Add", &["a", "r"], &["y"], vec![]);
    let m = g.import().unwrap().to_model(Path::new("t.onnx")).unwrap();
    let want2: Vec<f64> = want
        .iter()
        .zip(&bias)
        .map(|(&v, &bb)| v + (v - bb as f64).max(0.0))
        .collect();
    close("shared matmul output", &cpu(&m, &x), &want2);
}

#[test]
fn activations_map_to_advex_ops() {
    // Each activation on [1, 4, 1, 1], then flatten + gemm.
    let check = |opset: i64, build: &dyn Fn(&mut G), want: &str, attrs: &dyn Fn(&NodeSpec)| {
        let mut g = G::new(opset, 4, 1, 1);
        build(&mut g);
        head(&mut g, "a", 4, 3);
        let imp = g.import().unwrap_or_else(|e| panic!("{want}: {e}"));
        assert_eq!(imp.spec.nodes[0].op, want, "{:?}", ops(&imp));
        attrs(&imp.spec.nodes[0]);
        let m = imp.to_model(Path::new("t.onnx")).unwrap();
        assert_eq!(m.num_classes(), 3);
    };
    let none = |_: &NodeSpec| {};
    check(
        13,
        &|g| {
            g.n("r", "Relu", &["x"], &["a"], vec![]);
        },
        "relu",
        &none,
    );
    check(
        10,
        &|g| {
            g.n(
                "c",
                "Clip",
                &["x"],
                &["a"],
                vec![a_float("min", 0.0), a_float("max", 6.0)],
            );
        },
        "relu6",
        &none,
    );
    check(
        13,
        &|g| {
            g.init(tf("lo", &[], &[0.0])).init(tf("hi", &[], &[6.0]));
            g.n("c", "Clip", &["x", "lo", "hi"], &["a"], vec![]);
        },
        "relu6",
        &none,
    );
    check(
        13,
        &|g| {
            g.init(tf("lo", &[], &[0.0]));
            g.n("c", "Clip", &["x", "lo"], &["a"], vec![]);
        },
        "relu",
        &none,
    );
    check(
        13,
        &|g| {
            g.n(
                "lo",
                "Constant",
                &[],
                &["lo"],
                vec![a_tensor("value", tf("v", &[], &[0.0]))],
            );
            g.n(
                "hi",
                "Constant",
                &[],
                &["hi"],
                vec![a_float("value_float", 6.0)],
            );
            g.n("c", "Clip", &["x", "lo", "hi"], &["a"], vec![]);
        },
        "relu6",
        &none,
    );
    check(
        13,
        &|g| {
            g.n(
                "l",
                "LeakyRelu",
                &["x"],
                &["a"],
                vec![a_float("alpha", 0.2)],
            );
        },
        "leaky_relu",
        &|n| assert_eq!(n.negative_slope, Some(0.2)),
    );
    check(
        13,
        &|g| {
            g.n("s", "Sigmoid", &["x"], &["a"], vec![]);
        },
        "sigmoid",
        &none,
    );
    check(
        13,
        &|g| {
            g.n("h", "HardSigmoid", &["x"], &["a"], vec![]);
        },
        "hardsigmoid",
        &|n| {
            assert_eq!(
                (n.alpha, n.beta),
                (Some(0.2), Some(0.5)),
                "ONNX defaults, written out"
            );
        },
    );
    check(
        14,
        &|g| {
            g.n("h", "HardSwish", &["x"], &["a"], vec![]);
        },
        "hardswish",
        &none,
    );
    check(
        20,
        &|g| {
            g.n("g", "Gelu", &["x"], &["a"], vec![]);
        },
        "gelu",
        &|n| assert_eq!(n.approximate, None, "the exact form is the default"),
    );
    check(
        20,
        &|g| {
            g.n(
                "g",
                "Gelu",
                &["x"],
                &["a"],
                vec![a_str("approximate", "tanh")],
            );
        },
        "gelu",
        &|n| assert_eq!(n.approximate.as_deref(), Some("tanh")),
    );
}

/// GELU written out as PyTorch's exporters do below opset 20, in the orders
/// they use: one `gelu` node; Erf anywhere else is refused naming the pattern.
#[test]
fn gelu_erf_chains_fuse() {
    let x: Vec<f32> = vals(32, 4).iter().map(|v| v * 4.0).collect();
    let want: Vec<f64> = x
        .iter()
        .map(|&v| v as f64 * 0.5 * libm::erfc(-(v as f64) / std::f64::consts::SQRT_2))
        .collect();
    type Build = fn(&mut G);
    let orders: [(&str, Build); 3] = [
        ("legacy: (x * (1 + erf)) * 0.5", |g| {
            g.n("d", "Div", &["x", "s2"], &["d"], vec![])
                .n("e", "Erf", &["d"], &["e"], vec![])
                .n("p", "Add", &["e", "one"], &["f"], vec![])
                .n("m", "Mul", &["x", "f"], &["m"], vec![])
                .n("h", "Mul", &["m", "half"], &["a"], vec![]);
        }),
        ("torchlib: x * (0.5 * (1 + erf))", |g| {
            g.n("d", "Div", &["x", "s2"], &["d"], vec![])
                .n("e", "Erf", &["d"], &["e"], vec![])
                .n("p", "Add", &["one", "e"], &["f"], vec![])
                .n("h", "Mul", &["half", "f"], &["m"], vec![])
                .n("m", "Mul", &["x", "m"], &["a"], vec![]);
        }),
        ("written: (0.5 * x) * (1 + erf(x * r))", |g| {
            g.n("d", "Mul", &["x", "r2"], &["d"], vec![])
                .n("e", "Erf", &["d"], &["e"], vec![])
                .n("p", "Add", &["e", "one"], &["f"], vec![])
                .n("h", "Mul", &["half", "x"], &["hx"], vec![])
                .n("m", "Mul", &["hx", "f"], &["a"], vec![]);
        }),
    ];
    for (what, build) in orders {
        let mut g = G::new(17, 4, 1, 1);
        g.init(tf("s2", &[], &[std::f32::consts::SQRT_2]))
            .init(tf("r2", &[], &[std::f32::consts::FRAC_1_SQRT_2]))
            .init(tf("one", &[], &[1.0]))
            .init(tf("half", &[], &[0.5]));
        build(&mut g);
        head(&mut g, "a", 4, 2);
        let imp = g.import().unwrap();
        assert_eq!(ops(&imp), ["gelu", "linear"], "{what}");
        let m = imp.to_model(Path::new("t.onnx")).unwrap();
        close(what, &cpu(&m, &x), &fc_ref(&want, 2));
    }
    // erf(x / sqrt 2) read by something else: refused, naming the pattern
    let mut g = G::new(17, 4, 1, 1);
    g.init(tf("s2", &[], &[std::f32::consts::SQRT_2]))
        .init(tf("one", &[], &[1.0]))
        .init(tf("half", &[], &[0.5]));
    g.n("d", "Div", &["x", "s2"], &["d"], vec![])
        .n("e", "Erf", &["d"], &["e"], vec![])
        .n("p", "Add", &["e", "one"], &["f"], vec![])
        .n("m", "Mul", &["x", "f"], &["m"], vec![])
        .n("h", "Mul", &["m", "half"], &["g"], vec![])
        .n("z", "Add", &["g", "e"], &["a"], vec![]);
    head(&mut g, "a", 4, 2);
    let e = g.import().map(|_| ()).unwrap_err().to_string();
    assert!(e.contains("GELU") && e.contains("unsupported"), "{e}");
    // Erf of something that is not x / sqrt 2
    let mut g = G::new(17, 4, 1, 1);
    g.n("e", "Erf", &["x"], &["a"], vec![]);
    head(&mut g, "a", 4, 2);
    let e = g.import().map(|_| ()).unwrap_err().to_string();
    assert!(e.contains("not x / sqrt 2"), "{e}");
}

/// ConvNeXt's channels-last block: Transpose to NHWC, LayerNormalization over
/// the last axis, MatMul by a constant (+ bias), Gelu, Transpose back. It
/// runs channels-first: layer_norm, a pointwise conv with the bias, gelu; the
/// transposes emit nothing. Against the f64 computation of the same graph.
#[test]
fn channels_last_blocks_run_channels_first() {
    let (c, h, w, k) = (3usize, 2usize, 2usize, 5usize);
    let mut g = G::new(17, c as i64, h as i64, w as i64);
    let (ln_s, ln_b) = (vals(60, c), vals(61, c));
    let (mw, mb) = (vals(62, c * k), vals(63, k));
    g.init(tf("ln.s", &[c as i64], &ln_s))
        .init(tf("ln.b", &[c as i64], &ln_b))
        .init(tf("mm.w", &[c as i64, k as i64], &mw))
        .init(tf("mm.b", &[k as i64], &mb))
        .n(
            "t1",
            "Transpose",
            &["x"],
            &["t"],
            vec![a_ints("perm", &[0, 2, 3, 1])],
        )
        .n(
            "ln",
            "LayerNormalization",
            &["t", "ln.s", "ln.b"],
            &["l"],
            vec![a_int("axis", -1), a_float("epsilon", 1e-6)],
        )
        .n("mm", "MatMul", &["l", "mm.w"], &["m"], vec![])
        .n("bias", "Add", &["mm.b", "m"], &["mb"], vec![])
        .n("g", "Gelu", &["mb"], &["ge"], vec![])
        .n(
            "t2",
            "Transpose",
            &["ge"],
            &["back"],
            vec![a_ints("perm", &[0, 3, 1, 2])],
        )
        .n("gap", "GlobalAveragePool", &["back"], &["p"], vec![]);
    head(&mut g, "p", k, 2);
    let imp = g.import().unwrap();
    assert_eq!(
        ops(&imp),
        ["layer_norm", "conv2d", "gelu", "global_avg_pool", "linear"]
    );
    let m = imp.to_model(Path::new("t.onnx")).unwrap();
    let x: Vec<f32> = vals(64, c * h * w).iter().map(|v| v * 3.0).collect();
    let mut pooled = vec![0.0f64; k];
    for pos in 0..h * w {
        let v: Vec<f64> = (0..c).map(|ch| x[ch * h * w + pos] as f64).collect();
        let mean = v.iter().sum::<f64>() / c as f64;
        let var = v.iter().map(|a| (a - mean) * (a - mean)).sum::<f64>() / c as f64;
        let n: Vec<f64> = (0..c)
            .map(|ch| (v[ch] - mean) / (var + 1e-6).sqrt() * ln_s[ch] as f64 + ln_b[ch] as f64)
            .collect();
        for o in 0..k {
            let z = mb[o] as f64 + (0..c).map(|ch| n[ch] * mw[ch * k + o] as f64).sum::<f64>();
            let gelu = z * 0.5 * libm::erfc(-z / std::f64::consts::SQRT_2);
            pooled[o] += gelu / (h * w) as f64;
        }
    }
    close("channels-last block", &cpu(&m, &x), &fc_ref(&pooled, 2));

    // A channels-last value read by a convolution is a rearrangement, refused
    // as before.
    let mut g = G::new(17, c as i64, h as i64, w as i64);
    g.init(tf("cw", &[2, 2, 1, 1], &vals(65, 4)))
        .n(
            "t1",
            "Transpose",
            &["x"],
            &["t"],
            vec![a_ints("perm", &[0, 2, 3, 1])],
        )
        .n("conv", "Conv", &["t", "cw"], &["a"], vec![]);
    head(&mut g, "a", 2, 2);
    let e = g.import().map(|_| ()).unwrap_err().to_string();
    assert!(e.contains("rearrangement"), "{e}");
    // LayerNormalization over C, H and W of an NCHW value: not advex's
    let mut g = G::new(17, c as i64, h as i64, w as i64);
    g.n(
        "ln",
        "LayerNormalization",
        &["x"],
        &["a"],
        vec![a_int("axis", 1)],
    );
    head(&mut g, "a", c, 2);
    let e = g.import().map(|_| ()).unwrap_err().to_string();
    assert!(e.contains("normalises over channels"), "{e}");
}

/// Gelu (opset 20) in both forms, against the f64 formulas.
#[test]
fn gelu_imports_with_its_form() {
    for tanh in [false, true] {
        let mut g = G::new(20, 4, 1, 1);
        let attrs = if tanh {
            vec![a_str("approximate", "tanh")]
        } else {
            vec![]
        };
        g.n("g", "Gelu", &["x"], &["a"], attrs);
        head(&mut g, "a", 4, 2);
        let m = g.import().unwrap().to_model(Path::new("t.onnx")).unwrap();
        let x: Vec<f32> = vals(31, 4).iter().map(|v| v * 4.0).collect();
        let a: Vec<f64> = x
            .iter()
            .map(|&v| {
                let v = v as f64;
                if tanh {
                    let k = (2.0 / std::f64::consts::PI).sqrt();
                    0.5 * v * (1.0 + (k * (v + 0.044715 * v * v * v)).tanh())
                } else {
                    v * 0.5 * libm::erfc(-v / std::f64::consts::SQRT_2)
                }
            })
            .collect();
        close(&format!("gelu tanh={tanh}"), &cpu(&m, &x), &fc_ref(&a, 2));
    }
    let mut g = G::new(20, 4, 1, 1);
    g.n(
        "g",
        "Gelu",
        &["x"],
        &["a"],
        vec![a_str("approximate", "cubic")],
    );
    head(&mut g, "a", 4, 2);
    let e = g.import().map(|_| ()).unwrap_err().to_string();
    assert!(e.contains("approximate `cubic`"), "{e}");
}

#[test]
fn silu_and_hardswish_patterns_fuse() {
    let mut g = G::new(13, 4, 1, 1);
    g.n("sig", "Sigmoid", &["x"], &["s"], vec![])
        .n("mul", "Mul", &["x", "s"], &["a"], vec![]);
    head(&mut g, "a", 4, 2);
    assert_eq!(ops(&g.import().unwrap()), ["silu", "linear"]);

    let mut g = G::new(13, 4, 1, 1);
    g.n(
        "hs",
        "HardSigmoid",
        &["x"],
        &["s"],
        vec![a_float("alpha", 1.0 / 6.0), a_float("beta", 0.5)],
    )
    .n("mul", "Mul", &["s", "x"], &["a"], vec![]);
    head(&mut g, "a", 4, 2);
    assert_eq!(ops(&g.import().unwrap()), ["hardswish", "linear"]);

    // The sigmoid is used elsewhere too: no fusion, still correct.
    let mut g = G::new(13, 4, 1, 1);
    g.n("sig", "Sigmoid", &["x"], &["s"], vec![])
        .n("mul", "Mul", &["x", "s"], &["m"], vec![])
        .n("add", "Add", &["m", "s"], &["a"], vec![]);
    head(&mut g, "a", 4, 2);
    let imp = g.import().unwrap();
    assert_eq!(ops(&imp), ["sigmoid", "mul", "add", "linear"]);
    let m = imp.to_model(Path::new("t.onnx")).unwrap();
    let x = vals(30, 4);
    let a: Vec<f64> = x
        .iter()
        .map(|&v| {
            let s = 1.0 / (1.0 + (-(v as f64)).exp());
            v as f64 * s + s
        })
        .collect();
    close("x*sigmoid(x) + sigmoid(x)", &cpu(&m, &x), &fc_ref(&a, 2));
}

#[test]
fn constant_operands_become_exact_affines() {
    // ((x + 0.5) * s[c] - m[c]) / d, then 1 - that: per-channel constants of
    // several shapes, scalar and [C], [1, C, 1, 1], [C, 1, 1].
    let c = 3usize;
    let (s, mm, d) = (vals(40, c), vals(41, c), [2.0f32, -4.0, 0.5]);
    let mut g = G::new(13, c as i64, 2, 2);
    g.init(tf("half", &[], &[0.5]))
        .init(tf("s", &[1, c as i64, 1, 1], &s))
        .init(tf("m", &[c as i64, 1, 1], &mm))
        .init(tf("d", &[1, c as i64, 1, 1], &d))
        .init(tf("one", &[1], &[1.0]))
        .n("add", "Add", &["x", "half"], &["a1"], vec![])
        .n("mul", "Mul", &["s", "a1"], &["a2"], vec![])
        .n("sub", "Sub", &["a2", "m"], &["a3"], vec![])
        .n("div", "Div", &["a3", "d"], &["a4"], vec![])
        .n("rsub", "Sub", &["one", "a4"], &["a5"], vec![])
        .n("gap", "GlobalAveragePool", &["a5"], &["p"], vec![]);
    head(&mut g, "p", c, 2);
    let imp = g.import().unwrap();
    assert_eq!(ops(&imp)[..5], ["batch_norm"; 5]);
    let m = imp.to_model(Path::new("t.onnx")).unwrap();
    let x = vals(42, c * 4);
    let a: Vec<f64> = x
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            let ch = i / 4;
            1.0 - ((v as f64 + 0.5) * s[ch] as f64 - mm[ch] as f64) / d[ch] as f64
        })
        .collect();
    close("affine chain", &cpu(&m, &x), &fc_ref(&gap(&a, c), 2));

    // A constant that varies over H and W cannot be an affine.
    let mut g = G::new(13, 1, 2, 2);
    g.init(tf("k", &[1, 1, 2, 2], &[1.0, 2.0, 3.0, 4.0]))
        .n("add", "Add", &["x", "k"], &["a"], vec![])
        .n("gap", "GlobalAveragePool", &["a"], &["p"], vec![]);
    head(&mut g, "p", 1, 2);
    let e = err_of(g.import());
    assert!(
        e.contains("`add` (Add)") && e.contains("per-channel"),
        "{e}"
    );
}

#[test]
fn squeeze_excite_multiplies_two_runtime_values() {
    let c = 2usize;
    let mut g = G::new(13, c as i64, 3, 3);
    g.init(ti("axes", &[2], &[2, 3]))
        .n(
            "mean",
            "ReduceMean",
            &["x", "axes"],
            &["s"],
            vec![a_int("keepdims", 1)],
        )
        .n("sig", "Sigmoid", &["s"], &["g"], vec![])
        .n("scale", "Mul", &["g", "x"], &["a"], vec![])
        .n("gap", "GlobalAveragePool", &["a"], &["p"], vec![]);
    head(&mut g, "p", c, 2);
    let imp = g.import().unwrap();
    assert_eq!(
        ops(&imp),
        [
            "global_avg_pool",
            "sigmoid",
            "mul",
            "global_avg_pool",
            "linear"
        ]
    );
    let m = imp.to_model(Path::new("t.onnx")).unwrap();
    let x = vals(50, c * 9);
    let xd: Vec<f64> = x.iter().map(|&v| v as f64).collect();
    let se = gap(&xd, c);
    let a: Vec<f64> = xd
        .iter()
        .enumerate()
        .map(|(i, &v)| v / (1.0 + (-se[i / 9]).exp()))
        .collect();
    close("squeeze-excite", &cpu(&m, &x), &fc_ref(&gap(&a, c), 2));
}

#[test]
fn pooling_attributes() {
    let mut g = G::new(13, 1, 7, 7);
    g.n(
        "mp",
        "MaxPool",
        &["x"],
        &["a"],
        vec![
            a_ints("kernel_shape", &[3, 3]),
            a_ints("strides", &[2, 2]),
            a_ints("pads", &[1, 0, 1, 0]),
            a_int("ceil_mode", 1),
        ],
    )
    .n(
        "ap",
        "AveragePool",
        &["a"],
        &["b"],
        vec![
            a_ints("kernel_shape", &[2, 2]),
            a_str("auto_pad", "SAME_UPPER"),
        ],
    )
    .n("gmp", "GlobalMaxPool", &["b"], &["p"], vec![]);
    head(&mut g, "p", 1, 2);
    let imp = g.import().unwrap();
    let mp = node(&imp, "max_pool");
    assert_eq!(mp.stride.unwrap().0, [2, 2]);
    assert_eq!(mp.padding.unwrap().0, [1, 0, 1, 0]);
    assert_eq!(mp.ceil_mode, Some(true));
    let ap = &imp.spec.nodes[1];
    assert_eq!(ap.op, "avg_pool");
    assert_eq!(
        ap.stride.unwrap().0,
        [1, 1],
        "ONNX pools default to stride 1"
    );
    assert_eq!(
        ap.count_include_pad,
        Some(false),
        "ONNX default count_include_pad = 0"
    );
    assert_eq!(
        ap.padding.unwrap().0,
        [0, 0, 1, 1],
        "SAME_UPPER puts the extra at the end"
    );
    let gmp = &imp.spec.nodes[2];
    assert_eq!(
        (gmp.op.as_str(), gmp.kernel.unwrap().0),
        ("max_pool", [4, 3])
    );
    let m = imp.to_model(Path::new("t.onnx")).unwrap();
    assert_eq!(m.nodes[0].shape.h, 4, "ceil_mode output height");
}

#[test]
fn zero_pad_folds_into_conv_and_pools() {
    let (c, h, w, oc) = (2usize, 4usize, 5usize, 2usize);
    let wv = vals(60, oc * c * 4);
    let bv = vals(61, oc);
    for opset in [9i64, 13] {
        let mut g = G::new(opset, c as i64, h as i64, w as i64);
        let pads = [0i64, 0, 1, 2, 0, 0, 3, 1];
        g.init(tf("w", &[oc as i64, c as i64, 2, 2], &wv))
            .init(tf("b", &[oc as i64], &bv));
        if opset < 11 {
            g.n("pad", "Pad", &["x"], &["xp"], vec![a_ints("pads", &pads)]);
        } else {
            g.init(ti("pads", &[8], &pads))
                .init(tf("zero", &[], &[0.0]));
            g.n("pad", "Pad", &["x", "pads", "zero"], &["xp"], vec![]);
        }
        g.n(
            "conv",
            "Conv",
            &["xp", "w", "b"],
            &["c1"],
            vec![a_ints("pads", &[1, 0, 0, 1])],
        )
        .n("gap", "GlobalAveragePool", &["c1"], &["p"], vec![]);
        head(&mut g, "p", oc, 2);
        let imp = g.import().unwrap();
        assert_eq!(ops(&imp)[0], "conv2d", "the Pad emits no node");
        assert_eq!(node(&imp, "conv2d").padding.unwrap().0, [2, 2, 3, 2]);
        let m = imp.to_model(Path::new("t.onnx")).unwrap();
        let x = vals(62, c * h * w);
        let y = conv_ref(&x, [1, c, h, w], &wv, [oc, c, 2, 2], &bv, [2, 2, 3, 2], 1);
        close("pad+conv", &cpu(&m, &x), &fc_ref(&gap(&y, oc), 2));
    }

    // Before MaxPool: folds after a ReLU, not otherwise.
    let build = |relu: bool| {
        let mut g = G::new(13, 1, 4, 4);
        let src = if relu {
            g.n("relu", "Relu", &["x"], &["r"], vec![]);
            "r"
        } else {
            "x"
        };
        g.init(ti("pads", &[8], &[0, 0, 0, 0, 0, 0, 1, 1]))
            .n("pad", "Pad", &[src, "pads"], &["xp"], vec![])
            .n(
                "mp",
                "MaxPool",
                &["xp"],
                &["a"],
                vec![a_ints("kernel_shape", &[2, 2]), a_ints("strides", &[2, 2])],
            )
            .n("gap", "GlobalAveragePool", &["a"], &["p"], vec![]);
        head(&mut g, "p", 1, 2);
        g
    };
    let imp = build(true).import().unwrap();
    assert_eq!(node(&imp, "max_pool").padding.unwrap().0, [0, 0, 1, 1]);
    let e = err_of(build(false).import());
    assert!(
        e.contains("`mp` (MaxPool)") && e.contains("non-negative"),
        "{e}"
    );

    // Before AveragePool: the padded zeros count.
    let mut g = G::new(13, 1, 4, 4);
    g.init(ti("pads", &[8], &[0, 0, 1, 1, 0, 0, 1, 1]))
        .n("pad", "Pad", &["x", "pads"], &["xp"], vec![])
        .n(
            "ap",
            "AveragePool",
            &["xp"],
            &["a"],
            vec![a_ints("kernel_shape", &[3, 3])],
        )
        .n("gap", "GlobalAveragePool", &["a"], &["p"], vec![]);
    head(&mut g, "p", 1, 2);
    let imp = g.import().unwrap();
    let ap = node(&imp, "avg_pool");
    assert_eq!(
        (ap.padding.unwrap().0, ap.count_include_pad),
        ([1, 1, 1, 1], Some(true))
    );

    // Non-zero value, reflect mode, channel padding: refused, all listed.
    let mut g = G::new(13, 1, 4, 4);
    g.init(ti("pads", &[8], &[0, 0, 1, 1, 0, 0, 1, 1]))
        .init(ti("cpads", &[8], &[0, 1, 0, 0, 0, 0, 0, 0]))
        .init(tf("one", &[], &[1.0]))
        .n("p1", "Pad", &["x", "pads", "one"], &["a"], vec![])
        .n(
            "p2",
            "Pad",
            &["x", "pads"],
            &["b"],
            vec![a_str("mode", "reflect")],
        )
        .n("p3", "Pad", &["x", "cpads"], &["c"], vec![])
        .n("sum", "Add", &["a", "b"], &["d"], vec![])
        .n("sum2", "Add", &["d", "c"], &["e"], vec![])
        .n("gap", "GlobalAveragePool", &["e"], &["p"], vec![]);
    head(&mut g, "p", 1, 2);
    let e = err_of(g.import());
    for want in [
        "`p1` (Pad)",
        "`p2` (Pad)",
        "`p3` (Pad)",
        "value 1",
        "reflect",
    ] {
        assert!(e.contains(want), "{want} in: {e}");
    }
}

#[test]
fn global_average_pool_forms() {
    // ReduceMean with axes as an attribute (opset 13) and keepdims 0.
    let mut g = G::new(13, 3, 2, 2);
    g.init(tf("fc.w", &[2, 3], &vals(99, 6)))
        .init(tf("fc.b", &[2], &vals(98, 2)))
        .n(
            "mean",
            "ReduceMean",
            &["x"],
            &["p"],
            vec![a_ints("axes", &[-1, -2]), a_int("keepdims", 0)],
        )
        .n(
            "fc",
            "Gemm",
            &["p", "fc.w", "fc.b"],
            &["y"],
            vec![a_int("transB", 1)],
        );
    let imp = g.import().unwrap();
    assert_eq!(ops(&imp), ["global_avg_pool", "linear"]);

    // Axes as an input (opset 18), keepdims 1, then Squeeze to [N, C].
    let mut g = G::new(18, 3, 2, 2);
    g.init(ti("axes", &[2], &[2, 3]))
        .init(ti("sq", &[2], &[2, 3]))
        .init(tf("fc.w", &[2, 3], &vals(99, 6)))
        .init(tf("fc.b", &[2], &vals(98, 2)))
        .n("mean", "ReduceMean", &["x", "axes"], &["p"], vec![])
        .n("sq", "Squeeze", &["p", "sq"], &["q"], vec![])
        .n(
            "fc",
            "Gemm",
            &["q", "fc.w", "fc.b"],
            &["y"],
            vec![a_int("transB", 1)],
        );
    let imp = g.import().unwrap();
    assert_eq!(
        ops(&imp),
        ["global_avg_pool", "linear"],
        "Squeeze of [N, C, 1, 1] emits nothing"
    );
    let m = imp.to_model(Path::new("t.onnx")).unwrap();
    let x = vals(70, 12);
    let xd: Vec<f64> = x.iter().map(|&v| v as f64).collect();
    close("mean", &cpu(&m, &x), &fc_ref(&gap(&xd, 3), 2));

    // Adaptive average pool at the same size: AveragePool kernel 1.
    let mut g = G::new(13, 2, 3, 3);
    g.n(
        "ap",
        "AveragePool",
        &["x"],
        &["a"],
        vec![a_ints("kernel_shape", &[1, 1]), a_ints("strides", &[1, 1])],
    );
    head(&mut g, "a", 18, 2);
    assert_eq!(ops(&g.import().unwrap()), ["avg_pool", "flatten", "linear"]);
}

#[test]
fn reshape_target_from_a_shape_chain() {
    // x.view(x.size(0), -1) as the TorchScript exporter writes it (opset 11:
    // Unsqueeze axes as an attribute).
    let mut g = G::new(11, 2, 2, 2);
    g.init(ti("zero", &[], &[0]))
        .n("shape", "Shape", &["x"], &["s"], vec![])
        .n(
            "gather",
            "Gather",
            &["s", "zero"],
            &["n"],
            vec![a_int("axis", 0)],
        )
        .n(
            "unsq",
            "Unsqueeze",
            &["n"],
            &["n1"],
            vec![a_ints("axes", &[0])],
        )
        .n(
            "minus1",
            "Constant",
            &[],
            &["m1"],
            vec![a_tensor("value", ti("c", &[1], &[-1]))],
        )
        .n(
            "cat",
            "Concat",
            &["n1", "m1"],
            &["target"],
            vec![a_int("axis", 0)],
        )
        .n("cast", "Cast", &["target"], &["t64"], vec![a_int("to", 7)])
        .n("view", "Reshape", &["x", "t64"], &["f"], vec![])
        .init(tf("fc.w", &[3, 8], &vals(99, 24)))
        .init(tf("fc.b", &[3], &vals(98, 3)))
        .n(
            "fc",
            "Gemm",
            &["f", "fc.w", "fc.b"],
            &["y"],
            vec![a_int("transB", 1)],
        );
    let imp = g.import().unwrap();
    assert_eq!(ops(&imp), ["flatten", "linear"]);
    let m = imp.to_model(Path::new("t.onnx")).unwrap();
    let x = vals(80, 8);
    let xd: Vec<f64> = x.iter().map(|&v| v as f64).collect();
    close("view", &cpu(&m, &x), &fc_ref(&xd, 3));

    // Unsqueeze back to [N, K, 1, 1] is free; to [N, 2, 4] it is not.
    let mut g = G::new(13, 2, 2, 2);
    g.init(ti("ax", &[2], &[2, 3]))
        .init(ti("bad", &[3], &[1, 2, 4]))
        .n("flat", "Flatten", &["x"], &["f"], vec![])
        .n("uns", "Unsqueeze", &["f", "ax"], &["y"], vec![]);
    let imp = g.import().unwrap();
    assert_eq!(ops(&imp), ["flatten"]);
    let mut g = G::new(13, 2, 2, 2);
    g.init(ti("bad", &[4], &[1, 2, 4, 1]))
        .n("r", "Reshape", &["x", "bad"], &["y"], vec![]);
    let e = err_of(g.import());
    assert!(
        e.contains("`r` (Reshape)") && e.contains("reshaping"),
        "{e}"
    );
}

#[test]
fn concat_dropout_identity_and_final_softmax() {
    let mut g = G::new(13, 2, 3, 3);
    g.init(tf("w", &[3, 2, 1, 1], &vals(90, 6)))
        .n("conv", "Conv", &["x", "w"], &["a"], vec![])
        .n("id", "Identity", &["x"], &["b"], vec![])
        .n(
            "cat",
            "Concat",
            &["a", "b"],
            &["c"],
            vec![a_int("axis", -3)],
        )
        .n("drop", "Dropout", &["c"], &["d", "mask"], vec![])
        .n("gap", "GlobalAveragePool", &["d"], &["p"], vec![]);
    g.init(tf("fc.w", &[4, 5], &vals(99, 20)))
        .init(tf("fc.b", &[4], &vals(98, 4)))
        .n("flat", "Flatten", &["p"], &["f"], vec![])
        .n(
            "fc",
            "Gemm",
            &["f", "fc.w", "fc.b"],
            &["z"],
            vec![a_int("transB", 1)],
        )
        .n("softmax", "Softmax", &["z"], &["y"], vec![a_int("axis", 1)]);
    let imp = g.import().unwrap();
    assert_eq!(ops(&imp), ["conv2d", "concat", "global_avg_pool", "linear"]);
    assert_eq!(node(&imp, "concat").inputs, ["conv", "input"]);
    assert!(
        imp.warnings
            .iter()
            .any(|w| w.contains("Softmax") && w.contains("logits")),
        "{:?}",
        imp.warnings
    );
    assert_eq!(imp.spec.output.as_deref(), Some("fc"));

    // A softmax inside the graph stays.
    let mut g = G::new(13, 4, 1, 1);
    g.n("flat0", "Flatten", &["x"], &["f0"], vec![])
        .n("sm", "Softmax", &["f0"], &["s"], vec![a_int("axis", 1)])
        .init(tf("fc.w", &[2, 4], &vals(99, 8)))
        .n(
            "fc",
            "Gemm",
            &["s", "fc.w"],
            &["y"],
            vec![a_int("transB", 1)],
        );
    assert_eq!(ops(&g.import().unwrap()), ["softmax", "linear"]);
}

#[test]
fn layout_ops_fold_into_the_next_linear_layer() {
    // VGG's AdaptiveAvgPool2d((2, 2)) on a 1x1 map as the dynamo exporter
    // writes it: Transpose, GatherND of zeros, Transpose, ReduceMean; then
    // Reshape and Gemm. Every output position copies the single pixel.
    let c = 3usize;
    let mut g = G::new(20, c as i64, 1, 1);
    g.init(ti("idx", &[2, 1, 2, 1, 2], &[0; 8]))
        .init(ti("axes", &[2], &[-3, -1]))
        .init(ti("shape", &[2], &[1, (c * 4) as i64]))
        .init(tf("fc.w", &[2, (c * 4) as i64], &vals(99, 2 * c * 4)))
        .init(tf("fc.b", &[2], &vals(98, 2)))
        .n(
            "t1",
            "Transpose",
            &["x"],
            &["a"],
            vec![a_ints("perm", &[2, 3, 0, 1])],
        )
        .n("gnd", "GatherND", &["a", "idx"], &["b"], vec![])
        .n(
            "t2",
            "Transpose",
            &["b"],
            &["c"],
            vec![a_ints("perm", &[4, 5, 0, 1, 2, 3])],
        )
        .n(
            "mean",
            "ReduceMean",
            &["c", "axes"],
            &["d"],
            vec![a_int("keepdims", 0)],
        )
        .n("view", "Reshape", &["d", "shape"], &["f"], vec![])
        .n(
            "fc",
            "Gemm",
            &["f", "fc.w", "fc.b"],
            &["y"],
            vec![a_int("transB", 1)],
        );
    let imp = g.import().unwrap();
    assert_eq!(ops(&imp), ["linear"]);
    let m = imp.to_model(Path::new("t.onnx")).unwrap();
    let x = vals(95, c);
    let rep: Vec<f64> = (0..c * 4).map(|i| x[i / 4] as f64).collect();
    close("replicated pool", &cpu(&m, &x), &fc_ref(&rep, 2));

    // A transpose that feeds anything else is refused.
    let mut g = G::new(13, 2, 2, 2);
    g.n(
        "t",
        "Transpose",
        &["x"],
        &["a"],
        vec![a_ints("perm", &[0, 1, 3, 2])],
    )
    .n("relu", "Relu", &["a"], &["y"], vec![]);
    let e = err_of(g.import());
    assert!(
        e.contains("`relu` (Relu)") && e.contains("rearrangement"),
        "{e}"
    );
}

#[test]
fn every_unsupported_node_is_listed_at_once() {
    let mut g = G::new(13, 2, 4, 4);
    g.n("first", "Tanh", &["x"], &["a"], vec![])
        .n("second", "Conv", &["a", "x"], &["b"], vec![])
        .n("third", "LSTM", &["b"], &["c"], vec![])
        .n("fourth", "Relu", &["c"], &["d"], vec![])
        .n("custom", "FancyOp", &["d"], &["e"], vec![])
        .n("gap", "GlobalAveragePool", &["e"], &["p"], vec![]);
    g.nodes[4].domain = Some("com.example".into());
    head(&mut g, "p", 2, 2);
    let e = err_of(g.import());
    assert!(e.contains("3 unsupported nodes"), "{e}");
    for want in [
        "`first` (Tanh)",
        "`third` (LSTM)",
        "`custom` (FancyOp)",
        "com.example",
    ] {
        assert!(e.contains(want), "{want} in: {e}");
    }
    assert!(
        !e.contains("`fourth`"),
        "a supported node after an unsupported one is not listed: {e}"
    );
}

#[test]
fn dead_branches_and_extra_outputs_are_ignored() {
    let mut g = G::new(13, 2, 1, 1);
    g.n("unused", "Tanh", &["x"], &["t"], vec![])
        .n("relu", "Relu", &["x"], &["a"], vec![]);
    head(&mut g, "a", 2, 2);
    g.outputs.push(vi("t", &[]));
    // An initializer nothing live reads may be of a type advex does not read.
    g.init(TensorProto {
        name: Some("label_names".into()),
        dims: vec![1],
        data_type: Some(8),
        string_data: vec![b"cat".to_vec()],
        ..Default::default()
    });
    let imp = g.import().unwrap();
    assert_eq!(ops(&imp), ["relu", "linear"]);
    assert!(
        imp.warnings.iter().any(|w| w.contains("2 outputs")),
        "{:?}",
        imp.warnings
    );
}

// ---- inputs and options ---------------------------------------------------

fn tiny(opset: i64, input: advex::onnx::proto::ValueInfoProto) -> G {
    let mut g = G::new(opset, 3, 4, 4);
    g.inputs = vec![input];
    g.n("gap", "GlobalAveragePool", &["x"], &["p"], vec![]);
    head(&mut g, "p", 3, 2);
    g
}

#[test]
fn dynamic_input_size_needs_size_option() {
    let g = tiny(
        13,
        vi(
            "x",
            &[D::Named("N"), D::Fixed(3), D::Named("H"), D::Named("W")],
        ),
    );
    let e = err_of(g.import());
    assert!(e.contains("--size") && e.contains("dynamic"), "{e}");
    let imp = g
        .import_with(&ImportOptions {
            size: Some([20, 30]),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(imp.spec.input, [3, 20, 30]);

    // A fixed size that --size contradicts.
    let g = tiny(13, image_input("x", 3, 4, 4));
    let e = err_of(g.import_with(&ImportOptions {
        size: Some([5, 5]),
        ..Default::default()
    }));
    assert!(e.contains("fixed at 4x4"), "{e}");

    // Unknown channels, wrong rank, integer input.
    let g = tiny(
        13,
        vi("x", &[D::Fixed(1), D::Named("C"), D::Fixed(4), D::Fixed(4)]),
    );
    assert!(err_of(g.import()).contains("channel count"));
    let g = tiny(13, vi("x", &[D::Fixed(1), D::Fixed(3)]));
    assert!(err_of(g.import()).contains("rank 2"));
    let mut g = tiny(13, image_input("x", 3, 4, 4));
    if let Some(advex::onnx::proto::type_proto::Value::TensorType(t)) =
        g.inputs[0].r#type.as_mut().and_then(|t| t.value.as_mut())
    {
        t.elem_type = Some(7);
    }
    assert!(err_of(g.import()).contains("INT64"));
}

#[test]
fn classes_mean_std_and_name_options() {
    let dir = tempfile::tempdir().unwrap();
    let classes = dir.path().join("classes.txt");
    std::fs::write(&classes, "cat\ndog\n\n").unwrap();
    let g = tiny(13, image_input("x", 3, 4, 4));
    let opts = ImportOptions {
        classes: Some(classes.clone()),
        mean: Some(vec![0.485, 0.456, 0.406]),
        std: Some(vec![0.229, 0.224, 0.225]),
        name: Some("tiny".into()),
        ..Default::default()
    };
    let imp = g.import_with(&opts).unwrap();
    assert_eq!(
        imp.spec.classes.as_deref(),
        Some(&["cat".to_string(), "dog".to_string()][..])
    );
    assert_eq!(imp.spec.name.as_deref(), Some("tiny"));
    let m = imp.to_model(Path::new("t.onnx")).unwrap();
    assert_eq!(
        m.nodes[0].name, "normalize",
        "mean/std put a normalize node in front"
    );

    std::fs::write(&classes, "a\nb\nc\n").unwrap();
    let e = err_of(g.import_with(&opts));
    assert!(
        e.contains("3 class names") && e.contains("2 outputs"),
        "{e}"
    );
    let e = err_of(g.import_with(&ImportOptions {
        mean: Some(vec![0.5, 0.5]),
        ..Default::default()
    }));
    assert!(e.contains("--mean has 2 values"), "{e}");
    let e = err_of(g.import_with(&ImportOptions {
        std: Some(vec![0.0]),
        ..Default::default()
    }));
    assert!(e.contains("non-zero"), "{e}");
    assert_eq!(parse_size("224").unwrap(), [224, 224]);
    assert_eq!(parse_size("32x48").unwrap(), [32, 48]);
    assert!(parse_size("32x").is_err() && parse_size("0").is_err());
    assert_eq!(
        parse_floats("mean", "0.5, 1,2e-1").unwrap(),
        [0.5, 1.0, 0.2]
    );
    assert!(parse_floats("std", "0.5,x")
        .unwrap_err()
        .to_string()
        .contains("`x`"));
}

// ---- bad files ------------------------------------------------------------

fn import_bytes(b: &[u8]) -> String {
    err_of(advex::onnx::import_onnx_bytes(
        Path::new("bad.onnx"),
        b,
        &ImportOptions::default(),
    ))
}

#[test]
fn non_onnx_and_truncated_files_are_refused() {
    assert!(import_bytes(b"").contains("empty"));
    let png = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0\0\x10\0\0\0\x10\x08\x02\0\0\0";
    let e = import_bytes(png);
    assert!(e.contains("not an ONNX model"), "{e}");
    let e = import_bytes(b"{\"format\": 1}");
    assert!(e.contains("not an ONNX model"), "{e}");
    let good = tiny(13, image_input("x", 3, 4, 4)).bytes();
    for cut in [1, 10, good.len() / 2, good.len() - 1] {
        let e = import_bytes(&good[..cut]);
        assert!(
            e.contains("not an ONNX model") || e.contains("truncated"),
            "cut at {cut}: {e}"
        );
    }
    // A graph with no nodes and no input.
    let mut g = G::new(13, 3, 4, 4);
    g.inputs.clear();
    assert!(err_of(g.import()).contains("no input"));
}

#[test]
fn unsupported_opsets_are_named() {
    for v in [6, MAX_OPSET + 1] {
        let e = err_of(tiny(v, image_input("x", 3, 4, 4)).import());
        assert!(
            e.contains(&format!("opset {v}")) && e.contains("opset_version"),
            "{e}"
        );
    }
}

#[test]
fn initializer_sizes_are_checked() {
    let mut g = tiny(13, image_input("x", 3, 4, 4));
    g.inits[0].raw_data.as_mut().unwrap().pop();
    let e = err_of(g.import());
    assert!(e.contains("fc.w") && e.contains("raw_data holds 23"), "{e}");

    let mut g = tiny(13, image_input("x", 3, 4, 4));
    g.inits[1] = tf_fields("fc.b", &[2], &[1.0]);
    let e = err_of(g.import());
    assert!(
        e.contains("fc.b") && e.contains("float_data holds 1"),
        "{e}"
    );

    let mut g = tiny(13, image_input("x", 3, 4, 4));
    g.inits[0].dims = vec![-2, 3];
    assert!(err_of(g.import()).contains("negative"));

    let mut g = tiny(13, image_input("x", 3, 4, 4));
    g.inits[0].dims = vec![1 << 40, 1 << 40];
    assert!(err_of(g.import()).contains("too large"));
}

fn external(name: &str, dims: &[i64], location: &str, offset: usize, length: usize) -> TensorProto {
    TensorProto {
        name: Some(name.into()),
        dims: dims.to_vec(),
        data_type: Some(1),
        data_location: Some(DataLocation::External as i32),
        external_data: vec![
            meta("location", location),
            meta("offset", &offset.to_string()),
            meta("length", &length.to_string()),
        ],
        ..Default::default()
    }
}

#[test]
fn external_data_is_read_and_checked() {
    let dir = tempfile::tempdir().unwrap();
    let w = vals(99, 6);
    let mut data = vec![0u8; 8];
    data.extend(w.iter().flat_map(|v| v.to_le_bytes()));
    std::fs::write(dir.path().join("m.onnx.data"), &data).unwrap();
    let mut g = tiny(13, image_input("x", 3, 4, 4));
    g.inits[0] = external("fc.w", &[2, 3], "m.onnx.data", 8, 24);
    let path = dir.path().join("m.onnx");
    std::fs::write(&path, g.bytes()).unwrap();
    let (spec, tensors) = import_onnx(&path, &ImportOptions::default()).unwrap();
    assert_eq!(spec.input, [3, 4, 4]);
    assert_eq!(tensors.iter().find(|t| t.0 == "fc.w").unwrap().2, w);

    for (loc, off, len, want) in [
        ("m.onnx.data", 16, 24, "runs past the end"),
        ("missing.data", 0, 24, "cannot read its external data file"),
        ("../m.onnx.data", 0, 24, "relative path inside"),
        ("m.onnx.data", 0, 20, "need 24 bytes"),
    ] {
        let mut g = tiny(13, image_input("x", 3, 4, 4));
        g.inits[0] = external("fc.w", &[2, 3], loc, off, len);
        std::fs::write(&path, g.bytes()).unwrap();
        let e = err_of(import_onnx(&path, &ImportOptions::default()));
        assert!(e.contains(want) && e.contains("fc.w"), "{want} in: {e}");
    }
}

#[test]
fn outputs_that_are_not_class_scores_are_refused() {
    let mut g = G::new(13, 2, 4, 4);
    g.init(tf("w", &[3, 2, 1, 1], &vals(1, 6)))
        .n("conv", "Conv", &["x", "w"], &["y"], vec![]);
    let e = err_of(g.import());
    assert!(
        e.contains("no classifier output") && e.contains("[1, 3, 4, 4]"),
        "{e}"
    );

    let mut g = G::new(13, 2, 4, 4);
    g.n(
        "k",
        "Constant",
        &[],
        &["y"],
        vec![a_tensor("value", tf("v", &[1, 3], &[1.0, 2.0, 3.0]))],
    );
    assert!(err_of(g.import()).contains("constant"));

    let mut g = G::new(13, 2, 4, 4);
    g.outputs = vec![vi("nowhere", &[])];
    assert!(err_of(g.import()).contains("not produced"));
}

#[test]
fn malformed_graphs_name_the_node() {
    let mut g = tiny(13, image_input("x", 3, 4, 4));
    g.nodes[0].input[0] = "ghost".into();
    let e = err_of(g.import());
    assert!(e.contains("ghost") && e.contains("gap"), "{e}");

    // A conv whose weights do not match the input channels.
    let mut g = G::new(13, 2, 4, 4);
    g.init(tf("w", &[3, 5, 1, 1], &vals(1, 15)))
        .n("conv", "Conv", &["x", "w"], &["c"], vec![])
        .n("gap", "GlobalAveragePool", &["c"], &["p"], vec![]);
    head(&mut g, "p", 3, 2);
    let e = err_of(g.import());
    assert!(e.contains("`conv`"), "{e}");

    // Two nodes producing one value.
    let mut g = tiny(13, image_input("x", 3, 4, 4));
    g.n("again", "Relu", &["x"], &["p"], vec![]);
    assert!(err_of(g.import()).contains("more than once"));
}

// ---- files ------------------------------------------------------------------

#[test]
fn convert_writes_a_model_that_loads() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("tiny.onnx");
    let out = dir.path().join("tiny.safetensors");
    std::fs::write(&src, tiny(13, image_input("x", 3, 4, 4)).bytes()).unwrap();
    convert_onnx(&src, &out, &ImportOptions::default()).unwrap();
    let a = Model::load(&out).unwrap();
    let b = load_onnx_model(&src, &ImportOptions::default()).unwrap();
    assert_eq!(a.nodes, b.nodes);
    assert_eq!(a.name, "tiny");
    assert!(err_of(load_onnx_model(
        &dir.path().join("none.onnx"),
        &ImportOptions::default()
    ))
    .contains("none.onnx"));
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/onnx")
}

#[test]
fn torch_exports_load() {
    for (file, shape, ops_want) in [
        (
            "resnet_basic.onnx",
            [3, 36, 52],
            &["conv2d", "max_pool", "add", "global_avg_pool"][..],
        ),
        (
            "resnet_bottleneck.onnx",
            [3, 40, 40],
            &["conv2d", "add", "global_avg_pool"],
        ),
        ("mobilenet_v2.onnx", [3, 40, 56], &["relu6", "add"]),
        (
            "mobilenet_v2.legacy.onnx",
            [3, 40, 56],
            &["relu6", "global_avg_pool"],
        ),
        (
            "mobilenet_v3_small.onnx",
            [3, 48, 48],
            &["hardswish", "hardsigmoid", "mul"],
        ),
        (
            "efficientnet_b0.onnx",
            [3, 44, 44],
            &["silu", "sigmoid", "mul"],
        ),
        ("squeezenet1_1.onnx", [3, 50, 66], &["concat", "max_pool"]),
        (
            "squeezenet1_1.legacy.onnx",
            [3, 50, 66],
            &["concat", "max_pool"],
        ),
        (
            "vgg11_bn.onnx",
            [3, 56, 56],
            &["batch_norm", "max_pool", "linear"],
        ),
    ] {
        let imp = advex::onnx::import_onnx_full(&fixtures().join(file), &ImportOptions::default())
            .unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(imp.spec.input, shape, "{file}");
        for op in ops_want {
            assert!(ops(&imp).contains(op), "{file}: no {op} in {:?}", ops(&imp));
        }
        let m = imp.to_model(&fixtures().join(file)).unwrap();
        assert_eq!(m.num_classes(), 10, "{file}");
        assert!(m.nodes.iter().all(|n| n.shape.item() > 0));
    }
}
