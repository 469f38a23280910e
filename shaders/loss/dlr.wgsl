// Difference-of-logits-ratio losses (Croce & Hein 2020, AutoAttack) on logits
// `[n, k]`, one invocation per sample. With z_(1) >= z_(2) >= ... the sorted
// logits of a sample:
// - TARGETED false (dlr): loss = -(z_y - z_o) / (z_(1) - z_(3) + 1e-12), z_o the
//   largest logit other than the label's (z_(2) when y ranks first, else z_(1));
// - TARGETED true (dlr_targeted): loss = -(z_y - z_t) /
//   (z_(1) - (z_(3) + z_(4)) / 2 + 1e-12), t the target class.
// grad = scale * d loss / d z, the gradient of the batch's summed loss. Ties
// rank as an ascending stable sort leaves them (the higher index ranks
// higher), as `torch.sort` does in the reference code. A label or target >= k
// gives a NaN loss and a zero gradient. z and grad hold `st` (f32 or f16,
// aliased by the host); arithmetic is f32.

override TARGETED: bool = false;
// MARGIN (with TARGETED; FAB-T's linearised function): loss = z_t - z_y,
// grad = scale * (e_t - e_y).
override MARGIN: bool = false;

// Workgroup size: the host's (`Shader::workgroup_constants`: one thread per
// row), never written here.
override WG: u32;

struct DlrParams {
    n: u32,
    k: u32,
    scale: f32,
    _p0: u32,
}

@group(0) @binding(0) var<uniform> p: DlrParams;
@group(0) @binding(1) var<storage, read> z: array<st>;
@group(0) @binding(2) var<storage, read> y: array<u32>;
@group(0) @binding(3) var<storage, read> t: array<u32>;
@group(0) @binding(4) var<storage, read_write> loss: array<f32>;
@group(0) @binding(5) var<storage, read_write> grad: array<st>;

// Class a ranks above class b.
fn above(va: f32, a: u32, vb: f32, b: u32) -> bool {
    return va > vb || (va == vb && a > b);
}

@compute @workgroup_size(WG)
fn dlr(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
       @builtin(local_invocation_index) lid: u32) {
    let r = grid_thread(wid, nwg, lid, WG);
    if (r >= p.n) { return; }
    let base = r * p.k;
    // The four highest classes, best first (k >= 4 checked by the host; with
    // k = 3 the untargeted loss never reads the fourth).
    var ti = array<u32, 4>(0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu);
    var tv = array<f32, 4>(0.0, 0.0, 0.0, 0.0);
    for (var j = 0u; j < p.k; j = j + 1u) {
        var v = f32(z[base + j]);
        var c = j;
        for (var s = 0u; s < 4u; s = s + 1u) {
            if (ti[s] == 0xffffffffu || above(v, c, tv[s], ti[s])) {
                let ov = tv[s];
                let oc = ti[s];
                tv[s] = v;
                ti[s] = c;
                v = ov;
                c = oc;
                if (c == 0xffffffffu) { break; }
            }
        }
    }
    let label = y[r];
    let tgt = select(0u, t[r], TARGETED);
    if (label >= p.k || tgt >= p.k) {
        loss[r] = bitcast<f32>(0x7fc00000u);
        for (var j = 0u; j < p.k; j = j + 1u) { grad[base + j] = st(0.0); }
        return;
    }
    let zy = f32(z[base + label]);
    if (MARGIN) {
        loss[r] = f32(z[base + tgt]) - zy;
        for (var j = 0u; j < p.k; j = j + 1u) {
            var g = 0.0;
            if (j == tgt) { g += 1.0; }
            if (j == label) { g -= 1.0; }
            grad[base + j] = st(p.scale * g);
        }
        return;
    }
    var other: u32;
    var d: f32;
    if (TARGETED) {
        other = tgt;
        d = tv[0] - 0.5 * (tv[2] + tv[3]) + 1e-12;
    } else {
        other = select(ti[0], ti[1], ti[0] == label);
        d = tv[0] - tv[2] + 1e-12;
    }
    let num = zy - f32(z[base + other]);
    loss[r] = -num / d;
    let gd = 1.0 / d;
    let gn = num / (d * d);
    for (var j = 0u; j < p.k; j = j + 1u) {
        var g = 0.0;
        if (j == label) { g -= gd; }
        if (j == other) { g += gd; }
        if (j == ti[0]) { g += gn; }
        if (TARGETED) {
            if (j == ti[2]) { g -= 0.5 * gn; }
            if (j == ti[3]) { g -= 0.5 * gn; }
        } else if (j == ti[2]) {
            g -= gn;
        }
        grad[base + j] = st(p.scale * g);
    }
}
