//! Layer normalisation over channels against the f64 reference (the backward
//! one written from the chain rule term by term), f32 and f16 storage.

use crate::common::ref_misc as r;
use crate::common::*;
use advex::gpu::{Recording, Shape};
use advex::ops::layer_norm::{self, Layout};
use advex::Context;

/// Forward and backward of `s` in storage `st`, inputs `offset + scale * u`
/// (an offset far from zero checks that the variance is taken around the mean).
fn check(ctx: &Context, s: Shape, offset: f32, scale: f32, eps: f32, seed: u64, st: St) {
    let n = s.numel() as usize;
    let x: Vec<f32> = st.stored(
        &random(seed, n)
            .iter()
            .map(|v| offset + v * scale)
            .collect::<Vec<_>>(),
    );
    let c = s.c as usize;
    let w = st.stored(
        &random(seed + 1, c)
            .iter()
            .map(|v| 1.0 + v * 0.5)
            .collect::<Vec<_>>(),
    );
    let b = st.random(seed + 2, c);
    let gys = st.random(seed + 3, n);
    let xt = st.upload(ctx, &x, s, "x");
    let wt = st.upload(ctx, &w, Shape::new(c as u32, 1, 1, 1), "w");
    let bt = st.upload(ctx, &b, Shape::new(c as u32, 1, 1, 1), "b");
    let gy = st.upload(ctx, &gys, s, "gy");
    let (x64, w64) = (to_f64(&x), to_f64(&w));
    let want_y = r::layer_norm(&x64, s, &w64, &to_f64(&b), eps as f64);
    let want_gx = r::layer_norm_backward(&x64, &to_f64(&gys), s, &w64, eps as f64);
    for layout in [Layout::ThreadPerRow, Layout::GroupPerRow] {
        let y = st.poisoned(ctx, s, "y");
        let gx = st.poisoned(ctx, s, "gx");
        let mut rec = Recording::new();
        layer_norm::forward_with(ctx, &mut rec, layout, &xt, &wt, &bt, eps, &y).unwrap();
        layer_norm::backward_with(ctx, &mut rec, layout, &xt, &wt, eps, &gy, &gx).unwrap();
        let out = ctx.run_read(&[&rec], &[&y, &gx]).unwrap();
        let what = format!("layer_norm {s} offset {offset} ({st:?}, {layout:?})");
        assert_close(&what, &out[0], &want_y, st.tolerance());
        assert_close(
            &format!("{what} backward"),
            &out[1],
            &want_gx,
            st.tolerance(),
        );
    }
}

#[test]
fn layer_norm_matches_reference() {
    let ctx = ctx();
    // a feature map, odd sizes
    check(&ctx, Shape::new(2, 6, 3, 5), 0.0, 2.0, 1e-6, 1, St::F32);
    // more channels than a workgroup has threads, batch 1
    check(&ctx, Shape::new(1, 300, 2, 1), 0.0, 1.0, 1e-5, 2, St::F32);
    // a mean far from zero
    check(&ctx, Shape::new(3, 17, 2, 2), 40.0, 0.5, 1e-6, 3, St::F32);
    // one channel: every value is its own mean, y = bias, no gradient
    check(&ctx, Shape::new(2, 1, 3, 3), 0.0, 1.0, 1e-5, 4, St::F32);
}

#[test]
fn f16_layer_norm_matches_reference() {
    let ctx = ctx();
    assert!(ctx.supports_f16(), "the adapter lacks SHADER_F16");
    check(&ctx, Shape::new(2, 24, 3, 3), 0.0, 2.0, 1e-6, 11, St::F16);
    check(&ctx, Shape::new(1, 300, 1, 2), 0.0, 1.0, 1e-5, 12, St::F16);
}

/// More rows than the folded grid holds in one dimension (and, one thread
/// per row, more than one workgroup of rows).
#[test]
fn layer_norm_folds_its_grid() {
    let ctx = ctx_with_fold(4);
    check(&ctx, Shape::new(3, 5, 3, 3), 0.0, 1.0, 1e-5, 21, St::F32);
    check(&ctx, Shape::new(3, 5, 20, 23), 0.0, 1.0, 1e-5, 22, St::F32);
}

#[test]
fn layouts_are_picked_by_rows_and_channels() {
    assert_eq!(Layout::pick(12544, 96), Layout::ThreadPerRow);
    assert_eq!(Layout::pick(197, 768), Layout::GroupPerRow);
    assert_eq!(Layout::pick(64 * 197, 768), Layout::ThreadPerRow);
}

#[test]
fn layer_norm_rejects_bad_shapes() {
    let ctx = ctx();
    let x = ctx.tensor(Shape::new(2, 4, 2, 2), "x").unwrap();
    let w = ctx.tensor(Shape::new(3, 1, 1, 1), "w").unwrap();
    let y = ctx.tensor(Shape::new(2, 4, 2, 2), "y").unwrap();
    let mut rec = Recording::new();
    assert!(layer_norm::forward(&ctx, &mut rec, &x, &w, &w, 1e-5, &y).is_err());
    let w4 = ctx.tensor(Shape::new(4, 1, 1, 1), "w4").unwrap();
    let b4 = ctx.tensor(Shape::new(4, 1, 1, 1), "b4").unwrap();
    assert!(layer_norm::forward(&ctx, &mut rec, &x, &w4, &b4, f32::NAN, &y).is_err());
    assert!(layer_norm::forward(&ctx, &mut rec, &x, &w4, &b4, 1e-5, &x).is_err());
    assert!(rec.is_empty());
}
