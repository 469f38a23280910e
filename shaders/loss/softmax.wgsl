// Softmax over the channel axis and the losses and read-outs built on it.
// A row is the k channel values of one (n, h, w) position: element j of row r
// is at (r / hw) * k * hw + j * hw + r % hw. One workgroup per row; max and sums
// are workgroup tree reductions, and every exponential is taken after
// subtracting the row maximum.
//
// Entries:
// - softmax_forward: x (1) -> y (2)
// - softmax_backward: y (1), gy (2) -> gx (3); gx = y * (gy - sum(gy * y))
// - cross_entropy: logits (1), labels u32 (2) -> loss (3), grad (4);
//   loss = logsumexp(z) - z[label], grad = sign * (softmax(z) - onehot(label)).
//   A label >= k gives a NaN loss and no one-hot term.
// - argmax_prob: logits (1), labels u32 (2) -> out (3), four f32 per row:
//   [argmax index (first maximum), its probability, the label's probability
//   and log-probability (NaN for a label >= k)].
// x, y, sy, gy, gx and grad hold `st` (f32 or f16, aliased by the host); labels,
// loss and out are always 4-byte. Arithmetic is f32.

// Workgroup size: the host's (`Shader::workgroup_constants`), never written here.
override WG: u32;

struct Params {
    rows: u32,
    k: u32,
    hw: u32,
    sign: f32,
}

@group(0) @binding(0) var<uniform> p: Params;

@group(0) @binding(1) var<storage, read> x: array<st>;
@group(0) @binding(2) var<storage, read_write> y: array<st>;

@group(0) @binding(1) var<storage, read> sy: array<st>;
@group(0) @binding(2) var<storage, read> gy: array<st>;
@group(0) @binding(3) var<storage, read_write> gx: array<st>;

@group(0) @binding(2) var<storage, read> labels: array<u32>;
@group(0) @binding(3) var<storage, read_write> loss: array<f32>;
@group(0) @binding(4) var<storage, read_write> grad: array<st>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

var<workgroup> partial: array<f32, WG>;
var<workgroup> partial_idx: array<u32, WG>;

fn neg_inf() -> f32 {
    return bitcast<f32>(0xff800000u);
}

fn nan() -> f32 {
    return bitcast<f32>(0x7fc00000u);
}

// Index of element j of row r.
fn at(r: u32, j: u32) -> u32 {
    return (r / p.hw) * p.k * p.hw + j * p.hw + r % p.hw;
}

fn reduce_max(lid: u32, v: f32) -> f32 {
    partial[lid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s = s >> 1u) {
        if (lid < s) {
            partial[lid] = max(partial[lid], partial[lid + s]);
        }
        workgroupBarrier();
    }
    let m = partial[0];
    workgroupBarrier();
    return m;
}

fn reduce_sum(lid: u32, v: f32) -> f32 {
    partial[lid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s = s >> 1u) {
        if (lid < s) {
            partial[lid] += partial[lid + s];
        }
        workgroupBarrier();
    }
    let t = partial[0];
    workgroupBarrier();
    return t;
}

// Row maximum of x.
fn row_max(r: u32, lid: u32) -> f32 {
    var m = neg_inf();
    for (var j = lid; j < p.k; j += WG) {
        m = max(m, f32(x[at(r, j)]));
    }
    return reduce_max(lid, m);
}

// Sum of exp(x - m) over the row.
fn row_sum_exp(r: u32, lid: u32, m: f32) -> f32 {
    var s = 0.0;
    for (var j = lid; j < p.k; j += WG) {
        s += exp(f32(x[at(r, j)]) - m);
    }
    return reduce_sum(lid, s);
}

@compute @workgroup_size(WG)
fn softmax_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                   @builtin(local_invocation_index) lid: u32) {
    let r = grid_group(wid, nwg);
    if (r >= p.rows) {
        return;
    }
    let m = row_max(r, lid);
    let inv = 1.0 / row_sum_exp(r, lid, m);
    for (var j = lid; j < p.k; j += WG) {
        let i = at(r, j);
        y[i] = st(exp(f32(x[i]) - m) * inv);
    }
}

@compute @workgroup_size(WG)
fn softmax_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                    @builtin(local_invocation_index) lid: u32) {
    let r = grid_group(wid, nwg);
    if (r >= p.rows) {
        return;
    }
    var d = 0.0;
    for (var j = lid; j < p.k; j += WG) {
        let i = at(r, j);
        d += f32(gy[i]) * f32(sy[i]);
    }
    let dot = reduce_sum(lid, d);
    for (var j = lid; j < p.k; j += WG) {
        let i = at(r, j);
        gx[i] = st(f32(sy[i]) * (f32(gy[i]) - dot));
    }
}

@compute @workgroup_size(WG)
fn cross_entropy(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) lid: u32) {
    let r = grid_group(wid, nwg);
    if (r >= p.rows) {
        return;
    }
    let m = row_max(r, lid);
    let s = row_sum_exp(r, lid, m);
    let inv = 1.0 / s;
    let label = labels[r];
    if (lid == 0u) {
        if (label < p.k) {
            // (m - z_label) + log(s) keeps precision when the label wins.
            loss[r] = (m - f32(x[at(r, label)])) + log(s);
        } else {
            loss[r] = nan();
        }
    }
    // The label's entry p_label - 1 = -(sum of the other classes' exp) / s,
    // summed without the label: when the label's probability is near 1, the
    // difference 1/s - 1 would cancel to rounding noise (or to 0) in f32.
    var o = 0.0;
    for (var j = lid; j < p.k; j += WG) {
        if (j != label) {
            o += exp(f32(x[at(r, j)]) - m);
        }
    }
    let others = reduce_sum(lid, o);
    for (var j = lid; j < p.k; j += WG) {
        let i = at(r, j);
        let e = exp(f32(x[i]) - m);
        grad[i] = st(p.sign * select(e * inv, -others * inv, j == label));
    }
}

// (va, ia) beats (vb, ib): larger value, NaN above all, lower index on ties.
fn beats(va: f32, ia: u32, vb: f32, ib: u32) -> bool {
    let na = va != va;
    let nb = vb != vb;
    if (na || nb) {
        return na && (!nb || ia < ib);
    }
    return va > vb || (va == vb && ia < ib);
}

@compute @workgroup_size(WG)
fn argmax_prob(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    let r = grid_group(wid, nwg);
    if (r >= p.rows) {
        return;
    }
    var bv = neg_inf();
    var bi = 0xffffffffu;
    for (var j = lid; j < p.k; j += WG) {
        let v = f32(x[at(r, j)]);
        if (bi == 0xffffffffu || beats(v, j, bv, bi)) {
            bv = v;
            bi = j;
        }
    }
    partial[lid] = bv;
    partial_idx[lid] = bi;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s = s >> 1u) {
        if (lid < s) {
            let ov = partial[lid + s];
            let oi = partial_idx[lid + s];
            if (oi != 0xffffffffu
                && (partial_idx[lid] == 0xffffffffu || beats(ov, oi, partial[lid], partial_idx[lid]))) {
                partial[lid] = ov;
                partial_idx[lid] = oi;
            }
        }
        workgroupBarrier();
    }
    let m = partial[0];
    let pred = partial_idx[0];
    workgroupBarrier();
    let s = row_sum_exp(r, lid, m);
    if (lid == 0u) {
        let label = labels[r];
        out[4u * r] = f32(pred);
        out[4u * r + 1u] = 1.0 / s;
        if (label < p.k) {
            let d = f32(x[at(r, label)]) - m;
            out[4u * r + 2u] = exp(d) / s;
            out[4u * r + 3u] = d - log(s);
        } else {
            out[4u * r + 2u] = nan();
            out[4u * r + 3u] = nan();
        }
    }
}
