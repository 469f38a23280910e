// 2-D convolution as a tiled implicit GEMM, forward and backward to the input.
//
// Forward (entry `forward`), per group g:
//   C[m, n] = sum_k A[m, k] * B[k, n]
//   m = (image, oh, ow)  over N*OH*OW output pixels
//   n = output channel within the group (OC / groups)
//   k = (ic, kh, kw)     over ICg*KH*KW (ic within the group)
//   A = the input gathered at ih = oh*stride - pad_top + kh*dil (zero in the padding)
//   B = weight[g*OCg + n, ic, kh, kw] (row-major [OC, K], so B[k, n] = w[n*K + k])
//   y[image, g*OCg + n, oh, ow] = C[m, n] (+ bias)
//
// Backward to the input, stride 1 (entry `backward`), per group g:
//   m = (image, ih, iw)  over N*IH*IW input pixels
//   n = input channel within the group (ICg)
//   k = (oc, kh, kw)     over OCg*KH*KW
//   A = gy gathered at oh = (ih + pad_top - kh*dil) / stride when that divides
//       exactly and lands inside [0, OH) (zero otherwise), same for w
//   B = weight[g*OCg + oc, n, kh, kw]
//   gx[image, g*ICg + n, ih, iw] = C[m, n]   (overwritten, never accumulated)
//
// Backward to the input, stride > 1 (entry `backward_phased`): the input pixels
// split into stride_h x stride_w phases (ih % stride_h, iw % stride_w); in a phase
// only the taps kh with (ih + pad_top - kh*dil) % stride_h == 0 contribute, and
// they are the same for every pixel of the phase: kh = kh0 + t*step_h, so each
// phase is a dense GEMM over its own taps (no multiplications by the zeros the
// stride-1 formulation would gather), per group g and phase (ah, aw):
//   m = (image, jh, jw)  ih = ah + jh*stride_h, iw = aw + jw*stride_w
//   k = (oc, th, tw)     kh = kh0 + th*step_h, kw = kw0 + tw*step_w
//   A = gy[image, g*OCg + oc, oh0 + jh - th*dstep_h, ow0 + jw - tw*dstep_w]
//       (zero outside [0, OH) x [0, OW)), B = weight[g*OCg + oc, n, kh, kw]
// A phase without taps (e.g. a 1x1 kernel's odd rows) writes zeros.
//
// Tiling: one workgroup computes a BM x BN tile of C with 16 x 16 threads, each
// thread a 4 x 4 register block (4 consecutive m by 4 consecutive n). K advances
// BK at a time through workgroup memory; the next K slice is fetched from global
// memory into registers while the current one is multiplied (one-stage prefetch).
// The flat workgroup index is (group, m tile, n tile) with the n tile fastest, so
// neighbouring workgroups share their A (input) tile in cache.
//
// Compiled without wgpu's runtime checks (Context::kernel's TRUSTED_SHADERS), so
// every access guards itself: A / B loads check m < gemm_m, k < gemm_k, n < gemm_n
// and the input / output coordinate ranges before indexing; stores check
// m < gemm_m and n < gemm_n (partial tiles); workgroup-memory indices are bounded
// by the tile constants; workgroups past total_wg return before any division by
// tiles_n / tiles_m; every divisor (kernel, image, tile and stride sizes) is
// non-zero by the host's shape validation; all loops have uniform bounds.
// Keep it so when editing.
//
// Tile sizes live here. The loaders assume BM == BN == 64, BK == 16 and 256
// threads: every thread moves 4 elements of A and 4 of B per K slice.

const BM: u32 = 64u;
const BN: u32 = 64u;
const BK: u32 = 16u;
const THREADS_X: u32 = 16u; // along m, 4 outputs each
const BM4: u32 = 16u;       // BM / 4: vec4 columns of a tile_a row
const BN4P: u32 = 17u;      // BN / 4 + 1: tile_b row stride, padded against bank conflicts

struct Params {
    batch: u32,
    in_c: u32,
    in_h: u32,
    in_w: u32,
    out_c: u32,
    out_h: u32,
    out_w: u32,
    groups: u32,
    k_h: u32,
    k_w: u32,
    stride_h: u32,
    stride_w: u32,
    dil_h: u32,
    dil_w: u32,
    pad_t: u32,
    pad_l: u32,
    icg: u32,
    ocg: u32,
    gemm_m: u32,
    gemm_n: u32,
    gemm_k: u32,
    tiles_m: u32,
    tiles_n: u32,
    total_wg: u32,
    act_alpha: f32, // epilogue activation parameters (leaky_relu, hardsigmoid)
    act_beta: f32,
    // backward_phased only (see there):
    step_h: u32,    // stride_h / gcd(dil_h, stride_h): tap step within a phase
    step_w: u32,
    dstep_h: u32,   // dil_h / gcd(dil_h, stride_h): output step per tap step
    dstep_w: u32,
    ph_rows: u32,   // ceil(in_h / stride_h): input rows of the largest phase
    ph_cols: u32,   // ceil(in_w / stride_w)
}

override HAS_BIAS: bool = false;

@group(0) @binding(0) var<uniform> p: Params;

// Epilogue activation, codes and formulas as in activation.wgsl (keep in sync):
//   0 relu, 1 relu6, 2 leaky_relu(alpha), 3 sigmoid, 4 silu, 5 hardswish,
//   6 hardsigmoid(alpha x + beta clamped to [0, 1]), 7 identity
override ACT: u32 = 7u;

fn act(v: f32) -> f32 {
    switch ACT {
        case 0u: { return max(v, 0.0); }
        case 1u: { return clamp(v, 0.0, 6.0); }
        case 2u: { return select(v * p.act_alpha, v, v >= 0.0); }
        case 3u: { return 1.0 / (1.0 + exp(-v)); }
        case 4u: { return v * (1.0 / (1.0 + exp(-v))); }
        case 5u: { return v * clamp(v + 3.0, 0.0, 6.0) / 6.0; }
        case 6u: { return clamp(p.act_alpha * v + p.act_beta, 0.0, 1.0); }
        default: { return v; }
    }
}

// A tile, [BK][BM] as vec4 along m.
var<workgroup> tile_a: array<vec4<f32>, 256>;   // BK * BM4
// B tile, [BK][BN] as vec4 along n, rows padded to BN4P.
var<workgroup> tile_b: array<vec4<f32>, 272>;   // BK * BN4P

struct Acc {
    c0: vec4<f32>, // n = 4*ty + 0, components over m = 4*tx + 0..3
    c1: vec4<f32>,
    c2: vec4<f32>,
    c3: vec4<f32>,
}

// Multiply the tiles in workgroup memory into the thread's 4 x 4 block.
fn mma(acc_in: Acc, tx: u32, ty: u32) -> Acc {
    var acc = acc_in;
    for (var kk = 0u; kk < BK; kk++) {
        let a = tile_a[kk * BM4 + tx];
        let b = tile_b[kk * BN4P + ty];
        acc.c0 += a * b.x;
        acc.c1 += a * b.y;
        acc.c2 += a * b.z;
        acc.c3 += a * b.w;
    }
    return acc;
}

// Store this thread's 4 A values: rows k = kq..kq+3 of column m.
fn store_a(kq: u32, m: u32, v: vec4<f32>) {
    let col = m / 4u;
    let c = m % 4u;
    tile_a[(kq + 0u) * BM4 + col][c] = v.x;
    tile_a[(kq + 1u) * BM4 + col][c] = v.y;
    tile_a[(kq + 2u) * BM4 + col][c] = v.z;
    tile_a[(kq + 3u) * BM4 + col][c] = v.w;
}

fn flat_wg(wid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return wid.x + wid.y * nwg.x;
}

fn pick(v: vec4<f32>, i: u32) -> f32 {
    return select(select(v.w, v.z, i == 2u), select(v.y, v.x, i == 0u), i < 2u);
}

// ---------------------------------------------------------------- forward

@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<f32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;

// Forward A loader state: this thread always loads column m = lid % BM of A.
var<private> fa_ok: bool;
var<private> fa_ih0: i32;
var<private> fa_iw0: i32;
var<private> fa_base: u32;

// 4 consecutive k of this thread's A column, starting at k.
fn fwd_load_a(k: u32) -> vec4<f32> {
    var v = vec4<f32>(0.0);
    if (!fa_ok) {
        return v;
    }
    let khw = p.k_h * p.k_w;
    var ic = k / khw;
    let r = k - ic * khw;
    var kh = r / p.k_w;
    var kw = r - kh * p.k_w;
    for (var i = 0u; i < 4u; i++) {
        if (k + i < p.gemm_k) {
            let ih = fa_ih0 + i32(kh * p.dil_h);
            let iw = fa_iw0 + i32(kw * p.dil_w);
            if (u32(ih) < p.in_h && u32(iw) < p.in_w) {
                v[i] = x[fa_base + (ic * p.in_h + u32(ih)) * p.in_w + u32(iw)];
            }
        }
        kw += 1u;
        if (kw == p.k_w) {
            kw = 0u;
            kh += 1u;
            if (kh == p.k_h) {
                kh = 0u;
                ic += 1u;
            }
        }
    }
    return v;
}

// B loader: thread loads k = k0 + lid % BK for n = lid / BK + 16 i (k fastest:
// weight rows are contiguous along k).
// `n_left` is how many columns of this tile exist.
fn fwd_load_b(k: u32, n: u32, w_row0: u32, n_left: u32) -> vec4<f32> {
    var v = vec4<f32>(0.0);
    if (k < p.gemm_k) {
        for (var i = 0u; i < 4u; i++) {
            let nn = n + 16u * i;
            if (nn < n_left) {
                v[i] = w[(w_row0 + nn) * p.gemm_k + k];
            }
        }
    }
    return v;
}

fn fwd_store_b(kl: u32, nl: u32, v: vec4<f32>) {
    for (var i = 0u; i < 4u; i++) {
        let nn = nl + 16u * i;
        tile_b[kl * BN4P + nn / 4u][nn % 4u] = v[i];
    }
}

@compute @workgroup_size(16, 16)
fn forward(@builtin(workgroup_id) wid: vec3<u32>,
           @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) lid: u32) {
    let wg = flat_wg(wid, nwg);
    if (wg >= p.total_wg) {
        return;
    }
    let tn = wg % p.tiles_n;
    let rest = wg / p.tiles_n;
    let tm = rest % p.tiles_m;
    let g = rest / p.tiles_m;
    let m0 = tm * BM;
    let n0 = tn * BN;
    let tx = lid % THREADS_X;
    let ty = lid / THREADS_X;
    let ohw = p.out_h * p.out_w;
    let in_hw = p.in_h * p.in_w;

    // A loader: column am, rows akq..akq+3 of each K slice.
    let am = lid % BM;
    let akq = (lid / BM) * 4u;
    let m = m0 + am;
    fa_ok = m < p.gemm_m;
    let img = m / ohw;
    let pix = m - img * ohw;
    let oh = pix / p.out_w;
    let ow = pix - oh * p.out_w;
    fa_ih0 = i32(oh * p.stride_h) - i32(p.pad_t);
    fa_iw0 = i32(ow * p.stride_w) - i32(p.pad_l);
    fa_base = (img * p.in_c + g * p.icg) * in_hw;

    // B loader.
    let bk = lid % BK;
    let bn = lid / BK;
    let w_row0 = g * p.ocg + n0;
    let n_left = p.gemm_n - n0;

    var ra = fwd_load_a(akq);
    var rb = fwd_load_b(bk, bn, w_row0, n_left);
    var acc = Acc(vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0));
    for (var k0 = 0u; k0 < p.gemm_k; k0 += BK) {
        workgroupBarrier();
        store_a(akq, am, ra);
        fwd_store_b(bk, bn, rb);
        workgroupBarrier();
        let k1 = k0 + BK;
        if (k1 < p.gemm_k) {
            ra = fwd_load_a(k1 + akq);
            rb = fwd_load_b(k1 + bk, bn, w_row0, n_left);
        }
        acc = mma(acc, tx, ty);
    }

    // Epilogue: bias, activation, write y.
    let nb = n0 + 4u * ty;
    var bv = vec4<f32>(0.0);
    if (HAS_BIAS) {
        for (var j = 0u; j < 4u; j++) {
            if (nb + j < p.gemm_n) {
                bv[j] = bias[g * p.ocg + nb + j];
            }
        }
    }
    for (var i = 0u; i < 4u; i++) {
        let mm = m0 + 4u * tx + i;
        if (mm >= p.gemm_m) {
            break;
        }
        let im = mm / ohw;
        let px = mm - im * ohw;
        let base = (im * p.out_c + g * p.ocg + nb) * ohw + px;
        if (nb < p.gemm_n) { y[base] = act(pick(acc.c0, i) + bv.x); }
        if (nb + 1u < p.gemm_n) { y[base + ohw] = act(pick(acc.c1, i) + bv.y); }
        if (nb + 2u < p.gemm_n) { y[base + 2u * ohw] = act(pick(acc.c2, i) + bv.z); }
        if (nb + 3u < p.gemm_n) { y[base + 3u * ohw] = act(pick(acc.c3, i) + bv.w); }
    }
}

// --------------------------------------------------------------- backward

@group(0) @binding(1) var<storage, read> gy: array<f32>;
@group(0) @binding(2) var<storage, read> bw: array<f32>;
@group(0) @binding(3) var<storage, read_write> gx: array<f32>;

// Backward A loader state: column m = lid % BM of A (one input pixel).
var<private> ba_ok: bool;
var<private> ba_th: u32; // ih + pad_top
var<private> ba_tw: u32; // iw + pad_left
var<private> ba_base: u32;

// gy gathered for 4 consecutive k = (oc, kh, kw) of this thread's pixel.
fn bwd_load_a(k: u32) -> vec4<f32> {
    var v = vec4<f32>(0.0);
    if (!ba_ok) {
        return v;
    }
    let khw = p.k_h * p.k_w;
    let ohw = p.out_h * p.out_w;
    var oc = k / khw;
    let r = k - oc * khw;
    var kh = r / p.k_w;
    var kw = r - kh * p.k_w;
    for (var i = 0u; i < 4u; i++) {
        if (k + i < p.gemm_k) {
            let dh = kh * p.dil_h;
            let dw = kw * p.dil_w;
            if (dh <= ba_th && dw <= ba_tw) {
                let th = ba_th - dh;
                let tw = ba_tw - dw;
                let oh = th / p.stride_h;
                let ow = tw / p.stride_w;
                if (oh * p.stride_h == th && ow * p.stride_w == tw && oh < p.out_h && ow < p.out_w) {
                    v[i] = gy[ba_base + oc * ohw + oh * p.out_w + ow];
                }
            }
        }
        kw += 1u;
        if (kw == p.k_w) {
            kw = 0u;
            kh += 1u;
            if (kh == p.k_h) {
                kh = 0u;
                oc += 1u;
            }
        }
    }
    return v;
}

// B[k, n] = w[g*OCg + oc, n, kh, kw] for 4 consecutive k = (oc, kh, kw) of column n.
fn bwd_load_b(k: u32, n: u32, g: u32) -> vec4<f32> {
    var v = vec4<f32>(0.0);
    if (n >= p.gemm_n) {
        return v;
    }
    let khw = p.k_h * p.k_w;
    var oc = k / khw;
    var r = k - oc * khw;
    for (var i = 0u; i < 4u; i++) {
        if (k + i < p.gemm_k) {
            v[i] = bw[((g * p.ocg + oc) * p.icg + n) * khw + r];
        }
        r += 1u;
        if (r == khw) {
            r = 0u;
            oc += 1u;
        }
    }
    return v;
}

// Store 4 B values: rows k = kq..kq+3 of column n (n fastest across threads).
fn bwd_store_b(kq: u32, n: u32, v: vec4<f32>) {
    let col = n / 4u;
    let c = n % 4u;
    tile_b[(kq + 0u) * BN4P + col][c] = v.x;
    tile_b[(kq + 1u) * BN4P + col][c] = v.y;
    tile_b[(kq + 2u) * BN4P + col][c] = v.z;
    tile_b[(kq + 3u) * BN4P + col][c] = v.w;
}

@compute @workgroup_size(16, 16)
fn backward(@builtin(workgroup_id) wid: vec3<u32>,
            @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) lid: u32) {
    let wg = flat_wg(wid, nwg);
    if (wg >= p.total_wg) {
        return;
    }
    let tn = wg % p.tiles_n;
    let rest = wg / p.tiles_n;
    let tm = rest % p.tiles_m;
    let g = rest / p.tiles_m;
    let m0 = tm * BM;
    let n0 = tn * BN;
    let tx = lid % THREADS_X;
    let ty = lid / THREADS_X;
    let in_hw = p.in_h * p.in_w;
    let ohw = p.out_h * p.out_w;

    // A and B loaders share the mapping: column lid % 64, rows kq..kq+3.
    let col = lid % BM;
    let kq = (lid / BM) * 4u;
    let m = m0 + col;
    ba_ok = m < p.gemm_m;
    let img = m / in_hw;
    let pix = m - img * in_hw;
    let ih = pix / p.in_w;
    let iw = pix - ih * p.in_w;
    ba_th = ih + p.pad_t;
    ba_tw = iw + p.pad_l;
    ba_base = (img * p.out_c + g * p.ocg) * ohw;
    let bn = n0 + col;

    var ra = bwd_load_a(kq);
    var rb = bwd_load_b(kq, bn, g);
    var acc = Acc(vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0));
    for (var k0 = 0u; k0 < p.gemm_k; k0 += BK) {
        workgroupBarrier();
        store_a(kq, col, ra);
        bwd_store_b(kq, col, rb);
        workgroupBarrier();
        let k1 = k0 + BK;
        if (k1 < p.gemm_k) {
            ra = bwd_load_a(k1 + kq);
            rb = bwd_load_b(k1 + kq, bn, g);
        }
        acc = mma(acc, tx, ty);
    }

    let nb = n0 + 4u * ty;
    for (var i = 0u; i < 4u; i++) {
        let mm = m0 + 4u * tx + i;
        if (mm >= p.gemm_m) {
            break;
        }
        let im = mm / in_hw;
        let px = mm - im * in_hw;
        let base = (im * p.in_c + g * p.icg + nb) * in_hw + px;
        if (nb < p.gemm_n) { gx[base] = pick(acc.c0, i); }
        if (nb + 1u < p.gemm_n) { gx[base + in_hw] = pick(acc.c1, i); }
        if (nb + 2u < p.gemm_n) { gx[base + 2u * in_hw] = pick(acc.c2, i); }
        if (nb + 3u < p.gemm_n) { gx[base + 3u * in_hw] = pick(acc.c3, i); }
    }
}

// --------------------------------------------------------- backward, phased

// One axis of a stride phase: input positions a + j*s for j < count; taps
// k0 + t*step for t < ntaps; output position ob + j - t*dstep for (j, t).
struct Axis {
    count: u32,
    k0: u32,
    ntaps: u32,
    ob: i32,
}

fn phase_axis(a: u32, s: u32, size: u32, pad: u32, k: u32, dil: u32, step: u32) -> Axis {
    var ax = Axis(0u, 0u, 0u, 0);
    if (a < size) {
        ax.count = (size - a + s - 1u) / s;
    }
    // The taps kk with (a + pad - kk*dil) % s == 0 are kk = k0 (mod step), k0 < step.
    let r = (a + pad) % s;
    var k0 = k;
    for (var kk = 0u; kk < step && kk < k; kk++) {
        if ((kk * dil) % s == r) {
            k0 = kk;
            break;
        }
    }
    if (k0 < k) {
        ax.k0 = k0;
        ax.ntaps = (k - k0 + step - 1u) / step;
        ax.ob = (i32(a + pad) - i32(k0 * dil)) / i32(s);
    }
    return ax;
}

// Phased A loader state: column m = lid % BM (one input pixel of the phase).
var<private> qa_ok: bool;
var<private> qa_oh: i32;   // oh0 + jh
var<private> qa_ow: i32;   // ow0 + jw
var<private> qa_base: u32;
var<private> q_ntw: u32;   // taps along w
var<private> q_taps: u32;  // taps per output channel

// gy gathered for 4 consecutive k = (oc, th, tw) of this thread's pixel; `gk` is
// the phase's K.
fn ph_load_a(k: u32, gk: u32) -> vec4<f32> {
    var v = vec4<f32>(0.0);
    if (!qa_ok) {
        return v;
    }
    let ohw = p.out_h * p.out_w;
    var oc = k / q_taps;
    let r = k - oc * q_taps;
    var th = r / q_ntw;
    var tw = r - th * q_ntw;
    for (var i = 0u; i < 4u; i++) {
        if (k + i < gk) {
            let oh = qa_oh - i32(th * p.dstep_h);
            let ow = qa_ow - i32(tw * p.dstep_w);
            if (u32(oh) < p.out_h && u32(ow) < p.out_w) {
                v[i] = gy[qa_base + oc * ohw + u32(oh) * p.out_w + u32(ow)];
            }
        }
        tw += 1u;
        if (tw == q_ntw) {
            tw = 0u;
            th += 1u;
            if (th * q_ntw == q_taps) {
                th = 0u;
                oc += 1u;
            }
        }
    }
    return v;
}

// B[k, n] = w[g*OCg + oc, n, kh0 + th*step_h, kw0 + tw*step_w] for 4 consecutive k.
fn ph_load_b(k: u32, gk: u32, n: u32, g: u32, kh0: u32, kw0: u32) -> vec4<f32> {
    var v = vec4<f32>(0.0);
    if (n >= p.gemm_n) {
        return v;
    }
    let khw = p.k_h * p.k_w;
    var oc = k / q_taps;
    let r = k - oc * q_taps;
    var th = r / q_ntw;
    var tw = r - th * q_ntw;
    for (var i = 0u; i < 4u; i++) {
        if (k + i < gk) {
            let kh = kh0 + th * p.step_h;
            let kw = kw0 + tw * p.step_w;
            v[i] = bw[((g * p.ocg + oc) * p.icg + n) * khw + kh * p.k_w + kw];
        }
        tw += 1u;
        if (tw == q_ntw) {
            tw = 0u;
            th += 1u;
            if (th * q_ntw == q_taps) {
                th = 0u;
                oc += 1u;
            }
        }
    }
    return v;
}

@compute @workgroup_size(16, 16)
fn backward_phased(@builtin(workgroup_id) wid: vec3<u32>,
                   @builtin(num_workgroups) nwg: vec3<u32>,
                   @builtin(local_invocation_index) lid: u32) {
    let wg = flat_wg(wid, nwg);
    if (wg >= p.total_wg) {
        return;
    }
    // Workgroup order: (phase, group, m tile, n tile), n tile fastest.
    let tn = wg % p.tiles_n;
    var rest = wg / p.tiles_n;
    let tm = rest % p.tiles_m;
    rest = rest / p.tiles_m;
    let g = rest % p.groups;
    let phase = rest / p.groups;
    let ah = phase / p.stride_w;
    let aw = phase - ah * p.stride_w;
    let axh = phase_axis(ah, p.stride_h, p.in_h, p.pad_t, p.k_h, p.dil_h, p.step_h);
    let axw = phase_axis(aw, p.stride_w, p.in_w, p.pad_l, p.k_w, p.dil_w, p.step_w);
    let ph_hw = axh.count * axw.count;
    let gm = p.batch * ph_hw;
    let m0 = tm * BM;
    if (m0 >= gm) {
        return; // spare m tile of a smaller phase (or an empty phase)
    }
    let taps = axh.ntaps * axw.ntaps;
    let gk = p.ocg * taps;
    let n0 = tn * BN;
    let tx = lid % THREADS_X;
    let ty = lid / THREADS_X;
    let in_hw = p.in_h * p.in_w;
    let ohw = p.out_h * p.out_w;
    // (q_taps / q_ntw only divide when gk > 0, i.e. when taps > 0.)
    q_taps = max(taps, 1u);
    q_ntw = max(axw.ntaps, 1u);

    let col = lid % BM;
    let kq = (lid / BM) * 4u;
    let m = m0 + col;
    qa_ok = m < gm;
    let img = m / ph_hw;
    let pix = m - img * ph_hw;
    let jh = pix / axw.count;
    let jw = pix - jh * axw.count;
    qa_oh = axh.ob + i32(jh);
    qa_ow = axw.ob + i32(jw);
    qa_base = (img * p.out_c + g * p.ocg) * ohw;
    let bn = n0 + col;

    var ra = ph_load_a(kq, gk);
    var rb = ph_load_b(kq, gk, bn, g, axh.k0, axw.k0);
    var acc = Acc(vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0));
    for (var k0 = 0u; k0 < gk; k0 += BK) {
        workgroupBarrier();
        store_a(kq, col, ra);
        bwd_store_b(kq, col, rb);
        workgroupBarrier();
        let k1 = k0 + BK;
        if (k1 < gk) {
            ra = ph_load_a(k1 + kq, gk);
            rb = ph_load_b(k1 + kq, gk, bn, g, axh.k0, axw.k0);
        }
        acc = mma(acc, tx, ty);
    }

    let nb = n0 + 4u * ty;
    for (var i = 0u; i < 4u; i++) {
        let mm = m0 + 4u * tx + i;
        if (mm >= gm) {
            break;
        }
        let im = mm / ph_hw;
        let px = mm - im * ph_hw;
        let qh = px / axw.count;
        let qw = px - qh * axw.count;
        let ih = ah + qh * p.stride_h;
        let iw = aw + qw * p.stride_w;
        let base = (im * p.in_c + g * p.icg + nb) * in_hw + ih * p.in_w + iw;
        if (nb < p.gemm_n) { gx[base] = pick(acc.c0, i); }
        if (nb + 1u < p.gemm_n) { gx[base + in_hw] = pick(acc.c1, i); }
        if (nb + 2u < p.gemm_n) { gx[base + 2u * in_hw] = pick(acc.c2, i); }
        if (nb + 3u < p.gemm_n) { gx[base + 3u * in_hw] = pick(acc.c3, i); }
    }
}
