//! Preprocessing parity with torchvision's ImageNet transform (Resize of the
//! shorter side, then CenterCrop, on PIL images): fixtures made by
//! `tools/make_fixtures_resize.py` (no Python needed here). The geometry (sizes
//! truncated, crop offsets rounded half to even) and Pillow's antialiased
//! bilinear filter in fixed point are both matched exactly.

use std::path::PathBuf;

use advex::data::{load_image, Filter, Preprocessor};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/resize")
}

#[test]
fn resize_and_crop_match_torchvision() {
    let cases: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixtures().join("cases.json")).unwrap()).unwrap();
    let crop = cases["crop"].as_u64().unwrap() as u32;
    let mut failures = Vec::new();
    for case in cases["cases"].as_array().unwrap() {
        let prep = Preprocessor {
            channels: 3,
            height: crop,
            width: crop,
            resize: Some(cases["resize"].as_u64().unwrap() as u32),
            filter: Filter::from_name(case["interpolation"].as_str().unwrap()),
        };
        let src = fixtures().join(case["source"].as_str().unwrap());
        let got = load_image(&src, &prep).unwrap();
        let want = image::open(fixtures().join(case["expected"].as_str().unwrap()))
            .unwrap()
            .to_rgb8();
        let plane = (crop * crop) as usize;
        let (mut worst, mut at, mut off) = (0i32, 0usize, 0usize);
        for (i, px) in want.pixels().enumerate() {
            for c in 0..3 {
                let g = (got[c * plane + i] * 255.0).round() as i32;
                let d = (g - px.0[c] as i32).abs();
                if d > 0 {
                    off += 1;
                }
                if d > worst {
                    (worst, at) = (d, c * plane + i);
                }
            }
        }
        let n = 3 * plane;
        eprintln!(
            "{} {}: max |difference| {worst} (at {at}), {off} of {n} values differ",
            case["source"], case["interpolation"]
        );
        // Pillow's fixed-point resampling is reproduced bit for bit.
        if worst > 0 {
            failures.push(format!(
                "{} {}: {off} of {n} values differ from torchvision, value {at} by {worst}/255",
                case["source"], case["interpolation"]
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
