// Prelude of pointwise_direct.wgsl's vec4 layout: 8 pixels (2 groups of 4
// consecutive) per thread, 4 columns forward, 8 backward; loads and stores
// 4 pixels at a time (pixels per image a multiple of 4).
const G: u32 = 2u;
const TN_F: u32 = 4u;
const TN_B: u32 = 8u;
@group(0) @binding(1) var<storage, read> a: array<vec4<st>>;
@group(0) @binding(3) var<storage, read_write> y: array<vec4<st>>;
@group(0) @binding(5) var<storage, read> ay: array<vec4<st>>;
fn pixels(tm: u32, lid: u32, g: u32) -> vec4<u32> {
    let q = tm * (WG * G) + g * WG + lid;
    return vec4(4u * q) + vec4(0u, 1u, 2u, 3u);
}
fn load_a(o: vec4<u32>) -> vec4<f32> { return vec4<f32>(a[o.x / 4u]); }
fn load_ay(o: vec4<u32>) -> vec4<f32> { return vec4<f32>(ay[o.x / 4u]); }
fn store_y(o: vec4<u32>, ok: vec4<bool>, v: vec4<f32>) {
    if (ok.x) { y[o.x / 4u] = vec4<st>(v); }
}
