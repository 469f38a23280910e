use crate::common::ref_misc as r;
use crate::common::*;
use advex::gpu::{Recording, Shape};
use advex::ops::{affine, concat};
use advex::Context;

fn check_concat(ctx: &Context, parts: &[Shape], seed: u64) {
    let data: Vec<Vec<f32>> = parts
        .iter()
        .enumerate()
        .map(|(i, s)| random(seed + i as u64, s.numel() as usize))
        .collect();
    let d64: Vec<Vec<f64>> = data.iter().map(|d| to_f64(d)).collect();
    let refs: Vec<(&[f64], Shape)> = d64
        .iter()
        .map(|d| d.as_slice())
        .zip(parts.iter().copied())
        .collect();
    let (want_y, so) = r::concat(&refs);
    assert_eq!(concat::out_shape(parts).unwrap(), so);
    let gys = random(seed + 100, so.numel() as usize);
    let want_gx = r::concat_backward(&to_f64(&gys), parts);

    let xs: Vec<_> = data
        .iter()
        .zip(parts)
        .map(|(d, s)| ctx.upload(d, *s, "x").unwrap())
        .collect();
    let gxs: Vec<_> = parts
        .iter()
        .map(|s| ctx.tensor(*s, "gx").unwrap())
        .collect();
    let y = ctx.tensor(so, "y").unwrap();
    let gy = ctx.upload(&gys, so, "gy").unwrap();
    let mut rec = Recording::new();
    concat::forward(ctx, &mut rec, &xs.iter().collect::<Vec<_>>(), &y).unwrap();
    concat::backward(ctx, &mut rec, &gy, &gxs.iter().collect::<Vec<_>>()).unwrap();
    let mut reads = vec![&y];
    reads.extend(gxs.iter());
    let out = ctx.run_read(&[&rec], &reads).unwrap();
    assert_close(&format!("concat {so}"), &out[0], &want_y, 1e-6);
    for (i, w) in want_gx.iter().enumerate() {
        assert_close(
            &format!("concat backward {so} part {i}"),
            &out[i + 1],
            w,
            1e-6,
        );
    }
}

#[test]
fn concat_matches_reference() {
    let ctx = ctx();
    for n in [1, 17] {
        let parts = [
            Shape::new(n, 3, 5, 7),
            Shape::new(n, 5, 5, 7),
            Shape::new(n, 1, 5, 7),
        ];
        check_concat(&ctx, &parts, 10 + n as u64);
    }
    // vectors and a single input
    check_concat(&ctx, &[Shape::new(4, 7, 1, 1), Shape::new(4, 2, 1, 1)], 50);
    check_concat(&ctx, &[Shape::new(2, 3, 4, 4)], 60);
}

#[test]
fn concat_rejects_mismatched_inputs() {
    let ctx = ctx();
    let a = ctx.tensor(Shape::new(1, 2, 4, 4), "a").unwrap();
    let b = ctx.tensor(Shape::new(1, 2, 4, 5), "b").unwrap();
    let y = ctx.tensor(Shape::new(1, 4, 4, 4), "y").unwrap();
    let y2 = ctx.tensor(Shape::new(1, 5, 4, 4), "y").unwrap();
    let mut rec = Recording::new();
    assert!(concat::forward(&ctx, &mut rec, &[&a, &b], &y).is_err());
    assert!(concat::forward(&ctx, &mut rec, &[&a, &a], &y2).is_err());
    assert!(concat::forward(&ctx, &mut rec, &[], &y).is_err());
    assert!(rec.is_empty());
}

fn check_affine(ctx: &Context, s: Shape, seed: u64) {
    let x = random(seed, s.numel() as usize);
    let scale: Vec<f32> = random(seed + 1, s.c as usize)
        .iter()
        .map(|v| v * 4.0)
        .collect();
    let shift = random(seed + 2, s.c as usize);
    let gys = random(seed + 3, s.numel() as usize);
    let cs = Shape::new(1, s.c, 1, 1);
    let xt = ctx.upload(&x, s, "x").unwrap();
    let sc = ctx.upload(&scale, cs, "scale").unwrap();
    let sh = ctx.upload(&shift, cs, "shift").unwrap();
    let gy = ctx.upload(&gys, s, "gy").unwrap();
    let y = ctx.tensor(s, "y").unwrap();
    let gx = ctx.tensor(s, "gx").unwrap();
    let mut rec = Recording::new();
    affine::forward(ctx, &mut rec, &xt, &sc, &sh, &y).unwrap();
    affine::backward(ctx, &mut rec, &gy, &sc, &gx).unwrap();
    let out = ctx.run_read(&[&rec], &[&y, &gx]).unwrap();
    let want_y = r::affine(&to_f64(&x), s, &to_f64(&scale), &to_f64(&shift));
    let want_gx = r::affine_backward(&to_f64(&gys), s, &to_f64(&scale));
    assert_close(&format!("affine {s}"), &out[0], &want_y, 1e-4);
    assert_close(&format!("affine backward {s}"), &out[1], &want_gx, 1e-4);
}

#[test]
fn affine_matches_reference() {
    let ctx = ctx();
    check_affine(&ctx, Shape::new(2, 3, 11, 13), 1);
    check_affine(&ctx, Shape::new(17, 5, 3, 3), 2);
    check_affine(&ctx, Shape::new(3, 9, 1, 1), 3);
    // input normalisation: (x - mean) / std as scale 1/std, shift -mean/std
    let mut rec = Recording::new();
    let x = ctx.tensor(Shape::new(1, 3, 2, 2), "x").unwrap();
    let bad = ctx.tensor(Shape::new(1, 2, 1, 1), "s").unwrap();
    let y = ctx.tensor(Shape::new(1, 3, 2, 2), "y").unwrap();
    assert!(affine::forward(&ctx, &mut rec, &x, &bad, &bad, &y).is_err());
    assert!(rec.is_empty());
}

#[test]
fn concat_affine_fold_their_grid() {
    let ctx = ctx_with_fold(4);
    // 1 * 19 * 16 * 16 = 4864 elements: 19 workgroups folded to 4 x 5.
    check_affine(&ctx, Shape::new(1, 19, 16, 16), 70);
    check_concat(
        &ctx,
        &[
            Shape::new(1, 7, 16, 16),
            Shape::new(1, 12, 16, 16),
            Shape::new(1, 1, 16, 16),
        ],
        80,
    );
}
