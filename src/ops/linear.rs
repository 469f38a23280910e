//! Fully connected layer, y = x W^T + b, run as a 1x1 convolution on the tiled
//! GEMM kernel of [`crate::ops::conv`] (vectors are `[n, k, 1, 1]`, which is
//! exactly a 1x1 image with k channels).

use crate::error::{Error, Result};
use crate::gpu::{Context, Recording, Shape, Tensor};
use crate::ops::activation::Activation;
use crate::ops::conv;
use crate::ops::params::Conv2dParams;

/// y = x W^T + b. `x` is `[n, k, 1, 1]` (any `[n, ...]` of k values per item is
/// seen as a vector), `w` is `[out, k, 1, 1]`, `b` is `[1, out, 1, 1]`, `y` is
/// `[n, out, 1, 1]`.
pub fn forward(
    ctx: &Context,
    rec: &mut Recording,
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    y: &Tensor,
) -> Result<()> {
    forward_act(ctx, rec, x, w, b, Activation::Identity, y)
}

/// y = act(x W^T + b) in one dispatch (the activation in the GEMM epilogue; see
/// [`conv::forward_act`]).
pub fn forward_act(
    ctx: &Context,
    rec: &mut Recording,
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    act: Activation,
    y: &Tensor,
) -> Result<()> {
    let (xv, wv) = views(x, w)?;
    let want = Shape::new(x.shape.n, wv.shape.n, 1, 1);
    if y.numel() != want.numel() || y.shape.n != want.n {
        return Err(Error::shape(
            "linear",
            format!("output has shape {} but {want} was expected", y.shape),
        ));
    }
    if let Some(b) = b {
        if b.numel() != wv.shape.n as u64 {
            return Err(Error::shape(
                "linear",
                format!(
                    "bias has shape {} but the layer has {} outputs",
                    b.shape, wv.shape.n
                ),
            ));
        }
    }
    conv::forward_act(
        ctx,
        rec,
        &Conv2dParams::default(),
        &xv,
        &wv,
        b,
        act,
        &y.reshaped(want),
    )
}

/// gx = gy W (gradient with respect to the input only; `gx` is overwritten).
/// `gy` is `[n, out, 1, 1]`, `w` is `[out, k, 1, 1]`, `gx` has the input's shape.
pub fn backward(
    ctx: &Context,
    rec: &mut Recording,
    gy: &Tensor,
    w: &Tensor,
    gx: &Tensor,
) -> Result<()> {
    let (gxv, wv) = views(gx, w)?;
    let want = Shape::new(gx.shape.n, wv.shape.n, 1, 1);
    if gy.numel() != want.numel() || gy.shape.n != want.n {
        return Err(Error::shape(
            "linear",
            format!(
                "output gradient has shape {} but {want} was expected",
                gy.shape
            ),
        ));
    }
    conv::backward(
        ctx,
        rec,
        &Conv2dParams::default(),
        &gy.reshaped(want),
        &wv,
        &gxv,
    )
}

/// The input as `[n, k, 1, 1]` and the weight as `[out, k, 1, 1]`.
fn views(x: &Tensor, w: &Tensor) -> Result<(Tensor, Tensor)> {
    let k = x.shape.item();
    let wk = w.shape.item();
    if k != wk || k > u32::MAX as u64 {
        return Err(Error::shape(
            "linear",
            format!(
                "input {} has {k} features per item but weight {} expects {wk}",
                x.shape, w.shape
            ),
        ));
    }
    let k = k as u32;
    Ok((
        x.reshaped(Shape::new(x.shape.n, k, 1, 1)),
        w.reshaped(Shape::new(w.shape.n, k, 1, 1)),
    ))
}
