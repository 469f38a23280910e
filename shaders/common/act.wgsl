// Activation functions, shared: the host prepends this file to activation.wgsl
// and to every convolution shader that fuses an activation into its epilogue.
// ACT selects the function (specialisation constant):
//   0 relu, 1 relu6, 2 leaky_relu(alpha), 3 sigmoid, 4 silu, 5 hardswish,
//   6 hardsigmoid(alpha x + beta clamped to [0, 1]), 7 identity
// alpha and beta are `p.act_alpha` and `p.act_beta` of the including shader's
// uniform parameters `p`.

override ACT: u32 = 7u;

fn act(v: f32) -> f32 {
    switch ACT {
        case 0u: { return max(v, 0.0); }
        case 1u: { return clamp(v, 0.0, 6.0); }
        case 2u: { return select(v * p.act_alpha, v, v >= 0.0); }
        case 3u: { return 1.0 / (1.0 + exp(-v)); }
        case 4u: { return v * (1.0 / (1.0 + exp(-v))); }
        case 5u: { return v * clamp(v + 3.0, 0.0, 6.0) / 6.0; }
        case 6u: { return clamp(p.act_alpha * v + p.act_beta, 0.0, 1.0); }
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
        default: { return v; }
    }
}
