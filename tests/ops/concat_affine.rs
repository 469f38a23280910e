use crate::common::ref_misc as r;
use crate::common::*;
use advex::gpu::{Recording, Shape};
use advex::ops::{affine, concat};
use advex::Context;

fn check_concat(ctx: &Context, parts: &[Shape], seed: u64) {
    check_concat_as(ctx, parts, seed, St::F32);
}

/// Concat of `parts` and its backward in storage type `st` (copies: exact).
fn check_concat_as(ctx: &Context, parts: &[Shape], seed: u64, st: St) {
    let data: Vec<Vec<f32>> = parts
        .iter()
        .enumerate()
        .map(|(i, s)| st.random(seed + i as u64, s.numel() as usize))
        .collect();
    let d64: Vec<Vec<f64>> = data.iter().map(|d| to_f64(d)).collect();
    let refs: Vec<(&[f64], Shape)> = d64
        .iter()
        .map(|d| d.as_slice())
        .zip(parts.iter().copied())
        .collect();
    let (want_y, so) = r::concat(&refs);
    assert_eq!(concat::out_shape(parts).unwrap(), so);
    let gys = st.random(seed + 100, so.numel() as usize);
    let want_gx = r::concat_backward(&to_f64(&gys), parts);

    let xs: Vec<_> = data
        .iter()
        .zip(parts)
        .map(|(d, s)| st.upload(ctx, d, *s, "x"))
        .collect();
    let gxs: Vec<_> = parts.iter().map(|s| st.poisoned(ctx, *s, "gx")).collect();
    let y = st.poisoned(ctx, so, "y");
    let gy = st.upload(ctx, &gys, so, "gy");
    let mut rec = Recording::new();
    concat::forward(ctx, &mut rec, &xs.iter().collect::<Vec<_>>(), &y).unwrap();
    concat::backward(ctx, &mut rec, &gy, &gxs.iter().collect::<Vec<_>>()).unwrap();
    let mut reads = vec![&y];
    reads.extend(gxs.iter());
    let out = ctx.run_read(&[&rec], &reads).unwrap();
    assert_close(&format!("concat {so} ({st:?})"), &out[0], &want_y, 1e-12);
    for (i, w) in want_gx.iter().enumerate() {
        assert_close(
            &format!("concat backward {so} part {i} ({st:?})"),
            &out[i + 1],
            w,
            1e-12,
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
    check_affine_as(ctx, s, seed, St::F32);
}

/// Per-channel affine forward and backward of `s` in storage type `st`.
fn check_affine_as(ctx: &Context, s: Shape, seed: u64, st: St) {
    let x = st.random(seed, s.numel() as usize);
    let scale: Vec<f32> = st
        .random(seed + 1, s.c as usize)
        .iter()
        .map(|v| v * 4.0)
        .collect();
    let shift = st.random(seed + 2, s.c as usize);
    let gys = st.random(seed + 3, s.numel() as usize);
    let cs = Shape::new(1, s.c, 1, 1);
    let xt = st.upload(ctx, &x, s, "x");
    let sc = st.upload(ctx, &scale, cs, "scale");
    let sh = st.upload(ctx, &shift, cs, "shift");
    let gy = st.upload(ctx, &gys, s, "gy");
    let y = st.poisoned(ctx, s, "y");
    let gx = st.poisoned(ctx, s, "gx");
    let mut rec = Recording::new();
    affine::forward(ctx, &mut rec, &xt, &sc, &sh, &y).unwrap();
    affine::backward(ctx, &mut rec, &gy, &sc, &gx).unwrap();
    let out = ctx.run_read(&[&rec], &[&y, &gx]).unwrap();
    let want_y = r::affine(&to_f64(&x), s, &to_f64(&scale), &to_f64(&shift));
    let want_gx = r::affine_backward(&to_f64(&gys), s, &to_f64(&scale));
    let what = format!("affine {s} ({st:?})");
    assert_close(&what, &out[0], &want_y, st.tolerance());
    assert_close(
        &format!("{what} backward"),
        &out[1],
        &want_gx,
        st.tolerance(),
    );
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

/// Concat (two and three parts) and affine in f16 storage.
#[test]
fn f16_concat_affine_match_reference() {
    let ctx = ctx();
    assert!(ctx.supports_f16(), "the adapter lacks SHADER_F16");
    check_concat_as(
        &ctx,
        &[Shape::new(2, 3, 4, 4), Shape::new(2, 5, 4, 4)],
        40,
        St::F16,
    );
    check_concat_as(
        &ctx,
        &[
            Shape::new(1, 1, 3, 5),
            Shape::new(1, 4, 3, 5),
            Shape::new(1, 2, 3, 5),
        ],
        50,
        St::F16,
    );
    check_affine_as(&ctx, Shape::new(2, 3, 5, 4), 60, St::F16);
    check_affine_as(&ctx, Shape::new(3, 9, 1, 1), 70, St::F16);
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
