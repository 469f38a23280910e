//! CPU f64 forward of a whole loaded model, built on the per-op references.
#![allow(dead_code)]

use advex::model::{Model, Op, Src};
use advex::Shape;

use super::ref_conv::{linear_forward, RefConv};
use super::ref_misc;

fn f64s(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

/// Every node's output for a batch of `n` images `x` (NCHW, f64).
pub fn forward(model: &Model, x: &[f64], n: u32) -> Vec<Vec<f64>> {
    let [c, h, w] = model.input;
    let input_shape = Shape::new(n, c, h, w);
    let mut vals: Vec<Vec<f64>> = Vec::with_capacity(model.nodes.len());
    let mut shapes: Vec<Shape> = Vec::with_capacity(model.nodes.len());
    for node in &model.nodes {
        let get = |s: Src| -> (&[f64], Shape) {
            match s {
                Src::Input => (x, input_shape),
                Src::Node(j) => (&vals[j][..], shapes[j]),
            }
        };
        let (a, sa) = get(node.inputs[0]);
        let out_shape = node.shape.with_n(n);
        let y: Vec<f64> = match &node.op {
            Op::Conv2d {
                params,
                weight,
                bias,
            } => {
                let u = |v: [u32; 2]| [v[0] as usize, v[1] as usize];
                let r = RefConv {
                    x: [sa.n as usize, sa.c as usize, sa.h as usize, sa.w as usize],
                    w: weight.shape.map(|d| d as usize),
                    stride: u(params.stride),
                    padding: params.padding.map(|d| d as usize),
                    dilation: u(params.dilation),
                    groups: params.groups as usize,
                };
                let b = bias.as_ref().map(|b| f64s(b));
                r.forward(a, &f64s(&weight.data), b.as_deref())
            }
            Op::Linear { weight, bias } => {
                let b = bias.as_ref().map(|b| f64s(b));
                let [out, k, _, _] = weight.shape;
                linear_forward(
                    a,
                    &f64s(&weight.data),
                    b.as_deref(),
                    n as usize,
                    k as usize,
                    out as usize,
                )
            }
            Op::Affine { scale, shift } => ref_misc::affine(a, sa, &f64s(scale), &f64s(shift)),
            Op::Activation(act) => a.iter().map(|&v| act.apply_f64(v)).collect(),
            Op::MaxPool(p) => ref_misc::max_pool(a, sa, p).0,
            Op::AvgPool(p) => ref_misc::avg_pool(a, sa, p).0,
            Op::GlobalAvgPool => ref_misc::global_avg(a, sa),
            Op::Add | Op::Mul => {
                let (b, sb) = get(node.inputs[1]);
                ref_misc::binary(matches!(node.op, Op::Mul), a, sa, b, sb).0
            }
            Op::Concat => {
                let parts: Vec<(&[f64], Shape)> = node.inputs.iter().map(|s| get(*s)).collect();
                ref_misc::concat(&parts).0
            }
            Op::Flatten => a.to_vec(),
            Op::Softmax => ref_misc::softmax(a, sa),
            Op::LayerNorm { eps, weight, bias } => {
                ref_misc::layer_norm(a, sa, &f64s(weight), &f64s(bias), *eps as f64)
            }
        };
        assert_eq!(
            y.len() as u64,
            out_shape.numel(),
            "node {} output size",
            node.name
        );
        vals.push(y);
        shapes.push(out_shape);
    }
    vals
}

/// Index of the node holding the logits (the input of a final softmax).
pub fn logits_node(model: &Model) -> usize {
    let out = model.output;
    match (&model.nodes[out].op, model.nodes[out].inputs[0]) {
        (Op::Softmax, Src::Node(j)) => j,
        _ => out,
    }
}

/// Summed softmax cross-entropy of the logits against `labels`.
pub fn loss(model: &Model, x: &[f64], n: u32, labels: &[u32]) -> f64 {
    let vals = forward(model, x, n);
    let z = &vals[logits_node(model)];
    let k = z.len() / n as usize;
    ref_misc::cross_entropy(z, n as usize, k, labels, 1.0)
        .0
        .iter()
        .sum()
}
