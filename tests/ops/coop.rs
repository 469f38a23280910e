//! `--precision mixed`: the cooperative-matrix GEMM (`shaders/conv/coop.wgsl`,
//! tensor cores, f16 operands and f32 accumulation) against the f64
//! reference, within a bound derived from f16 rounding, on every layer shape
//! it takes. It runs wherever the adapter offers 16x16x16 f16 matrices with
//! f32 accumulators (a GPU: tools/device_check.sh runs it there); elsewhere
//! the test says why it checked only the selection and passes.

use crate::common::ref_conv::RefConv;
use crate::common::*;
use advex::gpu::{ContextOptions, Recording, Shape};
use advex::ops::conv::{self, ConvKernel, Pass};
use advex::ops::{Activation, Conv2dParams};
use advex::Context;

struct Layer {
    name: &'static str,
    x: [u32; 4],
    oc: u32,
    k: [u32; 2],
    stride: [u32; 2],
    padding: [u32; 4],
    groups: u32,
}

fn layers() -> Vec<Layer> {
    let l = |name, x, oc, k: [u32; 2], stride, pad: u32, groups| Layer {
        name,
        x,
        oc,
        k,
        stride,
        padding: [pad; 4],
        groups,
    };
    vec![
        // 1x1 expand / project (K and N not multiples of 16, M past a tile)
        l("1x1", [2, 40, 9, 9], 72, [1, 1], [1, 1], 0, 1),
        // dense 3x3, padding, odd sizes, batch 1
        l("3x3 s1", [1, 24, 11, 7], 48, [3, 3], [1, 1], 1, 1),
        // strided forward (its backward stays on gemm.wgsl's phases)
        l("3x3 s2", [2, 32, 13, 13], 64, [3, 3], [2, 2], 1, 1),
        // grouped
        l("grouped", [2, 64, 6, 6], 64, [3, 3], [1, 1], 1, 2),
        // a classifier: linear 320 -> 1000 as a 1x1 on a 1x1 image
        l("linear", [3, 320, 1, 1], 1000, [1, 1], [1, 1], 0, 1),
        // deep reduction: K = 96 * 9 = 864 (27 slices)
        l("deep K", [1, 96, 8, 8], 32, [3, 3], [1, 1], 1, 1),
    ]
}

fn mixed_ctx() -> Context {
    Context::new(ContextOptions {
        mixed: true,
        ..Default::default()
    })
    .expect("a GPU adapter")
}

/// Selection: with cooperative matrices, dense layers 16 wide and deep go to
/// them (strided backward passes and narrow layers do not); without, nothing
/// changes.
#[test]
fn mixed_selects_the_cooperative_gemm_only_where_it_runs() {
    let ctx = mixed_ctx();
    let plain = crate::common::ctx();
    for l in layers() {
        let p = Conv2dParams {
            stride: l.stride,
            padding: l.padding,
            dilation: [1, 1],
            groups: l.groups,
        };
        let xs = Shape::new(l.x[0], l.x[1], l.x[2], l.x[3]);
        let ws = Shape::new(l.oc, l.x[1] / l.groups, l.k[0], l.k[1]);
        for pass in [Pass::Forward, Pass::Backward] {
            let got = conv::kernel_for(&ctx, &p, xs, ws, pass).unwrap();
            let strict = conv::kernel_for(&plain, &p, xs, ws, pass).unwrap();
            let want_coop = ctx.coop() && !(pass == Pass::Backward && l.stride != [1, 1]);
            if want_coop {
                assert_eq!(got, ConvKernel::Coop, "{} {pass:?}", l.name);
            } else {
                assert_eq!(
                    got, strict,
                    "{} {pass:?}: unchanged without tensor cores",
                    l.name
                );
            }
        }
    }
    // narrow: a stem's backward (3 input channels) stays scalar
    let p = Conv2dParams {
        stride: [1, 1],
        padding: [1; 4],
        dilation: [1, 1],
        groups: 1,
    };
    let k = conv::kernel_for(
        &ctx,
        &p,
        Shape::new(1, 3, 8, 8),
        Shape::new(32, 3, 3, 3),
        Pass::Backward,
    )
    .unwrap();
    assert_ne!(k, ConvKernel::Coop);
    if !ctx.coop() {
        eprintln!(
            "cooperative GEMM not run: {}",
            ctx.coop_note().unwrap_or("no note")
        );
    }
}

/// Forward (bias, relu6) and backward against f64, each output within
/// 1.5e-3 of the sum of |products| (f16 operands round by at most 2^-11
/// each, so a product by about 2^-10; f32 accumulation adds far less) plus
/// 1e-5 (f16 subnormals).
#[test]
fn cooperative_gemm_error_is_bounded() {
    let ctx = mixed_ctx();
    if !ctx.coop() {
        eprintln!(
            "skipped: {} (the bound is checked where the adapter has cooperative matrices)",
            ctx.coop_note().unwrap_or("no cooperative matrices")
        );
        return;
    }
    for (i, l) in layers().iter().enumerate() {
        let seed = 700 + 10 * i as u64;
        let p = Conv2dParams {
            stride: l.stride,
            padding: l.padding,
            dilation: [1, 1],
            groups: l.groups,
        };
        let xs = Shape::new(l.x[0], l.x[1], l.x[2], l.x[3]);
        let ws = Shape::new(l.oc, l.x[1] / l.groups, l.k[0], l.k[1]);
        let ys = p.out_shape(xs, ws.dims()).unwrap();
        let r = RefConv {
            x: xs.dims().map(|v| v as usize),
            w: ws.dims().map(|v| v as usize),
            stride: l.stride.map(|v| v as usize),
            padding: l.padding.map(|v| v as usize),
            dilation: [1, 1],
            groups: l.groups as usize,
        };
        let xv = random(seed, xs.numel() as usize);
        let wv = random(seed + 1, ws.numel() as usize);
        let bv = random(seed + 2, l.oc as usize);
        let gyv = random(seed + 3, ys.numel() as usize);
        let up = |v: &[f32], s: Shape, name: &str| St::F32.upload(&ctx, v, s, name);
        let (x, w, b, gy) = (
            up(&xv, xs, "x"),
            up(&wv, ws, "w"),
            up(&bv, Shape::new(1, l.oc, 1, 1), "b"),
            up(&gyv, ys, "gy"),
        );
        let y = St::F32.poisoned(&ctx, ys, "y");
        let gx = St::F32.poisoned(&ctx, xs, "gx");
        let mut rec = Recording::new();
        conv::forward_act(&ctx, &mut rec, &p, &x, &w, Some(&b), Activation::Relu6, &y).unwrap();
        conv::backward(&ctx, &mut rec, &p, &gy, &w, &gx).unwrap();
        let out = ctx.run_read(&[&rec], &[&y, &gx]).unwrap();

        let abs = |v: &[f32]| v.iter().map(|x| x.abs() as f64).collect::<Vec<_>>();
        let pre = r.forward(&to_f64(&xv), &to_f64(&wv), Some(&to_f64(&bv)));
        let want_y: Vec<f64> = pre.iter().map(|v| v.clamp(0.0, 6.0)).collect();
        let mag_y = r.forward(&abs(&xv), &abs(&wv), Some(&abs(&bv)));
        let want_gx = r.backward(&to_f64(&gyv), &to_f64(&wv));
        let mag_gx = r.backward(&abs(&gyv), &abs(&wv));
        for (what, got, want, mag) in [
            ("forward", &out[0], &want_y, &mag_y),
            ("backward", &out[1], &want_gx, &mag_gx),
        ] {
            let mut worst = (0.0f64, 0usize);
            for (j, ((&g, &t), &m)) in got.iter().zip(want).zip(mag).enumerate() {
                let excess = (g as f64 - t).abs() - (1.5e-3 * m + 1e-5);
                if excess.is_nan() {
                    worst = (f64::INFINITY, j);
                    break;
                }
                if excess > worst.0 {
                    worst = (excess, j);
                }
            }
            let j = worst.1;
            assert!(
                worst.0 <= 0.0,
                "{} {what}: index {j}: got {}, want {} (bound {})",
                l.name,
                got[j],
                want[j],
                1.5e-3 * mag[j] + 1e-5
            );
        }
    }
}
