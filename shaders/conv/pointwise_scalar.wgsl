// Prelude of pointwise_direct.wgsl's scalar layout: 4 pixels per thread, WG
// apart, 16 columns (any size: 7 x 7 maps, linear layers).
const G: u32 = 1u;
const TN_F: u32 = 16u;
const TN_B: u32 = 16u;
@group(0) @binding(1) var<storage, read> a: array<st>;
@group(0) @binding(3) var<storage, read_write> y: array<st>;
@group(0) @binding(5) var<storage, read> ay: array<st>;
fn pixels(tm: u32, lid: u32, g: u32) -> vec4<u32> {
    let b = tm * (WG * 4u * G) + g * 4u * WG + lid;
    return vec4(b, b + WG, b + 2u * WG, b + 3u * WG);
}
fn load_a(o: vec4<u32>) -> vec4<f32> {
    return vec4<f32>(vec4<st>(a[o.x], a[o.y], a[o.z], a[o.w]));
}
fn load_ay(o: vec4<u32>) -> vec4<f32> {
    return vec4<f32>(vec4<st>(ay[o.x], ay[o.y], ay[o.z], ay[o.w]));
}
fn store_y(o: vec4<u32>, ok: vec4<bool>, v: vec4<f32>) {
    if (ok.x) { y[o.x] = st(v.x); }
    if (ok.y) { y[o.y] = st(v.y); }
    if (ok.z) { y[o.z] = st(v.z); }
    if (ok.w) { y[o.w] = st(v.w); }
}
