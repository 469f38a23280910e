use crate::common::ref_misc as r;
use crate::common::*;
use advex::gpu::{Recording, Shape};
use advex::ops::pool;
use advex::ops::Pool2dParams;
use advex::{Context, KernelStyle};

fn params(kernel: u32, stride: u32, padding: [u32; 4]) -> Pool2dParams {
    Pool2dParams::new([kernel, kernel], [stride, stride], padding)
}

/// Runs max pool forward and backward on the GPU and compares with the reference.
fn check_max(ctx: &Context, what: &str, xs: Shape, p: &Pool2dParams, x: &[f32], seed: u64) {
    check_max_as(ctx, what, xs, p, x, seed, St::F32);
}

/// [`check_max`] in storage type `st` (`x` already holds `st`'s values).
fn check_max_as(
    ctx: &Context,
    what: &str,
    xs: Shape,
    p: &Pool2dParams,
    x: &[f32],
    seed: u64,
    st: St,
) {
    let (want_y, _, ys) = r::max_pool(&to_f64(x), xs, p);
    assert_eq!(p.out_shape(xs).unwrap(), ys);
    let gys = st.random(seed, ys.numel() as usize);
    let want_gx = r::max_pool_backward(&to_f64(x), xs, p, &to_f64(&gys));
    let xt = st.upload(ctx, x, xs, "x");
    let gy = st.upload(ctx, &gys, ys, "gy");
    // Poisoned: an element a pass leaves unwritten fails the check.
    let y = st.poisoned(ctx, ys, "y");
    let gx = st.poisoned(ctx, xs, "gx");
    let mut rec = Recording::new();
    pool::max_forward(ctx, &mut rec, p, &xt, &y).unwrap();
    pool::max_backward(ctx, &mut rec, p, &xt, &gy, &gx).unwrap();
    let out = ctx.run_read(&[&rec], &[&y, &gx]).unwrap();
    let what = format!("{what} ({st:?})");
    assert_close(
        &format!("{what} max forward"),
        &out[0],
        &want_y,
        st.tolerance(),
    );
    assert_close(
        &format!("{what} max backward"),
        &out[1],
        &want_gx,
        st.tolerance(),
    );
}

fn check_avg(ctx: &Context, what: &str, xs: Shape, p: &Pool2dParams, seed: u64) {
    check_avg_as(ctx, what, xs, p, seed, St::F32);
}

fn check_avg_as(ctx: &Context, what: &str, xs: Shape, p: &Pool2dParams, seed: u64, st: St) {
    let x = st.random(seed, xs.numel() as usize);
    let (want_y, ys) = r::avg_pool(&to_f64(&x), xs, p);
    let gys = st.random(seed + 1, ys.numel() as usize);
    let want_gx = r::avg_pool_backward(&to_f64(&gys), xs, p);
    let xt = st.upload(ctx, &x, xs, "x");
    let gy = st.upload(ctx, &gys, ys, "gy");
    let y = st.poisoned(ctx, ys, "y");
    let gx = st.poisoned(ctx, xs, "gx");
    let mut rec = Recording::new();
    pool::avg_forward(ctx, &mut rec, p, &xt, &y).unwrap();
    pool::avg_backward(ctx, &mut rec, p, &gy, &gx).unwrap();
    let out = ctx.run_read(&[&rec], &[&y, &gx]).unwrap();
    let what = format!("{what} ({st:?})");
    assert_close(
        &format!("{what} avg forward"),
        &out[0],
        &want_y,
        st.tolerance(),
    );
    assert_close(
        &format!("{what} avg backward"),
        &out[1],
        &want_gx,
        st.tolerance(),
    );
}

/// Global average pool forward and backward of `xs` in storage type `st`.
fn check_global_as(ctx: &Context, xs: Shape, seed: u64, st: St) {
    let ys = Shape::new(xs.n, xs.c, 1, 1);
    let x = st.random(seed, xs.numel() as usize);
    let gys = st.random(seed + 100, ys.numel() as usize);
    let xt = st.upload(ctx, &x, xs, "x");
    let gy = st.upload(ctx, &gys, ys, "gy");
    let y = st.poisoned(ctx, ys, "y");
    let gx = st.poisoned(ctx, xs, "gx");
    let mut rec = Recording::new();
    pool::global_avg_forward(ctx, &mut rec, &xt, &y).unwrap();
    pool::global_avg_backward(ctx, &mut rec, &gy, &gx).unwrap();
    let out = ctx.run_read(&[&rec], &[&y, &gx]).unwrap();
    let what = format!("global avg {xs} ({}, {st:?})", ctx.kernel_style().name());
    assert_close(
        &what,
        &out[0],
        &r::global_avg(&to_f64(&x), xs),
        st.tolerance(),
    );
    assert_close(
        &format!("{what} backward"),
        &out[1],
        &r::global_avg_backward(&to_f64(&gys), xs),
        st.tolerance(),
    );
}

#[test]
fn max_pool_matches_reference() {
    let ctx = ctx();
    let mut ceil = params(3, 2, [0; 4]);
    ceil.ceil_mode = true;
    let mut ceil_pad = params(3, 2, [1; 4]);
    ceil_pad.ceil_mode = true;
    let mut dil = params(3, 1, [2; 4]);
    dil.dilation = [2, 2];
    let mut ceil2 = params(2, 2, [0; 4]);
    ceil2.ceil_mode = true;
    let mut dil_ceil = Pool2dParams::new([2, 3], [2, 2], [0, 1, 0, 1]);
    dil_ceil.dilation = [2, 1];
    dil_ceil.ceil_mode = true;
    let cases: Vec<(&str, Shape, Pool2dParams)> = vec![
        ("3x3 s2 p1", Shape::new(2, 3, 11, 12), params(3, 2, [1; 4])),
        ("2x2 s2", Shape::new(2, 3, 8, 10), params(2, 2, [0; 4])),
        // SqueezeNet's 3x3 s2 ceil_mode on odd sizes, and sizes where ceil adds a window
        ("ceil odd", Shape::new(1, 4, 13, 15), ceil),
        ("ceil even", Shape::new(2, 2, 10, 12), ceil),
        ("ceil pad", Shape::new(1, 3, 9, 10), ceil_pad),
        // TensorFlow SAME on even sizes: padding only at the bottom/right
        (
            "asymmetric",
            Shape::new(1, 3, 8, 10),
            params(3, 2, [0, 0, 1, 1]),
        ),
        (
            "asymmetric 2",
            Shape::new(1, 2, 9, 7),
            Pool2dParams::new([3, 2], [1, 2], [1, 0, 2, 1]),
        ),
        ("dilation 2", Shape::new(1, 3, 9, 9), dil),
        ("dilation ceil", Shape::new(1, 2, 11, 10), dil_ceil),
        // Disjoint windows (one thread per window): ragged edges no window
        // covers, gaps between windows, padding, ceil mode, rectangular windows.
        ("2x2 s2 odd", Shape::new(2, 3, 7, 9), params(2, 2, [0; 4])),
        ("2x2 s3 gaps", Shape::new(1, 2, 8, 10), params(2, 3, [0; 4])),
        ("3x3 s3 p1", Shape::new(1, 3, 10, 11), params(3, 3, [1; 4])),
        ("2x2 s2 ceil", Shape::new(1, 2, 7, 9), ceil2),
        (
            "2x3 s2x3",
            Shape::new(2, 2, 8, 9),
            Pool2dParams::new([2, 3], [2, 3], [0; 4]),
        ),
    ];
    // Known output sizes (PyTorch): guards the shape rule the reference relies on.
    assert_eq!(ceil.out_shape(Shape::new(1, 1, 13, 15)).unwrap().h, 6);
    assert_eq!(ceil.out_shape(Shape::new(1, 1, 10, 12)).unwrap().h, 5);
    assert_eq!(ceil.out_shape(Shape::new(1, 1, 10, 12)).unwrap().w, 6);
    // What select_max_backward picks: the window scatter exactly where windows
    // are disjoint (stride >= kernel, no dilation).
    let windows = [
        false, true, false, false, false, false, false, false, false, true, true, true, true, true,
    ];
    for ((what, _, p), want) in cases.iter().zip(windows) {
        let want = if want {
            pool::PoolKernel::MaxBackwardWindows
        } else {
            pool::PoolKernel::MaxBackwardGather
        };
        assert_eq!(pool::select_max_backward(p), want, "{what}");
    }
    for (i, (what, xs, p)) in cases.iter().enumerate() {
        let x = random(10 + i as u64, xs.numel() as usize);
        check_max(&ctx, what, *xs, p, &x, 100 + i as u64);
    }
}

#[test]
fn max_pool_ties_follow_first_maximum() {
    let ctx = ctx();
    // Inputs quantised to three values: many ties in every window.
    let cases = [
        (Shape::new(2, 3, 9, 9), params(3, 2, [1; 4])),
        (Shape::new(1, 2, 8, 8), params(2, 2, [0; 4])),
        (Shape::new(1, 2, 7, 7), params(3, 1, [1; 4])),
    ];
    for (i, (xs, p)) in cases.iter().enumerate() {
        let x: Vec<f32> = random(20 + i as u64, xs.numel() as usize)
            .iter()
            .map(|v| (v * 1.5).round())
            .collect();
        check_max(&ctx, &format!("ties {i}"), *xs, p, &x, 200 + i as u64);
    }
    // All equal: the gradient of each 2x2 window goes to its top-left element.
    let xs = Shape::new(1, 1, 4, 4);
    let p = params(2, 2, [0; 4]);
    let x = ctx.upload(&[0.5; 16], xs, "x").unwrap();
    let gy = ctx
        .upload(&[1.0, 2.0, 3.0, 4.0], Shape::new(1, 1, 2, 2), "gy")
        .unwrap();
    let gx = ctx.tensor(xs, "gx").unwrap();
    let mut rec = Recording::new();
    pool::max_backward(&ctx, &mut rec, &p, &x, &gy, &gx).unwrap();
    let got = ctx.run_read(&[&rec], &[&gx]).unwrap().remove(0);
    #[rustfmt::skip]
    let want = [1.0, 0.0, 2.0, 0.0,
                0.0, 0.0, 0.0, 0.0,
                3.0, 0.0, 4.0, 0.0,
                0.0, 0.0, 0.0, 0.0];
    assert_eq!(got, want);
    // Negative inputs with padding: padding never wins, the first input element does.
    let p = params(3, 2, [1; 4]);
    let x = ctx.upload(&[-5.0; 16], xs, "x").unwrap();
    let y = ctx.tensor(Shape::new(1, 1, 2, 2), "y").unwrap();
    let gx = ctx.tensor(xs, "gx").unwrap();
    let mut rec = Recording::new();
    pool::max_forward(&ctx, &mut rec, &p, &x, &y).unwrap();
    pool::max_backward(&ctx, &mut rec, &p, &x, &gy, &gx).unwrap();
    let out = ctx.run_read(&[&rec], &[&y, &gx]).unwrap();
    assert_eq!(out[0], [-5.0; 4]);
    #[rustfmt::skip]
    let want = [1.0, 2.0, 0.0, 0.0,
                3.0, 4.0, 0.0, 0.0,
                0.0, 0.0, 0.0, 0.0,
                0.0, 0.0, 0.0, 0.0];
    assert_eq!(out[1], want);
}

#[test]
fn avg_pool_matches_reference() {
    let ctx = ctx();
    let mut n = 0;
    for include in [true, false] {
        let mut ceil = params(3, 2, [1; 4]);
        ceil.ceil_mode = true;
        let mut ceil2 = params(3, 2, [0; 4]);
        ceil2.ceil_mode = true;
        let mut ceil_asym = Pool2dParams::new([3, 2], [2, 3], [1, 0, 0, 1]);
        ceil_asym.ceil_mode = true;
        let cases = [
            ("3x3 s2 p1", Shape::new(2, 3, 9, 10), params(3, 2, [1; 4])),
            ("2x2 s2", Shape::new(1, 3, 8, 6), params(2, 2, [0; 4])),
            ("3x3 s1 p1", Shape::new(1, 2, 7, 5), params(3, 1, [1; 4])),
            ("ceil pad", Shape::new(2, 2, 10, 12), ceil),
            ("ceil", Shape::new(1, 2, 10, 9), ceil2),
            ("ceil asym", Shape::new(1, 2, 8, 11), ceil_asym),
            (
                "asymmetric",
                Shape::new(1, 3, 8, 10),
                params(3, 2, [0, 0, 1, 1]),
            ),
        ];
        for (what, xs, mut p) in cases {
            p.count_include_pad = include;
            n += 1;
            check_avg(
                &ctx,
                &format!("{what} include_pad={include}"),
                xs,
                &p,
                300 + n,
            );
        }
    }
    // A ceil_mode window running past the padded input, with count_include_pad:
    // PyTorch divides by the window clipped to input + padding (not k * k).
    let xs = Shape::new(1, 1, 4, 4);
    let mut p = params(3, 2, [1; 4]);
    p.ceil_mode = true;
    assert_eq!(p.out_shape(xs).unwrap(), Shape::new(1, 1, 3, 3));
    let x = ctx.upload(&[1.0; 16], xs, "x").unwrap();
    let y = ctx.tensor(Shape::new(1, 1, 3, 3), "y").unwrap();
    let mut rec = Recording::new();
    pool::avg_forward(&ctx, &mut rec, &p, &x, &y).unwrap();
    let got = ctx.run_read(&[&rec], &[&y]).unwrap().remove(0);
    // window rows: [-1, 2) 2 of 3 input rows; [1, 4) 3; [3, 5) 1 of 2 (clipped at 4 + 1).
    let rows = [(2.0, 3.0), (3.0, 3.0), (1.0, 2.0)];
    let mut want = Vec::new();
    for (ia, da) in rows {
        for (ib, db) in rows {
            want.push(ia * ib / (da * db));
        }
    }
    assert_close("avg ceil_mode divisor", &got, &want, 1e-6);
}

#[test]
fn global_avg_pool_matches_reference() {
    // one workgroup per plane (tiled, GPUs) and one thread per plane (direct, CPUs)
    assert_eq!(
        pool::select_global_avg(KernelStyle::Tiled),
        pool::PoolKernel::GlobalAvgPerWorkgroup
    );
    assert_eq!(
        pool::select_global_avg(KernelStyle::Direct),
        pool::PoolKernel::GlobalAvgPerThread
    );
    for ctx in [
        ctx_style(KernelStyle::Tiled),
        ctx_style(KernelStyle::Direct),
    ] {
        for (i, xs) in [
            Shape::new(1, 3, 112, 112),
            Shape::new(17, 5, 7, 7),
            Shape::new(2, 4, 1, 1),
            Shape::new(3, 2, 23, 17),
        ]
        .into_iter()
        .enumerate()
        {
            check_global_as(&ctx, xs, 400 + i as u64, St::F32);
        }
    }
}

/// Max, average and global average pooling in f16 storage on both kernel
/// families: the cases of the f32 tests with an odd, padded, strided window.
#[test]
fn f16_pooling_matches_reference() {
    for style in [KernelStyle::Tiled, KernelStyle::Direct] {
        let ctx = ctx_style(style);
        assert!(
            ctx.supports_f16(),
            "adapter {} lacks SHADER_F16",
            ctx.summary.name
        );
        let xs = Shape::new(2, 3, 9, 8);
        let p = Pool2dParams::new([3, 3], [2, 2], [1, 1, 1, 1]);
        let x = St::F16.random(1, xs.numel() as usize);
        check_max_as(&ctx, "3x3 s2 pad 1", xs, &p, &x, 2, St::F16);
        check_avg_as(&ctx, "3x3 s2 pad 1", xs, &p, 3, St::F16);
        check_global_as(&ctx, xs, 4, St::F16);
        check_global_as(&ctx, Shape::new(3, 5, 7, 7), 5, St::F16);
    }
}

#[test]
fn pool_kernels_fold_their_grid() {
    let ctx = ctx_with_fold(4);
    // 1 * 19 * 16 * 16 = 4864 elements: 19 workgroups folded to 4 x 5.
    let xs = Shape::new(1, 19, 16, 16);
    let x = random(600, xs.numel() as usize);
    check_max(&ctx, "fold", xs, &params(3, 1, [1; 4]), &x, 601);
    check_avg(&ctx, "fold", xs, &params(3, 1, [1; 4]), 602);
    // 19 planes: 19 workgroups in the global reduction.
    let gys = random(603, 19);
    let ys = Shape::new(1, 19, 1, 1);
    let xt = ctx.upload(&x, xs, "x").unwrap();
    let gy = ctx.upload(&gys, ys, "gy").unwrap();
    let y = ctx.tensor(ys, "y").unwrap();
    let gx = ctx.tensor(xs, "gx").unwrap();
    let mut rec = Recording::new();
    pool::global_avg_forward(&ctx, &mut rec, &xt, &y).unwrap();
    pool::global_avg_backward(&ctx, &mut rec, &gy, &gx).unwrap();
    let out = ctx.run_read(&[&rec], &[&y, &gx]).unwrap();
    assert_close(
        "fold global avg",
        &out[0],
        &r::global_avg(&to_f64(&x), xs),
        1e-4,
    );
    assert_close(
        "fold global avg backward",
        &out[1],
        &r::global_avg_backward(&to_f64(&gys), xs),
        1e-4,
    );
}

#[test]
fn pool_rejects_bad_shapes() {
    let ctx = ctx();
    let x = ctx.tensor(Shape::new(1, 2, 8, 8), "x").unwrap();
    let y = ctx.tensor(Shape::new(1, 2, 3, 3), "y").unwrap();
    let mut rec = Recording::new();
    let p = params(2, 2, [0; 4]);
    assert!(pool::max_forward(&ctx, &mut rec, &p, &x, &y).is_err());
    let mut d = p;
    d.dilation = [2, 2];
    let y4 = ctx.tensor(Shape::new(1, 2, 3, 3), "y").unwrap();
    assert!(pool::avg_forward(&ctx, &mut rec, &d, &x, &y4).is_err());
    assert!(pool::global_avg_forward(&ctx, &mut rec, &x, &y).is_err());
    assert!(rec.is_empty());
}
