// Square Attack (Andriushchenko et al. 2020) as AutoAttack's `square.py` runs
// it: forward passes only, one random square per image and query, kept when
// the margin loss falls (or the image is fooled). L-inf and L2 (the NORM_L2
// override). Host side and the schedule: src/attack/square.rs.
//
// The reference draws one square per batch; here every draw comes from
// (seed, image id, query, what) through `uniform01` (common/random.wgsl), so a
// result never depends on the batch size or the order.
//
// State per image (f32, SQ_S values) and one shared value after them, the
// query counter (set to 0 by square_track's START phase, raised by its QUERY
// phase): the propose kernel reads the query there, so the same recorded
// dispatch serves every query.
//
// The table (u32 words): per query q, `table[2q]` the square's side and
// `table[2q + 1]` the word offset of eta(side) (L2); the eta profiles follow
// as f32 bits, row-major side x side.

override WG: u32;
override WG_IMAGES: u32;
override ITEM: u32 = 1u;
override NORM_L2: bool = false;

const SQ_S: u32 = 5u;
const S_CLEAN_OK: u32 = 0u;  // 1: the clean image is attacked (right, or not yet at the target)
const S_MARGIN: u32 = 1u;    // margin of the best point (<= 0: fooled)
const S_LOSS: u32 = 2u;      // loss of the best point (the margin; targeted: cross-entropy)
const S_ACCEPT: u32 = 3u;    // 1: the last proposal becomes the best point
const S_QUERIES: u32 = 4u;   // forward passes spent on this image

// Square's stream of random numbers, apart from the random starts'.
const SQ_TAG: u32 = 0x53515541u;
// Draws per query: the square's corner (and L2's second square), the eta
// profile's orientation, then one sign per channel.
const D_VH: u32 = 0u;
const D_VW: u32 = 1u;
const D_VH2: u32 = 2u;
const D_VW2: u32 = 3u;
const D_FLIP: u32 = 4u;
const D_SIGN: u32 = 8u;
// The start's draws (query slot 0): L-inf one sign per channel and column;
// L2 per block an orientation (D_INIT_FLIP + block) and per block and channel
// a sign (D_INIT_SIGN + block * c + channel).
const D_INIT_FLIP: u32 = 0x100000u;
const D_INIT_SIGN: u32 = 0x200000u;

struct SquareParams {
    n: u32,
    item: u32,
    h: u32,
    w: u32,
    c: u32,
    seed_lo: u32,
    seed_hi: u32,
    init_s: u32,     // L2: the start's block side, h / 5
    init_eta: u32,   // L2: word offset of eta(init_s) in the table
    _p0: u32,
    _p1: u32,
    _p2: u32,
}

fn sq_draw(p: SquareParams, id: u32, query: u32, what: u32) -> f32 {
    return uniform01(p.seed_lo, p.seed_hi ^ SQ_TAG, id, query, what);
}

fn sq_sign(u: f32) -> f32 {
    return select(1.0, -1.0, u < 0.5);
}

// A corner in [0, room): the reference's `low + (high - low) * rand` cast down.
fn sq_corner(u: f32, room: u32) -> u32 {
    return min(u32(floor(u * f32(room))), max(room, 1u) - 1u);
}

// ---------------------------------------------------------------------------
// square_init (one workgroup per image): the start, into best and input.
//   L-inf: x + eps * s, s = +-1 per channel and column (vertical stripes).
//   L2:    x + eps * d / ||d||, d the blocks of side h / 5 on a centred grid,
//          each eta(side) in a random orientation times a sign per channel.
// Both clipped to [0, 1].
@group(0) @binding(0) var<uniform> si: SquareParams;
@group(0) @binding(1) var<storage, read> si_x: array<f32>;
@group(0) @binding(2) var<storage, read> si_id: array<u32>;
@group(0) @binding(3) var<storage, read> si_eps: array<f32>;
@group(0) @binding(4) var<storage, read_write> si_best: array<f32>;
@group(0) @binding(5) var<storage, read_write> si_input: array<f32>;
@group(0) @binding(6) var<storage, read> si_table: array<u32>;

// L2's start before normalising, at element j of image `id`.
fn init_delta(id: u32, j: u32) -> f32 {
    let s = si.init_s;
    let plane = si.h * si.w;
    let ch = j / plane;
    let row = (j % plane) / si.w;
    let col = j % si.w;
    let sp = (si.h - s * 5u) / 2u;
    let nbh = si.h / s;
    let nbw = si.w / s;
    if (row < sp || col < sp) { return 0.0; }
    let bh = (row - sp) / s;
    let bw = (col - sp) / s;
    if (bh >= nbh || bw >= nbw) { return 0.0; }
    let block = bh * nbw + bw;
    var r = (row - sp) % s;
    var q = (col - sp) % s;
    if (sq_draw(si, id, 0u, D_INIT_FLIP + block) > 0.5) {
        let t = r;
        r = q;
        q = t;
    }
    let e = bitcast<f32>(si_table[si.init_eta + r * s + q]);
    return e * sq_sign(sq_draw(si, id, 0u, D_INIT_SIGN + block * si.c + ch));
}

@compute @workgroup_size(WG)
fn square_init(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    let img = grid_group(wid, nwg);
    let live = img < si.n;
    var id = 0u;
    var eps = 0.0;
    if (live) {
        id = si_id[img];
        eps = si_eps[img];
    }
    let base = img * si.item;
    var scale = 0.0;
    if (NORM_L2) {
        var ss = 0.0;
        if (live) {
            for (var j = lid; j < si.item; j = j + WG) {
                let d = init_delta(id, j);
                ss = ss + d * d;
            }
        }
        scale = eps / (sqrt(wg_sum(lid, ss)) + 1e-12);
    }
    if (!live) { return; }
    for (var j = lid; j < si.item; j = j + WG) {
        let i = base + j;
        var d = 0.0;
        if (NORM_L2) {
            d = init_delta(id, j) * scale;
        } else {
            let ch = j / (si.h * si.w);
            d = eps * sq_sign(sq_draw(si, id, 0u, ch * si.w + j % si.w));
        }
        let v = clamp(si_x[i] + d, 0.0, 1.0);
        si_best[i] = v;
        si_input[i] = v;
    }
}

// ---------------------------------------------------------------------------
// square_propose (one workgroup per image): first the last query's verdict
// (best = input where it was accepted), then the next proposal into input.
// Images no longer attacked (fooled, or wrong to begin with) get their best.
//   L-inf: in a square of side s at a random corner, best + 2 eps * sign per
//          channel, back into the eps ball and [0, 1].
//   L2:    with d = best - x, the square W1 takes per channel
//          (eta(s) * sign + d_W1 / ||d_W1||) scaled to
//          sqrt(max(eps^2 - ||d||^2, 0) / c + ||d_(W1 u W2)||^2), a second
//          square W2 (outside W1) is cleared, and the proposal is
//          x + eps * d' / ||d'|| in [0, 1].
@group(0) @binding(0) var<uniform> sp: SquareParams;
@group(0) @binding(1) var<storage, read> sp_x: array<f32>;
@group(0) @binding(2) var<storage, read> sp_id: array<u32>;
@group(0) @binding(3) var<storage, read> sp_eps: array<f32>;
@group(0) @binding(4) var<storage, read_write> sp_best: array<f32>;
@group(0) @binding(5) var<storage, read_write> sp_input: array<f32>;
@group(0) @binding(6) var<storage, read> sp_table: array<u32>;
@group(0) @binding(7) var<storage, read> sp_state: array<f32>;

fn in_square(row: u32, col: u32, vh: u32, vw: u32, s: u32) -> bool {
    return row >= vh && row < vh + s && col >= vw && col < vw + s;
}

@compute @workgroup_size(WG)
fn square_propose(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                  @builtin(local_invocation_index) lid: u32) {
    let img = grid_group(wid, nwg);
    let live = img < sp.n;
    let q = u32(sp_state[sp.n * SQ_S]);
    let s = sp_table[2u * q];
    let eta0 = sp_table[2u * q + 1u];
    let plane = sp.h * sp.w;
    var id = 0u;
    var eps = 0.0;
    var accept = false;
    var querying = false;
    if (live) {
        id = sp_id[img];
        eps = sp_eps[img];
        let st = img * SQ_S;
        accept = sp_state[st + S_ACCEPT] == 1.0;
        querying = sp_state[st + S_CLEAN_OK] == 1.0 && sp_state[st + S_MARGIN] > 0.0;
    }
    let base = img * sp.item;
    if (live && accept) {
        for (var j = lid; j < sp.item; j = j + WG) {
            sp_best[base + j] = sp_input[base + j];
        }
    }
    let vh = sq_corner(sq_draw(sp, id, q + 1u, D_VH), sp.h - s);
    let vw = sq_corner(sq_draw(sp, id, q + 1u, D_VW), sp.w - s);
    if (!NORM_L2) {
        if (!live) { return; }
        for (var j = lid; j < sp.item; j = j + WG) {
            let i = base + j;
            var v = sp_best[i];
            let ch = j / plane;
            let row = (j % plane) / sp.w;
            let col = j % sp.w;
            if (querying && in_square(row, col, vh, vw, s)) {
                let x = sp_x[i];
                let sg = sq_sign(sq_draw(sp, id, q + 1u, D_SIGN + ch));
                v = clamp(clamp(v + 2.0 * eps * sg, x - eps, x + eps), 0.0, 1.0);
            }
            sp_input[i] = v;
        }
        return;
    }
    // L2: other threads read the windows' elements below.
    storageBarrier();
    let vh2 = sq_corner(sq_draw(sp, id, q + 1u, D_VH2), sp.h - s);
    let vw2 = sq_corner(sq_draw(sp, id, q + 1u, D_VW2), sp.w - s);
    let flip = sq_draw(sp, id, q + 1u, D_FLIP) > 0.5;
    var ss = 0.0;
    if (live) {
        for (var j = lid; j < sp.item; j = j + WG) {
            let d = sp_best[base + j] - sp_x[base + j];
            ss = ss + d * d;
        }
    }
    let norm2 = wg_sum(lid, ss);
    let area = s * s;
    for (var ch = 0u; ch < sp.c; ch = ch + 1u) {
        let cb = base + ch * plane;
        // ||d|| over W1, and over W2 outside W1.
        var a = 0.0;
        var b = 0.0;
        if (live) {
            for (var k = lid; k < area; k = k + WG) {
                let r = k / s;
                let cc = k % s;
                let i1 = cb + (vh + r) * sp.w + vw + cc;
                let d1 = sp_best[i1] - sp_x[i1];
                a = a + d1 * d1;
                if (!in_square(vh2 + r, vw2 + cc, vh, vw, s)) {
                    let i2 = cb + (vh2 + r) * sp.w + vw2 + cc;
                    let d2 = sp_best[i2] - sp_x[i2];
                    b = b + d2 * d2;
                }
            }
        }
        let w1 = wg_sum(lid, a);
        let win = w1 + wg_sum(lid, b);
        let inv1 = 1.0 / (1e-12 + sqrt(w1));
        let sg = sq_sign(sq_draw(sp, id, q + 1u, D_SIGN + ch));
        var nn = 0.0;
        if (live) {
            for (var k = lid; k < area; k = k + WG) {
                let r = k / s;
                let cc = k % s;
                let e = bitcast<f32>(sp_table[eta0 + select(r * s + cc, cc * s + r, flip)]);
                let i1 = cb + (vh + r) * sp.w + vw + cc;
                let t = e * sg + (sp_best[i1] - sp_x[i1]) * inv1;
                nn = nn + t * t;
            }
        }
        let nd = wg_sum(lid, nn);
        let scale = sqrt(max(eps * eps - norm2, 0.0) / f32(sp.c) + win) / (1e-12 + sqrt(nd));
        // The new W1 (and the cleared W2) go to input; the pass below reads them.
        if (live && querying) {
            for (var k = lid; k < area; k = k + WG) {
                let r = k / s;
                let cc = k % s;
                let e = bitcast<f32>(sp_table[eta0 + select(r * s + cc, cc * s + r, flip)]);
                let i1 = cb + (vh + r) * sp.w + vw + cc;
                let t = e * sg + (sp_best[i1] - sp_x[i1]) * inv1;
                if (!in_square(vh2 + r, vw2 + cc, vh, vw, s)) {
                    sp_input[cb + (vh2 + r) * sp.w + vw2 + cc] = 0.0;
                }
                sp_input[i1] = t * scale;
            }
        }
    }
    storageBarrier();
    // d' everywhere (the windows' values from input), its norm, the proposal.
    var ss2 = 0.0;
    if (live && querying) {
        for (var j = lid; j < sp.item; j = j + WG) {
            let i = base + j;
            let row = (j % plane) / sp.w;
            let col = j % sp.w;
            var d = sp_best[i] - sp_x[i];
            if (in_square(row, col, vh, vw, s) || in_square(row, col, vh2, vw2, s)) {
                d = sp_input[i];
            }
            sp_input[i] = d;
            ss2 = ss2 + d * d;
        }
    }
    let f = eps / (sqrt(wg_sum(lid, ss2)) + 1e-12);
    if (!live) { return; }
    for (var j = lid; j < sp.item; j = j + WG) {
        let i = base + j;
        if (querying) {
            sp_input[i] = clamp(sp_x[i] + sp_input[i] * f, 0.0, 1.0);
        } else {
            sp_input[i] = sp_best[i];
        }
    }
}

// ---------------------------------------------------------------------------
// square_track (one thread per image), after a forward:
//   phase 0 CLEAN (clean logits): which images are attacked;
//   phase 1 START (the start's logits): margin and loss of the start, one
//           query; the counter back to query 0;
//   phase 2 QUERY: the proposal is kept when its loss is lower or it fools;
//           one more query for every image still attacked; the counter on.
// Margin: logit of the label minus the largest other (targeted: the largest
// other minus the target's); loss: the margin (targeted: cross-entropy to the
// target). An image is fooled at margin <= 0; `first` takes its query count.
struct SquareTrackParams {
    n: u32,
    classes: u32,
    targeted: u32,
    phase: u32,
    out0: u32,
    _p0: u32,
    _p1: u32,
    _p2: u32,
}

@group(0) @binding(0) var<uniform> tp: SquareTrackParams;
@group(0) @binding(1) var<storage, read> t_logits: array<st>;
@group(0) @binding(2) var<storage, read> t_labels: array<u32>;
@group(0) @binding(3) var<storage, read> t_loss_labels: array<u32>;
@group(0) @binding(4) var<storage, read_write> t_state: array<f32>;
@group(0) @binding(5) var<storage, read_write> t_first: array<u32>;

@compute @workgroup_size(WG_IMAGES)
fn square_track(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    let i = grid_thread(wid, nwg, lid, WG_IMAGES);
    if (i == 0u) {
        let counter = tp.n * SQ_S;
        if (tp.phase == 1u) { t_state[counter] = 0.0; }
        if (tp.phase == 2u) { t_state[counter] = t_state[counter] + 1.0; }
    }
    if (i >= tp.n) { return; }
    let st = i * SQ_S;
    let base = i * tp.classes;
    let targeted = tp.targeted == 1u;
    let y = select(t_labels[i], t_loss_labels[i], targeted);
    if (tp.phase == 0u) {
        // Top-1 as torch's max(1)[1]: the first maximum.
        var best = 0u;
        for (var c = 1u; c < tp.classes; c = c + 1u) {
            if (f32(t_logits[base + c]) > f32(t_logits[base + best])) { best = c; }
        }
        t_state[st + S_CLEAN_OK] = select(0.0, 1.0, (best == y) != targeted);
        return;
    }
    let attacked = t_state[st + S_CLEAN_OK] == 1.0;
    if (tp.phase == 2u && !(attacked && t_state[st + S_MARGIN] > 0.0)) {
        t_state[st + S_ACCEPT] = 0.0;
        return;
    }
    let ly = f32(t_logits[base + y]);
    var other = -3.4e38;
    var top = ly;
    for (var c = 0u; c < tp.classes; c = c + 1u) {
        let v = f32(t_logits[base + c]);
        top = max(top, v);
        if (c != y) { other = max(other, v); }
    }
    var margin = ly - other;
    var loss = margin;
    if (targeted) {
        margin = other - ly;
        var se = 0.0;
        for (var c = 0u; c < tp.classes; c = c + 1u) {
            se = se + exp(f32(t_logits[base + c]) - top);
        }
        loss = top + log(se) - ly;
    }
    if (tp.phase == 1u) {
        t_state[st + S_ACCEPT] = 0.0;
        if (!attacked) {
            t_state[st + S_MARGIN] = 0.0;
            t_state[st + S_LOSS] = 0.0;
            t_state[st + S_QUERIES] = 0.0;
            return;
        }
        t_state[st + S_MARGIN] = margin;
        t_state[st + S_LOSS] = loss;
        t_state[st + S_QUERIES] = 1.0;
        if (margin <= 0.0 && t_first[tp.out0 + i] == 0xffffffffu) { t_first[tp.out0 + i] = 1u; }
        return;
    }
    let improved = loss < t_state[st + S_LOSS];
    if (improved) { t_state[st + S_LOSS] = loss; }
    let keep = improved || margin <= 0.0;
    if (keep) { t_state[st + S_MARGIN] = margin; }
    t_state[st + S_ACCEPT] = select(0.0, 1.0, keep);
    let queries = t_state[st + S_QUERIES] + 1.0;
    t_state[st + S_QUERIES] = queries;
    if (keep && margin <= 0.0 && t_first[tp.out0 + i] == 0xffffffffu) {
        t_first[tp.out0 + i] = u32(queries);
    }
}

// ---------------------------------------------------------------------------
// square_finish (per element): the last verdict, then the result: the best
// point of every image the attack fooled, x elsewhere (as the reference).
struct SquareFinishParams {
    numel: u32,
    n: u32,
    _p0: u32,
    _p1: u32,
}

@group(0) @binding(0) var<uniform> fp: SquareFinishParams;
@group(0) @binding(1) var<storage, read> f_x: array<f32>;
@group(0) @binding(2) var<storage, read_write> f_best: array<f32>;
@group(0) @binding(3) var<storage, read> f_input: array<f32>;
@group(0) @binding(4) var<storage, read> f_state: array<f32>;
@group(0) @binding(5) var<storage, read_write> f_result: array<f32>;

@compute @workgroup_size(WG)
fn square_finish(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) lid: u32) {
    let i = grid_thread(wid, nwg, lid, WG);
    if (i >= fp.numel) { return; }
    let st = (i / ITEM) * SQ_S;
    var best = f_best[i];
    if (f_state[st + S_ACCEPT] == 1.0) {
        best = f_input[i];
        f_best[i] = best;
    }
    let fooled = f_state[st + S_CLEAN_OK] == 1.0 && f_state[st + S_MARGIN] <= 0.0;
    f_result[i] = select(f_x[i], best, fooled);
}
