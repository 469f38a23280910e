//! The autotune of the tiled GEMM's tile, per layer and pass.

use super::gemm::{self, Tile};
use super::select::{select, Pass};
use super::{BackEpilogue, Epilogue, Geometry};
use crate::error::Result;
use crate::gpu::{Context, DType, Recording, Shape, Tensor};
use crate::ops::activation::Activation;
use crate::ops::params::Conv2dParams;

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
    pass: Pass,
) -> Result<Option<String>> {
    let y = p.out_shape(x, w.dims())?;
    let geo = Geometry::new(p, x, w, y, "output")?;
    Ok(select(&geo, ctx.kernel_style(), ctx.coop(), pass)
        .tuned()
        .then(|| gemm::tune_key(&geo, pass, dtype)))
}

/// The GEMM tiles the autotune times on `ctx`'s device, by their names in
/// the tuning table: all but those whose workgroup memory the device lacks.
pub fn tuned_tiles(ctx: &Context) -> Vec<&'static str> {
    Tile::ALL
        .into_iter()
        .filter(|(_, t)| t.fits(ctx))
        .map(|(name, _)| name)
        .collect()
}

/// Autotune one convolution (or linear layer seen as a 1x1 convolution) with
/// input `x` and weight `w`: for each of its passes that runs on the tiled GEMM
/// and has no entry in `ctx`'s tuning table yet, time every tile variant the
/// device takes ([`tuned_tiles`]) (`reps` dispatches, the best of two rounds; GPU timestamps where the adapter
/// has them, wall clock otherwise) and store the fastest. The forward and
/// backward passes then use the stored tile; without an entry they pick one by
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
    for pass in [Pass::Forward, Pass::Backward] {
        if !select(&geo, ctx.kernel_style(), ctx.coop(), pass).tuned()
            || x.numel() == 0
            || y.numel() == 0
        {
            continue;
        }
        let key = gemm::tune_key(&geo, pass, dtype);
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
        for (name, tile) in Tile::ALL.into_iter().filter(|(_, t)| t.fits(ctx)) {
            let mut rec = Recording::new();
            for _ in 0..reps.max(1) {
                match pass {
                    Pass::Backward => {
                        let back = BackEpilogue::new(None, ty, tgx)?;
                        let tensors = [ty, tw, tgx];
                        gemm::backward(ctx, &mut rec, &geo, Some(tile), &back, tensors, "tune")?
                    }
                    Pass::Forward => {
                        // No bias (the weight bound in its place), no activation.
                        let epilogue = Epilogue::new(false, Activation::Identity);
                        let tensors = [tx, tw, tw, ty];
                        gemm::forward(
                            ctx,
                            &mut rec,
                            &geo,
                            Some(tile),
                            &epilogue,
                            tensors,
                            "tune".into(),
                        )?;
                    }
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
