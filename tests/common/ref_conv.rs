//! CPU reference (f64) for conv2d and linear, forward and backward to the input.
//! Plain loops, written for clarity: NCHW input, weight `[oc, ic / groups, kh, kw]`,
//! padding `[top, left, bottom, right]` (PyTorch semantics).
#![allow(dead_code)]

/// Convolution geometry for the reference.
#[derive(Debug, Clone, Copy)]
pub struct RefConv {
    /// input [n, c, h, w]
    pub x: [usize; 4],
    /// weight [oc, c / groups, kh, kw]
    pub w: [usize; 4],
    pub stride: [usize; 2],
    pub padding: [usize; 4],
    pub dilation: [usize; 2],
    pub groups: usize,
}

impl RefConv {
    /// Output [n, oc, oh, ow].
    pub fn out(&self) -> [usize; 4] {
        let [n, _, h, w] = self.x;
        let [oc, _, kh, kw] = self.w;
        let [pt, pl, pb, pr] = self.padding;
        let oh = (h + pt + pb - self.dilation[0] * (kh - 1) - 1) / self.stride[0] + 1;
        let ow = (w + pl + pr - self.dilation[1] * (kw - 1) - 1) / self.stride[1] + 1;
        [n, oc, oh, ow]
    }

    /// Calls `f(x_index, w_index, y_index)` for every multiply of the convolution
    /// that touches the input (padding taps skipped).
    fn for_each_tap(&self, mut f: impl FnMut(usize, usize, usize)) {
        let [n, c, h, w] = self.x;
        let [oc, icg, kh, kw] = self.w;
        let [_, _, oh, ow] = self.out();
        let ocg = oc / self.groups;
        assert_eq!(
            icg * self.groups,
            c,
            "reference: groups do not divide channels"
        );
        for b in 0..n {
            for o in 0..oc {
                let g = o / ocg;
                for y in 0..oh {
                    for xx in 0..ow {
                        let yi = ((b * oc + o) * oh + y) * ow + xx;
                        for ci in 0..icg {
                            let cin = g * icg + ci;
                            for ky in 0..kh {
                                let iy = (y * self.stride[0] + ky * self.dilation[0]) as isize
                                    - self.padding[0] as isize;
                                if iy < 0 || iy >= h as isize {
                                    continue;
                                }
                                for kx in 0..kw {
                                    let ix = (xx * self.stride[1] + kx * self.dilation[1]) as isize
                                        - self.padding[1] as isize;
                                    if ix < 0 || ix >= w as isize {
                                        continue;
                                    }
                                    let xi = ((b * c + cin) * h + iy as usize) * w + ix as usize;
                                    let wi = ((o * icg + ci) * kh + ky) * kw + kx;
                                    f(xi, wi, yi);
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    /// y = conv2d(x, w) + b.
    pub fn forward(&self, x: &[f64], w: &[f64], b: Option<&[f64]>) -> Vec<f64> {
        let out = self.out();
        let hw = out[2] * out[3];
        let mut y = vec![0.0; out.iter().product()];
        if let Some(b) = b {
            for (i, v) in y.iter_mut().enumerate() {
                *v = b[(i / hw) % out[1]];
            }
        }
        self.for_each_tap(|xi, wi, yi| y[yi] += x[xi] * w[wi]);
        y
    }

    /// gx = d(sum gy * y) / dx, by scatter-add over the forward taps.
    pub fn backward(&self, gy: &[f64], w: &[f64]) -> Vec<f64> {
        let mut gx = vec![0.0; self.x.iter().product()];
        self.for_each_tap(|xi, wi, yi| gx[xi] += gy[yi] * w[wi]);
        gx
    }
}

/// y[n, out] = sum_k x[n, k] w[out, k] + b[out].
pub fn linear_forward(
    x: &[f64],
    w: &[f64],
    b: Option<&[f64]>,
    n: usize,
    k: usize,
    out: usize,
) -> Vec<f64> {
    let mut y = vec![0.0; n * out];
    for i in 0..n {
        for o in 0..out {
            let mut s = b.map_or(0.0, |b| b[o]);
            for j in 0..k {
                s += x[i * k + j] * w[o * k + j];
            }
            y[i * out + o] = s;
        }
    }
    y
}

/// gx[n, k] = sum_out gy[n, out] w[out, k].
pub fn linear_backward(gy: &[f64], w: &[f64], n: usize, k: usize, out: usize) -> Vec<f64> {
    let mut gx = vec![0.0; n * k];
    for i in 0..n {
        for o in 0..out {
            for j in 0..k {
                gx[i * k + j] += gy[i * out + o] * w[o * k + j];
            }
        }
    }
    gx
}
