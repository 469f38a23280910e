// 2-D pooling over NCHW planes, forward and backward to the input, following
// PyTorch exactly:
// - max: window positions oy * stride - pad_top + ky * dilation; padding never
//   wins; the first maximum in row-major window order wins ties; NaN propagates.
//   The backward pass is a gather (no atomics): each input element sums gy over
//   the windows whose recomputed argmax is this element.
// - avg: the window is [y0, min(y0 + kh, ih + pad_bottom)) (the same along x);
//   with count_include_pad the divisor is that window's area, otherwise the
//   number of input elements in it. A window holding no input gives 0.
// - global average: one workgroup reduces one plane.
// Every kernel rebuilds its flat workgroup index from the folded grid.
// Storage elements are `st` (f32 or f16, aliased by the host); arithmetic is f32.

// Workgroup size: the host's (`Shader::workgroup_constants`), never written here.
override WG: u32;

struct Params {
    count: u32,      // threads' work items (outputs, inputs, or planes)
    ih: u32,
    iw: u32,
    oh: u32,
    ow: u32,
    kh: u32,
    kw: u32,
    sh: u32,
    sw: u32,
    pt: u32,
    pl: u32,
    dh: u32,
    dw: u32,
    hend: u32,       // ih + bottom padding
    wend: u32,       // iw + right padding
    include_pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;

// max_forward, global_avg_forward: x (1) -> y (2); avg_forward: x (1) -> y (2)
@group(0) @binding(1) var<storage, read> x: array<st>;
@group(0) @binding(2) var<storage, read_write> y: array<st>;
// max_backward: x (1), gy (2) -> gx (3)
@group(0) @binding(2) var<storage, read> gy: array<st>;
@group(0) @binding(3) var<storage, read_write> gx: array<st>;
// avg_backward, global_avg_backward: gy (1) -> gx (2)
@group(0) @binding(1) var<storage, read> agy: array<st>;
@group(0) @binding(2) var<storage, read_write> agx: array<st>;

fn neg_inf() -> f32 {
    return bitcast<f32>(0xff800000u);
}

struct Best {
    idx: i32,   // index within the plane, -1 when the window holds no input
    val: f32,
}

// Maximum of window (oy, ox) of the plane starting at `base`.
fn window_max(base: u32, oy: u32, ox: u32) -> Best {
    var best = Best(-1, neg_inf());
    let y0 = i32(oy * p.sh) - i32(p.pt);
    let x0 = i32(ox * p.sw) - i32(p.pl);
    for (var ky = 0u; ky < p.kh; ky++) {
        let iy = y0 + i32(ky * p.dh);
        if (iy < 0 || iy >= i32(p.ih)) {
            continue;
        }
        for (var kx = 0u; kx < p.kw; kx++) {
            let ix = x0 + i32(kx * p.dw);
            if (ix < 0 || ix >= i32(p.iw)) {
                continue;
            }
            let idx = iy * i32(p.iw) + ix;
            let v = f32(x[base + u32(idx)]);
            if (best.idx < 0 || v > best.val || v != v) {
                best = Best(idx, v);
            }
        }
    }
    return best;
}

@compute @workgroup_size(WG)
fn max_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    let i = grid_group(wid, nwg) * WG + lid;
    if (i >= p.count) {
        return;
    }
    let ohw = p.oh * p.ow;
    let plane = i / ohw;
    let r = i % ohw;
    let b = window_max(plane * p.ih * p.iw, r / p.ow, r % p.ow);
    y[i] = st(b.val);
}

@compute @workgroup_size(WG)
fn max_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    let i = grid_group(wid, nwg) * WG + lid;
    if (i >= p.count) {
        return;
    }
    let ihw = p.ih * p.iw;
    let plane = i / ihw;
    let r = i32(i % ihw);
    let iy = r / i32(p.iw);
    let ix = r % i32(p.iw);
    let xbase = plane * ihw;
    let ybase = plane * p.oh * p.ow;
    var acc = 0.0;
    // Windows are visited in increasing output order, like PyTorch's scatter.
    for (var kyr = 0u; kyr < p.kh; kyr++) {
        let ky = p.kh - 1u - kyr;
        let ty = iy + i32(p.pt) - i32(ky * p.dh);
        if (ty < 0 || ty % i32(p.sh) != 0) {
            continue;
        }
        let oy = u32(ty) / p.sh;
        if (oy >= p.oh) {
            continue;
        }
        for (var kxr = 0u; kxr < p.kw; kxr++) {
            let kx = p.kw - 1u - kxr;
            let tx = ix + i32(p.pl) - i32(kx * p.dw);
            if (tx < 0 || tx % i32(p.sw) != 0) {
                continue;
            }
            let ox = u32(tx) / p.sw;
            if (ox >= p.ow) {
                continue;
            }
            let b = window_max(xbase, oy, ox);
            if (b.idx == r) {
                acc += f32(gy[ybase + oy * p.ow + ox]);
            }
        }
    }
    gx[i] = st(acc);
}

// The same gradient when windows do not overlap (stride >= kernel, no
// dilation): one thread per window writes its whole window, gy at the argmax
// and 0 elsewhere, so each x is read once instead of once per candidate
// window. Inputs no window covers are cleared by the host beforehand.
// Bindings as max_backward; p.count is the number of windows (gy elements).
@compute @workgroup_size(WG)
fn max_backward_windows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                        @builtin(local_invocation_index) lid: u32) {
    let i = grid_group(wid, nwg) * WG + lid;
    if (i >= p.count) {
        return;
    }
    let ohw = p.oh * p.ow;
    let plane = i / ohw;
    let r = i % ohw;
    let oy = r / p.ow;
    let ox = r % p.ow;
    let xbase = plane * p.ih * p.iw;
    let b = window_max(xbase, oy, ox);
    let g = gy[i];
    let y0 = i32(oy * p.sh) - i32(p.pt);
    let x0 = i32(ox * p.sw) - i32(p.pl);
    for (var ky = 0u; ky < p.kh; ky++) {
        let iy = y0 + i32(ky);
        if (iy < 0 || iy >= i32(p.ih)) {
            continue;
        }
        for (var kx = 0u; kx < p.kw; kx++) {
            let ix = x0 + i32(kx);
            if (ix < 0 || ix >= i32(p.iw)) {
                continue;
            }
            let idx = iy * i32(p.iw) + ix;
            gx[xbase + u32(idx)] = select(st(0.0), g, idx == b.idx);
        }
    }
}

// Average window (oy, ox): clipped bounds and divisor (0 when the window holds no input).
struct AvgWindow {
    y0: i32,
    y1: i32,
    x0: i32,
    x1: i32,
    div: f32,
}

fn avg_window(oy: u32, ox: u32) -> AvgWindow {
    let y0 = i32(oy * p.sh) - i32(p.pt);
    let x0 = i32(ox * p.sw) - i32(p.pl);
    let y1 = min(y0 + i32(p.kh), i32(p.hend));
    let x1 = min(x0 + i32(p.kw), i32(p.wend));
    let pool = (y1 - y0) * (x1 - x0);
    let cy0 = max(y0, 0);
    let cx0 = max(x0, 0);
    let cy1 = min(y1, i32(p.ih));
    let cx1 = min(x1, i32(p.iw));
    var div = 0.0;
    if (cy0 < cy1 && cx0 < cx1) {
        div = f32(select((cy1 - cy0) * (cx1 - cx0), pool, p.include_pad != 0u));
    }
    return AvgWindow(cy0, cy1, cx0, cx1, div);
}

@compute @workgroup_size(WG)
fn avg_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    let i = grid_group(wid, nwg) * WG + lid;
    if (i >= p.count) {
        return;
    }
    let ohw = p.oh * p.ow;
    let plane = i / ohw;
    let r = i % ohw;
    let win = avg_window(r / p.ow, r % p.ow);
    if (win.div == 0.0) {
        y[i] = st(0.0);
        return;
    }
    let base = plane * p.ih * p.iw;
    var acc = 0.0;
    for (var iy = win.y0; iy < win.y1; iy++) {
        let row = base + u32(iy) * p.iw;
        for (var ix = win.x0; ix < win.x1; ix++) {
            acc += f32(x[row + u32(ix)]);
        }
    }
    y[i] = st(acc / win.div);
}

@compute @workgroup_size(WG)
fn avg_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    let i = grid_group(wid, nwg) * WG + lid;
    if (i >= p.count) {
        return;
    }
    let ihw = p.ih * p.iw;
    let plane = i / ihw;
    let r = i32(i % ihw);
    let iy = r / i32(p.iw);
    let ix = r % i32(p.iw);
    let ybase = plane * p.oh * p.ow;
    var acc = 0.0;
    for (var kyr = 0u; kyr < p.kh; kyr++) {
        let ky = p.kh - 1u - kyr;
        let ty = iy + i32(p.pt) - i32(ky);
        if (ty < 0 || ty % i32(p.sh) != 0) {
            continue;
        }
        let oy = u32(ty) / p.sh;
        if (oy >= p.oh) {
            continue;
        }
        for (var kxr = 0u; kxr < p.kw; kxr++) {
            let kx = p.kw - 1u - kxr;
            let tx = ix + i32(p.pl) - i32(kx);
            if (tx < 0 || tx % i32(p.sw) != 0) {
                continue;
            }
            let ox = u32(tx) / p.sw;
            if (ox >= p.ow) {
                continue;
            }
            // An input element never lies past ih + pad_bottom, so it is in
            // this window's clipped range; the divisor is the window's own.
            let win = avg_window(oy, ox);
            if (win.div != 0.0) {
                acc += f32(agy[ybase + oy * p.ow + ox]) / win.div;
            }
        }
    }
    agx[i] = st(acc);
}

var<workgroup> partial: array<f32, WG>;

// One workgroup per plane (p.count planes of p.ih * p.iw elements).
@compute @workgroup_size(WG)
fn global_avg_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                      @builtin(local_invocation_index) lid: u32) {
    let plane = grid_group(wid, nwg);
    if (plane >= p.count) {
        return;
    }
    let hw = p.ih * p.iw;
    let base = plane * hw;
    var acc = 0.0;
    for (var j = lid; j < hw; j += WG) {
        acc += f32(x[base + j]);
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
        y[plane] = st(partial[0] / f32(hw));
    }
}

// One thread per plane (for CPU adapters, where the barriers of the tree
// reduction above cost more than the additions): p.count planes.
@compute @workgroup_size(WG)
fn global_avg_forward_thread(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                             @builtin(local_invocation_index) lid: u32) {
    let plane = grid_group(wid, nwg) * WG + lid;
    if (plane >= p.count) {
        return;
    }
    let hw = p.ih * p.iw;
    let base = plane * hw;
    var acc = 0.0;
    for (var j = 0u; j < hw; j++) {
        acc += f32(x[base + j]);
    }
    y[plane] = st(acc / f32(hw));
}

// gx[i] = gy[plane(i)] / (ih * iw); p.count is the number of input elements.
@compute @workgroup_size(WG)
fn global_avg_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                       @builtin(local_invocation_index) lid: u32) {
    let i = grid_group(wid, nwg) * WG + lid;
    if (i >= p.count) {
        return;
    }
    let hw = p.ih * p.iw;
    agx[i] = st(f32(agy[i / hw]) / f32(hw));
}
