use crate::common::*;
use advex::gpu::{Recording, Shape};
use advex::ops::activation::{self, Activation};

const ALL: [Activation; 8] = [
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
];

fn dact(act: Activation, x: f64) -> f64 {
    // central difference of the f64 reference, away from kinks
    let h = 1e-6;
    (act.apply_f64(x + h) - act.apply_f64(x - h)) / (2.0 * h)
}

#[test]
fn activations_forward_backward_match_reference() {
    let ctx = ctx();
    let shape = Shape::new(3, 5, 7, 9);
    let n = shape.numel() as usize;
    // scale to [-8, 8) so every region (relu6 top, hardswish tails) is hit
    let xs: Vec<f32> = random(1, n).iter().map(|v| v * 8.0).collect();
    let gys = random(2, n);
    for act in ALL {
        let x = ctx.upload(&xs, shape, "x").unwrap();
        let gy = ctx.upload(&gys, shape, "gy").unwrap();
        let y = ctx.tensor(shape, "y").unwrap();
        let gx = ctx.tensor(shape, "gx").unwrap();
        let mut rec = Recording::new();
        activation::forward(&ctx, &mut rec, act, &x, &y).unwrap();
        activation::backward(&ctx, &mut rec, act, &x, &gy, &gx).unwrap();
        let out = ctx.run_read(&[&rec], &[&y, &gx]).unwrap();
        let want_y: Vec<f64> = xs.iter().map(|&v| act.apply_f64(v as f64)).collect();
        let want_gx: Vec<f64> = xs
            .iter()
            .zip(&gys)
            .map(|(&v, &g)| g as f64 * dact(act, v as f64))
            .collect();
        assert_close(&format!("{} forward", act.name()), &out[0], &want_y, 1e-4);
        assert_close(&format!("{} backward", act.name()), &out[1], &want_gx, 1e-4);
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
