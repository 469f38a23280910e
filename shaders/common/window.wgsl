// Shifted reads out of aligned vec4 blocks, shared by the CPU-adapter kernels
// that read rows as vec4 blocks (depthwise_direct.wgsl, conv_same_direct.wgsl);
// the host prepends this file. The including shader declares the input `a`
// (array<vec4<st>>), the uniform `p` with `p.quads` (blocks per plane), `p.h`
// and `p.w` (plane size), and the overrides PAD_T, PAD_L and WMOD (w % 4).

// Elements o .. o + 3 (o < 8) of the 12 in (b0, b1, b2). With o a
// specialisation constant (after unrolling) the switch folds to one shuffle.
fn window(b0: vec4<f32>, b1: vec4<f32>, b2: vec4<f32>, o: u32) -> vec4<f32> {
    switch o {
        case 0u: { return b0; }
        case 1u: { return vec4(b0.yzw, b1.x); }
        case 2u: { return vec4(b0.zw, b1.xy); }
        case 3u: { return vec4(b0.w, b1.xyz); }
        case 4u: { return b1; }
        case 5u: { return vec4(b1.yzw, b2.x); }
        case 6u: { return vec4(b1.zw, b2.xy); }
        default: { return vec4(b1.w, b2.xyz); }
    }
}

// Block `i` of the plane of `a` starting at block `base`; zero outside the
// plane (the index is clamped, so the load stays inside the plane too).
fn block(base: u32, i: i32) -> vec4<f32> {
    let inside = i >= 0 && i < i32(p.quads);
    let v = vec4<f32>(a[base + u32(clamp(i, 0, i32(p.quads) - 1))]);
    return select(vec4(0.0), v, inside);
}

// Two consecutive quads of a plane, outputs at flat positions p0 .. p0 + 7
// (p0 a multiple of 4): their rows and columns.
struct Quads {
    p0: u32,
    row: vec4<i32>,
    col: vec4<i32>,
    row2: vec4<i32>,
    col2: vec4<i32>,
}

fn quads_at(p0: u32) -> Quads {
    let pos = vec4(p0) + vec4(0u, 1u, 2u, 3u);
    let pos2 = pos + vec4(4u);
    return Quads(p0, vec4<i32>(pos / p.w), vec4<i32>(pos % p.w),
                 vec4<i32>(pos2 / p.w), vec4<i32>(pos2 % p.w));
}

// The inputs of kernel row kh for two quads: which of their rows exist, the 4
// blocks holding inputs p0 + (kh - PAD_T) w - PAD_L onwards, and the shift of
// that first input inside them, (row offset * w - PAD_L) mod 4: a
// specialisation constant once the kh loop is unrolled.
struct KernelRow {
    ok: vec4<bool>,
    ok2: vec4<bool>,
    l0: vec4<f32>,
    l1: vec4<f32>,
    l2: vec4<f32>,
    l3: vec4<f32>,
    s: u32,
}

fn kernel_row(q: Quads, base: u32, kh: u32) -> KernelRow {
    let dr = i32(kh) - i32(PAD_T);
    let hh = vec4(i32(p.h));
    let r = q.row + vec4(dr);
    let r2 = q.row2 + vec4(dr);
    let b0 = (i32(q.p0) + dr * i32(p.w) - i32(PAD_L)) >> 2u;
    let ok = (r >= vec4(0)) & (r < hh);
    let ok2 = (r2 >= vec4(0)) & (r2 < hh);
    return KernelRow(ok, ok2,
                     block(base, b0), block(base, b0 + 1), block(base, b0 + 2),
                     block(base, b0 + 3),
                     u32(((dr * i32(WMOD) - i32(PAD_L)) % 4 + 4) % 4));
}

// Tap kw's 4 inputs for each quad (zero where the input is padding).
struct Taps {
    a: vec4<f32>,
    b: vec4<f32>,
}

fn taps(q: Quads, k: KernelRow, kw: u32) -> Taps {
    let dc = vec4(i32(kw) - i32(PAD_L));
    let ww = vec4(i32(p.w));
    let ca = q.col + dc;
    let cb = q.col2 + dc;
    let ok = k.ok & (ca >= vec4(0)) & (ca < ww);
    let ok2 = k.ok2 & (cb >= vec4(0)) & (cb < ww);
    return Taps(select(vec4(0.0), window(k.l0, k.l1, k.l2, k.s + kw), ok),
                select(vec4(0.0), window(k.l1, k.l2, k.l3, k.s + kw), ok2));
}
