// Element-wise helpers: dst += src (summing the gradients of a value with
// several consumers), y = alpha * x, and conversions between f32 and the
// storage type `st` (f32 or f16, aliased by the host). Arithmetic is f32.

// Workgroup size: the host's (`Shader::workgroup_constants`), never written here.
override WG: u32;

struct Params {
    count: u32,
    alpha: f32,
    _p0: u32,
    _p1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> src: array<st>;
@group(0) @binding(2) var<storage, read_write> dst: array<st>;

@compute @workgroup_size(WG)
fn accumulate(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) lid: u32) {
    let i = grid_thread(wid, nwg, lid, WG);
    if (i >= p.count) {
        return;
    }
    dst[i] = st(f32(dst[i]) + f32(src[i]));
}

@compute @workgroup_size(WG)
fn scale(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
         @builtin(local_invocation_index) lid: u32) {
    let i = grid_thread(wid, nwg, lid, WG);
    if (i >= p.count) {
        return;
    }
    dst[i] = st(p.alpha * f32(src[i]));
}

// f32 (1) -> st (2), times p.alpha
@group(0) @binding(1) var<storage, read> src32: array<f32>;

@compute @workgroup_size(WG)
fn to_storage(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) lid: u32) {
    let i = grid_thread(wid, nwg, lid, WG);
    if (i >= p.count) {
        return;
    }
    dst[i] = st(p.alpha * src32[i]);
}

// st (1) -> f32 (2), times p.alpha
@group(0) @binding(2) var<storage, read_write> dst32: array<f32>;

@compute @workgroup_size(WG)
fn from_storage(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    let i = grid_thread(wid, nwg, lid, WG);
    if (i >= p.count) {
        return;
    }
    dst32[i] = p.alpha * f32(src[i]);
}

// Batched transpose (f32 or st alike): dst[b, c, r] = src[b, r, c] for
// p.count = batches * rows * cols elements, rows = p._p0, cols = p._p1;
// bindings src (1), dst (2) as accumulate. (Weights of the CPU adapters'
// pointwise kernels, transposed per group.)
@compute @workgroup_size(WG)
fn transpose(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) lid: u32) {
    let i = grid_thread(wid, nwg, lid, WG);
    if (i >= p.count) {
        return;
    }
    let rc = p._p0 * p._p1;
    let b = i / rc;
    let rem = i - b * rc;
    let c = rem / p._p0;
    let r = rem - c * p._p0;
    dst[i] = src[b * rc + r * p._p1 + c];
}
