use crate::common::ref_misc as r;
use crate::common::*;
use advex::gpu::{Recording, Shape};
use advex::ops::{loss, softmax};
use advex::Context;
use rand::Rng;

fn check_softmax(ctx: &Context, s: Shape, scale: f32, seed: u64) {
    check_softmax_as(ctx, s, scale, seed, St::F32);
}

/// Softmax forward and backward of `s` in storage type `st`, logits scaled by
/// `scale` (a power of two keeps f16 inputs exact).
fn check_softmax_as(ctx: &Context, s: Shape, scale: f32, seed: u64, st: St) {
    let x: Vec<f32> = st
        .random(seed, s.numel() as usize)
        .iter()
        .map(|v| v * scale)
        .collect();
    let x = st.stored(&x);
    let gys = st.random(seed + 1, s.numel() as usize);
    let xt = st.upload(ctx, &x, s, "x");
    let gy = st.upload(ctx, &gys, s, "gy");
    let y = st.poisoned(ctx, s, "y");
    let gx = st.poisoned(ctx, s, "gx");
    let mut rec = Recording::new();
    softmax::forward(ctx, &mut rec, &xt, &y).unwrap();
    softmax::backward(ctx, &mut rec, &y, &gy, &gx).unwrap();
    let out = ctx.run_read(&[&rec], &[&y, &gx]).unwrap();
    let want_y = r::softmax(&to_f64(&x), s);
    // The backward op is a function of (y, gy): reference it on the y it was given
    // (with +-80 logits f32 rounding of y ~ 1 dominates the cancellation in gy - dot;
    // in f16 the stored y is rounded as well).
    let want_gx = r::softmax_backward(&to_f64(&out[0]), &to_f64(&gys), s);
    let what = format!("softmax {s} ({st:?})");
    assert_close(&what, &out[0], &want_y, st.tolerance());
    assert_close(
        &format!("{what} backward"),
        &out[1],
        &want_gx,
        st.tolerance(),
    );
}

#[test]
fn softmax_matches_reference() {
    let ctx = ctx();
    check_softmax(&ctx, Shape::new(5, 10, 1, 1), 3.0, 1);
    check_softmax(&ctx, Shape::new(17, 1000, 1, 1), 5.0, 2);
    // large logits stay finite
    check_softmax(&ctx, Shape::new(4, 1000, 1, 1), 80.0, 3);
    check_softmax(&ctx, Shape::new(3, 10, 1, 1), 80.0, 4);
    // over channels of a feature map
    check_softmax(&ctx, Shape::new(2, 6, 3, 5), 2.0, 5);
}

struct Loss {
    loss: Vec<f32>,
    grad: Vec<f32>,
    argmax: Vec<f32>,
}

fn run_loss(ctx: &Context, z: &[f32], labels: &[u32], k: u32, sign: f32) -> Loss {
    run_loss_as(ctx, z, labels, k, sign, St::F32)
}

/// The loss, its gradient (storage type `st`) and the read-out of logits `z`.
fn run_loss_as(ctx: &Context, z: &[f32], labels: &[u32], k: u32, sign: f32, st: St) -> Loss {
    let n = labels.len() as u32;
    let s = Shape::new(n, k, 1, 1);
    let zt = st.upload(ctx, z, s, "logits");
    let lt = ctx.tensor(Shape::new(n, 1, 1, 1), "labels").unwrap();
    ctx.write_bytes(&lt, bytemuck::cast_slice(labels));
    let lo = ctx.tensor(Shape::new(n, 1, 1, 1), "loss").unwrap();
    let gr = st.poisoned(ctx, s, "grad");
    let am = ctx
        .tensor(Shape::new(n, loss::ARGMAX_PROB_WIDTH, 1, 1), "argmax")
        .unwrap();
    let mut rec = Recording::new();
    loss::softmax_cross_entropy(ctx, &mut rec, &zt, &lt, sign, &lo, &gr).unwrap();
    loss::argmax_prob(ctx, &mut rec, &zt, &lt, &am).unwrap();
    let mut out = ctx.run_read(&[&rec], &[&lo, &gr, &am]).unwrap();
    Loss {
        argmax: out.pop().unwrap(),
        grad: out.pop().unwrap(),
        loss: out.pop().unwrap(),
    }
}

fn check_loss(ctx: &Context, n: usize, k: usize, scale: f32, sign: f32, seed: u64) {
    check_loss_as(ctx, n, k, scale, sign, seed, St::F32);
}

/// Cross-entropy, its gradient and the read-out in storage type `st` (the loss
/// and the read-out are f32 either way, computed from the stored logits).
fn check_loss_as(ctx: &Context, n: usize, k: usize, scale: f32, sign: f32, seed: u64, st: St) {
    let z: Vec<f32> = st.random(seed, n * k).iter().map(|v| v * scale).collect();
    let z = st.stored(&z);
    let mut rg = rng(seed + 1);
    let labels: Vec<u32> = (0..n).map(|_| rg.random_range(0..k as u32)).collect();
    let got = run_loss_as(ctx, &z, &labels, k as u32, sign, st);
    let (want_loss, want_grad) = r::cross_entropy(&to_f64(&z), n, k, &labels, sign as f64);
    let what = format!("n {n} k {k} scale {scale} sign {sign} ({st:?})");
    assert_close(&format!("loss {what}"), &got.loss, &want_loss, 1e-4);
    assert_close(
        &format!("loss grad {what}"),
        &got.grad,
        &want_grad,
        st.tolerance(),
    );
    check_argmax(&got.argmax, &z, n, k, &labels, &what);
}

fn check_argmax(got: &[f32], z: &[f32], n: usize, k: usize, labels: &[u32], what: &str) {
    let want = r::argmax_prob(&to_f64(z), n, k, labels);
    let pred: Vec<f64> = want.iter().map(|w| w.0 as f64).collect();
    let got_pred: Vec<f32> = got.chunks(4).map(|c| c[0]).collect();
    assert_eq!(
        got_pred.iter().map(|&v| v as f64).collect::<Vec<_>>(),
        pred,
        "argmax {what}"
    );
    let pp: Vec<f64> = want.iter().map(|w| w.1).collect();
    let lp: Vec<f64> = want.iter().map(|w| w.2).collect();
    let got_pp: Vec<f32> = got.chunks(4).map(|c| c[1]).collect();
    let got_lp: Vec<f32> = got.chunks(4).map(|c| c[2]).collect();
    assert_close(&format!("pred prob {what}"), &got_pp, &pp, 1e-4);
    // label probabilities span many decades: compare each relative to itself
    for (i, (&g, &w)) in got_lp.iter().zip(&lp).enumerate() {
        assert_close(&format!("label prob {what} row {i}"), &[g], &[w], 1e-4);
    }
    // and their logarithms (minus the loss), finite where the probability underflows
    let got_logp: Vec<f32> = got.chunks(4).map(|c| c[3]).collect();
    let want_logp: Vec<f64> = (0..n)
        .map(|r| {
            let row = &z[r * k..(r + 1) * k];
            let m = row.iter().fold(f64::MIN, |a, &b| a.max(b as f64));
            let s: f64 = row.iter().map(|&v| (v as f64 - m).exp()).sum();
            row[labels[r] as usize] as f64 - m - s.ln()
        })
        .collect();
    assert_close(
        &format!("label log-prob {what}"),
        &got_logp,
        &want_logp,
        1e-4,
    );
}

#[test]
fn cross_entropy_and_argmax_match_reference() {
    let ctx = ctx();
    check_loss(&ctx, 5, 10, 3.0, 1.0, 1);
    check_loss(&ctx, 17, 1000, 5.0, 1.0, 2);
    check_loss(&ctx, 3, 10, 80.0, 1.0, 3);
    check_loss(&ctx, 4, 1000, 80.0, -1.0, 4);
    check_loss(&ctx, 2, 10, 1.0, -1.0, 5);
}

/// Softmax and the loss in f16 storage (logits rounded to f16; the loss and
/// the read-out stay f32).
#[test]
fn f16_softmax_and_loss_match_reference() {
    let ctx = ctx();
    assert!(ctx.supports_f16(), "the adapter lacks SHADER_F16");
    check_softmax_as(&ctx, Shape::new(3, 37, 1, 1), 8.0, 11, St::F16);
    check_softmax_as(&ctx, Shape::new(2, 6, 3, 5), 2.0, 12, St::F16);
    check_loss_as(&ctx, 3, 37, 8.0, -1.0, 13, St::F16);
    check_loss_as(&ctx, 5, 1000, 4.0, 1.0, 14, St::F16);
}

#[test]
fn large_logits_are_stable() {
    let ctx = ctx();
    // +-80 logits: exp(80) overflows f32 without the max subtraction.
    let z = [80.0, -80.0, 79.0, 0.0, -80.0, 80.0, 80.0, 10.0];
    let got = run_loss(&ctx, &z, &[1, 3], 4, 1.0);
    let (want_loss, want_grad) = r::cross_entropy(&to_f64(&z), 2, 4, &[1, 3], 1.0);
    assert!(got.loss.iter().chain(&got.grad).all(|v| v.is_finite()));
    assert_close("loss +-80", &got.loss, &want_loss, 1e-4);
    assert_close("grad +-80", &got.grad, &want_grad, 1e-4);
    // a winning label: the loss is log(sum exp(z - m)), small and exact
    let got = run_loss(&ctx, &z, &[0, 1], 4, -1.0);
    let (want_loss, want_grad) = r::cross_entropy(&to_f64(&z), 2, 4, &[0, 1], -1.0);
    assert_close("loss winning label", &got.loss, &want_loss, 1e-4);
    assert_close("grad sign -1", &got.grad, &want_grad, 1e-4);
}

#[test]
fn argmax_takes_first_maximum() {
    let ctx = ctx();
    // quantised logits: ties everywhere, k across a workgroup's width
    for (n, k, seed) in [(6usize, 10usize, 7u64), (5, 1000, 8), (3, 300, 9)] {
        let z: Vec<f32> = random(seed, n * k)
            .iter()
            .map(|v| (v * 2.0).round())
            .collect();
        let labels: Vec<u32> = (0..n as u32).map(|i| (i * 7) % k as u32).collect();
        let got = run_loss(&ctx, &z, &labels, k as u32, 1.0);
        check_argmax(&got.argmax, &z, n, k, &labels, &format!("ties n {n} k {k}"));
    }
    // all equal: index 0; max only at the end
    let k = 700;
    let mut z = vec![1.5f32; 2 * k];
    z[k + k - 1] = 2.0;
    z[k + 3] = 2.0;
    let got = run_loss(&ctx, &z, &[5, 5], k as u32, 1.0);
    let w = loss::ARGMAX_PROB_WIDTH as usize;
    assert_eq!(got.argmax[0], 0.0);
    assert_eq!(got.argmax[w], 3.0);
    // out-of-range label: NaN label probability, log-probability and loss
    let got = run_loss(&ctx, &z[..k], &[u32::MAX], k as u32, 1.0);
    assert!(got.argmax[2].is_nan() && got.argmax[3].is_nan());
    assert!(got.loss[0].is_nan());
}

#[test]
fn softmax_loss_fold_their_grid() {
    let ctx = ctx_with_fold(4);
    check_softmax(&ctx, Shape::new(19, 10, 1, 1), 3.0, 20);
    check_loss(&ctx, 19, 10, 3.0, 1.0, 21);
}

#[test]
fn loss_rejects_bad_shapes() {
    let ctx = ctx();
    let z = ctx.tensor(Shape::new(2, 10, 1, 1), "z").unwrap();
    let l = ctx.tensor(Shape::new(3, 1, 1, 1), "l").unwrap();
    let lo = ctx.tensor(Shape::new(2, 1, 1, 1), "lo").unwrap();
    let g = ctx.tensor(Shape::new(2, 10, 1, 1), "g").unwrap();
    let mut rec = Recording::new();
    assert!(loss::softmax_cross_entropy(&ctx, &mut rec, &z, &l, 1.0, &lo, &g).is_err());
    let fm = ctx.tensor(Shape::new(2, 10, 2, 2), "fm").unwrap();
    let l2 = ctx.tensor(Shape::new(2, 1, 1, 1), "l").unwrap();
    assert!(loss::argmax_prob(&ctx, &mut rec, &fm, &l2, &lo).is_err());
    assert!(rec.is_empty());
}

/// AutoAttack's DLR losses in f64: `(loss, grad)` of the summed loss, ranks
/// as an ascending stable sort leaves them (on ties the higher index ranks
/// higher).
fn dlr_ref(z: &[f64], n: usize, k: usize, y: &[u32], t: Option<&[u32]>) -> (Vec<f64>, Vec<f64>) {
    let mut loss = vec![0.0; n];
    let mut grad = vec![0.0; n * k];
    for r in 0..n {
        let row = &z[r * k..(r + 1) * k];
        let mut order: Vec<usize> = (0..k).collect();
        order.sort_by(|&a, &b| row[a].partial_cmp(&row[b]).unwrap()); // stable
        let top = |i: usize| order[k - 1 - i];
        let yl = y[r] as usize;
        let g = &mut grad[r * k..(r + 1) * k];
        let (other, d) = match t {
            Some(t) => (
                t[r] as usize,
                row[top(0)] - 0.5 * (row[top(2)] + row[top(3)]) + 1e-12,
            ),
            None => (
                if top(0) == yl { top(1) } else { top(0) },
                row[top(0)] - row[top(2)] + 1e-12,
            ),
        };
        let num = row[yl] - row[other];
        loss[r] = -num / d;
        g[yl] -= 1.0 / d;
        g[other] += 1.0 / d;
        g[top(0)] += num / (d * d);
        if t.is_some() {
            g[top(2)] -= 0.5 * num / (d * d);
            g[top(3)] -= 0.5 * num / (d * d);
        } else {
            g[top(2)] -= num / (d * d);
        }
    }
    (loss, grad)
}

fn check_dlr(ctx: &Context, z: &[f32], n: usize, k: usize, targeted: bool, seed: u64) {
    let mut rg = rng(seed);
    let y: Vec<u32> = (0..n).map(|_| rg.random_range(0..k as u32)).collect();
    let t: Vec<u32> = (0..n).map(|_| rg.random_range(0..k as u32)).collect();
    let s = Shape::new(n as u32, k as u32, 1, 1);
    let zt = ctx.upload(z, s, "logits").unwrap();
    let u = |v: &[u32], name| {
        let x = ctx.tensor(Shape::new(n as u32, 1, 1, 1), name).unwrap();
        ctx.write_bytes(&x, bytemuck::cast_slice(v));
        x
    };
    let (yt, tt) = (u(&y, "labels"), u(&t, "targets"));
    let lo = ctx.tensor(Shape::new(n as u32, 1, 1, 1), "loss").unwrap();
    let gr = ctx.tensor(s, "grad").unwrap();
    let mut rec = Recording::new();
    let scale = 2.0;
    loss::dlr(
        ctx,
        &mut rec,
        &zt,
        &yt,
        targeted.then_some(&tt),
        scale,
        &lo,
        &gr,
    )
    .unwrap();
    let mut out = ctx.run_read(&[&rec], &[&lo, &gr]).unwrap();
    let got_grad = out.pop().unwrap();
    let got_loss = out.pop().unwrap();
    let (want_loss, want_grad) = dlr_ref(&to_f64(z), n, k, &y, targeted.then_some(&t[..]));
    let want_grad: Vec<f64> = want_grad.iter().map(|g| g * scale as f64).collect();
    let what = format!("dlr n {n} k {k} targeted {targeted}");
    assert_close(&format!("{what} loss"), &got_loss, &want_loss, 1e-4);
    assert_close(&format!("{what} grad"), &got_grad, &want_grad, 1e-4);
}

#[test]
fn dlr_losses_match_reference() {
    let ctx = ctx();
    for (n, k, seed) in [
        (5, 10, 11),
        (130, 10, 12),
        (3, 4, 13),
        (7, 1000, 14),
        (1, 3, 15),
    ] {
        let z: Vec<f32> = random(seed, n * k).iter().map(|v| v * 4.0).collect();
        check_dlr(&ctx, &z, n, k, false, seed);
        if k >= 4 {
            check_dlr(&ctx, &z, n, k, true, seed);
        }
    }
    // ties rank the higher index higher, as the reference's sort
    let z = [1.0f32, 3.0, 3.0, 0.0, 3.0, -1.0, 2.0, 2.0];
    check_dlr(&ctx, &z, 2, 4, false, 16);
    check_dlr(&ctx, &z, 2, 4, true, 17);
    // too few classes is refused
    let zt = ctx.upload(&[0.0; 4], Shape::new(2, 2, 1, 1), "z").unwrap();
    let lt = ctx.tensor(Shape::new(2, 1, 1, 1), "l").unwrap();
    let lo = ctx.tensor(Shape::new(2, 1, 1, 1), "loss").unwrap();
    let gr = ctx.tensor(Shape::new(2, 2, 1, 1), "g").unwrap();
    let err = loss::dlr(&ctx, &mut Recording::new(), &zt, &lt, None, 1.0, &lo, &gr).unwrap_err();
    assert!(err.to_string().contains("at least 3 classes"), "{err}");
}
