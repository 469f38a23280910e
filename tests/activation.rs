mod common;

use advex::gpu::{Recording, Shape};
use advex::ops::activation::{self, Activation};
use common::*;

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
