// 2-D convolution as an implicit GEMM on cooperative matrices (tensor cores):
// f16 operands, f32 accumulation (`--precision mixed`). Same GEMM as
// gemm.wgsl (read its header for m, n, k and the gathers):
//   entry `forward`:  m = output pixels, n = output channels of the group,
//                     k = (ic, kh, kw); bias and activation in the epilogue.
//   entry `backward`: stride 1 only; m = input pixels, n = input channels of
//                     the group, k = (oc, kh, kw); gx overwritten.
// The uniform block is gemm_params.wgsl's `Params` (the host fills it as for
// gemm.wgsl, with its 64 x 64 tile).
//
// Tiling: 128 threads = 4 subgroups of 32 (the host picks this kernel only on
// adapters whose subgroups are exactly 32 wide and that list 16x16x16 f16
// matrices with f32 accumulators). A workgroup computes a 64 x 64 tile of C;
// subgroup s the 32 x 32 quadrant (s / 2, s % 2): 2 x 2 accumulators of
// 16 x 16. K advances BK = 32 at a time: every thread gathers 16 values of A
// and 16 of B into registers (converted to f16), stores them into workgroup
// memory (A as [m][k], B as [k][n], both row-major), and each subgroup then
// multiplies 2 K steps of 16; the next slice is gathered while the current
// one is multiplied (one-stage prefetch, as gemm.wgsl). At the end the
// accumulators go through workgroup memory (f32, [m][n]) to the epilogue,
// whose threads write along m (contiguous in NCHW).
//
// Guards as in gemm.wgsl: every global load checks m < gemm_m, k < gemm_k,
// n < gemm_n and the gathered coordinates; stores check m and n; workgroups
// past total_wg return before any division by the tile counts (a whole
// workgroup returns together, so the barriers stay uniform).

const THREADS: u32 = 128u;
const BM: u32 = 64u;
const BN: u32 = 64u;
const BK: u32 = 32u;


override HAS_BIAS: bool = false;

@group(0) @binding(0) var<uniform> p: Params;

var<workgroup> ta: array<f16, 2048>;   // [BM][BK]
var<workgroup> tb: array<f16, 2048>;   // [BK][BN]
var<workgroup> tc: array<f32, 4096>;   // [BM][BN]

// The workgroup's tile: (group, m tile, n tile), n fastest.
struct TileId {
    g: u32,
    m0: u32,
    n0: u32,
}

fn tile_id(wg: u32) -> TileId {
    let tn = wg % p.tiles_n;
    let rest = wg / p.tiles_n;
    return TileId(rest / p.tiles_m, (rest % p.tiles_m) * BM, tn * BN);
}

// Loader layout: A, thread t gathers column m = t % 64 of the tile for
// k = (t / 64) * 16 .. + 16; B, thread t loads row n = t / 2 for
// k = (t % 2) * 16 .. + 16 (weights are contiguous along k in both passes'
// gathers of the forward; the backward gathers B per element).
fn store_a(m: u32, kq: u32, v: array<f32, 16>) {
    for (var i = 0u; i < 16u; i++) {
        ta[m * BK + kq + i] = f16(v[i]);
    }
}

fn store_b(n: u32, kq: u32, v: array<f32, 16>) {
    for (var i = 0u; i < 16u; i++) {
        tb[(kq + i) * BN + n] = f16(v[i]);
    }
}

// Subgroup `sg` multiplies the slice in workgroup memory into its 2 x 2
// accumulators (rows mi0, mi0 + 1 and columns nj0, nj0 + 1 of 16 x 16 blocks).
struct Acc {
    c00: coop_mat16x16<f32, C>,
    c01: coop_mat16x16<f32, C>,
    c10: coop_mat16x16<f32, C>,
    c11: coop_mat16x16<f32, C>,
}

fn mma(acc_in: Acc, sg: u32) -> Acc {
    var acc = acc_in;
    let mr = (sg / 2u) * 32u; // first row of the quadrant
    let nc = (sg % 2u) * 32u; // first column
    for (var kk = 0u; kk < BK; kk += 16u) {
        let a0 = coopLoadT<coop_mat16x16<f16, A>>(&ta[mr * BK + kk], BK);
        let a1 = coopLoadT<coop_mat16x16<f16, A>>(&ta[(mr + 16u) * BK + kk], BK);
        let b0 = coopLoadT<coop_mat16x16<f16, B>>(&tb[kk * BN + nc], BN);
        let b1 = coopLoadT<coop_mat16x16<f16, B>>(&tb[kk * BN + nc + 16u], BN);
        acc.c00 = coopMultiplyAdd(a0, b0, acc.c00);
        acc.c01 = coopMultiplyAdd(a0, b1, acc.c01);
        acc.c10 = coopMultiplyAdd(a1, b0, acc.c10);
        acc.c11 = coopMultiplyAdd(a1, b1, acc.c11);
    }
    return acc;
}

// The accumulators to tc ([m][n], f32), for the epilogue.
fn spill(acc: Acc, sg: u32) {
    let mr = (sg / 2u) * 32u;
    let nc = (sg % 2u) * 32u;
    coopStoreT(acc.c00, &tc[mr * BN + nc], BN);
    coopStoreT(acc.c01, &tc[mr * BN + nc + 16u], BN);
    coopStoreT(acc.c10, &tc[(mr + 16u) * BN + nc], BN);
    coopStoreT(acc.c11, &tc[(mr + 16u) * BN + nc + 16u], BN);
}

fn zero_acc() -> Acc {
    let z = coop_mat16x16<f32, C>();
    return Acc(z, z, z, z);
}

// ---------------------------------------------------------------- forward

@group(0) @binding(1) var<storage, read> x: array<st>;
@group(0) @binding(2) var<storage, read> w: array<st>;
@group(0) @binding(3) var<storage, read> bias: array<st>;
@group(0) @binding(4) var<storage, read_write> y: array<st>;

// Forward A gather state: this thread's column m (one output pixel).
var<private> fa_ok: bool;
var<private> fa_ih0: i32;
var<private> fa_iw0: i32;
var<private> fa_base: u32;

// 16 consecutive k of this thread's A column, from k.
fn fwd_load_a(k: u32) -> array<f32, 16> {
    var v: array<f32, 16>;
    if (!fa_ok) {
        return v;
    }
    let khw = p.k_h * p.k_w;
    var ic = k / khw;
    let r = k - ic * khw;
    var kh = r / p.k_w;
    var kw = r - kh * p.k_w;
    for (var i = 0u; i < 16u; i++) {
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

// 16 consecutive k of weight row n (global n0 + n) from k.
fn fwd_load_b(k: u32, n: u32, w_row0: u32, n_left: u32) -> array<f32, 16> {
    var v: array<f32, 16>;
    if (n < n_left) {
        let row = (w_row0 + n) * p.gemm_k;
        for (var i = 0u; i < 16u; i++) {
            if (k + i < p.gemm_k) {
                v[i] = f32(w[row + k + i]);
            }
        }
    }
    return v;
}

@compute @workgroup_size(128)
fn forward(@builtin(workgroup_id) wid: vec3<u32>,
           @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) lid: u32,
           @builtin(subgroup_id) sg: u32) {
    let wg = grid_group(wid, nwg);
    if (wg >= p.total_wg) {
        return;
    }
    let t = tile_id(wg);
    let ohw = p.out_h * p.out_w;
    let in_hw = p.in_h * p.in_w;

    // A gather: column am, k from akq in each slice.
    let am = lid % BM;
    let akq = (lid / BM) * 16u;
    let m = t.m0 + am;
    fa_ok = m < p.gemm_m;
    let img = m / ohw;
    let pix = m - img * ohw;
    let oh = pix / p.out_w;
    let ow = pix - oh * p.out_w;
    fa_ih0 = i32(oh * p.stride_h) - i32(p.pad_t);
    fa_iw0 = i32(ow * p.stride_w) - i32(p.pad_l);
    fa_base = (img * p.in_c + t.g * p.icg) * in_hw;
    // B: row bn, k from bkq.
    let bn = lid / 2u;
    let bkq = (lid % 2u) * 16u;
    let w_row0 = t.g * p.ocg + t.n0;
    let n_left = p.gemm_n - t.n0;

    var ra = fwd_load_a(akq);
    var rb = fwd_load_b(bkq, bn, w_row0, n_left);
    var acc = zero_acc();
    for (var k0 = 0u; k0 < p.gemm_k; k0 += BK) {
        workgroupBarrier();
        store_a(am, akq, ra);
        store_b(bn, bkq, rb);
        workgroupBarrier();
        let k1 = k0 + BK;
        if (k1 < p.gemm_k) {
            ra = fwd_load_a(k1 + akq);
            rb = fwd_load_b(k1 + bkq, bn, w_row0, n_left);
        }
        acc = mma(acc, sg);
    }
    spill(acc, sg);
    workgroupBarrier();

    // Epilogue: thread writes m = m0 + lid % 64 for n = lid / 64 + 2 i.
    let em = t.m0 + am;
    if (em >= p.gemm_m) {
        return;
    }
    let eimg = em / ohw;
    let epx = em - eimg * ohw;
    for (var nn = lid / BM; nn < BN; nn += THREADS / BM) {
        let n = t.n0 + nn;
        if (n >= p.gemm_n) {
            break;
        }
        var v = tc[am * BN + nn];
        if (HAS_BIAS) {
            v += f32(bias[t.g * p.ocg + n]);
        }
        y[(eimg * p.out_c + t.g * p.ocg + n) * ohw + epx] = st(act(v));
    }
}

// --------------------------------------------------------------- backward

@group(0) @binding(1) var<storage, read> gy: array<st>;
@group(0) @binding(2) var<storage, read> bw: array<st>;
@group(0) @binding(3) var<storage, read_write> gx: array<st>;

// Backward A gather state: this thread's column m (one input pixel).
var<private> ba_ok: bool;
var<private> ba_th: i32; // ih + pad_top
var<private> ba_tw: i32; // iw + pad_left
var<private> ba_base: u32;

// gy gathered at oh = ih + pad_t - kh * dil (stride 1) for 16 consecutive
// k = (oc, kh, kw) from k.
fn bwd_load_a(k: u32) -> array<f32, 16> {
    var v: array<f32, 16>;
    if (!ba_ok) {
        return v;
    }
    let khw = p.k_h * p.k_w;
    var oc = k / khw;
    let r = k - oc * khw;
    var kh = r / p.k_w;
    var kw = r - kh * p.k_w;
    let ohw = p.out_h * p.out_w;
    for (var i = 0u; i < 16u; i++) {
        if (k + i < p.gemm_k) {
            let oh = ba_th - i32(kh * p.dil_h);
            let ow = ba_tw - i32(kw * p.dil_w);
            if (u32(oh) < p.out_h && u32(ow) < p.out_w) {
                v[i] = f32(gy[ba_base + oc * ohw + u32(oh) * p.out_w + u32(ow)]);
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

// B[k][n] = w[g * ocg + oc, n, kh, kw] for 16 consecutive k = (oc, kh, kw).
fn bwd_load_b(k: u32, n: u32, g: u32, n_left: u32, n0: u32) -> array<f32, 16> {
    var v: array<f32, 16>;
    if (n >= n_left) {
        return v;
    }
    let khw = p.k_h * p.k_w;
    var oc = k / khw;
    var r = k - oc * khw;
    for (var i = 0u; i < 16u; i++) {
        if (k + i < p.gemm_k) {
            v[i] = f32(bw[((g * p.ocg + oc) * p.icg + n0 + n) * khw + r]);
        }
        r += 1u;
        if (r == khw) {
            r = 0u;
            oc += 1u;
        }
    }
    return v;
}

@compute @workgroup_size(128)
fn backward(@builtin(workgroup_id) wid: vec3<u32>,
            @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) lid: u32,
            @builtin(subgroup_id) sg: u32) {
    let wg = grid_group(wid, nwg);
    if (wg >= p.total_wg) {
        return;
    }
    let t = tile_id(wg);
    let in_hw = p.in_h * p.in_w;

    let am = lid % BM;
    let akq = (lid / BM) * 16u;
    let m = t.m0 + am;
    ba_ok = m < p.gemm_m;
    let img = m / in_hw;
    let pix = m - img * in_hw;
    let ih = pix / p.in_w;
    let iw = pix - ih * p.in_w;
    ba_th = i32(ih + p.pad_t);
    ba_tw = i32(iw + p.pad_l);
    ba_base = (img * p.out_c + t.g * p.ocg) * p.out_h * p.out_w;
    let bn = lid / 2u;
    let bkq = (lid % 2u) * 16u;
    let n_left = p.gemm_n - t.n0;

    var ra = bwd_load_a(akq);
    var rb = bwd_load_b(bkq, bn, t.g, n_left, t.n0);
    var acc = zero_acc();
    for (var k0 = 0u; k0 < p.gemm_k; k0 += BK) {
        workgroupBarrier();
        store_a(am, akq, ra);
        store_b(bn, bkq, rb);
        workgroupBarrier();
        let k1 = k0 + BK;
        if (k1 < p.gemm_k) {
            ra = bwd_load_a(k1 + akq);
            rb = bwd_load_b(k1 + bkq, bn, t.g, n_left, t.n0);
        }
        acc = mma(acc, sg);
    }
    spill(acc, sg);
    workgroupBarrier();

    if (m >= p.gemm_m) {
        return;
    }
    for (var nn = lid / BM; nn < BN; nn += THREADS / BM) {
        let n = t.n0 + nn;
        if (n >= p.gemm_n) {
            break;
        }
        gx[(img * p.in_c + t.g * p.icg + n) * in_hw + pix] = st(tc[am * BN + nn]);
    }
}
