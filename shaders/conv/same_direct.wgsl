// Dense KH x KW convolution, stride 1, 'same' size (output = input size), for
// CPU adapters, forward and backward to the input (MNIST-style and ResNet-style
// 3x3 layers): the spatial sibling of pointwise_direct.wgsl, built like
// depthwise_direct.wgsl.
//
// One thread computes 8 consecutive pixels of a plane (two quads, positions flat
// within the plane) for 4 output channels: 8 vec4 accumulators. For every
// reduction channel r and kernel row kh it loads the 4 aligned vec4 blocks that
// hold the 8 + KW - 1 inputs, takes each tap's 4 inputs out of them by a shift
// that WMOD (W % 4) makes a specialisation constant, and multiplies them by one
// vec4 of weights: the 4 output channels' weights of that tap, contiguous after
// `repack`. Per (r, kh): 4 block loads and KW weight loads for 8 KW vec4 FMAs.
//
//   forward:  a = x (r over input channels), y = conv output (o over output
//             channels), weights w[o, r, kh, kw]; bias and activation fused.
//   backward: a = gy (r over output channels), y = gx (o over input channels),
//             weights w[r, o, KH-1-kh, KW-1-kw] (FLIP), padding K - 1 - pad.
//
// Storage elements are `st` (f32 or f16, aliased by the host); arithmetic is f32.
// Checked module; block indices are also clamped to their plane, and masked.

struct Params {
    n: u32,       // images
    r: u32,       // reduction channels (channels of a)
    nout: u32,    // output channels (channels of y)
    nout4: u32,   // ceil(nout / 4): weight vec4s per tap
    h: u32,
    w: u32,
    quads: u32,   // h * w / 4 (main_s2: output rows)
    pairs: u32,   // ceil(quads / 2) (main_s2: output quads per row)
    items: u32,   // n * nout4 * pairs (main); repacked elements (repack);
                  // n * nout4 / 2 * output rows * quads per row (main_s2)
    act_alpha: f32,
    act_beta: f32,
    _pad: u32,
}

override KH: u32 = 3u;
override KW: u32 = 3u;
override PAD_T: u32 = 1u;
override PAD_L: u32 = 1u;
override WMOD: u32 = 0u;
override FLIP: bool = false;
override HAS_BIAS: bool = false;
// Epilogue activation: act4() and ACT come from act.wgsl, window() from
// window.wgsl; the host prepends both.

// Workgroup size: the host's (`Shader::workgroup_constants`), never written here.
override WG: u32;

@group(0) @binding(0) var<uniform> p: Params;

// ------------------------------------------------------------------ repack
// wt[((r * KH + kh) * KW + kw) * 4 nout4 + o] = the weight of tap (kh, kw) from
// reduction channel r to output channel o (0 for o >= nout).
@group(0) @binding(1) var<storage, read> w_in: array<st>;
@group(0) @binding(2) var<storage, read_write> w_out: array<st>;

@compute @workgroup_size(WG)
fn repack(@builtin(workgroup_id) wid: vec3<u32>,
          @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) lid: u32) {
    let i = grid_thread(wid, nwg, lid, WG);
    if (i >= p.items) {
        return;
    }
    let width = 4u * p.nout4;
    let o = i % width;
    let t = i / width;
    let kw = t % KW;
    let kh = (t / KW) % KH;
    let r = t / (KW * KH);
    var v = st(0.0);
    if (o < p.nout) {
        if (FLIP) {
            v = w_in[((r * p.nout + o) * KH + (KH - 1u - kh)) * KW + (KW - 1u - kw)];
        } else {
            v = w_in[((o * p.r + r) * KH + kh) * KW + kw];
        }
    }
    w_out[i] = v;
}

// -------------------------------------------------------------------- main
@group(0) @binding(1) var<storage, read> a: array<vec4<st>>;
@group(0) @binding(2) var<storage, read> wt: array<vec4<st>>;
@group(0) @binding(3) var<storage, read> bias: array<st>;
@group(0) @binding(4) var<storage, read_write> y: array<vec4<st>>;
// Backward passes with DACT: the output of the activation fused into the
// convolution before, whose derivative multiplies gx as it is written
// (act.wgsl's dact_y; ACT then names that activation instead of an epilogue).
// Otherwise the host binds `a` here, never read.
@group(0) @binding(5) var<storage, read> ay: array<vec4<st>>;
override DACT: bool = false;

// What is stored at block `i`: the forward epilogue's act4(v), or (DACT) the
// gradient v through the activation's derivative.
fn out4(i: u32, v: vec4<f32>) -> vec4<st> {
    if (DACT) {
        return vec4<st>(v * dact_y4(vec4<f32>(ay[i]), p.act_alpha));
    }
    return vec4<st>(act4(v));
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>,
        @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let t = grid_thread(wid, nwg, lid, WG);
    if (t >= p.items) {
        return;
    }
    let pair = t % p.pairs;
    let rest = t / p.pairs;
    let o4 = rest % p.nout4;
    let img = rest / p.nout4;
    let q = 2u * pair;
    let second = q + 1u < p.quads;
    let quads = quads_at(4u * q);
    // first quad (c) and second quad (d), output channels 4 o4 + 0..3; plain
    // variables, not arrays, so that they stay in registers
    var c0 = vec4(0.0);
    var c1 = vec4(0.0);
    var c2 = vec4(0.0);
    var c3 = vec4(0.0);
    var d0 = vec4(0.0);
    var d1 = vec4(0.0);
    var d2 = vec4(0.0);
    var d3 = vec4(0.0);
    for (var r = 0u; r < p.r; r++) {
        let base = (img * p.r + r) * p.quads;
        for (var kh = 0u; kh < KH; kh++) {
            let k = kernel_row(quads, base, kh);
            let wrow = ((r * KH + kh) * KW) * p.nout4 + o4;
            for (var kw = 0u; kw < KW; kw++) {
                let v = taps(quads, k, kw);
                let va = v.a;
                let vb = v.b;
                let wv = vec4<f32>(wt[wrow + kw * p.nout4]);
                c0 = fma(va, vec4(wv.x), c0);
                c1 = fma(va, vec4(wv.y), c1);
                c2 = fma(va, vec4(wv.z), c2);
                c3 = fma(va, vec4(wv.w), c3);
                d0 = fma(vb, vec4(wv.x), d0);
                d1 = fma(vb, vec4(wv.y), d1);
                d2 = fma(vb, vec4(wv.z), d2);
                d3 = fma(vb, vec4(wv.w), d3);
            }
        }
    }
    emit(img, 4u * o4, q, second, c0, d0);
    emit(img, 4u * o4 + 1u, q, second, c1, d1);
    emit(img, 4u * o4 + 2u, q, second, c2, d2);
    emit(img, 4u * o4 + 3u, q, second, c3, d3);
}

// Bias, activation and stores of output channel o's two quads.
fn emit(img: u32, o: u32, q: u32, second: bool, ca: vec4<f32>, cb: vec4<f32>) {
    if (o >= p.nout) {
        return;
    }
    var va = ca;
    var vb = cb;
    if (HAS_BIAS) {
        let b = vec4(f32(bias[o]));
        va += b;
        vb += b;
    }
    let plane = (img * p.nout + o) * p.quads;
    y[plane + q] = out4(plane + q, va);
    if (second) {
        y[plane + q + 1u] = out4(plane + q + 1u, vb);
    }
}

// ------------------------------------------------------- forward, stride 2
// Dense stride-2 forward (stems, downsampling layers) where output rows hold
// whole quads (out_w % 4 == 0) and input rows whole blocks (w % 4 == 0): one
// thread computes 4 consecutive outputs of a row for 8 output channels. The
// inputs of output column 4 k + j at tap kw sit at input column
// 8 k - PAD_L + 2 j + kw, inside the 4 blocks holding columns 8 k - 4 .. 8 k + 11
// (PAD_L <= 4, KW <= 5), read with a stride of 2 by window2. Weights as
// `repack` leaves them, p.nout4 even. Same bias and activation as `main`.

// main_s2 reads the parameters as: h, w the input size (w % 4 == 0), quads the
// output rows, pairs the output quads per row, items n * (nout4 / 2) * rows *
// quads per row.
fn out_rows() -> u32 { return p.quads; }
fn out_quads() -> u32 { return p.pairs; }
fn in_blocks() -> u32 { return p.w / 4u; }

// Elements o, o + 2, o + 4, o + 6 (o < 10) of the 16 in (b0, b1, b2, b3).
fn window2(b0: vec4<f32>, b1: vec4<f32>, b2: vec4<f32>, b3: vec4<f32>, o: u32) -> vec4<f32> {
    switch o {
        case 0u: { return vec4(b0.xz, b1.xz); }
        case 1u: { return vec4(b0.yw, b1.yw); }
        case 2u: { return vec4(b0.z, b1.xz, b2.x); }
        case 3u: { return vec4(b0.w, b1.yw, b2.y); }
        case 4u: { return vec4(b1.xz, b2.xz); }
        case 5u: { return vec4(b1.yw, b2.yw); }
        case 6u: { return vec4(b1.z, b2.xz, b3.x); }
        case 7u: { return vec4(b1.w, b2.yw, b3.y); }
        case 8u: { return vec4(b2.xz, b3.xz); }
        default: { return vec4(b2.yw, b3.yw); }
    }
}

// Block `i` of the input row starting at block `base` (zero outside the row).
fn row_block2(base: u32, i: i32) -> vec4<f32> {
    let inside = i >= 0 && i < i32(in_blocks());
    let v = vec4<f32>(a[base + u32(clamp(i, 0, i32(in_blocks()) - 1))]);
    return select(vec4(0.0), v, inside);
}

// Bias, activation and store of output channel o's quad.
fn emit_s2(img: u32, o: u32, oh: u32, k: u32, acc: vec4<f32>) {
    if (o >= p.nout) {
        return;
    }
    var v = acc;
    if (HAS_BIAS) {
        v += vec4(f32(bias[o]));
    }
    y[((img * p.nout + o) * out_rows() + oh) * out_quads() + k] = vec4<st>(act4(v));
}

@compute @workgroup_size(WG)
fn main_s2(@builtin(workgroup_id) wid: vec3<u32>,
           @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) lid: u32) {
    let t = grid_thread(wid, nwg, lid, WG);
    if (t >= p.items) {
        return;
    }
    let k = t % out_quads();
    var rest = t / out_quads();
    let oh = rest % out_rows();
    rest = rest / out_rows();
    let pairs = p.nout4 / 2u;
    let o8 = rest % pairs;
    let img = rest / pairs;
    let iw = i32(in_blocks() * 4u);
    // input columns of the 4 outputs at tap 0
    let col0 = vec4(i32(8u * k) - i32(PAD_L)) + vec4(0, 2, 4, 6);
    var c0 = vec4(0.0);
    var c1 = vec4(0.0);
    var c2 = vec4(0.0);
    var c3 = vec4(0.0);
    var c4 = vec4(0.0);
    var c5 = vec4(0.0);
    var c6 = vec4(0.0);
    var c7 = vec4(0.0);
    for (var r = 0u; r < p.r; r++) {
        for (var kh = 0u; kh < KH; kh++) {
            let ih = i32(2u * oh + kh) - i32(PAD_T);
            let row_ok = ih >= 0 && ih < i32(p.h);
            let base = ((img * p.r + r) * p.h + u32(clamp(ih, 0, i32(p.h) - 1))) * in_blocks();
            let b0 = row_block2(base, i32(2u * k) - 1);
            let b1 = row_block2(base, i32(2u * k));
            let b2 = row_block2(base, i32(2u * k) + 1);
            let b3 = row_block2(base, i32(2u * k) + 2);
            let wrow = ((r * KH + kh) * KW) * p.nout4 + 2u * o8;
            for (var kw = 0u; kw < KW; kw++) {
                let cc = col0 + vec4(i32(kw));
                let ok = vec4(row_ok) & cc >= vec4(0) & cc < vec4(iw);
                let v = select(vec4(0.0), window2(b0, b1, b2, b3, 4u - PAD_L + kw), ok);
                let wa = vec4<f32>(wt[wrow + kw * p.nout4]);
                let wb = vec4<f32>(wt[wrow + kw * p.nout4 + 1u]);
                c0 = fma(v, vec4(wa.x), c0);
                c1 = fma(v, vec4(wa.y), c1);
                c2 = fma(v, vec4(wa.z), c2);
                c3 = fma(v, vec4(wa.w), c3);
                c4 = fma(v, vec4(wb.x), c4);
                c5 = fma(v, vec4(wb.y), c5);
                c6 = fma(v, vec4(wb.z), c6);
                c7 = fma(v, vec4(wb.w), c7);
            }
        }
    }
    let o = 8u * o8;
    emit_s2(img, o, oh, k, c0);
    emit_s2(img, o + 1u, oh, k, c1);
    emit_s2(img, o + 2u, oh, k, c2);
    emit_s2(img, o + 3u, oh, k, c3);
    emit_s2(img, o + 4u, oh, k, c4);
    emit_s2(img, o + 5u, oh, k, c5);
    emit_s2(img, o + 6u, oh, k, c6);
    emit_s2(img, o + 7u, oh, k, c7);
}
