// Attack kernels: labels for the loss, steps of the FGSM family (sign, momentum,
// L2), random starts, in-ball 8-bit rounding, per-image norms and bookkeeping.

// Workgroup sizes: the host's (`Shader::workgroup_constants`), never written
// here: WG for per-element kernels and per-image reductions (a power of two),
// WG_IMAGES for kernels with one thread per image.
override WG: u32;
override WG_IMAGES: u32;

// Elements of one image, for the per-element kernels that look up a per-image
// value (eps, norms, flags): a pipeline constant, so `i / ITEM` compiles to a
// multiply instead of a division per element.
override ITEM: u32 = 1u;

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

// ---------------------------------------------------------------------------
// step: one step of the FGSM family on `adv` (in place):
//   STEP 0 (sign):     adv = clip01(proj(adv + a * sign(g)))
//   STEP 1 (momentum): m = g / mean|g| + decay * m; adv = clip01(proj(adv + a * sign(m)))
//   STEP 2 (l2):       adv = clip01(x + a * g / ||g||_2)   (FGM, one step from x)
// Each image has its own eps (`seps`, one per image: the run's eps, or a
// --minimal bisection's) and step a = step_abs + step_rel * eps.
// proj clamps to [x - eps, x + eps] (L-inf). `gnorm` holds per image mean|g|
// (STEP 1) or ||g||_2 (STEP 2) from `grad_norm`. As torchattacks: a zero
// gradient moves nothing (sign(0) = 0; a zero norm divides to zero).
override STEP: u32 = 0u;
// FROM_X: the first step of a run without random start moves from x itself
// (no copy of x into adv first).
override FROM_X: bool = false;

struct StepParams {
    numel: u32,   // elements of one batch
    item: u32,    // elements of one image
    step_abs: f32,
    step_rel: f32,
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
@group(0) @binding(6) var<storage, read> seps: array<f32>;

// The point a step moves from: x on a run's first step (FROM_X), else adv.
fn step_from(i: u32, x: f32) -> f32 {
    if (FROM_X) {
        return x;
    }
    return sadv[i];
}

@compute @workgroup_size(WG)
fn step(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = grid_thread(wid, nwg, lid, WG);
    if (i >= sp.numel) { return; }
    let x = sx[i];
    let g = sg[i];
    let eps = seps[i / ITEM];
    let a = sp.step_abs + sp.step_rel * eps;
    var v: f32;
    switch STEP {
        case 1u: {
            let n = sgnorm[i / ITEM];
            let m = select(0.0, g / n, n > 0.0) + sp.decay * smom[i];
            smom[i] = m;
            v = clamp(step_from(i, x) + a * sign(m), x - eps, x + eps);
        }
        case 2u: {
            let n = sgnorm[i / ITEM];
            v = x + select(0.0, a * g / n, n > 0.0);
        }
        default: {
            v = clamp(step_from(i, x) + a * sign(g), x - eps, x + eps);
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

var<workgroup> gsum: array<f32, WG>;

@compute @workgroup_size(WG)
fn grad_norm(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) lid: u32) {
    let img = grid_group(wid, nwg);
    let live = img < gp.n;
    var s = 0.0;
    if (live) {
        let base = img * gp.item;
        for (var i = lid; i < gp.item; i = i + WG) {
            let g = gg[base + i];
            s = s + select(abs(g), g * g, STEP == 2u);
        }
    }
    gsum[lid] = s;
    workgroupBarrier();
    for (var stride = WG / 2u; stride > 0u; stride = stride >> 1u) {
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
// random_start: adv = clip01(x + eps * (2u - 1)) (eps per image), u uniform in [0, 1) from the
// counter-based generator keyed by (seed, image id, restart, element).
struct StartParams {
    numel: u32,
    item: u32,
    _p2: u32,
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
@group(0) @binding(4) var<storage, read> reps: array<f32>;

@compute @workgroup_size(WG)
fn random_start(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    let i = grid_thread(wid, nwg, lid, WG);
    if (i >= rp.numel) { return; }
    let n = i / rp.item;
    let u = uniform01(rp.seed_lo, rp.seed_hi, rid[n], rp.restart, i - n * rp.item);
    radv[i] = clamp(rx[i] + reps[n] * (2.0 * u - 1.0), 0.0, 1.0);
}

// ---------------------------------------------------------------------------
// finalize: the scored and saved image of one eps (per image): out = q(adv) (or adv
// itself without QUANTIZE), q the in-ball 8-bit rounding above; also packs the
// levels (4 per u32) into this eps's slot of the u8 buffer, which starts at
// word `word0` (each slot is ceil(numel / 4) words).
override QUANTIZE: bool = true;
override TOWARD_CLEAN: bool = false;

struct FinalParams {
    numel: u32,
    words: u32,   // words of one slot: ceil(numel / 4)
    word0: u32,
    item: u32,
}

@group(0) @binding(0) var<uniform> fp: FinalParams;
@group(0) @binding(1) var<storage, read> fx: array<f32>;
@group(0) @binding(2) var<storage, read> fadv: array<f32>;
@group(0) @binding(3) var<storage, read_write> fout: array<f32>;
@group(0) @binding(4) var<storage, read_write> fu8: array<u32>;
@group(0) @binding(5) var<storage, read> feps: array<f32>;

@compute @workgroup_size(WG)
fn finalize(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) lid: u32) {
    let t = grid_thread(wid, nwg, lid, WG);
    if (t >= fp.words) { return; }
    var packed = 0u;
    for (var j = 0u; j < 4u; j = j + 1u) {
        let i = t * 4u + j;
        if (i < fp.numel) {
            let a = fadv[i];
            let level = ball_level(fx[i], a, feps[i / ITEM], TOWARD_CLEAN);
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

@compute @workgroup_size(WG_IMAGES)
fn first_success(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) lid: u32) {
    let i = grid_thread(wid, nwg, lid, WG_IMAGES);
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

@compute @workgroup_size(WG_IMAGES)
fn restart_score(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) lid: u32) {
    let i = grid_thread(wid, nwg, lid, WG_IMAGES);
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

@compute @workgroup_size(WG)
fn keep_best(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) lid: u32) {
    let i = grid_thread(wid, nwg, lid, WG);
    if (i >= kp.numel) { return; }
    if (kflag[i / ITEM] == 1u) { kbest[i] = kadv[i]; }
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

var<workgroup> smax: array<f32, WG>;
var<workgroup> ssum: array<f32, WG>;

@compute @workgroup_size(WG)
fn norms(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
         @builtin(local_invocation_index) lid: u32) {
    let img = grid_group(wid, nwg);
    // Uniform control flow: every invocation of the group shares img.
    let live = img < np.images;
    var m = 0.0;
    var s = 0.0;
    if (live) {
        let n = img % np.n;
        let xbase = n * np.item;
        let abase = img * np.item;
        for (var i = lid; i < np.item; i = i + WG) {
            let d = abs(nadv[abase + i] - nx[xbase + i]);
            m = max(m, d);
            s = s + d * d;
        }
    }
    smax[lid] = m;
    ssum[lid] = s;
    workgroupBarrier();
    for (var stride = WG / 2u; stride > 0u; stride = stride >> 1u) {
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
// MODE 0 the label (untargeted), 1 a fixed target class, 2 the least-likely class
// (the host's `LabelMode`).
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

@compute @workgroup_size(WG_IMAGES)
fn resolve_labels(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                  @builtin(local_invocation_index) lid: u32) {
    let i = grid_thread(wid, nwg, lid, WG_IMAGES);
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

// ---------------------------------------------------------------------------
// APGD (Croce & Hein 2020), as `autopgd_base.py` of the AutoAttack reference
// code, L-inf. Per image the host's replay list runs, for each run (restart or
// target class): apgd_start, a forward and backward, apgd_track (phase 0),
// then per iteration apgd_step, a forward and backward, apgd_track (phase 1,
// with the checkpoint test at the reference's checkpoint iterations) and
// apgd_apply; then apgd_track (phase 2) and apgd_apply take the run's result
// for images it fooled that no earlier run had. Per-image state, APGD_S f32
// each: step size, best loss, best loss at the last checkpoint, "reduced at
// the last checkpoint", previous loss, count of increases since the last
// checkpoint, acc (not yet fooled in this run), robust (not fooled by any run),
// flags for apgd_apply, clean_ok.
const APGD_S: u32 = 12u;
const A_STEP: u32 = 0u;
const A_BEST: u32 = 1u;
const A_LAST: u32 = 2u;
const A_REDUCED: u32 = 3u;
const A_PREV: u32 = 4u;
const A_COUNT: u32 = 5u;
const A_ACC: u32 = 6u;
const A_ROBUST: u32 = 7u;
const A_FLAGS: u32 = 8u;
const A_CLEAN_OK: u32 = 9u;
// apgd_apply flags, in the order it applies them.
const F_FOOLED: u32 = 1u;   // x_best_adv = adv
const F_IMPROVED: u32 = 2u; // x_best = adv, grad_best = grad
const F_RESET: u32 = 4u;    // adv = x_best, grad = grad_best
const F_TAKE: u32 = 8u;     // result = x_best_adv

// apgd_start: one workgroup per image. adv = clip01(x + eps * t / (|t| +
// 1e-12)), the reference's normalised start: in L-inf t = 2u - 1 from the
// counter-based generator and |t| its largest magnitude; with APGD_L2, t
// standard normal (normal01) and |t| its L2 norm; x itself without RANDOM.
// The start is also the first x_adv_old, x_best, x_best_adv and the
// forward's input.
override APGD_L2: bool = false;

fn apgd_draw(id: u32, j: u32) -> f32 {
    if (APGD_L2) {
        return normal01(asp.seed_lo, asp.seed_hi, id, asp.restart, j);
    }
    return 2.0 * uniform01(asp.seed_lo, asp.seed_hi, id, asp.restart, j) - 1.0;
}

struct ApgdStartParams {
    item: u32,
    n: u32,
    _p1: u32,
    restart: u32,
    seed_lo: u32,
    seed_hi: u32,
    random: u32,
    _p0: u32,
}

@group(0) @binding(0) var<uniform> asp: ApgdStartParams;
@group(0) @binding(1) var<storage, read> as_x: array<f32>;
@group(0) @binding(2) var<storage, read> as_id: array<u32>;
@group(0) @binding(3) var<storage, read_write> as_adv: array<f32>;
@group(0) @binding(4) var<storage, read_write> as_old: array<f32>;
@group(0) @binding(5) var<storage, read_write> as_best: array<f32>;
@group(0) @binding(6) var<storage, read_write> as_best_adv: array<f32>;
@group(0) @binding(7) var<storage, read_write> as_input: array<f32>;
@group(0) @binding(8) var<storage, read> as_eps: array<f32>;

var<workgroup> amax: array<f32, WG>;

@compute @workgroup_size(WG)
fn apgd_start(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) lid: u32) {
    let img = grid_group(wid, nwg);
    let live = img < asp.n;
    let random = asp.random == 1u;
    var id = 0u;
    var eps = 0.0;
    if (live) {
        id = as_id[img];
        eps = as_eps[img];
    }
    var m = 0.0;
    if (live && random) {
        for (var j = lid; j < asp.item; j = j + WG) {
            let t = apgd_draw(id, j);
            if (APGD_L2) { m = m + t * t; } else { m = max(m, abs(t)); }
        }
    }
    amax[lid] = m;
    workgroupBarrier();
    for (var stride = WG / 2u; stride > 0u; stride = stride >> 1u) {
        if (lid < stride) {
            if (APGD_L2) {
                amax[lid] = amax[lid] + amax[lid + stride];
            } else {
                amax[lid] = max(amax[lid], amax[lid + stride]);
            }
        }
        workgroupBarrier();
    }
    let size = select(amax[0], sqrt(amax[0]), APGD_L2);
    let scale = eps / (size + 1e-12);
    if (!live) { return; }
    let base = img * asp.item;
    for (var j = lid; j < asp.item; j = j + WG) {
        let i = base + j;
        var v = as_x[i];
        if (random) {
            v = clamp(v + scale * apgd_draw(id, j), 0.0, 1.0);
        }
        as_adv[i] = v;
        as_old[i] = v;
        as_best[i] = v;
        as_best_adv[i] = v;
        as_input[i] = v;
    }
}

// apgd_step: one APGD step with momentum 0.75 (a = 1 on the first step):
//   z = clip01(proj(adv + step * sign(g)))
//   adv' = clip01(proj(adv + (z - adv) * a + (adv - adv_old) * (1 - a)))
// adv_old takes the old adv; the forward's input takes adv'.
struct ApgdStepParams {
    numel: u32,
    item: u32,
    _p0: u32,
    first: u32,
}

@group(0) @binding(0) var<uniform> app: ApgdStepParams;
@group(0) @binding(1) var<storage, read> ap_x: array<f32>;
@group(0) @binding(2) var<storage, read> ap_g: array<f32>;
@group(0) @binding(3) var<storage, read> ap_state: array<f32>;
@group(0) @binding(4) var<storage, read_write> ap_adv: array<f32>;
@group(0) @binding(5) var<storage, read_write> ap_old: array<f32>;
@group(0) @binding(6) var<storage, read_write> ap_input: array<f32>;
@group(0) @binding(7) var<storage, read> ap_eps: array<f32>;

@compute @workgroup_size(WG)
fn apgd_step(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) lid: u32) {
    let i = grid_thread(wid, nwg, lid, WG);
    if (i >= app.numel) { return; }
    let x = ap_x[i];
    let eps = ap_eps[i / ITEM];
    let lo = x - eps;
    let hi = x + eps;
    let xa = ap_adv[i];
    let g2 = xa - ap_old[i];
    ap_old[i] = xa;
    let step = ap_state[(i / ITEM) * APGD_S + A_STEP];
    let z = clamp(clamp(xa + step * sign(ap_g[i]), lo, hi), 0.0, 1.0);
    let a = select(0.75, 1.0, app.first == 1u);
    let v = clamp(clamp(xa + (z - xa) * a + g2 * (1.0 - a), lo, hi), 0.0, 1.0);
    ap_adv[i] = v;
    ap_input[i] = v;
}

// apgd_step_l2: the same step in L2, one workgroup per image, as the
// reference: g' = g / (||g|| + 1e-12), P(v) = clip01(x + (v - x) min(eps,
// ||v - x||) / (||v - x|| + 1e-12)),
//   z = P(adv + step * g'), adv' = P(adv + (z - adv) * a + (adv - adv_old) * (1 - a)).
// Four sums per image: ||g||, ||adv + step g' - x||, ||momentum point - x||;
// z is computed again rather than stored.
@compute @workgroup_size(WG)
fn apgd_step_l2(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    let img = grid_group(wid, nwg);
    let live = img < app.numel / app.item;
    let base = img * app.item;
    var eps = 0.0;
    var step = 0.0;
    if (live) {
        eps = ap_eps[img];
        step = ap_state[img * APGD_S + A_STEP];
    }
    let a = select(0.75, 1.0, app.first == 1u);
    var s = 0.0;
    if (live) {
        for (var j = lid; j < app.item; j = j + WG) {
            let g = ap_g[base + j];
            s = s + g * g;
        }
    }
    let gs = step / (sqrt(l2_reduce(lid, s)) + 1e-12);
    s = 0.0;
    if (live) {
        for (var j = lid; j < app.item; j = j + WG) {
            let d = ap_adv[base + j] + gs * ap_g[base + j] - ap_x[base + j];
            s = s + d * d;
        }
    }
    let r1 = sqrt(l2_reduce(lid, s));
    let f1 = min(eps, r1) / (r1 + 1e-12);
    s = 0.0;
    if (live) {
        for (var j = lid; j < app.item; j = j + WG) {
            let i = base + j;
            let x = ap_x[i];
            let xa = ap_adv[i];
            let z = clamp(x + (xa + gs * ap_g[i] - x) * f1, 0.0, 1.0);
            let d = xa + (z - xa) * a + (xa - ap_old[i]) * (1.0 - a) - x;
            s = s + d * d;
        }
    }
    let r2 = sqrt(l2_reduce(lid, s));
    let f2 = min(eps, r2) / (r2 + 1e-12);
    if (!live) { return; }
    for (var j = lid; j < app.item; j = j + WG) {
        let i = base + j;
        let x = ap_x[i];
        let xa = ap_adv[i];
        let z = clamp(x + (xa + gs * ap_g[i] - x) * f1, 0.0, 1.0);
        let v = xa + (z - xa) * a + (xa - ap_old[i]) * (1.0 - a);
        let out = clamp(x + (v - x) * f2, 0.0, 1.0);
        ap_old[i] = xa;
        ap_adv[i] = out;
        ap_input[i] = out;
    }
}

// apgd_track: per image, after a forward (and the loss) at the current point.
//   phase 4 (clean logits): clean_ok = the clean image is not yet fooled
//   phase 3 (an eps begins): robust = clean_ok
//   phase 0 (a run's start): acc, best loss = loss, step = 2 eps (the image's),
//     counters reset
//   phase 1 (a step): acc, x_best_adv where fooled, best loss/point/gradient
//     where the loss rose, and at a checkpoint (check >= 0) the reference's test:
//     halve the step and go back to the best point where the loss rose on at
//     most `check` (= 0.75 k) of the last k steps, or where the step was not
//     reduced at the last checkpoint and the best loss has not improved since
//   phase 2 (a run's end): robust images this run fooled take its result
// "Fooled": top-1 is not the label (targeted: is the target). first[out0 + i]
// records the total step count where an image is first fooled.
struct ApgdTrackParams {
    n: u32,
    classes: u32,
    targeted: u32,
    phase: u32,
    step: u32,
    out0: u32,
    negate: u32,   // the loss to raise is -loss (targeted cross-entropy)
    _p0: u32,
    check: f32,    // < 0: no checkpoint at this step
    _p1: u32,
    _p2: u32,
    _p3: u32,
}

@group(0) @binding(0) var<uniform> atp: ApgdTrackParams;
@group(0) @binding(1) var<storage, read> at_logits: array<st>;
@group(0) @binding(2) var<storage, read> at_labels: array<u32>;
@group(0) @binding(3) var<storage, read> at_loss_labels: array<u32>;
@group(0) @binding(4) var<storage, read> at_loss: array<f32>;
@group(0) @binding(5) var<storage, read_write> at_state: array<f32>;
@group(0) @binding(6) var<storage, read_write> at_first: array<u32>;
@group(0) @binding(7) var<storage, read> at_eps: array<f32>;

@compute @workgroup_size(WG_IMAGES)
fn apgd_track(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) lid: u32) {
    let i = grid_thread(wid, nwg, lid, WG_IMAGES);
    if (i >= atp.n) { return; }
    let s = i * APGD_S;
    if (atp.phase == 3u) {
        at_state[s + A_ROBUST] = at_state[s + A_CLEAN_OK];
        at_state[s + A_FLAGS] = 0.0;
        return;
    }
    if (atp.phase == 2u) {
        let take = at_state[s + A_ROBUST] == 1.0 && at_state[s + A_ACC] == 0.0;
        if (take) { at_state[s + A_ROBUST] = 0.0; }
        at_state[s + A_FLAGS] = select(0.0, f32(F_TAKE), take);
        return;
    }
    // Top-1 as torch's max(1)[1]: the first maximum.
    let base = i * atp.classes;
    var best = 0u;
    for (var c = 1u; c < atp.classes; c = c + 1u) {
        if (f32(at_logits[base + c]) > f32(at_logits[base + best])) { best = c; }
    }
    let fooled = select(best != at_labels[i], best == at_loss_labels[i], atp.targeted == 1u);
    if (atp.phase == 4u) {
        at_state[s + A_CLEAN_OK] = select(1.0, 0.0, fooled);
        return;
    }
    if (fooled && at_first[atp.out0 + i] == 0xffffffffu) { at_first[atp.out0 + i] = atp.step; }
    let loss = select(at_loss[i], -at_loss[i], atp.negate == 1u);
    if (atp.phase == 0u) {
        at_state[s + A_STEP] = 2.0 * at_eps[i];
        at_state[s + A_BEST] = loss;
        at_state[s + A_LAST] = loss;
        at_state[s + A_REDUCED] = 1.0;
        at_state[s + A_PREV] = 0.0;   // the reference compares its first loss with a zero
        at_state[s + A_COUNT] = 0.0;
        at_state[s + A_ACC] = select(1.0, 0.0, fooled);
        at_state[s + A_FLAGS] = 0.0;
        return;
    }
    var flags = 0u;
    if (fooled) {
        at_state[s + A_ACC] = 0.0;
        flags = flags | F_FOOLED;
    }
    var lbest = at_state[s + A_BEST];
    if (loss > lbest) {
        lbest = loss;
        at_state[s + A_BEST] = loss;
        flags = flags | F_IMPROVED;
    }
    var count = at_state[s + A_COUNT] + select(0.0, 1.0, loss > at_state[s + A_PREV]);
    at_state[s + A_PREV] = loss;
    if (atp.check >= 0.0) {
        let oscillating = count <= atp.check;
        let stalled = at_state[s + A_REDUCED] == 0.0 && at_state[s + A_LAST] >= lbest;
        let reduce = oscillating || stalled;
        at_state[s + A_REDUCED] = select(0.0, 1.0, reduce);
        at_state[s + A_LAST] = lbest;
        if (reduce) {
            at_state[s + A_STEP] = at_state[s + A_STEP] * 0.5;
            flags = flags | F_RESET;
        }
        count = 0.0;
    }
    at_state[s + A_COUNT] = count;
    at_state[s + A_FLAGS] = f32(flags);
}

// apgd_apply: the copies apgd_track asked for, per element (see the flags).
struct ApgdApplyParams {
    numel: u32,
    item: u32,
    _p0: u32,
    _p1: u32,
}

@group(0) @binding(0) var<uniform> aap: ApgdApplyParams;
@group(0) @binding(1) var<storage, read> aa_state: array<f32>;
@group(0) @binding(2) var<storage, read_write> aa_adv: array<f32>;
@group(0) @binding(3) var<storage, read_write> aa_best: array<f32>;
@group(0) @binding(4) var<storage, read_write> aa_best_adv: array<f32>;
@group(0) @binding(5) var<storage, read_write> aa_g: array<f32>;
@group(0) @binding(6) var<storage, read_write> aa_g_best: array<f32>;
@group(0) @binding(7) var<storage, read_write> aa_result: array<f32>;

@compute @workgroup_size(WG)
fn apgd_apply(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) lid: u32) {
    let i = grid_thread(wid, nwg, lid, WG);
    if (i >= aap.numel) { return; }
    let f = u32(aa_state[(i / ITEM) * APGD_S + A_FLAGS]);
    if (f == 0u) { return; }
    if ((f & F_FOOLED) != 0u) { aa_best_adv[i] = aa_adv[i]; }
    if ((f & F_IMPROVED) != 0u) {
        aa_best[i] = aa_adv[i];
        aa_g_best[i] = aa_g[i];
    }
    if ((f & F_RESET) != 0u) {
        aa_adv[i] = aa_best[i];
        aa_g[i] = aa_g_best[i];
    }
    if ((f & F_TAKE) != 0u) { aa_result[i] = aa_best_adv[i]; }
}

// apgd_targets: per image, the classes the clean logits rank 2nd, 3rd, ...
// (count of them) into targets[r * n + i], r = 0 for the 2nd: the reference's
// `output.sort(dim=1)[1][:, -(r + 2)]` (ties: the higher index ranks higher).
struct ApgdTargetParams {
    n: u32,
    classes: u32,
    count: u32,
    _p0: u32,
}

@group(0) @binding(0) var<uniform> agp: ApgdTargetParams;
@group(0) @binding(1) var<storage, read> ag_logits: array<st>;
@group(0) @binding(2) var<storage, read_write> ag_targets: array<u32>;

fn ranks_above(va: f32, a: u32, vb: f32, b: u32) -> bool {
    return va > vb || (va == vb && a > b);
}

@compute @workgroup_size(WG_IMAGES)
fn apgd_targets(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    let i = grid_thread(wid, nwg, lid, WG_IMAGES);
    if (i >= agp.n) { return; }
    let base = i * agp.classes;
    // The top class, then repeatedly the best class ranked below the last one.
    var pc = 0u;
    var pv = f32(ag_logits[base]);
    for (var c = 1u; c < agp.classes; c = c + 1u) {
        let v = f32(ag_logits[base + c]);
        if (ranks_above(v, c, pv, pc)) { pc = c; pv = v; }
    }
    for (var r = 0u; r < agp.count; r = r + 1u) {
        var bc = 0xffffffffu;
        var bv = 0.0;
        for (var c = 0u; c < agp.classes; c = c + 1u) {
            let v = f32(ag_logits[base + c]);
            if (ranks_above(pv, pc, v, c) && (bc == 0xffffffffu || ranks_above(v, c, bv, bc))) {
                bc = c;
                bv = v;
            }
        }
        ag_targets[r * agp.n + i] = bc;
        pc = bc;
        pv = bv;
    }
}

// ---------------------------------------------------------------------------
// --minimal: per image a bisection over eps levels k (eps = k / 255) for the
// smallest level where the attack succeeds, in `lohi` (f32 pairs: lo fails,
// hi succeeds; resolved when hi - lo <= 1; hi = K + 1: never up to K).
//   bisect_mid: eps of the next round = floor((lo + hi) / 2) / 255
//   bisect_update after a forward ("fooled" as first_success):
//     PHASE 0 (clean logits): fooled clean -> (-1, 0), else (0, K + 1)
//     PHASE 1 (the run's own eps, level K) and PHASE 2 (a round, level mid):
//       unresolved images: fooled -> hi = level, else lo = level
struct BisectParams {
    n: u32,
    classes: u32,
    targeted: u32,
    phase: u32,
    top: f32,   // K
    _p0: u32,
    _p1: u32,
    _p2: u32,
}

@group(0) @binding(0) var<uniform> bp: BisectParams;
@group(0) @binding(1) var<storage, read_write> b_lohi: array<f32>;
@group(0) @binding(2) var<storage, read_write> b_eps: array<f32>;

@compute @workgroup_size(WG_IMAGES)
fn bisect_mid(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) lid: u32) {
    let i = grid_thread(wid, nwg, lid, WG_IMAGES);
    if (i >= bp.n) { return; }
    let lo = b_lohi[2u * i];
    let hi = b_lohi[2u * i + 1u];
    b_eps[i] = select(floor((lo + hi) * 0.5), bp.top, hi - lo <= 1.0) / 255.0;
}

@group(0) @binding(1) var<storage, read> bu_logits: array<st>;
@group(0) @binding(2) var<storage, read> bu_labels: array<u32>;
@group(0) @binding(3) var<storage, read> bu_loss: array<u32>;
@group(0) @binding(4) var<storage, read_write> bu_lohi: array<f32>;

@compute @workgroup_size(WG_IMAGES)
fn bisect_update(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) lid: u32) {
    let i = grid_thread(wid, nwg, lid, WG_IMAGES);
    if (i >= bp.n) { return; }
    let base = i * bp.classes;
    var best = 0u;
    for (var c = 1u; c < bp.classes; c = c + 1u) {
        if (f32(bu_logits[base + c]) > f32(bu_logits[base + best])) { best = c; }
    }
    let fooled = select(best != bu_labels[i], best == bu_loss[i], bp.targeted == 1u);
    let lo = bu_lohi[2u * i];
    let hi = bu_lohi[2u * i + 1u];
    switch bp.phase {
        case 0u: {
            bu_lohi[2u * i] = select(0.0, -1.0, fooled);
            bu_lohi[2u * i + 1u] = select(bp.top + 1.0, 0.0, fooled);
        }
        default: {
            if (hi - lo > 1.0) {
                let level = select(floor((lo + hi) * 0.5), bp.top, bp.phase == 1u);
                if (fooled) { bu_lohi[2u * i + 1u] = level; } else { bu_lohi[2u * i] = level; }
            }
        }
    }
}

// ---------------------------------------------------------------------------
// L2 BIM/PGD (torchattacks' PGDL2), one workgroup per image:
// step_l2:  adv' = adv + a * g / (||g||_2 + 1e-10); delta = adv' - x, scaled
//           by min(1, eps / ||delta||_2); adv = clip01(x + delta)
// random_start_l2: delta = z / ||z||_2 * r * eps, z standard normal per pixel
//           (Box-Muller of the counter-based uniforms), r uniform in [0, 1)
//           per image; adv = clip01(x + delta)
// Bindings as `step` (momentum unused) and `random_start`.
var<workgroup> l2sum: array<f32, WG>;

fn l2_reduce(lid: u32, v: f32) -> f32 {
    l2sum[lid] = v;
    workgroupBarrier();
    for (var stride = WG / 2u; stride > 0u; stride = stride >> 1u) {
        if (lid < stride) {
            l2sum[lid] = l2sum[lid] + l2sum[lid + stride];
        }
        workgroupBarrier();
    }
    let total = l2sum[0];
    workgroupBarrier();
    return total;
}

@compute @workgroup_size(WG)
fn step_l2(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) lid: u32) {
    let img = grid_group(wid, nwg);
    let n = sp.numel / sp.item;
    let live = img < n;
    let base = img * sp.item;
    var s = 0.0;
    if (live) {
        for (var j = lid; j < sp.item; j = j + WG) {
            let g = sg[base + j];
            s = s + g * g;
        }
    }
    let gn = sqrt(l2_reduce(lid, s)) + 1e-10;
    var eps = 0.0;
    if (live) { eps = seps[img]; }
    let a = sp.step_abs + sp.step_rel * eps;
    var d2 = 0.0;
    if (live) {
        for (var j = lid; j < sp.item; j = j + WG) {
            let v = sadv[base + j] + a * (sg[base + j] / gn);
            sadv[base + j] = v;
            let d = v - sx[base + j];
            d2 = d2 + d * d;
        }
    }
    let dn = sqrt(l2_reduce(lid, d2));
    let factor = select(1.0, min(eps / dn, 1.0), dn > 0.0);
    if (!live) { return; }
    for (var j = lid; j < sp.item; j = j + WG) {
        let x = sx[base + j];
        sadv[base + j] = clamp(x + (sadv[base + j] - x) * factor, 0.0, 1.0);
    }
}

fn normal01(seed_lo: u32, seed_hi: u32, image: u32, restart: u32, element: u32) -> f32 {
    let u1 = uniform01(seed_lo, seed_hi, image, restart, 2u * element);
    let u2 = uniform01(seed_lo, seed_hi, image, restart, 2u * element + 1u);
    return sqrt(-2.0 * log(1.0 - u1)) * cos(6.283185307179586 * u2);
}

@compute @workgroup_size(WG)
fn random_start_l2(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                   @builtin(local_invocation_index) lid: u32) {
    let img = grid_group(wid, nwg);
    let n = rp.numel / rp.item;
    let live = img < n;
    let base = img * rp.item;
    var id = 0u;
    if (live) { id = rid[img]; }
    var s = 0.0;
    if (live) {
        for (var j = lid; j < rp.item; j = j + WG) {
            let z = normal01(rp.seed_lo, rp.seed_hi, id, rp.restart, j);
            s = s + z * z;
        }
    }
    let zn = sqrt(l2_reduce(lid, s));
    if (!live) { return; }
    let r = uniform01(rp.seed_lo, rp.seed_hi, id, rp.restart, 0xffffffffu);
    let scale = select(0.0, r * reps[img] / zn, zn > 0.0);
    for (var j = lid; j < rp.item; j = j + WG) {
        let z = normal01(rp.seed_lo, rp.seed_hi, id, rp.restart, j);
        radv[base + j] = clamp(rx[base + j] + z * scale, 0.0, 1.0);
    }
}
