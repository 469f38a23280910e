// Layer normalisation over the channel axis: each (n, h, w) position's C
// values (ConvNeXt's LayerNorm, which PyTorch writes as a permute to
// channels-last, LayerNorm over the last axis and a permute back).
// A row is the C values of one position: element j of row r is at
// (r / hw) * k * hw + j * hw + r % hw. One workgroup per row; sums are
// workgroup tree reductions (common/reduce.wgsl). Arithmetic is f32; x, y,
// gy, gx hold `st`, weight and bias too.
//
// Entries:
// - ln_forward: x (1), weight (2), bias (3) -> y (4);
//   y = (x - mean) / sqrt(var + eps) * weight[c] + bias[c], var the biased
//   variance, both taken in two passes (the mean first) as PyTorch does.
// - ln_backward: x (1), weight (2), gy (3) -> gx (4); with x^ the normalised
//   input, g = gy * weight[c] and rstd = 1 / sqrt(var + eps):
//   gx = rstd * (g - mean(g) - x^ * mean(g * x^)).

// Workgroup size: the host's (`Shader::workgroup_constants`), never written here.
override WG: u32;

struct Params {
    rows: u32,
    k: u32,
    hw: u32,
    eps: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<st>;
@group(0) @binding(2) var<storage, read> weight: array<st>;
@group(0) @binding(3) var<storage, read> bias: array<st>;
@group(0) @binding(4) var<storage, read_write> y: array<st>;

@group(0) @binding(3) var<storage, read> gy: array<st>;
@group(0) @binding(4) var<storage, read_write> gx: array<st>;

// Index of element j of row r.
fn at(r: u32, j: u32) -> u32 {
    return (r / p.hw) * p.k * p.hw + j * p.hw + r % p.hw;
}

// The row's mean and 1 / sqrt(var + eps).
fn row_stats(r: u32, lid: u32) -> vec2<f32> {
    var s = 0.0;
    for (var j = lid; j < p.k; j += WG) {
        s += f32(x[at(r, j)]);
    }
    let mean = wg_sum(lid, s) / f32(p.k);
    var q = 0.0;
    for (var j = lid; j < p.k; j += WG) {
        let d = f32(x[at(r, j)]) - mean;
        q += d * d;
    }
    let variance = wg_sum(lid, q) / f32(p.k);
    return vec2(mean, inverseSqrt(variance + p.eps));
}

@compute @workgroup_size(WG)
fn ln_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) lid: u32) {
    let r = grid_group(wid, nwg);
    if (r >= p.rows) {
        return;
    }
    let m = row_stats(r, lid);
    for (var j = lid; j < p.k; j += WG) {
        let i = at(r, j);
        y[i] = st((f32(x[i]) - m.x) * m.y * f32(weight[j]) + f32(bias[j]));
    }
}

@compute @workgroup_size(WG)
fn ln_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    let r = grid_group(wid, nwg);
    if (r >= p.rows) {
        return;
    }
    let m = row_stats(r, lid);
    var sg = 0.0;
    var sgx = 0.0;
    for (var j = lid; j < p.k; j += WG) {
        let i = at(r, j);
        let g = f32(gy[i]) * f32(weight[j]);
        sg += g;
        sgx += g * (f32(x[i]) - m.x) * m.y;
    }
    let mg = wg_sum(lid, sg) / f32(p.k);
    let mgx = wg_sum(lid, sgx) / f32(p.k);
    for (var j = lid; j < p.k; j += WG) {
        let i = at(r, j);
        let xh = (f32(x[i]) - m.x) * m.y;
        gx[i] = st(m.y * (f32(gy[i]) * f32(weight[j]) - mg - xh * mgx));
    }
}

// The same, one thread per row (rows = positions): a thread loops over the
// row's C values, strided by hw in memory, so neighbouring threads read
// neighbouring addresses; no barriers. The host picks these entries unless
// the rows are too few to fill the device and long enough to share out
// (`layer_norm.rs`).
fn thread_stats(r: u32) -> vec2<f32> {
    var s = 0.0;
    for (var j = 0u; j < p.k; j++) {
        s += f32(x[at(r, j)]);
    }
    let mean = s / f32(p.k);
    var q = 0.0;
    for (var j = 0u; j < p.k; j++) {
        let d = f32(x[at(r, j)]) - mean;
        q += d * d;
    }
    return vec2(mean, inverseSqrt(q / f32(p.k) + p.eps));
}

@compute @workgroup_size(WG)
fn ln_forward_rows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                   @builtin(local_invocation_index) lid: u32) {
    let r = grid_thread(wid, nwg, lid, WG);
    if (r >= p.rows) {
        return;
    }
    let m = thread_stats(r);
    for (var j = 0u; j < p.k; j++) {
        let i = at(r, j);
        y[i] = st((f32(x[i]) - m.x) * m.y * f32(weight[j]) + f32(bias[j]));
    }
}

@compute @workgroup_size(WG)
fn ln_backward_rows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                    @builtin(local_invocation_index) lid: u32) {
    let r = grid_thread(wid, nwg, lid, WG);
    if (r >= p.rows) {
        return;
    }
    let m = thread_stats(r);
    var sg = 0.0;
    var sgx = 0.0;
    for (var j = 0u; j < p.k; j++) {
        let i = at(r, j);
        let g = f32(gy[i]) * f32(weight[j]);
        sg += g;
        sgx += g * (f32(x[i]) - m.x) * m.y;
    }
    let mg = sg / f32(p.k);
    let mgx = sgx / f32(p.k);
    for (var j = 0u; j < p.k; j++) {
        let i = at(r, j);
        let xh = (f32(x[i]) - m.x) * m.y;
        gx[i] = st(m.y * (f32(gy[i]) * f32(weight[j]) - mg - xh * mgx));
    }
}
