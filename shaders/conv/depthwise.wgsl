// Depthwise 2-D convolution (groups == input channels, one input channel per
// group, channel multiplier MULT = OC / C >= 1), forward and backward to the input.
// Output channel oc reads input channel oc / MULT; weight is [OC, 1, KH, KW].
//
// Each thread computes PER consecutive outputs along W (forward: output pixels,
// backward: input pixels), so the input row segment and the weight tap are reused
// across them from registers and cache. Backward is a gather (no atomics): every
// gx element is written exactly once.
// Storage elements are `st` (f32 or f16, aliased by the host); arithmetic is f32.

//
// Compiled without wgpu's runtime checks (`Shader::trusted`), so
// every access guards itself: threads past `items` return first; input reads
// check the row / column ranges; output gradient reads check oh < out_h,
// ow < out_w; writes check the last partial quad of a row. Divisors (quads,
// sizes, strides, multiplier) are non-zero by the host's validation (a zero-size
// output records no forward dispatch). Keep it so when editing.

// Workgroup size: the host's (`Shader::workgroup_constants`), never written here.
override WG: u32;
const PER: u32 = 4u;

struct Params {
    batch: u32,
    in_c: u32,
    in_h: u32,
    in_w: u32,
    out_c: u32,
    out_h: u32,
    out_w: u32,
    mult: u32,
    k_h: u32,
    k_w: u32,
    stride_h: u32,
    stride_w: u32,
    dil_h: u32,
    dil_w: u32,
    pad_t: u32,
    pad_l: u32,
    quads: u32, // ceil(row width / PER): threads per row
    items: u32, // threads with work
    act_alpha: f32, // epilogue activation parameters (leaky_relu, hardsigmoid)
    act_beta: f32,
    // backward: the row taps of one stride phase step by
    // step_h = stride_h / gcd(dil_h, stride_h)
    step_h: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

override HAS_BIAS: bool = false;

@group(0) @binding(0) var<uniform> p: Params;

// Epilogue activation: act() and ACT come from act.wgsl, prepended by the host.

// ---------------------------------------------------------------- forward

@group(0) @binding(1) var<storage, read> x: array<st>;
@group(0) @binding(2) var<storage, read> w: array<st>;
@group(0) @binding(3) var<storage, read> bias: array<st>;
@group(0) @binding(4) var<storage, read_write> y: array<st>;

// A forward thread's 4 outputs: row oh of channel oc of image img, columns
// ow0 .. ow0 + 3 (t < p.items).
struct OutQuad {
    oh: u32,
    oc: u32,
    img: u32,
    ow0: u32,
}

fn out_quad(t: u32) -> OutQuad {
    let q = t % p.quads;
    var r = t / p.quads;
    let oh = r % p.out_h;
    r = r / p.out_h;
    return OutQuad(oh, r % p.out_c, r / p.out_c, q * PER);
}

// The epilogue: bias, activation, and the store of the quad's outputs that
// exist (the last quad of a row may be partial).
fn store_quad(o: OutQuad, acc: vec4<f32>) {
    var b = 0.0;
    if (HAS_BIAS) {
        b = f32(bias[o.oc]);
    }
    let y_base = ((o.img * p.out_c + o.oc) * p.out_h + o.oh) * p.out_w + o.ow0;
    for (var j = 0u; j < PER; j++) {
        if (o.ow0 + j < p.out_w) {
            y[y_base + j] = st(act(acc[j] + b));
        }
    }
}

@compute @workgroup_size(WG)
fn forward(@builtin(workgroup_id) wid: vec3<u32>,
           @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) lid: u32) {
    let t = grid_thread(wid, nwg, lid, WG);
    if (t >= p.items) {
        return;
    }
    let o = out_quad(t);
    let oh = o.oh;
    let oc = o.oc;
    let img = o.img;
    let ow0 = o.ow0;
    let c = oc / p.mult;

    let x_base = (img * p.in_c + c) * p.in_h * p.in_w;
    let w_base = oc * p.k_h * p.k_w;
    let ih0 = i32(oh * p.stride_h) - i32(p.pad_t);
    let iw0 = i32(ow0 * p.stride_w) - i32(p.pad_l);
    let sw = i32(p.stride_w);
    var acc = vec4<f32>(0.0);
    for (var kh = 0u; kh < p.k_h; kh++) {
        let ih = ih0 + i32(kh * p.dil_h);
        if (u32(ih) >= p.in_h) {
            continue;
        }
        let row = x_base + u32(ih) * p.in_w;
        for (var kw = 0u; kw < p.k_w; kw++) {
            let wv = f32(w[w_base + kh * p.k_w + kw]);
            let iw = iw0 + i32(kw * p.dil_w);
            for (var j = 0u; j < PER; j++) {
                let iwj = iw + i32(j) * sw;
                if (u32(iwj) < p.in_w) {
                    acc[j] += wv * f32(x[row + u32(iwj)]);
                }
            }
        }
    }
    store_quad(o, acc);
}

// --------------------------------------- forward, kernel size and stride fixed
// forward_fixed: the outputs of `forward` for layers without dilation, with the
// kernel size and stride as pipeline constants (KH, KW, SH, SW), so the loops
// unroll; the input row segment a thread's 4 outputs need (3 * SW + KW values)
// is loaded once per kernel row instead of once per tap. The host takes it only
// when 3 * SW + KW <= SEG_MAX and KH, KW are the weight's own sizes (so the
// segment and weight indices stay in range: this module runs unchecked).

override KH: u32 = 3u;
override KW: u32 = 3u;
override SH: u32 = 1u;
override SW: u32 = 1u;
const SEG_MAX: u32 = 16u;

@compute @workgroup_size(WG)
fn forward_fixed(@builtin(workgroup_id) wid: vec3<u32>,
                 @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) lid: u32) {
    let t = grid_thread(wid, nwg, lid, WG);
    if (t >= p.items) {
        return;
    }
    let o = out_quad(t);
    let oh = o.oh;
    let oc = o.oc;
    let img = o.img;
    let ow0 = o.ow0;
    let c = oc / p.mult;

    let x_base = (img * p.in_c + c) * p.in_h * p.in_w;
    let w_base = oc * KH * KW;
    let ih0 = i32(oh * SH) - i32(p.pad_t);
    let iw0 = i32(ow0 * SW) - i32(p.pad_l);
    var acc = vec4<f32>(0.0);
    for (var kh = 0u; kh < KH; kh++) {
        let ih = ih0 + i32(kh);
        if (u32(ih) >= p.in_h) {
            continue;
        }
        let row = x_base + u32(ih) * p.in_w;
        var seg: array<f32, SEG_MAX>;
        for (var i = 0u; i < 3u * SW + KW; i++) {
            let iw = iw0 + i32(i);
            var v = 0.0;
            if (u32(iw) < p.in_w) {
                v = f32(x[row + u32(iw)]);
            }
            seg[i] = v;
        }
        for (var kw = 0u; kw < KW; kw++) {
            let wv = f32(w[w_base + kh * KW + kw]);
            acc += wv * vec4<f32>(seg[kw], seg[SW + kw], seg[2u * SW + kw], seg[3u * SW + kw]);
        }
    }
    store_quad(o, acc);
}

// --------------------------------------------------------------- backward

@group(0) @binding(1) var<storage, read> gy: array<st>;
@group(0) @binding(2) var<storage, read> bw: array<st>;
@group(0) @binding(3) var<storage, read_write> gx: array<st>;
// The output of the activation fused into the convolution before (DACT): its
// derivative multiplies gx as it is written (act.wgsl's dact_y; ACT names the
// activation). Without DACT the host binds gy here, never read.
@group(0) @binding(4) var<storage, read> ay: array<st>;
override DACT: bool = false;

@compute @workgroup_size(WG)
fn backward(@builtin(workgroup_id) wid: vec3<u32>,
            @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) lid: u32) {
    let t = grid_thread(wid, nwg, lid, WG);
    if (t >= p.items) {
        return;
    }
    let q = t % p.quads;
    var r = t / p.quads;
    let ih = r % p.in_h;
    r = r / p.in_h;
    let c = r % p.in_c;
    let img = r / p.in_c;
    let iw0 = q * PER;

    let ohw = p.out_h * p.out_w;
    let th0 = ih + p.pad_t;
    let tw0 = iw0 + p.pad_l;
    // Only the taps with (t - k*dil) % stride == 0 reach an output. Rows: those
    // are kh0 + i*step_h (kh0 < step_h), visited without a test per tap.
    var kh0 = p.k_h;
    for (var kk = 0u; kk < p.step_h && kk < p.k_h; kk++) {
        if ((kk * p.dil_h) % p.stride_h == th0 % p.stride_h) {
            kh0 = kk;
            break;
        }
    }
    // Columns: tap kw reaches output j when (kw*dil) % stride == (tw0 + j) % stride;
    // the residues are tracked incrementally (no division per tap, and none at all
    // at stride 1). The weight of a tap is read once for the 4 outputs.
    let sw = p.stride_w;
    let dil_r = p.dil_w % sw;
    var rj = vec4<u32>(0u);
    for (var j = 0u; j < PER; j++) {
        rj[j] = (tw0 + j) % sw;
    }
    var acc = vec4<f32>(0.0);
    for (var mj = 0u; mj < p.mult; mj++) {
        let oc = c * p.mult + mj;
        let g_base = (img * p.out_c + oc) * ohw;
        let w_base = oc * p.k_h * p.k_w;
        for (var kh = kh0; kh < p.k_h; kh += p.step_h) {
            let dh = kh * p.dil_h;
            if (dh > th0) {
                break;
            }
            let oh = (th0 - dh) / p.stride_h;
            if (oh >= p.out_h) {
                continue;
            }
            let row = g_base + oh * p.out_w;
            let wrow = w_base + kh * p.k_w;
            var rk = 0u; // (kw * dil_w) % stride_w
            for (var kw = 0u; kw < p.k_w; kw++) {
                let wv = f32(bw[wrow + kw]);
                let dw = kw * p.dil_w;
                for (var j = 0u; j < PER; j++) {
                    let tw = tw0 + j;
                    if (rk == rj[j] && dw <= tw) {
                        var ow = tw - dw;
                        if (sw != 1u) {
                            ow = ow / sw;
                        }
                        if (ow < p.out_w) {
                            acc[j] += wv * f32(gy[row + ow]);
                        }
                    }
                }
                rk += dil_r;
                if (rk >= sw) {
                    rk -= sw;
                }
            }
        }
    }
    let x_base = ((img * p.in_c + c) * p.in_h + ih) * p.in_w + iw0;
    for (var j = 0u; j < PER; j++) {
        if (iw0 + j < p.in_w) {
            var v = acc[j];
            if (DACT) {
                v *= dact_y(f32(ay[x_base + j]), p.act_alpha);
            }
            gx[x_base + j] = st(v);
        }
    }
}
