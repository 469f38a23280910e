//! The tiled implicit GEMM (`shaders/conv/gemm.wgsl`): dense and grouped
//! convolutions and linear layers. 256 threads per workgroup, K in slices
//! through workgroup memory, the output tile picked per layer by [`Tile::pick`]
//! or the autotune. The backward pass of a strided convolution runs one dense
//! GEMM per stride phase (`backward_phased`) instead of gathering zeros.

use super::{gcd, BackEpilogue, Epilogue, Geometry, Pass};
use crate::error::{Error, Result};
use crate::gpu::{Binding, Context, DType, Recording, Shader, Tensor};

/// Tile shape of the GEMM kernel, set through its override constants (`WG_M`
/// threads along m, `TM` m and `TN` n per thread, `BK` the K slice, `DB`
/// double-buffered workgroup memory); gemm.wgsl supports exactly these
/// shapes (its index bounds are checked for them), each single- or
/// double-buffered.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Tile {
    wg_m: u32,
    tm: u32,
    tn: u32,
    bk: u32,
    db: bool,
}

impl Tile {
    /// 64 x 64, 4 x 4 per thread: the general case.
    pub(super) const SQUARE: Tile = Tile {
        wg_m: 16,
        tm: 4,
        tn: 4,
        bk: 16,
        db: false,
    };
    /// 128 x 64, 8 x 4 per thread: twice the FMAs per workgroup-memory read, for
    /// layers with enough tiles to fill a GPU anyway.
    const TALL: Tile = Tile {
        wg_m: 16,
        tm: 8,
        tn: 4,
        bk: 16,
        db: false,
    };
    /// 256 x 16, 4 x 4 per thread: few GEMM columns (the stem's backward has 3,
    /// 1x1 projections 24), where a 64-wide tile would mostly compute padding.
    const NARROW: Tile = Tile {
        wg_m: 64,
        tm: 4,
        tn: 4,
        bk: 8,
        db: false,
    };
    /// 128 x 128, an 8 x 8 block per thread (K slices of 8): four times the
    /// FMAs per workgroup-memory read of 64 x 64, for large GEMMs on GPUs.
    /// Only the autotune picks it (measured per layer), not [`Tile::pick`].
    const WIDE: Tile = Tile {
        wg_m: 16,
        tm: 8,
        tn: 8,
        bk: 8,
        db: false,
    };

    /// The same tile double-buffered: the next K slice is stored into one
    /// half of workgroup memory while the other is multiplied, one barrier
    /// per slice instead of two, for twice the workgroup memory.
    const fn double(self) -> Tile {
        Tile { db: true, ..self }
    }

    /// vec4s of workgroup memory for the A and B tiles (gemm.wgsl's A_LEN,
    /// B_LEN).
    fn lens(self) -> (u32, u32) {
        let halves = if self.db { 2 } else { 1 };
        let bm = self.tm * self.wg_m;
        let bn = self.tn * (256 / self.wg_m);
        (halves * self.bk * bm / 4, halves * self.bk * (bn / 4 + 1))
    }

    /// Bytes of workgroup memory a workgroup of this tile uses.
    pub(super) fn workgroup_bytes(self) -> u32 {
        let (a, b) = self.lens();
        (a + b) * 16
    }

    fn bm(self) -> u64 {
        (self.tm * self.wg_m) as u64
    }
    fn bn(self) -> u64 {
        (self.tn * (256 / self.wg_m)) as u64
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

    /// Every variant with its name in the tuning table. The double-buffered
    /// ones need more than WebGPU's 16 KiB of workgroup memory:
    /// [`Tile::fits`] says whether a device takes them.
    pub(super) const ALL: [(&'static str, Tile); 8] = [
        ("square", Tile::SQUARE),
        ("tall", Tile::TALL),
        ("narrow", Tile::NARROW),
        ("wide", Tile::WIDE),
        ("square-db", Tile::SQUARE.double()),
        ("tall-db", Tile::TALL.double()),
        ("narrow-db", Tile::NARROW.double()),
        ("wide-db", Tile::WIDE.double()),
    ];

    fn from_name(name: &str) -> Option<Tile> {
        Tile::ALL.iter().find(|(n, _)| *n == name).map(|(_, t)| *t)
    }

    /// Whether `ctx`'s device gives a workgroup this tile's memory.
    pub(super) fn fits(self, ctx: &Context) -> bool {
        self.workgroup_bytes() <= ctx.workgroup_storage_bytes()
    }

    fn constants(self) -> [(&'static str, f64); 7] {
        let (a_len, b_len) = self.lens();
        [
            ("WG_M", self.wg_m as f64),
            ("TM", self.tm as f64),
            ("TN", self.tn as f64),
            ("BK", self.bk as f64),
            ("DB", if self.db { 1.0 } else { 0.0 }),
            ("A_LEN", a_len as f64),
            ("B_LEN", b_len as f64),
        ]
    }
}

/// Use the 128 x 64 tile only when it still gives this many workgroups (a few
/// waves on a large GPU); smaller layers keep 64 x 64 for parallelism.
const TALL_MIN_WORKGROUPS: u64 = 512;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
pub(super) struct GemmParams {
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
    pub(super) total_wg: u32,
    pub(super) act_alpha: f32,
    pub(super) act_beta: f32,
    step_h: u32,
    step_w: u32,
    dstep_h: u32,
    dstep_w: u32,
    ph_rows: u32,
    ph_cols: u32,
}

/// Record the forward pass of `geo` on `[x, w, bias, y]` with `tile` (else
/// the tuning table's, else the shape heuristic's) and the epilogue.
pub(super) fn forward(
    ctx: &Context,
    rec: &mut Recording,
    geo: &Geometry,
    tile: Option<Tile>,
    epilogue: &Epilogue,
    tensors: [&Tensor; 4],
    label: String,
) -> Result<()> {
    let dtype = tensors[3].dtype;
    let tile = tile.or_else(|| tuned_tile(ctx, geo, Pass::Forward, dtype));
    let (mut params, tile) = gemm_params(geo, Pass::Forward, tile)?;
    params.act_alpha = epilogue.alpha;
    params.act_beta = epilogue.beta;
    let mut constants = epilogue.constants().to_vec();
    constants.extend(tile.constants());
    let bindings = [
        Binding::Read,
        Binding::Read,
        Binding::Read,
        Binding::ReadWrite,
    ];
    let k = ctx.kernel(Shader::Conv, dtype, "forward", &bindings, &constants)?;
    let u = ctx.uniform(&params);
    rec.push(ctx.dispatch(label, &k, &u, &tensors, params.total_wg)?);
    Ok(())
}

/// Record the backward pass (phase by phase for stride > 1) of `geo` on
/// `[gy, w, gx]` with `tile` (else the tuning table's, else the heuristic's)
/// and the epilogue `back`.
pub(super) fn backward(
    ctx: &Context,
    rec: &mut Recording,
    geo: &Geometry,
    tile: Option<Tile>,
    back: &BackEpilogue,
    tensors: [&Tensor; 3],
    label: &str,
) -> Result<()> {
    let dtype = tensors[2].dtype;
    let tile = tile.or_else(|| tuned_tile(ctx, geo, Pass::Backward, dtype));
    let (mut params, tile) = gemm_params(geo, Pass::Backward, tile)?;
    params.act_alpha = back.alpha;
    // Stride > 1: phase by phase, without the zero taps (see gemm.wgsl).
    let entry = if phased(geo) {
        "backward_phased"
    } else {
        "backward"
    };
    let bindings = [
        Binding::Read,
        Binding::Read,
        Binding::ReadWrite,
        Binding::Read,
    ];
    let mut constants = back.constants().to_vec();
    constants.extend(tile.constants());
    let k = ctx.kernel(Shader::Conv, dtype, entry, &bindings, &constants)?;
    let u = ctx.uniform(&params);
    let [gy, w, gx] = tensors;
    rec.push(ctx.dispatch(label, &k, &u, &[gy, w, gx, back.ay], params.total_wg)?);
    Ok(())
}

/// Whether the backward pass runs phase by phase (`backward_phased`).
fn phased(geo: &Geometry) -> bool {
    geo.p.stride != [1, 1]
}

/// Key of this pass in the tuning table: the GEMM source's hash, the pass,
/// the storage type and everything that shapes the GEMM.
pub(super) fn tune_key(geo: &Geometry, pass: Pass, dtype: DType) -> String {
    static HASH: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    let hash = HASH.get_or_init(|| fnv1a(Shader::Conv.source().as_bytes()));
    let p = &geo.p;
    // "conv.wgsl": the module's name when the tables were first written; kept
    // so that existing tables stay valid.
    format!(
        "conv.wgsl#{hash:08x} {} {dtype} x{} oc{} k{}x{} s{:?} p{:?} d{:?} g{}",
        match pass {
            Pass::Forward => "forward",
            Pass::Backward => "backward",
        },
        geo.x,
        geo.oc,
        geo.kh,
        geo.kw,
        p.stride,
        p.padding,
        p.dilation,
        p.groups
    )
}

/// The tile the tuning table holds for this pass, if any (and if this device
/// gives it its workgroup memory: a table copied from another device may name
/// one it cannot).
fn tuned_tile(ctx: &Context, geo: &Geometry, pass: Pass, dtype: DType) -> Option<Tile> {
    ctx.tuned(&tune_key(geo, pass, dtype))
        .and_then(|name| Tile::from_name(&name))
        .filter(|t| t.fits(ctx))
}

pub(super) fn gemm_params(
    geo: &Geometry,
    pass: Pass,
    tuned: Option<Tile>,
) -> Result<(GemmParams, Tile)> {
    let (x, y, p) = (geo.x, geo.y, &geo.p);
    let backward = pass == Pass::Backward;
    let g = p.groups;
    let icg = x.c / g;
    let ocg = geo.oc / g;
    let khw = geo.kh as u64 * geo.kw as u64;
    let [sh, sw] = p.stride;
    let [dh, dw] = p.dilation;
    // Stride phases (backward_phased): taps step by stride / gcd(dil, stride)
    // within a phase, outputs by dil / gcd.
    let (step_h, dstep_h) = (sh / gcd(dh, sh), dh / gcd(dh, sh));
    let (step_w, dstep_w) = (sw / gcd(dw, sw), dw / gcd(dw, sw));
    let ph_rows = (x.h as u64).div_ceil(sh as u64);
    let ph_cols = (x.w as u64).div_ceil(sw as u64);
    let phases = if backward && phased(geo) {
        sh as u64 * sw as u64
    } else {
        1
    };
    let (m, n, k) = if backward && phased(geo) {
        // the largest phase: the kernel skips the spare tiles of smaller ones
        (
            x.n as u64 * ph_rows * ph_cols,
            icg as u64,
            ocg as u64
                * (geo.kh as u64).div_ceil(step_h as u64)
                * (geo.kw as u64).div_ceil(step_w as u64),
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
    match (fits(m + tile.bm()), fits(n), fits(k + 16), fits(total)) {
        (Some(_), Some(_), Some(_), Some(total_wg)) => Ok((
            GemmParams {
                batch: x.n,
                in_c: x.c,
                in_h: x.h,
                in_w: x.w,
                out_c: geo.oc,
                out_h: y.h,
                out_w: y.w,
                groups: g,
                k_h: geo.kh,
                k_w: geo.kw,
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
            },
            tile,
        )),
        _ => Err(Error::shape(
            "conv2d",
            format!(
                "input {x} with output {y} is too large for 32-bit indexing; use a smaller batch"
            ),
        )),
    }
}

/// FNV-1a, 32 bits: a hash that stays the same across builds and platforms.
fn fnv1a(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5u32, |h, &b| {
        (h ^ b as u32).wrapping_mul(0x0100_0193)
    })
}

pub(super) fn uniform_layouts() -> Vec<crate::gpu::UniformLayout> {
    params_layout("conv")
}

/// `Params` of the module `shader` (gemm.wgsl's, and coop.wgsl's copy).
pub(super) fn params_layout(shader: &'static str) -> Vec<crate::gpu::UniformLayout> {
    vec![crate::gpu::uniform_layout!(
        shader,
        "Params",
        GemmParams,
        [
            batch, in_c, in_h, in_w, out_c, out_h, out_w, groups, k_h, k_w, stride_h, stride_w,
            dil_h, dil_w, pad_t, pad_l, icg, ocg, gemm_m, gemm_n, gemm_k, tiles_m, tiles_n,
            total_wg, act_alpha, act_beta, step_h, step_w, dstep_h, dstep_w, ph_rows, ph_cols
        ]
    )]
}
