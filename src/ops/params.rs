//! Op attributes shared by the model format, shape inference and the kernels.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::gpu::Shape;

/// 2-D convolution attributes. `padding` is `[top, left, bottom, right]`
/// (asymmetric padding covers TensorFlow's SAME).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Conv2dParams {
    pub stride: [u32; 2],
    pub padding: [u32; 4],
    pub dilation: [u32; 2],
    pub groups: u32,
}

impl Default for Conv2dParams {
    fn default() -> Self {
        Conv2dParams {
            stride: [1, 1],
            padding: [0; 4],
            dilation: [1, 1],
            groups: 1,
        }
    }
}

/// Output size of one spatial dimension of a convolution or pooling window.
/// `None` when the window does not fit.
pub fn window_out(
    input: u32,
    pad_a: u32,
    pad_b: u32,
    kernel: u32,
    stride: u32,
    dilation: u32,
    ceil: bool,
) -> Option<u32> {
    // i128: dilation * (kernel - 1) overflows i64 for extreme u32 attributes.
    let padded = input as i128 + pad_a as i128 + pad_b as i128;
    if kernel == 0 || stride == 0 || dilation == 0 {
        return None;
    }
    let span = dilation as i128 * (kernel as i128 - 1) + 1;
    if padded < span {
        return None;
    }
    let s = stride as i128;
    let mut out = if ceil {
        (padded - span + s - 1) / s + 1
    } else {
        (padded - span) / s + 1
    };
    // PyTorch: with ceil_mode the last window must start inside the input or left padding.
    if ceil && (out - 1) * s >= input as i128 + pad_a as i128 {
        out -= 1;
    }
    u32::try_from(out).ok()
}

#[cfg(test)]
mod tests {
    use super::window_out;

    #[test]
    fn window_out_matches_pytorch_and_never_overflows() {
        assert_eq!(window_out(224, 0, 1, 3, 2, 1, false), Some(112)); // TF-SAME stride 2
        assert_eq!(window_out(13, 0, 0, 3, 2, 1, true), Some(6)); // ceil_mode
        assert_eq!(window_out(2, 0, 0, 3, 1, 1, false), None); // does not fit
        assert_eq!(
            window_out(u32::MAX, 0, 0, u32::MAX, u32::MAX, u32::MAX, false),
            None
        );
        assert_eq!(
            window_out(u32::MAX, u32::MAX, u32::MAX, 1, 1, 1, false),
            None
        ); // output past u32
    }
}

impl Conv2dParams {
    /// Output shape for input `x` and weight `[oc, ic / groups, kh, kw]`.
    pub fn out_shape(&self, x: Shape, weight: [u32; 4]) -> Result<Shape> {
        let [oc, icg, kh, kw] = weight;
        let g = self.groups;
        if g == 0 || !x.c.is_multiple_of(g) || oc % g != 0 {
            return Err(Error::shape(
                "conv2d",
                format!(
                    "groups {g} must divide input channels {} and output channels {oc}",
                    x.c
                ),
            ));
        }
        if x.c / g != icg {
            return Err(Error::shape(
                "conv2d",
                format!(
                    "weight expects {icg} input channels per group, input has {} / {g}",
                    x.c
                ),
            ));
        }
        let [pt, pl, pb, pr] = self.padding;
        let oh = window_out(x.h, pt, pb, kh, self.stride[0], self.dilation[0], false);
        let ow = window_out(x.w, pl, pr, kw, self.stride[1], self.dilation[1], false);
        match (oh, ow) {
            (Some(oh), Some(ow)) if oh > 0 && ow > 0 => Ok(Shape::new(x.n, oc, oh, ow)),
            _ => Err(Error::shape(
                "conv2d",
                format!(
                    "kernel {kh}x{kw} (dilation {:?}) does not fit input {}x{} with padding {:?}",
                    self.dilation, x.h, x.w, self.padding
                ),
            )),
        }
    }

    /// Depthwise: one input channel per group and groups == input channels.
    pub fn is_depthwise(&self, x: Shape, weight: [u32; 4]) -> bool {
        self.groups > 1 && self.groups == x.c && weight[1] == 1
    }
}

/// Pooling attributes (max and average). `padding` is `[top, left, bottom, right]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pool2dParams {
    pub kernel: [u32; 2],
    pub stride: [u32; 2],
    pub padding: [u32; 4],
    pub dilation: [u32; 2],
    pub ceil_mode: bool,
    /// Average pooling only: divide by the full window including padding (PyTorch's default).
    pub count_include_pad: bool,
}

impl Pool2dParams {
    pub fn new(kernel: [u32; 2], stride: [u32; 2], padding: [u32; 4]) -> Self {
        Pool2dParams {
            kernel,
            stride,
            padding,
            dilation: [1, 1],
            ceil_mode: false,
            count_include_pad: true,
        }
    }

    pub fn out_shape(&self, x: Shape) -> Result<Shape> {
        let [pt, pl, pb, pr] = self.padding;
        let oh = window_out(
            x.h,
            pt,
            pb,
            self.kernel[0],
            self.stride[0],
            self.dilation[0],
            self.ceil_mode,
        );
        let ow = window_out(
            x.w,
            pl,
            pr,
            self.kernel[1],
            self.stride[1],
            self.dilation[1],
            self.ceil_mode,
        );
        match (oh, ow) {
            (Some(oh), Some(ow)) if oh > 0 && ow > 0 => Ok(Shape::new(x.n, x.c, oh, ow)),
            _ => Err(Error::shape(
                "pool",
                format!(
                    "window {:?} does not fit input {}x{} with padding {:?}",
                    self.kernel, x.h, x.w, self.padding
                ),
            )),
        }
    }
}
