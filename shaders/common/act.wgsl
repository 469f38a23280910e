// Activation functions, shared: the host prepends this file to activation.wgsl
// and to every convolution shader that fuses an activation into its epilogue.
// ACT selects the function (specialisation constant):
//   0 relu, 1 relu6, 2 leaky_relu(alpha), 3 sigmoid, 4 silu, 5 hardswish,
//   6 hardsigmoid(alpha x + beta clamped to [0, 1]), 7 identity,
//   8 gelu (x Phi(x), the exact erf form), 9 gelu with PyTorch's tanh
//   approximation
// alpha and beta are `p.act_alpha` and `p.act_beta` of the including shader's
// uniform parameters `p`.
//
// Backward kernels use ACT the other way round: with DACT set (their own
// override), the gradient they write leaves through the derivative of the
// activation ACT, read from that activation's output y (dact_y below): the
// convolution's backward and the fused activation's backward in one pass.

override ACT: u32 = 7u;

// The standard normal CDF Phi(v) = erfc(-v / sqrt 2) / 2, erfc by the
// Chebyshev fit of Numerical Recipes' erfcc (fractional error < 1.2e-7
// everywhere, so small tails keep their relative accuracy).
fn normal_cdf(v: f32) -> f32 {
    let z = abs(v) * 0.70710678118654752;
    let t = 1.0 / (1.0 + 0.5 * z);
    let r = t * exp(-z * z - 1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418
        + t * (-0.18628806 + t * (0.27886807 + t * (-1.13520398 + t * (1.48851587
        + t * (-0.82215223 + t * 0.17087277)))))))));
    return select(1.0 - 0.5 * r, 0.5 * r, v < 0.0);
}

// PyTorch's tanh form: tanh(sqrt(2 / pi) (v + 0.044715 v^3)), its argument
// clamped where tanh is +-1 in f32 (some drivers' tanh overflows beyond).
fn gelu_tanh_inner(v: f32) -> f32 {
    return tanh(clamp(0.7978845608028654 * (v + 0.044715 * v * v * v), -15.0, 15.0));
}

fn act(v: f32) -> f32 {
    switch ACT {
        case 0u: { return max(v, 0.0); }
        case 1u: { return clamp(v, 0.0, 6.0); }
        case 2u: { return select(v * p.act_alpha, v, v >= 0.0); }
        case 3u: { return 1.0 / (1.0 + exp(-v)); }
        case 4u: { return v * (1.0 / (1.0 + exp(-v))); }
        case 5u: { return v * clamp(v + 3.0, 0.0, 6.0) / 6.0; }
        case 6u: { return clamp(p.act_alpha * v + p.act_beta, 0.0, 1.0); }
        case 8u: { return v * normal_cdf(v); }
        case 9u: { return 0.5 * v * (1.0 + gelu_tanh_inner(v)); }
        default: { return v; }
    }
}

fn act4(v: vec4<f32>) -> vec4<f32> {
    switch ACT {
        case 0u: { return max(v, vec4(0.0)); }
        case 1u: { return clamp(v, vec4(0.0), vec4(6.0)); }
        case 2u: { return select(v * p.act_alpha, v, v >= vec4(0.0)); }
        case 3u: { return 1.0 / (1.0 + exp(-v)); }
        case 4u: { return v * (1.0 / (1.0 + exp(-v))); }
        case 5u: { return v * clamp(v + 3.0, vec4(0.0), vec4(6.0)) / 6.0; }
        case 6u: { return clamp(p.act_alpha * v + p.act_beta, vec4(0.0), vec4(1.0)); }
        case 8u, 9u: { return vec4(act(v.x), act(v.y), act(v.z), act(v.w)); }
        default: { return v; }
    }
}

// d act / dx from the output y = act(x), for the functions whose derivative the
// output determines (the host refuses the others). The kinks match PyTorch's
// backward: relu: y > 0 <=> x > 0; relu6: 0 < y < 6 <=> 0 < x < 6 (0 at both
// ends); leaky_relu with a slope >= 0: y > 0 <=> x > 0; sigmoid: y (1 - y)
// (PyTorch's own formula); hardsigmoid: 0 < y < 1 <=> 0 < alpha x + beta < 1.
// `alpha`: the activation's parameter (leaky_relu's slope, hardsigmoid's alpha).
fn dact_y(y: f32, alpha: f32) -> f32 {
    switch ACT {
        case 0u: { return select(0.0, 1.0, y > 0.0); }
        case 1u: { return select(0.0, 1.0, y > 0.0 && y < 6.0); }
        case 2u: { return select(alpha, 1.0, y > 0.0); }
        case 3u: { return y * (1.0 - y); }
        case 6u: { return select(0.0, alpha, y > 0.0 && y < 1.0); }
        default: { return 1.0; }
    }
}

fn dact_y4(y: vec4<f32>, alpha: f32) -> vec4<f32> {
    return vec4(dact_y(y.x, alpha), dact_y(y.y, alpha),
                dact_y(y.z, alpha), dact_y(y.w, alpha));
}
