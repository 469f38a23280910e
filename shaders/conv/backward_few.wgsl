// Backward to the input of a dense convolution whose input has at most 4
// channels (a network's stem: RGB images), for CPU adapters.
//
// The tiled GEMM (conv.wgsl) computes such a layer as a GEMM with 1-4 columns
// padded to 16, and llvmpipe charges every load of it. Here a thread computes
// all input channels of 4 input pixels of one stride phase, so the taps that
// reach the phase are the same for every thread of a workgroup (no multiplications
// by the zeros a stride leaves), and each tap costs 4 loads of gy and IC loads
// of weights for 4 * IC FMAs.
//
// Phase (ah, aw): input pixels ih = ah + jh * stride_h, iw = aw + jw * stride_w.
// Taps reaching it: kh with (ah + pad_t - kh * dil_h) % stride_h == 0, i.e.
// kh = kh0 + t * step_h, step_h = stride_h / gcd(dil_h, stride_h); for such a kh,
// oh = jh + (ah + pad_t - kh * dil_h) / stride_h (exact division). Same for w.
// gx[img, c, ih, iw] = sum over oc and reaching taps of gy[img, oc, oh, ow] * w[oc, c, kh, kw]
// (overwritten, never accumulated; pixels no tap reaches get 0).
//
// Checked module; indices are clamped and masked anyway (gy reads outside the
// output are replaced by 0 and read index 0).

struct Params {
    batch: u32,
    in_c: u32,
    in_h: u32,
    in_w: u32,
    out_c: u32,
    out_h: u32,
    out_w: u32,
    k_h: u32,
    k_w: u32,
    stride_h: u32,
    stride_w: u32,
    dil_h: u32,
    dil_w: u32,
    pad_t: u32,
    pad_l: u32,
    step_h: u32,
    step_w: u32,
    ph_rows: u32, // ceil(in_h / stride_h)
    ph_cols: u32, // ceil(in_w / stride_w)
    tiles: u32,   // workgroups per phase
    total_wg: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

// Workgroup size: the host's (`Shader::workgroup_constants`), never written here.
override WG: u32;

@group(0) @binding(0) var<uniform> p: Params;
// Storage elements are `st` (f32 or f16, aliased by the host); arithmetic is f32.
@group(0) @binding(1) var<storage, read> gy: array<st>;
@group(0) @binding(2) var<storage, read> w: array<st>;
@group(0) @binding(3) var<storage, read_write> gx: array<st>;

// First tap k >= 0 with (a + pad - k * dil) % stride == 0 (k_max if none).
fn first_tap(a: u32, pad: u32, dil: u32, stride: u32, step: u32, k_max: u32) -> u32 {
    for (var k = 0u; k < min(step, k_max); k++) {
        if ((i32(a + pad) - i32(k * dil)) % i32(stride) == 0) {
            return k;
        }
    }
    return k_max;
}

@compute @workgroup_size(WG)
fn backward(@builtin(workgroup_id) wid: vec3<u32>,
            @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) lid: u32) {
    let wg = grid_group(wid, nwg);
    if (wg >= p.total_wg) {
        return;
    }
    let phase = wg / p.tiles;
    let tile = wg % p.tiles;
    let ah = phase / p.stride_w;
    let aw = phase % p.stride_w;
    let per_phase = p.batch * p.ph_rows * p.ph_cols;
    let ohw = i32(p.out_h * p.out_w);

    // this thread's 4 pixels (WG apart), their coordinates and validity
    var jh: vec4<i32>;
    var jw: vec4<i32>;
    var gbase: vec4<i32>; // gy offset of (img, oc 0, row jh, col jw)
    var xoff: vec4<u32>;  // gx offset of (img, c 0, ih, iw)
    var ok: vec4<bool>;
    for (var t = 0u; t < 4u; t++) {
        let q = tile * (4u * WG) + t * WG + lid;
        let qc = min(q, per_phase - 1u);
        let img = qc / (p.ph_rows * p.ph_cols);
        let r = qc % (p.ph_rows * p.ph_cols);
        let h = r / p.ph_cols;
        let c = r % p.ph_cols;
        let ih = ah + h * p.stride_h;
        let iw = aw + c * p.stride_w;
        ok[t] = q < per_phase && ih < p.in_h && iw < p.in_w;
        jh[t] = i32(h);
        jw[t] = i32(c);
        gbase[t] = i32(img * p.out_c) * ohw + i32(h * p.out_w + c);
        xoff[t] = ((img * p.in_c) * p.in_h + min(ih, p.in_h - 1u)) * p.in_w + min(iw, p.in_w - 1u);
    }

    let kh0 = first_tap(ah, p.pad_t, p.dil_h, p.stride_h, p.step_h, p.k_h);
    let kw0 = first_tap(aw, p.pad_l, p.dil_w, p.stride_w, p.step_w, p.k_w);
    var acc: array<vec4<f32>, 4>; // [input channel], over the 4 pixels
    let khw = p.k_h * p.k_w;
    for (var kh = kh0; kh < p.k_h; kh += p.step_h) {
        let oh_off = (i32(ah + p.pad_t) - i32(kh * p.dil_h)) / i32(p.stride_h);
        let oh = jh + vec4(oh_off);
        let row_ok = oh >= vec4(0) & oh < vec4(i32(p.out_h));
        for (var kw = kw0; kw < p.k_w; kw += p.step_w) {
            let ow_off = (i32(aw + p.pad_l) - i32(kw * p.dil_w)) / i32(p.stride_w);
            let ow = jw + vec4(ow_off);
            let m = ok & row_ok & ow >= vec4(0) & ow < vec4(i32(p.out_w));
            let g0 = select(vec4(0), gbase + vec4(oh_off * i32(p.out_w) + ow_off), m);
            let tap = kh * p.k_w + kw;
            for (var oc = 0u; oc < p.out_c; oc++) {
                let go = g0 + vec4(i32(oc) * ohw);
                let gi = vec4<u32>(select(vec4(0), go, m));
                let g = select(vec4(0.0),
                               vec4<f32>(vec4<st>(gy[gi.x], gy[gi.y], gy[gi.z], gy[gi.w])), m);
                let wo = oc * p.in_c * khw + tap;
                for (var c = 0u; c < 4u; c++) {
                    if (c < p.in_c) {
                        acc[c] = fma(g, vec4(f32(w[wo + c * khw])), acc[c]);
                    }
                }
            }
        }
    }
    let plane = p.in_h * p.in_w;
    for (var c = 0u; c < 4u; c++) {
        if (c < p.in_c) {
            for (var t = 0u; t < 4u; t++) {
                if (ok[t]) {
                    gx[xoff[t] + c * plane] = st(acc[c][t]);
                }
            }
        }
    }
}
