//! Decoding and preprocessing images, and writing PNGs atomically.

use std::path::Path;

use image::imageops::FilterType;
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

/// Resize (shorter side) and center-crop, unless the image already has the input size.
fn fit(img: DynamicImage, p: &Preprocessor) -> DynamicImage {
    let (w, h) = img.dimensions();
    if (w, h) == (p.width, p.height) {
        return img;
    }
    // Scale so both sides cover the crop; the shorter side goes to `resize` when given.
    let short = w.min(h) as f64;
    let target = p.resize.unwrap_or(p.width.max(p.height)) as f64;
    let mut scale = target / short;
    scale = scale
        .max(p.width as f64 / w as f64)
        .max(p.height as f64 / h as f64);
    let nw = ((w as f64 * scale).round() as u32).max(p.width);
    let nh = ((h as f64 * scale).round() as u32).max(p.height);
    let resized = img.resize_exact(nw, nh, FilterType::Triangle);
    let x = (nw - p.width) / 2;
    let y = (nh - p.height) / 2;
    resized.crop_imm(x, y, p.width, p.height)
}

/// Decode and preprocess one image into CHW f32 values in [0, 1].
pub fn load_image(path: &Path, p: &Preprocessor) -> Result<Vec<f32>> {
    to_input(decode(path)?, p)
}

/// Preprocess a decoded image (resize, crop, channels) into CHW f32 values in [0, 1].
pub fn to_input(img: DynamicImage, p: &Preprocessor) -> Result<Vec<f32>> {
    let img = fit(img, p);
    let (w, h) = (p.width as usize, p.height as usize);
    let mut out = vec![0f32; p.numel()];
    match p.channels {
        1 => {
            // Luma by ITU-R 601 (what PIL's convert("L") does), rounded to 8 bits.
            let plane = match img {
                DynamicImage::ImageLuma8(g) => g.into_raw(),
                other => other
                    .to_rgb8()
                    .pixels()
                    .map(|px| {
                        let [r, g, b] = px.0;
                        ((r as u32 * 299 + g as u32 * 587 + b as u32 * 114 + 500) / 1000) as u8
                    })
                    .collect(),
            };
            for (o, v) in out.iter_mut().zip(plane) {
                *o = v as f32 / 255.0;
            }
        }
        3 => {
            let rgb = img.to_rgb8();
            for (i, px) in rgb.pixels().enumerate() {
                for c in 0..3 {
                    out[c * w * h + i] = px.0[c] as f32 / 255.0;
                }
            }
        }
        c => {
            return Err(Error::Usage(format!(
                "models with {c} input channels cannot take images (1 or 3 channels)"
            )))
        }
    }
    Ok(out)
}

/// Encode CHW u8 pixels as a PNG file's bytes.
pub fn encode_png(chw: &[u8], channels: u32, height: u32, width: u32) -> Result<Vec<u8>> {
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
    image::codecs::png::PngEncoder::new(&mut out)
        .write_image(&hwc, width, height, color)
        .map_err(|e| Error::Usage(format!("cannot encode a PNG: {e}")))?;
    Ok(out)
}

/// Write `bytes` to `path` through a temporary name in the same folder and a
/// rename, so a crash never leaves a half-written file; creates the folder.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{file_name}.{}.tmp", std::process::id()));
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
