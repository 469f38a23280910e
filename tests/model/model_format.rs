//! The model file format: round trips, sidecar, BatchNorm folding, shape
//! inference, FLOPs and parameters, and every kind of bad input. CPU only.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::common::builder::*;
use crate::common::{assert_close, rng};
use advex::gpu::Shape;
use advex::model::{
    write_safetensors, Dtype, Model, ModelError, ModelSpec, NodeSpec, Op, Src, METADATA_KEY,
};
use advex::ops::activation::Activation;
use advex::ops::params::Conv2dParams;
use rand::Rng;
use serde_json::{json, Value};

fn path() -> PathBuf {
    PathBuf::from("/models/test_model.safetensors")
}

fn load(b: &ModelBuilder) -> Result<Model, ModelError> {
    Model::from_bytes(&path(), &b.bytes(Dtype::F32), None)
}

fn load_ok(b: &ModelBuilder) -> Model {
    load(b).unwrap_or_else(|e| panic!("unexpected error: {e}"))
}

/// Asserts an error naming the test file, exactly `node` and `tensor`, and
/// containing every word of `words` in its message.
#[track_caller]
fn expect_err(
    r: Result<Model, ModelError>,
    node: Option<&str>,
    tensor: Option<&str>,
    words: &[&str],
) -> ModelError {
    let e = match r {
        Ok(_) => panic!("expected an error containing {words:?}, the model loaded"),
        Err(e) => e,
    };
    let text = e.to_string();
    assert!(text.contains("test_model."), "file not named: {text}");
    assert_eq!(e.node.as_deref(), node, "node: {text}");
    assert_eq!(e.tensor.as_deref(), tensor, "tensor: {text}");
    if let Some(n) = node {
        assert!(text.contains(&format!("node `{n}`")), "{text}");
    }
    if let Some(t) = tensor {
        assert!(text.contains(&format!("tensor `{t}`")), "{text}");
    }
    for w in words {
        assert!(text.contains(w), "missing {w:?} in: {text}");
    }
    e
}

fn node<'a>(m: &'a Model, name: &str) -> &'a advex::model::Node {
    m.nodes
        .iter()
        .find(|n| n.name == name)
        .unwrap_or_else(|| panic!("no node {name} in {:?}", names(m)))
}

fn names(m: &Model) -> Vec<String> {
    m.nodes.iter().map(|n| n.name.clone()).collect()
}

fn shape(c: u32, h: u32, w: u32) -> Shape {
    Shape::new(1, c, h, w)
}

/// Plain f64 convolution of one item `[c, h, w]`.
fn conv_f64(
    x: &[f64],
    xs: Shape,
    w: &[f64],
    ws: [u32; 4],
    bias: Option<&[f64]>,
    p: &Conv2dParams,
    out: Shape,
) -> Vec<f64> {
    let [oc, icg, kh, kw] = ws.map(|v| v as usize);
    let (h, wd) = (xs.h as i64, xs.w as i64);
    let ocg = oc / p.groups as usize;
    let mut y = vec![0.0; out.item() as usize];
    for o in 0..oc {
        let g = o / ocg;
        for oy in 0..out.h as usize {
            for ox in 0..out.w as usize {
                let mut acc = bias.map_or(0.0, |b| b[o]);
                for i in 0..icg {
                    let ci = g * icg + i;
                    for ky in 0..kh {
                        for kx in 0..kw {
                            let iy = (oy * p.stride[0] as usize + ky * p.dilation[0] as usize)
                                as i64
                                - p.padding[0] as i64;
                            let ix = (ox * p.stride[1] as usize + kx * p.dilation[1] as usize)
                                as i64
                                - p.padding[1] as i64;
                            if iy < 0 || ix < 0 || iy >= h || ix >= wd {
                                continue;
                            }
                            acc += w[((o * icg + i) * kh + ky) * kw + kx]
                                * x[(ci * h as usize + iy as usize) * wd as usize + ix as usize];
                        }
                    }
                }
                y[(o * out.h as usize + oy) * out.w as usize + ox] = acc;
            }
        }
    }
    y
}

fn f64s(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

// ---------------------------------------------------------------- round trips

fn plain_cnn(seed: u64) -> ModelBuilder {
    let mut b = ModelBuilder::new("plain", [3, 6, 6], seed);
    b.conv("conv", "input", 4, 3, 1, [1, 1, 1, 1], 1, true);
    b.unary("act", "relu", "conv");
    b.global_avg_pool("gap", "act");
    b.flatten("flat", "gap");
    b.linear("fc", "flat", 5, true);
    b
}

#[test]
fn round_trip_f32_f16_bf16() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = plain_cnn(1);
    // values that f16/bf16 cannot hold exactly
    b.tensor_mut("fc.bias").2[0] = 0.1234567;
    b.tensor_mut("fc.bias").2[1] = -3.3333333;
    type Round = fn(f32) -> f32;
    let cases: [(Dtype, Round); 3] = [
        (Dtype::F32, |v| v),
        (Dtype::F16, |v| half::f16::from_f32(v).to_f32()),
        (Dtype::BF16, |v| half::bf16::from_f32(v).to_f32()),
    ];
    for (dtype, round) in cases {
        let p = b.write(dir.path(), &format!("m_{dtype:?}.safetensors"), dtype);
        let m = Model::load(&p).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(m.path, p);
        assert_eq!(m.name, "plain");
        assert_eq!(m.input, [3, 6, 6]);
        assert_eq!(names(&m), ["conv", "act", "gap", "flat", "fc"]);
        let want = |t: &str| -> Vec<f32> { b.tensor_values(t).iter().map(|&v| round(v)).collect() };
        let Op::Conv2d {
            weight,
            bias,
            params,
        } = &m.nodes[0].op
        else {
            panic!("conv expected")
        };
        assert_eq!(weight.shape, [4, 3, 3, 3]);
        assert_eq!(params.padding, [1; 4]);
        assert_eq!(weight.data, want("conv.weight"), "{dtype:?}");
        assert_eq!(bias.as_deref(), Some(&want("conv.bias")[..]));
        let Op::Linear { weight, bias } = &m.nodes[4].op else {
            panic!("linear expected")
        };
        assert_eq!(weight.shape, [5, 4, 1, 1]);
        assert_eq!(weight.data, want("fc.weight"), "{dtype:?}");
        assert_eq!(bias.as_deref(), Some(&want("fc.bias")[..]));
        if dtype != Dtype::F32 {
            assert_ne!(want("fc.bias")[0], 0.1234567f32, "rounding happened");
        }
        assert_eq!(m.output, 4);
        assert_eq!(m.num_classes(), 5);
        assert_eq!(m.nodes[1].inputs, [Src::Node(0)]);
        assert_eq!(m.nodes[0].inputs, [Src::Input]);
    }
}

/// A one-linear model from a hand-written header, so dtypes can be anything.
fn linear_raw(weight_dtype: &str, weight_bytes: Vec<u8>, extra: Option<(&str, Value)>) -> Vec<u8> {
    let spec = json!({"format": 1, "input": [2, 1, 1],
        "nodes": [{"name": "fc", "op": "linear", "inputs": ["input"], "weight": "fc.weight"}]});
    let n = weight_bytes.len();
    let mut header = json!({
        "__metadata__": {"advex": spec.to_string()},
        "fc.weight": {"dtype": weight_dtype, "shape": [3, 2], "data_offsets": [0, n]},
    });
    let mut data = weight_bytes;
    if let Some((name, v)) = extra {
        header[name] = v;
        data.extend([0u8; 64]);
    }
    raw_safetensors(&header, &data)
}

#[test]
fn f64_tensors_convert() {
    let vals = [1.5f64, -2.25, 1e-3, 0.1, 7.0, -0.0];
    let bytes: Vec<u8> = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
    let m = Model::from_bytes(&path(), &linear_raw("F64", bytes, None), None).unwrap();
    let Op::Linear { weight, bias } = &m.nodes[0].op else {
        panic!()
    };
    assert!(bias.is_none());
    assert_eq!(weight.data, vals.map(|v| v as f32));
    assert_eq!(m.name, "test_model", "name defaults to the file stem");

    // a finite f64 too large for f32
    let bytes: Vec<u8> = [1.0f64, 1e300, 0.0, 0.0, 0.0, 0.0]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    expect_err(
        Model::from_bytes(&path(), &linear_raw("F64", bytes, None), None),
        Some("fc"),
        Some("fc.weight"),
        &["index 1", "does not fit in f32"],
    );
}

#[test]
fn unsupported_dtype_is_refused_but_unused_tensors_are_fine() {
    let bytes = vec![0u8; 24];
    expect_err(
        Model::from_bytes(&path(), &linear_raw("I32", bytes, None), None),
        Some("fc"),
        Some("fc.weight"),
        &["dtype I32 is not supported", "F32, F16, BF16"],
    );
    // unused tensors of any dtype, known or not, and with any values, are fine
    let w: Vec<u8> = [1.0f32; 6].iter().flat_map(|v| v.to_le_bytes()).collect();
    for (dtype, shape, end) in [
        ("I64", json!([8]), 88),
        ("F8_E4M3", json!([64]), 88),
        ("WEIRD", json!([3]), 88),
    ] {
        let extra = json!({"dtype": dtype, "shape": shape, "data_offsets": [24, end]});
        let m = Model::from_bytes(
            &path(),
            &linear_raw("F32", w.clone(), Some(("unused", extra))),
            None,
        )
        .unwrap_or_else(|e| panic!("{dtype}: {e}"));
        assert_eq!(m.nodes.len(), 1);
    }
    // an unused tensor full of NaN
    let mut b = plain_cnn(3);
    b.tensors
        .push(("spare".into(), vec![2], vec![f32::NAN, f32::INFINITY]));
    load_ok(&b);
}

// ---------------------------------------------------------------- sidecar

#[test]
fn sidecar_json() {
    let dir = tempfile::tempdir().unwrap();
    let b = tiny_cnn(2);
    let st = dir.path().join("plain.safetensors");
    let side = dir.path().join("plain.json");
    write_safetensors(&st, &BTreeMap::new(), &b.tensors, Dtype::F32).unwrap();

    // no description anywhere
    let e = Model::load(&st).unwrap_err();
    let text = e.to_string();
    assert!(
        text.contains("plain.safetensors") && text.contains("no model description"),
        "{text}"
    );
    assert!(
        text.contains("plain.json"),
        "the sidecar it looked for: {text}"
    );

    std::fs::write(&side, b.spec().to_string()).unwrap();
    let from_side = Model::load(&st).unwrap_or_else(|e| panic!("{e}"));
    let from_json_path = Model::load(&side).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(from_side, from_json_path);
    let bytes = std::fs::read(&st).unwrap();
    let from_mem = Model::from_bytes(&st, &bytes, Some(&b.spec().to_string())).unwrap();
    assert_eq!(from_side, from_mem);
    // same as the model with the description in its header
    let embedded = b.write(dir.path(), "embedded.safetensors", Dtype::F32);
    let m = Model::load(&embedded).unwrap();
    assert_eq!(m.nodes, from_side.nodes);
    assert_eq!(from_side.path, st);

    // a broken sidecar is reported as the sidecar file
    std::fs::write(&side, "{\"format\": 1,\n \"input\": [1, 8").unwrap();
    let e = Model::load(&st).unwrap_err();
    assert!(e.file.ends_with("plain.json"), "{e}");
    assert!(e.to_string().contains("line 2 column"), "{e}");

    // the header's description wins over a sidecar
    std::fs::write(dir.path().join("embedded.json"), "garbage").unwrap();
    Model::load(&embedded).unwrap();
}

// ---------------------------------------------------------------- BN folding

fn bn_reference(y: &mut [f64], b: &ModelBuilder, bn: &str, hw: usize, eps: f64) {
    let g = f64s(b.tensor_values(&format!("{bn}.weight")));
    let beta = f64s(b.tensor_values(&format!("{bn}.bias")));
    let m = f64s(b.tensor_values(&format!("{bn}.running_mean")));
    let v = f64s(b.tensor_values(&format!("{bn}.running_var")));
    for (i, val) in y.iter_mut().enumerate() {
        let c = i / hw;
        *val = (*val - m[c]) / (v[c] + eps).sqrt() * g[c] + beta[c];
    }
}

#[test]
fn batch_norm_folds_into_conv() {
    // (oc, k, stride, padding, groups, bias)
    let configs = [
        (6, 3, 2, [1, 0, 1, 2], 3, false),
        (5, 3, 1, [1, 1, 1, 1], 1, true),
        (3, 1, 1, [0, 0, 0, 0], 3, true),
    ];
    for (seed, &(oc, k, stride, pad, groups, bias)) in configs.iter().enumerate() {
        let mut b = ModelBuilder::new("fold", [3, 9, 9], 10 + seed as u64);
        b.conv("conv", "input", oc, k, stride, pad, groups, bias);
        b.bn("bn", "conv");
        let m = load_ok(&b);
        assert_eq!(names(&m), ["conv+bn"]);
        let n = &m.nodes[0];
        let Op::Conv2d {
            params,
            weight,
            bias: folded_bias,
        } = &n.op
        else {
            panic!()
        };
        let xs = shape(3, 9, 9);
        let x: Vec<f64> = f64s(&crate::common::random(99 + seed as u64, 3 * 81));
        let w0 = f64s(b.tensor_values("conv.weight"));
        let b0 = bias.then(|| f64s(b.tensor_values("conv.bias")));
        let mut want = conv_f64(&x, xs, &w0, weight.shape, b0.as_deref(), params, n.shape);
        bn_reference(&mut want, &b, "bn", (n.shape.h * n.shape.w) as usize, 1e-3);
        let fb = folded_bias.as_ref().expect("folding makes a bias");
        let got = conv_f64(
            &x,
            xs,
            &f64s(&weight.data),
            weight.shape,
            Some(&f64s(fb)),
            params,
            n.shape,
        );
        let got: Vec<f32> = got.iter().map(|&v| v as f32).collect();
        assert_close(&format!("folded conv {seed}"), &got, &want, 1e-5);
    }
}

#[test]
fn batch_norm_folds_through_dropout_but_not_when_shared() {
    // conv -> dropout -> bn folds; dropout disappears
    let mut b = ModelBuilder::new("m", [2, 5, 5], 4);
    b.conv("conv", "input", 3, 3, 1, [1; 4], 1, true);
    b.unary("drop", "dropout", "conv");
    b.node_mut("drop")["p"] = json!(0.5);
    b.bn("bn", "drop");
    b.unary("act", "relu", "bn");
    let m = load_ok(&b);
    assert_eq!(names(&m), ["conv+bn", "act"]);
    assert_eq!(m.nodes[1].inputs, [Src::Node(0)]);

    // conv output also feeds an add: the bn stays, as an affine
    let mut b = ModelBuilder::new("m", [2, 5, 5], 5);
    b.conv("conv", "input", 3, 3, 1, [1; 4], 1, true);
    b.bn("bn", "conv");
    b.node("sum", "add", &["conv", "bn"], json!({}), [3, 5, 5]);
    let m = load_ok(&b);
    assert_eq!(names(&m), ["conv", "bn", "sum"]);
    let Op::Affine { scale, shift } = &node(&m, "bn").op else {
        panic!("affine expected")
    };
    let g = b.tensor_values("bn.weight");
    let beta = b.tensor_values("bn.bias");
    let mean = b.tensor_values("bn.running_mean");
    let var = b.tensor_values("bn.running_var");
    for c in 0..3 {
        let s = g[c] as f64 / (var[c] as f64 + 1e-3).sqrt();
        assert!((scale[c] as f64 - s).abs() <= 1e-6 * s.abs());
        let t = beta[c] as f64 - mean[c] as f64 * s;
        assert!((shift[c] as f64 - t).abs() <= 1e-6 * (1.0 + t.abs()));
    }

    // a conv that is the model output is not folded into a following bn
    let mut b = ModelBuilder::new("m", [2, 5, 5], 6);
    b.conv("conv", "input", 3, 3, 1, [1; 4], 1, false);
    b.bn("bn", "conv");
    b.set("output", json!("conv"));
    let m = load_ok(&b);
    assert_eq!(
        names(&m),
        ["conv"],
        "the bn does not reach the output and is pruned"
    );
    assert!(matches!(&m.nodes[0].op, Op::Conv2d { bias: None, .. }));

    // two bns in a row both fold; a bn without weight/bias uses 1 and 0
    let mut b = ModelBuilder::new("m", [2, 5, 5], 7);
    b.conv("conv", "input", 3, 3, 1, [1; 4], 1, false);
    b.bn("bn1", "conv");
    b.bn("bn2", "bn1");
    let n = b.node_mut("bn2");
    n.as_object_mut().unwrap().remove("weight");
    n.as_object_mut().unwrap().remove("bias");
    let m = load_ok(&b);
    assert_eq!(names(&m), ["conv+bn1+bn2"]);
}

// ---------------------------------------------------------------- shapes

type Described = BTreeMap<String, (&'static str, Shape, Vec<String>)>;

fn describe(m: &Model) -> Described {
    m.nodes
        .iter()
        .map(|n| {
            let ins = n
                .inputs
                .iter()
                .map(|s| match s {
                    Src::Input => "input".to_string(),
                    Src::Node(j) => m.nodes[*j].name.clone(),
                })
                .collect();
            (n.name.clone(), (n.op.name(), n.shape, ins))
        })
        .collect()
}

#[test]
fn shape_inference_every_op() {
    let b = every_op(8);
    let m = load_ok(&b);
    let want: &[(&str, &str, Shape)] = &[
        ("normalize", "affine", shape(3, 12, 12)),
        ("c1+bn1", "conv2d", shape(8, 12, 12)),
        ("a1", "relu", shape(8, 12, 12)),
        ("dw", "conv2d", shape(8, 6, 6)),
        ("a2", "relu6", shape(8, 6, 6)),
        ("a3", "leaky_relu", shape(8, 6, 6)),
        ("a4", "hardswish", shape(8, 6, 6)),
        ("se_pool", "global_avg_pool", shape(8, 1, 1)),
        ("se_sig", "hardsigmoid", shape(8, 1, 1)),
        ("se_mul", "mul", shape(8, 6, 6)),
        ("s1", "silu", shape(8, 6, 6)),
        ("s2", "sigmoid", shape(8, 6, 6)),
        ("add1", "add", shape(8, 6, 6)),
        ("mp", "max_pool", shape(8, 4, 4)),
        ("ap", "avg_pool", shape(8, 4, 4)),
        ("cat", "concat", shape(16, 4, 4)),
        ("nz", "affine", shape(16, 4, 4)),
        ("fl", "flatten", shape(256, 1, 1)),
        ("fc", "linear", shape(10, 1, 1)),
        ("bnfc", "affine", shape(10, 1, 1)),
        ("sm", "softmax", shape(10, 1, 1)),
    ];
    let got: Vec<(&str, &str, Shape)> = m
        .nodes
        .iter()
        .map(|n| (n.name.as_str(), n.op.name(), n.shape))
        .collect();
    assert_eq!(got, want);
    assert_eq!(m.output, m.nodes.len() - 1);
    assert_eq!(m.num_classes(), 10);

    // inputs, attributes and rewrites
    assert_eq!(m.nodes[0].inputs, [Src::Input]);
    assert_eq!(
        m.nodes[1].inputs,
        [Src::Node(0)],
        "the graph starts at normalize"
    );
    let d = describe(&m);
    assert_eq!(d["fl"].2, ["nz"], "dropout removed");
    assert_eq!(d["se_mul"].2, ["a4", "se_sig"]);
    assert_eq!(d["cat"].2, ["mp", "ap"]);
    let Op::Affine { scale, shift } = &node(&m, "normalize").op else {
        panic!()
    };
    assert!((scale[1] - 1.0 / 0.224).abs() < 1e-5 && (shift[2] + 0.406 / 0.225).abs() < 1e-5);
    let Op::Affine { scale, shift } = &node(&m, "nz").op else {
        panic!()
    };
    assert_eq!((scale.len(), scale[15], shift[3]), (16, 0.5, -0.05));
    assert_eq!(
        node(&m, "a3").op,
        Op::Activation(Activation::LeakyRelu {
            negative_slope: 0.2
        })
    );
    assert_eq!(
        node(&m, "se_sig").op,
        Op::Activation(Activation::Hardsigmoid {
            alpha: 1.0 / 6.0,
            beta: 0.5
        })
    );
    let Op::Conv2d { params, weight, .. } = &node(&m, "dw").op else {
        panic!()
    };
    assert_eq!(params.groups, 8);
    assert_eq!(params.padding, [0, 0, 1, 1]);
    assert_eq!(params.stride, [2, 2]);
    assert_eq!(weight.shape, [8, 1, 3, 3]);
    let Op::AvgPool(p) = &node(&m, "ap").op else {
        panic!()
    };
    assert!(p.ceil_mode && !p.count_include_pad && p.padding == [1; 4]);
    let Op::MaxPool(p) = &node(&m, "mp").op else {
        panic!()
    };
    assert!(p.ceil_mode && p.count_include_pad && p.kernel == [3, 3]);
    assert_eq!(m.preprocess.resize, Some(14));
    assert_eq!(m.preprocess.crop, Some(12));
    assert_eq!(m.preprocess.interpolation, "bilinear");
    assert_eq!(m.preprocess.mean, [0.485, 0.456, 0.406]);

    // the builder's independent shape bookkeeping agrees
    for (name, (_, s, _)) in &d {
        if let Some(base) = name.split('+').next().filter(|_| name != "normalize") {
            let [c, h, w] = b.shape(base);
            assert_eq!(*s, shape(c, h, w), "{name}");
        }
    }

    // the summary names every node and the totals
    let text = m.summary();
    for n in &m.nodes {
        assert!(text.contains(&n.name), "{text}");
    }
    assert!(
        text.contains("total:") && text.contains("classes: 10"),
        "{text}"
    );
}

#[test]
fn nodes_in_any_order_are_sorted() {
    let b = every_op(9);
    let listed = load_ok(&b);
    let mut shuffled = every_op(9);
    let mut r = rng(17);
    for i in (1..shuffled.nodes.len()).rev() {
        let j = r.random_range(0..=i);
        shuffled.nodes.swap(i, j);
    }
    shuffled.set("output", json!("sm"));
    let m = load_ok(&shuffled);
    assert_eq!(describe(&m), describe(&listed));
    for (i, n) in m.nodes.iter().enumerate() {
        for s in &n.inputs {
            if let Src::Node(j) = s {
                assert!(*j < i, "topological order");
            }
        }
    }
    assert_eq!(m.nodes[m.output].name, "sm");

    // reversed order
    let mut rev = every_op(9);
    rev.nodes.reverse();
    rev.set("output", json!("sm"));
    assert_eq!(describe(&load_ok(&rev)), describe(&listed));
}

#[test]
fn spec_structs_serialise_and_parse() {
    let b = every_op(10);
    let spec: ModelSpec = serde_json::from_value(b.spec()).unwrap();
    let again: ModelSpec = serde_json::from_value(serde_json::to_value(&spec).unwrap()).unwrap();
    assert_eq!(spec, again);
    assert_eq!(spec.nodes[3].padding.unwrap().0, [0, 0, 1, 1]);
    // a spec built in code
    let mut conv = NodeSpec::new("conv", "conv2d", &["input"]);
    conv.weight = Some("w".into());
    conv.padding = Some([1, 2].into());
    conv.stride = Some(2.into());
    let spec = ModelSpec {
        format: 1,
        name: Some("coded".into()),
        description: None,
        input: [1, 5, 5],
        preprocess: None,
        classes: Some(vec!["a".into(), "b".into()]),
        nodes: vec![
            conv,
            NodeSpec::new("gap", "global_avg_pool", &["conv"]),
            NodeSpec::new("flat", "flatten", &["gap"]),
        ],
        output: None,
    };
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("coded.safetensors");
    let w: Vec<f32> = (0..18).map(|i| i as f32).collect();
    advex::model::write_model(
        &p,
        &serde_json::to_value(&spec).unwrap(),
        &[("w".into(), vec![2, 1, 3, 3], w)],
        Dtype::F32,
    )
    .unwrap();
    let m = Model::load(&p).unwrap();
    let Op::Conv2d { params, .. } = &m.nodes[0].op else {
        panic!()
    };
    assert_eq!(params.padding, [1, 2, 1, 2]);
    assert_eq!(params.stride, [2, 2]);
    assert_eq!(m.nodes[0].shape, shape(2, 3, 4));
    assert_eq!(m.num_classes(), 2);
}

// ---------------------------------------------------------------- FLOPs, params

#[test]
fn flops_and_params_hand_checked() {
    let mut b = ModelBuilder::new("tiny", [1, 4, 4], 11);
    b.set("preprocess", json!({"mean": [0.5], "std": [0.25]}));
    b.conv("conv", "input", 2, 3, 1, [1; 4], 1, true); // 2*1*9 + 2 = 20 params
    b.unary("act", "relu", "conv"); // [2,4,4]
    b.pool("mp", "max_pool", "act", 2, 2, 0); // [2,2,2]
    b.flatten("flat", "mp"); // [8,1,1]
    b.linear("fc", "flat", 3, true); // 24 + 3 = 27 params
    b.unary("sm", "softmax", "fc");
    let m = load_ok(&b);
    // normalize: 2 params, 16 FLOPs; conv: 2 * 32 outputs * 9 = 576; relu 32;
    // max_pool: 8 outputs * 4 = 32; flatten 0; linear 2 * 24 = 48; softmax 3.
    let per_node: Vec<u64> = (0..m.nodes.len()).map(|i| m.node_flops(i)).collect();
    assert_eq!(per_node, [16, 576, 32, 32, 0, 48, 3]);
    assert_eq!(m.flops(), 707);
    assert_eq!(m.param_count(), 2 + 20 + 27);
    let params: Vec<u64> = m.nodes.iter().map(|n| n.param_count()).collect();
    assert_eq!(params, [2, 20, 0, 0, 0, 27, 0]);
    assert_eq!(m.num_classes(), 3);
    let text = m.summary();
    assert!(text.contains("707"), "{text}");
    assert!(text.contains("49 parameters"), "{text}");
    // folding changes the parameter count: bn params disappear into the conv bias
    let mut b = tiny_cnn(12);
    b.set("classes", json!(["a", "b", "c"]));
    let m = load_ok(&b);
    // conv 4*1*9 + 4 (bias) ; fc 3*4 + 3
    assert_eq!(m.param_count(), 40 + 15);
    // conv out [4,4,4]: 2*64*9 = 1152; relu6 64; gap 64 input elements; fc 2*12 = 24
    assert_eq!(m.flops(), 1152 + 64 + 64 + 24);
    assert_eq!(m.classes.as_ref().unwrap().len(), 3);
}

// ---------------------------------------------------------------- bad containers

#[test]
fn too_short_file() {
    for len in 0..8 {
        expect_err(
            Model::from_bytes(&path(), &vec![1u8; len], None),
            None,
            None,
            &["too short"],
        );
    }
}

#[test]
fn header_length_past_end_of_file() {
    let mut bytes = tiny_cnn(1).bytes(Dtype::F32);
    bytes[..8].copy_from_slice(&(1u64 << 40).to_le_bytes());
    expect_err(
        Model::from_bytes(&path(), &bytes, None),
        None,
        None,
        &["header length 1099511627776 runs past the end"],
    );
    bytes[..8].copy_from_slice(&u64::MAX.to_le_bytes());
    expect_err(
        Model::from_bytes(&path(), &bytes, None),
        None,
        None,
        &["runs past the end"],
    );
}

#[test]
fn truncated_file() {
    let bytes = tiny_cnn(1).bytes(Dtype::F32);
    // safetensors stores tensors sorted by name: fc.weight is last
    expect_err(
        Model::from_bytes(&path(), &bytes[..bytes.len() - 10], None),
        None,
        Some("fc.weight"),
        &["run past the end", "truncated"],
    );
    // cut inside the header
    expect_err(
        Model::from_bytes(&path(), &bytes[..100], None),
        None,
        None,
        &["truncated"],
    );
}

#[test]
fn header_lies_about_sizes_and_offsets() {
    let data = [0u8; 16];
    let cases = [
        (
            json!({"t": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 12]}}),
            "16 bytes",
        ),
        (
            json!({"t": {"dtype": "F32", "shape": [16], "data_offsets": [0, 64]}}),
            "run past the end",
        ),
        (
            json!({"t": {"dtype": "F32", "shape": [1], "data_offsets": [8, 4]}}),
            "end before they start",
        ),
        (
            json!({"t": {"dtype": "F32", "shape": [4611686018427387904u64, 8], "data_offsets": [0, 16]}}),
            "impossible size",
        ),
        (
            json!({"t": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 16]}}),
            "bad entry",
        ),
        (
            json!({"t": {"dtype": "F32", "shape": [4]}}),
            "missing field `data_offsets`",
        ),
        (json!({"t": [1, 2, 3]}), "bad entry"),
    ];
    for (header, word) in cases {
        expect_err(
            Model::from_bytes(&path(), &raw_safetensors(&header, &data), None),
            None,
            Some("t"),
            &[word],
        );
    }
    // __metadata__ of the wrong kind
    for meta in [json!([1]), json!({"advex": 3})] {
        expect_err(
            Model::from_bytes(
                &path(),
                &raw_safetensors(&json!({"__metadata__": meta}), &[]),
                None,
            ),
            None,
            None,
            &["__metadata__"],
        );
    }
}

#[test]
fn header_not_utf8_or_not_json() {
    let mut bytes = 4u64.to_le_bytes().to_vec();
    bytes.extend([b'{', 0xff, 0xfe, b'}']);
    expect_err(
        Model::from_bytes(&path(), &bytes, None),
        None,
        None,
        &["UTF-8"],
    );

    let header = b"{\"a\": [1, 2";
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend(header);
    expect_err(
        Model::from_bytes(&path(), &bytes, None),
        None,
        None,
        &["not valid JSON", "line 1 column"],
    );
    let mut bytes = 2u64.to_le_bytes().to_vec();
    bytes.extend(b"[]");
    expect_err(
        Model::from_bytes(&path(), &bytes, None),
        None,
        None,
        &["not a JSON object"],
    );
}

#[test]
fn no_description() {
    let b = tiny_cnn(1);
    let bytes = advex::model::encode_safetensors(&BTreeMap::new(), &b.tensors, Dtype::F32).unwrap();
    expect_err(
        Model::from_bytes(&path(), &bytes, None),
        None,
        None,
        &["no model description", "test_model.json"],
    );
}

// ---------------------------------------------------------------- bad descriptions

fn with_metadata(b: &ModelBuilder, json: &str) -> Vec<u8> {
    let mut meta = BTreeMap::new();
    meta.insert(METADATA_KEY.to_string(), json.to_string());
    advex::model::encode_safetensors(&meta, &b.tensors, Dtype::F32).unwrap()
}

#[test]
fn metadata_invalid_json() {
    let b = tiny_cnn(1);
    let json = b.spec().to_string();
    let cut = &json[..json.len() / 2];
    let e = expect_err(
        Model::from_bytes(&path(), &with_metadata(&b, cut), None),
        None,
        None,
        &["not valid JSON", "line 1 column", "advex"],
    );
    assert!(e.to_string().contains("EOF"), "{e}");
    expect_err(
        Model::from_bytes(&path(), &with_metadata(&b, "[1, 2]"), None),
        None,
        None,
        &["must be a JSON object"],
    );
}

#[test]
fn metadata_bad_field_is_named() {
    // wrong type in a node attribute: node and field named, with serde's position
    let mut b = tiny_cnn(1);
    b.node_mut("conv1")["stride"] = json!("2");
    expect_err(
        load(&b),
        Some("conv1"),
        None,
        &[
            "nodes[0].stride",
            "line 1 column",
            "invalid type: string \"2\"",
        ],
    );
    // negative and wrong-length values
    let mut b = tiny_cnn(1);
    b.node_mut("conv1")["padding"] = json!([1, 2, 3]);
    expect_err(
        load(&b),
        Some("conv1"),
        None,
        &["nodes[0].padding", "invalid length 3"],
    );
    let mut b = tiny_cnn(1);
    b.node_mut("fc")["inputs"] = json!("flat");
    expect_err(load(&b), Some("fc"), None, &["nodes[5].inputs"]);
    let mut b = tiny_cnn(1);
    b.node_mut("pool")["name"] = json!(5);
    expect_err(load(&b), Some("#3"), None, &["nodes[3].name"]);
    // unknown attribute (a typo)
    let mut b = tiny_cnn(1);
    b.node_mut("conv1")["strides"] = json!(2);
    expect_err(
        load(&b),
        Some("conv1"),
        None,
        &["unknown field `strides`", "nodes[0].strides"],
    );
    // missing op
    let mut b = tiny_cnn(1);
    b.node_mut("act1").as_object_mut().unwrap().remove("op");
    expect_err(
        load(&b),
        Some("act1"),
        None,
        &["missing field `op`", "nodes[2]"],
    );
    // top-level and preprocess fields
    let mut b = tiny_cnn(1);
    b.set("input", json!([1, 8]));
    expect_err(load(&b), None, None, &["bad field `input`"]);
    let mut b = tiny_cnn(1);
    b.set("preprocess", json!({"crop": "big"}));
    expect_err(load(&b), None, None, &["preprocess.crop"]);
    let mut b = tiny_cnn(1);
    b.set("clases", json!(["a"]));
    expect_err(load(&b), None, None, &["unknown field `clases`"]);
}

#[test]
fn format_version() {
    for (v, word) in [
        (json!(2), "format 2 is not supported"),
        (json!("1"), "format \"1\""),
    ] {
        let mut b = tiny_cnn(1);
        b.set("format", v);
        expect_err(load(&b), None, None, &[word, "format 1"]);
    }
    let mut b = tiny_cnn(1);
    b.top.remove("format");
    expect_err(load(&b), None, None, &["no `format` field"]);
}

#[test]
fn unknown_op() {
    let mut b = tiny_cnn(1);
    b.node_mut("act1")["op"] = json!("mish");
    expect_err(
        load(&b),
        Some("act1"),
        None,
        &["unknown op `mish`", "known ops"],
    );
}

#[test]
fn gelu_takes_its_form() {
    for form in [None, Some("none"), Some("tanh")] {
        let mut b = tiny_cnn(1);
        b.node_mut("act1")["op"] = json!("gelu");
        if let Some(f) = form {
            b.node_mut("act1")["approximate"] = json!(f);
        }
        load_ok(&b);
    }
    let mut b = tiny_cnn(1);
    b.node_mut("act1")["op"] = json!("gelu");
    b.node_mut("act1")["approximate"] = json!("cubic");
    expect_err(
        load(&b),
        Some("act1"),
        None,
        &["approximate `cubic`", "tanh"],
    );
}

#[test]
fn attribute_that_does_not_apply() {
    let mut b = tiny_cnn(1);
    b.node_mut("act1")["kernel"] = json!(3);
    expect_err(
        load(&b),
        Some("act1"),
        None,
        &["`kernel` does not apply to op relu6"],
    );
    let mut b = tiny_cnn(1);
    b.node_mut("fc")["groups"] = json!(2);
    expect_err(
        load(&b),
        Some("fc"),
        None,
        &["`groups` does not apply to op linear"],
    );
}

#[test]
fn missing_input_value() {
    let mut b = tiny_cnn(1);
    b.node_mut("act1")["inputs"] = json!(["bn_one"]);
    expect_err(load(&b), Some("act1"), None, &["input `bn_one`"]);
    let mut b = tiny_cnn(1);
    b.set("output", json!("logits"));
    expect_err(load(&b), None, None, &["output `logits`"]);
}

#[test]
fn cycle_is_reported_with_its_nodes() {
    let mut b = tiny_cnn(1);
    b.node_mut("bn1")["inputs"] = json!(["pool"]);
    expect_err(
        load(&b),
        Some("bn1"),
        None,
        &["cycle: bn1 -> act1 -> pool -> bn1"],
    );
    let mut b = tiny_cnn(1);
    b.node_mut("act1")["inputs"] = json!(["act1"]);
    expect_err(load(&b), Some("act1"), None, &["cycle: act1 -> act1"]);
}

#[test]
fn duplicate_and_reserved_names() {
    let mut b = tiny_cnn(1);
    b.node_mut("pool")["name"] = json!("act1");
    expect_err(
        load(&b),
        Some("act1"),
        None,
        &["duplicate node name", "#2 and #3"],
    );
    let mut b = tiny_cnn(1);
    b.node_mut("fc")["name"] = json!("input");
    expect_err(load(&b), Some("input"), None, &["reserved"]);
    let mut b = tiny_cnn(1);
    b.node_mut("fc")["name"] = json!("");
    expect_err(load(&b), None, None, &["node #5", "empty name"]);
}

#[test]
fn missing_tensor() {
    let mut b = tiny_cnn(1);
    b.node_mut("conv1")["weight"] = json!("conv1.weights");
    expect_err(
        load(&b),
        Some("conv1"),
        Some("conv1.weights"),
        &["not found"],
    );
    let mut b = tiny_cnn(1);
    b.node_mut("bn1")["running_var"] = json!("bn1.var");
    expect_err(load(&b), Some("bn1"), Some("bn1.var"), &["not found"]);
    // required tensor attributes
    let mut b = tiny_cnn(1);
    b.node_mut("bn1")
        .as_object_mut()
        .unwrap()
        .remove("running_mean");
    expect_err(load(&b), Some("bn1"), None, &["needs a `running_mean`"]);
    let mut b = tiny_cnn(1);
    b.node_mut("conv1")
        .as_object_mut()
        .unwrap()
        .remove("weight");
    expect_err(load(&b), Some("conv1"), None, &["needs a `weight`"]);
}

#[test]
fn tensor_of_wrong_shape() {
    let mut b = tiny_cnn(1);
    let t = b.tensor_mut("fc.weight");
    t.1 = vec![3, 5];
    t.2 = vec![0.5; 15];
    expect_err(
        load(&b),
        Some("fc"),
        Some("fc.weight"),
        &["expected [*, 4]", "got [3, 5]"],
    );
    let mut b = tiny_cnn(1);
    let t = b.tensor_mut("bn1.running_var");
    t.1 = vec![5];
    t.2 = vec![1.0; 5];
    expect_err(
        load(&b),
        Some("bn1"),
        Some("bn1.running_var"),
        &["expected [4]", "got [5]"],
    );
    let mut b = tiny_cnn(1);
    let t = b.tensor_mut("conv1.weight");
    t.1 = vec![4, 2, 3, 3];
    t.2 = vec![0.1; 72];
    expect_err(
        load(&b),
        Some("conv1"),
        Some("conv1.weight"),
        &["expected [*, 1, *, *]", "got [4, 2, 3, 3]"],
    );
    let mut b = tiny_cnn(1);
    let t = b.tensor_mut("conv1.weight");
    t.1 = vec![36];
    expect_err(load(&b), Some("conv1"), Some("conv1.weight"), &["got [36]"]);
    let mut b = tiny_cnn(1);
    b.tensor_mut("conv1.bias").1 = vec![2, 2];
    expect_err(
        load(&b),
        Some("conv1"),
        Some("conv1.bias"),
        &["expected [4]", "got [2, 2]"],
    );
}

#[test]
fn nan_and_inf_are_refused() {
    let mut b = tiny_cnn(1);
    b.tensor_mut("conv1.weight").2[5] = f32::NAN;
    expect_err(
        load(&b),
        Some("conv1"),
        Some("conv1.weight"),
        &["index 5", "element [0, 0, 1, 2]", "NaN"],
    );
    let mut b = tiny_cnn(1);
    b.tensor_mut("fc.bias").2[2] = f32::NEG_INFINITY;
    expect_err(load(&b), Some("fc"), Some("fc.bias"), &["index 2", "-inf"]);
    // out of f16 range becomes infinity in the file
    let mut b = tiny_cnn(1);
    b.tensor_mut("fc.weight").2[7] = 1e6;
    expect_err(
        Model::from_bytes(&path(), &b.bytes(Dtype::F16), None),
        Some("fc"),
        Some("fc.weight"),
        &["index 7", "element [1, 3]", "inf"],
    );
    // a negative variance
    let mut b = tiny_cnn(1);
    b.tensor_mut("bn1.running_var").2[1] = -5.0;
    expect_err(
        load(&b),
        Some("bn1"),
        Some("bn1.running_var"),
        &["running_var[1]", "not positive"],
    );
}

#[test]
fn wrong_number_of_inputs() {
    let mut b = tiny_cnn(1);
    b.node("sum", "add", &["fc"], json!({}), [3, 1, 1]);
    expect_err(
        load(&b),
        Some("sum"),
        None,
        &["add takes exactly 2 inputs, got 1"],
    );
    let mut b = tiny_cnn(1);
    b.node_mut("act1")["inputs"] = json!(["bn1", "conv1"]);
    expect_err(load(&b), Some("act1"), None, &["exactly 1 input, got 2"]);
    let mut b = tiny_cnn(1);
    b.node("cat", "concat", &["fc"], json!({}), [3, 1, 1]);
    expect_err(load(&b), Some("cat"), None, &["at least 2 inputs, got 1"]);
    let mut b = tiny_cnn(1);
    b.node_mut("fc")["inputs"] = json!([]);
    expect_err(load(&b), Some("fc"), None, &["got 0"]);
}

#[test]
fn shape_inference_failures() {
    let base = |seed| {
        let mut b = ModelBuilder::new("m", [3, 8, 8], seed);
        b.conv("c4", "input", 4, 3, 1, [1; 4], 1, true);
        b.conv("c5", "input", 5, 3, 1, [1; 4], 1, true);
        b.conv("c4s", "input", 4, 3, 2, [1; 4], 1, true);
        b
    };
    let mut b = base(1);
    b.node("sum", "add", &["c4", "c5"], json!({}), [4, 8, 8]);
    expect_err(
        load(&b),
        Some("sum"),
        None,
        &["cannot broadcast", "channels 4 vs 5"],
    );
    let mut b = base(1);
    b.node("prod", "mul", &["c4", "c4s"], json!({}), [4, 8, 8]);
    expect_err(load(&b), Some("prod"), None, &["height 8 vs 4"]);
    let mut b = base(1);
    b.node("cat", "concat", &["c4", "c5", "c4s"], json!({}), [13, 8, 8]);
    expect_err(
        load(&b),
        Some("cat"),
        None,
        &["input 2 (`c4s`) is [4, 4, 4]"],
    );
    let mut b = base(1);
    b.node(
        "cat",
        "concat",
        &["c4", "c5"],
        json!({"axis": 2}),
        [4, 16, 8],
    );
    expect_err(load(&b), Some("cat"), None, &["axis 1 (channels) only"]);
    // kernel larger than the input
    let mut b = base(1);
    b.conv("big", "c4s", 2, 7, 1, [0; 4], 1, false);
    expect_err(load(&b), Some("big"), None, &["does not fit", "[4, 4, 4]"]);
    let mut b = base(1);
    b.node("mp", "max_pool", &["c4s"], json!({"kernel": 5}), [4, 1, 1]);
    expect_err(load(&b), Some("mp"), None, &["does not fit"]);
    // padding more than half the kernel (PyTorch refuses it too)
    let mut b = base(1);
    b.node(
        "ap",
        "avg_pool",
        &["c4"],
        json!({"kernel": 2, "padding": 2}),
        [4, 1, 1],
    );
    expect_err(load(&b), Some("ap"), None, &["more than half"]);
    // groups that do not divide the channels
    let mut b = base(1);
    b.node(
        "g",
        "conv2d",
        &["c5"],
        json!({"weight": "c4.weight", "groups": 2}),
        [1, 1, 1],
    );
    expect_err(
        load(&b),
        Some("g"),
        None,
        &["groups 2 does not divide", "5 channels"],
    );
    // zero stride
    let mut b = base(1);
    b.node_mut("c4")["stride"] = json!([1, 0]);
    expect_err(
        load(&b),
        Some("c4"),
        None,
        &["`stride` [1, 0] must be at least 1"],
    );
    // linear on a spatial input
    let mut b = base(1);
    b.tensor("fc.weight", &[2, 256], -1.0, 1.0);
    b.node(
        "fc",
        "linear",
        &["c4"],
        json!({"weight": "fc.weight"}),
        [2, 1, 1],
    );
    expect_err(load(&b), Some("fc"), None, &["[K, 1, 1]", "flatten"]);
    // normalize with the wrong number of channels
    let mut b = base(1);
    b.node(
        "nz",
        "normalize",
        &["c4"],
        json!({"mean": [0, 0], "std": [1, 1]}),
        [4, 8, 8],
    );
    expect_err(
        load(&b),
        Some("nz"),
        None,
        &["`mean` has 2 values", "4 channels"],
    );
    // softmax over another axis
    let mut b = base(1);
    b.node("sm", "softmax", &["c4"], json!({"axis": 3}), [4, 8, 8]);
    expect_err(load(&b), Some("sm"), None, &["axis 1"]);
}

#[test]
fn classes_length_mismatch() {
    let mut b = tiny_cnn(1);
    b.set("classes", json!(["cat", "dog"]));
    expect_err(
        load(&b),
        None,
        None,
        &["`classes` has 2 names", "output `fc` has 3 values"],
    );
    // duplicate class names are allowed (ImageNet has two "crane"s)
    let mut b = tiny_cnn(1);
    b.set("classes", json!(["crane", "crane", "kite"]));
    load_ok(&b);
}

#[test]
fn bad_input_and_preprocess() {
    let cases = [
        ("input", json!([0, 8, 8]), "zero dimension"),
        ("input", json!([4096, 4096, 4096]), "too large"),
        (
            "preprocess",
            json!({"mean": [0.5, 0.5]}),
            "preprocess.mean has 2 values",
        ),
        (
            "preprocess",
            json!({"std": [0.0]}),
            "preprocess.std[0] is zero",
        ),
        (
            "preprocess",
            json!({"crop": 7}),
            "crop 7 does not match the input size 8x8",
        ),
        (
            "preprocess",
            json!({"crop": 8, "resize": 6}),
            "smaller than",
        ),
        (
            "preprocess",
            json!({"interpolation": "cubic"}),
            "interpolation `cubic`",
        ),
        ("nodes", json!([]), "no nodes"),
    ];
    for (key, v, word) in cases {
        let mut b = tiny_cnn(1);
        if key == "nodes" {
            b.nodes.clear();
        } else {
            b.set(key, v);
        }
        expect_err(load(&b), None, None, &[word]);
    }
    // a graph whose output is the input itself
    let mut b = ModelBuilder::new("m", [1, 2, 2], 1);
    b.unary("d", "dropout", "input");
    expect_err(load(&b), Some("d"), None, &["graph input itself"]);
}

#[test]
fn dead_nodes_are_validated_then_pruned() {
    let mut b = tiny_cnn(1);
    b.global_avg_pool("aux", "act1");
    b.set("output", json!("fc"));
    let m = load_ok(&b);
    assert!(!names(&m).contains(&"aux".to_string()));
    assert_eq!(m.nodes[m.output].name, "fc");
    b.node_mut("aux")["op"] = json!("nope");
    expect_err(load(&b), Some("aux"), None, &["unknown op `nope`"]);
}

// ---------------------------------------------------------------- robustness

/// `ADVEX_FUZZ_SCALE=n` runs the robustness loops n times longer.
fn fuzz_scale() -> usize {
    std::env::var("ADVEX_FUZZ_SCALE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
}

fn no_panic(what: &str, bytes: &[u8], sidecar: Option<&str>) -> Result<Model, ModelError> {
    match std::panic::catch_unwind(|| Model::from_bytes(&path(), bytes, sidecar)) {
        Ok(r) => r,
        Err(_) => panic!("loading panicked on {what}"),
    }
}

#[test]
fn corrupted_files_never_panic() {
    let b = every_op(20);
    let good = b.bytes(Dtype::F16);
    no_panic("the original", &good, None).expect("the original loads");
    let header_end = 8 + u64::from_le_bytes(good[..8].try_into().unwrap()) as usize;
    let mut r = rng(21);
    let mut errors = 0;
    let mut variants = 0;
    // truncations: every length inside the first bytes and the header's end, and spread
    let mut lengths: Vec<usize> = (0..64).collect();
    lengths.extend(header_end.saturating_sub(40)..(header_end + 40).min(good.len()));
    lengths.extend((0..100 * fuzz_scale()).map(|_| r.random_range(0..good.len())));
    for len in lengths {
        variants += 1;
        errors += no_panic(&format!("truncation at {len}"), &good[..len], None).is_err() as usize;
    }
    // random byte flips, anywhere or in the header only
    for i in 0..300 * fuzz_scale() {
        let mut bytes = good.clone();
        let flips = 1 + r.random_range(0..4);
        let mut desc = Vec::new();
        for _ in 0..flips {
            let limit = if i % 2 == 0 { header_end } else { bytes.len() };
            let at = r.random_range(0..limit);
            let v: u8 = r.random();
            bytes[at] = v;
            desc.push((at, v));
        }
        variants += 1;
        errors += no_panic(&format!("bytes set at {desc:?}"), &bytes, None).is_err() as usize;
    }
    assert!(variants > 400);
    assert!(
        errors > variants / 2,
        "most corruptions are caught: {errors} of {variants}"
    );
}

#[test]
fn mutated_descriptions_never_panic() {
    let b = every_op(30);
    let spec = b.spec();
    let pool = [
        json!(0),
        json!(1),
        json!(3),
        json!(-1),
        json!(4294967295u64),
        json!(4294967296u64),
        json!(1e300),
        json!(0.5),
        json!("c1"),
        json!("input"),
        json!("sm"),
        json!([0, 0]),
        json!([1, 2, 3, 4]),
        json!([100000, 100000]),
        json!([4294967295u64, 1]),
        json!(["a4", "a4"]),
        json!([]),
        json!({}),
        json!(null),
        json!(true),
    ];
    let fields = [
        "inputs",
        "kernel",
        "stride",
        "padding",
        "dilation",
        "groups",
        "eps",
        "axis",
        "mean",
        "std",
        "negative_slope",
        "alpha",
        "beta",
        "ceil_mode",
        "weight",
        "op",
        "name",
    ];
    let top = ["input", "output", "classes", "preprocess", "format", "name"];
    let mut r = rng(31);
    let mut loaded = 0;
    let n = 400 * fuzz_scale();
    for i in 0..n {
        let mut s = spec.clone();
        // a few mutations, mostly of one node's attributes (so that they combine)
        let k = r.random_range(0..b.nodes.len());
        for _ in 0..1 + r.random_range(0..4) {
            let v = pool[r.random_range(0..pool.len())].clone();
            if r.random_range(0..6) == 0 {
                s[top[r.random_range(0..top.len())]] = v;
            } else {
                s["nodes"][k][fields[r.random_range(0..fields.len())]] = v;
            }
        }
        let mut meta = BTreeMap::new();
        meta.insert(METADATA_KEY.to_string(), s.to_string());
        let bytes = advex::model::encode_safetensors(&meta, &b.tensors, Dtype::F32).unwrap();
        if let Ok(m) = no_panic(&format!("mutation {i}: {s}"), &bytes, None) {
            loaded += 1;
            // whatever loads is consistent
            let _ = (m.summary(), m.flops(), m.param_count(), m.num_classes());
            for (k, n) in m.nodes.iter().enumerate() {
                for src in &n.inputs {
                    if let Src::Node(j) = src {
                        assert!(*j < k);
                    }
                }
            }
            assert!(m.output < m.nodes.len());
        }
    }
    assert!(loaded > 0 && loaded < n, "{loaded}");
    // the loader also survives huge but consistent shapes
    let mut big = ModelBuilder::new("big", [1, 60000, 60000], 1);
    big.node("p", "max_pool", &["input"], json!({"kernel": 1}), [1, 1, 1]);
    big.flatten("f", "p");
    expect_err(load(&big), None, None, &["too large"]);
}

#[test]
fn extreme_window_attributes_never_panic() {
    let b = every_op(40);
    let extremes = [
        json!(0),
        json!(1),
        json!(2),
        json!(65536),
        json!(65537),
        json!(4294967295u64),
        json!([4294967295u64, 1]),
    ];
    let fields = ["kernel", "stride", "padding", "dilation", "groups"];
    let mut errors = 0;
    for node in ["c1", "dw", "mp", "ap"] {
        for (i, f1) in fields.iter().enumerate() {
            for f2 in &fields[i..] {
                for v1 in &extremes {
                    for v2 in &extremes {
                        let mut s = b.spec();
                        let nodes = s["nodes"].as_array_mut().unwrap();
                        let n = nodes.iter_mut().find(|n| n["name"] == node).unwrap();
                        n[*f1] = v1.clone();
                        n[*f2] = v2.clone();
                        let mut meta = BTreeMap::new();
                        meta.insert(METADATA_KEY.to_string(), s.to_string());
                        let bytes = advex::model::encode_safetensors(&meta, &b.tensors, Dtype::F32)
                            .unwrap();
                        let what = format!("{node}: {f1} = {v1}, {f2} = {v2}");
                        errors += no_panic(&what, &bytes, None).is_err() as usize;
                    }
                }
            }
        }
    }
    assert!(errors > 0);
}

#[test]
fn errors_convert_into_the_crate_error() {
    let e = Model::from_bytes(Path::new("x.safetensors"), b"", None).unwrap_err();
    let crate_err: advex::Error = e.clone().into();
    assert_eq!(crate_err.to_string(), e.to_string());
    assert_eq!(crate_err.exit_code(), 1);
}
