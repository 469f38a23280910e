// Shifted reads out of aligned vec4 blocks, shared by the CPU-adapter kernels
// that read rows as vec4 blocks (depthwise_direct.wgsl, conv_same_direct.wgsl);
// the host prepends this file. The including shader declares the input `a`
// (array<vec4<st>>) and the uniform `p` with `p.quads`, blocks per plane.

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
