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
// Tiling: one workgroup of 256 threads computes a BM x BN tile of C; each thread
// a TM x TN register block (TM = 4 or 8 m by TN = 4 or 8 n, in blocks of 4
// consecutive m by 4 consecutive n; with TM = 8 the two m halves are 4 * WG_M
// apart, with TN = 8 the two n halves 4 * (256 / WG_M) apart, so vec4 reads of
// tile_a and tile_b stay contiguous across threads). K advances BK at a time
// through workgroup memory; the next K slice is fetched from global memory into
// registers while the current one is multiplied
// (one-stage prefetch). The flat workgroup index is (group, m tile, n tile) with
// the n tile fastest, so neighbouring workgroups share their A (input) tile in
// cache.
//
// The tile shape is chosen per layer by the host through override constants
// (WG_M threads along m, TM rows and TN columns per thread, BK), one of four
// variants only:
//   64 x 64,   BK 16: WG_M 16, TM 4, TN 4  (the default)
//   128 x 64,  BK 16: WG_M 16, TM 8, TN 4  (large layers: twice the FMAs per tile read)
//   256 x 16,  BK 8:  WG_M 64, TM 4, TN 4  (few columns: the stem's backward has 3,
//                                           1x1 projections 24)
//   128 x 128, BK 8:  WG_M 16, TM 8, TN 8  (an 8 x 8 block per thread: four
//                                           times the FMAs per tile read of
//                                           64 x 64; the autotune's to pick)
// so BM = TM * WG_M, BN = TN * (256 / WG_M). Each may run double-buffered
// (DB): two halves of workgroup memory, the next K slice stored into one while
// the other is multiplied, one barrier per slice instead of two. The host sizes
// the workgroup arrays per variant (A_LEN = BK * BM / 4 and B_LEN =
// BK * (BN / 4 + 1) vec4s, twice that with DB), so a layer reserves only what
// its tile uses; the double-buffered tiles need more than WebGPU's 16 KiB and
// are offered only where the device's limit allows. Every workgroup-memory
// index stays below A_LEN (tile_a) or B_LEN (tile_b): a half's offset plus at
// most (BK - 1) * BM / 4 + BM / 4 - 1, or (BK - 1) * (BN / 4 + 1) + BN / 4 - 1.
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
// Storage elements are `st` (f32 or f16, aliased by the host); loads convert to
// f32, workgroup tiles and accumulators are f32.
//
override WG_M: u32 = 16u; // threads along m (16 or 64)
override TM: u32 = 4u;    // m per thread (4 or 8)
override BK: u32 = 16u;   // K slice (16 or 8)
override TN: u32 = 4u;    // n per thread (4 or 8)

const THREADS: u32 = 256u;

// Derived tile sizes (override expressions, folded when the pipeline is built).
fn bm() -> u32 { return TM * WG_M; }
fn bn() -> u32 { return TN * (THREADS / WG_M); }
// Offset of a thread's second block of 4 n (TN == 8), in vec4 columns.
fn tn_half() -> u32 { return THREADS / WG_M; }
fn bm4() -> u32 { return bm() / 4u; }          // vec4 columns of a tile_a row
fn bn4p() -> u32 { return bn() / 4u + 1u; }    // tile_b row stride, padded against bank conflicts
// A loaders: thread column lid % BM, rows in runs of 4; rows covered per pass and
// the number of passes per K slice (1 or 2).
fn a_rows_per_pass() -> u32 { return (THREADS / bm()) * 4u; }
fn a_passes() -> u32 { return BK / a_rows_per_pass(); }


override HAS_BIAS: bool = false;

@group(0) @binding(0) var<uniform> p: Params;

// Epilogue activation: act() and ACT come from act.wgsl, prepended by the host.

// Double buffering, and the workgroup arrays' lengths (set by the host from
// the tile: see above; the defaults fit every single-buffered variant).
override DB: bool = false;
override A_LEN: u32 = 512u;
override B_LEN: u32 = 272u;
fn a_half() -> u32 { return BK * bm4(); }
fn b_half() -> u32 { return BK * bn4p(); }

// A tile, [BK][BM] as vec4 along m (twice with DB).
var<workgroup> tile_a: array<vec4<f32>, A_LEN>;
// B tile, [BK][BN] as vec4 along n, rows padded to BN / 4 + 1 (twice with DB).
var<workgroup> tile_b: array<vec4<f32>, B_LEN>;
// The half the store helpers write (0, or 1 with DB).
var<private> wbuf: u32;

struct Acc {
    c0: vec4<f32>, // n = 4*ty + 0, components over m = 4*tx + 0..3
    c1: vec4<f32>,
    c2: vec4<f32>,
    c3: vec4<f32>,
    d0: vec4<f32>, // TM == 8: m = 4*(tx + WG_M) + 0..3
    d1: vec4<f32>,
    d2: vec4<f32>,
    d3: vec4<f32>,
    e0: vec4<f32>, // TN == 8: n = 4*(ty + 256 / WG_M) + 0..3, m as c
    e1: vec4<f32>,
    e2: vec4<f32>,
    e3: vec4<f32>,
    f0: vec4<f32>, // TM == 8 and TN == 8: n as e, m as d
    f1: vec4<f32>,
    f2: vec4<f32>,
    f3: vec4<f32>,
}

fn zero_acc() -> Acc {
    let z = vec4<f32>(0.0);
    return Acc(z, z, z, z, z, z, z, z, z, z, z, z, z, z, z, z);
}

// Multiply half `rbuf` of the tiles in workgroup memory into the thread's
// TM x TN block.
fn mma(acc_in: Acc, tx: u32, ty: u32, rbuf: u32) -> Acc {
    var acc = acc_in;
    let sa = bm4();
    let sb = bn4p();
    let oa = rbuf * a_half() + tx;
    let ob = rbuf * b_half() + ty;
    for (var kk = 0u; kk < BK; kk++) {
        let a = tile_a[kk * sa + oa];
        let b = tile_b[kk * sb + ob];
        acc.c0 += a * b.x;
        acc.c1 += a * b.y;
        acc.c2 += a * b.z;
        acc.c3 += a * b.w;
        if (TN == 8u) {
            let b2 = tile_b[kk * sb + ob + tn_half()];
            acc.e0 += a * b2.x;
            acc.e1 += a * b2.y;
            acc.e2 += a * b2.z;
            acc.e3 += a * b2.w;
        }
        if (TM == 8u) {
            let a2 = tile_a[kk * sa + oa + WG_M];
            acc.d0 += a2 * b.x;
            acc.d1 += a2 * b.y;
            acc.d2 += a2 * b.z;
            acc.d3 += a2 * b.w;
            if (TN == 8u) {
                let b2 = tile_b[kk * sb + ob + tn_half()];
                acc.f0 += a2 * b2.x;
                acc.f1 += a2 * b2.y;
                acc.f2 += a2 * b2.z;
                acc.f3 += a2 * b2.w;
            }
        }
    }
    return acc;
}

// Store this thread's 4 A values: rows k = kq..kq+3 of column m.
fn store_a(kq: u32, m: u32, v: vec4<f32>) {
    let col = wbuf * a_half() + m / 4u;
    let c = m % 4u;
    let sa = bm4();
    tile_a[(kq + 0u) * sa + col][c] = v.x;
    tile_a[(kq + 1u) * sa + col][c] = v.y;
    tile_a[(kq + 2u) * sa + col][c] = v.z;
    tile_a[(kq + 3u) * sa + col][c] = v.w;
}

// Before storing the next K slice, multiplied from half `rbuf` now: with DB
// it goes to the other half (nobody reads that one until the barrier after the
// stores); without, every thread must first be done reading the only half.
fn next_slice(rbuf: u32) {
    if (DB) {
        wbuf = 1u - rbuf;
    } else {
        workgroupBarrier();
    }
}

fn pick(v: vec4<f32>, i: u32) -> f32 {
    return select(select(v.w, v.z, i == 2u), select(v.y, v.x, i == 0u), i < 2u);
}

// ---------------------------------------------------------------- forward

@group(0) @binding(1) var<storage, read> x: array<st>;
@group(0) @binding(2) var<storage, read> w: array<st>;
@group(0) @binding(3) var<storage, read> bias: array<st>;
@group(0) @binding(4) var<storage, read_write> y: array<st>;

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
                v[i] = f32(x[fa_base + (ic * p.in_h + u32(ih)) * p.in_w + u32(iw)]);
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

// B loader: thread loads k = k0 + lid % BK for n = lid / BK + (256 / BK) i
// (k fastest: weight rows are contiguous along k), for the n < BN of the tile.
// `n_left` is how many columns of this tile exist.
fn fwd_load_b(k: u32, n: u32, w_row0: u32, n_left: u32) -> vec4<f32> {
    var v = vec4<f32>(0.0);
    if (k < p.gemm_k) {
        for (var i = 0u; i < 4u; i++) {
            let nn = n + (THREADS / BK) * i;
            if (nn < bn() && nn < n_left) {
                v[i] = f32(w[(w_row0 + nn) * p.gemm_k + k]);
            }
        }
    }
    return v;
}

fn fwd_store_b(kl: u32, nl: u32, v: vec4<f32>) {
    let sb = bn4p();
    for (var i = 0u; i < 4u; i++) {
        let nn = nl + (THREADS / BK) * i;
        if (nn < bn()) {
            tile_b[wbuf * b_half() + kl * sb + nn / 4u][nn % 4u] = v[i];
        }
    }
}

// Write the forward outputs of 4 consecutive m from `mstart` (components of the
// c's) for columns nb..nb+3: bias, activation, store (partial tiles skipped).
fn fwd_epilogue(mstart: u32, nb: u32, g: u32, bv: vec4<f32>,
                c0: vec4<f32>, c1: vec4<f32>, c2: vec4<f32>, c3: vec4<f32>) {
    let ohw = p.out_h * p.out_w;
    for (var i = 0u; i < 4u; i++) {
        let mm = mstart + i;
        if (mm >= p.gemm_m) {
            break;
        }
        let im = mm / ohw;
        let px = mm - im * ohw;
        let base = (im * p.out_c + g * p.ocg + nb) * ohw + px;
        if (nb < p.gemm_n) { y[base] = st(act(pick(c0, i) + bv.x)); }
        if (nb + 1u < p.gemm_n) { y[base + ohw] = st(act(pick(c1, i) + bv.y)); }
        if (nb + 2u < p.gemm_n) { y[base + 2u * ohw] = st(act(pick(c2, i) + bv.z)); }
        if (nb + 3u < p.gemm_n) { y[base + 3u * ohw] = st(act(pick(c3, i) + bv.w)); }
    }
}

// 256 threads: structural to the tiles (WG_M threads along m times 256 / WG_M
// along n), so written here rather than taken from the host.
@compute @workgroup_size(256)
fn forward(@builtin(workgroup_id) wid: vec3<u32>,
           @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) lid: u32) {
    let wg = grid_group(wid, nwg);
    if (wg >= p.total_wg) {
        return;
    }
    let tn = wg % p.tiles_n;
    let rest = wg / p.tiles_n;
    let tm = rest % p.tiles_m;
    let g = rest / p.tiles_m;
    let m0 = tm * bm();
    let n0 = tn * bn();
    let tx = lid % WG_M;
    let ty = lid / WG_M;
    let ohw = p.out_h * p.out_w;
    let in_hw = p.in_h * p.in_w;

    // A loader: column am, rows akq..akq+3 (and + a_rows_per_pass()) of each K slice.
    let am = lid % bm();
    let akq = (lid / bm()) * 4u;
    let arp = a_rows_per_pass();
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
    let bnl = lid / BK;
    let w_row0 = g * p.ocg + n0;
    let n_left = p.gemm_n - n0;

    var ra0 = fwd_load_a(akq);
    var ra1 = vec4<f32>(0.0);
    if (a_passes() == 2u) {
        ra1 = fwd_load_a(akq + arp);
    }
    var rb = fwd_load_b(bk, bnl, w_row0, n_left);
    var acc = zero_acc();
    wbuf = 0u;
    store_a(akq, am, ra0);
    if (a_passes() == 2u) {
        store_a(akq + arp, am, ra1);
    }
    fwd_store_b(bk, bnl, rb);
    workgroupBarrier();
    var rbuf = 0u;
    for (var k0 = 0u; k0 < p.gemm_k; k0 += BK) {
        let k1 = k0 + BK;
        let more = k1 < p.gemm_k;
        if (more) {
            ra0 = fwd_load_a(k1 + akq);
            if (a_passes() == 2u) {
                ra1 = fwd_load_a(k1 + akq + arp);
            }
            rb = fwd_load_b(k1 + bk, bnl, w_row0, n_left);
        }
        acc = mma(acc, tx, ty, rbuf);
        if (more) {
            next_slice(rbuf);
            store_a(akq, am, ra0);
            if (a_passes() == 2u) {
                store_a(akq + arp, am, ra1);
            }
            fwd_store_b(bk, bnl, rb);
            workgroupBarrier();
            rbuf = wbuf;
        }
    }

    // Epilogue: bias, activation, write y.
    let nb = n0 + 4u * ty;
    let bv = fwd_bias(nb, g);
    fwd_epilogue(m0 + 4u * tx, nb, g, bv, acc.c0, acc.c1, acc.c2, acc.c3);
    if (TM == 8u) {
        fwd_epilogue(m0 + 4u * (tx + WG_M), nb, g, bv, acc.d0, acc.d1, acc.d2, acc.d3);
    }
    if (TN == 8u) {
        let nb2 = nb + 4u * tn_half();
        let bv2 = fwd_bias(nb2, g);
        fwd_epilogue(m0 + 4u * tx, nb2, g, bv2, acc.e0, acc.e1, acc.e2, acc.e3);
        if (TM == 8u) {
            fwd_epilogue(m0 + 4u * (tx + WG_M), nb2, g, bv2, acc.f0, acc.f1, acc.f2, acc.f3);
        }
    }
}

// The bias of columns nb..nb+3 (zero without a bias, or past gemm_n).
fn fwd_bias(nb: u32, g: u32) -> vec4<f32> {
    var bv = vec4<f32>(0.0);
    if (HAS_BIAS) {
        for (var j = 0u; j < 4u; j++) {
            if (nb + j < p.gemm_n) {
                bv[j] = f32(bias[g * p.ocg + nb + j]);
            }
        }
    }
    return bv;
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

// Store gx[i] = v, through the activation's derivative with DACT.
fn put_gx(i: u32, v: f32) {
    var o = v;
    if (DACT) {
        o = v * dact_y(f32(ay[i]), p.act_alpha);
    }
    gx[i] = st(o);
}

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
                    v[i] = f32(gy[ba_base + oc * ohw + oh * p.out_w + ow]);
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
            v[i] = f32(bw[((g * p.ocg + oc) * p.icg + n) * khw + r]);
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
// (Only threads with kq < BK store: with BN = 16 and BK = 8, the first 32.)
fn bwd_store_b(kq: u32, n: u32, v: vec4<f32>) {
    let col = wbuf * b_half() + n / 4u;
    let c = n % 4u;
    let sb = bn4p();
    tile_b[(kq + 0u) * sb + col][c] = v.x;
    tile_b[(kq + 1u) * sb + col][c] = v.y;
    tile_b[(kq + 2u) * sb + col][c] = v.z;
    tile_b[(kq + 3u) * sb + col][c] = v.w;
}

// Write gx for 4 consecutive m from `mstart` (stride-1 backward), columns nb..nb+3.
fn bwd_epilogue(mstart: u32, nb: u32, g: u32,
                c0: vec4<f32>, c1: vec4<f32>, c2: vec4<f32>, c3: vec4<f32>) {
    let in_hw = p.in_h * p.in_w;
    for (var i = 0u; i < 4u; i++) {
        let mm = mstart + i;
        if (mm >= p.gemm_m) {
            break;
        }
        let im = mm / in_hw;
        let px = mm - im * in_hw;
        let base = (im * p.in_c + g * p.icg + nb) * in_hw + px;
        if (nb < p.gemm_n) { put_gx(base, pick(c0, i)); }
        if (nb + 1u < p.gemm_n) { put_gx(base + in_hw, pick(c1, i)); }
        if (nb + 2u < p.gemm_n) { put_gx(base + 2u * in_hw, pick(c2, i)); }
        if (nb + 3u < p.gemm_n) { put_gx(base + 3u * in_hw, pick(c3, i)); }
    }
}

@compute @workgroup_size(256)
fn backward(@builtin(workgroup_id) wid: vec3<u32>,
            @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) lid: u32) {
    let wg = grid_group(wid, nwg);
    if (wg >= p.total_wg) {
        return;
    }
    let tn = wg % p.tiles_n;
    let rest = wg / p.tiles_n;
    let tm = rest % p.tiles_m;
    let g = rest / p.tiles_m;
    let m0 = tm * bm();
    let n0 = tn * bn();
    let tx = lid % WG_M;
    let ty = lid / WG_M;
    let in_hw = p.in_h * p.in_w;
    let ohw = p.out_h * p.out_w;

    // A loader: column col of the tile, rows kq..kq+3 (and + a_rows_per_pass()).
    let col = lid % bm();
    let kq = (lid / bm()) * 4u;
    let arp = a_rows_per_pass();
    let m = m0 + col;
    ba_ok = m < p.gemm_m;
    let img = m / in_hw;
    let pix = m - img * in_hw;
    let ih = pix / p.in_w;
    let iw = pix - ih * p.in_w;
    ba_th = ih + p.pad_t;
    ba_tw = iw + p.pad_l;
    ba_base = (img * p.out_c + g * p.ocg) * ohw;
    // B loader: column bcol, rows bkq..bkq+3 (threads with bkq < BK).
    let bcol = lid % bn();
    let bkq = (lid / bn()) * 4u;
    let b_on = bkq < BK;
    let bn_ = n0 + bcol;

    var ra0 = bwd_load_a(kq);
    var ra1 = vec4<f32>(0.0);
    if (a_passes() == 2u) {
        ra1 = bwd_load_a(kq + arp);
    }
    var rb = vec4<f32>(0.0);
    if (b_on) {
        rb = bwd_load_b(bkq, bn_, g);
    }
    var acc = zero_acc();
    wbuf = 0u;
    store_a(kq, col, ra0);
    if (a_passes() == 2u) {
        store_a(kq + arp, col, ra1);
    }
    if (b_on) {
        bwd_store_b(bkq, bcol, rb);
    }
    workgroupBarrier();
    var rbuf = 0u;
    for (var k0 = 0u; k0 < p.gemm_k; k0 += BK) {
        let k1 = k0 + BK;
        let more = k1 < p.gemm_k;
        if (more) {
            ra0 = bwd_load_a(k1 + kq);
            if (a_passes() == 2u) {
                ra1 = bwd_load_a(k1 + kq + arp);
            }
            if (b_on) {
                rb = bwd_load_b(k1 + bkq, bn_, g);
            }
        }
        acc = mma(acc, tx, ty, rbuf);
        if (more) {
            next_slice(rbuf);
            store_a(kq, col, ra0);
            if (a_passes() == 2u) {
                store_a(kq + arp, col, ra1);
            }
            if (b_on) {
                bwd_store_b(bkq, bcol, rb);
            }
            workgroupBarrier();
            rbuf = wbuf;
        }
    }

    let nb = n0 + 4u * ty;
    bwd_epilogue(m0 + 4u * tx, nb, g, acc.c0, acc.c1, acc.c2, acc.c3);
    if (TM == 8u) {
        bwd_epilogue(m0 + 4u * (tx + WG_M), nb, g, acc.d0, acc.d1, acc.d2, acc.d3);
    }
    if (TN == 8u) {
        let nb2 = nb + 4u * tn_half();
        bwd_epilogue(m0 + 4u * tx, nb2, g, acc.e0, acc.e1, acc.e2, acc.e3);
        if (TM == 8u) {
            bwd_epilogue(m0 + 4u * (tx + WG_M), nb2, g, acc.f0, acc.f1, acc.f2, acc.f3);
        }
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
                v[i] = f32(gy[qa_base + oc * ohw + u32(oh) * p.out_w + u32(ow)]);
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
            v[i] = f32(bw[((g * p.ocg + oc) * p.icg + n) * khw + kh * p.k_w + kw]);
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

// Write gx for 4 consecutive m from `mstart` of phase (ah, aw), columns nb..nb+3.
// `cols` is the phase's column count, `gm` its GEMM M.
fn ph_epilogue(mstart: u32, nb: u32, g: u32, ah: u32, aw: u32, cols: u32, gm: u32,
               c0: vec4<f32>, c1: vec4<f32>, c2: vec4<f32>, c3: vec4<f32>) {
    let in_hw = p.in_h * p.in_w;
    for (var i = 0u; i < 4u; i++) {
        let mm = mstart + i;
        if (mm >= gm) {
            break;
        }
        let ph_hw = gm / p.batch;
        let im = mm / ph_hw;
        let px = mm - im * ph_hw;
        let qh = px / cols;
        let qw = px - qh * cols;
        let ih = ah + qh * p.stride_h;
        let iw = aw + qw * p.stride_w;
        let base = (im * p.in_c + g * p.icg + nb) * in_hw + ih * p.in_w + iw;
        if (nb < p.gemm_n) { put_gx(base, pick(c0, i)); }
        if (nb + 1u < p.gemm_n) { put_gx(base + in_hw, pick(c1, i)); }
        if (nb + 2u < p.gemm_n) { put_gx(base + 2u * in_hw, pick(c2, i)); }
        if (nb + 3u < p.gemm_n) { put_gx(base + 3u * in_hw, pick(c3, i)); }
    }
}

@compute @workgroup_size(256)
fn backward_phased(@builtin(workgroup_id) wid: vec3<u32>,
                   @builtin(num_workgroups) nwg: vec3<u32>,
                   @builtin(local_invocation_index) lid: u32) {
    let wg = grid_group(wid, nwg);
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
    let m0 = tm * bm();
    if (m0 >= gm) {
        return; // spare m tile of a smaller phase (or an empty phase)
    }
    let taps = axh.ntaps * axw.ntaps;
    let gk = p.ocg * taps;
    let n0 = tn * bn();
    let tx = lid % WG_M;
    let ty = lid / WG_M;
    let ohw = p.out_h * p.out_w;
    // (q_taps / q_ntw only divide when gk > 0, i.e. when taps > 0.)
    q_taps = max(taps, 1u);
    q_ntw = max(axw.ntaps, 1u);

    let col = lid % bm();
    let kq = (lid / bm()) * 4u;
    let arp = a_rows_per_pass();
    let m = m0 + col;
    qa_ok = m < gm;
    let img = m / ph_hw;
    let pix = m - img * ph_hw;
    let jh = pix / axw.count;
    let jw = pix - jh * axw.count;
    qa_oh = axh.ob + i32(jh);
    qa_ow = axw.ob + i32(jw);
    qa_base = (img * p.out_c + g * p.ocg) * ohw;
    let bcol = lid % bn();
    let bkq = (lid / bn()) * 4u;
    let b_on = bkq < BK;
    let bn_ = n0 + bcol;

    var ra0 = ph_load_a(kq, gk);
    var ra1 = vec4<f32>(0.0);
    if (a_passes() == 2u) {
        ra1 = ph_load_a(kq + arp, gk);
    }
    var rb = vec4<f32>(0.0);
    if (b_on) {
        rb = ph_load_b(bkq, gk, bn_, g, axh.k0, axw.k0);
    }
    var acc = zero_acc();
    wbuf = 0u;
    store_a(kq, col, ra0);
    if (a_passes() == 2u) {
        store_a(kq + arp, col, ra1);
    }
    if (b_on) {
        bwd_store_b(bkq, bcol, rb);
    }
    workgroupBarrier();
    var rbuf = 0u;
    for (var k0 = 0u; k0 < gk; k0 += BK) {
        let k1 = k0 + BK;
        let more = k1 < gk;
        if (more) {
            ra0 = ph_load_a(k1 + kq, gk);
            if (a_passes() == 2u) {
                ra1 = ph_load_a(k1 + kq + arp, gk);
            }
            if (b_on) {
                rb = ph_load_b(k1 + bkq, gk, bn_, g, axh.k0, axw.k0);
            }
        }
        acc = mma(acc, tx, ty, rbuf);
        if (more) {
            next_slice(rbuf);
            store_a(kq, col, ra0);
            if (a_passes() == 2u) {
                store_a(kq + arp, col, ra1);
            }
            if (b_on) {
                bwd_store_b(bkq, bcol, rb);
            }
            workgroupBarrier();
            rbuf = wbuf;
        }
    }

    let nb = n0 + 4u * ty;
    ph_epilogue(m0 + 4u * tx, nb, g, ah, aw, axw.count, gm, acc.c0, acc.c1, acc.c2, acc.c3);
    if (TM == 8u) {
        ph_epilogue(m0 + 4u * (tx + WG_M), nb, g, ah, aw, axw.count, gm,
                    acc.d0, acc.d1, acc.d2, acc.d3);
    }
    if (TN == 8u) {
        let nb2 = nb + 4u * tn_half();
        ph_epilogue(m0 + 4u * tx, nb2, g, ah, aw, axw.count, gm, acc.e0, acc.e1, acc.e2, acc.e3);
        if (TM == 8u) {
            ph_epilogue(m0 + 4u * (tx + WG_M), nb2, g, ah, aw, axw.count, gm,
                        acc.f0, acc.f1, acc.f2, acc.f3);
        }
    }
}
