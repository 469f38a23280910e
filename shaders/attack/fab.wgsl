// FAB-T (Croce & Hein 2020, "Minimally distorted adversarial examples with a
// fast adaptive boundary attack") as AutoAttack's fab_base.py / fab_pt.py run
// it, L-inf and L2 (the NORM_L2 override). Host side: src/attack/fab.rs.
//
// Each iteration linearises f = z_target - z_label at the current point x1
// (its value df and gradient g come from the gradient plan), projects x1 and
// the clean x0 onto the hyperplane {z : <g, z> = <g, x1> - df} inside the box
// [0, 1] (the minimal L-inf / L2 step d1, d2), and moves to
//   x1' = clip01((x1 + eta d1)(1 - a) + (x0 + eta d2) a),
//   a = min(max(|d1| / (|d1| + |d2|), 0), alpha_max).
// Where x1' is adversarial (top-1 not the label) and closer to x0 than the
// best so far, it is kept, and x1 steps back toward x0: x0 + beta (x1' - x0).
//
// The projection: with c = <g, t> - b >= 0 after flipping g's sign, the step
// moves each coordinate toward the box corner that lowers <g, t>, by
// min(lambda, room_i) (L-inf; room the distance to the corner) or
// g_i min(lambda, r_i) (L2; r_i where coordinate i reaches its bound), with
// lambda the root of sum_i weight_i min(lambda, room_i) = c (weights |g_i|,
// g_i^2). The reference sorts the rooms per image; here Newton's method on
// that concave piecewise-linear sum, from lambda = 0, reaches the root from
// below (24 rounds, each one reduction of the sum and its slope): the same
// minimiser, no sort. If even the whole box cannot reach the plane, every
// coordinate goes to its corner, as in the reference.

override WG: u32;
override WG_IMAGES: u32;
override ITEM: u32 = 1u;
override NORM_L2: bool = false;

const FB_S: u32 = 8u;
const B_CLEAN_OK: u32 = 0u;  // the clean image is right (FAB attacks only those)
const B_ROBUST: u32 = 1u;    // no target run has found a point inside the ball yet
const B_ATTACK: u32 = 2u;    // attacked by the current target run
const B_RES: u32 = 3u;       // distance of the run's best adversarial point (1e10: none)
const B_NORM: u32 = 4u;      // distance of this iteration's x1' to x0
const B_FLAGS: u32 = 5u;     // this iteration: 1 adversarial, 2 closer (kept), 4 take the run's result
const B_FIRST: u32 = 6u;     // iterations until the run first found a point inside the ball (-1: none)

const FL_ADV: u32 = 1u;
const FL_KEEP: u32 = 2u;
const FL_TAKE: u32 = 4u;

const NEWTON: u32 = 24u;

var<workgroup> fb_red2: array<vec2<f32>, WG>;

fn fb_sum2(lid: u32, v: vec2<f32>) -> vec2<f32> {
    workgroupBarrier();
    fb_red2[lid] = v;
    workgroupBarrier();
    for (var stride = WG / 2u; stride > 0u; stride = stride >> 1u) {
        if (lid < stride) {
            fb_red2[lid] = fb_red2[lid] + fb_red2[lid + stride];
        }
        workgroupBarrier();
    }
    return fb_red2[0];
}

// ---------------------------------------------------------------------------
// fab_step (one workgroup per image): the projections and the new point x1'
// into `out` (the forward's input), its distance to x0 into the state.
struct FabParams {
    n: u32,
    item: u32,
    eta: f32,
    alpha_max: f32,
    beta: f32,
    _p0: u32,
    _p1: u32,
    _p2: u32,
}

@group(0) @binding(0) var<uniform> fs: FabParams;
@group(0) @binding(1) var<storage, read> fs_x0: array<f32>;
@group(0) @binding(2) var<storage, read> fs_x1: array<f32>;
@group(0) @binding(3) var<storage, read> fs_g: array<f32>;
@group(0) @binding(4) var<storage, read> fs_df: array<f32>;
@group(0) @binding(5) var<storage, read_write> fs_out: array<f32>;
@group(0) @binding(6) var<storage, read_write> fs_state: array<f32>;

// The point projected: x1 or x0.
fn fb_point(i: u32, clean: bool) -> f32 {
    return select(fs_x1[i], fs_x0[i], clean);
}

// Coordinate i's weight, breakpoint and direction for the flipped gradient
// s * g: (weight, room or r, direction), weight 0 for a coordinate that never moves.
fn fb_coord(i: u32, clean: bool, s: f32) -> vec3<f32> {
    let t = fb_point(i, clean);
    let w = s * fs_g[i];
    if (NORM_L2) {
        if (abs(w) < 1e-8) { return vec3<f32>(0.0, 0.0, 0.0); }
        let r = clamp(max(t / w, (t - 1.0) / w), 0.0, 1e12);
        return vec3<f32>(w * w, r, -w);
    }
    if (w == 0.0) { return vec3<f32>(0.0, 0.0, 0.0); }
    let up = w < 0.0;
    let room = select(t, 1.0 - t, up);
    return vec3<f32>(abs(w), room, select(-1.0, 1.0, up));
}

// lambda for the point (see the header); 3e38 when the whole box is needed.
// Every thread runs the same reductions (barriers), whatever the case.
fn fb_solve(lid: u32, live: bool, base: u32, clean: bool, c_raw: f32) -> f32 {
    let s = select(-1.0, 1.0, c_raw >= 0.0);
    let c = abs(c_raw);
    var tot = 0.0;
    if (live) {
        for (var j = lid; j < fs.item; j = j + WG) {
            let k = fb_coord(base + j, clean, s);
            tot = tot + k.x * k.y;
        }
    }
    let total = wg_sum(lid, tot);
    let full = c >= total;
    // Newton's method from below: g is concave and piecewise linear, so each
    // tangent's root stays at or below the root and lands on it once the
    // tangent is the root's own piece.
    var lam = 0.0;
    for (var it = 0u; it < NEWTON; it = it + 1u) {
        var g = vec2<f32>(0.0, 0.0);
        if (live) {
            for (var j = lid; j < fs.item; j = j + WG) {
                let k = fb_coord(base + j, clean, s);
                g = g + vec2<f32>(k.x * min(lam, k.y), select(0.0, k.x, k.y > lam));
            }
        }
        let t = fb_sum2(lid, g);
        if (t.y > 0.0) { lam = lam + (c - t.x) / t.y; }
    }
    return select(max(lam, 0.0), 3e38, full);
}

// The step of coordinate i toward the plane for lambda.
fn fb_d(i: u32, clean: bool, s: f32, lam: f32) -> f32 {
    let k = fb_coord(i, clean, s);
    if (k.x == 0.0) { return 0.0; }
    return k.z * min(lam, k.y);
}

@compute @workgroup_size(WG)
fn fab_step(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) lid: u32) {
    let img = grid_group(wid, nwg);
    let live = img < fs.n;
    let base = img * fs.item;
    var df = 0.0;
    if (live) { df = fs_df[img]; }
    var p1 = 0.0;
    var p0 = 0.0;
    if (live) {
        for (var j = lid; j < fs.item; j = j + WG) {
            let g = fs_g[base + j];
            p1 = p1 + g * fs_x1[base + j];
            p0 = p0 + g * fs_x0[base + j];
        }
    }
    let gx1 = wg_sum(lid, p1);
    let gx0 = wg_sum(lid, p0);
    let b = -df + gx1;
    let c1 = gx1 - b;
    let c0 = gx0 - b;
    let s1 = select(-1.0, 1.0, c1 >= 0.0);
    let s0 = select(-1.0, 1.0, c0 >= 0.0);
    let lam1 = fb_solve(lid, live, base, false, c1);
    let lam0 = fb_solve(lid, live, base, true, c0);
    // |d1|, |d2| (at least 1e-8), alpha.
    var n1 = 0.0;
    var n0 = 0.0;
    if (live) {
        for (var j = lid; j < fs.item; j = j + WG) {
            let d1 = fb_d(base + j, false, s1, lam1);
            let d0 = fb_d(base + j, true, s0, lam0);
            if (NORM_L2) {
                n1 = n1 + d1 * d1;
                n0 = n0 + d0 * d0;
            } else {
                n1 = max(n1, abs(d1));
                n0 = max(n0, abs(d0));
            }
        }
    }
    var a1 = 0.0;
    var a0 = 0.0;
    if (NORM_L2) {
        a1 = sqrt(wg_sum(lid, n1));
        a0 = sqrt(wg_sum(lid, n0));
    } else {
        a1 = wg_max(lid, n1);
        a0 = wg_max(lid, n0);
    }
    a1 = max(a1, 1e-8);
    a0 = max(a0, 1e-8);
    let alpha = min(max(a1 / (a1 + a0), 0.0), fs.alpha_max);
    var dist = 0.0;
    if (live) {
        for (var j = lid; j < fs.item; j = j + WG) {
            let i = base + j;
            let x0 = fs_x0[i];
            let d1 = fb_d(i, false, s1, lam1);
            let d0 = fb_d(i, true, s0, lam0);
            let v = clamp((fs_x1[i] + fs.eta * d1) * (1.0 - alpha) + (x0 + d0 * fs.eta) * alpha,
                          0.0, 1.0);
            fs_out[i] = v;
            let e = v - x0;
            if (NORM_L2) { dist = dist + e * e; } else { dist = max(dist, abs(e)); }
        }
    }
    var nd = 0.0;
    if (NORM_L2) { nd = sqrt(wg_sum(lid, dist)); } else { nd = wg_max(lid, dist); }
    if (live && lid == 0u) { fs_state[img * FB_S + B_NORM] = nd; }
}

// ---------------------------------------------------------------------------
// fab_track (one thread per image):
//   phase 0 CLEAN (clean logits): which images are right;
//   phase 1 EPS: every right image robust;
//   phase 2 START: a target run attacks the images still robust;
//   phase 3 STEP (logits of x1'): adversarial? closer? (flags for fab_apply);
//   phase 4 END: the run's best point counts if inside the ball (flag TAKE).
struct FabTrackParams {
    n: u32,
    classes: u32,
    phase: u32,
    step: u32,     // iterations so far, over the target runs (first successes)
    out0: u32,
    _p0: u32,
    _p1: u32,
    _p2: u32,
}

@group(0) @binding(0) var<uniform> tp: FabTrackParams;
@group(0) @binding(1) var<storage, read> t_logits: array<st>;
@group(0) @binding(2) var<storage, read> t_labels: array<u32>;
@group(0) @binding(3) var<storage, read_write> t_state: array<f32>;
@group(0) @binding(4) var<storage, read_write> t_first: array<u32>;
@group(0) @binding(5) var<storage, read> t_eps: array<f32>;

@compute @workgroup_size(WG_IMAGES)
fn fab_track(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) lid: u32) {
    let i = grid_thread(wid, nwg, lid, WG_IMAGES);
    if (i >= tp.n) { return; }
    let st = i * FB_S;
    if (tp.phase == 1u) {
        t_state[st + B_ROBUST] = t_state[st + B_CLEAN_OK];
        return;
    }
    if (tp.phase == 2u) {
        t_state[st + B_ATTACK] = t_state[st + B_ROBUST];
        t_state[st + B_RES] = 1e10;
        t_state[st + B_FLAGS] = 0.0;
        t_state[st + B_FIRST] = -1.0;
        return;
    }
    if (tp.phase == 4u) {
        let take = t_state[st + B_ATTACK] == 1.0 && t_state[st + B_RES] <= t_eps[i];
        t_state[st + B_FLAGS] = select(0.0, f32(FL_TAKE), take);
        if (take) {
            t_state[st + B_ROBUST] = 0.0;
            let first = tp.out0 + i;
            if (t_first[first] == 0xffffffffu) { t_first[first] = u32(t_state[st + B_FIRST]); }
        }
        return;
    }
    // Top-1 as torch's max(1)[1]: the first maximum.
    let base = i * tp.classes;
    var best = 0u;
    for (var c = 1u; c < tp.classes; c = c + 1u) {
        if (f32(t_logits[base + c]) > f32(t_logits[base + best])) { best = c; }
    }
    let wrong = best != t_labels[i];
    if (tp.phase == 0u) {
        t_state[st + B_CLEAN_OK] = select(1.0, 0.0, wrong);
        return;
    }
    var flags = 0u;
    if (t_state[st + B_ATTACK] == 1.0 && wrong) {
        flags = FL_ADV;
        let t = t_state[st + B_NORM];
        if (t < t_state[st + B_RES]) {
            t_state[st + B_RES] = t;
            flags = flags | FL_KEEP;
            if (t <= t_eps[i] && t_state[st + B_FIRST] < 0.0) {
                t_state[st + B_FIRST] = f32(tp.step);
            }
        }
    }
    t_state[st + B_FLAGS] = f32(flags);
}

// ---------------------------------------------------------------------------
// fab_apply (per element): what fab_track decided.
//   START (phase 0): x1 = x0, the run's best = x0.
//   STEP (phase 1): best = x1' where kept; x1 = x0 + beta (x1' - x0) where
//                   adversarial, else x1'.
//   END (phase 2): result = the run's best where taken.
struct FabApplyParams {
    numel: u32,
    phase: u32,
    beta: f32,
    _p0: u32,
}

@group(0) @binding(0) var<uniform> ap: FabApplyParams;
@group(0) @binding(1) var<storage, read> a_x0: array<f32>;
@group(0) @binding(2) var<storage, read> a_new: array<f32>;
@group(0) @binding(3) var<storage, read> a_state: array<f32>;
@group(0) @binding(4) var<storage, read_write> a_x1: array<f32>;
@group(0) @binding(5) var<storage, read_write> a_best: array<f32>;
@group(0) @binding(6) var<storage, read_write> a_result: array<f32>;

@compute @workgroup_size(WG)
fn fab_apply(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) lid: u32) {
    let i = grid_thread(wid, nwg, lid, WG);
    if (i >= ap.numel) { return; }
    let x0 = a_x0[i];
    if (ap.phase == 0u) {
        a_x1[i] = x0;
        a_best[i] = x0;
        return;
    }
    let f = u32(a_state[(i / ITEM) * FB_S + B_FLAGS]);
    if (ap.phase == 2u) {
        if ((f & FL_TAKE) != 0u) { a_result[i] = a_best[i]; }
        return;
    }
    let v = a_new[i];
    if ((f & FL_KEEP) != 0u) { a_best[i] = v; }
    a_x1[i] = select(v, x0 + (v - x0) * ap.beta, (f & FL_ADV) != 0u);
}
