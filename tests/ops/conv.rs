use crate::common::ref_conv::{linear_backward, linear_forward, RefConv};
use crate::common::*;
use advex::gpu::{Recording, Shape, Step};
use advex::ops::conv::{ConvKernel, ConvKernel::*, Pass, PwLayout};
use advex::ops::{conv, linear, Activation, Conv2dParams};
use advex::{Context, KernelStyle};

/// Value the outputs are filled with before a run, to prove every element is written.

#[derive(Debug, Clone, Copy)]
struct Case {
    name: &'static str,
    n: u32,
    c: u32,
    h: u32,
    w: u32,
    oc: u32,
    k: [u32; 2],
    stride: [u32; 2],
    padding: [u32; 4],
    dilation: [u32; 2],
    groups: u32,
    bias: bool,
}

impl Case {
    fn new(name: &'static str, n: u32, c: u32, hw: [u32; 2], oc: u32, k: [u32; 2]) -> Self {
        Case {
            name,
            n,
            c,
            h: hw[0],
            w: hw[1],
            oc,
            k,
            stride: [1, 1],
            padding: [0; 4],
            dilation: [1, 1],
            groups: 1,
            bias: false,
        }
    }
    fn stride(mut self, s: [u32; 2]) -> Self {
        self.stride = s;
        self
    }
    fn pad(mut self, p: [u32; 4]) -> Self {
        self.padding = p;
        self
    }
    fn dil(mut self, d: [u32; 2]) -> Self {
        self.dilation = d;
        self
    }
    fn groups(mut self, g: u32) -> Self {
        self.groups = g;
        self
    }
    fn bias(mut self) -> Self {
        self.bias = true;
        self
    }
    fn params(&self) -> Conv2dParams {
        Conv2dParams {
            stride: self.stride,
            padding: self.padding,
            dilation: self.dilation,
            groups: self.groups,
        }
    }
    fn x_shape(&self) -> Shape {
        Shape::new(self.n, self.c, self.h, self.w)
    }
    fn w_shape(&self) -> Shape {
        Shape::new(self.oc, self.c / self.groups, self.k[0], self.k[1])
    }
    fn reference(&self) -> RefConv {
        let u = |v: u32| v as usize;
        RefConv {
            x: self.x_shape().dims().map(u),
            w: self.w_shape().dims().map(u),
            stride: self.stride.map(u),
            padding: self.padding.map(u),
            dilation: self.dilation.map(u),
            groups: u(self.groups),
        }
    }
}

fn poisoned(ctx: &Context, shape: Shape, label: &str) -> advex::Tensor {
    St::F32.poisoned(ctx, shape, label)
}

/// Labels of the dispatches that compute (weight repacks left out).
fn labels(rec: &Recording) -> Vec<String> {
    rec.steps
        .iter()
        .filter_map(|s| match s {
            Step::Dispatch { label, .. } if label != "transpose" && !label.ends_with("_repack") => {
                Some(label.clone())
            }
            _ => None,
        })
        .collect()
}

/// Run forward and backward of `case` on the GPU and compare with the reference.
/// `depthwise` says which kernel family must have been chosen.
fn check_on(ctx: &Context, case: &Case, depthwise: bool, seed: u64) {
    check_on_as(ctx, case, depthwise, seed, St::F32);
}

/// [`check_on`] in storage type `st`.
fn check_on_as(ctx: &Context, case: &Case, depthwise: bool, seed: u64, st: St) {
    let p = case.params();
    let xs = case.x_shape();
    let ws = case.w_shape();
    let ys = p.out_shape(xs, ws.dims()).unwrap();
    let r = case.reference();
    assert_eq!(
        r.out(),
        ys.dims().map(|v| v as usize),
        "{}: out_shape",
        case.name
    );
    assert_eq!(
        p.is_depthwise(xs, ws.dims()),
        depthwise,
        "{}: depthwise dispatch",
        case.name
    );

    let xv = st.random(seed, xs.numel() as usize);
    let wv = st.random(seed + 1, ws.numel() as usize);
    let bv = st.random(seed + 2, case.oc as usize);
    let gyv = st.random(seed + 3, ys.numel() as usize);

    let x = st.upload(ctx, &xv, xs, "x");
    let w = st.upload(ctx, &wv, ws, "w");
    let b = st.upload(ctx, &bv, Shape::new(1, case.oc, 1, 1), "b");
    let gy = st.upload(ctx, &gyv, ys, "gy");
    let y = st.poisoned(ctx, ys, "y");
    let gx = st.poisoned(ctx, xs, "gx");

    let mut rec = Recording::new();
    let bias = case.bias.then_some(&b);
    conv::forward(ctx, &mut rec, &p, &x, &w, bias, &y).unwrap();
    conv::backward(ctx, &mut rec, &p, &gy, &w, &gx).unwrap();
    let l = labels(&rec);
    assert_eq!(l.len(), 2, "{}: dispatches {l:?}", case.name);
    for label in &l {
        assert_eq!(
            label.starts_with("depthwise"),
            depthwise,
            "{}: kernel {label}",
            case.name
        );
    }
    let out = ctx.run_read(&[&rec], &[&y, &gx]).unwrap();

    let bias64 = to_f64(&bv);
    let want_y = r.forward(&to_f64(&xv), &to_f64(&wv), case.bias.then_some(&bias64[..]));
    let want_gx = r.backward(&to_f64(&gyv), &to_f64(&wv));
    let what = format!("{} ({}, {st:?})", case.name, ctx.kernel_style().name());
    assert_close(&format!("{what} forward"), &out[0], &want_y, st.tolerance());
    assert_close(
        &format!("{what} backward"),
        &out[1],
        &want_gx,
        st.tolerance(),
    );
}

fn check(case: &Case, depthwise: bool, seed: u64) {
    check_on(&ctx(), case, depthwise, seed);
}

#[test]
fn conv3x3_stride1_pad1() {
    check(
        &Case::new("3x3 s1 p1", 2, 8, [10, 10], 16, [3, 3])
            .pad([1; 4])
            .bias(),
        false,
        10,
    );
    // wider than one output-channel tile (70 > 64), K = 13*9 not a multiple of 16
    check(
        &Case::new("3x3 s1 p1 wide", 1, 13, [9, 9], 70, [3, 3]).pad([1; 4]),
        false,
        11,
    );
    // deep reduction: K = 64*9 = 576 forward, 48*9 = 432 backward (many K slices)
    check(
        &Case::new("3x3 deep K", 2, 64, [6, 6], 48, [3, 3])
            .pad([1; 4])
            .bias(),
        false,
        12,
    );
}

#[test]
fn conv_stride2_odd_sizes() {
    check(
        &Case::new("3x3 s2 13x11", 1, 5, [13, 11], 7, [3, 3])
            .stride([2, 2])
            .pad([1; 4]),
        false,
        20,
    );
    check(
        &Case::new("3x3 s(2,3) 13x11 bias", 2, 3, [13, 11], 6, [3, 3])
            .stride([2, 3])
            .bias(),
        false,
        21,
    );
    check(
        &Case::new("1x1 s2 11x13", 1, 7, [11, 13], 5, [1, 1]).stride([2, 2]),
        false,
        22,
    );
}

#[test]
fn conv_asymmetric_padding() {
    let pads = [
        [0, 1, 1, 0],
        [1, 0, 2, 3],
        [3, 2, 0, 1],
        [0, 0, 1, 1],
        [2, 3, 3, 0],
    ];
    for (i, pad) in pads.into_iter().enumerate() {
        let s = if i % 2 == 0 { [1, 1] } else { [2, 2] };
        check(
            &Case::new("3x3 asymmetric padding", 1, 3, [8, 9], 6, [3, 3])
                .pad(pad)
                .stride(s)
                .bias(),
            false,
            30 + i as u64,
        );
    }
}

#[test]
fn conv_1x1_5x5_dilation() {
    check(
        &Case::new("1x1", 2, 13, [6, 5], 7, [1, 1]).bias(),
        false,
        40,
    );
    check(
        &Case::new("5x5 p2", 1, 4, [12, 12], 9, [5, 5]).pad([2; 4]),
        false,
        41,
    );
    check(
        &Case::new("3x3 dilation 2", 1, 3, [11, 10], 5, [3, 3])
            .pad([2; 4])
            .dil([2, 2])
            .bias(),
        false,
        42,
    );
    check(
        &Case::new(
            "3x3 dilation (2,3) stride 2 asym",
            2,
            4,
            [13, 12],
            6,
            [3, 3],
        )
        .pad([1, 3, 2, 0])
        .dil([2, 3])
        .stride([2, 2]),
        false,
        43,
    );
    check(
        &Case::new("2x4 kernel", 1, 3, [7, 9], 5, [2, 4]).pad([0, 1, 1, 2]),
        false,
        44,
    );
}

#[test]
fn conv_grouped() {
    check(
        &Case::new("groups 2", 2, 8, [7, 7], 12, [3, 3])
            .pad([1; 4])
            .groups(2)
            .bias(),
        false,
        50,
    );
    check(
        &Case::new("groups 4 stride 2", 1, 12, [9, 8], 8, [3, 3])
            .pad([1; 4])
            .stride([2, 2])
            .groups(4),
        false,
        51,
    );
    check(
        &Case::new("groups 3 1x1", 1, 9, [5, 5], 6, [1, 1])
            .groups(3)
            .bias(),
        false,
        52,
    );
}

#[test]
fn conv_depthwise() {
    check(
        &Case::new("depthwise 3x3 s1", 2, 7, [10, 9], 7, [3, 3])
            .pad([1; 4])
            .groups(7)
            .bias(),
        true,
        60,
    );
    // TF SAME, stride 2, even input: pad total 1 -> [0, 0, 1, 1]
    check(
        &Case::new("depthwise 3x3 s2 SAME", 1, 5, [12, 10], 5, [3, 3])
            .pad([0, 0, 1, 1])
            .stride([2, 2])
            .groups(5),
        true,
        61,
    );
    // TF SAME 5x5 stride 2 on 12x13: pad totals 3 and 4 -> [1, 2, 2, 2]
    check(
        &Case::new("depthwise 5x5 s2 SAME", 1, 3, [12, 13], 3, [5, 5])
            .pad([1, 2, 2, 2])
            .stride([2, 2])
            .groups(3)
            .bias(),
        true,
        62,
    );
    check(
        &Case::new("depthwise multiplier 2", 2, 6, [9, 11], 12, [3, 3])
            .pad([1, 0, 1, 2])
            .groups(6)
            .bias(),
        true,
        63,
    );
    check(
        &Case::new(
            "depthwise dilation 2 multiplier 3",
            1,
            4,
            [11, 9],
            12,
            [3, 3],
        )
        .pad([2, 2, 2, 2])
        .dil([2, 2])
        .stride([2, 1])
        .groups(4),
        true,
        64,
    );
}

#[test]
fn conv_batches() {
    check(
        &Case::new("batch 1", 1, 3, [7, 7], 5, [3, 3])
            .pad([1; 4])
            .bias(),
        false,
        70,
    );
    check(
        &Case::new("batch 17", 17, 3, [7, 7], 5, [3, 3])
            .pad([1; 4])
            .stride([2, 2])
            .bias(),
        false,
        71,
    );
    check(
        &Case::new("depthwise batch 17", 17, 13, [5, 6], 13, [3, 3])
            .pad([0, 1, 1, 1])
            .groups(13),
        true,
        72,
    );
}

/// Run linear forward (+ bias if `with_bias`) and backward on `ctx`, compare
/// with the reference, and return the shaders of the two dispatches.
fn check_linear(
    ctx: &Context,
    seed: u64,
    n: u32,
    k: u32,
    out: u32,
    with_bias: bool,
) -> Vec<&'static str> {
    check_linear_as(ctx, seed, n, k, out, with_bias, St::F32)
}

/// [`check_linear`] in storage type `st`.
fn check_linear_as(
    ctx: &Context,
    seed: u64,
    n: u32,
    k: u32,
    out: u32,
    with_bias: bool,
    st: St,
) -> Vec<&'static str> {
    let xv = st.random(seed, (n * k) as usize);
    let wv = st.random(seed + 1, (out * k) as usize);
    let bv = st.random(seed + 2, out as usize);
    let gyv = st.random(seed + 3, (n * out) as usize);
    let x = st.upload(ctx, &xv, Shape::new(n, k, 1, 1), "x");
    let w = st.upload(ctx, &wv, Shape::new(out, k, 1, 1), "w");
    let b = st.upload(ctx, &bv, Shape::new(1, out, 1, 1), "b");
    let gy = st.upload(ctx, &gyv, Shape::new(n, out, 1, 1), "gy");
    let y = st.poisoned(ctx, Shape::new(n, out, 1, 1), "y");
    let gx = st.poisoned(ctx, Shape::new(n, k, 1, 1), "gx");
    let mut rec = Recording::new();
    linear::forward(ctx, &mut rec, &x, &w, with_bias.then_some(&b), &y).unwrap();
    linear::backward(ctx, &mut rec, &gy, &w, &gx).unwrap();
    let got = ctx.run_read(&[&rec], &[&y, &gx]).unwrap();
    let b64 = to_f64(&bv);
    let (nu, ku, ou) = (n as usize, k as usize, out as usize);
    let want_y = linear_forward(
        &to_f64(&xv),
        &to_f64(&wv),
        with_bias.then_some(&b64[..]),
        nu,
        ku,
        ou,
    );
    let want_gx = linear_backward(&to_f64(&gyv), &to_f64(&wv), nu, ku, ou);
    let what = format!(
        "linear {n}x{k}->{out} ({}, {st:?})",
        ctx.kernel_style().name()
    );
    assert_close(&format!("{what} forward"), &got[0], &want_y, st.tolerance());
    assert_close(
        &format!("{what} backward"),
        &got[1],
        &want_gx,
        st.tolerance(),
    );
    shaders(&rec)
}

/// Linear layers in f16 storage on both kernel families (300 rows take the
/// direct kernels on CPU adapters).
#[test]
fn f16_linear_matches_reference() {
    for style in [KernelStyle::Tiled, KernelStyle::Direct] {
        let ctx = ctx_style(style);
        for (seed, n, k, out) in [(1u64, 3u32, 20u32, 10u32), (2, 300, 16, 12)] {
            check_linear_as(&ctx, seed, n, k, out, true, St::F16);
        }
    }
}

#[test]
fn linear_forward_backward() {
    let ctx = ctx();
    for (seed, n, k, out, with_bias) in [
        (80u64, 5u32, 37u32, 23u32, true),
        (81, 1, 130, 70, false),
        (82, 17, 3, 1, true),
    ] {
        check_linear(&ctx, seed, n, k, out, with_bias);
    }
}

#[test]
fn linear_accepts_unflattened_input() {
    // [2, 3, 2, 2] is seen as 2 vectors of 12 features
    let ctx = ctx();
    let xv = random(90, 24);
    let wv = random(91, 5 * 12);
    let gyv = random(92, 10);
    let x = ctx.upload(&xv, Shape::new(2, 3, 2, 2), "x").unwrap();
    let w = ctx.upload(&wv, Shape::new(5, 12, 1, 1), "w").unwrap();
    let gy = ctx.upload(&gyv, Shape::new(2, 5, 1, 1), "gy").unwrap();
    let y = poisoned(&ctx, Shape::new(2, 5, 1, 1), "y");
    let gx = poisoned(&ctx, Shape::new(2, 3, 2, 2), "gx");
    let mut rec = Recording::new();
    linear::forward(&ctx, &mut rec, &x, &w, None, &y).unwrap();
    linear::backward(&ctx, &mut rec, &gy, &w, &gx).unwrap();
    let got = ctx.run_read(&[&rec], &[&y, &gx]).unwrap();
    let want_y = linear_forward(&to_f64(&xv), &to_f64(&wv), None, 2, 12, 5);
    let want_gx = linear_backward(&to_f64(&gyv), &to_f64(&wv), 2, 12, 5);
    assert_close("linear unflattened forward", &got[0], &want_y, 1e-4);
    assert_close("linear unflattened backward", &got[1], &want_gx, 1e-4);
}

#[test]
fn grid_fold() {
    // At most 3 workgroups per dimension: every kernel's grid folds into 2-D,
    // with spare workgroups that must do nothing.
    let ctx = ctx_with_fold(3);
    // GEMM: forward 3 m tiles x 2 n tiles = 6 (grid 3x2), backward 4 m tiles x 1 (grid 2x2)
    check_on(
        &ctx,
        &Case::new("fold gemm", 2, 7, [9, 11], 70, [3, 3])
            .pad([1; 4])
            .stride([2, 1])
            .bias(),
        false,
        100,
    );
    // GEMM, grouped: 5 groups x 2 m tiles = 10 (grid 3x4, 2 spare)
    check_on(
        &ctx,
        &Case::new("fold gemm groups", 1, 10, [9, 9], 15, [3, 3])
            .pad([1; 4])
            .groups(5),
        false,
        101,
    );
    // Depthwise: forward 2*6*13*ceil(10/4) = 468 threads (2 workgroups),
    // backward 2*6*13*ceil(19/4) = 780 threads (4 workgroups, grid 2x2)
    check_on(
        &ctx,
        &Case::new("fold depthwise", 2, 6, [13, 19], 6, [3, 3])
            .pad([1; 4])
            .stride([1, 2])
            .groups(6),
        true,
        102,
    );
    // Depthwise with more work: 3*8*20*5 = 2400 threads -> 10 workgroups (grid 3x4)
    check_on(
        &ctx,
        &Case::new("fold depthwise big", 3, 8, [20, 20], 8, [3, 3])
            .pad([1; 4])
            .groups(8)
            .bias(),
        true,
        103,
    );
}

#[test]
fn dispatch_past_65535_workgroups() {
    // The cheapest kernel per workgroup is depthwise: a 3x1 kernel on a
    // one-pixel-wide image, 64 * 262400 rows of one thread each = 65600 workgroups
    // of 256 threads, forward and backward (the device's own 2-D grid fold).
    check(
        &Case::new("65600 workgroups", 1, 64, [262_400, 1], 64, [3, 1])
            .pad([1, 0, 1, 0])
            .groups(64)
            .bias(),
        true,
        110,
    );
}

#[test]
fn bad_shapes_are_errors() {
    let ctx = ctx();
    let x = ctx.tensor(Shape::new(1, 4, 8, 8), "x").unwrap();
    let w = ctx.tensor(Shape::new(6, 4, 3, 3), "w").unwrap();
    let p = Conv2dParams {
        padding: [1; 4],
        ..Default::default()
    };
    let mut rec = Recording::new();
    // wrong output shape
    let y_bad = ctx.tensor(Shape::new(1, 6, 7, 8), "y").unwrap();
    assert!(conv::forward(&ctx, &mut rec, &p, &x, &w, None, &y_bad).is_err());
    // wrong bias length
    let y = ctx.tensor(Shape::new(1, 6, 8, 8), "y").unwrap();
    let b = ctx.tensor(Shape::new(1, 5, 1, 1), "b").unwrap();
    assert!(conv::forward(&ctx, &mut rec, &p, &x, &w, Some(&b), &y).is_err());
    // groups that do not divide the channels
    let pg = Conv2dParams { groups: 3, ..p };
    assert!(conv::forward(&ctx, &mut rec, &pg, &x, &w, None, &y).is_err());
    // weight channels do not match the input
    let w_bad = ctx.tensor(Shape::new(6, 3, 3, 3), "w").unwrap();
    assert!(conv::forward(&ctx, &mut rec, &p, &x, &w_bad, None, &y).is_err());
    assert!(conv::backward(&ctx, &mut rec, &p, &y, &w_bad, &x).is_err());
    // gradient of the wrong shape
    assert!(conv::backward(&ctx, &mut rec, &p, &y_bad, &w, &x).is_err());
    // linear: feature mismatch and wrong output
    let lx = ctx.tensor(Shape::new(2, 10, 1, 1), "lx").unwrap();
    let lw = ctx.tensor(Shape::new(3, 9, 1, 1), "lw").unwrap();
    let ly = ctx.tensor(Shape::new(2, 3, 1, 1), "ly").unwrap();
    assert!(linear::forward(&ctx, &mut rec, &lx, &lw, None, &ly).is_err());
    let lw = ctx.tensor(Shape::new(4, 10, 1, 1), "lw").unwrap();
    assert!(linear::forward(&ctx, &mut rec, &lx, &lw, None, &ly).is_err());
    assert!(linear::backward(&ctx, &mut rec, &ly, &lw, &lx).is_err());
    assert!(rec.is_empty());
}

/// Every activation code the fused epilogues accept.
const ACTS: [Activation; 10] = [
    Activation::Relu,
    Activation::Relu6,
    Activation::LeakyRelu {
        negative_slope: 0.1,
    },
    Activation::Sigmoid,
    Activation::Silu,
    Activation::Hardswish,
    Activation::Hardsigmoid {
        alpha: 1.0 / 6.0,
        beta: 0.5,
    },
    Activation::Identity,
    Activation::Gelu,
    Activation::GeluTanh,
];

/// forward_act against the reference conv followed by the reference activation.
/// Inputs are scaled by `scale` so relu6's top and hardswish's tails are reached.
fn check_fused(ctx: &Context, case: &Case, depthwise: bool, act: Activation, seed: u64) {
    let p = case.params();
    let xs = case.x_shape();
    let ws = case.w_shape();
    let ys = p.out_shape(xs, ws.dims()).unwrap();
    let r = case.reference();
    let xv: Vec<f32> = random(seed, xs.numel() as usize)
        .iter()
        .map(|v| v * 3.0)
        .collect();
    let wv = random(seed + 1, ws.numel() as usize);
    let bv = random(seed + 2, case.oc as usize);
    let x = ctx.upload(&xv, xs, "x").unwrap();
    let w = ctx.upload(&wv, ws, "w").unwrap();
    let b = ctx.upload(&bv, Shape::new(1, case.oc, 1, 1), "b").unwrap();
    let y = poisoned(ctx, ys, "y");
    let mut rec = Recording::new();
    conv::forward_act(ctx, &mut rec, &p, &x, &w, case.bias.then_some(&b), act, &y).unwrap();
    let l = labels(&rec);
    assert_eq!(l.len(), 1, "{}: one fused dispatch, got {l:?}", case.name);
    assert_eq!(l[0].starts_with("depthwise"), depthwise, "{}", case.name);
    let got = ctx.run_read(&[&rec], &[&y]).unwrap().remove(0);
    let b64 = to_f64(&bv);
    let want: Vec<f64> = r
        .forward(&to_f64(&xv), &to_f64(&wv), case.bias.then_some(&b64[..]))
        .into_iter()
        .map(|v| act.apply_f64(v))
        .collect();
    assert_close(
        &format!("{} fused {}", case.name, act.name()),
        &got,
        &want,
        1e-4,
    );
}

#[test]
fn conv_fused_activation() {
    let ctx = ctx();
    let gemm = Case::new("gemm 3x3 s2 fused", 2, 5, [9, 11], 70, [3, 3])
        .pad([0, 0, 1, 1])
        .stride([2, 2])
        .bias();
    let dw = Case::new("depthwise 3x3 fused", 2, 6, [7, 9], 12, [3, 3])
        .pad([1; 4])
        .groups(6)
        .bias();
    for (i, act) in ACTS.into_iter().enumerate() {
        check_fused(&ctx, &gemm, false, act, 200 + 10 * i as u64);
        check_fused(&ctx, &dw, true, act, 205 + 10 * i as u64);
    }
    // without a bias
    let nob = Case::new("gemm 1x1 fused no bias", 1, 8, [5, 5], 9, [1, 1]);
    check_fused(&ctx, &nob, false, Activation::Relu6, 290);
}

#[test]
fn linear_fused_activation() {
    let ctx = ctx();
    let (n, k, out) = (3u32, 37u32, 21u32);
    let xv: Vec<f32> = random(300, (n * k) as usize)
        .iter()
        .map(|v| v * 3.0)
        .collect();
    let wv = random(301, (out * k) as usize);
    let bv = random(302, out as usize);
    let x = ctx.upload(&xv, Shape::new(n, k, 1, 1), "x").unwrap();
    let w = ctx.upload(&wv, Shape::new(out, k, 1, 1), "w").unwrap();
    let b = ctx.upload(&bv, Shape::new(1, out, 1, 1), "b").unwrap();
    for act in [Activation::Relu, Activation::Relu6, Activation::Sigmoid] {
        let y = poisoned(&ctx, Shape::new(n, out, 1, 1), "y");
        let mut rec = Recording::new();
        linear::forward_act(&ctx, &mut rec, &x, &w, Some(&b), act, &y).unwrap();
        let got = ctx.run_read(&[&rec], &[&y]).unwrap().remove(0);
        let b64 = to_f64(&bv);
        let (n, k, out) = (n as usize, k as usize, out as usize);
        let want: Vec<f64> = linear_forward(&to_f64(&xv), &to_f64(&wv), Some(&b64[..]), n, k, out)
            .into_iter()
            .map(|v| act.apply_f64(v))
            .collect();
        assert_close(&format!("linear fused {}", act.name()), &got, &want, 1e-4);
    }
}

#[test]
fn conv_backward_stride_phases() {
    // stride 3 with a 2-wide kernel: every phase has 0 or 1 tap per axis
    check(
        &Case::new("2x2 s3", 2, 3, [11, 10], 5, [2, 2])
            .stride([3, 3])
            .pad([1, 0, 0, 2]),
        false,
        400,
    );
    // stride 2, dilation 3 (coprime): taps step by 2, outputs by 3
    check(
        &Case::new("3x3 s2 d3", 1, 4, [13, 12], 6, [3, 3])
            .stride([2, 2])
            .dil([3, 3])
            .pad([3, 2, 3, 3]),
        false,
        401,
    );
    // stride 3, dilation 3: only the phases with (ih + pad) % 3 == 0 get taps
    check(
        &Case::new("3x3 s3 d3", 1, 3, [14, 13], 4, [3, 3])
            .stride([3, 3])
            .dil([3, 3])
            .pad([2, 1, 0, 4]),
        false,
        402,
    );
    // stride larger than the kernel (phases without taps), stride (4, 2), groups,
    // a 5x3 kernel and more than one n tile (70 input channels per group)
    check(
        &Case::new("1x1 s4x2", 1, 5, [9, 7], 3, [1, 1]).stride([4, 2]),
        false,
        403,
    );
    check(
        &Case::new("5x3 s(2,3) groups 2 wide", 1, 140, [7, 8], 6, [5, 3])
            .stride([2, 3])
            .pad([2, 1, 2, 1])
            .groups(2)
            .bias(),
        false,
        404,
    );
    // input smaller than the stride (empty phases)
    check(
        &Case::new("3x3 s4 tiny", 2, 2, [3, 2], 3, [3, 3])
            .stride([4, 4])
            .pad([1; 4]),
        false,
        405,
    );
}

/// (WG_M, TM) of every conv GEMM dispatch in `rec` (the tile variant chosen).
fn tiles(rec: &Recording) -> Vec<(u32, u32)> {
    rec.steps
        .iter()
        .filter_map(|s| match s {
            Step::Dispatch { kernel, .. } if kernel.key.shader.name() == "conv" => {
                let get = |name: &str| {
                    kernel
                        .key
                        .constants
                        .iter()
                        .find(|(k, _)| k == name)
                        .map(|(_, v)| f64::from_bits(*v) as u32)
                        .unwrap()
                };
                Some((get("WG_M"), get("TM")))
            }
            _ => None,
        })
        .collect()
}

/// Like `check`, and asserts the GEMM tile variants of forward and backward.
fn check_tiles(case: &Case, want: [(u32, u32); 2], seed: u64) {
    let ctx = ctx_style(KernelStyle::Tiled);
    let p = case.params();
    let xs = case.x_shape();
    let ws = case.w_shape();
    let ys = p.out_shape(xs, ws.dims()).unwrap();
    let x = ctx.tensor(xs, "x").unwrap();
    let w = ctx.tensor(ws, "w").unwrap();
    let y = ctx.tensor(ys, "y").unwrap();
    let mut rec = Recording::new();
    conv::forward(&ctx, &mut rec, &p, &x, &w, None, &y).unwrap();
    conv::backward(&ctx, &mut rec, &p, &y, &w, &x).unwrap();
    assert_eq!(tiles(&rec), want.to_vec(), "{}: tile variants", case.name);
    check_on(&ctx, case, false, seed);
}

const SQUARE: (u32, u32) = (16, 4);
const TALL: (u32, u32) = (16, 8);
const NARROW: (u32, u32) = (64, 4);

#[test]
fn conv_tile_variants() {
    // 256 x 16 tiles (few GEMM columns): forward N = 24, backward N = 5, with
    // partial m and n tiles and K = 45 not a multiple of the K slice (8)
    check_tiles(
        &Case::new("narrow 3x3", 1, 5, [21, 19], 24, [3, 3])
            .pad([1; 4])
            .bias(),
        [NARROW, NARROW],
        500,
    );
    // narrow, stride 2 (phased backward), N = 3 like the stem's backward
    check_tiles(
        &Case::new("narrow stem-like s2", 2, 3, [30, 26], 20, [3, 3])
            .pad([0, 0, 1, 1])
            .stride([2, 2]),
        [NARROW, NARROW],
        501,
    );
    // 128 x 64 tiles: forward M = 250 * 263 = 65750 (514 tall m tiles, the last
    // partial), N = 40; backward N = 36 over the same pixels
    check_tiles(
        &Case::new("tall 1x1", 1, 36, [250, 263], 40, [1, 1]).bias(),
        [TALL, TALL],
        502,
    );
    // tall phased backward: 4 phases x 128 m tiles; forward (16384 pixels, N = 3)
    // is narrow
    check_tiles(
        &Case::new("tall phased s2", 1, 40, [256, 256], 3, [3, 3])
            .pad([1; 4])
            .stride([2, 2]),
        [NARROW, TALL],
        503,
    );
    // small layers keep 64 x 64
    check_tiles(
        &Case::new("square", 2, 40, [6, 7], 48, [3, 3]).pad([1; 4]),
        [SQUARE, SQUARE],
        504,
    );
}

/// `forward_fixed` (kernel size and stride as pipeline constants) against the
/// reference, on a GPU-style context: the largest row segment it takes (7 wide
/// at stride 3: 16 values), rectangular kernels, unequal strides, a channel
/// multiplier, odd sizes, batch 1, bias; and the general kernel beyond it.
#[test]
fn depthwise_fixed_forward() {
    let ctx = ctx_style(KernelStyle::Tiled);
    let cases = [
        (
            Case::new("dw k7 s3 (16-value segment)", 2, 3, [17, 19], 3, [7, 7])
                .pad([3; 4])
                .stride([3, 3])
                .groups(3)
                .bias(),
            DepthwiseFixed,
        ),
        (
            Case::new("dw k5x3 s(1,2)", 1, 4, [9, 11], 4, [5, 3])
                .pad([2, 1, 2, 0])
                .stride([1, 2])
                .groups(4),
            DepthwiseFixed,
        ),
        (
            Case::new("dw k3 s2 mult 2", 3, 2, [7, 6], 4, [3, 3])
                .pad([1; 4])
                .stride([2, 2])
                .groups(2)
                .bias(),
            DepthwiseFixed,
        ),
        (
            Case::new("dw k1 s1", 1, 5, [4, 3], 5, [1, 1]).groups(5),
            DepthwiseFixed,
        ),
        // 3 * 4 + 5 = 17 values: the general kernel
        (
            Case::new("dw k5 s4", 1, 2, [13, 17], 2, [5, 5])
                .pad([2; 4])
                .stride([4, 4])
                .groups(2),
            Depthwise,
        ),
    ];
    for (i, (case, want)) in cases.iter().enumerate() {
        assert_eq!(conv_kernels(&ctx, case)[0], *want, "{}", case.name);
        check_on(&ctx, case, true, 620 + i as u64);
        check_fused(&ctx, case, true, Activation::Relu6, 640 + i as u64);
    }
}

#[test]
fn depthwise_backward_stride_phases() {
    // EfficientNet-Lite0's 5x5 stride-2 depthwise (TF SAME on an even input)
    check(
        &Case::new("depthwise 5x5 s2 [1,1,2,2]", 2, 4, [14, 14], 4, [5, 5])
            .pad([1, 1, 2, 2])
            .stride([2, 2])
            .groups(4)
            .bias(),
        true,
        600,
    );
    // stride 3, dilation 2 (coprime): taps step by 3, outputs by 2; multiplier 2
    check(
        &Case::new("depthwise 5x4 s3 d2", 1, 3, [17, 16], 6, [5, 4])
            .pad([3, 2, 1, 4])
            .stride([3, 3])
            .dil([2, 2])
            .groups(3),
        true,
        601,
    );
    // stride 2, dilation 4 (not coprime: odd phases get no taps), stride (2, 4)
    check(
        &Case::new("depthwise 3x3 s(2,4) d4", 1, 2, [15, 18], 2, [3, 3])
            .pad([4, 4, 4, 3])
            .stride([2, 4])
            .dil([4, 4])
            .groups(2),
        true,
        602,
    );
}

/// Shader of every dispatch in `rec` that computes (weight transposes and
/// repacks left out).
fn shaders(rec: &Recording) -> Vec<&'static str> {
    rec.steps
        .iter()
        .filter_map(|s| match s {
            Step::Dispatch { kernel, label, .. }
                if label != "transpose" && !label.ends_with("_repack") =>
            {
                Some(kernel.key.shader.name())
            }
            _ => None,
        })
        .collect()
}

/// Pointwise layers on both kernel families: the direct one (CPU adapters) in its
/// vec4 layout (pixels per image a multiple of 4) and its scalar layout, with
/// partial pixel and column tiles, groups, batch 1, and every fused activation.
#[test]
fn pointwise_direct_and_tiled() {
    let cases = [
        // vec4: 3 * 120 pixels (one partial tile), 20 columns (5 of 4)
        (
            Case::new("pw vec4", 3, 8, [10, 12], 20, [1, 1]).bias(),
            PointwiseDirect(PwLayout::Vec4),
        ),
        // vec4: 2 * 1520 pixels = 6 tiles of 512, the last partial; backward 12
        // columns (1.5 tiles of 8)
        (
            Case::new("pw vec4 tiles", 2, 12, [40, 38], 9, [1, 1]),
            PointwiseDirect(PwLayout::Vec4),
        ),
        // scalar: 7 x 7 maps, 6 * 49 pixels (2 tiles, one partial), 37 columns
        // (16 + 16 + 5)
        (
            Case::new("pw scalar 7x7", 6, 12, [7, 7], 37, [1, 1]).bias(),
            PointwiseDirect(PwLayout::Scalar),
        ),
        // scalar, batch 1, odd sizes, 300 pixels past one 256-pixel tile
        (
            Case::new("pw scalar batch 1", 1, 4, [15, 21], 3, [1, 1]),
            PointwiseDirect(PwLayout::Scalar),
        ),
        // grouped: 2 groups of 8 -> 5
        (
            Case::new("pw grouped", 2, 16, [10, 16], 10, [1, 1])
                .groups(2)
                .bias(),
            PointwiseDirect(PwLayout::Vec4),
        ),
    ];
    let direct = ctx_style(KernelStyle::Direct);
    let tiled = ctx_style(KernelStyle::Tiled);
    for (i, (case, kernel)) in cases.iter().enumerate() {
        let seed = 900 + 10 * i as u64;
        for (ctx, want) in [(&direct, *kernel), (&tiled, Gemm)] {
            assert_eq!(
                conv_kernels(ctx, case),
                [want, want],
                "{}: kernels",
                case.name
            );
            check_on(ctx, case, false, seed);
        }
        for (j, act) in [
            Activation::Relu,
            Activation::Relu6,
            Activation::LeakyRelu {
                negative_slope: 0.1,
            },
            Activation::Sigmoid,
            Activation::Silu,
            Activation::Hardswish,
            Activation::Hardsigmoid {
                alpha: 0.2,
                beta: 0.5,
            },
            Activation::Gelu,
            Activation::GeluTanh,
        ]
        .into_iter()
        .enumerate()
        {
            check_fused(&direct, case, false, act, seed + 100 + j as u64);
        }
    }
}

/// Linear layers with K a multiple of 4 take the direct kernels (scalar layout:
/// one pixel per item) on a direct context from batch 256 on; smaller batches
/// keep the tiled GEMM forward.
#[test]
fn linear_direct() {
    let ctx = ctx_style(KernelStyle::Direct);
    for (seed, n, k, out, want) in [
        (950u64, 300u32, 36u32, 23u32, ["conv_direct_scalar"; 2]),
        (951, 256, 128, 70, ["conv_direct_scalar"; 2]),
        // 9 rows: tiled forward; 4 inputs: the few-channel backward
        (952, 9, 4, 1, ["conv", "conv_backward_few"]),
    ] {
        let got = check_linear(&ctx, seed, n, k, out, true);
        assert_eq!(got, want, "linear {n}x{k}->{out}");
    }
}

/// The backward of convolutions with at most 4 input channels (stems) on a direct
/// context: strides 1-3, dilation, asymmetric padding, batch 1, phases no tap
/// reaches, and a phase grid with partial rows (odd sizes).
#[test]
fn few_channel_backward() {
    let direct = ctx_style(KernelStyle::Direct);
    let cases = [
        Case::new("stem s2 same", 2, 3, [30, 26], 8, [3, 3])
            .pad([0, 0, 1, 1])
            .stride([2, 2]),
        Case::new("stem s2 odd", 1, 3, [17, 23], 5, [3, 3])
            .pad([1; 4])
            .stride([2, 2])
            .bias(),
        Case::new("1 channel s3 1x1", 2, 1, [10, 11], 4, [1, 1]).stride([3, 3]),
        Case::new("4 channels dilated", 1, 4, [12, 9], 6, [3, 2])
            .pad([2, 1, 0, 1])
            .dil([2, 3]),
        Case::new("2 channels s(2,1) 5x5", 3, 2, [13, 14], 7, [5, 5])
            .pad([2; 4])
            .stride([2, 1]),
    ];
    for (i, case) in cases.iter().enumerate() {
        assert_eq!(conv_kernels(&direct, case)[1], FewInputs, "{}", case.name);
        check_on(&direct, case, false, 970 + i as u64);
    }
}

/// The kernels `conv::select` picks for the forward and backward passes of
/// `case` on `ctx`, after checking that the recorded dispatches use them.
fn conv_kernels(ctx: &Context, case: &Case) -> [ConvKernel; 2] {
    let p = case.params();
    let xs = case.x_shape();
    let ws = case.w_shape();
    let want = [Pass::Forward, Pass::Backward]
        .map(|pass| conv::kernel_for(ctx, &p, xs, ws, pass).unwrap());
    let ys = p.out_shape(xs, ws.dims()).unwrap();
    let x = ctx.tensor(xs, "x").unwrap();
    let w = ctx.tensor(ws, "w").unwrap();
    let y = ctx.tensor(ys, "y").unwrap();
    let gx = ctx.tensor(xs, "gx").unwrap();
    let mut rec = Recording::new();
    conv::forward(ctx, &mut rec, &p, &x, &w, None, &y).unwrap();
    conv::backward(ctx, &mut rec, &p, &y, &w, &gx).unwrap();
    let recorded: Vec<&str> = want
        .iter()
        .filter_map(|k| k.shader())
        .map(|s| s.name())
        .collect();
    assert_eq!(shaders(&rec), recorded, "{}: recorded kernels", case.name);
    want
}

/// The vec4-block depthwise kernel of CPU adapters (stride 1, 'same' padding,
/// planes of a multiple of 4): every row-width residue mod 4 (quads that span
/// rows), odd and even and rectangular kernels with asymmetric padding, batch 1,
/// bias and fused activations; layers it does not cover fall back.
#[test]
fn depthwise_direct_and_fallback() {
    let ctx = ctx_style(KernelStyle::Direct);
    let cases = [
        // W % 4 = 0, 1, 2, 3
        Case::new("dw direct 8x8 k3", 2, 5, [8, 8], 5, [3, 3])
            .pad([1; 4])
            .groups(5)
            .bias(),
        Case::new("dw direct 4x5 k3", 1, 3, [4, 5], 3, [3, 3])
            .pad([1; 4])
            .groups(3),
        Case::new("dw direct 6x6 k5", 3, 4, [6, 6], 4, [5, 5])
            .pad([2; 4])
            .groups(4)
            .bias(),
        Case::new("dw direct 4x7 k5", 2, 6, [4, 7], 6, [5, 5])
            .pad([2; 4])
            .groups(6),
        // even kernels: 'same' padding is asymmetric
        Case::new("dw direct 6x10 k4", 1, 2, [6, 10], 2, [4, 4])
            .pad([1, 2, 2, 1])
            .groups(2),
        Case::new("dw direct 5x4 k2", 2, 3, [5, 4], 3, [2, 2])
            .pad([0, 1, 1, 0])
            .groups(3),
        // rectangular kernel, a plane narrower than the kernel
        Case::new("dw direct 12x3 k5x3", 1, 4, [12, 3], 4, [5, 3])
            .pad([2, 1, 2, 1])
            .groups(4),
        // one quad per plane
        Case::new("dw direct 2x2 k3", 1, 7, [2, 2], 7, [3, 3])
            .pad([1; 4])
            .groups(7)
            .bias(),
    ];
    for (i, case) in cases.iter().enumerate() {
        assert_eq!(
            conv_kernels(&ctx, case),
            [DepthwiseDirect, DepthwiseDirect],
            "{}",
            case.name
        );
        check_on(&ctx, case, true, 300 + i as u64);
        for act in [Activation::Relu6, Activation::Hardswish] {
            check_fused(&ctx, case, true, act, 320 + i as u64);
        }
        // The GPU family keeps the depthwise kernel (its fixed-size forward).
        let tiled = ctx_style(KernelStyle::Tiled);
        assert_eq!(
            conv_kernels(&tiled, case),
            [DepthwiseFixed, Depthwise],
            "{}",
            case.name
        );
    }
    let fallback = [
        // 7 x 7 planes: not a multiple of 4 elements
        Case::new("dw 7x7", 2, 4, [7, 7], 4, [3, 3])
            .pad([1; 4])
            .groups(4),
        // stride 2 on rows that are not a multiple of 8
        Case::new("dw s2 w12", 1, 4, [10, 12], 4, [3, 3])
            .pad([1; 4])
            .stride([2, 2])
            .groups(4),
        // not 'same' (output smaller than input)
        Case::new("dw valid", 1, 4, [8, 8], 4, [3, 3]).groups(4),
        // channel multiplier 2
        Case::new("dw mult 2", 1, 4, [8, 8], 8, [3, 3])
            .pad([1; 4])
            .groups(4),
        // dilation 2
        Case::new("dw dilated", 1, 4, [8, 8], 4, [3, 3])
            .pad([2; 4])
            .dil([2, 2])
            .groups(4),
        // a kernel wider than 5
        Case::new("dw k7", 1, 4, [8, 8], 4, [7, 7])
            .pad([3; 4])
            .groups(4),
    ];
    for (i, case) in fallback.iter().enumerate() {
        // Without dilation the forward pass takes forward_fixed.
        let forward = if case.name == "dw dilated" {
            Depthwise
        } else {
            DepthwiseFixed
        };
        assert_eq!(
            conv_kernels(&ctx, case),
            [forward, Depthwise],
            "{}",
            case.name
        );
        check_on(&ctx, case, true, 340 + i as u64);
    }
    // Stride 2, output half the input, rows of a multiple of 8: the backward
    // pass takes the direct kernel (both row parities, odd heights, odd and even
    // kernels, TF- and PyTorch-style padding); the forward keeps the general one.
    let s2 = [
        Case::new("dw s2 k3 SAME", 2, 3, [8, 8], 3, [3, 3])
            .pad([0, 0, 1, 1])
            .stride([2, 2])
            .groups(3),
        Case::new("dw s2 k5 SAME", 1, 4, [12, 16], 4, [5, 5])
            .pad([1, 1, 2, 2])
            .stride([2, 2])
            .groups(4),
        Case::new("dw s2 k3 pad 1 odd h", 2, 5, [9, 8], 5, [3, 3])
            .pad([1; 4])
            .stride([2, 2])
            .groups(5),
        Case::new("dw s2 k4", 1, 2, [8, 8], 2, [4, 4])
            .pad([1, 1, 2, 2])
            .stride([2, 2])
            .groups(2),
        Case::new("dw s2 k2", 3, 2, [6, 8], 2, [2, 2])
            .stride([2, 2])
            .groups(2),
        Case::new("dw s2 k5x3", 1, 3, [7, 24], 3, [5, 3])
            .pad([2, 1, 2, 1])
            .stride([2, 2])
            .groups(3),
    ];
    for (i, case) in s2.iter().enumerate() {
        assert_eq!(
            conv_kernels(&ctx, case),
            [DepthwiseFixed, DepthwiseDirectS2],
            "{}",
            case.name
        );
        check_on(&ctx, case, true, 360 + i as u64);
    }
}

/// The dense 'same' kernel of CPU adapters (stride 1, planes of 4k elements):
/// every row-width residue mod 4, odd and even and rectangular kernels with
/// asymmetric padding, output channel counts that are not multiples of 4, odd
/// quad counts, 1x1 layers the pointwise kernel does not take, batch 1, bias and
/// fused activations; other layers fall back.
#[test]
fn same_direct_and_fallback() {
    let ctx = ctx_style(KernelStyle::Direct);
    let cases = [
        Case::new("same 8x8 k3", 2, 5, [8, 8], 7, [3, 3])
            .pad([1; 4])
            .bias(),
        Case::new("same 4x5 k3", 1, 6, [4, 5], 4, [3, 3]).pad([1; 4]),
        Case::new("same 6x6 k5", 3, 5, [6, 6], 9, [5, 5])
            .pad([2; 4])
            .bias(),
        Case::new("same 4x7 k3", 2, 8, [4, 7], 6, [3, 3]).pad([1; 4]),
        Case::new("same 6x10 k4", 1, 5, [6, 10], 3, [4, 4]).pad([1, 2, 2, 1]),
        Case::new("same 5x4 k2", 2, 7, [5, 4], 5, [2, 2])
            .pad([0, 1, 1, 0])
            .bias(),
        Case::new("same 12x3 k5x3", 1, 6, [12, 3], 8, [5, 3]).pad([2, 1, 2, 1]),
        Case::new("same 1x1 ic 6", 2, 6, [4, 4], 5, [1, 1]).bias(),
        Case::new("same 2x2 k3", 1, 9, [2, 2], 4, [3, 3]).pad([1; 4]),
    ];
    for (i, case) in cases.iter().enumerate() {
        let s = conv_kernels(&ctx, case);
        assert_eq!(s, [SameDirect, SameDirect], "{}", case.name);
        check_on(&ctx, case, false, 400 + i as u64);
        for act in [Activation::Relu, Activation::Silu] {
            check_fused(&ctx, case, false, act, 420 + i as u64);
        }
    }
    let fallback = [
        // 7 x 7 planes
        Case::new("7x7", 2, 5, [7, 7], 6, [3, 3]).pad([1; 4]),
        // stride 2 with 5-wide output rows (main_s2 wants multiples of 4)
        Case::new("s2", 1, 5, [10, 10], 6, [3, 3])
            .pad([1; 4])
            .stride([2, 2]),
        // not 'same'
        Case::new("valid", 1, 5, [8, 8], 6, [3, 3]),
        // groups
        Case::new("groups", 1, 6, [8, 8], 6, [3, 3])
            .pad([1; 4])
            .groups(2),
        // dilation
        Case::new("dilated", 1, 5, [8, 8], 6, [3, 3])
            .pad([2; 4])
            .dil([2, 2]),
        // 7 wide
        Case::new("k7", 1, 5, [8, 8], 6, [7, 7]).pad([3; 4]),
    ];
    for (i, case) in fallback.iter().enumerate() {
        let s = conv_kernels(&ctx, case);
        assert!(
            !s.contains(&SameDirect) && !s.contains(&SameDirectS2),
            "{}: {s:?}",
            case.name
        );
        check_on(&ctx, case, false, 440 + i as u64);
    }
    // Few input channels: forward here, backward on conv_backward_few.
    let stem = Case::new("same ic 3", 2, 3, [8, 8], 8, [3, 3]).pad([1; 4]);
    assert_eq!(conv_kernels(&ctx, &stem), [SameDirect, FewInputs]);
    check_on(&ctx, &stem, false, 460);
}

/// The stride-2 dense forward of CPU adapters (stems, downsampling): TF- and
/// PyTorch-style padding, left padding up to 4, odd input heights, odd, even
/// and rectangular kernels, output channel counts that are not multiples of 8,
/// bias and fused activations; rows that are not multiples of 4 fall back.
#[test]
fn stride2_direct_forward() {
    let ctx = ctx_style(KernelStyle::Direct);
    let cases = [
        Case::new("s2 stem", 2, 3, [16, 16], 8, [3, 3])
            .pad([0, 0, 1, 1])
            .stride([2, 2])
            .bias(),
        Case::new("s2 k3 pad 1", 1, 5, [12, 8], 12, [3, 3])
            .pad([1; 4])
            .stride([2, 2]),
        Case::new("s2 k5", 1, 4, [16, 16], 10, [5, 5])
            .pad([1, 1, 2, 2])
            .stride([2, 2])
            .bias(),
        Case::new("s2 k2", 2, 6, [8, 8], 7, [2, 2]).stride([2, 2]),
        Case::new("s2 k4", 1, 3, [8, 16], 9, [4, 4])
            .pad([1, 1, 2, 2])
            .stride([2, 2]),
        Case::new("s2 odd h", 3, 2, [9, 8], 16, [3, 3])
            .pad([1; 4])
            .stride([2, 2])
            .bias(),
        Case::new("s2 k5x3", 1, 5, [7, 8], 6, [5, 3])
            .pad([2, 1, 2, 1])
            .stride([2, 2]),
        Case::new("s2 pad_l 4", 1, 2, [8, 12], 5, [5, 5])
            .pad([2, 4, 2, 4])
            .stride([2, 2]),
    ];
    for (i, case) in cases.iter().enumerate() {
        let s = conv_kernels(&ctx, case);
        assert_eq!(s[0], SameDirectS2, "{}: {s:?}", case.name);
        check_on(&ctx, case, false, 500 + i as u64);
        for act in [Activation::Relu6, Activation::Hardswish] {
            check_fused(&ctx, case, false, act, 520 + i as u64);
        }
    }
    for (i, case) in [
        Case::new("s2 out 5", 1, 3, [10, 10], 8, [3, 3])
            .pad([1; 4])
            .stride([2, 2]),
        Case::new("s2 groups", 1, 4, [8, 8], 8, [3, 3])
            .pad([1; 4])
            .stride([2, 2])
            .groups(2),
        Case::new("s2 dilated", 1, 3, [12, 16], 8, [3, 3])
            .pad([2; 4])
            .stride([2, 2])
            .dil([2, 2]),
    ]
    .iter()
    .enumerate()
    {
        let s = conv_kernels(&ctx, case);
        assert!(
            !s.contains(&SameDirect) && !s.contains(&SameDirectS2),
            "{}: {s:?}",
            case.name
        );
        check_on(&ctx, case, false, 540 + i as u64);
    }
}

/// The same cases in f16 storage, on both kernel families: every conv kernel
/// family (GEMM, depthwise general and fixed, pointwise direct in both
/// layouts, the few-channel stem backward, 'same' and stride-2 direct).
#[test]
fn f16_convolutions_match_reference() {
    let cases = [
        (
            Case::new("3x3 stride 1 pad 1", 2, 5, [8, 8], 7, [3, 3])
                .pad([1; 4])
                .bias(),
            false,
        ),
        (
            Case::new("3x3 stride 2 odd sizes", 1, 6, [9, 11], 10, [3, 3])
                .pad([1, 1, 0, 0])
                .stride([2, 2])
                .bias(),
            false,
        ),
        (
            Case::new("grouped", 2, 8, [6, 6], 6, [3, 3])
                .pad([1; 4])
                .groups(2)
                .bias(),
            false,
        ),
        (
            Case::new("depthwise stride 2", 2, 8, [9, 9], 8, [3, 3])
                .pad([0, 0, 1, 1])
                .stride([2, 2])
                .groups(8)
                .bias(),
            true,
        ),
        (
            Case::new("depthwise 5x5", 1, 6, [7, 10], 6, [5, 5])
                .pad([2; 4])
                .groups(6)
                .bias(),
            true,
        ),
        (
            Case::new("depthwise dilated", 1, 4, [9, 8], 4, [3, 3])
                .pad([2; 4])
                .dil([2, 2])
                .groups(4),
            true,
        ),
        // Pointwise: the direct kernels' vec4 layout (8x8 maps) and scalar
        // layout (7x7 maps) on CPU adapters, the tiled GEMM elsewhere.
        (
            Case::new("pointwise 8x8", 4, 16, [8, 8], 24, [1, 1]).bias(),
            false,
        ),
        (
            Case::new("pointwise 7x7", 6, 16, [7, 7], 20, [1, 1]).bias(),
            false,
        ),
        // The stem: 3 input channels (few-channel backward on CPU adapters).
        (
            Case::new("stem 3x3 stride 2", 2, 3, [15, 15], 8, [3, 3])
                .pad([0, 0, 1, 1])
                .stride([2, 2])
                .bias(),
            false,
        ),
    ];
    for style in [KernelStyle::Tiled, KernelStyle::Direct] {
        let ctx = ctx_style(style);
        assert!(
            ctx.supports_f16(),
            "adapter {} lacks SHADER_F16 (lavapipe has it)",
            ctx.summary.name
        );
        for (i, (case, depthwise)) in cases.iter().enumerate() {
            check_on_as(&ctx, case, *depthwise, 100 + i as u64 * 10, St::F16);
        }
    }
}

/// d act / dx from the output y, as PyTorch's backward takes it at the kinks
/// (relu6: 0 at both ends; leaky_relu: the slope at 0).
fn dact_from_y(act: Activation, y: f64) -> f64 {
    match act {
        Activation::Relu => (y > 0.0) as u8 as f64,
        Activation::Relu6 => (y > 0.0 && y < 6.0) as u8 as f64,
        Activation::LeakyRelu { negative_slope } => {
            if y > 0.0 {
                1.0
            } else {
                negative_slope as f64
            }
        }
        Activation::Sigmoid => y * (1.0 - y),
        Activation::Hardsigmoid { alpha, .. } => {
            if y > 0.0 && y < 1.0 {
                alpha as f64
            } else {
                0.0
            }
        }
        a => panic!("{a:?}: no derivative from the output"),
    }
}

/// backward_through: gx = backward(gy) * act'(y) in one dispatch, against the
/// reference backward times the derivative, on `kernel` in storage `st`. y is
/// act of values in [-4, 8), rounded to `st`, so relu6's top is reached.
fn check_through(
    ctx: &Context,
    case: &Case,
    kernel: ConvKernel,
    act: Activation,
    seed: u64,
    st: St,
) {
    let p = case.params();
    let (xs, ws) = (case.x_shape(), case.w_shape());
    let ys = p.out_shape(xs, ws.dims()).unwrap();
    assert_eq!(
        conv::kernel_for(ctx, &p, xs, ws, Pass::Backward).unwrap(),
        kernel,
        "{}",
        case.name
    );
    assert!(conv::backward_fuses(ctx, &p, xs, ws), "{}", case.name);
    let wv = st.random(seed, ws.numel() as usize);
    let gyv = st.random(seed + 1, ys.numel() as usize);
    let av: Vec<f32> = random(seed + 2, xs.numel() as usize)
        .iter()
        .map(|v| act.apply_f64(*v as f64 * 6.0 + 2.0) as f32)
        .collect();
    let av = st.stored(&av);
    let w = st.upload(ctx, &wv, ws, "w");
    let gy = st.upload(ctx, &gyv, ys, "gy");
    let a = st.upload(ctx, &av, xs, "activation output");
    let gx = st.poisoned(ctx, xs, "gx");
    let mut rec = Recording::new();
    let through = Some(conv::Through { act, y: &a });
    conv::backward_through(ctx, &mut rec, &p, &gy, &w, &gx, through, None).unwrap();
    let l = labels(&rec);
    assert_eq!(l.len(), 1, "{}: one dispatch, got {l:?}", case.name);
    assert!(
        l[0].ends_with(&format!("+{}'", act.name())),
        "{}: {l:?}",
        case.name
    );
    let got = ctx.run_read(&[&rec], &[&gx]).unwrap().remove(0);
    let want: Vec<f64> = case
        .reference()
        .backward(&to_f64(&gyv), &to_f64(&wv))
        .iter()
        .zip(&av)
        .map(|(g, y)| g * dact_from_y(act, *y as f64))
        .collect();
    let what = format!("{} through {} ({st:?})", case.name, act.name());
    assert_close(&what, &got, &want, st.tolerance());
}

#[test]
fn conv_backward_through_activation() {
    let tiled = ctx_style(KernelStyle::Tiled);
    let direct = ctx_style(KernelStyle::Direct);
    let cases = [
        (
            &tiled,
            Case::new("gemm 3x3 s1", 2, 5, [7, 9], 6, [3, 3]).pad([1; 4]),
            Gemm,
        ),
        (
            &tiled,
            Case::new("gemm 3x3 s2 phased", 1, 6, [9, 11], 5, [3, 3])
                .pad([1; 4])
                .stride([2, 2]),
            Gemm,
        ),
        (
            &tiled,
            Case::new("depthwise s2 mult 2", 2, 3, [9, 8], 6, [3, 3])
                .pad([1; 4])
                .stride([2, 2])
                .groups(3),
            Depthwise,
        ),
        (
            &direct,
            Case::new("dw direct 4x7 k3", 2, 4, [4, 7], 4, [3, 3])
                .pad([1; 4])
                .groups(4),
            DepthwiseDirect,
        ),
        (
            &direct,
            Case::new("dw direct s2", 1, 3, [8, 16], 3, [3, 3])
                .pad([1; 4])
                .stride([2, 2])
                .groups(3),
            DepthwiseDirectS2,
        ),
        (
            &direct,
            Case::new("pw vec4", 3, 8, [10, 12], 20, [1, 1]),
            PointwiseDirect(PwLayout::Vec4),
        ),
        (
            &direct,
            Case::new("pw scalar", 6, 12, [7, 7], 8, [1, 1]),
            PointwiseDirect(PwLayout::Scalar),
        ),
        (
            &direct,
            Case::new("same 4x7 k3", 2, 8, [4, 7], 6, [3, 3]).pad([1; 4]),
            SameDirect,
        ),
    ];
    let acts = [
        Activation::Relu6,
        Activation::LeakyRelu {
            negative_slope: 0.1,
        },
        Activation::Sigmoid,
        Activation::Hardsigmoid {
            alpha: 1.0 / 6.0,
            beta: 0.5,
        },
    ];
    for (i, (ctx, case, kernel)) in cases.iter().enumerate() {
        for (j, act) in acts.into_iter().enumerate() {
            let seed = 1500 + 10 * i as u64 + j as u64;
            check_through(ctx, case, *kernel, act, seed, St::F32);
        }
        check_through(
            ctx,
            case,
            *kernel,
            Activation::Relu,
            1600 + i as u64,
            St::F16,
        );
    }
}

#[test]
fn backward_through_refuses_what_it_cannot_apply() {
    let ctx = ctx_style(KernelStyle::Direct);
    // a stem's backward pass (3 input channels): backward_few.wgsl has no epilogue
    let stem = Case::new("stem", 1, 3, [8, 8], 4, [3, 3]).pad([1; 4]);
    let (p, xs, ws) = (stem.params(), stem.x_shape(), stem.w_shape());
    let ys = p.out_shape(xs, ws.dims()).unwrap();
    assert_eq!(
        conv::kernel_for(&ctx, &p, xs, ws, Pass::Backward).unwrap(),
        FewInputs
    );
    assert!(!conv::backward_fuses(&ctx, &p, xs, ws));
    let w = ctx
        .upload(&random(1, ws.numel() as usize), ws, "w")
        .unwrap();
    let gy = ctx
        .upload(&random(2, ys.numel() as usize), ys, "gy")
        .unwrap();
    let a = ctx
        .upload(&random(3, xs.numel() as usize), xs, "a")
        .unwrap();
    let gx = poisoned(&ctx, xs, "gx");
    let mut rec = Recording::new();
    let relu = Some(conv::Through {
        act: Activation::Relu,
        y: &a,
    });
    let err = conv::backward_through(&ctx, &mut rec, &p, &gy, &w, &gx, relu, None).unwrap_err();
    assert!(err.to_string().contains("apart"), "{err}");
    // an activation whose derivative needs its input, on a kernel with the epilogue
    let same = Case::new("same", 1, 8, [4, 8], 6, [3, 3]).pad([1; 4]);
    let (p, xs, ws) = (same.params(), same.x_shape(), same.w_shape());
    let ys = p.out_shape(xs, ws.dims()).unwrap();
    let w = ctx
        .upload(&random(4, ws.numel() as usize), ws, "w")
        .unwrap();
    let gy = ctx
        .upload(&random(5, ys.numel() as usize), ys, "gy")
        .unwrap();
    let a = ctx
        .upload(&random(6, xs.numel() as usize), xs, "a")
        .unwrap();
    let gx = poisoned(&ctx, xs, "gx");
    let silu = Some(conv::Through {
        act: Activation::Silu,
        y: &a,
    });
    let err = conv::backward_through(&ctx, &mut rec, &p, &gy, &w, &gx, silu, None).unwrap_err();
    assert!(err.to_string().contains("needs its input"), "{err}");
    // the activation's output must have the gradient's shape
    let wrong = ctx
        .upload(&random(7, ys.numel() as usize), ys, "a")
        .unwrap();
    let bad = Some(conv::Through {
        act: Activation::Relu,
        y: &wrong,
    });
    assert!(conv::backward_through(&ctx, &mut rec, &p, &gy, &w, &gx, bad, None).is_err());
}
