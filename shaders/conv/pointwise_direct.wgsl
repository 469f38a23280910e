// Pointwise (1x1, stride 1, no padding) convolution as a register-blocked GEMM
// read straight from global memory: the kernel family for CPU adapters.
//
// On a software Vulkan driver (llvmpipe) every memory load instruction, whatever
// its width, costs a short loop over the SIMD lanes, and workgroup memory and
// barriers cost as much again. So this family has no workgroup memory at all,
// loads only vec4s of weights, and keeps 32-64 accumulators per thread: many FMAs
// per load instruction. Real GPUs keep the tiled kernels in gemm.wgsl (see
// `ops::conv::select` for the choice).
//
// Per group grp, with m = (image, pixel) over N*HW pixels, two entries that
// differ in how they read B:
//   b_nk (B as [n][k], vec4 along k):
//     y[img, grp*OCg + n, px] = act(sum_k x[img, grp*ICg + k, px] * w[grp*OCg + n, k] + b)
//     (k over ICg, n over OCg: ICg % 4 == 0)
//   b_kn (B as [k][n], vec4 along n; TN_B columns, 4 FMAs per weight load):
//     gx[img, grp*ICg + n, px] = sum_k gy[img, grp*OCg + k, px] * w[grp*OCg + k, n]
//     (k over OCg, n over ICg: ICg % 4 == 0). The host also runs the forward
//     pass through it, with w transposed per group (B = w^T, k over ICg, n over
//     OCg, OCg % 4 == 0), bias and activation in its epilogue.
// Both read A as "a[(img * a_c + grp * kdim + k) * hw + px]" and write
// "y[(img * out_c + grp * ncols + n) * hw + px]", overwriting the output.
//
// The host prepends a prelude (see `ops::conv::pointwise`) that declares bindings 1
// (`a`) and 3 (`y`) and the functions below, in one of two layouts:
//   vec4: HW % 4 == 0; a thread's pixels come in groups of 4 consecutive pixels of
//         one image, loaded and stored as one vec4;
//   scalar: any HW; a thread's 4 pixels of a group are WG apart (consecutive across
//         the lanes), loaded one by one.
// Prelude: const G (pixel groups per thread), TN_F / TN_B (columns per thread,
// forward / backward, multiples of 4), fn pixels(tm, lid, g) -> vec4<u32> (the
// group's 4 pixel indices m, unclamped), fn load_a(o: vec4<u32>) -> vec4<f32> and
// fn store_y(o: vec4<u32>, ok: vec4<bool>, v: vec4<f32>), and fn load_ay(o) (the
// same 4 elements of `ay`, binding 5, read with DACT).
//
// Storage elements are `st` (f32 or f16, aliased by the host); loads convert to
// f32 and the accumulators are f32.
//
// Checked module (wgpu's bounds checks stay on); every index is clamped to the
// tensor shapes anyway: pixels past M load pixel M - 1 and are never stored,
// columns past ncols load the last column and are never stored.

struct Params {
    m: u32,       // N * HW
    hw: u32,      // pixels per image
    kdim: u32,    // reduction length per group
    ncols: u32,   // output columns (channels) per group
    a_c: u32,     // channels of a
    out_c: u32,   // channels of y
    tiles_m: u32,
    tiles_n: u32,
    total_wg: u32,
    act_alpha: f32,
    act_beta: f32,
    _pad: u32,
}

// Workgroup size: the host's (`Shader::workgroup_constants`), never written here.
override WG: u32;
override HAS_BIAS: bool = false;
// Epilogue activation: act4() and ACT come from act.wgsl, prepended by the host.

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(2) var<storage, read> w: array<vec4<st>>;
@group(0) @binding(4) var<storage, read> bias: array<st>;
// Backward passes with DACT: `ay` (binding 5, declared by the prelude) is the
// output of the activation fused into the convolution before, whose derivative
// multiplies gx as it is written (act.wgsl's dact_y; ACT then names that
// activation instead of an epilogue). Otherwise the host binds `a` there.
override DACT: bool = false;

// What is stored for the 4 elements at `o`: the forward epilogue's act4(v),
// or (DACT) the gradient v through the activation's derivative.
fn epilogue(o: vec4<u32>, v: vec4<f32>) -> vec4<f32> {
    if (DACT) {
        return v * dact_y4(load_ay(o), p.act_alpha);
    }
    return act4(v);
}

struct Tile {
    tm: u32,
    n0: u32,
    grp: u32,
}

fn tile_of(wid: vec3<u32>, nwg: vec3<u32>) -> Tile {
    let wg = grid_group(wid, nwg);
    let rest = wg / p.tiles_n;
    return Tile(rest % p.tiles_m, (wg % p.tiles_n), rest / p.tiles_m);
}

// Element offsets of the group's 4 pixels at channel `c0` of a tensor with `c`
// channels (clamped pixels), and which of them exist.
fn offsets(m: vec4<u32>, c: u32, c0: u32) -> vec4<u32> {
    let mc = min(m, vec4(p.m - 1u));
    let img = mc / p.hw;
    let px = mc - img * p.hw;
    return (img * c + c0) * p.hw + px;
}

@compute @workgroup_size(WG)
fn b_nk(@builtin(workgroup_id) wid: vec3<u32>,
           @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) lid: u32) {
    if (grid_group(wid, nwg) >= p.total_wg) {
        return;
    }
    let t = tile_of(wid, nwg);
    let n0 = t.n0 * TN_F;
    var ao: array<vec4<u32>, G>;
    for (var g = 0u; g < G; g++) {
        ao[g] = offsets(pixels(t.tm, lid, g), p.a_c, t.grp * p.kdim);
    }
    let k4 = p.kdim / 4u;
    var wrow: array<u32, TN_F>;
    for (var j = 0u; j < TN_F; j++) {
        wrow[j] = (t.grp * p.ncols + min(n0 + j, p.ncols - 1u)) * k4;
    }
    var acc: array<array<vec4<f32>, TN_F>, G>;
    let hw = p.hw;
    for (var kk = 0u; kk < k4; kk++) {
        var av: array<array<vec4<f32>, 4>, G>;
        let o = vec4(kk * 4u * hw);
        for (var g = 0u; g < G; g++) {
            av[g][0] = load_a(ao[g] + o);
            av[g][1] = load_a(ao[g] + o + vec4(hw));
            av[g][2] = load_a(ao[g] + o + vec4(2u * hw));
            av[g][3] = load_a(ao[g] + o + vec4(3u * hw));
        }
        for (var j = 0u; j < TN_F; j++) {
            let b = vec4<f32>(w[wrow[j] + kk]);
            for (var g = 0u; g < G; g++) {
                acc[g][j] = fma(av[g][3], vec4(b.w), fma(av[g][2], vec4(b.z),
                            fma(av[g][1], vec4(b.y), fma(av[g][0], vec4(b.x), acc[g][j]))));
            }
        }
    }
    for (var g = 0u; g < G; g++) {
        let m = pixels(t.tm, lid, g);
        let ok = m < vec4(p.m);
        let yo = offsets(m, p.out_c, t.grp * p.ncols + n0);
        for (var j = 0u; j < TN_F; j++) {
            if (n0 + j < p.ncols) {
                var v = acc[g][j];
                if (HAS_BIAS) {
                    v += vec4(f32(bias[t.grp * p.ncols + n0 + j]));
                }
                let o = yo + vec4(j * hw);
                store_y(o, ok, epilogue(o, v));
            }
        }
    }
}

@compute @workgroup_size(WG)
fn b_kn(@builtin(workgroup_id) wid: vec3<u32>,
            @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) lid: u32) {
    if (grid_group(wid, nwg) >= p.total_wg) {
        return;
    }
    let t = tile_of(wid, nwg);
    let n0 = t.n0 * TN_B;
    var ao: array<vec4<u32>, G>;
    for (var g = 0u; g < G; g++) {
        ao[g] = offsets(pixels(t.tm, lid, g), p.a_c, t.grp * p.kdim);
    }
    let row4 = p.ncols / 4u;
    var wq: array<u32, TN_B / 4u>;
    for (var q = 0u; q < TN_B / 4u; q++) {
        wq[q] = min(n0 / 4u + q, row4 - 1u);
    }
    var acc: array<array<vec4<f32>, TN_B>, G>;
    let hw = p.hw;
    for (var k = 0u; k < p.kdim; k++) {
        var av: array<vec4<f32>, G>;
        for (var g = 0u; g < G; g++) {
            av[g] = load_a(ao[g] + vec4(k * hw));
        }
        let wbase = (t.grp * p.kdim + k) * row4;
        for (var q = 0u; q < TN_B / 4u; q++) {
            let b = vec4<f32>(w[wbase + wq[q]]);
            for (var g = 0u; g < G; g++) {
                acc[g][4u * q] = fma(av[g], vec4(b.x), acc[g][4u * q]);
                acc[g][4u * q + 1u] = fma(av[g], vec4(b.y), acc[g][4u * q + 1u]);
                acc[g][4u * q + 2u] = fma(av[g], vec4(b.z), acc[g][4u * q + 2u]);
                acc[g][4u * q + 3u] = fma(av[g], vec4(b.w), acc[g][4u * q + 3u]);
            }
        }
    }
    for (var g = 0u; g < G; g++) {
        let m = pixels(t.tm, lid, g);
        let ok = m < vec4(p.m);
        let yo = offsets(m, p.out_c, t.grp * p.ncols + n0);
        for (var j = 0u; j < TN_B; j++) {
            if (n0 + j < p.ncols) {
                var v = acc[g][j];
                if (HAS_BIAS) {
                    v += vec4(f32(bias[t.grp * p.ncols + n0 + j]));
                }
                let o = yo + vec4(j * hw);
                store_y(o, ok, epilogue(o, v));
            }
        }
    }
}
