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
