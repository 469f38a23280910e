use crate::common::ref_misc as r;
use crate::common::*;
use advex::gpu::{Recording, Shape};
use advex::ops::binary::{self, BinaryOp};
use advex::ops::elementwise;
use advex::Context;

fn check(ctx: &Context, op: BinaryOp, sa: Shape, sb: Shape, seed: u64) {
    check_as(ctx, op, sa, sb, seed, St::F32);
}

/// Forward and both gradients of `op` on `sa` and `sb` in storage type `st`.
fn check_as(ctx: &Context, op: BinaryOp, sa: Shape, sb: Shape, seed: u64, st: St) {
    let mul = op == BinaryOp::Mul;
    let so = binary::broadcast_shape(sa, sb).unwrap();
    let a = st.random(seed, sa.numel() as usize);
    let b = st.random(seed + 1, sb.numel() as usize);
    let gys = st.random(seed + 2, so.numel() as usize);
    let (want_y, rs) = r::binary(mul, &to_f64(&a), sa, &to_f64(&b), sb);
    assert_eq!(rs, so);
    let (want_ga, want_gb) =
        r::binary_backward(mul, &to_f64(&a), sa, &to_f64(&b), sb, &to_f64(&gys));
    let at = st.upload(ctx, &a, sa, "a");
    let bt = st.upload(ctx, &b, sb, "b");
    let gy = st.upload(ctx, &gys, so, "gy");
    let y = st.poisoned(ctx, so, "y");
    let ga = st.poisoned(ctx, sa, "ga");
    let gb = st.poisoned(ctx, sb, "gb");
    let mut rec = Recording::new();
    binary::forward(ctx, &mut rec, op, &at, &bt, &y).unwrap();
    binary::backward(ctx, &mut rec, op, &at, &bt, &gy, Some(&ga), Some(&gb)).unwrap();
    let out = ctx.run_read(&[&rec], &[&y, &ga, &gb]).unwrap();
    let what = format!("{} {sa} {sb} ({st:?})", op.name());
    let tol = st.tolerance();
    assert_close(&format!("{what} forward"), &out[0], &want_y, tol);
    assert_close(&format!("{what} grad a"), &out[1], &want_ga, tol);
    assert_close(&format!("{what} grad b"), &out[2], &want_gb, tol);
}

const CASES: [(Shape, Shape); 7] = [
    // same shape
    (Shape::new(2, 3, 5, 7), Shape::new(2, 3, 5, 7)),
    // squeeze-excite: x[n,c,h,w] * s[n,c,1,1], and the other way round
    (Shape::new(3, 6, 9, 11), Shape::new(3, 6, 1, 1)),
    (Shape::new(3, 6, 1, 1), Shape::new(3, 6, 9, 11)),
    // per-channel, batch-shared operand
    (Shape::new(1, 4, 1, 1), Shape::new(5, 4, 6, 3)),
    // both operands broadcast
    (Shape::new(2, 1, 4, 5), Shape::new(2, 3, 1, 1)),
    // a large reduction (more than one workgroup's worth per element)
    (Shape::new(2, 3, 40, 40), Shape::new(1, 3, 1, 1)),
    (Shape::new(4, 2, 3, 1), Shape::new(4, 2, 3, 5)),
];

#[test]
fn add_matches_reference() {
    let ctx = ctx();
    for (i, (sa, sb)) in CASES.iter().enumerate() {
        check(&ctx, BinaryOp::Add, *sa, *sb, 10 * i as u64);
    }
}

#[test]
fn mul_matches_reference() {
    let ctx = ctx();
    for (i, (sa, sb)) in CASES.iter().enumerate() {
        check(&ctx, BinaryOp::Mul, *sa, *sb, 1000 + 10 * i as u64);
    }
}

/// Every case of both ops in f16 storage.
#[test]
fn f16_binary_matches_reference() {
    let ctx = ctx();
    assert!(ctx.supports_f16(), "the adapter lacks SHADER_F16");
    for (i, (sa, sb)) in CASES.iter().enumerate() {
        check_as(&ctx, BinaryOp::Add, *sa, *sb, 2000 + 10 * i as u64, St::F16);
        check_as(&ctx, BinaryOp::Mul, *sa, *sb, 3000 + 10 * i as u64, St::F16);
    }
}

#[test]
fn binary_backward_single_gradient_and_errors() {
    let ctx = ctx();
    let (sa, sb) = (Shape::new(2, 3, 4, 4), Shape::new(2, 3, 1, 1));
    let a = random(1, sa.numel() as usize);
    let b = random(2, sb.numel() as usize);
    let gys = random(3, sa.numel() as usize);
    let at = ctx.upload(&a, sa, "a").unwrap();
    let bt = ctx.upload(&b, sb, "b").unwrap();
    let gy = ctx.upload(&gys, sa, "gy").unwrap();
    let gb = ctx.tensor(sb, "gb").unwrap();
    let mut rec = Recording::new();
    binary::backward(
        &ctx,
        &mut rec,
        BinaryOp::Mul,
        &at,
        &bt,
        &gy,
        None,
        Some(&gb),
    )
    .unwrap();
    assert_eq!(rec.dispatch_count(), 1);
    let got = ctx.run_read(&[&rec], &[&gb]).unwrap().remove(0);
    let (_, want) = r::binary_backward(true, &to_f64(&a), sa, &to_f64(&b), sb, &to_f64(&gys));
    assert_close("mul grad b only", &got, &want, 1e-4);

    assert!(binary::broadcast_shape(Shape::new(1, 3, 4, 4), Shape::new(1, 2, 4, 4)).is_err());
    assert_eq!(
        binary::broadcast_shape(Shape::new(1, 3, 1, 4), Shape::new(2, 1, 5, 1)).unwrap(),
        Shape::new(2, 3, 5, 4)
    );
    let mut rec = Recording::new();
    let wrong = ctx.tensor(sb, "y").unwrap();
    assert!(binary::forward(&ctx, &mut rec, BinaryOp::Add, &at, &bt, &wrong).is_err());
    assert!(binary::forward(&ctx, &mut rec, BinaryOp::Add, &at, &bt, &at).is_err());
    assert!(rec.is_empty());
}

#[test]
fn binary_kernels_fold_their_grid() {
    let ctx = ctx_with_fold(4);
    // 19 workgroups element-wise; 19 * 2 gradient elements reduced by workgroups.
    check(
        &ctx,
        BinaryOp::Mul,
        Shape::new(2, 19, 16, 8),
        Shape::new(2, 19, 1, 1),
        7,
    );
    check(
        &ctx,
        BinaryOp::Add,
        Shape::new(1, 19, 16, 16),
        Shape::new(1, 19, 16, 16),
        8,
    );
    // element-wise helpers too
    let s = Shape::new(1, 19, 16, 16);
    let x = random(9, s.numel() as usize);
    let d = random(10, s.numel() as usize);
    let xt = ctx.upload(&x, s, "x").unwrap();
    let dt = ctx.upload(&d, s, "d").unwrap();
    let yt = ctx.tensor(s, "y").unwrap();
    let mut rec = Recording::new();
    elementwise::accumulate(&ctx, &mut rec, &xt, &dt).unwrap();
    elementwise::scale(&ctx, &mut rec, &xt, -2.5, &yt).unwrap();
    let out = ctx.run_read(&[&rec], &[&dt, &yt]).unwrap();
    let want: Vec<f64> = x
        .iter()
        .zip(&d)
        .map(|(&a, &b)| a as f64 + b as f64)
        .collect();
    assert_close("fold accumulate", &out[0], &want, 1e-6);
    let want: Vec<f64> = x.iter().map(|&a| -2.5 * a as f64).collect();
    assert_close("fold scale", &out[1], &want, 1e-6);
}

#[test]
fn elementwise_accumulate_copy_scale() {
    let ctx = ctx();
    let s = Shape::new(3, 5, 7, 9);
    let n = s.numel() as usize;
    let x = random(1, n);
    let d = random(2, n);
    let xt = ctx.upload(&x, s, "x").unwrap();
    let dt = ctx.upload(&d, s, "d").unwrap();
    let ct = ctx.tensor(s, "c").unwrap();
    let yt = ctx.tensor(s, "y").unwrap();
    let mut rec = Recording::new();
    elementwise::accumulate(&ctx, &mut rec, &xt, &dt).unwrap();
    elementwise::accumulate(&ctx, &mut rec, &xt, &dt).unwrap();
    elementwise::copy(&ctx, &mut rec, &dt, &ct).unwrap();
    elementwise::scale(&ctx, &mut rec, &ct, 0.5, &yt).unwrap();
    let out = ctx.run_read(&[&rec], &[&dt, &ct, &yt]).unwrap();
    let want: Vec<f64> = x
        .iter()
        .zip(&d)
        .map(|(&a, &b)| 2.0 * a as f64 + b as f64)
        .collect();
    assert_close("accumulate twice", &out[0], &want, 1e-6);
    assert_close("copy", &out[1], &want, 1e-6);
    let half: Vec<f64> = want.iter().map(|v| v * 0.5).collect();
    assert_close("scale", &out[2], &half, 1e-6);
    // aliasing and size mismatches are refused
    let mut rec = Recording::new();
    assert!(elementwise::accumulate(&ctx, &mut rec, &xt, &xt).is_err());
    let small = ctx.tensor(Shape::new(1, 1, 1, 1), "s").unwrap();
    assert!(elementwise::copy(&ctx, &mut rec, &xt, &small).is_err());
    assert!(rec.is_empty());
}

/// A real dispatch past 65535 workgroups: 16.8M elements / 256 = 65625 groups.
#[test]
fn accumulate_past_65535_workgroups() {
    let ctx = ctx();
    let s = Shape::new(1, 1, 65625, 256);
    let n = s.numel() as usize;
    assert!(n / 256 > 65535);
    let src: Vec<f32> = (0..n).map(|i| (i % 1021) as f32).collect();
    let dst: Vec<f32> = (0..n).map(|i| (i % 7) as f32 * 1000.0).collect();
    let st = ctx.upload(&src, s, "src").unwrap();
    let dt = ctx.upload(&dst, s, "dst").unwrap();
    let mut rec = Recording::new();
    elementwise::accumulate(&ctx, &mut rec, &st, &dt).unwrap();
    let got = ctx.run_read(&[&rec], &[&dt]).unwrap().remove(0);
    for (i, &g) in got.iter().enumerate() {
        let want = (i % 1021) as f32 + (i % 7) as f32 * 1000.0;
        assert_eq!(g, want, "element {i}");
    }
}

#[test]
fn transpose_matches_reference() {
    let ctx = ctx();
    let (b, r, c) = (3usize, 5usize, 7usize);
    let v = random(77, b * r * c);
    let s = Shape::new((b * r * c) as u32, 1, 1, 1);
    let src = ctx.upload(&v, s, "src").unwrap();
    let dst = ctx.tensor(s, "dst").unwrap();
    let mut rec = Recording::new();
    elementwise::transpose(&ctx, &mut rec, &src, &dst, b as u32, r as u32, c as u32).unwrap();
    let got = ctx.run_read(&[&rec], &[&dst]).unwrap().remove(0);
    for bi in 0..b {
        for ri in 0..r {
            for ci in 0..c {
                assert_eq!(
                    got[(bi * c + ci) * r + ri],
                    v[(bi * r + ri) * c + ci],
                    "matrix {bi} element ({ri}, {ci})"
                );
            }
        }
    }
    // A shape that does not hold the elements is refused.
    let mut rec = Recording::new();
    assert!(elementwise::transpose(&ctx, &mut rec, &src, &dst, 2, 5, 7).is_err());
}
