//! Resizing of 8-bit images bit-exact with Pillow's `Image.resize(size,
//! filter)` (what torchvision's `Resize` runs on PIL images) for the bilinear
//! (default), bicubic and Lanczos filters, and nearest neighbour, restricted
//! to a crop window so that only the pixels kept by the center crop are
//! computed.
//!
//! Pillow (`libImaging/Resample.c`) resizes in two separable passes,
//! horizontal then vertical, each rounded to 8 bits. An output index `i` of an
//! axis scaled by `s = in / out` is centred on `(i + 0.5) * s`; the triangle
//! filter is widened by `max(s, 1)` (antialiasing), its taps normalised to sum
//! to one and then turned into fixed point with 22 fractional bits. Values are
//! accumulated from `1 << 21` (rounding) and clamped to 0..=255 after the shift.
//! Each output value depends only on its own index, so computing a window of
//! the output gives exactly the window of the full resize.

/// Fractional bits of the fixed-point taps (Pillow's `PRECISION_BITS`).
const BITS: u32 = 32 - 8 - 2;

/// The resampling filter (a model file's `preprocess.interpolation`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Filter {
    Nearest,
    #[default]
    Bilinear,
    Bicubic,
    Lanczos,
}

impl Filter {
    /// From [`crate::model::INTERPOLATIONS`]; anything else is bilinear.
    pub fn from_name(name: &str) -> Self {
        match name {
            "nearest" => Filter::Nearest,
            "bicubic" => Filter::Bicubic,
            "lanczos" => Filter::Lanczos,
            _ => Filter::Bilinear,
        }
    }

    /// Pillow's support radius and kernel (`Resample.c`).
    fn support(self) -> f64 {
        match self {
            Filter::Nearest | Filter::Bilinear => 1.0,
            Filter::Bicubic => 2.0,
            Filter::Lanczos => 3.0,
        }
    }

    fn weight(self, x: f64) -> f64 {
        let sinc = |x: f64| {
            if x == 0.0 {
                1.0
            } else {
                let x = x * std::f64::consts::PI;
                x.sin() / x
            }
        };
        match self {
            Filter::Nearest | Filter::Bilinear => (1.0 - x.abs()).max(0.0),
            Filter::Bicubic => {
                let a = -0.5;
                let x = x.abs();
                if x < 1.0 {
                    ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * a
                } else {
                    0.0
                }
            }
            Filter::Lanczos => {
                if (-3.0..3.0).contains(&x) {
                    sinc(x) * sinc(x / 3.0)
                } else {
                    0.0
                }
            }
        }
    }
}

/// One axis: for each output index, the first input index and the taps.
struct Taps {
    first: Vec<usize>,
    count: Vec<usize>,
    /// `stride` taps per output index (unused ones are zero).
    weights: Vec<i32>,
    stride: usize,
}

impl Taps {
    /// Pillow's `precompute_coeffs` (triangle filter, support 1) and
    /// `normalize_coeffs_8bpc`, for output indices `from..from + len`.
    fn new(filter: Filter, in_size: usize, out_size: usize, from: usize, len: usize) -> Self {
        let scale = in_size as f64 / out_size as f64;
        let filterscale = scale.max(1.0);
        let support = filter.support() * filterscale;
        let stride = support.ceil() as usize * 2 + 1;
        let mut t = Taps {
            first: Vec::with_capacity(len),
            count: Vec::with_capacity(len),
            weights: vec![0; len * stride],
            stride,
        };
        let mut k = vec![0f64; stride];
        for (j, xx) in (from..from + len).enumerate() {
            let center = (xx as f64 + 0.5) * scale;
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
            let n = xmax.saturating_sub(xmin);
            let mut sum = 0.0;
            for (x, kx) in k.iter_mut().enumerate().take(n) {
                *kx = filter.weight(((x + xmin) as f64 - center + 0.5) * (1.0 / filterscale));
                sum += *kx;
            }
            for (x, kx) in k.iter().enumerate().take(n) {
                let v = if sum != 0.0 { kx / sum } else { *kx };
                let fixed = v * (1u32 << BITS) as f64;
                t.weights[j * stride + x] = if v < 0.0 {
                    (fixed - 0.5) as i32
                } else {
                    (fixed + 0.5) as i32
                };
            }
            t.first.push(xmin);
            t.count.push(n);
        }
        t
    }
}

#[inline]
fn clip8(acc: i32) -> u8 {
    (acc >> BITS).clamp(0, 255) as u8
}

/// Resize `src` (`w` x `h`, `channels` interleaved 8-bit values per pixel, 1 or
/// 3) to `nw` x `nh`, and return the window of `cw` x `ch` pixels at
/// (`left`, `top`) of the result, row-major and interleaved.
pub fn resize_window(
    filter: Filter,
    src: &[u8],
    (w, h): (u32, u32),
    channels: usize,
    (nw, nh): (u32, u32),
    (left, top): (u32, u32),
    (cw, ch): (u32, u32),
) -> Vec<u8> {
    let (w, h, nw, nh) = (w as usize, h as usize, nw as usize, nh as usize);
    let (left, top, cw, ch) = (left as usize, top as usize, cw as usize, ch as usize);
    debug_assert!(left + cw <= nw && top + ch <= nh && src.len() >= w * h * channels);
    if filter == Filter::Nearest {
        return nearest_window(src, (w, h), channels, (nw, nh), (left, top), (cw, ch));
    }
    let cols = Taps::new(filter, w, nw, left, cw);
    let rows = Taps::new(filter, h, nh, top, ch);
    // The source rows the window's vertical taps read.
    let y0 = rows.first.first().copied().unwrap_or(0);
    let y1 = (0..ch)
        .map(|j| rows.first[j] + rows.count[j])
        .max()
        .unwrap_or(y0);

    // Horizontal pass over those rows, only for the window's columns.
    let row_out = cw * channels;
    let mut tmp = vec![0u8; (y1 - y0) * row_out];
    let round = 1i32 << (BITS - 1);
    for (y, out) in (y0..y1).zip(tmp.chunks_exact_mut(row_out)) {
        let line = &src[y * w * channels..(y + 1) * w * channels];
        for j in 0..cw {
            let k = &cols.weights[j * cols.stride..j * cols.stride + cols.count[j]];
            let px = &line[cols.first[j] * channels..];
            if channels == 3 {
                let (mut a, mut b, mut c) = (round, round, round);
                for (t, &kt) in k.iter().enumerate() {
                    a += px[3 * t] as i32 * kt;
                    b += px[3 * t + 1] as i32 * kt;
                    c += px[3 * t + 2] as i32 * kt;
                }
                out[3 * j] = clip8(a);
                out[3 * j + 1] = clip8(b);
                out[3 * j + 2] = clip8(c);
            } else {
                let mut a = round;
                for (t, &kt) in k.iter().enumerate() {
                    a += px[t] as i32 * kt;
                }
                out[j] = clip8(a);
            }
        }
    }

    // Vertical pass: each output row from its source rows of `tmp`.
    let mut out = vec![0u8; ch * row_out];
    let mut acc = vec![0i32; row_out];
    for (j, dst) in out.chunks_exact_mut(row_out).enumerate() {
        acc.fill(round);
        let k = &rows.weights[j * rows.stride..j * rows.stride + rows.count[j]];
        for (t, &kt) in k.iter().enumerate() {
            let r = rows.first[j] + t - y0;
            for (a, &v) in acc.iter_mut().zip(&tmp[r * row_out..(r + 1) * row_out]) {
                *a += v as i32 * kt;
            }
        }
        for (d, &a) in dst.iter_mut().zip(&acc) {
            *d = clip8(a);
        }
    }
    out
}

/// Pillow's nearest-neighbour resize (an affine transform that samples the
/// source pixel under each output pixel's centre: `floor((i + 0.5) * in / out)`).
fn nearest_window(
    src: &[u8],
    (w, h): (usize, usize),
    channels: usize,
    (nw, nh): (usize, usize),
    (left, top): (usize, usize),
    (cw, ch): (usize, usize),
) -> Vec<u8> {
    let map = |i: usize, n: usize, size: usize| -> usize {
        (((i as f64 + 0.5) * (size as f64 / n as f64)) as usize).min(size - 1)
    };
    let xs: Vec<usize> = (left..left + cw).map(|x| map(x, nw, w)).collect();
    let mut out = Vec::with_capacity(cw * ch * channels);
    for y in top..top + ch {
        let sy = map(y, nh, h);
        let line = &src[sy * w * channels..(sy + 1) * w * channels];
        for &sx in &xs {
            out.extend_from_slice(&line[sx * channels..(sx + 1) * channels]);
        }
    }
    out
}
