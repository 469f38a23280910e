// The implicit GEMM's uniform block, shared by gemm.wgsl and coop.wgsl (the
// host fills it once, ops/conv/gemm.rs's GemmParams, for both).
struct Params {
    batch: u32,
    in_c: u32,
    in_h: u32,
    in_w: u32,
    out_c: u32,
    out_h: u32,
    out_w: u32,
    groups: u32,
    k_h: u32,
    k_w: u32,
    stride_h: u32,
    stride_w: u32,
    dil_h: u32,
    dil_w: u32,
    pad_t: u32,
    pad_l: u32,
    icg: u32,
    ocg: u32,
    gemm_m: u32,
    gemm_n: u32,
    gemm_k: u32,
    tiles_m: u32,
    tiles_n: u32,
    total_wg: u32,
    act_alpha: f32, // epilogue activation parameters (leaky_relu, hardsigmoid)
    act_beta: f32,
    // backward_phased only (see there):
    step_h: u32,    // stride_h / gcd(dil_h, stride_h): tap step within a phase
    step_w: u32,
    dstep_h: u32,   // dil_h / gcd(dil_h, stride_h): output step per tap step
    dstep_w: u32,
    ph_rows: u32,   // ceil(in_h / stride_h): input rows of the largest phase
    ph_cols: u32,   // ceil(in_w / stride_w)
}
