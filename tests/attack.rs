//! FGSM end to end on the bundled models and images: PyTorch parity from the
//! committed fixtures, sweeps, gradient reuse, honest quantisation, bad input.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use advex::attack::{parse_eps_list, FgsmPlan, Target};
use advex::data::{load_image, OutputFormat, Preprocessor};
use advex::model::Model;
use advex::plan::GpuModel;
use advex::run::{run_attack, run_eval, RunOptions, TargetSpec};
use common::*;
use serde_json::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn fixture(name: &str) -> Value {
    let text = std::fs::read_to_string(root().join("tests/fixtures").join(name)).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn prep(model: &Model) -> Preprocessor {
    let [c, h, w] = model.input;
    Preprocessor {
        channels: c,
        height: h,
        width: w,
        resize: model.preprocess.resize,
        filter: advex::data::Filter::from_name(&model.preprocess.interpolation),
    }
}

/// Loads the fixture's images; returns (model on the GPU, pixels, labels).
fn load_fixture_batch(model_file: &str, fx: &Value) -> (GpuModel, Vec<f32>, Vec<Option<u32>>) {
    let model = Arc::new(Model::load(&root().join(model_file)).unwrap());
    let p = prep(&model);
    let mut pixels = Vec::new();
    let mut labels = Vec::new();
    for im in fx["images"].as_array().unwrap() {
        pixels.extend(load_image(&root().join(im["file"].as_str().unwrap()), &p).unwrap());
        labels.push(Some(im["label"].as_u64().unwrap() as u32));
    }
    (GpuModel::new(ctx(), model).unwrap(), pixels, labels)
}

fn softmax(z: &[f32]) -> Vec<f64> {
    let m = z.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
    let e: Vec<f64> = z.iter().map(|&v| (v as f64 - m).exp()).collect();
    let s: f64 = e.iter().sum();
    e.iter().map(|v| v / s).collect()
}

/// Runs the fixture's FGSM on the GPU and checks clean top-5 probabilities and
/// the adversarial top-1 of every image at every eps against PyTorch.
fn check_fgsm_parity(model_file: &str, fixture_name: &str, prob_tol: f64) {
    let fx = fixture(fixture_name);
    let (gpu, pixels, labels) = load_fixture_batch(model_file, &fx);
    let eps_text: Vec<String> = fx["images"][0]["adversarial"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["eps"].as_str().unwrap().to_string())
        .collect();
    let eps = parse_eps_list(&eps_text.join(",")).unwrap();
    let n = labels.len() as u32;
    let plan = FgsmPlan::new(&gpu, n, &eps, true, Target::Untargeted).unwrap();
    let out = plan.run(&pixels, &labels, false).unwrap();
    let logits = plan.clean_logits().unwrap();
    let k = gpu.num_classes() as usize;
    for (i, im) in fx["images"].as_array().unwrap().iter().enumerate() {
        let name = im["file"].as_str().unwrap();
        let probs = softmax(&logits[i * k..(i + 1) * k]);
        let top: Vec<u64> = im["clean"]["top"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .collect();
        for (j, &c) in top.iter().enumerate() {
            let want = im["clean"]["probs"][j].as_f64().unwrap();
            let got = probs[c as usize];
            assert!(
                (got - want).abs() <= prob_tol,
                "{name}: class {c} probability {got} vs PyTorch {want}"
            );
        }
        assert_eq!(out.clean[i].class as u64, top[0], "{name}: clean top-1");
        for (e, adv) in im["adversarial"].as_array().unwrap().iter().enumerate() {
            // Where PyTorch's float32 gradient signs and its float64 ones give
            // different predictions, the result hinges on rounding noise: advex
            // may give either (its loss gradient is the more exact one).
            let got = out.adv[e][i].class as u64;
            let want = adv["pred"].as_u64().unwrap();
            let want64 = adv["pred_f64_signs"].as_u64().unwrap();
            assert!(
                got == want || got == want64,
                "{name} at eps {}: adversarial top-1 {got}, PyTorch {want} (f64 signs {want64})",
                adv["eps"]
            );
            let (linf, _) = out.norms[e][i];
            assert!(
                (linf as f64 - adv["linf"].as_f64().unwrap()).abs() < 1e-6,
                "{name}: L-inf"
            );
        }
    }
}

#[test]
fn efficientnet_lite0_matches_pytorch_on_the_photos() {
    check_fgsm_parity(
        "weights/efficientnet_lite0.safetensors",
        "efficientnet_lite0_photos.json",
        1e-4,
    );
}

#[test]
fn mnist_cnn_matches_pytorch_on_the_digits() {
    check_fgsm_parity("weights/mnist_cnn.safetensors", "mnist_digits.json", 1e-4);
}

fn digits_run(eps: &str) -> RunOptions {
    let mut o = RunOptions::new(
        root().join("weights/mnist_cnn.safetensors"),
        root().join("examples/digits"),
    );
    o.eps = parse_eps_list(eps).unwrap();
    o
}

#[test]
fn mnist_sweep_accuracy_falls_with_eps() {
    let report = run_attack(&digits_run("0.05,0.1,0.2,0.3")).unwrap();
    assert_eq!(report.images, 100);
    assert!(
        report.clean.accuracy >= 0.97,
        "clean accuracy {}",
        report.clean.accuracy
    );
    let mut last = report.clean.accuracy;
    for e in &report.epsilons {
        assert!(
            e.accuracy < last,
            "accuracy must fall: {} at eps {} after {last}",
            e.accuracy,
            e.eps_text
        );
        last = e.accuracy;
    }
    assert!(report.epsilons[3].accuracy < 0.5);
    // rounded inside the ball: never past eps, within one level of it
    assert!(report
        .epsilons
        .iter()
        .all(|e| e.mean_linf <= e.eps + 1e-6 && e.eps - e.mean_linf < 1.0 / 255.0 + 1e-6));
}

#[test]
fn one_gradient_sweep_equals_separate_runs() {
    let fx = fixture("mnist_digits.json");
    let (gpu, pixels, labels) = load_fixture_batch("weights/mnist_cnn.safetensors", &fx);
    let n = labels.len() as u32;
    let eps = parse_eps_list("0.05,0.1,0.2,0.3").unwrap();
    let sweep = FgsmPlan::new(&gpu, n, &eps, true, Target::Untargeted).unwrap();
    let all = sweep.run(&pixels, &labels, true).unwrap();
    for (e, one) in eps.iter().enumerate() {
        let single =
            FgsmPlan::new(&gpu, n, std::slice::from_ref(one), true, Target::Untargeted).unwrap();
        let out = single.run(&pixels, &labels, true).unwrap();
        assert_eq!(
            out.images.as_ref().unwrap()[0],
            all.images.as_ref().unwrap()[e],
            "eps {}: images differ",
            one.text
        );
        assert_eq!(
            out.adv[0], all.adv[e],
            "eps {}: predictions differ",
            one.text
        );
    }
}

#[test]
fn saved_pngs_evaluate_to_the_reported_predictions() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = digits_run("0.1,0.2");
    o.out = Some(dir.path().join("adv"));
    o.predictions = Some(dir.path().join("pred.csv"));
    o.report = Some(dir.path().join("report.json"));
    run_attack(&o).unwrap();
    let csv = std::fs::read_to_string(dir.path().join("pred.csv")).unwrap();
    let header: Vec<&str> = csv.lines().next().unwrap().split(',').collect();
    let col = |name: &str| header.iter().position(|h| *h == name).unwrap();
    let (eps_text, pred_col) = (col("eps_text"), col("pred"));
    for eps in ["0.1", "0.2"] {
        let model = o.model.clone().unwrap();
        let mut e = RunOptions::new(model, dir.path().join("adv").join(format!("eps_{eps}")));
        // the ImageFolder labels of the saved copies are the true digits, as in the attack
        e.predictions = Some(dir.path().join(format!("eval_{eps}.csv")));
        let (rows, report) = run_eval(&e).unwrap();
        assert_eq!(rows.len(), 100);
        for r in rows {
            let orig = r.image.trim_end_matches(".png");
            let line = csv
                .lines()
                .find(|l| l.starts_with(orig) && l.split(',').nth(eps_text) == Some(eps))
                .unwrap_or_else(|| panic!("no attack row for {orig} at {eps}"));
            let pred: u32 = line.split(',').nth(pred_col).unwrap().parse().unwrap();
            assert_eq!(
                r.pred, pred,
                "{} at eps {eps}: eval of the saved PNG disagrees with the attack",
                r.image
            );
        }
        assert!(report.clean.accuracy < 1.0);
    }
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("report.json")).unwrap())
            .unwrap();
    for key in [
        "model", "adapter", "method", "images", "clean", "epsilons", "timing",
    ] {
        assert!(report.get(key).is_some(), "report lacks {key}");
    }
    for key in [
        "eps",
        "accuracy",
        "success_rate",
        "mean_adv_confidence",
        "mean_linf",
        "mean_l2",
    ] {
        assert!(
            report["epsilons"][0].get(key).is_some(),
            "report epsilons lack {key}"
        );
    }
}

#[test]
fn targeted_attacks_move_towards_the_target() {
    let mut o = digits_run("0.2");
    o.target = TargetSpec::Class("3".into());
    let r = run_attack(&o).unwrap();
    // success = reaching class 3, over the images right before the attack
    assert!(
        r.epsilons[0].success_rate > 0.2,
        "targeted success {}",
        r.epsilons[0].success_rate
    );
    let mut o = digits_run("0.2");
    o.target = TargetSpec::LeastLikely;
    let ll = run_attack(&o).unwrap();
    assert!(ll.epsilons[0].accuracy < r.clean.accuracy);
}

fn write_file(path: &Path, bytes: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn unreadable_images_are_skipped_and_listed_or_fatal_with_strict() {
    let dir = tempfile::tempdir().unwrap();
    let src = root().join("examples/digits/7");
    std::fs::create_dir_all(dir.path().join("7")).unwrap();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&src)
        .unwrap()
        .map(|f| f.unwrap().path())
        .collect();
    files.sort();
    for (i, f) in files.iter().take(3).enumerate() {
        std::fs::copy(f, dir.path().join(format!("7/{i}.png"))).unwrap();
    }
    write_file(
        &dir.path().join("7/broken.png"),
        b"\x89PNG\r\n\x1a\nthis is not a png",
    );
    let mut o = RunOptions::new(root().join("weights/mnist_cnn.safetensors"), dir.path());
    o.eps = parse_eps_list("0.1").unwrap();
    let r = run_attack(&o).unwrap();
    assert_eq!(r.images, 3);
    assert_eq!(r.skipped.len(), 1);
    assert_eq!(r.skipped[0].image, "7/broken.png");
    o.strict = true;
    let err = run_attack(&o).unwrap_err().to_string();
    assert!(err.contains("broken.png"), "{err}");
}

#[test]
fn bad_arguments_fail_before_gpu_work() {
    let dir = tempfile::tempdir().unwrap();
    let model = root().join("weights/mnist_cnn.safetensors");
    let digits = root().join("examples/digits");
    let run = |o: &RunOptions| run_attack(o).unwrap_err().to_string();

    let mut o = RunOptions::new(&model, &digits);
    o.eps = parse_eps_list("0.1").unwrap();
    // labels CSV naming a missing file, then an unknown class
    let labels = dir.path().join("labels.csv");
    std::fs::write(&labels, "image,label\nnope/missing.png,3\n").unwrap();
    o.labels = Some(labels.clone());
    assert!(run(&o).contains("missing.png"));
    std::fs::write(&labels, "0/0400.png,eleven\n").unwrap();
    assert!(run(&o).contains("eleven"));
    o.labels = None;

    // empty folder
    let empty = dir.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let e = RunOptions {
        images: empty,
        ..o.clone()
    };
    assert!(run(&e).contains("no images"));

    // --out that already holds files, then one that is a file
    let out = dir.path().join("out");
    write_file(&out.join("old.txt"), b"x");
    let e = RunOptions {
        out: Some(out.clone()),
        ..o.clone()
    };
    assert!(run(&e).contains("--overwrite"));
    let e = RunOptions {
        out: Some(out.join("old.txt")),
        ..o.clone()
    };
    assert!(run(&e).contains("not a folder"));
    // report in a folder that does not exist
    let e = RunOptions {
        report: Some(dir.path().join("no/such/dir/r.json")),
        ..o.clone()
    };
    assert!(run(&e).contains("does not exist"));
    // a target out of range
    let e = RunOptions {
        target: TargetSpec::Class("12".into()),
        ..o.clone()
    };
    assert!(run(&e).contains("12"));
    // eps outside [0, 1] or unparsable never reach a run
    assert!(parse_eps_list("1.5").is_err());
    assert!(parse_eps_list("abc").is_err());
}

/// The attack's CSV rows at `eps_text`: image -> (label, pred).
fn csv_preds(csv: &Path, eps_text: &str) -> std::collections::HashMap<String, (u32, u32)> {
    let text = std::fs::read_to_string(csv).unwrap();
    let header: Vec<&str> = text.lines().next().unwrap().split(',').collect();
    let col = |name: &str| header.iter().position(|h| *h == name).unwrap();
    let (img, label, et, pred) = (col("image"), col("label"), col("eps_text"), col("pred"));
    text.lines()
        .skip(1)
        .map(|l| l.split(',').collect::<Vec<_>>())
        .filter(|r| r[et] == eps_text)
        .map(|r| {
            (
                r[img].to_string(),
                (r[label].parse().unwrap(), r[pred].parse().unwrap()),
            )
        })
        .collect()
}

/// Evaluate a folder of PNGs and return image (relative, without .png) -> prediction.
fn eval_folder(model: &Path, dir: &Path) -> std::collections::HashMap<String, u32> {
    let (rows, _) = run_eval(&RunOptions::new(model, dir)).unwrap();
    rows.into_iter()
        .map(|r| (r.image.trim_end_matches(".png").to_string(), r.pred))
        .collect()
}

#[test]
fn webdataset_and_safetensors_shards_read_back_to_the_reported_predictions() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for format in [OutputFormat::WebDataset, OutputFormat::Safetensors] {
        let out = d.join(format.name());
        let mut o = digits_run("0.1,1/255");
        o.out = Some(out.clone());
        o.format = format;
        o.shard_size = 30;
        o.predictions = Some(d.join(format!("{}.csv", format.name())));
        run_attack(&o).unwrap();
        let model = o.model.clone().unwrap();
        for (eps_text, folder) in [("0.1", "eps_0.1"), ("1/255", "eps_1_255")] {
            let want = csv_preds(o.predictions.as_ref().unwrap(), eps_text);
            assert_eq!(want.len(), 100);
            let mut shards: Vec<PathBuf> = std::fs::read_dir(out.join(folder))
                .unwrap()
                .map(|e| e.unwrap().path())
                .collect();
            shards.sort();
            // 100 images sorted by path, 30 per shard
            let ext = if format == OutputFormat::WebDataset {
                "tar"
            } else {
                "safetensors"
            };
            let names: Vec<String> = shards
                .iter()
                .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
                .collect();
            assert_eq!(
                names,
                (0..4)
                    .map(|i| format!("shard-{i:06}.{ext}"))
                    .collect::<Vec<_>>(),
                "complete shards only, no temporary files"
            );
            let pngs = d.join(format!("{}_{folder}", format.name()));
            let mut stored: std::collections::HashMap<String, (u32, u32)> = Default::default();
            for shard in &shards {
                if format == OutputFormat::WebDataset {
                    let mut members: std::collections::BTreeMap<String, Vec<u8>> =
                        Default::default();
                    let mut ar = tar::Archive::new(std::fs::File::open(shard).unwrap());
                    for m in ar.entries().unwrap() {
                        let mut m = m.unwrap();
                        let name = m.path().unwrap().to_string_lossy().into_owned();
                        let mut bytes = Vec::new();
                        std::io::Read::read_to_end(&mut m, &mut bytes).unwrap();
                        members.insert(name, bytes);
                    }
                    assert_eq!(members.len() % 3, 0);
                    for (name, bytes) in &members {
                        let Some(key) = name.strip_suffix(".json") else {
                            continue;
                        };
                        assert!(!key.contains('.'), "no dots in WebDataset keys: {key}");
                        let meta: Value = serde_json::from_slice(bytes).unwrap();
                        let cls: u32 = String::from_utf8(members[&format!("{key}.cls")].clone())
                            .unwrap()
                            .parse()
                            .unwrap();
                        let source = meta["source"].as_str().unwrap().to_string();
                        assert_eq!(meta["label"], cls);
                        assert_eq!(meta["eps_text"], eps_text);
                        let png = pngs.join(format!("{}.png", source.trim_end_matches(".png")));
                        std::fs::create_dir_all(png.parent().unwrap()).unwrap();
                        std::fs::write(&png, &members[&format!("{key}.png")]).unwrap();
                        stored.insert(source, (cls, meta["adv_pred"].as_u64().unwrap() as u32));
                    }
                } else {
                    let bytes = std::fs::read(shard).unwrap();
                    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
                    let meta = header.metadata().clone().unwrap();
                    assert_eq!(meta["eps_text"], eps_text);
                    let paths: Vec<String> = serde_json::from_str(&meta["paths"]).unwrap();
                    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
                    let images = st.tensor("images").unwrap();
                    assert_eq!(images.dtype(), safetensors::Dtype::U8);
                    assert_eq!(images.shape(), &[paths.len(), 1, 28, 28]);
                    let longs = |name: &str| -> Vec<i64> {
                        let t = st.tensor(name).unwrap();
                        assert_eq!(t.dtype(), safetensors::Dtype::I64);
                        bytemuck::pod_collect_to_vec(t.data())
                    };
                    let (labels, adv) = (longs("labels"), longs("adv_preds"));
                    for (i, source) in paths.iter().enumerate() {
                        let px = &images.data()[i * 784..(i + 1) * 784];
                        let png = pngs.join(format!("{}.png", source.trim_end_matches(".png")));
                        advex::data::write_png_atomic(&png, px, 1, 28, 28).unwrap();
                        stored.insert(source.clone(), (labels[i] as u32, adv[i] as u32));
                    }
                }
            }
            assert_eq!(
                stored,
                want,
                "{} {eps_text}: stored labels and predictions",
                format.name()
            );
            // the stored pixels are the adversarial images: the model says the same of them
            let again = eval_folder(&model, &pngs);
            for (image, (_, pred)) in &want {
                assert_eq!(
                    again[image.trim_end_matches(".png")],
                    *pred,
                    "{} {eps_text} {image}: stored pixels evaluate differently",
                    format.name()
                );
            }
        }
    }
}

#[test]
fn webdataset_shards_round_trip_as_input() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut o = digits_run("0.1");
    o.out = Some(d.join("wds"));
    o.format = OutputFormat::WebDataset;
    o.shard_size = 40;
    o.predictions = Some(d.join("attack.csv"));
    run_attack(&o).unwrap();
    let want = csv_preds(&d.join("attack.csv"), "0.1");
    let model = o.model.clone().unwrap();
    // a folder of shards, one shard, and a brace pattern all read the same samples
    let shards = d.join("wds/eps_0.1");
    let pattern = format!("{}/shard-{{000000..000002}}.tar", shards.display());
    for (images, count) in [
        (shards.clone(), 100),
        (shards.join("shard-000001.tar"), 40),
        (PathBuf::from(&pattern), 100),
    ] {
        let mut e = RunOptions::new(&model, &images);
        e.predictions = Some(d.join("eval.csv"));
        let (rows, report) = run_eval(&e).unwrap();
        assert_eq!(rows.len(), count, "{}", images.display());
        assert!(report.skipped.is_empty(), "{:?}", report.skipped);
        for r in rows {
            // labels come from the .cls members; the pixels are the adversarial ones
            let (label, pred) = want[&r.image];
            assert_eq!((r.label, r.pred), (label, pred), "{}", r.image);
        }
    }
    // a pattern that matches nothing is an error that names it
    let err = run_eval(&RunOptions::new(&model, d.join("wds/eps_0.1/x-{0..3}.tar")))
        .unwrap_err()
        .to_string();
    assert!(err.contains("matches no file"), "{err}");
}

#[test]
fn broken_shards_are_skipped_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let png = std::fs::read(root().join("examples/digits/3/1900.png")).unwrap();
    let member = |tar: &mut tar::Builder<Vec<u8>>, name: &str, bytes: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_size(bytes.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        tar.append_data(&mut h, name, bytes).unwrap();
    };
    let mut good = tar::Builder::new(Vec::new());
    member(&mut good, "a/one.png", &png);
    member(&mut good, "a/one.cls", b"3");
    member(&mut good, "a/lonely.cls", b"3"); // no image for this key
    member(&mut good, "a/junk.png", b"not a png"); // undecodable member
    member(&mut good, "a/two.png", &png);
    let good = good.into_inner().unwrap();
    std::fs::create_dir_all(d.join("shards")).unwrap();
    write_file(&d.join("shards/good.tar"), &good);
    // a shard cut short in the middle of its second member
    let mut cut = tar::Builder::new(Vec::new());
    member(&mut cut, "b/one.png", &png);
    member(&mut cut, "b/two.png", &png);
    let cut = cut.into_inner().unwrap();
    write_file(
        &d.join("shards/cut.tar"),
        &cut[..512 + png.len().div_ceil(512) * 512 + 700],
    );
    let mut o = digits_run("0.1");
    o.images = d.join("shards");
    o.report = Some(d.join("r.json"));
    let report = run_attack(&o).unwrap();
    let images: Vec<&str> = report.skipped.iter().map(|s| s.image.as_str()).collect();
    assert_eq!(report.images, 3, "a/one, a/two and b/one: {images:?}");
    // the cut shard: its end is reported, and its half-present member too
    assert_eq!(report.skipped.len(), 4, "{:?}", report.skipped);
    assert!(
        images.iter().any(|i| i.ends_with("b/two.png")),
        "{images:?}"
    );
    assert!(images.iter().any(|i| i.ends_with("a/lonely")), "{images:?}");
    assert!(
        images.iter().any(|i| i.ends_with("a/junk.png")),
        "{images:?}"
    );
    assert!(
        report
            .skipped
            .iter()
            .any(|s| s.reason.contains("truncated")),
        "{:?}",
        report.skipped
    );
}

/// A tar shard whose members carry `names` as the shard spells them (raw
/// header bytes: the tar crate refuses to write hostile names, an attacker's
/// tool does not), each holding `png`.
fn raw_tar(names: &[String], png: &[u8]) -> Vec<u8> {
    let mut tar = tar::Builder::new(Vec::new());
    for name in names {
        let mut h = tar::Header::new_gnu();
        let field = &mut h.as_gnu_mut().unwrap().name;
        assert!(name.len() < field.len() && !name.contains('\0'), "{name:?}");
        field[..name.len()].copy_from_slice(name.as_bytes());
        h.set_size(png.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_cksum();
        tar.append(&h, png).unwrap();
    }
    tar.into_inner().unwrap()
}

/// Every file under `dir`, recursively (symlinks listed, not followed).
fn all_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in walkdir::WalkDir::new(dir) {
        let e = e.unwrap();
        if !e.file_type().is_dir() {
            out.push(e.path().to_path_buf());
        }
    }
    out
}

/// Runs the digits model on `shard` with `--out` in each format; returns,
/// per format, the report and the output folder. Every file under `root`
/// afterwards must lie in `root/shards` or one of the output folders.
fn attack_shard_everywhere(
    root: &Path,
    shard: &[u8],
) -> Vec<(advex::report::Report, PathBuf, OutputFormat)> {
    std::fs::create_dir_all(root.join("shards")).unwrap();
    write_file(&root.join("shards/evil.tar"), shard);
    let mut done = Vec::new();
    for format in [
        OutputFormat::Png,
        OutputFormat::WebDataset,
        OutputFormat::Safetensors,
    ] {
        // three levels down, so that '../../../x' still lands inside root
        let out = root.join(format!("a/b/out_{}", format.name()));
        let mut o = digits_run("0.1");
        o.images = root.join("shards/evil.tar");
        o.out = Some(out.clone());
        o.format = format;
        o.quiet = true;
        let report = run_attack(&o).unwrap();
        done.push((report, out, format));
    }
    let outs: Vec<PathBuf> = done.iter().map(|(_, o, _)| o.clone()).collect();
    for f in all_files(root) {
        assert!(
            f.starts_with(root.join("shards")) || outs.iter().any(|o| f.starts_with(o)),
            "{} was written outside --out",
            f.display()
        );
    }
    done
}

#[test]
fn hostile_member_names_write_nothing_outside_out() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().canonicalize().unwrap();
    let png = std::fs::read(self::root().join("examples/digits/3/1900.png")).unwrap();
    let abs = format!("{}/abs/escaped3.png", root.display());
    let hostile: Vec<String> = [
        "../../../escaped1.png",
        abs.as_str(),
        "ok/../../escaped2.png",
        "C:evil.png",
        "C:/evil/x.png",
        "..\\..\\win.png",
        "\\\\server\\share\\unc.png",
        "a\\b.png",
        "ctl\u{1b}[2J.png",
        "a//b.png",
        "CON.png",
        "dir /x.png",
        "what?.png",
    ]
    .map(String::from)
    .to_vec();
    let mut names = hostile.clone();
    names.push("normal.png".into());
    names.push("./dot/fine.png".into());
    for (report, out, format) in attack_shard_everywhere(&root, &raw_tar(&names, &png)) {
        assert_eq!(report.images, 2, "{:?}", report.skipped);
        assert_eq!(report.skipped.len(), hostile.len(), "{:?}", report.skipped);
        for s in &report.skipped {
            // ('..\\..\\win.png' has no '/', so WebDataset's keying, at the
            // first dot of the base name, leaves it without an image member)
            let refused = s.reason.contains("cannot name an output file");
            assert!(refused || s.reason.contains("no image member"), "{s:?}");
            assert!(
                !s.image.contains('\u{1b}'),
                "escape character shown raw: {s:?}"
            );
        }
        if format == OutputFormat::Png {
            for f in ["normal.png", "dot/fine.png"] {
                assert!(out.join("eps_0.1").join(f).is_file(), "{f}");
            }
            assert_eq!(all_files(&out.join("eps_0.1")).len(), 2);
        }
    }
}

/// Random member names from an alphabet rich in separators, dots, drive and
/// UNC prefixes: whatever the names, nothing is written outside --out in any
/// output format, and every member is either written or skipped with a reason.
#[test]
fn random_member_names_write_nothing_outside_out() {
    use rand::Rng;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().canonicalize().unwrap();
    let png = std::fs::read(self::root().join("examples/digits/3/1900.png")).unwrap();
    let pieces = [
        "..", ".", "/", "\\", "C:", "a", "b", "ok", " ", "\u{7}", "CON", "~", "é", "*",
    ];
    let mut r = rng(2025);
    let mut names: Vec<String> = (0..40)
        .map(|i| {
            let n = r.random_range(1..7);
            let body: String = (0..n)
                .map(|_| pieces[r.random_range(0..pieces.len())])
                .collect();
            // a distinct stem per member, so that keys do not merge
            format!("{body}{i}.png")
        })
        .collect();
    names.sort();
    names.dedup();
    for (report, _, _) in attack_shard_everywhere(&root, &raw_tar(&names, &png)) {
        // (members whose base names start with a dot share WebDataset keys,
        // so images and skips need not add up to the member count)
        assert!(
            report.images > 0,
            "no random name passed: {:?}",
            report.skipped
        );
        let refused = |s: &advex::data::Skipped| s.reason.contains("cannot name an output file");
        assert!(report.skipped.iter().any(refused), "no random name refused");
    }
}

/// A symlink left in an output folder (a resumed run's) never carries a PNG
/// out of it: the writer stops with an error naming it before writing any
/// file of the batch. A symlink that stays inside the folder is followed.
#[cfg(unix)]
#[test]
fn a_symlinked_output_subfolder_is_not_followed_out() {
    use advex::data::{OutputSpec, OutputWriter, PngCompression, Sample};
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().canonicalize().unwrap();
    let out = root.join("out");
    let eps_dir = out.join("eps_0.1");
    std::fs::create_dir_all(eps_dir.join("real")).unwrap();
    std::fs::create_dir_all(root.join("elsewhere")).unwrap();
    std::os::unix::fs::symlink(root.join("elsewhere"), eps_dir.join("sub")).unwrap();
    std::os::unix::fs::symlink(eps_dir.join("real"), eps_dir.join("inner")).unwrap();
    let spec = OutputSpec {
        dir: out.clone(),
        format: OutputFormat::Png,
        shard_size: 10,
        eps: parse_eps_list("0.1").unwrap(),
        method: "fgsm".into(),
        shape: [1, 2, 2],
        png_compression: PngCompression::default(),
    };
    let sample = |index: usize, rel: &str| Sample {
        index,
        rel: rel.into(),
        label: 0,
        clean_pred: 0,
        adv_pred: 1,
        adv_prob: 0.5,
        eps: 0,
        pixels: vec![7, 8, 9, 10],
    };
    let mut w = OutputWriter::new(spec.clone()).unwrap();
    w.write(vec![sample(0, "y.png"), sample(1, "inner/z.png")])
        .unwrap();
    assert!(eps_dir.join("y.png").is_file());
    assert!(eps_dir.join("real/z.png").is_file());
    let err = w
        .write(vec![sample(2, "a.png"), sample(3, "sub/x.png")])
        .unwrap_err()
        .to_string();
    assert!(err.contains("symlink") && err.contains("sub"), "{err}");
    assert!(all_files(&root.join("elsewhere")).is_empty());
    assert!(
        !eps_dir.join("a.png").exists(),
        "nothing of the batch is written"
    );
    // a name the rules refuse is an error here too, whoever calls the writer
    let mut w = OutputWriter::new(spec).unwrap();
    let err = w
        .write(vec![sample(4, "../../x.png")])
        .unwrap_err()
        .to_string();
    assert!(err.contains("cannot name an output file"), "{err}");
    assert!(!root.join("x.png").exists());
}

/// Copy the folder `from` to `to` (files and folders).
fn copy_tree(from: &Path, to: &Path) {
    for e in walkdir::WalkDir::new(from) {
        let e = e.unwrap();
        let dst = to.join(e.path().strip_prefix(from).unwrap());
        if e.file_type().is_dir() {
            std::fs::create_dir_all(&dst).unwrap();
        } else {
            std::fs::copy(e.path(), &dst).unwrap();
        }
    }
}

/// What a finished run's folder says, for comparing runs: every file's
/// bytes by path, `report.json` without its timing.
fn run_contents(dir: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    let mut out = std::collections::BTreeMap::new();
    for e in walkdir::WalkDir::new(dir) {
        let e = e.unwrap();
        let rel = e
            .path()
            .strip_prefix(dir)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        // markers hold timings and file lists of their own run
        if !e.file_type().is_file() || rel.starts_with("shards/") && rel.ends_with(".json") {
            continue;
        }
        let mut bytes = std::fs::read(e.path()).unwrap();
        if rel == "report.json" {
            let mut v: Value = serde_json::from_slice(&bytes).unwrap();
            v.as_object_mut().unwrap().remove("timing");
            bytes = serde_json::to_vec(&v).unwrap();
        }
        out.insert(rel, bytes);
    }
    out
}

fn sharded_run(out: &Path, format: OutputFormat) -> RunOptions {
    let mut o = digits_run("0.1,0.2");
    o.out = Some(out.to_path_buf());
    o.format = format;
    o.shard_size = 10;
    o.quiet = true;
    o
}

/// Issue 24's damage matrix: whatever a disk, a sync or a person does to a
/// finished run's shards, a rerun of the same command ends identical to the
/// undamaged run (it redoes what it finds damaged), and a merge of damaged
/// rows is refused with what to run. For every output format.
#[test]
fn damaged_runs_are_redone_or_refused_never_merged() {
    let dir = tempfile::tempdir().unwrap();
    for format in [
        OutputFormat::Png,
        OutputFormat::WebDataset,
        OutputFormat::Safetensors,
    ] {
        let reference = dir.path().join(format!("ref_{}", format.name()));
        run_attack(&sharded_run(&reference, format)).unwrap();
        advex::run::shards::verify_run(&reference).unwrap();
        let want = run_contents(&reference);
        let outputs: Vec<String> = want
            .keys()
            .filter(|k| k.starts_with("eps_"))
            .cloned()
            .collect();
        assert!(outputs.len() >= 2, "{outputs:?}");
        type Damage = Box<dyn Fn(&Path)>;
        let truncate = |rel: String| -> Damage {
            Box::new(move |d: &Path| {
                let p = d.join(&rel);
                let n = std::fs::metadata(&p).unwrap().len();
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(&p)
                    .unwrap()
                    .set_len(n / 2)
                    .unwrap();
            })
        };
        let cases: Vec<(&str, Damage)> = vec![
            (
                "a shard's rows cut short",
                truncate("shards/shard-000003.csv".into()),
            ),
            (
                "one row of a shard edited",
                Box::new(|d: &Path| {
                    let p = d.join("shards/shard-000004.csv");
                    let mut b = std::fs::read(&p).unwrap();
                    let i = b.iter().position(|c| c.is_ascii_digit()).unwrap();
                    b[i] = if b[i] == b'9' { b'8' } else { b[i] + 1 };
                    std::fs::write(&p, b).unwrap();
                }),
            ),
            (
                "an output deleted",
                Box::new({
                    let rel = outputs[0].clone();
                    move |d: &Path| std::fs::remove_file(d.join(&rel)).unwrap()
                }),
            ),
            (
                "an output cut short",
                truncate(outputs[outputs.len() - 1].clone()),
            ),
            (
                "a marker deleted",
                Box::new(|d: &Path| {
                    std::fs::remove_file(d.join("shards/shard-000001.json")).unwrap()
                }),
            ),
            (
                "the report deleted",
                Box::new(|d: &Path| std::fs::remove_file(d.join("report.json")).unwrap()),
            ),
            (
                "a marker damaged in place",
                Box::new(|d: &Path| {
                    let p = d.join("shards/shard-000002.json");
                    let b = std::fs::read(&p).unwrap();
                    std::fs::write(&p, &b[..b.len() / 2]).unwrap();
                }),
            ),
            (
                "a shard's rows deleted",
                Box::new(|d: &Path| {
                    std::fs::remove_file(d.join("shards/shard-000005.csv")).unwrap()
                }),
            ),
            (
                "a stray temporary file of a dead process",
                Box::new(|d: &Path| {
                    let tag = advex::data::tmp_tag();
                    let host = tag.rsplit_once('-').unwrap().0;
                    let stray = format!("eps_0.1/.x.png.{host}-999999999.tmp");
                    std::fs::write(d.join(stray), b"half a file").unwrap();
                }),
            ),
        ];
        for (i, (what, damage)) in cases.iter().enumerate() {
            let case = dir.path().join(format!("case_{}_{i}", format.name()));
            copy_tree(&reference, &case);
            damage(&case);
            assert!(
                what.contains("stray") || advex::run::shards::verify_run(&case).is_err(),
                "{}: {what}: verify found nothing",
                format.name()
            );
            if what.contains("row") {
                // merging first: refused, naming the shard and what to run
                let err = advex::run::write_merged(&case).unwrap_err().to_string();
                assert!(
                    err.contains("shard") && err.contains("rerun the same"),
                    "{}: {what}: {err}",
                    format.name()
                );
            }
            run_attack(&sharded_run(&case, format)).unwrap();
            advex::run::shards::verify_run(&case).unwrap();
            let got = run_contents(&case);
            assert_eq!(
                got.keys().collect::<Vec<_>>(),
                want.keys().collect::<Vec<_>>(),
                "{}: {what}: files",
                format.name()
            );
            for (k, v) in &want {
                assert!(
                    got[k] == *v,
                    "{}: {what}: {k} differs after the rerun",
                    format.name()
                );
            }
        }
        // What a rerun cannot repair is refused with what to do.
        for (what, manifest) in [("deleted", None), ("damaged", Some(&b"{\"advex\": 1"[..]))] {
            let case = dir
                .path()
                .join(format!("manifest_{}_{what}", format.name()));
            copy_tree(&reference, &case);
            let m = case.join("advex-run.json");
            match manifest {
                None => std::fs::remove_file(&m).unwrap(),
                Some(b) => std::fs::write(&m, b).unwrap(),
            }
            let err = run_attack(&sharded_run(&case, format))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("--out"),
                "{}: manifest {what}: {err}",
                format.name()
            );
            assert!(advex::run::shards::verify_run(&case).is_err());
        }
    }
}

/// Random damage (a file deleted, cut short, or one byte flipped in place),
/// then a rerun with --verify: the run ends identical to the undamaged one.
#[test]
fn random_damage_is_redone_with_verify() {
    use rand::Rng;
    let dir = tempfile::tempdir().unwrap();
    let reference = dir.path().join("ref");
    run_attack(&sharded_run(&reference, OutputFormat::Png)).unwrap();
    let want = run_contents(&reference);
    let files: Vec<String> = want
        .keys()
        .filter(|k| k.starts_with("eps_") || k.starts_with("shards/"))
        .cloned()
        .collect();
    let mut r = rng(24);
    for i in 0..6 {
        let case = dir.path().join(format!("case_{i}"));
        copy_tree(&reference, &case);
        let victim = case.join(&files[r.random_range(0..files.len())]);
        match r.random_range(0..3) {
            0 => std::fs::remove_file(&victim).unwrap(),
            1 => {
                let b = std::fs::read(&victim).unwrap();
                std::fs::write(&victim, &b[..b.len() / 3]).unwrap();
            }
            _ => {
                let mut b = std::fs::read(&victim).unwrap();
                let at = r.random_range(0..b.len());
                b[at] ^= 0x55;
                std::fs::write(&victim, b).unwrap();
            }
        }
        let mut o = sharded_run(&case, OutputFormat::Png);
        o.verify = true;
        run_attack(&o).unwrap();
        let got = run_contents(&case);
        assert_eq!(got.len(), want.len(), "case {i}: {}", victim.display());
        for (k, v) in &want {
            assert!(got[k] == *v, "case {i} ({}): {k} differs", victim.display());
        }
    }
}
