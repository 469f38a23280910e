// Attack kernels: labels for the loss, the fused FGSM perturbation for every eps
// at once, and per-image perturbation norms.

fn flat_group(wid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return wid.x + wid.y * nwg.x;
}

// ---------------------------------------------------------------------------
// perturb: adv[k, i] = q(clamp(x[i] + eps[k] * sign(g[i]), 0, 1)) for every eps k
// at once; q rounds to the 8-bit grid when QUANTIZE. Also packs the 8-bit pixels
// (4 per u32) for saving. sign(0) = 0.
override QUANTIZE: bool = true;

struct PerturbParams {
    numel: u32,   // elements of one batch (N * C * H * W)
    k: u32,       // number of eps
    words: u32,   // ceil(k * numel / 4)
    _pad: u32,
}

@group(0) @binding(0) var<uniform> pp: PerturbParams;
@group(0) @binding(1) var<storage, read> px: array<f32>;
@group(0) @binding(2) var<storage, read> pg: array<f32>;
@group(0) @binding(3) var<storage, read> peps: array<f32>;
@group(0) @binding(4) var<storage, read_write> padv: array<f32>;
@group(0) @binding(5) var<storage, read_write> pu8: array<u32>;

@compute @workgroup_size(256)
fn perturb(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) lid: u32) {
    let t = flat_group(wid, nwg) * 256u + lid;
    if (t >= pp.words) { return; }
    let total = pp.k * pp.numel;
    var packed = 0u;
    for (var j = 0u; j < 4u; j = j + 1u) {
        let e = t * 4u + j;
        if (e < total) {
            let kk = e / pp.numel;
            let i = e - kk * pp.numel;
            var v = clamp(px[i] + peps[kk] * sign(pg[i]), 0.0, 1.0);
            let level = round(v * 255.0);
            if (QUANTIZE) { v = level / 255.0; }
            padv[e] = v;
            packed = packed | (u32(level) << (8u * j));
        }
    }
    pu8[t] = packed;
}

// ---------------------------------------------------------------------------
// norms: per adversarial image (k, n): L-inf and L2 of adv - x. One workgroup
// per image; out[2 * img] = linf, out[2 * img + 1] = l2.
struct NormParams {
    item: u32,    // C * H * W
    n: u32,       // images per batch
    images: u32,  // k * n
    _pad: u32,
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
        nout[2u * img] = smax[0];
        nout[2u * img + 1u] = sqrt(ssum[0]);
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
