// Per-channel affine map y = x * scale[c] + shift[c] on NCHW tensors (input
// normalisation, unfolded batch norm) and its gradient gx = gy * scale[c].
// Storage elements are `st` (f32 or f16, aliased by the host); arithmetic is f32.

// Workgroup size: the host's (`Shader::workgroup_constants`), never written here.
override WG: u32;

struct Params {
    count: u32,
    hw: u32,
    c: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;

// forward: x (1), scale (2), shift (3) -> y (4)
@group(0) @binding(1) var<storage, read> x: array<st>;
@group(0) @binding(2) var<storage, read> scale: array<st>;
@group(0) @binding(3) var<storage, read> shift: array<st>;
@group(0) @binding(4) var<storage, read_write> y: array<st>;
// backward: gy (1), scale (2) -> gx (3)
@group(0) @binding(1) var<storage, read> gy: array<st>;
@group(0) @binding(3) var<storage, read_write> gx: array<st>;

@compute @workgroup_size(WG)
fn forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) lid: u32) {
    let i = grid_thread(wid, nwg, lid, WG);
    if (i >= p.count) {
        return;
    }
    let c = (i / p.hw) % p.c;
    y[i] = st(fma(f32(x[i]), f32(scale[c]), f32(shift[c])));
}

@compute @workgroup_size(WG)
fn backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) lid: u32) {
    let i = grid_thread(wid, nwg, lid, WG);
    if (i >= p.count) {
        return;
    }
    gx[i] = st(f32(gy[i]) * f32(scale[(i / p.hw) % p.c]));
}
