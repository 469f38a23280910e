//! Writes a folder of ImageNet-like JPEGs for the host-pipeline benchmark
//! (`advex bench --pipeline DIR`), made from the bundled photos in
//! `examples/photos/`: each output is one photo, cropped, mirrored and rescaled
//! differently (deterministically from its index) to the requested size, saved
//! as a baseline JPEG. The JPEGs are not committed; this program is.
//!
//! ```sh
//! cargo run --release --example make_jpegs -- /tmp/jpegs            # 2000 x 500x375, quality 90
//! cargo run --release --example make_jpegs -- /tmp/jpegs 10000 640x480 85
//! ```

use std::path::{Path, PathBuf};

use image::imageops::FilterType;
use image::{DynamicImage, GenericImageView};

fn usage() -> ! {
    eprintln!("usage: make_jpegs OUT_DIR [COUNT (2000)] [WxH (500x375)] [QUALITY (90)]");
    std::process::exit(1)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let out = PathBuf::from(args.first().unwrap_or_else(|| usage()));
    let count: usize = args
        .get(1)
        .map_or(Ok(2000), |s| s.parse())
        .unwrap_or_else(|_| usage());
    let (w, h) = match args.get(2) {
        None => (500, 375),
        Some(s) => s
            .split_once('x')
            .and_then(|(a, b)| Some((a.parse::<u32>().ok()?, b.parse::<u32>().ok()?)))
            .filter(|&(a, b)| a >= 16 && b >= 16)
            .unwrap_or_else(|| usage()),
    };
    let quality: u8 = args
        .get(3)
        .map_or(Ok(90), |s| s.parse())
        .ok()
        .filter(|q| (1..=100).contains(q))
        .unwrap_or_else(|| usage());

    let photos_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/photos");
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&photos_dir)
        .unwrap_or_else(|e| panic!("{}: {e}", photos_dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "png"))
        .collect();
    paths.sort();
    let photos: Vec<DynamicImage> = paths
        .iter()
        .map(|p| image::open(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
        .map(|i| DynamicImage::ImageRgb8(i.to_rgb8()))
        .collect();
    std::fs::create_dir_all(&out).unwrap_or_else(|e| panic!("{}: {e}", out.display()));

    let mut bytes = 0u64;
    for i in 0..count {
        let photo = &photos[i % photos.len()];
        // A different view of the photo per index: a crop of 60-100% of it at an
        // offset, mirrored every other time (a small LCG keeps it reproducible).
        let mut s = (i as u64)
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let mut next = |n: u32| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 33) % n.max(1) as u64) as u32
        };
        let (pw, ph) = photo.dimensions();
        let frac = 60 + next(41);
        let (cw, ch) = (pw * frac / 100, ph * frac / 100);
        let (x, y) = (next(pw - cw + 1), next(ph - ch + 1));
        let mut view = photo
            .crop_imm(x, y, cw, ch)
            .resize_exact(w, h, FilterType::Triangle);
        if i % 2 == 1 {
            view = view.fliph();
        }
        let path = out.join(format!("{i:06}.jpg"));
        let file =
            std::fs::File::create(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let mut enc = image::codecs::jpeg::JpegEncoder::new_with_quality(
            std::io::BufWriter::new(file),
            quality,
        );
        enc.encode_image(&view)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        bytes += std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    }
    println!(
        "wrote {count} JPEGs of {w}x{h} (quality {quality}, {:.1} MB) to {}",
        bytes as f64 / 1e6,
        out.display()
    );
}
