// Concatenation along the channel axis: one dispatch per input copies its
// block of channels into (forward) or out of (backward) the joint tensor.
// Element i of the part sits at (i / item_part) * item_all + offset + i % item_part
// of the joint tensor, items being c * h * w per batch entry.

// Workgroup size: the host's (`Shader::workgroup_constants`), never written here.
override WG: u32;

struct Params {
    count: u32,       // elements of the part
    item_part: u32,   // c_part * h * w
    item_all: u32,    // c_all * h * w
    offset: u32,      // channel offset * h * w
}

@group(0) @binding(0) var<uniform> p: Params;

// forward: part (1) -> joint (2); backward: joint (1) -> part (2)
// Elements are `st` (f32 or f16, aliased by the host): copied as they are.
@group(0) @binding(1) var<storage, read> src: array<st>;
@group(0) @binding(2) var<storage, read_write> dst: array<st>;

fn joint_index(i: u32) -> u32 {
    return (i / p.item_part) * p.item_all + p.offset + i % p.item_part;
}

@compute @workgroup_size(WG)
fn forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) lid: u32) {
    let i = grid_thread(wid, nwg, lid, WG);
    if (i >= p.count) {
        return;
    }
    dst[joint_index(i)] = src[i];
}

@compute @workgroup_size(WG)
fn backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) lid: u32) {
    let i = grid_thread(wid, nwg, lid, WG);
    if (i >= p.count) {
        return;
    }
    dst[i] = src[joint_index(i)];
}
