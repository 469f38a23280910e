// Grid indexing, shared by every kernel (`Shader::source` prepends it). The
// host folds a dispatch of more workgroups than the adapter allows per
// dimension into x by y (`Context::grid`); these unfold it.

// The flat index of this workgroup.
fn grid_group(wid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return wid.x + wid.y * nwg.x;
}

// The flat index of this thread, with `wg` threads per workgroup.
fn grid_thread(wid: vec3<u32>, nwg: vec3<u32>, lid: u32, wg: u32) -> u32 {
    return grid_group(wid, nwg) * wg + lid;
}

