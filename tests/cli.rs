//! The `advex` binary: subcommands, exit codes and messages.

mod common;

use std::path::PathBuf;
use std::process::Command;

use advex::model::Dtype;
use common::builder;

fn advex() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_advex"));
    // The autotune runs, but keeps its results in memory (no file in $HOME).
    c.env("ADVEX_TUNE_CACHE", "off");
    c
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn run(cmd: &mut Command) -> (i32, String, String) {
    let out = cmd.output().expect("runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn devices_lists_an_adapter() {
    let (code, out, err) = run(advex().arg("devices"));
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("backend") && out.contains("max storage binding"),
        "{out}"
    );
    let (code, out, _) = run(advex().args(["devices", "--json"]));
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(v.as_array().is_some_and(|a| !a.is_empty()));
}

#[test]
fn info_describes_a_model_built_by_a_test() {
    let dir = tempfile::tempdir().unwrap();
    let path = builder::tiny_cnn(1).write(dir.path(), "tiny.safetensors", Dtype::F32);
    let (code, out, err) = run(advex().args(["info", "--check", "--model"]).arg(&path));
    assert_eq!(code, 0, "{err}");
    for word in ["conv1", "relu6", "fc", "FLOPs", "one submit"] {
        assert!(out.contains(word), "info output lacks {word}:\n{out}");
    }
}

#[test]
fn bundled_model_info() {
    let (code, out, err) = run(advex()
        .args(["info", "--model"])
        .arg(root().join("weights/mnist_cnn.safetensors")));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("mnist_cnn"));
}

#[test]
fn user_errors_exit_1_with_a_message() {
    let (code, _, err) = run(advex().args(["info", "--model", "/no/such/model.safetensors"]));
    assert_eq!(code, 1);
    assert!(err.contains("/no/such/model.safetensors"), "{err}");
    let (code, _, err) = run(advex()
        .args(["attack", "--images", "examples/digits", "--eps", "2"])
        .current_dir(root()));
    assert_eq!(code, 1);
    assert!(err.contains("[0, 1]"), "{err}");
    let (code, _, err) = run(advex().args(["devices", "--adapter-typo"]));
    assert_eq!(code, 1, "usage errors are user errors: {err}");
    let (code, out, _) = run(advex().arg("--help"));
    assert_eq!(code, 0);
    assert!(out.contains("attack") && out.contains("bench"));
}

#[test]
fn attack_writes_report_predictions_plot_and_pngs() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (code, out, err) = run(advex()
        .args([
            "attack",
            "--quiet",
            "--model",
            "weights/mnist_cnn.safetensors",
            "--images",
            "examples/digits/3",
        ])
        .args(["--eps", "0.1,1/255"])
        .arg("--out")
        .arg(d.join("adv"))
        .arg("--report")
        .arg(d.join("r.json"))
        .arg("--predictions")
        .arg(d.join("p.csv"))
        .arg("--plot")
        .arg(d.join("a.svg"))
        .current_dir(root()));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("accuracy"), "{out}");
    assert!(d.join("adv/eps_0.1").read_dir().unwrap().count() == 10);
    assert!(d.join("adv/eps_1_255").read_dir().unwrap().count() == 10);
    let csv = std::fs::read_to_string(d.join("p.csv")).unwrap();
    assert!(csv.starts_with("image,label,eps,pred,pred_prob,label_prob,pred_name"));
    assert_eq!(csv.lines().count(), 1 + 10 * 3);
    assert!(std::fs::read_to_string(d.join("a.svg"))
        .unwrap()
        .contains("<svg"));
    // a second run into the same --out is refused without --overwrite
    let (code, _, err) = run(advex()
        .args([
            "attack",
            "--model",
            "weights/mnist_cnn.safetensors",
            "--images",
            "examples/digits/3",
            "--out",
        ])
        .arg(d.join("adv"))
        .current_dir(root()));
    assert_eq!(code, 1);
    assert!(err.contains("--overwrite"), "{err}");
}

#[test]
fn precision_f16_runs_and_is_reported() {
    let d = tempfile::tempdir().unwrap();
    let report = d.path().join("r.json");
    let (code, _, err) = run(advex()
        .args([
            "attack",
            "--model",
            "weights/mnist_cnn.safetensors",
            "--images",
            "examples/digits/3",
            "--eps",
            "0.1",
            "--precision",
            "f16",
            "-q",
            "--report",
        ])
        .arg(&report)
        .current_dir(root()));
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(v["precision"], "f16");
    assert_eq!(v["clean"]["accuracy"], 1.0, "{v}");

    let (code, out, err) = run(advex()
        .args([
            "bench",
            "--model",
            "weights/mnist_cnn.safetensors",
            "--batch-size",
            "4",
            "--iterations",
            "1",
            "--precision",
            "f16",
            "--json",
        ])
        .current_dir(root()));
    assert_eq!(code, 0, "{err}");
    let b: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!(b["precision"], "f16");
    assert!(b["images_per_second"].as_f64().unwrap() > 0.0);

    let (code, _, err) = run(advex()
        .args(["bench", "--precision", "f64"])
        .current_dir(root()));
    assert_eq!(code, 1);
    assert!(err.contains("f16"), "{err}");
}
