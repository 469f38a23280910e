// Depthwise convolution, stride 1, one input channel per output channel, for CPU
// adapters: 8 consecutive outputs (two quads) of a plane per thread, read as vec4
// blocks.
//
// On llvmpipe each load instruction costs a loop over the SIMD lanes whatever its
// width (see pointwise_direct.wgsl), so this kernel reads the input as whole vec4
// blocks: per kernel row, 3 aligned blocks hold the 4 + KW - 1 inputs a quad of
// outputs needs (4 blocks for two adjacent quads), and every tap takes its 4
// inputs out of them by a shift. The shift is (row offset * W - PAD_L) mod 4, a
// constant once the tap loops are unrolled, because W % 4 (WMOD) is an override
// constant. 4 KH vec4 loads and KH KW weight loads per 8 outputs, against
// 10 KH KW scalar loads in depthwise.wgsl.
//
// Positions are flat within a plane (p = row * W + col), so a quad may span two
// rows: every tap masks its 4 inputs by their own row and column ranges.
//
// The same entry computes the backward pass to the input of a 'same' (output
// size = input size) convolution: gx = conv(gy, w flipped), FLIP set, with the
// padding K - 1 - pad passed as PAD_T / PAD_L.
//
// Needs H * W % 4 == 0 (planes start on vec4 boundaries); the host checks it and
// the shapes. Storage elements are `st` (f32 or f16, aliased by the host);
// arithmetic is f32. Checked module: every block index is also clamped to its
// plane.

struct Params {
    planes: u32,   // batch * channels
    c: u32,        // channels
    h: u32,
    w: u32,
    quads: u32,    // h * w / 4
    pairs: u32,    // ceil(quads / 2): threads per plane
    items: u32,    // planes * pairs
    _pad: u32,
    act_alpha: f32,
    act_beta: f32,
}

override KH: u32 = 3u;
override KW: u32 = 3u;
override PAD_T: u32 = 1u;
override PAD_L: u32 = 1u;
override WMOD: u32 = 0u;     // w % 4
override FLIP: bool = false; // backward: weights read rotated by 180 degrees
override HAS_BIAS: bool = false;
// Epilogue activation: act4() and ACT come from act.wgsl, window() from
// window.wgsl; the host prepends both.

// Workgroup size: the host's (`Shader::workgroup_constants`), never written here.
override WG: u32;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<vec4<st>>;
@group(0) @binding(2) var<storage, read> w: array<st>;
@group(0) @binding(3) var<storage, read> bias: array<st>;
@group(0) @binding(4) var<storage, read_write> y: array<vec4<st>>;
// Backward passes with DACT: the output of the activation fused into the
// convolution before, whose derivative multiplies gx as it is written
// (act.wgsl's dact_y; ACT then names that activation instead of an epilogue).
// Otherwise the host binds the input here, never read.
@group(0) @binding(5) var<storage, read> ay: array<vec4<st>>;
override DACT: bool = false;

// The value stored for block `i`: the forward epilogue's act4(v), or (DACT)
// the gradient v through the activation's derivative.
fn out4(i: u32, v: vec4<f32>, alpha: f32) -> vec4<st> {
    if (DACT) {
        return vec4<st>(v * dact_y4(vec4<f32>(ay[i]), alpha));
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
    let plane = t / p.pairs;
    let q = 2u * (t - plane * p.pairs);
    let second = q + 1u < p.quads; // the plane's last pair may hold one quad
    let ch = plane % p.c;
    let base = plane * p.quads;
    let quads = quads_at(4u * q);
    let w0 = ch * KH * KW;
    var acc = vec4(0.0);
    var acc2 = vec4(0.0);
    for (var kh = 0u; kh < KH; kh++) {
        let k = kernel_row(quads, base, kh);
        for (var kw = 0u; kw < KW; kw++) {
            var tap = kh * KW + kw;
            if (FLIP) {
                tap = KH * KW - 1u - tap;
            }
            let wt = vec4(f32(w[w0 + tap]));
            let v = taps(quads, k, kw);
            acc = fma(v.a, wt, acc);
            acc2 = fma(v.b, wt, acc2);
        }
    }
    if (HAS_BIAS) {
        let b = vec4(f32(bias[ch]));
        acc += b;
        acc2 += b;
    }
    y[base + q] = out4(base + q, acc, p.act_alpha);
    if (second) {
        y[base + q + 1u] = out4(base + q + 1u, acc2, p.act_alpha);
    }
}

// ------------------------------------------------------ backward, stride 2
// gx of a stride-2 depthwise convolution whose output is exactly half the
// input (out_w = w / 2, 'same' padding on an even width), for w % 8 == 0: each
// thread computes 8 consecutive gx of one row. A kernel row kh reaches input row
// ih when ih + PAD_T - kh is even (then gy row (ih + PAD_T - kh) / 2); a tap kw
// reaches gx column 8 g + i when i + PAD_L - kw is even, at gy column
// 4 g + (i + PAD_L - kw) / 2: for each tap the 4 lanes of one parity read 4
// consecutive gy values, taken from the 3 blocks that hold gy columns
// 4 g - 4 .. 4 g + 7. KH, KW, PAD_T, PAD_L as above (the forward padding);
// FLIP and WMOD unused.

struct Params2 {
    planes: u32,
    h: u32,       // gx rows
    w8: u32,      // gx columns / 8: threads per row
    oh: u32,      // gy rows
    ow4: u32,     // gy columns / 4: blocks per gy row
    items: u32,   // planes * h * w8
    c: u32,
    act_alpha: f32, // DACT: the activation's parameter
}

@group(0) @binding(0) var<uniform> p2: Params2;

// Block `i` of the gy row starting at block `base` (zero outside the row).
fn row_block(base: u32, i: i32) -> vec4<f32> {
    let inside = i >= 0 && i < i32(p2.ow4);
    let v = vec4<f32>(a[base + u32(clamp(i, 0, i32(p2.ow4) - 1))]);
    return select(vec4(0.0), v, inside);
}

@compute @workgroup_size(WG)
fn backward_s2(@builtin(workgroup_id) wid: vec3<u32>,
               @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    let t = grid_thread(wid, nwg, lid, WG);
    if (t >= p2.items) {
        return;
    }
    let g = t % p2.w8;
    let r = t / p2.w8;
    let ih = r % p2.h;
    let plane = r / p2.h;
    let ch = plane % p2.c;
    let w0 = ch * KH * KW;
    var acc_a = vec4(0.0); // gx columns 8 g + 0..3
    var acc_b = vec4(0.0); // 8 g + 4..7
    for (var kh = 0u; kh < KH; kh++) {
        let num = i32(ih + PAD_T) - i32(kh);
        let ohr = num / 2;
        let live = num >= 0 && (num & 1) == 0 && ohr < i32(p2.oh);
        let base = (plane * p2.oh + u32(clamp(ohr, 0, i32(p2.oh) - 1))) * p2.ow4;
        let l0 = row_block(base, i32(g) - 1);
        let l1 = row_block(base, i32(g));
        let l2 = row_block(base, i32(g) + 1);
        for (var kw = 0u; kw < KW; kw++) {
            let wt = select(0.0, f32(w[w0 + kh * KW + kw]), live);
            let d = i32(PAD_L) - i32(kw);
            if ((d & 1) == 0) {
                let v = window(l0, l1, l2, u32(4 + d / 2));
                acc_a = fma(vec4(v.x, 0.0, v.y, 0.0), vec4(wt), acc_a);
                acc_b = fma(vec4(v.z, 0.0, v.w, 0.0), vec4(wt), acc_b);
            } else {
                let v = window(l0, l1, l2, u32(4 + (d + 1) / 2));
                acc_a = fma(vec4(0.0, v.x, 0.0, v.y), vec4(wt), acc_a);
                acc_b = fma(vec4(0.0, v.z, 0.0, v.w), vec4(wt), acc_b);
            }
        }
    }
    let out = (plane * p2.h + ih) * (2u * p2.w8) + 2u * g;
    if (DACT) {
        y[out] = vec4<st>(acc_a * dact_y4(vec4<f32>(ay[out]), p2.act_alpha));
        y[out + 1u] = vec4<st>(acc_b * dact_y4(vec4<f32>(ay[out + 1u]), p2.act_alpha));
    } else {
        y[out] = vec4<st>(acc_a);
        y[out + 1u] = vec4<st>(acc_b);
    }
}
