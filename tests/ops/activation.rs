use crate::common::*;
use advex::gpu::{Recording, Shape};
use advex::ops::activation::{self, Activation};

const ALL: [Activation; 10] = [
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

fn dact(act: Activation, x: f64) -> f64 {
    // central difference of the f64 reference, away from kinks
    let h = 1e-6;
    (act.apply_f64(x + h) - act.apply_f64(x - h)) / (2.0 * h)
}

/// Forward, backward and (where the output determines the derivative)
/// backward from the output of `acts` on `shape`, in storage type `st`, inputs
/// in [-8, 8) so every region (relu6's top, hardswish's tails) is hit.
fn check_acts(shape: Shape, acts: &[Activation], seed: u64, st: St) {
    let ctx = ctx();
    let n = shape.numel() as usize;
    let xs = st
        .random(seed, n)
        .iter()
        .map(|v| v * 8.0)
        .collect::<Vec<_>>();
    let gys = st.random(seed + 1, n);
    for &act in acts {
        let x = st.upload(&ctx, &xs, shape, "x");
        let gy = st.upload(&ctx, &gys, shape, "gy");
        let y = st.poisoned(&ctx, shape, "y");
        let gx = st.poisoned(&ctx, shape, "gx");
        let gxo = st.poisoned(&ctx, shape, "gx from output");
        let mut rec = Recording::new();
        activation::forward(&ctx, &mut rec, act, &x, &y).unwrap();
        activation::backward(&ctx, &mut rec, act, &x, &gy, &gx).unwrap();
        let mut reads = vec![&y, &gx];
        if act.derivative_from_output() {
            activation::backward_from_output(&ctx, &mut rec, act, &y, &gy, &gxo).unwrap();
            reads.push(&gxo);
        }
        let out = ctx.run_read(&[&rec], &reads).unwrap();
        let want_y: Vec<f64> = xs.iter().map(|&v| act.apply_f64(v as f64)).collect();
        let want_gx: Vec<f64> = xs
            .iter()
            .zip(&gys)
            .map(|(&v, &g)| g as f64 * dact(act, v as f64))
            .collect();
        let what = format!("{} {shape} ({st:?})", act.name());
        assert_close(&format!("{what} forward"), &out[0], &want_y, st.tolerance());
        assert_close(
            &format!("{what} backward"),
            &out[1],
            &want_gx,
            st.tolerance(),
        );
        if out.len() == 3 {
            assert_close(
                &format!("{what} backward from output"),
                &out[2],
                &want_gx,
                st.tolerance(),
            );
        }
    }
}

#[test]
fn activations_forward_backward_match_reference() {
    check_acts(Shape::new(3, 5, 7, 9), &ALL, 1, St::F32);
}

/// The same in f16 storage: 4 * 60 elements take the vec4 backward-from-output
/// entry, 210 the scalar one. (Sigmoid is left out: its derivative from an f16
/// output, y (1 - y), loses the relative precision of 1 - y where it
/// saturates, so it differs from the f64 reference's by more than f16's
/// rounding there.)
#[test]
fn f16_activations_match_reference() {
    assert!(ctx().supports_f16(), "the adapter lacks SHADER_F16");
    let acts: Vec<Activation> = ALL
        .into_iter()
        .filter(|a| !matches!(a, Activation::Sigmoid))
        .collect();
    for count in [240u32, 210] {
        check_acts(Shape::new(1, count, 1, 1), &acts, count as u64, St::F16);
    }
}

/// The activations whose derivative the output determines.
const FROM_OUTPUT: [Activation; 6] = [
    Activation::Relu,
    Activation::Relu6,
    Activation::LeakyRelu {
        negative_slope: 0.1,
    },
    Activation::Sigmoid,
    Activation::Hardsigmoid {
        alpha: 1.0 / 6.0,
        beta: 0.5,
    },
    Activation::Identity,
];

#[test]
fn backward_from_output_matches_backward_from_input() {
    let ctx = ctx();
    // 210 elements: one per thread; 240: vec4s
    for shape in [Shape::new(2, 3, 5, 7), Shape::new(2, 3, 5, 8)] {
        let n = shape.numel() as usize;
        let mut xs: Vec<f32> = random(3, n).iter().map(|v| v * 8.0).collect();
        // the kinks themselves: PyTorch's choices must hold exactly
        for (i, v) in [0.0f32, -0.0, 6.0, -3.0, 3.0, 1e-30, 5.999_999_5, 6.000_001]
            .into_iter()
            .enumerate()
        {
            xs[i] = v;
        }
        let gys = random(4, n);
        for act in FROM_OUTPUT {
            assert!(act.derivative_from_output());
            let x = ctx.upload(&xs, shape, "x").unwrap();
            let gy = ctx.upload(&gys, shape, "gy").unwrap();
            let y = ctx.tensor(shape, "y").unwrap();
            let gx_in = ctx.tensor(shape, "gx_in").unwrap();
            let gx_out = ctx.tensor(shape, "gx_out").unwrap();
            let mut rec = Recording::new();
            activation::forward(&ctx, &mut rec, act, &x, &y).unwrap();
            activation::backward(&ctx, &mut rec, act, &x, &gy, &gx_in).unwrap();
            activation::backward_from_output(&ctx, &mut rec, act, &y, &gy, &gx_out).unwrap();
            let out = ctx.run_read(&[&rec], &[&gx_in, &gx_out]).unwrap();
            // away from the kinks: the f64 reference
            let want: Vec<f64> = xs
                .iter()
                .zip(&gys)
                .map(|(&v, &g)| g as f64 * dact(act, v as f64))
                .collect();
            assert_close(
                &format!("{} backward from output (reference)", act.name()),
                &out[1][8..],
                &want[8..],
                1e-4,
            );
            // everywhere, kinks included: the same values as the backward from the input
            // (sigmoid's two formulas may differ by rounding)
            let from_input = to_f64(&out[0]);
            assert_close(
                &format!("{} backward from output vs from input", act.name()),
                &out[1],
                &from_input,
                if act == Activation::Sigmoid {
                    1e-4
                } else {
                    0.0
                },
            );
        }
    }
}

#[test]
fn backward_from_output_refuses_input_derivatives() {
    let ctx = ctx();
    let shape = Shape::new(1, 1, 2, 2);
    let t = ctx.tensor(shape, "t").unwrap();
    for act in [
        Activation::Silu,
        Activation::Hardswish,
        Activation::LeakyRelu {
            negative_slope: -0.5,
        },
    ] {
        assert!(!act.derivative_from_output());
        let mut rec = Recording::new();
        let err = activation::backward_from_output(&ctx, &mut rec, act, &t, &t, &t);
        assert!(err.is_err(), "{} must be refused", act.name());
        assert!(rec.is_empty());
    }
}
