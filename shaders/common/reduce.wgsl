// Workgroup reductions for kernels with one workgroup per image (WG threads,
// a power of two): every thread gets the result. Each starts with a barrier,
// so calls may follow one another.
var<workgroup> wg_red: array<f32, WG>;

fn wg_sum(lid: u32, v: f32) -> f32 {
    workgroupBarrier();
    wg_red[lid] = v;
    workgroupBarrier();
    for (var stride = WG / 2u; stride > 0u; stride = stride >> 1u) {
        if (lid < stride) {
            wg_red[lid] = wg_red[lid] + wg_red[lid + stride];
        }
        workgroupBarrier();
    }
    return wg_red[0];
}

fn wg_max(lid: u32, v: f32) -> f32 {
    workgroupBarrier();
    wg_red[lid] = v;
    workgroupBarrier();
    for (var stride = WG / 2u; stride > 0u; stride = stride >> 1u) {
        if (lid < stride) {
            wg_red[lid] = max(wg_red[lid], wg_red[lid + stride]);
        }
        workgroupBarrier();
    }
    return wg_red[0];
}
