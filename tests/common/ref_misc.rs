//! CPU reference (f64) for pooling, add/mul, concat, affine, softmax and loss.
//! Written from PyTorch's documented semantics, independently of the kernels.
#![allow(dead_code)]

use advex::ops::Pool2dParams;
use advex::Shape;

fn idx(s: Shape, n: usize, c: usize, h: usize, w: usize) -> usize {
    ((n * s.c as usize + c) * s.h as usize + h) * s.w as usize + w
}

/// Input positions (iy, ix) of window (oy, ox), in row-major window order,
/// padding positions left out.
fn window(p: &Pool2dParams, xs: Shape, oy: usize, ox: usize) -> Vec<(usize, usize)> {
    let mut v = Vec::new();
    for ky in 0..p.kernel[0] as i64 {
        let iy = oy as i64 * p.stride[0] as i64 - p.padding[0] as i64 + ky * p.dilation[0] as i64;
        if iy < 0 || iy >= xs.h as i64 {
            continue;
        }
        for kx in 0..p.kernel[1] as i64 {
            let ix =
                ox as i64 * p.stride[1] as i64 - p.padding[1] as i64 + kx * p.dilation[1] as i64;
            if ix < 0 || ix >= xs.w as i64 {
                continue;
            }
            v.push((iy as usize, ix as usize));
        }
    }
    v
}

/// Max pooling: output values and, per output, the flat input index of the
/// first maximum in window order.
pub fn max_pool(x: &[f64], xs: Shape, p: &Pool2dParams) -> (Vec<f64>, Vec<usize>, Shape) {
    let ys = p.out_shape(xs).unwrap();
    let mut y = vec![0.0; ys.numel() as usize];
    let mut arg = vec![usize::MAX; ys.numel() as usize];
    for n in 0..xs.n as usize {
        for c in 0..xs.c as usize {
            for oy in 0..ys.h as usize {
                for ox in 0..ys.w as usize {
                    let o = idx(ys, n, c, oy, ox);
                    let mut best = f64::NEG_INFINITY;
                    let mut at = usize::MAX;
                    for (iy, ix) in window(p, xs, oy, ox) {
                        let i = idx(xs, n, c, iy, ix);
                        if at == usize::MAX || x[i] > best {
                            best = x[i];
                            at = i;
                        }
                    }
                    y[o] = best;
                    arg[o] = at;
                }
            }
        }
    }
    (y, arg, ys)
}

/// Gradient of max pooling: scatter gy onto each window's first maximum.
pub fn max_pool_backward(x: &[f64], xs: Shape, p: &Pool2dParams, gy: &[f64]) -> Vec<f64> {
    let (_, arg, _) = max_pool(x, xs, p);
    let mut gx = vec![0.0; x.len()];
    for (o, &a) in arg.iter().enumerate() {
        if a != usize::MAX {
            gx[a] += gy[o];
        }
    }
    gx
}

/// Average pooling window (oy, ox): the input positions summed and the divisor.
/// PyTorch clips the window end to input + padding for count_include_pad.
fn avg_window(p: &Pool2dParams, xs: Shape, oy: usize, ox: usize) -> (Vec<(usize, usize)>, f64) {
    let y0 = oy as i64 * p.stride[0] as i64 - p.padding[0] as i64;
    let x0 = ox as i64 * p.stride[1] as i64 - p.padding[1] as i64;
    let y1 = (y0 + p.kernel[0] as i64).min(xs.h as i64 + p.padding[2] as i64);
    let x1 = (x0 + p.kernel[1] as i64).min(xs.w as i64 + p.padding[3] as i64);
    let mut cells = Vec::new();
    for iy in y0.max(0)..y1.min(xs.h as i64) {
        for ix in x0.max(0)..x1.min(xs.w as i64) {
            cells.push((iy as usize, ix as usize));
        }
    }
    let div = if p.count_include_pad {
        ((y1 - y0) * (x1 - x0)) as f64
    } else {
        cells.len() as f64
    };
    (cells, div)
}

pub fn avg_pool(x: &[f64], xs: Shape, p: &Pool2dParams) -> (Vec<f64>, Shape) {
    let ys = p.out_shape(xs).unwrap();
    let mut y = vec![0.0; ys.numel() as usize];
    for n in 0..xs.n as usize {
        for c in 0..xs.c as usize {
            for oy in 0..ys.h as usize {
                for ox in 0..ys.w as usize {
                    let (cells, div) = avg_window(p, xs, oy, ox);
                    if cells.is_empty() {
                        continue;
                    }
                    let s: f64 = cells.iter().map(|&(h, w)| x[idx(xs, n, c, h, w)]).sum();
                    y[idx(ys, n, c, oy, ox)] = s / div;
                }
            }
        }
    }
    (y, ys)
}

pub fn avg_pool_backward(gy: &[f64], xs: Shape, p: &Pool2dParams) -> Vec<f64> {
    let ys = p.out_shape(xs).unwrap();
    let mut gx = vec![0.0; xs.numel() as usize];
    for n in 0..xs.n as usize {
        for c in 0..xs.c as usize {
            for oy in 0..ys.h as usize {
                for ox in 0..ys.w as usize {
                    let (cells, div) = avg_window(p, xs, oy, ox);
                    let g = gy[idx(ys, n, c, oy, ox)] / div;
                    for (h, w) in cells {
                        gx[idx(xs, n, c, h, w)] += g;
                    }
                }
            }
        }
    }
    gx
}

pub fn global_avg(x: &[f64], xs: Shape) -> Vec<f64> {
    let hw = (xs.h * xs.w) as usize;
    x.chunks(hw)
        .map(|pl| pl.iter().sum::<f64>() / hw as f64)
        .collect()
}

pub fn global_avg_backward(gy: &[f64], xs: Shape) -> Vec<f64> {
    let hw = (xs.h * xs.w) as usize;
    gy.iter()
        .flat_map(|&g| std::iter::repeat_n(g / hw as f64, hw))
        .collect()
}

/// Broadcast shape (each dim equal or 1 in one operand).
pub fn broadcast(a: Shape, b: Shape) -> Shape {
    let (da, db) = (a.dims(), b.dims());
    let mut o = [0u32; 4];
    for d in 0..4 {
        assert!(da[d] == db[d] || da[d] == 1 || db[d] == 1);
        o[d] = da[d].max(db[d]);
    }
    Shape::new(o[0], o[1], o[2], o[3])
}

/// Flat index into `s` of output coordinate `co`, broadcasting dims of size 1.
fn bidx(s: Shape, co: [usize; 4]) -> usize {
    let d = s.dims();
    let c: Vec<usize> = (0..4).map(|i| if d[i] == 1 { 0 } else { co[i] }).collect();
    idx(s, c[0], c[1], c[2], c[3])
}

fn each(s: Shape) -> impl Iterator<Item = [usize; 4]> {
    let [n, c, h, w] = s.dims().map(|v| v as usize);
    (0..n).flat_map(move |a| {
        (0..c).flat_map(move |b| (0..h).flat_map(move |d| (0..w).map(move |e| [a, b, d, e])))
    })
}

/// y = a + b or a * b with broadcasting.
pub fn binary(mul: bool, a: &[f64], sa: Shape, b: &[f64], sb: Shape) -> (Vec<f64>, Shape) {
    let so = broadcast(sa, sb);
    let y = each(so)
        .map(|co| {
            let (va, vb) = (a[bidx(sa, co)], b[bidx(sb, co)]);
            if mul {
                va * vb
            } else {
                va + vb
            }
        })
        .collect();
    (y, so)
}

/// (ga, gb): gradients of both operands, summed over broadcast dims.
pub fn binary_backward(
    mul: bool,
    a: &[f64],
    sa: Shape,
    b: &[f64],
    sb: Shape,
    gy: &[f64],
) -> (Vec<f64>, Vec<f64>) {
    let so = broadcast(sa, sb);
    let mut ga = vec![0.0; a.len()];
    let mut gb = vec![0.0; b.len()];
    for (o, co) in each(so).enumerate() {
        let (ia, ib) = (bidx(sa, co), bidx(sb, co));
        if mul {
            ga[ia] += gy[o] * b[ib];
            gb[ib] += gy[o] * a[ia];
        } else {
            ga[ia] += gy[o];
            gb[ib] += gy[o];
        }
    }
    (ga, gb)
}

/// Channel concatenation.
pub fn concat(xs: &[(&[f64], Shape)]) -> (Vec<f64>, Shape) {
    let s0 = xs[0].1;
    let c: u32 = xs.iter().map(|(_, s)| s.c).sum();
    let so = Shape::new(s0.n, c, s0.h, s0.w);
    let mut y = Vec::with_capacity(so.numel() as usize);
    for n in 0..s0.n as usize {
        for (x, s) in xs {
            let item = s.item() as usize;
            y.extend_from_slice(&x[n * item..(n + 1) * item]);
        }
    }
    (y, so)
}

/// The inverse of [`concat`]: slices of `gy` per part.
pub fn concat_backward(gy: &[f64], parts: &[Shape]) -> Vec<Vec<f64>> {
    let mut out: Vec<Vec<f64>> = parts.iter().map(|_| Vec::new()).collect();
    let mut pos = 0;
    for _ in 0..parts[0].n {
        for (k, s) in parts.iter().enumerate() {
            let item = s.item() as usize;
            out[k].extend_from_slice(&gy[pos..pos + item]);
            pos += item;
        }
    }
    out
}

pub fn affine(x: &[f64], s: Shape, scale: &[f64], shift: &[f64]) -> Vec<f64> {
    let hw = (s.h * s.w) as usize;
    x.iter()
        .enumerate()
        .map(|(i, &v)| {
            let c = (i / hw) % s.c as usize;
            v * scale[c] + shift[c]
        })
        .collect()
}

pub fn affine_backward(gy: &[f64], s: Shape, scale: &[f64]) -> Vec<f64> {
    affine(gy, s, scale, &vec![0.0; scale.len()])
}

/// Rows of channel values: (row index list) for each (n, h, w).
fn rows(s: Shape) -> Vec<Vec<usize>> {
    let mut r = Vec::new();
    for n in 0..s.n as usize {
        for h in 0..s.h as usize {
            for w in 0..s.w as usize {
                r.push((0..s.c as usize).map(|c| idx(s, n, c, h, w)).collect());
            }
        }
    }
    r
}

/// Softmax over the channel axis.
pub fn softmax(x: &[f64], s: Shape) -> Vec<f64> {
    let mut y = vec![0.0; x.len()];
    for row in rows(s) {
        let m = row.iter().map(|&i| x[i]).fold(f64::NEG_INFINITY, f64::max);
        let z: f64 = row.iter().map(|&i| (x[i] - m).exp()).sum();
        for &i in &row {
            y[i] = (x[i] - m).exp() / z;
        }
    }
    y
}

/// Layer normalisation over channels per position (biased variance).
pub fn layer_norm(x: &[f64], s: Shape, w: &[f64], b: &[f64], eps: f64) -> Vec<f64> {
    let mut y = vec![0.0; x.len()];
    for row in rows(s) {
        let k = row.len() as f64;
        let m = row.iter().map(|&i| x[i]).sum::<f64>() / k;
        let v = row.iter().map(|&i| (x[i] - m) * (x[i] - m)).sum::<f64>() / k;
        let r = 1.0 / (v + eps).sqrt();
        for (c, &i) in row.iter().enumerate() {
            y[i] = (x[i] - m) * r * w[c] + b[c];
        }
    }
    y
}

/// The gradient of [`layer_norm`] to its input, written out from the chain
/// rule term by term (not the kernel's closed form).
pub fn layer_norm_backward(x: &[f64], gy: &[f64], s: Shape, w: &[f64], eps: f64) -> Vec<f64> {
    let mut gx = vec![0.0; x.len()];
    for row in rows(s) {
        let k = row.len();
        let kf = k as f64;
        let m = row.iter().map(|&i| x[i]).sum::<f64>() / kf;
        let v = row.iter().map(|&i| (x[i] - m) * (x[i] - m)).sum::<f64>() / kf;
        let r = 1.0 / (v + eps).sqrt();
        // dy_c / dx_j = w_c r (delta_cj - 1/k - (x_c - m)(x_j - m) r^2 / k)
        for (j, &ij) in row.iter().enumerate() {
            let mut acc = 0.0;
            for (c, &ic) in row.iter().enumerate() {
                let delta = if c == j { 1.0 } else { 0.0 };
                let d = w[c] * r * (delta - 1.0 / kf - (x[ic] - m) * (x[ij] - m) * r * r / kf);
                acc += gy[ic] * d;
            }
            gx[ij] = acc;
        }
    }
    gx
}

pub fn softmax_backward(y: &[f64], gy: &[f64], s: Shape) -> Vec<f64> {
    let mut gx = vec![0.0; y.len()];
    for row in rows(s) {
        let d: f64 = row.iter().map(|&i| y[i] * gy[i]).sum();
        for &i in &row {
            gx[i] = y[i] * (gy[i] - d);
        }
    }
    gx
}

/// (per-sample loss, gradient) of softmax cross-entropy on `[n, k, 1, 1]` logits.
pub fn cross_entropy(
    z: &[f64],
    n: usize,
    k: usize,
    labels: &[u32],
    sign: f64,
) -> (Vec<f64>, Vec<f64>) {
    let mut loss = vec![0.0; n];
    let mut grad = vec![0.0; n * k];
    for r in 0..n {
        let row = &z[r * k..(r + 1) * k];
        let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let s: f64 = row.iter().map(|v| (v - m).exp()).sum();
        let lse = m + s.ln();
        let l = labels[r] as usize;
        loss[r] = lse - row[l];
        for j in 0..k {
            let onehot = if j == l { 1.0 } else { 0.0 };
            grad[r * k + j] = sign * ((row[j] - m).exp() / s - onehot);
        }
    }
    (loss, grad)
}

/// Per row: (first argmax, its probability, the label's probability).
pub fn argmax_prob(z: &[f64], n: usize, k: usize, labels: &[u32]) -> Vec<(usize, f64, f64)> {
    (0..n)
        .map(|r| {
            let row = &z[r * k..(r + 1) * k];
            let mut best = 0;
            for j in 1..k {
                if row[j] > row[best] {
                    best = j;
                }
            }
            let m = row[best];
            let s: f64 = row.iter().map(|v| (v - m).exp()).sum();
            let l = labels[r] as usize;
            (best, 1.0 / s, (row[l] - m).exp() / s)
        })
        .collect()
}
