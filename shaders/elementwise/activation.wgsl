// Element-wise activations, forward and backward to the input.
// Storage elements are `st` (f32, or f16 on the half-precision path; the host
// prepends the alias); arithmetic is f32.
// ACT and act() (the forward functions) come from act.wgsl, prepended by the host.

// Workgroup size: the host's (`Shader::workgroup_constants`), never written here.
override WG: u32;

struct Params {
    count: u32,
    act_alpha: f32,
    act_beta: f32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;

fn sigmoid(x: f32) -> f32 {
    return 1.0 / (1.0 + exp(-x));
}


// d act / dx at x. Matches PyTorch's choices at the kinks: relu'(0) = 0,
// relu6' is 1 on the open interval (0, 6), hardswish' on [-3, 3] is (2x + 3) / 6,
// leaky_relu'(0) = alpha... PyTorch uses x > 0 for leaky_relu's backward.
fn dact(x: f32) -> f32 {
    switch ACT {
        case 0u: { return select(0.0, 1.0, x > 0.0); }
        case 1u: { return select(0.0, 1.0, x > 0.0 && x < 6.0); }
        case 2u: { return select(p.act_alpha, 1.0, x > 0.0); }
        case 3u: { let s = sigmoid(x); return s * (1.0 - s); }
        case 4u: { let s = sigmoid(x); return s * (1.0 + x * (1.0 - s)); }
        case 5u: {
            if (x < -3.0) { return 0.0; }
            if (x > 3.0) { return 1.0; }
            return (2.0 * x + 3.0) / 6.0;
        }
        case 6u: {
            let y = p.act_alpha * x + p.act_beta;
            return select(0.0, p.act_alpha, y > 0.0 && y < 1.0);
        }
        // gelu: Phi(x) + x phi(x)
        case 8u: { return normal_cdf(x) + x * 0.3989422804014327 * exp(-0.5 * x * x); }
        // tanh form: (1 + t) / 2 + x (1 - t^2) sqrt(2 / pi) (1 + 3 * 0.044715 x^2) / 2
        case 9u: {
            let t = gelu_tanh_inner(x);
            return 0.5 * (1.0 + t)
                + 0.5 * x * (1.0 - t * t) * 0.7978845608028654 * (1.0 + 0.134145 * x * x);
        }
        default: { return 1.0; }
    }
}

// d act / dx from the output: dact_y() of act.wgsl with this shader's parameters.
fn dact_from_output(y: f32) -> f32 {
    return dact_y(y, p.act_alpha);
}

@group(0) @binding(1) var<storage, read> x: array<st>;
@group(0) @binding(2) var<storage, read_write> y: array<st>;

@compute @workgroup_size(WG)
fn forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) lid: u32) {
    let i = grid_thread(wid, nwg, lid, WG);
    if (i >= p.count) { return; }
    y[i] = st(act(f32(x[i])));
}

// backward: binding 1 = x (forward input), binding 2 = gy, binding 3 = gx
@group(0) @binding(1) var<storage, read> bx: array<st>;
@group(0) @binding(2) var<storage, read> gy: array<st>;
@group(0) @binding(3) var<storage, read_write> gx: array<st>;

@compute @workgroup_size(WG)
fn backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) lid: u32) {
    let i = grid_thread(wid, nwg, lid, WG);
    if (i >= p.count) { return; }
    gx[i] = st(f32(gy[i]) * dact(f32(bx[i])));
}

// backward from the output: binding 1 = y (forward output), 2 = gy, 3 = gx
@group(0) @binding(1) var<storage, read> oy: array<st>;

@compute @workgroup_size(WG)
fn backward_from_output(@builtin(workgroup_id) wid: vec3<u32>,
                        @builtin(num_workgroups) nwg: vec3<u32>,
                        @builtin(local_invocation_index) lid: u32) {
    let i = grid_thread(wid, nwg, lid, WG);
    if (i >= p.count) { return; }
    gx[i] = st(f32(gy[i]) * dact_from_output(f32(oy[i])));
}

// The same, 4 elements per thread as vec4s (p.count = elements / 4; the host
// uses it when the element count is a multiple of 4): a quarter of the load and
// store instructions, which is what elementwise kernels cost on CPU adapters.
@group(0) @binding(1) var<storage, read> oy4: array<vec4<st>>;
@group(0) @binding(2) var<storage, read> gy4: array<vec4<st>>;
@group(0) @binding(3) var<storage, read_write> gx4: array<vec4<st>>;

@compute @workgroup_size(WG)
fn backward_from_output4(@builtin(workgroup_id) wid: vec3<u32>,
                         @builtin(num_workgroups) nwg: vec3<u32>,
                         @builtin(local_invocation_index) lid: u32) {
    let i = grid_thread(wid, nwg, lid, WG);
    if (i >= p.count) { return; }
    let yv = vec4<f32>(oy4[i]);
    let d = vec4(dact_from_output(yv.x), dact_from_output(yv.y),
                 dact_from_output(yv.z), dact_from_output(yv.w));
    gx4[i] = vec4<st>(vec4<f32>(gy4[i]) * d);
}
