//! Decoding and preprocessing images, and writing PNGs atomically.

use std::path::Path;

use super::resample::resize_window;
pub use super::resample::Filter;
use image::{DynamicImage, GenericImageView, ImageEncoder};

use crate::error::{Error, Result};

/// How images become model inputs: resize the shorter side, center-crop to the
/// input size, convert to the model's channel count. Pixels end up in [0, 1].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Preprocessor {
    pub channels: u32,
    pub height: u32,
    pub width: u32,
    /// Target of the shorter side before cropping; `None` resizes straight to the crop.
    pub resize: Option<u32>,
    /// The resampling filter (the model's `preprocess.interpolation`).
    pub filter: Filter,
}

impl Preprocessor {
    pub fn numel(&self) -> usize {
        (self.channels * self.height * self.width) as usize
    }
}

fn decode(path: &Path) -> Result<DynamicImage> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    decode_bytes(&bytes, path)
}

/// Decode an image file's bytes (format guessed from the content); `name`
/// names it in errors.
pub fn decode_bytes(bytes: &[u8], name: &Path) -> Result<DynamicImage> {
    image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| Error::io(name, e))?
        .decode()
        .map_err(|e| Error::Usage(format!("{}: cannot decode image: {e}", name.display())))
}

/// Python's `int(round(x / 2.0))` for a non-negative integer `x`: halves go to
/// the even neighbour (torchvision's center-crop offset).
fn half_to_even(x: u32) -> u32 {
    let k = x / 2;
    if x % 2 == 1 && k % 2 == 1 {
        k + 1
    } else {
        k
    }
}

/// The resized size before the center crop, as torchvision's `Resize(size)`
/// computes it: the shorter side becomes `size`, the longer `int(size * long /
/// short)`. When that would not cover the crop (a resize smaller than the crop,
/// or a crop of another aspect ratio), the image is scaled up until it does
/// (torchvision would pad with zeros instead).
fn resized_size(w: u32, h: u32, p: &Preprocessor) -> (u32, u32) {
    let size = p.resize.unwrap_or(p.width.max(p.height));
    let (short, long) = (w.min(h) as f64, w.max(h) as f64);
    let new_long = (size as f64 * long / short) as u32;
    let (nw, nh) = if w <= h {
        (size, new_long)
    } else {
        (new_long, size)
    };
    if nw >= p.width && nh >= p.height {
        return (nw, nh);
    }
    let scale = (p.width as f64 / w as f64).max(p.height as f64 / h as f64);
    (
        ((w as f64 * scale).ceil() as u32).max(p.width),
        ((h as f64 * scale).ceil() as u32).max(p.height),
    )
}

/// Resize (shorter side) and center-crop as torchvision's ImageNet transform
/// does on PIL images (antialiased bilinear, PIL's geometry and crop offsets),
/// unless the image already has the input size. Returns 8-bit pixels, RGB or
/// (for a grey source) one channel, row-major.
fn fit(img: DynamicImage, p: &Preprocessor) -> (Vec<u8>, u32) {
    let (w, h) = img.dimensions();
    let (channels, pixels) = match img {
        DynamicImage::ImageLuma8(g) => (1, g.into_raw()),
        other => (3, other.into_rgb8().into_raw()),
    };
    if (w, h) == (p.width, p.height) {
        return (pixels, channels);
    }
    let (nw, nh) = resized_size(w, h, p);
    let (left, top) = (half_to_even(nw - p.width), half_to_even(nh - p.height));
    let out = resize_window(
        p.filter,
        &pixels,
        (w, h),
        channels as usize,
        (nw, nh),
        (left, top),
        (p.width, p.height),
    );
    (out, channels)
}

/// Decode and preprocess one image into CHW f32 values in [0, 1].
pub fn load_image(path: &Path, p: &Preprocessor) -> Result<Vec<f32>> {
    to_input(decode(path)?, p)
}

/// Preprocess a decoded image (resize, crop, channels) into CHW f32 values in [0, 1].
pub fn to_input(img: DynamicImage, p: &Preprocessor) -> Result<Vec<f32>> {
    let (px, channels) = fit(img, p);
    let plane = (p.width * p.height) as usize;
    let mut out = vec![0f32; p.numel()];
    match (p.channels, channels) {
        (1, 1) => {
            for (o, &v) in out.iter_mut().zip(&px) {
                *o = v as f32 / 255.0;
            }
        }
        (1, _) => {
            // Luma by ITU-R 601 (what PIL's convert("L") does), rounded to 8 bits.
            for (o, rgb) in out.iter_mut().zip(px.chunks_exact(3)) {
                let (r, g, b) = (rgb[0] as u32, rgb[1] as u32, rgb[2] as u32);
                *o = ((r * 299 + g * 587 + b * 114 + 500) / 1000) as f32 / 255.0;
            }
        }
        (3, 1) => {
            for c in 0..3 {
                for (o, &v) in out[c * plane..(c + 1) * plane].iter_mut().zip(&px) {
                    *o = v as f32 / 255.0;
                }
            }
        }
        (3, _) => {
            let (r, rest) = out.split_at_mut(plane);
            let (g, b) = rest.split_at_mut(plane);
            for (i, rgb) in px.chunks_exact(3).enumerate() {
                r[i] = rgb[0] as f32 / 255.0;
                g[i] = rgb[1] as f32 / 255.0;
                b[i] = rgb[2] as f32 / 255.0;
            }
        }
        (c, _) => {
            return Err(Error::Usage(format!(
                "models with {c} input channels cannot take images (1 or 3 channels)"
            )))
        }
    }
    Ok(out)
}

/// How hard PNG encoding compresses (`--png-compression`). On 224x224 photos
/// (`BENCHMARKS.md`): `fast` encodes about 3,100 images/s per core at 64 KB,
/// `default` (zlib level 6) 100/s at 62 KB, `best` 36/s at 61 KB.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PngCompression {
    #[default]
    Fast,
    Default,
    Best,
}

impl PngCompression {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "fast" => Some(PngCompression::Fast),
            "default" => Some(PngCompression::Default),
            "best" => Some(PngCompression::Best),
            _ => None,
        }
    }
}

/// Encode CHW u8 pixels as a PNG file's bytes (fast compression).
pub fn encode_png(chw: &[u8], channels: u32, height: u32, width: u32) -> Result<Vec<u8>> {
    encode_png_with(chw, channels, height, width, PngCompression::Fast)
}

/// Encode CHW u8 pixels as a PNG file's bytes, compressed as asked.
pub fn encode_png_with(
    chw: &[u8],
    channels: u32,
    height: u32,
    width: u32,
    level: PngCompression,
) -> Result<Vec<u8>> {
    let plane = (height * width) as usize;
    let color = match channels {
        1 => image::ExtendedColorType::L8,
        3 => image::ExtendedColorType::Rgb8,
        c => return Err(Error::Usage(format!("cannot write a {c}-channel PNG"))),
    };
    let mut hwc = vec![0u8; chw.len()];
    for c in 0..channels as usize {
        for i in 0..plane {
            hwc[i * channels as usize + c] = chw[c * plane + i];
        }
    }
    let mut out = Vec::with_capacity(chw.len() / 2 + 1024);
    use image::codecs::png::{CompressionType, FilterType, PngEncoder};
    let compression = match level {
        PngCompression::Fast => CompressionType::Fast,
        PngCompression::Default => CompressionType::Default,
        PngCompression::Best => CompressionType::Best,
    };
    PngEncoder::new_with_quality(&mut out, compression, FilterType::Adaptive)
        .write_image(&hwc, width, height, color)
        .map_err(|e| Error::Usage(format!("cannot encode a PNG: {e}")))?;
    Ok(out)
}

/// This process's mark in temporary file names: `HOST-PID` (dots in the host
/// name replaced), so that a later run can tell a dead process's leftovers
/// (same host, PID gone) from files another live worker is writing.
pub fn tmp_tag() -> String {
    static TAG: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TAG.get_or_init(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .or_else(|| std::env::var("HOSTNAME").ok())
            .map(|h| h.trim().replace(['.', '/', '-'], "_"))
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "host".into());
        format!("{host}-{}", std::process::id())
    })
    .clone()
}

/// `.NAME.HOST-PID.tmp` next to `path`.
pub fn tmp_path(path: &Path) -> std::path::PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.{}.tmp", tmp_tag()))
}

/// Write `bytes` to `path` through a temporary name in the same folder and a
/// rename, so a crash never leaves a half-written file; creates the folder.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    let tmp = tmp_path(path);
    if let Err(e) = std::fs::write(&tmp, bytes) {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io(&tmp, e));
    }
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))?;
    Ok(())
}

/// Write CHW u8 pixels as a PNG, to a temporary name first and then renamed, so
/// a crash never leaves a half-written file.
pub fn write_png_atomic(
    path: &Path,
    chw: &[u8],
    channels: u32,
    height: u32,
    width: u32,
) -> Result<()> {
    write_atomic(path, &encode_png(chw, channels, height, width)?)
}
