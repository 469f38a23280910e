//! `--gallery FILE.png`: a contact sheet of a few attacked images. One row per
//! image: the clean image, then per eps the perturbation (amplified to the
//! full grey range, mid-grey = unchanged) and the adversarial image as saved;
//! under each tile its prediction and confidence (and the attack that made
//! it). Text is drawn with the public-domain 8x8 glyphs of `font8x8`.

use std::path::Path;

use font8x8::UnicodeFonts;
use image::{Rgb, RgbImage};

use crate::data::write_atomic;
use crate::error::{Error, Result};

/// One tile's caption: a heading and the prediction.
#[derive(Debug, Clone)]
pub struct Caption {
    pub heading: String,
    pub class: String,
    pub prob: f32,
}

/// One attacked image at one eps.
#[derive(Debug, Clone)]
pub struct GalleryAdv {
    /// `eps 8/255` (and the attack of a cascade).
    pub heading: String,
    /// CHW 8-bit pixels as saved.
    pub pixels: Vec<u8>,
    pub class: String,
    pub prob: f32,
}

/// One row of the sheet.
#[derive(Debug, Clone)]
pub struct GalleryRow {
    /// The image's path relative to `--images`.
    pub name: String,
    /// `[C, H, W]` (C is 1 or 3).
    pub shape: [u32; 3],
    /// CHW 8-bit clean pixels (as the model saw them).
    pub clean: Vec<u8>,
    pub class: String,
    pub prob: f32,
    pub adv: Vec<GalleryAdv>,
}

/// Which images `--gallery-images` picks: the first N, or these paths.
#[derive(Debug, Clone, PartialEq)]
pub enum GalleryPick {
    First(usize),
    Paths(Vec<String>),
}

impl GalleryPick {
    /// `6` or `a.png,b/c.png` (paths relative to `--images`).
    pub fn parse(s: &str) -> Result<Self> {
        let s = s.trim();
        if let Ok(n) = s.parse::<usize>() {
            if n == 0 {
                return Err(Error::Usage(
                    "--gallery-images 0: give how many images (e.g. 6) or their paths".into(),
                ));
            }
            return Ok(GalleryPick::First(n));
        }
        let paths: Vec<String> = s
            .split(',')
            .map(|p| p.trim().trim_start_matches("./").to_string())
            .filter(|p| !p.is_empty())
            .collect();
        if paths.is_empty() {
            return Err(Error::Usage(
                "--gallery-images: give how many images (e.g. 6) or their paths".into(),
            ));
        }
        Ok(GalleryPick::Paths(paths))
    }

    /// Whether the image at run position `index` with path `rel` is picked.
    pub fn picks(&self, index: usize, rel: &str) -> bool {
        match self {
            GalleryPick::First(n) => index < *n,
            GalleryPick::Paths(p) => p.iter().any(|x| x == rel),
        }
    }
}

const GLYPH: u32 = 8;
const PAD: u32 = 6;
const BACKGROUND: Rgb<u8> = Rgb([255, 255, 255]);
const INK: Rgb<u8> = Rgb([20, 20, 20]);
const MUTED: Rgb<u8> = Rgb([110, 110, 110]);

fn draw_text(img: &mut RgbImage, x: u32, y: u32, text: &str, max_chars: usize, colour: Rgb<u8>) {
    for (i, ch) in text.chars().take(max_chars).enumerate() {
        let glyph = font8x8::BASIC_FONTS
            .get(ch)
            .or_else(|| font8x8::BASIC_FONTS.get('?'))
            .unwrap_or([0; 8]);
        for (row, bits) in glyph.iter().enumerate() {
            for col in 0..8 {
                if bits & (1 << col) != 0 {
                    let (px, py) = (x + i as u32 * GLYPH + col, y + row as u32);
                    if px < img.width() && py < img.height() {
                        img.put_pixel(px, py, colour);
                    }
                }
            }
        }
    }
}

/// Text cut to `n` characters, with `~` where it was cut.
fn fit(text: &str, n: usize) -> String {
    if text.chars().count() <= n {
        text.to_string()
    } else {
        let mut s: String = text.chars().take(n.saturating_sub(1)).collect();
        s.push('~');
        s
    }
}

/// Pixel (x, y) of a CHW 8-bit image as RGB.
fn rgb(pixels: &[u8], shape: [u32; 3], x: u32, y: u32) -> [u8; 3] {
    let [c, h, w] = shape;
    let at = |ch: u32| pixels[(ch * h * w + y * w + x) as usize];
    if c >= 3 {
        [at(0), at(1), at(2)]
    } else {
        let v = at(0);
        [v, v, v]
    }
}

fn blit(
    img: &mut RgbImage,
    x0: u32,
    y0: u32,
    scale: u32,
    shape: [u32; 3],
    f: impl Fn(u32, u32) -> [u8; 3],
) {
    let [_, h, w] = shape;
    for y in 0..h * scale {
        for x in 0..w * scale {
            img.put_pixel(x0 + x, y0 + y, Rgb(f(x / scale, y / scale)));
        }
    }
}

/// Draw the sheet and write it as PNG (atomically: a failed write leaves no
/// partial file).
pub fn write_gallery(path: &Path, title: &str, rows: &[GalleryRow]) -> Result<()> {
    let Some(first) = rows.first() else {
        return Err(Error::Usage(
            "--gallery: none of the picked images was attacked in this run (check \
             --gallery-images against the paths under --images)"
                .into(),
        ));
    };
    let [_, h, w] = first.shape;
    // Small images (digits) are enlarged so their captions fit under them.
    let scale = (112 / w.max(h)).max(1);
    let (tw, th) = (w * scale, h * scale);
    let chars = (tw / GLYPH) as usize;
    let caption_h = 3 * (GLYPH + 2);
    let cols = 1 + 2 * first.adv.len() as u32;
    let width = PAD + cols * (tw + PAD);
    let title_h = 2 * GLYPH + PAD;
    let row_h = GLYPH + 4 + th + caption_h + PAD;
    let height = PAD + title_h + rows.len() as u32 * row_h;
    let mut img = RgbImage::from_pixel(width, height, BACKGROUND);
    draw_text(
        &mut img,
        PAD,
        PAD,
        title,
        ((width - PAD) / GLYPH) as usize,
        INK,
    );
    for (r, row) in rows.iter().enumerate() {
        if row.shape != first.shape || row.adv.len() != first.adv.len() {
            return Err(Error::Usage(format!(
                "--gallery: {} has another shape than {}",
                row.name, first.name
            )));
        }
        let y0 = PAD + title_h + r as u32 * row_h;
        draw_text(
            &mut img,
            PAD,
            y0,
            &fit(&row.name, ((width - PAD) / GLYPH) as usize),
            usize::MAX,
            MUTED,
        );
        let ty = y0 + GLYPH + 4;
        let caption = |img: &mut RgbImage, x: u32, lines: [&str; 3]| {
            for (i, l) in lines.iter().enumerate() {
                let colour = if i == 0 { MUTED } else { INK };
                draw_text(
                    img,
                    x,
                    ty + th + 3 + i as u32 * (GLYPH + 2),
                    &fit(l, chars),
                    chars,
                    colour,
                );
            }
        };
        blit(&mut img, PAD, ty, scale, row.shape, |x, y| {
            rgb(&row.clean, row.shape, x, y)
        });
        caption(
            &mut img,
            PAD,
            ["clean", &row.class, &format!("{:.1}%", row.prob * 100.0)],
        );
        for (k, adv) in row.adv.iter().enumerate() {
            let xp = PAD + (1 + 2 * k as u32) * (tw + PAD);
            let xa = xp + tw + PAD;
            // The perturbation, amplified so its largest change spans the grey range.
            let n = row.clean.len();
            let m = (0..n)
                .map(|i| (adv.pixels[i] as i32 - row.clean[i] as i32).abs())
                .max()
                .unwrap_or(0)
                .max(1) as f32;
            blit(&mut img, xp, ty, scale, row.shape, |x, y| {
                let a = rgb(&adv.pixels, row.shape, x, y);
                let c = rgb(&row.clean, row.shape, x, y);
                let v = |i: usize| (127.5 + (a[i] as f32 - c[i] as f32) * 127.5 / m).round() as u8;
                [v(0), v(1), v(2)]
            });
            caption(
                &mut img,
                xp,
                [
                    &adv.heading,
                    "change",
                    &format!("x{:.0} (+-{}/255)", 127.5 / m, m as i32),
                ],
            );
            blit(&mut img, xa, ty, scale, row.shape, |x, y| {
                rgb(&adv.pixels, row.shape, x, y)
            });
            caption(
                &mut img,
                xa,
                [
                    &adv.heading,
                    &adv.class,
                    &format!("{:.1}%", adv.prob * 100.0),
                ],
            );
        }
    }
    let mut bytes = Vec::new();
    img.write_to(
        &mut std::io::Cursor::new(&mut bytes),
        image::ImageFormat::Png,
    )
    .map_err(|e| Error::io(path, std::io::Error::other(e.to_string())))?;
    write_atomic(path, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_by_count_or_path() {
        let first = GalleryPick::parse("2").unwrap();
        assert!(first.picks(1, "x.png") && !first.picks(2, "y.png"));
        let paths = GalleryPick::parse("a/b.png, ./c.png").unwrap();
        assert!(paths.picks(9, "c.png") && paths.picks(0, "a/b.png") && !paths.picks(0, "b.png"));
        assert!(GalleryPick::parse("0").is_err());
        assert!(GalleryPick::parse(" , ").is_err());
    }

    #[test]
    fn draws_a_sheet_with_captions() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("g.png");
        let clean = vec![100u8; 28 * 28];
        let mut adv = clean.clone();
        adv[5] = 110;
        let row = GalleryRow {
            name: "3/0.png".into(),
            shape: [1, 28, 28],
            clean,
            class: "3".into(),
            prob: 0.99,
            adv: vec![GalleryAdv {
                heading: "eps 10/255".into(),
                pixels: adv,
                class: "8".into(),
                prob: 0.6,
            }],
        };
        write_gallery(&path, "test", &[row.clone(), row]).unwrap();
        let img = image::open(&path).unwrap().to_rgb8();
        // three tiles of 112 px (28 x 4) and their gaps
        assert_eq!(img.width(), PAD + 3 * (112 + PAD));
        // the amplified change is white where the pixel rose, grey elsewhere
        let ty = PAD + 2 * GLYPH + PAD + GLYPH + 4;
        let xp = PAD + 112 + PAD;
        assert_eq!(img.get_pixel(xp + 5 * 4, ty)[0], 255);
        assert_eq!(img.get_pixel(xp + 6 * 4, ty)[0], 128);
        // some ink in the caption area
        let ink = (0..img.width())
            .filter(|&x| img.get_pixel(x, ty + 112 + 5)[0] < 128)
            .count();
        assert!(ink > 0);
        assert!(write_gallery(&path, "t", &[]).is_err());
    }
}
