//! Which kernel runs a convolution's pass: the one place that decides, used by
//! the forward and backward passes and by the autotune (which times only the
//! passes that land on the tiled GEMM).

use super::pointwise::PwLayout;
use super::Geometry;
use crate::gpu::{KernelStyle, Shader};

/// A convolution's pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pass {
    /// y = act(conv2d(x, w) + b).
    Forward,
    /// gx from gy (the gradient to the input only).
    Backward,
}

/// The kernels a convolution's pass can run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConvKernel {
    /// `shaders/conv/gemm.wgsl`: the tiled implicit GEMM, any dense or grouped
    /// convolution (stride > 1 backward phase by phase). The general case and
    /// every layer on GPUs but the depthwise ones.
    Gemm,
    /// `shaders/conv/coop.wgsl`: the implicit GEMM on cooperative matrices
    /// (tensor cores; f16 operands, f32 accumulation), with `--precision
    /// mixed` on adapters that have them: forward passes of dense and grouped
    /// layers, backward passes of stride-1 layers, at least 16 wide and deep.
    Coop,
    /// `shaders/conv/depthwise.wgsl`: depthwise layers (one group per input
    /// channel, any channel multiplier, stride and dilation).
    Depthwise,
    /// `shaders/conv/depthwise.wgsl`'s `forward_fixed`: the forward pass of
    /// depthwise layers without dilation and with kernels up to 7 wide (every
    /// depthwise layer of the usual mobile networks), the kernel size and
    /// stride specialised.
    DepthwiseFixed,
    /// `shaders/conv/depthwise_direct.wgsl`'s `main`: depthwise 'same' layers
    /// of stride 1 on CPU adapters (the backward pass flips the kernel).
    DepthwiseDirect,
    /// `shaders/conv/depthwise_direct.wgsl`'s `backward_s2`: the backward pass
    /// of stride-2 depthwise layers on CPU adapters.
    DepthwiseDirectS2,
    /// `shaders/conv/pointwise_direct.wgsl`: 1x1 layers and linear layers of
    /// 256 rows and more on CPU adapters, in one of two layouts.
    PointwiseDirect(PwLayout),
    /// `shaders/conv/same_direct.wgsl`'s `main`: dense 'same' stride-1 layers
    /// on CPU adapters (the backward pass flips the kernel).
    SameDirect,
    /// `shaders/conv/same_direct.wgsl`'s `main_s2`: the forward pass of dense
    /// stride-2 layers on CPU adapters (stems, downsampling).
    SameDirectS2,
    /// `shaders/conv/backward_few.wgsl`: the backward pass of layers with at
    /// most 4 input channels (stems) on CPU adapters.
    FewInputs,
    /// No kernel: the backward pass of a layer with no output elements (the
    /// input gradient is cleared to zero).
    Clear,
}

impl ConvKernel {
    /// Whether the autotune picks this kernel's tile.
    pub fn tuned(self) -> bool {
        self == ConvKernel::Gemm
    }

    /// Whether its backward pass can apply the derivative of the activation
    /// before the convolution as it writes ([`super::backward_through`]).
    /// The tensor-core kernel and the stems' kernel (whose input is the image)
    /// do not; a layer with no output writes a zero gradient, which needs none.
    pub fn fuses_dact(self) -> bool {
        matches!(
            self,
            ConvKernel::Gemm
                | ConvKernel::Depthwise
                | ConvKernel::DepthwiseDirect
                | ConvKernel::DepthwiseDirectS2
                | ConvKernel::PointwiseDirect(_)
                | ConvKernel::SameDirect
                | ConvKernel::Clear
        )
    }

    /// The shader module it dispatches (`None`: no dispatch).
    pub fn shader(self) -> Option<Shader> {
        Some(match self {
            ConvKernel::Gemm => Shader::Conv,
            ConvKernel::Coop => Shader::ConvCoop,
            ConvKernel::Depthwise | ConvKernel::DepthwiseFixed => Shader::Depthwise,
            ConvKernel::DepthwiseDirect | ConvKernel::DepthwiseDirectS2 => Shader::DepthwiseDirect,
            ConvKernel::PointwiseDirect(PwLayout::Vec4) => Shader::ConvDirectVec4,
            ConvKernel::PointwiseDirect(PwLayout::Scalar) => Shader::ConvDirectScalar,
            ConvKernel::SameDirect | ConvKernel::SameDirectS2 => Shader::ConvSameDirect,
            ConvKernel::FewInputs => Shader::ConvBackwardFew,
            ConvKernel::Clear => return None,
        })
    }
}

/// The kernel for `pass` of the layer `geo` on an adapter of kernel `style`.
/// CPU adapters ([`KernelStyle::Direct`]) take the direct families where a
/// layer fits them (llvmpipe charges per load instruction and per barrier, so
/// they use no workgroup memory); everything else runs on the tiled kernels.
/// `coop` (`--precision mixed` on an adapter with cooperative matrices)
/// sends the dense GEMMs that fit it to the tensor cores first.
pub(super) fn select(geo: &Geometry, style: KernelStyle, coop: bool, pass: Pass) -> ConvKernel {
    if coop && geo.coop_fits(pass) {
        return ConvKernel::Coop;
    }
    let direct = style == KernelStyle::Direct;
    let pointwise = geo.pointwise().filter(|pw| direct && pw.eligible());
    match pass {
        Pass::Forward => {
            if direct && geo.dw_direct() {
                ConvKernel::DepthwiseDirect
            } else if geo.dw_fixed() {
                ConvKernel::DepthwiseFixed
            } else if geo.depthwise {
                ConvKernel::Depthwise
            } else if let Some(pw) = pointwise {
                ConvKernel::PointwiseDirect(pw.layout())
            } else if direct && geo.s2_direct() {
                ConvKernel::SameDirectS2
            } else if direct && geo.same_direct(pass) {
                ConvKernel::SameDirect
            } else {
                ConvKernel::Gemm
            }
        }
        Pass::Backward => {
            if direct && geo.dw_direct_s2() && geo.y.numel() > 0 {
                ConvKernel::DepthwiseDirectS2
            } else if direct && geo.dw_direct() {
                ConvKernel::DepthwiseDirect
            } else if geo.depthwise {
                ConvKernel::Depthwise
            } else if geo.y.numel() == 0 {
                ConvKernel::Clear
            } else if let Some(pw) = pointwise {
                ConvKernel::PointwiseDirect(pw.layout())
            } else if direct && geo.same_direct(pass) {
                ConvKernel::SameDirect
            } else if direct && geo.few_inputs() {
                ConvKernel::FewInputs
            } else {
                ConvKernel::Gemm
            }
        }
    }
}

/// What each direct family covers (shape conditions only; [`select`] adds
/// the adapter's kernel style).
impl Geometry {
    /// `backward_few.wgsl`: one group, at most 4 input channels (a stem),
    /// offsets within i32.
    pub(super) fn few_inputs(&self) -> bool {
        self.p.groups == 1
            && self.x.c <= 4
            && !self.depthwise
            && self.x.numel() < i32::MAX as u64
            && self.y.numel() < i32::MAX as u64
            && (self.kh as u64 * self.p.dilation[0] as u64) < i32::MAX as u64
            && (self.kw as u64 * self.p.dilation[1] as u64) < i32::MAX as u64
    }

    /// `depthwise_direct.wgsl`'s `main`: one channel per group, stride 1, no
    /// dilation, 'same' padding (output size = input size, so the backward
    /// pass is the same kernel with the weights flipped), planes of a multiple
    /// of 4 elements, kernels up to 5 wide (the 4 outputs and their taps fit 3
    /// vec4 blocks).
    pub(super) fn dw_direct(&self) -> bool {
        let p = &self.p;
        self.depthwise
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

    /// `depthwise.wgsl`'s `forward_fixed`: no dilation, and the row segment of
    /// a thread's 4 outputs (3 * stride + kernel width values) fits its
    /// 16-value buffer.
    pub(super) fn dw_fixed(&self) -> bool {
        self.depthwise
            && self.p.dilation == [1, 1]
            && 3 * self.p.stride[1] as u64 + self.kw as u64 <= 16
    }

    /// `depthwise_direct.wgsl`'s `backward_s2`: one channel per group, stride
    /// 2, no dilation, an output exactly half as wide as the input, input rows
    /// of a multiple of 8, kernels up to 5 wide with left padding up to 5.
    pub(super) fn dw_direct_s2(&self) -> bool {
        let p = &self.p;
        self.depthwise
            && self.oc == self.x.c
            && p.stride == [2, 2]
            && p.dilation == [1, 1]
            && self.kw <= 5
            && p.padding[1] <= 5
            && self.x.w.is_multiple_of(8)
            && self.y.w * 2 == self.x.w
            && self.x.numel() < i32::MAX as u64
    }

    /// `same_direct.wgsl`'s `main`: dense (groups 1) convolutions that are not
    /// pointwise-eligible, stride 1, no dilation, 'same' size, planes of 4k
    /// elements, kernels up to 5 wide; the backward pass of layers with at most
    /// 4 input channels stays with `backward_few.wgsl`.
    pub(super) fn same_direct(&self, pass: Pass) -> bool {
        let p = &self.p;
        let (x, y) = (self.x, self.y);
        let pixels = x.h as u64 * x.w as u64;
        !self.depthwise
            && p.groups == 1
            && !self.pointwise().is_some_and(|pw| pw.eligible())
            && p.stride == [1, 1]
            && p.dilation == [1, 1]
            && self.kw <= 5
            && y.h == x.h
            && y.w == x.w
            && pixels.is_multiple_of(4)
            && pixels > 0
            && self.oc > 0
            && x.c > 0
            && (pass == Pass::Forward || !self.few_inputs())
            && x.numel().max(y.numel()) < (i32::MAX as u64) / 2
            && x.c as u64 * self.oc as u64 * 25 < u32::MAX as u64
    }

    /// `same_direct.wgsl`'s `main_s2` (forward only): dense stride-2
    /// convolutions (stems, downsampling) whose input and output rows are
    /// multiples of 4 wide, kernels up to 5 wide with left padding up to 4, no
    /// dilation.
    pub(super) fn s2_direct(&self) -> bool {
        let p = &self.p;
        let (x, y) = (self.x, self.y);
        !self.depthwise
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::Shape;
    use crate::ops::Conv2dParams;

    fn geo(x: [u32; 4], oc: u32, k: u32, stride: u32, groups: u32) -> Geometry {
        let p = Conv2dParams {
            stride: [stride; 2],
            padding: [k / 2; 4],
            dilation: [1, 1],
            groups,
        };
        let xs = Shape::new(x[0], x[1], x[2], x[3]);
        let ws = Shape::new(oc, x[1] / groups, k, k);
        let ys = p.out_shape(xs, ws.dims()).unwrap();
        Geometry::new(&p, xs, ws, ys, "output").unwrap()
    }

    /// `--precision mixed` on an adapter with cooperative matrices: dense and
    /// grouped GEMMs 16 wide and deep go to them, forward at any stride and
    /// backward at stride 1; depthwise, narrow and strided-backward passes
    /// keep their kernels; without cooperative matrices nothing changes.
    #[test]
    fn cooperative_matrices_take_the_gemms_that_fit() {
        use ConvKernel::*;
        use Pass::*;
        let cases: [(Geometry, [ConvKernel; 2]); 6] = [
            (geo([8, 64, 14, 14], 128, 1, 1, 1), [Coop, Coop]),
            (geo([8, 64, 14, 14], 64, 3, 1, 1), [Coop, Coop]),
            (geo([8, 64, 14, 14], 64, 3, 2, 1), [Coop, Gemm]),
            (geo([8, 64, 14, 14], 64, 3, 1, 2), [Coop, Coop]),
            // stem: K = 27 forward, but 3 input channels backward
            (geo([8, 3, 32, 32], 32, 3, 2, 1), [Coop, Gemm]),
            // depthwise
            (
                geo([8, 64, 14, 14], 64, 3, 1, 64),
                [DepthwiseFixed, Depthwise],
            ),
        ];
        for (i, (g, [fwd, bwd])) in cases.iter().enumerate() {
            assert_eq!(
                select(g, KernelStyle::Tiled, true, Forward),
                *fwd,
                "case {i} forward"
            );
            assert_eq!(
                select(g, KernelStyle::Tiled, true, Backward),
                *bwd,
                "case {i} backward"
            );
            for pass in [Forward, Backward] {
                assert_ne!(select(g, KernelStyle::Tiled, false, pass), Coop, "case {i}");
            }
        }
        // 8 output channels: too narrow for a 16-wide matrix
        let narrow = geo([8, 64, 14, 14], 8, 1, 1, 1);
        assert_eq!(select(&narrow, KernelStyle::Tiled, true, Forward), Gemm);
    }
}
