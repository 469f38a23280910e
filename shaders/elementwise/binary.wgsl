// Broadcast binary ops on NCHW tensors (OP: 0 add, 1 mul), forward and the
// gradient of one operand. Shapes broadcast per dimension (equal, or 1 in one
// operand); strides are 0 along an operand's broadcast dimensions.
// The gradient of an operand that was broadcast is reduced over the broadcast
// dimensions: one workgroup per element of that operand (grad_reduce), or one
// thread per element when nothing is reduced (grad_map).
// Storage elements are `st` (f32 or f16, aliased by the host); arithmetic is f32.

override OP: u32 = 0u;

// Workgroup size: the host's (`Shader::workgroup_constants`), never written here.
override WG: u32;

struct Fwd {
    od: vec4<u32>,   // output dims n, c, h, w
    sa: vec4<u32>,   // strides of a along the output's dims
    sb: vec4<u32>,   // strides of b
    count: u32,
    _p0: u32,
    _p1: u32,
    _p2: u32,
}

struct Bwd {
    od: vec4<u32>,   // output (gy) dims
    td: vec4<u32>,   // dims of the operand whose gradient is computed
    rd: vec4<u32>,   // reduced dims: od where td is 1 (broadcast), else 1
    so: vec4<u32>,   // strides of the other operand along the output's dims
    count: u32,      // elements of the gradient
    red: u32,        // elements reduced into each (product of rd)
    _p0: u32,
    _p1: u32,
}

@group(0) @binding(0) var<uniform> fp: Fwd;
@group(0) @binding(0) var<uniform> bp: Bwd;

// forward: a (1), b (2) -> y (3)
@group(0) @binding(1) var<storage, read> a: array<st>;
@group(0) @binding(2) var<storage, read> b: array<st>;
@group(0) @binding(3) var<storage, read_write> y: array<st>;
// gradients: gy (1), other operand (2) -> g (3)
@group(0) @binding(1) var<storage, read> gy: array<st>;
@group(0) @binding(2) var<storage, read> other: array<st>;
@group(0) @binding(3) var<storage, read_write> g: array<st>;

// Coordinates (n, c, h, w) of flat index i in dims d.
fn coords(i: u32, d: vec4<u32>) -> vec4<u32> {
    let w = i % d.w;
    let t1 = i / d.w;
    let h = t1 % d.z;
    let t2 = t1 / d.z;
    return vec4<u32>(t2 / d.y, t2 % d.y, h, w);
}

fn contiguous(d: vec4<u32>) -> vec4<u32> {
    return vec4<u32>(d.y * d.z * d.w, d.z * d.w, d.w, 1u);
}

@compute @workgroup_size(WG)
fn forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) lid: u32) {
    let i = grid_group(wid, nwg) * WG + lid;
    if (i >= fp.count) {
        return;
    }
    let c = coords(i, fp.od);
    let va = f32(a[dot(c, fp.sa)]);
    let vb = f32(b[dot(c, fp.sb)]);
    if (OP == 1u) {
        y[i] = st(va * vb);
    } else {
        y[i] = st(va + vb);
    }
}

fn term(oc: vec4<u32>) -> f32 {
    let v = f32(gy[dot(oc, contiguous(bp.od))]);
    if (OP == 1u) {
        return v * f32(other[dot(oc, bp.so)]);
    }
    return v;
}

// Same shape as the output: one thread per element.
@compute @workgroup_size(WG)
fn grad_map(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) lid: u32) {
    let i = grid_group(wid, nwg) * WG + lid;
    if (i >= bp.count) {
        return;
    }
    g[i] = st(term(coords(i, bp.od)));
}

var<workgroup> partial: array<f32, WG>;

// One workgroup per gradient element, summing over the broadcast dimensions.
@compute @workgroup_size(WG)
fn grad_reduce(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    let j = grid_group(wid, nwg);
    if (j >= bp.count) {
        return;
    }
    let tc = coords(j, bp.td);
    var acc = 0.0;
    for (var r = lid; r < bp.red; r += WG) {
        acc += term(tc + coords(r, bp.rd));
    }
    partial[lid] = acc;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s = s >> 1u) {
        if (lid < s) {
            partial[lid] += partial[lid + s];
        }
        workgroupBarrier();
    }
    if (lid == 0u) {
        g[j] = st(partial[0]);
    }
}
