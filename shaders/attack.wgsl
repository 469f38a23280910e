// Attack kernels: labels for the loss, steps of the FGSM family (sign, momentum,
// L2), random starts, in-ball 8-bit rounding, per-image norms and bookkeeping.

fn flat_group(wid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return wid.x + wid.y * nwg.x;
}

// ---------------------------------------------------------------------------
// The 8-bit level of an adversarial pixel `a` (f32, already in [0,1]) whose
// clean value is `x`: the grid point nearest to `a` among those inside the
// eps ball around x and [0,1], so that |q - x| <= eps always (round to nearest
// alone would leave the ball for an eps off the grid: 0.3 -> 77/255). With
// TOWARD_CLEAN (L2 attacks) the level rounds toward x instead, so no pixel's
// change grows and the L2 norm stays within the ball. A clean pixel off the
// grid with an eps too small to reach any level keeps the level nearest to x.
// The 1e-3 slack (in levels) absorbs f32 error in (x +- eps) * 255.
fn ball_level(x: f32, a: f32, eps: f32, toward_clean: bool) -> f32 {
    let lo = max(ceil((x - eps) * 255.0 - 1e-3), 0.0);
    let hi = min(floor((x + eps) * 255.0 + 1e-3), 255.0);
    var level = round(a * 255.0);
    if (toward_clean) {
        let t = (a - x) * 255.0;
        level = select(ceil(a * 255.0 - 1e-3), floor(a * 255.0 + 1e-3), t >= 0.0);
    }
    if (lo > hi) { return round(x * 255.0); }
    return clamp(level, lo, hi);
}

// Counter-based random numbers: a 32-bit integer hash (Wellons' lowbias32,
// bijective) chained over the key, so a value depends only on (seed, image,
// restart, element) and never on the batch, the adapter or the order.
fn mix32(v: u32) -> u32 {
    var x = v;
    x = x ^ (x >> 16u);
    x = x * 0x7feb352du;
    x = x ^ (x >> 15u);
    x = x * 0x846ca68bu;
    x = x ^ (x >> 16u);
    return x;
}

fn uniform01(seed_lo: u32, seed_hi: u32, image: u32, restart: u32, element: u32) -> f32 {
    var h = mix32(seed_lo ^ 0x9e3779b9u);
    h = mix32(h ^ seed_hi);
    h = mix32(h ^ image);
    h = mix32(h ^ (restart * 0x85ebca6bu));
    h = mix32(h ^ element);
    // 24 bits: exact in f32, in [0, 1)
    return f32(h >> 8u) * (1.0 / 16777216.0);
}

// ---------------------------------------------------------------------------
// step: one step of the FGSM family on `adv` (in place), for one eps:
//   STEP 0 (sign):     adv = clip01(proj(adv + a * sign(g)))
//   STEP 1 (momentum): m = g / mean|g| + decay * m; adv = clip01(proj(adv + a * sign(m)))
//   STEP 2 (l2):       adv = clip01(x + a * g / ||g||_2)   (FGM, one step from x)
// proj clamps to [x - eps, x + eps] (L-inf). `gnorm` holds per image mean|g|
// (STEP 1) or ||g||_2 (STEP 2) from `grad_norm`. As torchattacks: a zero
// gradient moves nothing (sign(0) = 0; a zero norm divides to zero).
override STEP: u32 = 0u;

struct StepParams {
    numel: u32,   // elements of one batch
    item: u32,    // elements of one image
    eps: f32,
    step: f32,
    decay: f32,
    _p0: u32,
    _p1: u32,
    _p2: u32,
}

@group(0) @binding(0) var<uniform> sp: StepParams;
@group(0) @binding(1) var<storage, read> sx: array<f32>;
@group(0) @binding(2) var<storage, read> sg: array<f32>;
@group(0) @binding(3) var<storage, read> sgnorm: array<f32>;
@group(0) @binding(4) var<storage, read_write> sadv: array<f32>;
@group(0) @binding(5) var<storage, read_write> smom: array<f32>;

@compute @workgroup_size(256)
fn step(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = flat_group(wid, nwg) * 256u + lid;
    if (i >= sp.numel) { return; }
    let x = sx[i];
    let g = sg[i];
    var v: f32;
    switch STEP {
        case 1u: {
            let n = sgnorm[i / sp.item];
            let m = select(0.0, g / n, n > 0.0) + sp.decay * smom[i];
            smom[i] = m;
            v = clamp(sadv[i] + sp.step * sign(m), x - sp.eps, x + sp.eps);
        }
        case 2u: {
            let n = sgnorm[i / sp.item];
            v = x + select(0.0, sp.step * g / n, n > 0.0);
        }
        default: {
            v = clamp(sadv[i] + sp.step * sign(g), x - sp.eps, x + sp.eps);
        }
    }
    sadv[i] = clamp(v, 0.0, 1.0);
}

// ---------------------------------------------------------------------------
// grad_norm: per image, STEP 1 the mean of |g| (MI-FGSM), STEP 2 the L2 norm
// (FGM). One workgroup per image.
struct GradNormParams {
    item: u32,
    n: u32,
    _p0: u32,
    _p1: u32,
}

@group(0) @binding(0) var<uniform> gp: GradNormParams;
@group(0) @binding(1) var<storage, read> gg: array<f32>;
@group(0) @binding(2) var<storage, read_write> gout: array<f32>;

var<workgroup> gsum: array<f32, 256>;

@compute @workgroup_size(256)
fn grad_norm(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) lid: u32) {
    let img = flat_group(wid, nwg);
    let live = img < gp.n;
    var s = 0.0;
    if (live) {
        let base = img * gp.item;
        for (var i = lid; i < gp.item; i = i + 256u) {
            let g = gg[base + i];
            s = s + select(abs(g), g * g, STEP == 2u);
        }
    }
    gsum[lid] = s;
    workgroupBarrier();
    for (var stride = 128u; stride > 0u; stride = stride >> 1u) {
        if (lid < stride) {
            gsum[lid] = gsum[lid] + gsum[lid + stride];
        }
        workgroupBarrier();
    }
    if (live && lid == 0u) {
        gout[img] = select(gsum[0] / f32(gp.item), sqrt(gsum[0]), STEP == 2u);
    }
}

// ---------------------------------------------------------------------------
// random_start: adv = clip01(x + eps * (2u - 1)), u uniform in [0, 1) from the
// counter-based generator keyed by (seed, image id, restart, element).
struct StartParams {
    numel: u32,
    item: u32,
    eps: f32,
    restart: u32,
    seed_lo: u32,
    seed_hi: u32,
    _p0: u32,
    _p1: u32,
}

@group(0) @binding(0) var<uniform> rp: StartParams;
@group(0) @binding(1) var<storage, read> rx: array<f32>;
@group(0) @binding(2) var<storage, read> rid: array<u32>;
@group(0) @binding(3) var<storage, read_write> radv: array<f32>;

@compute @workgroup_size(256)
fn random_start(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    let i = flat_group(wid, nwg) * 256u + lid;
    if (i >= rp.numel) { return; }
    let n = i / rp.item;
    let u = uniform01(rp.seed_lo, rp.seed_hi, rid[n], rp.restart, i - n * rp.item);
    radv[i] = clamp(rx[i] + rp.eps * (2.0 * u - 1.0), 0.0, 1.0);
}

// ---------------------------------------------------------------------------
// finalize: the scored and saved image of one eps: out = q(adv) (or adv
// itself without QUANTIZE), q the in-ball 8-bit rounding above; also packs the
// levels (4 per u32) into this eps's slot of the u8 buffer, which starts at
// word `word0` (each slot is ceil(numel / 4) words).
override QUANTIZE: bool = true;
override TOWARD_CLEAN: bool = false;

struct FinalParams {
    numel: u32,
    words: u32,   // words of one slot: ceil(numel / 4)
    word0: u32,
    eps: f32,
}

@group(0) @binding(0) var<uniform> fp: FinalParams;
@group(0) @binding(1) var<storage, read> fx: array<f32>;
@group(0) @binding(2) var<storage, read> fadv: array<f32>;
@group(0) @binding(3) var<storage, read_write> fout: array<f32>;
@group(0) @binding(4) var<storage, read_write> fu8: array<u32>;

@compute @workgroup_size(256)
fn finalize(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) lid: u32) {
    let t = flat_group(wid, nwg) * 256u + lid;
    if (t >= fp.words) { return; }
    var packed = 0u;
    for (var j = 0u; j < 4u; j = j + 1u) {
        let i = t * 4u + j;
        if (i < fp.numel) {
            let a = fadv[i];
            let level = ball_level(fx[i], a, fp.eps, TOWARD_CLEAN);
            fout[i] = select(a, level / 255.0, QUANTIZE);
            packed = packed | (u32(level) << (8u * j));
        }
    }
    fu8[fp.word0 + t] = packed;
}

// ---------------------------------------------------------------------------
// first_success: after a forward at the point reached after `step` steps, per
// image: first[n] = step where the attack first succeeds (untargeted: top-1 is
// not the label; targeted: top-1 is the target) and first[n] is still unset.
struct SuccessParams {
    n: u32,
    classes: u32,
    step: u32,
    targeted: u32,
    out0: u32,    // first output (eps index * n)
    _p0: u32,
    _p1: u32,
    _p2: u32,
}

@group(0) @binding(0) var<uniform> up: SuccessParams;
@group(0) @binding(1) var<storage, read> ulogits: array<st>;
@group(0) @binding(2) var<storage, read> ulabels: array<u32>;
@group(0) @binding(3) var<storage, read> uloss: array<u32>;
@group(0) @binding(4) var<storage, read_write> ufirst: array<u32>;

@compute @workgroup_size(64)
fn first_success(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) lid: u32) {
    let i = flat_group(wid, nwg) * 64u + lid;
    if (i >= up.n) { return; }
    let base = i * up.classes;
    var best = 0u;
    for (var c = 1u; c < up.classes; c = c + 1u) {
        if (f32(ulogits[base + c]) > f32(ulogits[base + best])) { best = c; }
    }
    let ok = select(best != ulabels[i], best == uloss[i], up.targeted == 1u);
    if (ok && ufirst[up.out0 + i] == 0xffffffffu) { ufirst[up.out0 + i] = up.step; }
}

// ---------------------------------------------------------------------------
// restart_score / keep_best (PGD restarts): after a restart's forward, score
// each image (success first, then the loss moved in the attack's direction),
// and keep its point where it beats the best so far (restart 0 always does).
struct ScoreParams {
    n: u32,
    classes: u32,
    restart: u32,
    targeted: u32,
}

@group(0) @binding(0) var<uniform> cp: ScoreParams;
@group(0) @binding(1) var<storage, read> clogits: array<st>;
@group(0) @binding(2) var<storage, read> clabels: array<u32>;
@group(0) @binding(3) var<storage, read> closs: array<u32>;
@group(0) @binding(4) var<storage, read_write> cbest: array<f32>;
@group(0) @binding(5) var<storage, read_write> cflag: array<u32>;

@compute @workgroup_size(64)
fn restart_score(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) lid: u32) {
    let i = flat_group(wid, nwg) * 64u + lid;
    if (i >= cp.n) { return; }
    let base = i * cp.classes;
    var best = 0u;
    var mx = f32(clogits[base]);
    for (var c = 1u; c < cp.classes; c = c + 1u) {
        let v = f32(clogits[base + c]);
        if (v > mx) { best = c; mx = v; }
    }
    var se = 0.0;
    for (var c = 0u; c < cp.classes; c = c + 1u) {
        se = se + exp(f32(clogits[base + c]) - mx);
    }
    let tgt = closs[i];
    let loss = mx + log(se) - f32(clogits[base + min(tgt, cp.classes - 1u)]);
    let ok = select(best != clabels[i], best == tgt, cp.targeted == 1u);
    let score = select(0.0, 1e9, ok) + select(loss, -loss, cp.targeted == 1u);
    let better = cp.restart == 0u || score > cbest[i];
    if (better) { cbest[i] = score; }
    cflag[i] = select(0u, 1u, better);
}

struct KeepParams {
    numel: u32,
    item: u32,
    _p0: u32,
    _p1: u32,
}

@group(0) @binding(0) var<uniform> kp: KeepParams;
@group(0) @binding(1) var<storage, read> kflag: array<u32>;
@group(0) @binding(2) var<storage, read> kadv: array<f32>;
@group(0) @binding(3) var<storage, read_write> kbest: array<f32>;

@compute @workgroup_size(256)
fn keep_best(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) lid: u32) {
    let i = flat_group(wid, nwg) * 256u + lid;
    if (i >= kp.numel) { return; }
    if (kflag[i / kp.item] == 1u) { kbest[i] = kadv[i]; }
}

// ---------------------------------------------------------------------------
// norms: per adversarial image (k, n): L-inf and L2 of adv - x. One workgroup
// per image; out[2 * img] = linf, out[2 * img + 1] = l2.
struct NormParams {
    item: u32,    // C * H * W
    n: u32,       // images per batch
    images: u32,  // images in `nadv` (n)
    out0: u32,    // first output image (eps index * n)
}

@group(0) @binding(0) var<uniform> np: NormParams;
@group(0) @binding(1) var<storage, read> nx: array<f32>;
@group(0) @binding(2) var<storage, read> nadv: array<f32>;
@group(0) @binding(3) var<storage, read_write> nout: array<f32>;

var<workgroup> smax: array<f32, 256>;
var<workgroup> ssum: array<f32, 256>;

@compute @workgroup_size(256)
fn norms(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
         @builtin(local_invocation_index) lid: u32) {
    let img = flat_group(wid, nwg);
    // Uniform control flow: every invocation of the group shares img.
    let live = img < np.images;
    var m = 0.0;
    var s = 0.0;
    if (live) {
        let n = img % np.n;
        let xbase = n * np.item;
        let abase = img * np.item;
        for (var i = lid; i < np.item; i = i + 256u) {
            let d = abs(nadv[abase + i] - nx[xbase + i]);
            m = max(m, d);
            s = s + d * d;
        }
    }
    smax[lid] = m;
    ssum[lid] = s;
    workgroupBarrier();
    for (var stride = 128u; stride > 0u; stride = stride >> 1u) {
        if (lid < stride) {
            smax[lid] = max(smax[lid], smax[lid + stride]);
            ssum[lid] = ssum[lid] + ssum[lid + stride];
        }
        workgroupBarrier();
    }
    if (live && lid == 0u) {
        nout[2u * (np.out0 + img)] = smax[0];
        nout[2u * (np.out0 + img) + 1u] = sqrt(ssum[0]);
    }
}

// ---------------------------------------------------------------------------
// resolve_labels: after the clean forward, fill unknown labels (0xffffffff) with
// the clean top-1 prediction, then choose the class whose loss the attack moves:
// MODE 0 the label (untargeted), 1 a fixed target class, 2 the least-likely class.
override MODE: u32 = 0u;

struct LabelParams {
    n: u32,
    classes: u32,
    target_class: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> lp: LabelParams;
// Logits are `st` (f32 or f16, aliased by the host); everything else here is f32.
@group(0) @binding(1) var<storage, read> llogits: array<st>;
@group(0) @binding(2) var<storage, read_write> llabels: array<u32>;
@group(0) @binding(3) var<storage, read_write> lloss: array<u32>;

@compute @workgroup_size(64)
fn resolve_labels(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                  @builtin(local_invocation_index) lid: u32) {
    let i = flat_group(wid, nwg) * 64u + lid;
    if (i >= lp.n) { return; }
    let base = i * lp.classes;
    // First maximum and first minimum, like torch.argmax / argmin.
    var best = 0u;
    var worst = 0u;
    for (var c = 1u; c < lp.classes; c = c + 1u) {
        let v = f32(llogits[base + c]);
        if (v > f32(llogits[base + best])) { best = c; }
        if (v < f32(llogits[base + worst])) { worst = c; }
    }
    if (llabels[i] == 0xffffffffu) { llabels[i] = best; }
    switch MODE {
        case 1u: { lloss[i] = lp.target_class; }
        case 2u: { lloss[i] = worst; }
        default: { lloss[i] = llabels[i]; }
    }
}
