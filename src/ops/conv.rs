//! 2-D convolution, forward and backward to the input.
//!
//! Two kernel families:
//! - `shaders/conv/gemm.wgsl`: a tiled implicit GEMM for dense and grouped convolutions
//!   and for `linear`: 256 threads per workgroup, K in slices through workgroup
//!   memory, the output tile picked per layer by `Tile::pick` (64 x 64 in
//!   general, 128 x 64 for large layers, 256 x 16 when the GEMM has at most 32
//!   columns). The backward pass of a strided convolution runs one dense GEMM per
//!   stride phase (`backward_phased`) instead of gathering zeros;
//! - `shaders/conv/depthwise.wgsl`: depthwise convolution (groups == input channels,
//!   channel multiplier >= 1), a direct kernel with 4 outputs per thread.
//!
//! On CPU adapters ([`crate::gpu::KernelStyle::Direct`]) two more families take
//! the layers they fit: `shaders/conv/pointwise_direct.wgsl` for pointwise layers and
//! linear layers of 256 rows and more ([`crate::ops::conv_direct`]), and
//! `shaders/conv/backward_few.wgsl` for the backward of layers with at most 4
//! input channels (stems): no workgroup memory, vec4 loads, as llvmpipe charges
//! per load instruction and per barrier.
//!
//! Both forward kernels apply bias and an optional activation in their epilogue
//! ([`forward_act`]). Shapes travel in a uniform block, so one pipeline per
//! (entry, bias flag, activation, tile) serves every layer.
//!
//! Both shaders run as trusted modules, without wgpu's injected bounds checks (see
//! `Context::kernel`): they guard every index themselves; keep it so.

use crate::error::{Error, Result};
use crate::gpu::{Binding, Context, DType, KernelStyle, Recording, Shader, Shape, Tensor};
use crate::ops::activation::Activation;
use crate::ops::conv_direct::{self, Pointwise};
use crate::ops::params::Conv2dParams;
use crate::ops::prepared::{derived, PreparedWeights};

/// Tile shape of the GEMM kernel, set through its override constants (`WG_M`
/// threads along m, `TM` m per thread, `BK` the K slice); conv.wgsl supports
/// exactly these three (its workgroup arrays and index bounds are sized for them).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Tile {
    wg_m: u32,
    tm: u32,
    bk: u32,
}

impl Tile {
    /// 64 x 64, 4 x 4 per thread: the general case.
    const SQUARE: Tile = Tile {
        wg_m: 16,
        tm: 4,
        bk: 16,
    };
    /// 128 x 64, 8 x 4 per thread: twice the FMAs per workgroup-memory read, for
    /// layers with enough tiles to fill a GPU anyway.
    const TALL: Tile = Tile {
        wg_m: 16,
        tm: 8,
        bk: 16,
    };
    /// 256 x 16, 4 x 4 per thread: few GEMM columns (the stem's backward has 3,
    /// 1x1 projections 24), where a 64-wide tile would mostly compute padding.
    const NARROW: Tile = Tile {
        wg_m: 64,
        tm: 4,
        bk: 8,
    };

    fn bm(self) -> u64 {
        (self.tm * self.wg_m) as u64
    }
    fn bn(self) -> u64 {
        (4 * (256 / self.wg_m)) as u64
    }

    /// The tile for a GEMM of `m` x `n` repeated `batches` times (groups, phases).
    fn pick(m: u64, n: u64, batches: u64) -> Tile {
        if n <= 32 && m >= 256 {
            return Tile::NARROW;
        }
        let tall_tiles = batches * m.div_ceil(Tile::TALL.bm()) * n.div_ceil(Tile::TALL.bn());
        if n > 32 && tall_tiles >= TALL_MIN_WORKGROUPS {
            Tile::TALL
        } else {
            Tile::SQUARE
        }
    }

    /// Every variant with its name in the tuning table.
    const ALL: [(&'static str, Tile); 3] = [
        ("square", Tile::SQUARE),
        ("tall", Tile::TALL),
        ("narrow", Tile::NARROW),
    ];

    fn from_name(name: &str) -> Option<Tile> {
        Tile::ALL.iter().find(|(n, _)| *n == name).map(|(_, t)| *t)
    }

    fn constants(self) -> [(&'static str, f64); 3] {
        [
            ("WG_M", self.wg_m as f64),
            ("TM", self.tm as f64),
            ("BK", self.bk as f64),
        ]
    }
}

/// Use the 128 x 64 tile only when it still gives this many workgroups (a few
/// waves on a large GPU); smaller layers keep 64 x 64 for parallelism.
const TALL_MIN_WORKGROUPS: u64 = 512;
/// Threads per workgroup and outputs per thread of the depthwise kernel.
const DW_THREADS: u32 = 256;
const DW_PER_THREAD: u32 = 4;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct GemmParams {
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
    act_alpha: f32,
    act_beta: f32,
    step_h: u32,
    step_w: u32,
    dstep_h: u32,
    dstep_w: u32,
    ph_rows: u32,
    ph_cols: u32,
}

/// Parameters of `conv_backward_few.wgsl` (its header explains them).
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct FewParams {
    batch: u32,
    in_c: u32,
    in_h: u32,
    in_w: u32,
    out_c: u32,
    out_h: u32,
    out_w: u32,
    k_h: u32,
    k_w: u32,
    stride_h: u32,
    stride_w: u32,
    dil_h: u32,
    dil_w: u32,
    pad_t: u32,
    pad_l: u32,
    step_h: u32,
    step_w: u32,
    ph_rows: u32,
    ph_cols: u32,
    tiles: u32,
    total_wg: u32,
    _pad: [u32; 3],
}

/// Threads per workgroup of `conv_backward_few.wgsl` (4 pixels each).
const FEW_WG: u32 = 64;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct DwParams {
    batch: u32,
    in_c: u32,
    in_h: u32,
    in_w: u32,
    out_c: u32,
    out_h: u32,
    out_w: u32,
    mult: u32,
    k_h: u32,
    k_w: u32,
    stride_h: u32,
    stride_w: u32,
    dil_h: u32,
    dil_w: u32,
    pad_t: u32,
    pad_l: u32,
    quads: u32,
    items: u32,
    act_alpha: f32,
    act_beta: f32,
    step_h: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

/// Parameters of `depthwise_direct.wgsl` (its header explains them).
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct DwDirectParams {
    planes: u32,
    c: u32,
    h: u32,
    w: u32,
    quads: u32,
    pairs: u32,
    items: u32,
    _pad: u32,
    act_alpha: f32,
    act_beta: f32,
    _pad1: [u32; 2],
}

/// Parameters of `depthwise_direct.wgsl`'s `backward_s2`.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct DwS2Params {
    planes: u32,
    h: u32,
    w8: u32,
    oh: u32,
    ow4: u32,
    items: u32,
    c: u32,
    _pad: u32,
}

/// Parameters of `conv_same_direct.wgsl` (its header explains them).
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct SameParams {
    n: u32,
    r: u32,
    nout: u32,
    nout4: u32,
    h: u32,
    w: u32,
    quads: u32,
    pairs: u32,
    items: u32,
    act_alpha: f32,
    act_beta: f32,
    _pad: u32,
}

/// Threads per workgroup of `conv_same_direct.wgsl`.
const SAME_WG: u32 = 64;

/// Threads per workgroup of `depthwise_direct.wgsl` (8 outputs each).
const DW_DIRECT_WG: u32 = 64;

/// y = conv2d(x, w) (+ b). `w` is `[oc, ic / groups, kh, kw]`, `b` is `[1, oc, 1, 1]`
/// (any shape of `oc` elements), `y` must have the shape [`Conv2dParams::out_shape`]
/// gives. Same as [`forward_act`] with [`Activation::Identity`].
pub fn forward(
    ctx: &Context,
    rec: &mut Recording,
    p: &Conv2dParams,
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    y: &Tensor,
) -> Result<()> {
    forward_act(ctx, rec, p, x, w, b, Activation::Identity, y)
}

/// y = act(conv2d(x, w) (+ b)) in one dispatch: the activation runs in the kernel's
/// epilogue (same formulas as [`crate::ops::activation::forward`]), so the
/// pre-activation tensor is never written. For the backward pass of the fused op,
/// [`crate::ops::activation::backward_from_output`] turns the output gradient into
/// the pre-activation gradient from `y` alone (relu, relu6, ...), then [`backward`].
#[allow(clippy::too_many_arguments)]
pub fn forward_act(
    ctx: &Context,
    rec: &mut Recording,
    p: &Conv2dParams,
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    act: Activation,
    y: &Tensor,
) -> Result<()> {
    forward_act_with(ctx, rec, p, x, w, b, act, y, None)
}

/// [`forward_act`] with weight copies (transposed, repacked) taken from a
/// model's [`PreparedWeights`] instead of remade in the recording.
#[allow(clippy::too_many_arguments)]
pub fn forward_act_with(
    ctx: &Context,
    rec: &mut Recording,
    p: &Conv2dParams,
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    act: Activation,
    y: &Tensor,
    prepared: Option<&PreparedWeights>,
) -> Result<()> {
    let geo = Geometry::new(p, x.shape, w.shape, y.shape, "output")?;
    if let Some(b) = b {
        if b.numel() != geo.oc as u64 {
            return Err(Error::shape(
                "conv2d",
                format!(
                    "bias has shape {} ({} values) but the convolution has {} output channels",
                    b.shape,
                    b.numel(),
                    geo.oc
                ),
            ));
        }
    }
    check_index_range(&[x, w, y])?;
    if y.numel() == 0 {
        return Ok(());
    }
    let (act_code, act_alpha, act_beta) = act.code();
    let constants = [
        ("HAS_BIAS", if b.is_some() { 1.0 } else { 0.0 }),
        ("ACT", act_code as f64),
    ];
    let suffix = match act {
        Activation::Identity => String::new(),
        a => format!("+{}", a.name()),
    };
    // Without a bias the weight is bound in its place (never read).
    let bias = b.unwrap_or(w);
    let bindings = [
        Binding::Read,
        Binding::Read,
        Binding::Read,
        Binding::ReadWrite,
    ];
    if geo.dw_direct(ctx) {
        let (mut params, shape_constants, groups) = geo.dw_direct_params(false);
        params.act_alpha = act_alpha;
        params.act_beta = act_beta;
        let mut all: Vec<(&str, f64)> = constants.to_vec();
        all.extend(shape_constants);
        let k = ctx.kernel(Shader::DepthwiseDirect, y.dtype, "main", &bindings, &all)?;
        let u = ctx.uniform(&params);
        rec.push(ctx.dispatch(
            format!("depthwise_conv2d{suffix}"),
            &k,
            &u,
            &[x, w, bias, y],
            groups,
        )?);
    } else if geo.depthwise {
        let (mut params, groups) = geo.dw_params(false)?;
        params.act_alpha = act_alpha;
        params.act_beta = act_beta;
        let k = ctx.kernel(Shader::Depthwise, y.dtype, "forward", &bindings, &constants)?;
        let u = ctx.uniform(&params);
        rec.push(ctx.dispatch(
            format!("depthwise_conv2d{suffix}"),
            &k,
            &u,
            &[x, w, bias, y],
            groups,
        )?);
    } else if let Some(pw) = geo.pointwise().filter(|pw| pw.eligible(ctx)) {
        conv_direct::forward(
            ctx,
            rec,
            &pw,
            x,
            w,
            b,
            act,
            y,
            format!("conv2d{suffix}"),
            prepared,
        )?;
    } else if geo.s2_direct(ctx) || geo.same_direct(ctx, false) {
        let (entry, (mut params, shape_constants, groups)) = if geo.s2_direct(ctx) {
            ("main_s2", geo.s2_params())
        } else {
            ("main", geo.same_params(false))
        };
        params.act_alpha = act_alpha;
        params.act_beta = act_beta;
        let wt = same_repack(ctx, rec, &geo, &params, w, false, prepared)?;
        let mut all: Vec<(&str, f64)> = constants.to_vec();
        all.extend(shape_constants);
        let k = ctx.kernel(Shader::ConvSameDirect, y.dtype, entry, &bindings, &all)?;
        let u = ctx.uniform(&params);
        rec.push(ctx.dispatch(
            format!("conv2d{suffix}"),
            &k,
            &u,
            &[x, &wt, bias, y],
            groups,
        )?);
    } else {
        let tile = geo.tuned_tile(ctx, false, y.dtype);
        let epilogue = (constants, act_alpha, act_beta);
        gemm_forward(
            ctx,
            rec,
            &geo,
            tile,
            epilogue,
            [x, w, bias, y],
            format!("conv2d{suffix}"),
        )?;
    }
    Ok(())
}

/// Record the tiled GEMM forward (conv.wgsl) of `geo` on `[x, w, bias, y]`,
/// with `tile` (else the shape heuristic's) and the epilogue's (HAS_BIAS, ACT)
/// constants and activation parameters.
fn gemm_forward(
    ctx: &Context,
    rec: &mut Recording,
    geo: &Geometry,
    tile: Option<Tile>,
    (constants, act_alpha, act_beta): ([(&'static str, f64); 2], f32, f32),
    tensors: [&Tensor; 4],
    label: String,
) -> Result<()> {
    let (mut params, tile) = geo.gemm_params(false, tile)?;
    params.act_alpha = act_alpha;
    params.act_beta = act_beta;
    let [c0, c1, c2] = tile.constants();
    let constants = [constants[0], constants[1], c0, c1, c2];
    let bindings = [
        Binding::Read,
        Binding::Read,
        Binding::Read,
        Binding::ReadWrite,
    ];
    let dtype = tensors[3].dtype;
    let k = ctx.kernel(Shader::Conv, dtype, "forward", &bindings, &constants)?;
    let u = ctx.uniform(&params);
    rec.push(ctx.dispatch(label, &k, &u, &tensors, params.total_wg)?);
    Ok(())
}

/// Record the tiled GEMM backward (conv.wgsl, phase by phase for stride > 1)
/// of `geo` on `[gy, w, gx]` with `tile` (else the shape heuristic's).
fn gemm_backward(
    ctx: &Context,
    rec: &mut Recording,
    geo: &Geometry,
    tile: Option<Tile>,
    tensors: [&Tensor; 3],
    label: &str,
) -> Result<()> {
    let (params, tile) = geo.gemm_params(true, tile)?;
    // Stride > 1: phase by phase, without the zero taps (see conv.wgsl).
    let entry = if geo.phased() {
        "backward_phased"
    } else {
        "backward"
    };
    let bindings = [Binding::Read, Binding::Read, Binding::ReadWrite];
    let dtype = tensors[2].dtype;
    let k = ctx.kernel(Shader::Conv, dtype, entry, &bindings, &tile.constants())?;
    let u = ctx.uniform(&params);
    rec.push(ctx.dispatch(label, &k, &u, &tensors, params.total_wg)?);
    Ok(())
}

/// gx = d(sum gy * conv2d(x, w)) / dx: the gradient with respect to the input only.
/// `gx` (shape of the forward input) is overwritten; `gy` has the forward output's
/// shape.
pub fn backward(
    ctx: &Context,
    rec: &mut Recording,
    p: &Conv2dParams,
    gy: &Tensor,
    w: &Tensor,
    gx: &Tensor,
) -> Result<()> {
    backward_with(ctx, rec, p, gy, w, gx, None)
}

/// [`backward`] with weight copies from a model's [`PreparedWeights`].
pub fn backward_with(
    ctx: &Context,
    rec: &mut Recording,
    p: &Conv2dParams,
    gy: &Tensor,
    w: &Tensor,
    gx: &Tensor,
    prepared: Option<&PreparedWeights>,
) -> Result<()> {
    let geo = Geometry::new(p, gx.shape, w.shape, gy.shape, "output gradient")?;
    check_index_range(&[gy, w, gx])?;
    if gx.numel() == 0 {
        return Ok(());
    }
    let bindings = [Binding::Read, Binding::Read, Binding::ReadWrite];
    let bindings4 = [
        Binding::Read,
        Binding::Read,
        Binding::Read,
        Binding::ReadWrite,
    ];
    if geo.dw_direct_s2(ctx) && gy.numel() > 0 {
        let (params, constants, groups) = geo.dw_s2_params();
        let k = ctx.kernel(
            Shader::DepthwiseDirect,
            gx.dtype,
            "backward_s2",
            &bindings4,
            &constants,
        )?;
        let u = ctx.uniform(&params);
        // No bias: the weight is bound in its place (never read).
        rec.push(ctx.dispatch("depthwise_conv2d_backward", &k, &u, &[gy, w, w, gx], groups)?);
    } else if geo.dw_direct(ctx) {
        let (params, constants, groups) = geo.dw_direct_params(true);
        let bindings = bindings4;
        let k = ctx.kernel(
            Shader::DepthwiseDirect,
            gx.dtype,
            "main",
            &bindings,
            &constants,
        )?;
        let u = ctx.uniform(&params);
        // No bias: the weight is bound in its place (never read).
        rec.push(ctx.dispatch("depthwise_conv2d_backward", &k, &u, &[gy, w, w, gx], groups)?);
    } else if geo.depthwise {
        let (params, groups) = geo.dw_params(true)?;
        let k = ctx.kernel(Shader::Depthwise, gx.dtype, "backward", &bindings, &[])?;
        let u = ctx.uniform(&params);
        rec.push(ctx.dispatch("depthwise_conv2d_backward", &k, &u, &[gy, w, gx], groups)?);
    } else if gy.numel() == 0 {
        // No output elements (zero channels): the gradient is zero.
        rec.push(crate::gpu::Step::Clear {
            buffer: gx.buffer.clone(),
        });
    } else if let Some(pw) = geo.pointwise().filter(|pw| pw.eligible(ctx)) {
        conv_direct::backward(ctx, rec, &pw, gy, w, gx, "conv2d_backward")?;
    } else if geo.same_direct(ctx, true) {
        let (params, constants, groups) = geo.same_params(true);
        let wt = same_repack(ctx, rec, &geo, &params, w, true, prepared)?;
        let k = ctx.kernel(
            Shader::ConvSameDirect,
            gx.dtype,
            "main",
            &bindings4,
            &constants,
        )?;
        let u = ctx.uniform(&params);
        // No bias: the repacked weight is bound in its place (never read).
        rec.push(ctx.dispatch("conv2d_backward", &k, &u, &[gy, &wt, &wt, gx], groups)?);
    } else if geo.few_inputs(ctx) {
        let params = geo.few_params();
        let k = ctx.kernel(
            Shader::ConvBackwardFew,
            gx.dtype,
            "backward",
            &bindings,
            &[],
        )?;
        let u = ctx.uniform(&params);
        rec.push(ctx.dispatch("conv2d_backward", &k, &u, &[gy, w, gx], params.total_wg)?);
    } else {
        let tile = geo.tuned_tile(ctx, true, gx.dtype);
        gemm_backward(ctx, rec, &geo, tile, [gy, w, gx], "conv2d_backward")?;
    }
    Ok(())
}

/// Validated convolution geometry.
struct Geometry {
    x: Shape,
    y: Shape,
    oc: u32,
    kh: u32,
    kw: u32,
    p: Conv2dParams,
    depthwise: bool,
}

impl Geometry {
    fn new(p: &Conv2dParams, x: Shape, w: Shape, y: Shape, y_name: &str) -> Result<Self> {
        let wd = w.dims();
        let out = p.out_shape(x, wd)?;
        if y != out {
            return Err(Error::shape(
                "conv2d",
                format!(
                    "{y_name} has shape {y}, but input {x} with weight {w} and {p:?} gives {out}"
                ),
            ));
        }
        Ok(Geometry {
            x,
            y,
            oc: wd[0],
            kh: wd[2],
            kw: wd[3],
            p: *p,
            depthwise: p.is_depthwise(x, wd),
        })
    }

    /// The layer as a pointwise GEMM (1x1 kernel, stride 1, no padding), if it is one.
    fn pointwise(&self) -> Option<Pointwise> {
        (self.kh == 1
            && self.kw == 1
            && self.p.stride == [1, 1]
            && self.p.padding == [0; 4]
            && !self.depthwise)
            .then_some(Pointwise {
                batch: self.x.n,
                hw: self.x.h * self.x.w,
                in_c: self.x.c,
                out_c: self.oc,
                groups: self.p.groups,
            })
    }

    /// Whether the backward pass runs on `conv_backward_few.wgsl`: CPU adapters,
    /// one group, at most 4 input channels (a stem), offsets within i32.
    fn few_inputs(&self, ctx: &Context) -> bool {
        ctx.kernel_style() == KernelStyle::Direct
            && self.p.groups == 1
            && self.x.c <= 4
            && !self.depthwise
            && self.x.numel() < i32::MAX as u64
            && self.y.numel() < i32::MAX as u64
            && (self.kh as u64 * self.p.dilation[0] as u64) < i32::MAX as u64
            && (self.kw as u64 * self.p.dilation[1] as u64) < i32::MAX as u64
    }

    fn few_params(&self) -> FewParams {
        let [sh, sw] = self.p.stride;
        let [dh, dw] = self.p.dilation;
        let ph_rows = self.x.h.div_ceil(sh);
        let ph_cols = self.x.w.div_ceil(sw);
        let per_phase = self.x.n * ph_rows * ph_cols;
        let tiles = per_phase.div_ceil(4 * FEW_WG);
        FewParams {
            batch: self.x.n,
            in_c: self.x.c,
            in_h: self.x.h,
            in_w: self.x.w,
            out_c: self.oc,
            out_h: self.y.h,
            out_w: self.y.w,
            k_h: self.kh,
            k_w: self.kw,
            stride_h: sh,
            stride_w: sw,
            dil_h: dh,
            dil_w: dw,
            pad_t: self.p.padding[0],
            pad_l: self.p.padding[1],
            step_h: sh / gcd(dh, sh),
            step_w: sw / gcd(dw, sw),
            ph_rows,
            ph_cols,
            tiles,
            total_wg: tiles * sh * sw,
            _pad: [0; 3],
        }
    }

    /// Whether the backward pass runs phase by phase (`backward_phased`).
    fn phased(&self) -> bool {
        self.p.stride != [1, 1]
    }

    /// Whether this pass runs on the tiled GEMM of conv.wgsl (the kernel whose
    /// tile the autotune picks), as [`forward_act`] and [`backward`] choose.
    fn uses_gemm(&self, ctx: &Context, backward: bool) -> bool {
        if self.depthwise
            || self.pointwise().is_some_and(|pw| pw.eligible(ctx))
            || self.same_direct(ctx, backward)
            || (!backward && self.s2_direct(ctx))
        {
            return false;
        }
        !backward || (self.y.numel() > 0 && !self.few_inputs(ctx))
    }

    /// Key of this pass in the tuning table: the GEMM source's hash, the pass,
    /// the storage type and everything that shapes the GEMM.
    fn tune_key(&self, backward: bool, dtype: DType) -> String {
        static HASH: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
        let hash = HASH.get_or_init(|| fnv1a(Shader::Conv.source().as_bytes()));
        let p = &self.p;
        format!(
            "conv.wgsl#{hash:08x} {} {dtype} x{} oc{} k{}x{} s{:?} p{:?} d{:?} g{}",
            if backward { "backward" } else { "forward" },
            self.x,
            self.oc,
            self.kh,
            self.kw,
            p.stride,
            p.padding,
            p.dilation,
            p.groups
        )
    }

    /// The tile the tuning table holds for this pass, if any.
    fn tuned_tile(&self, ctx: &Context, backward: bool, dtype: DType) -> Option<Tile> {
        ctx.tuned(&self.tune_key(backward, dtype))
            .and_then(|name| Tile::from_name(&name))
    }

    fn gemm_params(&self, backward: bool, tuned: Option<Tile>) -> Result<(GemmParams, Tile)> {
        let (x, y, p) = (self.x, self.y, &self.p);
        let g = p.groups;
        let icg = x.c / g;
        let ocg = self.oc / g;
        let khw = self.kh as u64 * self.kw as u64;
        let [sh, sw] = p.stride;
        let [dh, dw] = p.dilation;
        // Stride phases (backward_phased): taps step by stride / gcd(dil, stride)
        // within a phase, outputs by dil / gcd.
        let (step_h, dstep_h) = (sh / gcd(dh, sh), dh / gcd(dh, sh));
        let (step_w, dstep_w) = (sw / gcd(dw, sw), dw / gcd(dw, sw));
        let ph_rows = (x.h as u64).div_ceil(sh as u64);
        let ph_cols = (x.w as u64).div_ceil(sw as u64);
        let phases = if backward && self.phased() {
            sh as u64 * sw as u64
        } else {
            1
        };
        let (m, n, k) = if backward && self.phased() {
            // the largest phase: the kernel skips the spare tiles of smaller ones
            (
                x.n as u64 * ph_rows * ph_cols,
                icg as u64,
                ocg as u64
                    * (self.kh as u64).div_ceil(step_h as u64)
                    * (self.kw as u64).div_ceil(step_w as u64),
            )
        } else if backward {
            (
                x.n as u64 * x.h as u64 * x.w as u64,
                icg as u64,
                ocg as u64 * khw,
            )
        } else {
            (
                y.n as u64 * y.h as u64 * y.w as u64,
                ocg as u64,
                icg as u64 * khw,
            )
        };
        let tile = tuned.unwrap_or_else(|| Tile::pick(m, n, phases * g as u64));
        let tiles_m = m.div_ceil(tile.bm());
        let tiles_n = n.div_ceil(tile.bn());
        let total = phases * g as u64 * tiles_m * tiles_n;
        let fits = |v: u64| u32::try_from(v).ok();
        // The kernel steps k in slices of 16 and m in tiles: keep headroom.
        match (
            fits(m + tile.bm()),
            fits(n),
            fits(k + 16),
            fits(total),
        ) {
            (Some(_), Some(_), Some(_), Some(total_wg)) => Ok((GemmParams {
                batch: x.n,
                in_c: x.c,
                in_h: x.h,
                in_w: x.w,
                out_c: self.oc,
                out_h: y.h,
                out_w: y.w,
                groups: g,
                k_h: self.kh,
                k_w: self.kw,
                stride_h: p.stride[0],
                stride_w: p.stride[1],
                dil_h: p.dilation[0],
                dil_w: p.dilation[1],
                pad_t: p.padding[0],
                pad_l: p.padding[1],
                icg,
                ocg,
                gemm_m: m as u32,
                gemm_n: n as u32,
                gemm_k: k as u32,
                tiles_m: tiles_m as u32,
                tiles_n: tiles_n as u32,
                total_wg,
                act_alpha: 0.0,
                act_beta: 0.0,
                step_h,
                step_w,
                dstep_h,
                dstep_w,
                ph_rows: ph_rows as u32,
                ph_cols: ph_cols as u32,
            }, tile)),
            _ => Err(Error::shape(
                "conv2d",
                format!(
                    "input {x} with output {y} is too large for 32-bit indexing; use a smaller batch"
                ),
            )),
        }
    }

    /// Whether `depthwise_direct.wgsl` covers this layer: CPU adapters, one
    /// channel per group, stride 1, no dilation, 'same' padding (output size =
    /// input size, so the backward pass is the same kernel with the weights
    /// flipped), planes of a multiple of 4 elements, kernels up to 5 wide (the
    /// 4 outputs and their taps fit 3 vec4 blocks).
    fn dw_direct(&self, ctx: &Context) -> bool {
        let p = &self.p;
        ctx.kernel_style() == KernelStyle::Direct
            && self.depthwise
            && self.oc == self.x.c
            && p.stride == [1, 1]
            && p.dilation == [1, 1]
            && self.kw <= 5
            && self.y.h == self.x.h
            && self.y.w == self.x.w
            && (self.x.h as u64 * self.x.w as u64).is_multiple_of(4)
            && self.x.numel() < i32::MAX as u64
            && (self.x.h as u64 * self.x.w as u64) < (i32::MAX as u64) / 8
    }

    /// Whether `conv_same_direct.wgsl` runs this pass: CPU adapters, dense
    /// (groups 1) convolutions that are not pointwise-eligible, stride 1, no
    /// dilation, 'same' size, planes of 4k elements, kernels up to 5 wide; the
    /// backward pass of layers with at most 4 input channels stays with
    /// `conv_backward_few.wgsl`.
    fn same_direct(&self, ctx: &Context, backward: bool) -> bool {
        let p = &self.p;
        let (x, y) = (self.x, self.y);
        let pixels = x.h as u64 * x.w as u64;
        ctx.kernel_style() == KernelStyle::Direct
            && !self.depthwise
            && p.groups == 1
            && !self.pointwise().is_some_and(|pw| pw.eligible(ctx))
            && p.stride == [1, 1]
            && p.dilation == [1, 1]
            && self.kw <= 5
            && y.h == x.h
            && y.w == x.w
            && pixels.is_multiple_of(4)
            && pixels > 0
            && self.oc > 0
            && x.c > 0
            && (!backward || !self.few_inputs(ctx))
            && x.numel().max(y.numel()) < (i32::MAX as u64) / 2
            && x.c as u64 * self.oc as u64 * 25 < u32::MAX as u64
    }

    /// Whether `conv_same_direct.wgsl`'s `main_s2` runs this forward pass: CPU
    /// adapters, dense stride-2 convolutions (stems, downsampling) whose input
    /// and output rows are multiples of 4 wide, kernels up to 5 wide with left
    /// padding up to 4, no dilation.
    fn s2_direct(&self, ctx: &Context) -> bool {
        let p = &self.p;
        let (x, y) = (self.x, self.y);
        ctx.kernel_style() == KernelStyle::Direct
            && !self.depthwise
            && p.groups == 1
            && p.stride == [2, 2]
            && p.dilation == [1, 1]
            && self.kw <= 5
            && p.padding[1] <= 4
            && x.w.is_multiple_of(4)
            && y.w.is_multiple_of(4)
            && y.numel() > 0
            && x.c > 0
            && x.numel().max(y.numel()) < (i32::MAX as u64) / 2
            && x.c as u64 * self.oc as u64 * 25 < u32::MAX as u64
    }

    /// (params, override constants, workgroups) of `main_s2` (the parameter
    /// fields as that entry reads them).
    fn s2_params(&self) -> (SameParams, Vec<(&'static str, f64)>, u32) {
        let (x, y) = (self.x, self.y);
        let nout4 = 2 * self.oc.div_ceil(8);
        let items = x.n * (nout4 / 2) * y.h * (y.w / 4);
        let params = SameParams {
            n: x.n,
            r: x.c,
            nout: self.oc,
            nout4,
            h: x.h,
            w: x.w,
            quads: y.h,
            pairs: y.w / 4,
            items,
            act_alpha: 0.0,
            act_beta: 0.0,
            _pad: 0,
        };
        let constants = vec![
            ("KH", self.kh as f64),
            ("KW", self.kw as f64),
            ("PAD_T", self.p.padding[0] as f64),
            ("PAD_L", self.p.padding[1] as f64),
        ];
        (params, constants, items.div_ceil(SAME_WG))
    }

    /// (params, override constants, workgroups) of `conv_same_direct.wgsl`'s
    /// `main`; the reduction runs over the input channels forward, the output
    /// channels backward.
    fn same_params(&self, backward: bool) -> (SameParams, Vec<(&'static str, f64)>, u32) {
        let x = self.x;
        let (r, nout) = if backward {
            (self.oc, x.c)
        } else {
            (x.c, self.oc)
        };
        let [pt, pl, ..] = self.p.padding;
        let (pad_t, pad_l) = if backward {
            (self.kh - 1 - pt, self.kw - 1 - pl)
        } else {
            (pt, pl)
        };
        let quads = x.h * x.w / 4;
        let pairs = quads.div_ceil(2);
        let nout4 = nout.div_ceil(4);
        let items = x.n * nout4 * pairs;
        let params = SameParams {
            n: x.n,
            r,
            nout,
            nout4,
            h: x.h,
            w: x.w,
            quads,
            pairs,
            items,
            act_alpha: 0.0,
            act_beta: 0.0,
            _pad: 0,
        };
        let constants = vec![
            ("KH", self.kh as f64),
            ("KW", self.kw as f64),
            ("PAD_T", pad_t as f64),
            ("PAD_L", pad_l as f64),
            ("WMOD", (x.w % 4) as f64),
        ];
        (params, constants, items.div_ceil(SAME_WG))
    }

    /// Whether `depthwise_direct.wgsl`'s `backward_s2` covers this layer's
    /// backward pass: CPU adapters, one channel per group, stride 2, no
    /// dilation, an output exactly half as wide as the input, input rows of a
    /// multiple of 8, kernels up to 5 wide with left padding up to 5.
    fn dw_direct_s2(&self, ctx: &Context) -> bool {
        let p = &self.p;
        ctx.kernel_style() == KernelStyle::Direct
            && self.depthwise
            && self.oc == self.x.c
            && p.stride == [2, 2]
            && p.dilation == [1, 1]
            && self.kw <= 5
            && p.padding[1] <= 5
            && self.x.w.is_multiple_of(8)
            && self.y.w * 2 == self.x.w
            && self.x.numel() < i32::MAX as u64
    }

    /// (params, override constants, workgroups) of `backward_s2`.
    fn dw_s2_params(&self) -> (DwS2Params, [(&'static str, f64); 4], u32) {
        let (x, y) = (self.x, self.y);
        let planes = x.n * x.c;
        let w8 = x.w / 8;
        let items = planes * x.h * w8;
        let constants = [
            ("KH", self.kh as f64),
            ("KW", self.kw as f64),
            ("PAD_T", self.p.padding[0] as f64),
            ("PAD_L", self.p.padding[1] as f64),
        ];
        let params = DwS2Params {
            planes,
            h: x.h,
            w8,
            oh: y.h,
            ow4: y.w / 4,
            items,
            c: x.c,
            _pad: 0,
        };
        (params, constants, items.div_ceil(DW_DIRECT_WG))
    }

    /// (params, override constants, workgroups) of `depthwise_direct.wgsl`;
    /// `backward` flips the kernel and its padding.
    fn dw_direct_params(&self, backward: bool) -> (DwDirectParams, [(&'static str, f64); 6], u32) {
        let x = self.x;
        let quads = x.h * x.w / 4;
        let planes = x.n * x.c;
        let pairs = quads.div_ceil(2);
        let items = planes * pairs;
        let [pt, pl, ..] = self.p.padding;
        let (pad_t, pad_l) = if backward {
            (self.kh - 1 - pt, self.kw - 1 - pl)
        } else {
            (pt, pl)
        };
        let constants = [
            ("KH", self.kh as f64),
            ("KW", self.kw as f64),
            ("PAD_T", pad_t as f64),
            ("PAD_L", pad_l as f64),
            ("WMOD", (x.w % 4) as f64),
            ("FLIP", if backward { 1.0 } else { 0.0 }),
        ];
        let params = DwDirectParams {
            planes,
            c: x.c,
            h: x.h,
            w: x.w,
            quads,
            pairs,
            items,
            _pad: 0,
            act_alpha: 0.0,
            act_beta: 0.0,
            _pad1: [0; 2],
        };
        (params, constants, items.div_ceil(DW_DIRECT_WG))
    }

    fn dw_params(&self, backward: bool) -> Result<(DwParams, u32)> {
        let (x, y, p) = (self.x, self.y, &self.p);
        // Threads cover (n, c, h, ceil(w / 4)) of the tensor being written.
        let t = if backward { x } else { y };
        let quads = t.w.div_ceil(DW_PER_THREAD);
        let items = t.n as u64 * t.c as u64 * t.h as u64 * quads as u64;
        let groups = items.div_ceil(DW_THREADS as u64);
        let (Ok(items), Ok(groups)) = (u32::try_from(items), u32::try_from(groups)) else {
            return Err(Error::shape(
                "depthwise conv2d",
                format!("tensor {t} is too large for 32-bit indexing; use a smaller batch"),
            ));
        };
        if items.checked_add(DW_THREADS).is_none() {
            return Err(Error::shape(
                "depthwise conv2d",
                format!("tensor {t} is too large for 32-bit indexing; use a smaller batch"),
            ));
        }
        Ok((
            DwParams {
                batch: x.n,
                in_c: x.c,
                in_h: x.h,
                in_w: x.w,
                out_c: self.oc,
                out_h: y.h,
                out_w: y.w,
                mult: self.oc / x.c,
                k_h: self.kh,
                k_w: self.kw,
                stride_h: p.stride[0],
                stride_w: p.stride[1],
                dil_h: p.dilation[0],
                dil_w: p.dilation[1],
                pad_t: p.padding[0],
                pad_l: p.padding[1],
                quads,
                items,
                act_alpha: 0.0,
                act_beta: 0.0,
                step_h: p.stride[0] / gcd(p.dilation[0], p.stride[0]),
                _pad0: 0,
                _pad1: 0,
                _pad2: 0,
            },
            groups,
        ))
    }
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// Kernels index with u32: every tensor must have fewer than 2^32 elements.
fn check_index_range(tensors: &[&Tensor]) -> Result<()> {
    for t in tensors {
        if t.numel() >= u32::MAX as u64 {
            return Err(Error::shape(
                "conv2d",
                format!(
                    "tensor {} is too large for 32-bit indexing; use a smaller batch",
                    t.shape
                ),
            ));
        }
    }
    Ok(())
}

/// FNV-1a, 32 bits: a hash that stays the same across builds and platforms.
fn fnv1a(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5u32, |h, &b| {
        (h ^ b as u32).wrapping_mul(0x0100_0193)
    })
}

/// What [`tune`] did for one layer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TuneCount {
    /// Passes timed now.
    pub timed: usize,
    /// Passes whose choice the table already held.
    pub cached: usize,
}

/// The tuning-table key of a convolution's pass on the tiled GEMM, or `None`
/// when that pass runs on another kernel on `ctx` (depthwise, direct).
pub fn tune_key(
    ctx: &Context,
    p: &Conv2dParams,
    x: Shape,
    w: Shape,
    dtype: DType,
    backward: bool,
) -> Result<Option<String>> {
    let y = p.out_shape(x, w.dims())?;
    let geo = Geometry::new(p, x, w, y, "output")?;
    Ok(geo
        .uses_gemm(ctx, backward)
        .then(|| geo.tune_key(backward, dtype)))
}

/// Autotune one convolution (or linear layer seen as a 1x1 convolution) with
/// input `x` and weight `w`: for each of its passes that runs on the tiled GEMM
/// and has no entry in `ctx`'s tuning table yet, time every tile variant
/// (`reps` dispatches, the best of two rounds; GPU timestamps where the adapter
/// has them, wall clock otherwise) and store the fastest. [`forward_act`] and
/// [`backward`] then use the stored tile; without an entry they pick one by
/// shape.
pub fn tune(
    ctx: &Context,
    p: &Conv2dParams,
    x: Shape,
    w: Shape,
    dtype: DType,
    reps: u32,
) -> Result<TuneCount> {
    let y = p.out_shape(x, w.dims())?;
    let geo = Geometry::new(p, x, w, y, "output")?;
    let mut count = TuneCount::default();
    let mut tensors: Option<[Tensor; 4]> = None;
    for backward in [false, true] {
        if !geo.uses_gemm(ctx, backward) || x.numel() == 0 || y.numel() == 0 {
            continue;
        }
        let key = geo.tune_key(backward, dtype);
        if ctx.tuned(&key).is_some() {
            count.cached += 1;
            continue;
        }
        if tensors.is_none() {
            let t = [
                ctx.tensor_as(x, dtype, "tune x")?,
                ctx.tensor_as(w, dtype, "tune w")?,
                ctx.tensor_as(y, dtype, "tune y")?,
                ctx.tensor_as(x, dtype, "tune gx")?,
            ];
            let mut clear = Recording::new();
            for v in &t {
                clear.push(crate::gpu::Step::Clear {
                    buffer: v.buffer.clone(),
                });
            }
            ctx.run(&[&clear])?;
            tensors = Some(t);
        }
        let [tx, tw, ty, tgx] = tensors.as_ref().expect("made above");
        let mut best: Option<(f64, &str)> = None;
        for (name, tile) in Tile::ALL {
            let mut rec = Recording::new();
            for _ in 0..reps.max(1) {
                if backward {
                    gemm_backward(ctx, &mut rec, &geo, Some(tile), [ty, tw, tgx], "tune")?;
                } else {
                    // No bias (the weight bound in its place), identity activation.
                    let epilogue = ([("HAS_BIAS", 0.0), ("ACT", 7.0)], 0.0, 0.0);
                    let tensors = [tx, tw, tw, ty];
                    gemm_forward(
                        ctx,
                        &mut rec,
                        &geo,
                        Some(tile),
                        epilogue,
                        tensors,
                        "tune".into(),
                    )?;
                }
            }
            ctx.run(&[&rec])?; // warm-up: first use, caches
            let mut t = f64::INFINITY;
            for _ in 0..2 {
                let ns = if ctx.features.contains(wgpu::Features::TIMESTAMP_QUERY) {
                    ctx.profile(&[&rec])?.iter().map(|(_, ns)| ns).sum::<f64>()
                } else {
                    let start = std::time::Instant::now();
                    ctx.run(&[&rec])?;
                    start.elapsed().as_secs_f64() * 1e9
                };
                t = t.min(ns);
            }
            if best.is_none_or(|(b, _)| t < b) {
                best = Some((t, name));
            }
        }
        let (_, name) = best.expect("three variants timed");
        ctx.set_tuned(key, name.to_string());
        count.timed += 1;
    }
    Ok(count)
}

/// Record the weight repack of `conv_same_direct.wgsl` (weights of a tap for 4
/// consecutive output channels contiguous; flipped for the backward pass) and
/// return the repacked tensor.
fn same_repack(
    ctx: &Context,
    rec: &mut Recording,
    geo: &Geometry,
    params: &SameParams,
    w: &Tensor,
    backward: bool,
    prepared: Option<&PreparedWeights>,
) -> Result<Tensor> {
    let len = params.r * geo.kh * geo.kw * params.nout4 * 4;
    let key = || {
        format!(
            "same_repack flip{backward} r{} kh{} kw{} nout4 {} {:?}",
            params.r,
            geo.kh,
            geo.kw,
            params.nout4,
            bytemuck::bytes_of(params)
        )
    };
    derived(prepared, rec, w, key, |rec| {
        same_repack_into(ctx, rec, geo, params, w, backward, len)
    })
}

fn same_repack_into(
    ctx: &Context,
    rec: &mut Recording,
    geo: &Geometry,
    params: &SameParams,
    w: &Tensor,
    backward: bool,
    len: u32,
) -> Result<Tensor> {
    let wt = ctx.tensor_as(Shape::new(len, 1, 1, 1), w.dtype, "repacked weights")?;
    let constants = [
        ("KH", geo.kh as f64),
        ("KW", geo.kw as f64),
        ("FLIP", if backward { 1.0 } else { 0.0 }),
    ];
    let k = ctx.kernel(
        Shader::ConvSameDirect,
        w.dtype,
        "repack",
        &[Binding::Read, Binding::ReadWrite],
        &constants,
    )?;
    let u = ctx.uniform(&SameParams {
        items: len,
        ..*params
    });
    let label = if backward {
        "conv2d_backward_repack"
    } else {
        "conv2d_repack"
    };
    rec.push(ctx.dispatch(label, &k, &u, &[w, &wt], len.div_ceil(SAME_WG))?);
    Ok(wt)
}

/// This file's uniform structs and their WGSL twins (checked by
/// tests/backends.rs).
pub(crate) fn uniform_layouts() -> Vec<crate::gpu::UniformLayout> {
    vec![
        crate::gpu::uniform_layout!(
            "conv",
            "Params",
            GemmParams,
            [
                batch, in_c, in_h, in_w, out_c, out_h, out_w, groups, k_h, k_w, stride_h, stride_w,
                dil_h, dil_w, pad_t, pad_l, icg, ocg, gemm_m, gemm_n, gemm_k, tiles_m, tiles_n,
                total_wg, act_alpha, act_beta, step_h, step_w, dstep_h, dstep_w, ph_rows, ph_cols
            ]
        ),
        crate::gpu::uniform_layout!(
            "conv_backward_few",
            "Params",
            FewParams,
            [
                batch, in_c, in_h, in_w, out_c, out_h, out_w, k_h, k_w, stride_h, stride_w, dil_h,
                dil_w, pad_t, pad_l, step_h, step_w, ph_rows, ph_cols, tiles, total_wg
            ]
        ),
        crate::gpu::uniform_layout!(
            "depthwise",
            "Params",
            DwParams,
            [
                batch, in_c, in_h, in_w, out_c, out_h, out_w, mult, k_h, k_w, stride_h, stride_w,
                dil_h, dil_w, pad_t, pad_l, quads, items, act_alpha, act_beta, step_h
            ]
        ),
        crate::gpu::uniform_layout!(
            "depthwise_direct",
            "Params",
            DwDirectParams,
            [planes, c, h, w, quads, pairs, items, act_alpha, act_beta]
        ),
        crate::gpu::uniform_layout!(
            "depthwise_direct",
            "Params2",
            DwS2Params,
            [planes, h, w8, oh, ow4, items, c]
        ),
        crate::gpu::uniform_layout!(
            "conv_same_direct",
            "Params",
            SameParams,
            [n, r, nout, nout4, h, w, quads, pairs, items, act_alpha, act_beta]
        ),
    ]
}
