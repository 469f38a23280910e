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
    assert!(
        csv.starts_with("image,label,method,eps,eps_text,pred,pred_prob,label_prob,pred_name\n")
    );
    assert_eq!(csv.lines().count(), 1 + 10 * 3);
    // eps is a number spreadsheets read as one (full precision), eps_text as written
    let rows: Vec<Vec<&str>> = csv
        .lines()
        .skip(1)
        .map(|l| l.split(',').collect())
        .collect();
    let at = |method: &str, text: &str| {
        rows.iter()
            .filter(|r| r[2] == method && r[4] == text)
            .map(|r| r[3].parse::<f64>().unwrap())
            .collect::<Vec<_>>()
    };
    assert_eq!(at("clean", "0"), vec![0.0; 10]);
    assert_eq!(at("fgsm", "0.1"), vec![0.1; 10]);
    assert_eq!(at("fgsm", "1/255"), vec![1.0 / 255.0; 10]);
    assert!(csv.contains(",fgsm,0.00392156862745098,1/255,"), "{csv}");
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

/// `lost_to_rounding` is in the report only with `--count-rounding` (one
/// forward more per eps); every other figure is the same; the flag makes no
/// sense with `--no-quantize` and is refused with it.
#[test]
fn count_rounding_adds_lost_to_rounding_only_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let report = |name: &str, extra: &[&str]| -> serde_json::Value {
        let (code, _, err) = run(advex()
            .args([
                "attack",
                "--quiet",
                "--model",
                "weights/mnist_cnn.safetensors",
            ])
            .args(["--images", "examples/digits/5", "--eps", "0.1,0.2"])
            .args(extra)
            .arg("--report")
            .arg(d.join(name))
            .current_dir(root()));
        assert_eq!(code, 0, "{err}");
        serde_json::from_str(&std::fs::read_to_string(d.join(name)).unwrap()).unwrap()
    };
    let plain = report("plain.json", &[]);
    let counted = report("counted.json", &["--count-rounding"]);
    for (e, (a, b)) in plain["epsilons"]
        .as_array()
        .unwrap()
        .iter()
        .zip(counted["epsilons"].as_array().unwrap())
        .enumerate()
    {
        assert!(a.get("lost_to_rounding").is_none(), "eps {e}: {a}");
        assert!(b["lost_to_rounding"].as_u64().is_some(), "eps {e}: {b}");
        for key in [
            "accuracy",
            "success_rate",
            "mean_adv_confidence",
            "mean_linf",
            "mean_l2",
        ] {
            assert_eq!(a[key], b[key], "eps {e}: {key}");
        }
    }
    let (code, _, err) = run(advex()
        .args(["attack", "--model", "weights/mnist_cnn.safetensors"])
        .args([
            "--images",
            "examples/digits/5",
            "--no-quantize",
            "--count-rounding",
        ])
        .current_dir(root()));
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("--count-rounding") && err.contains("--no-quantize"),
        "{err}"
    );
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

/// The binary with no help from the environment: no runtime dir, the Mesa
/// device-select layer left as it comes.
fn headless(cmd: &mut Command) -> &mut Command {
    cmd.env_remove("XDG_RUNTIME_DIR")
        .env_remove("NODEVICE_SELECT")
        .env_remove("WAYLAND_DISPLAY")
        .env_remove("DISPLAY")
}

#[test]
fn headless_runs_print_no_window_system_noise() {
    let (code, _, err) = run(headless(&mut advex()).arg("devices"));
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("XDG_RUNTIME_DIR"), "devices stderr:\n{err}");
    let dir = tempfile::tempdir().unwrap();
    let (code, _, err) = run(headless(&mut advex())
        .args(["attack", "--model", "weights/mnist_cnn.safetensors"])
        .args(["--images", "examples/digits/3/1900.png", "--eps", "0.1"])
        .arg("--report")
        .arg(dir.path().join("r.json"))
        .current_dir(root()));
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("XDG_RUNTIME_DIR"), "attack stderr:\n{err}");
}

/// An `advex` copied out of the source tree (as `cargo install` or a container
/// image does) carries its default model and runs from any folder.
#[test]
fn copied_binary_runs_anywhere_with_the_bundled_model() {
    let dir = tempfile::tempdir().unwrap();
    let exe = dir.path().join("advex");
    std::fs::copy(env!("CARGO_BIN_EXE_advex"), &exe).unwrap();
    let copied = || {
        let mut c = Command::new(&exe);
        c.env("ADVEX_TUNE_CACHE", "off").current_dir("/");
        c
    };
    let (code, out, err) = run(copied().arg("info"));
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("efficientnet_lite0") && out.contains("1000"),
        "{out}"
    );
    let (code, out, err) = run(copied().arg("--help"));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("attack"), "{out}");
    let (_, help, _) = run(copied().args(["attack", "--help"]));
    assert!(
        help.contains("bundled EfficientNet-Lite0") && !help.contains("weights/"),
        "--model's default must not be a path into the source tree:\n{help}"
    );
    let report = dir.path().join("r.json");
    let (code, out, err) = run(copied()
        .args(["attack", "--no-tune", "--eps", "1/255", "--images"])
        .arg(root().join("examples/photos/chelsea.png"))
        .arg("--report")
        .arg(&report));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("FGSM on 1 image "), "{out}");
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(v["model"]["name"], "efficientnet_lite0");
    assert_eq!(v["model"]["path"], advex::BUNDLED_MODEL_NAME);
    assert_eq!(v["model"]["classes"], 1000);
    // a model path that does not resolve from here says where it looked and what to do
    let (code, _, err) = run(copied().args(["info", "--model", "weights/mnist_cnn.safetensors"]));
    assert_eq!(code, 1);
    assert!(
        err.contains("looked for in /") && err.contains("leave out --model"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn model_errors_say_what_to_do() {
    let (code, _, err) = run(advex()
        .args(["info", "--model", "/no/such/model.safetensors"])
        .current_dir(root()));
    assert_eq!(code, 1);
    assert!(
        err.contains("/no/such/model.safetensors") && err.contains("no such file"),
        "{err}"
    );
    let (code, _, err) = run(advex()
        .args(["info", "--model", "weights"])
        .current_dir(root()));
    assert_eq!(code, 1);
    assert!(err.contains("folder"), "{err}");
    let (code, _, err) = run(advex()
        .args([
            "eval",
            "--model",
            "nope.onnx",
            "--images",
            "examples/photos",
        ])
        .current_dir(root()));
    assert_eq!(code, 1);
    assert!(err.contains("no such file"), "{err}");
}

/// The name of a software adapter wgpu offers here, if any.
fn software_adapter() -> Option<String> {
    advex::gpu::list_adapters()
        .iter()
        .map(advex::gpu::describe_adapter)
        .find(|a| a.device_type == "CPU (software)")
        .map(|a| a.name)
}

#[test]
fn require_gpu_refuses_a_software_adapter() {
    let Some(soft) = software_adapter() else {
        eprintln!("no software adapter here: nothing to refuse");
        return;
    };
    let digits = [
        "--model",
        "weights/mnist_cnn.safetensors",
        "--images",
        "examples/digits/3",
    ];
    let (code, _, err) = run(advex()
        .args(["attack", "--require-gpu", "--adapter", &soft])
        .args(digits)
        .current_dir(root()));
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("software renderer")
            && err.contains(&soft)
            && err.contains("advex devices")
            && err.contains("Running on a cloud GPU"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    // the variable does the same, for eval and bench too
    let (code, _, err) = run(advex()
        .env("ADVEX_REQUIRE_GPU", "1")
        .args(["eval", "--adapter", &soft])
        .args(digits)
        .current_dir(root()));
    assert_eq!(code, 1);
    assert!(err.contains("software renderer"), "{err}");
    let (code, _, err) = run(advex()
        .args([
            "bench",
            "--require-gpu",
            "--adapter",
            &soft,
            "--batch-size",
            "1",
        ])
        .args(["--model", "weights/mnist_cnn.safetensors"])
        .current_dir(root()));
    assert_eq!(code, 1);
    assert!(err.contains("software renderer"), "{err}");
    // without it the same adapter runs
    let (code, _, err) = run(advex()
        .env("ADVEX_REQUIRE_GPU", "0")
        .args(["eval", "--adapter", &soft])
        .args(digits)
        .current_dir(root()));
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = run(advex()
        .env("ADVEX_REQUIRE_GPU", "maybe")
        .args(["eval"])
        .args(digits)
        .current_dir(root()));
    assert_eq!(code, 1);
    assert!(err.contains("ADVEX_REQUIRE_GPU"), "{err}");
}

#[test]
fn devices_explains_what_it_sees() {
    let (code, out, err) = run(advex()
        .arg("devices")
        .env("NVIDIA_DRIVER_CAPABILITIES", "compute,utility"));
    assert_eq!(code, 0, "{err}");
    for line in [
        "Vulkan loader:",
        "Vulkan drivers (ICD files)",
        "GPU devices:",
        "VK_DRIVER_FILES=",
        "VK_ICD_FILENAMES=",
        "NVIDIA_DRIVER_CAPABILITIES=compute,utility",
        "WGPU_ADAPTER_NAME=",
    ] {
        assert!(out.contains(line), "devices lacks {line:?}:\n{out}");
    }
}

/// A fake machine: files under `root` laid out like `/`.
fn fake_machine(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (path, text) in files {
        let p = dir.path().join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }
    dir
}

const LOADER: (&str, &str) = ("usr/lib/x86_64-linux-gnu/libvulkan.so.1", "");
const LVP: (&str, &str) = (
    "usr/share/vulkan/icd.d/lvp_icd.x86_64.json",
    r#"{"file_format_version": "1.0.0", "ICD": {"library_path": "/usr/lib/x86_64-linux-gnu/libvulkan_lvp.so", "api_version": "1.3.230"}}"#,
);
const NVIDIA_ICD: (&str, &str) = (
    "usr/share/vulkan/icd.d/nvidia_icd.json",
    r#"{"file_format_version": "1.0.0", "ICD": {"library_path": "libGLX_nvidia.so.0", "api_version": "1.3.277"}}"#,
);

fn diagnose(files: &[(&str, &str)], vars: &[(&str, &str)]) -> advex::gpu::Diagnosis {
    let m = fake_machine(files);
    let vars: Vec<(String, String)> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let env = move |k: &str| vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    advex::gpu::Diagnosis::gather_under(m.path(), &env)
}

#[test]
fn diagnosis_names_the_cause_of_a_software_fallback() {
    // an NVIDIA container started without the graphics capability
    let d = diagnose(
        &[LOADER, LVP, ("dev/nvidia0", ""), ("dev/nvidiactl", "")],
        &[("NVIDIA_DRIVER_CAPABILITIES", "compute,utility")],
    );
    assert_eq!(d.gpus().count(), 1, "{d:?}");
    let a = d.advice().unwrap();
    assert!(
        a.contains("NVIDIA_DRIVER_CAPABILITIES=compute,utility")
            && a.contains("compute,utility,graphics"),
        "{a}"
    );
    // a host with the NVIDIA GPU but not the driver's Vulkan part
    let a = diagnose(&[LOADER, LVP, ("dev/nvidia0", "")], &[])
        .advice()
        .unwrap();
    assert!(a.contains("libnvidia-gl"), "{a}");
    // the ICD is there but the driver offered nothing
    let d = diagnose(&[LOADER, LVP, NVIDIA_ICD, ("dev/nvidia0", "")], &[]);
    assert_eq!(d.icds.len(), 2);
    assert!(d.icds.iter().any(|i| i.driver == "NVIDIA"), "{d:?}");
    assert!(d.advice().unwrap().contains("VK_LOADER_DEBUG"));
    // an AMD render node with no Mesa Vulkan driver
    let a = diagnose(
        &[
            LOADER,
            LVP,
            ("dev/dri/renderD128", ""),
            ("sys/class/drm/renderD128/device/vendor", "0x1002\n"),
        ],
        &[],
    )
    .advice()
    .unwrap();
    assert!(
        a.contains("AMD") && a.contains("mesa-vulkan-drivers"),
        "{a}"
    );
    // a virtual GPU's render node is no reason to warn
    let d = diagnose(
        &[
            LOADER,
            LVP,
            ("dev/dri/renderD128", ""),
            ("sys/class/drm/renderD128/device/vendor", "0x1af4\n"),
        ],
        &[],
    );
    assert_eq!(d.gpu_nodes.len(), 1);
    assert_eq!(d.advice(), None);
    // VK_DRIVER_FILES that hides every GPU driver
    let d = diagnose(
        &[LOADER, LVP, NVIDIA_ICD, ("dev/nvidia0", "")],
        &[(
            "VK_DRIVER_FILES",
            "/usr/share/vulkan/icd.d/lvp_icd.x86_64.json",
        )],
    );
    assert_eq!(d.icds.len(), 1);
    assert!(d.advice().unwrap().contains("unset it"));
    // no loader at all
    let a = diagnose(&[LVP], &[]).advice().unwrap();
    assert!(a.contains("libvulkan1"), "{a}");
    // a plain CPU machine with lavapipe: nothing to fix
    assert_eq!(diagnose(&[LOADER, LVP], &[]).advice(), None);
}

/// `tools/setup.sh --check` on a fake machine: exit code and message.
fn setup_check(files: &[(&str, &str)], vars: &[(&str, &str)]) -> (i32, String) {
    let m = fake_machine(files);
    let mut cmd = Command::new("bash");
    cmd.arg(root().join("tools/setup.sh"))
        .arg("--check")
        .env("ADVEX_SETUP_ROOT", m.path())
        .env("HOME", "/nonexistent");
    for k in [
        "VK_DRIVER_FILES",
        "VK_ICD_FILENAMES",
        "VK_ADD_DRIVER_FILES",
        "XDG_CONFIG_DIRS",
        "XDG_DATA_DIRS",
        "LD_LIBRARY_PATH",
        "ADVEX_SOFTWARE_VULKAN",
    ] {
        cmd.env_remove(k);
    }
    cmd.envs(vars.iter().copied());
    let (code, _, err) = run(&mut cmd);
    (code, err)
}

#[test]
fn setup_installs_only_where_no_driver_exists() {
    // a driver and the loader: nothing to do, nothing said
    assert_eq!(
        setup_check(&[LOADER, NVIDIA_ICD, ("dev/nvidia0", "")], &[]),
        (0, String::new())
    );
    assert_eq!(setup_check(&[LOADER, LVP], &[]), (0, String::new()));
    // nothing at all: lavapipe would be installed
    let (code, err) = setup_check(&[], &[]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("mesa-vulkan-drivers"), "{err}");
    // an NVIDIA GPU without its Vulkan driver: told what to fix, nothing installed
    let (code, err) = setup_check(&[("dev/nvidia0", "")], &[]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("NVIDIA_DRIVER_CAPABILITIES"), "{err}");
    let (code, _) = setup_check(&[("dev/nvidia0", "")], &[("ADVEX_SOFTWARE_VULKAN", "1")]);
    assert_eq!(code, 3);
    // a driver without the loader: told, nothing installed
    let (code, err) = setup_check(&[NVIDIA_ICD], &[]);
    assert_eq!(code, 1);
    assert!(err.contains("libvulkan1"), "{err}");
}

#[test]
fn png_compression_changes_size_not_pixels() {
    let dir = tempfile::tempdir().unwrap();
    let mut sizes = Vec::new();
    for level in ["fast", "best"] {
        let out = dir.path().join(level);
        let (code, _, err) = run(advex()
            .args(["attack", "-q", "--model", "weights/mnist_cnn.safetensors"])
            .args([
                "--images",
                "examples/digits/3",
                "--eps",
                "0.1",
                "--png-compression",
                level,
            ])
            .arg("--out")
            .arg(&out)
            .current_dir(root()));
        assert_eq!(code, 0, "{err}");
        let mut total = 0;
        for e in std::fs::read_dir(out.join("eps_0.1")).unwrap() {
            total += e.unwrap().metadata().unwrap().len();
        }
        sizes.push(total);
    }
    assert!(
        sizes[1] < sizes[0],
        "best {} vs fast {} bytes",
        sizes[1],
        sizes[0]
    );
    for e in std::fs::read_dir(dir.path().join("fast/eps_0.1")).unwrap() {
        let name = e.unwrap().file_name();
        let a = image::open(dir.path().join("fast/eps_0.1").join(&name)).unwrap();
        let b = image::open(dir.path().join("best/eps_0.1").join(&name)).unwrap();
        assert_eq!(a.as_bytes(), b.as_bytes(), "{name:?}");
    }
}

/// A write that fails half-way (here: the file size limit, as a full disk would)
/// is reported, and leaves no partial PNG or shard and no temporary file.
#[test]
fn failed_writes_leave_no_partial_outputs() {
    let dir = tempfile::tempdir().unwrap();
    for (format, blocks) in [("png", 1), ("webdataset", 20), ("safetensors", 20)] {
        let out = dir.path().join(format);
        let script = format!("ulimit -f {blocks}; trap '' XFSZ; exec \"$0\" \"$@\"",);
        let (code, _, err) = run(Command::new("sh")
            .args(["-c", &script, env!("CARGO_BIN_EXE_advex")])
            .args([
                "attack",
                "-q",
                "--no-tune",
                "--model",
                "weights/mnist_cnn.safetensors",
            ])
            .args([
                "--images",
                "examples/digits",
                "--eps",
                "0.1",
                "--shard-size",
                "30",
            ])
            .args(["--format", format])
            .arg("--out")
            .arg(&out)
            .env("ADVEX_TUNE_CACHE", "off")
            .current_dir(root()));
        assert_eq!(code, 1, "{format}: {err}");
        assert!(err.contains("File too large"), "{format}: {err}");
        assert!(!err.contains("panicked"), "{err}");
        let mut left = Vec::new();
        let mut stack = vec![out.clone()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p);
                } else {
                    left.push(p);
                }
            }
        }
        for p in &left {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            assert!(
                !name.ends_with(".tmp"),
                "{format}: temporary file left: {}",
                p.display()
            );
            // whatever images are there are complete
            if !p.strip_prefix(&out).unwrap().starts_with("eps_0.1") {
                continue;
            }
            match format {
                "png" => {
                    image::open(p).unwrap();
                }
                "webdataset" => {
                    let mut a = tar::Archive::new(std::fs::File::open(p).unwrap());
                    assert_eq!(a.entries().unwrap().count(), 90, "{}", p.display());
                }
                _ => {
                    let bytes = std::fs::read(p).unwrap();
                    safetensors::SafeTensors::deserialize(&bytes).unwrap();
                }
            }
        }
    }
}

/// An attack on the bundled digits into `out`, sharded by 10.
fn digits_attack(out: &std::path::Path) -> Command {
    digits_attack_eps(out, "0.1,1/255")
}

fn digits_attack_eps(out: &std::path::Path, eps: &str) -> Command {
    let mut c = advex();
    c.args([
        "attack",
        "-q",
        "--no-tune",
        "--model",
        "weights/mnist_cnn.safetensors",
    ])
    .args([
        "--images",
        "examples/digits",
        "--eps",
        eps,
        "--shard-size",
        "10",
    ])
    .arg("--out")
    .arg(out)
    .current_dir(root());
    for k in [
        "SLURM_ARRAY_TASK_ID",
        "JOB_COMPLETION_INDEX",
        "AWS_BATCH_JOB_ARRAY_INDEX",
        "BATCH_TASK_INDEX",
        "RANK",
    ] {
        c.env_remove(k);
    }
    c
}

/// The run's merged outputs, timing aside.
fn merged(out: &std::path::Path) -> (String, serde_json::Value) {
    let csv = std::fs::read_to_string(out.join("predictions.csv")).unwrap();
    let mut report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    report.as_object_mut().unwrap().remove("timing");
    (csv, report)
}

#[test]
fn split_runs_merge_to_the_unsplit_run() {
    let dir = tempfile::tempdir().unwrap();
    let one = dir.path().join("one");
    let (code, _, err) = run(&mut digits_attack(&one));
    assert_eq!(code, 0, "{err}");
    let want = merged(&one);
    assert_eq!(want.0.lines().count(), 1 + 100 * 3);

    // three workers, by flag and by two engines' variables
    let split = dir.path().join("split");
    let (code, _, err) = run(digits_attack(&split).args(["--worker", "0/3"]));
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("left to other workers"), "{err}");
    // a retried task whose share is done exits 0 and does nothing
    let (code, out, err) = run(digits_attack(&split).args(["--worker", "0/3"]));
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("committed already") && out.contains("FGSM on 40 images"),
        "{err}\n{out}"
    );
    let (code, _, err) = run(digits_attack(&split)
        .env("SLURM_ARRAY_TASK_ID", "1")
        .env("SLURM_ARRAY_TASK_COUNT", "3")
        .env("SLURM_ARRAY_TASK_MIN", "0"));
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = run(advex().args(["merge"]).arg(&split));
    assert_eq!(
        code, 1,
        "a merge before every shard is in lists the missing ones"
    );
    assert!(
        err.contains("not committed yet") && err.contains("shards 2, 5, 8"),
        "{err}"
    );
    let (code, _, err) = run(digits_attack(&split)
        .env("JOB_COMPLETION_INDEX", "2")
        .env("ADVEX_WORKERS", "3"));
    assert_eq!(code, 0, "{err}");
    // the last worker merged; `advex merge` writes the same again
    assert_eq!(merged(&split), want);
    std::fs::remove_file(split.join("report.json")).unwrap();
    let (code, out, err) = run(advex().args(["merge"]).arg(&split));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("merged 100 images"), "{out}");
    assert_eq!(merged(&split), want);
    let markers: Vec<serde_json::Value> = (0..10)
        .map(|u| {
            let p = split.join(format!("shards/shard-{u:06}.json"));
            serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
        })
        .collect();
    assert_eq!(markers[1]["worker"]["engine"], "slurm");
    assert_eq!(markers[2]["worker"]["engine"], "kubernetes");
    assert_eq!(markers[3]["worker"]["engine"], "--worker");

    // a damaged marker (a crash of an old version, a hand edit) is redone, not trusted
    std::fs::write(
        split.join("shards/shard-000004.json"),
        b"{\"shard\": 4, \"images\"",
    )
    .unwrap();
    std::fs::write(split.join("shards/shard-000007.json"), b"{}").unwrap();
    let (code, _, err) = run(&mut digits_attack(&split));
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("damaged"), "{err}");
    assert_eq!(merged(&split), want);
    // merge of a folder that is no run
    let (code, _, err) = run(advex().args(["merge"]).arg(dir.path()));
    assert_eq!(code, 1);
    assert!(err.contains("not an advex run"), "{err}");

    // a rerun with other settings is refused and says what differs
    let (code, _, err) = run(&mut digits_attack_eps(&split, "0.2"));
    assert_eq!(code, 1);
    assert!(
        err.contains("other settings") && err.contains("eps"),
        "{err}"
    );
    // variables of two engines at once
    let (code, _, err) = run(digits_attack(&split)
        .env("RANK", "0")
        .env("WORLD_SIZE", "2")
        .env("BATCH_TASK_INDEX", "0")
        .env("BATCH_TASK_COUNT", "2"));
    assert_eq!(code, 1);
    assert!(err.contains("several engines"), "{err}");
}

/// Workers killed at random moments and rerun until done, and two workers
/// racing on the same shards, end with what one uninterrupted run writes.
#[test]
fn killed_and_racing_workers_lose_and_duplicate_nothing() {
    use std::time::Duration;
    let dir = tempfile::tempdir().unwrap();
    let one = dir.path().join("one");
    let (code, _, err) = run(digits_attack(&one).args(["--format", "webdataset"]));
    assert_eq!(code, 0, "{err}");
    let want = merged(&one);

    let out = dir.path().join("killed");
    let mut s: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut kills = 0;
    for attempt in 0..40 {
        let mut child = digits_attack(&out)
            .args(["--format", "webdataset"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        let delay = Duration::from_millis(50 + s % 400);
        std::thread::sleep(delay);
        match child.try_wait().unwrap() {
            Some(status) => {
                assert!(status.success(), "attempt {attempt}: {status}");
                break;
            }
            None => {
                child.kill().unwrap(); // SIGKILL
                child.wait().unwrap();
                kills += 1;
            }
        }
    }
    // finish whatever is left
    let (code, _, err) = run(digits_attack(&out).args(["--format", "webdataset"]));
    assert_eq!(code, 0, "{err}");
    eprintln!("{kills} kills");
    assert_eq!(merged(&out), want);
    let mut files: Vec<String> = Vec::new();
    for d in ["eps_0.1", "eps_1_255", "shards"] {
        for e in std::fs::read_dir(out.join(d)).unwrap() {
            files.push(format!("{d}/{}", e.unwrap().file_name().to_string_lossy()));
        }
    }
    files.sort();
    assert!(files.iter().all(|f| !f.ends_with(".tmp")), "{files:?}");
    assert_eq!(files.len(), 10 + 10 + 20, "{files:?}");
    for u in 0..10 {
        for d in ["eps_0.1", "eps_1_255"] {
            let p = out.join(format!("{d}/shard-{u:06}.tar"));
            let mut a = tar::Archive::new(std::fs::File::open(&p).unwrap());
            assert_eq!(a.entries().unwrap().count(), 30, "{}", p.display());
        }
    }

    // two processes on the same share at once (an index started twice)
    let race = dir.path().join("race");
    let quiet = |c: &mut Command| {
        c.arg("--worker")
            .arg("0/1")
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    let mut a = quiet(&mut digits_attack(&race));
    let mut b = quiet(&mut digits_attack(&race));
    assert!(a.wait().unwrap().success() && b.wait().unwrap().success());
    let (code, _, err) = run(advex().args(["merge"]).arg(&race));
    assert_eq!(code, 0, "{err}");
    let (csv, report) = merged(&race);
    assert_eq!((csv, report), (want.0.clone(), want.1.clone()));
}

/// Every file under `dir` but the run's bookkeeping, by relative path.
fn output_files(dir: &std::path::Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    let mut files = std::collections::BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(dir).unwrap().to_string_lossy().to_string();
            if p.is_dir() {
                if rel != "shards" {
                    stack.push(p);
                }
            } else if rel.starts_with("eps_") {
                files.insert(rel, std::fs::read(&p).unwrap());
            }
        }
    }
    files
}

/// `--devices` with two and three devices (several devices on the one
/// llvmpipe adapter) writes what one device writes: predictions, report and
/// every image, with batches (8) that straddle shards (10).
#[test]
fn several_devices_write_what_one_device_writes() {
    let dir = tempfile::tempdir().unwrap();
    let one = dir.path().join("one");
    let (code, _, err) = run(digits_attack(&one).args(["--batch-size", "8"]));
    assert_eq!(code, 0, "{err}");
    let want = merged(&one);
    let want_files = output_files(&one);
    assert_eq!(want_files.len(), 200);
    for (devices, count) in [("0,0", 2), ("0,0,0", 3)] {
        let out = dir.path().join(format!("devices{count}"));
        let (code, _, err) =
            run(digits_attack(&out).args(["--batch-size", "8", "--devices", devices]));
        assert_eq!(code, 0, "{err}");
        let (csv, mut report) = merged(&out);
        let listed = report.as_object_mut().unwrap().remove("devices").unwrap();
        assert_eq!(listed.as_array().unwrap().len(), count, "{listed}");
        assert_eq!((csv, report), want, "--devices {devices}");
        assert!(
            output_files(&out) == want_files,
            "--devices {devices}: images differ"
        );
    }

    // eval: the same predictions, in the same order
    let eval = |devices: Option<&str>, csv: &std::path::Path| {
        let mut c = advex();
        c.args([
            "eval",
            "-q",
            "--no-tune",
            "--model",
            "weights/mnist_cnn.safetensors",
        ])
        .args([
            "--images",
            "examples/digits",
            "--batch-size",
            "7",
            "--predictions",
        ])
        .arg(csv)
        .current_dir(root());
        if let Some(d) = devices {
            c.args(["--devices", d]);
        }
        let (code, _, err) = run(&mut c);
        assert_eq!(code, 0, "{err}");
        std::fs::read_to_string(csv).unwrap()
    };
    let single = eval(None, &dir.path().join("e1.csv"));
    assert_eq!(single.lines().count(), 101);
    assert_eq!(eval(Some("all"), &dir.path().join("e2.csv")), single);
    assert_eq!(eval(Some("0,0"), &dir.path().join("e3.csv")), single);

    // bad choices say what to do
    let (code, _, err) = run(advex()
        .args([
            "eval",
            "--model",
            "weights/mnist_cnn.safetensors",
            "--images",
            "examples/digits",
        ])
        .args(["--devices", "0,9"])
        .current_dir(root()));
    assert_eq!(code, 1);
    assert!(err.contains("no adapter 9") && err.contains("0: "), "{err}");
    let (code, _, err) = run(advex()
        .args([
            "eval",
            "--model",
            "weights/mnist_cnn.safetensors",
            "--images",
            "examples/digits",
        ])
        .args(["--devices", "no-such-gpu"])
        .current_dir(root()));
    assert_eq!(code, 1);
    assert!(err.contains("no adapter's name contains"), "{err}");
    let (code, _, err) = run(advex()
        .args([
            "eval",
            "--images",
            "examples/digits",
            "--devices",
            "all",
            "--adapter",
            "x",
        ])
        .current_dir(root()));
    assert_eq!(code, 1);
    assert!(
        err.contains("--adapter") && err.contains("--devices"),
        "{err}"
    );
}

/// `--method bim,pgd`: a cascade reports robust accuracy after each attack
/// (the first equal to bim alone, never rising, the last the worst case the
/// table describes), names the attack behind each row, and a comma list with
/// a flag one of its attacks refuses is an error before any work.
#[test]
fn cascades_report_each_attack_and_the_worst_case() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("cascade");
    let (code, _, err) =
        run(digits_attack_eps(&out, "0.1,0.2").args(["--method", "bim,pgd", "--steps", "3"]));
    assert_eq!(code, 0, "{err}");
    let (csv, report) = merged(&out);
    assert_eq!(report["method"], "bim,pgd");
    assert_eq!(report["cascade"], serde_json::json!(["bim", "pgd"]));
    let alone = dir.path().join("bim");
    let (code, _, err) =
        run(digits_attack_eps(&alone, "0.1,0.2").args(["--method", "bim", "--steps", "3"]));
    assert_eq!(code, 0, "{err}");
    let (_, bim) = merged(&alone);
    for (e, stats) in report["epsilons"].as_array().unwrap().iter().enumerate() {
        let after: Vec<f64> = stats["robust_accuracy_after"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        assert_eq!(after.len(), 2);
        assert!(after[1] <= after[0], "robust accuracy rose: {after:?}");
        assert_eq!(after[1], stats["accuracy"].as_f64().unwrap());
        assert_eq!(after[0], bim["epsilons"][e]["accuracy"].as_f64().unwrap());
    }
    let methods: std::collections::BTreeSet<&str> = csv
        .lines()
        .skip(1)
        .map(|l| l.split(',').nth(2).unwrap())
        .collect();
    assert!(
        methods.iter().all(|m| ["clean", "bim", "pgd"].contains(m)),
        "{methods:?}"
    );
    assert!(methods.contains("bim"));
    let (code, _, err) = run(digits_attack_eps(&dir.path().join("bad"), "0.1").args([
        "--method",
        "bim,pgd",
        "--restarts",
        "2",
    ]));
    assert_eq!(code, 1);
    assert!(
        err.contains("--restarts") && err.contains("cascade bim,pgd"),
        "{err}"
    );
}

/// `--leaderboard`: one entry with RobustBench's model-zoo fields and types
/// (accuracies as percent text), the float robust accuracy equal to a run
/// that does not round, the 8-bit one the report's, the passes spent; hand
/// filled fields of an existing entry kept, measured ones replaced; `advex
/// merge --leaderboard` writes the same entry; bad requests refused first.
#[test]
fn leaderboard_entry_follows_the_model_zoo_and_the_runs() {
    let dir = tempfile::tempdir().unwrap();
    let entry_path = dir.path().join("entry.json");
    std::fs::write(
        &entry_path,
        r#"{"link": "https://example.org/paper", "authors": "A. Person", "clean_acc": "1.00"}"#,
    )
    .unwrap();
    let attack = |out: &str, extra: &[&str]| {
        let mut c = digits_attack_eps(&dir.path().join(out), "0.1");
        c.args(["--method", "apgd-ce,square", "--steps", "4"])
            .args(extra);
        c
    };
    let lb = entry_path.to_str().unwrap();
    let (code, _, err) = run(&mut attack(
        "rounded",
        &[
            "--leaderboard",
            lb,
            "--leaderboard-field",
            "architecture=SmallCNN",
            "--leaderboard-field",
            "additional_data=false",
        ],
    ));
    assert_eq!(code, 0, "{err}");
    let entry: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&entry_path).unwrap()).unwrap();
    let (_, report) = merged(&dir.path().join("rounded"));
    let (code, _, err) = run(&mut attack("float", &["--no-quantize"]));
    assert_eq!(code, 0, "{err}");
    let (_, float) = merged(&dir.path().join("float"));

    let pct = |v: &serde_json::Value| format!("{:.2}", v.as_f64().unwrap() * 100.0);
    let e0 = &report["epsilons"][0];
    assert_eq!(entry["link"], "https://example.org/paper");
    assert_eq!(entry["authors"], "A. Person");
    assert_eq!(entry["architecture"], "SmallCNN");
    assert_eq!(entry["additional_data"], false);
    assert_eq!(entry["dataset"], "digits");
    assert_eq!(entry["name"], report["model"]["name"]);
    assert_eq!(entry["threat_model"], "Linf");
    assert_eq!(entry["eps"], "0.1");
    assert_eq!(entry["n_examples"], 100);
    assert_eq!(entry["clean_acc"], pct(&report["clean"]["accuracy"]));
    assert_ne!(entry["clean_acc"], "1.00");
    assert_eq!(entry["autoattack_acc_8bit"], pct(&e0["robust_accuracy"]));
    assert_eq!(
        entry["autoattack_acc"],
        pct(&float["epsilons"][0]["robust_accuracy"]),
        "float robust accuracy as a run that does not round"
    );
    assert_eq!(
        pct(&e0["robust_accuracy_float"]),
        entry["autoattack_acc"].as_str().unwrap()
    );
    for k in ["clean_acc", "autoattack_acc", "autoattack_acc_8bit"] {
        let t = entry[k].as_str().unwrap();
        let v: f64 = t.parse().unwrap();
        assert!(
            (0.0..=100.0).contains(&v) && t.split('.').nth(1).unwrap().len() == 2,
            "{k}: {t}"
        );
    }
    assert_eq!(entry["attacks"], serde_json::json!(["apgd-ce", "square"]));
    assert_eq!(entry["version"], "custom");
    assert_eq!(entry["number_forward_passes"], 1);
    let (f, b) = (
        entry["passes"]["forward"].as_u64().unwrap(),
        entry["passes"]["backward"].as_u64().unwrap(),
    );
    assert_eq!(report["passes"]["forward"].as_u64(), Some(f));
    // every digit ran apgd-ce's gradients; square only forwards, on fewer
    assert!(
        b > 0 && b % 100 == 0 && f > b,
        "passes {f} forward, {b} backward"
    );

    // merge writes the same entry (its timing aside)
    let again = dir.path().join("again.json");
    let (code, out, err) = run(advex()
        .args(["merge"])
        .arg(dir.path().join("rounded"))
        .arg("--leaderboard")
        .arg(&again)
        .args(["--leaderboard-field", "architecture=SmallCNN"]));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("leaderboard entry"), "{out}");
    let mut second: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&again).unwrap()).unwrap();
    let mut first = entry.clone();
    for e in [&mut first, &mut second] {
        let m = e.as_object_mut().unwrap();
        for k in ["seconds", "link", "authors", "additional_data"] {
            m.remove(k);
        }
    }
    assert_eq!(first, second);

    // refused before any work, the file untouched
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, "not json").unwrap();
    let b = bad.to_str().unwrap();
    for (extra, want) in [
        (vec!["--leaderboard", b], "not a JSON object"),
        (
            vec!["--leaderboard", lb, "--leaderboard-field", "clean_acc=99"],
            "measures",
        ),
        (vec!["--leaderboard", lb, "--eps", "0.2"], "one eps"),
        (vec!["--leaderboard", lb, "--target", "3"], "--target"),
    ] {
        let mut c = attack("refused", &extra);
        if extra.contains(&"--eps") {
            c = advex();
            c.args([
                "attack",
                "-q",
                "--no-tune",
                "--model",
                "weights/mnist_cnn.safetensors",
            ])
            .args(["--images", "examples/digits", "--eps", "0.1,0.2"])
            .args(["--leaderboard", lb])
            .current_dir(root());
        }
        let (code, _, err) = run(&mut c);
        assert_eq!(code, 1, "{extra:?}");
        assert!(err.contains(want), "{extra:?}: {err}");
    }
    assert_eq!(std::fs::read_to_string(&bad).unwrap(), "not json");
    assert!(!dir.path().join("refused").exists());
}

/// `--minimal`: a `min_eps` column (empty on clean rows), the median and
/// histogram in the report, and several eps refused before any work.
#[test]
fn minimal_writes_min_eps_column_and_histogram() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("minimal");
    let (code, _, err) = run(digits_attack_eps(&out, "24/255").args([
        "--method",
        "bim",
        "--steps",
        "2",
        "--minimal",
    ]));
    assert_eq!(code, 0, "{err}");
    let (csv, report) = merged(&out);
    let mut lines = csv.lines();
    assert!(lines.next().unwrap().ends_with(",min_eps"));
    let mut levels = 0;
    for l in lines {
        let cell = l.rsplit(',').next().unwrap();
        if l.contains(",clean,") {
            assert_eq!(cell, "");
        } else if !cell.is_empty() {
            let k = cell.parse::<f64>().unwrap() * 255.0;
            assert!((k - k.round()).abs() < 1e-6 && k.round() <= 24.0, "{l}");
            levels += 1;
        }
    }
    let m = &report["epsilons"][0]["min_eps"];
    let hist: u64 = m["histogram"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(m["histogram"].as_array().unwrap().len(), 24);
    assert!(hist > 0 && hist <= levels);
    let (code, _, err) =
        run(digits_attack_eps(&dir.path().join("bad"), "1/255,2/255").args(["--minimal"]));
    assert_eq!(code, 1);
    assert!(err.contains("--minimal"), "{err}");
}

/// `--gallery`: a PNG with one row per picked image and three tiles per eps
/// beyond the clean one; picking paths that were not attacked is an error.
#[test]
fn gallery_draws_a_contact_sheet() {
    let dir = tempfile::tempdir().unwrap();
    let sheet = dir.path().join("sheet.png");
    let base = |c: &mut Command| {
        c.args([
            "attack",
            "-q",
            "--no-tune",
            "--model",
            "weights/mnist_cnn.safetensors",
        ])
        .args([
            "--images",
            "examples/digits",
            "--eps",
            "0.1,0.2",
            "--method",
            "bim",
        ])
        .current_dir(root());
    };
    let mut c = advex();
    base(&mut c);
    let (code, _, err) = run(c
        .arg("--gallery")
        .arg(&sheet)
        .args(["--gallery-images", "3/1900.png,7/3900.png"]));
    assert_eq!(code, 0, "{err}");
    let img = image::open(&sheet).unwrap().to_rgb8();
    // 1 + 2 * 2 tiles of 112 px (28 px digits, enlarged 4x) and their gaps
    assert_eq!(img.width(), 6 + 5 * (112 + 6));
    assert!(img.height() > 2 * 112);
    let mut c = advex();
    base(&mut c);
    let (code, _, err) = run(c
        .arg("--gallery")
        .arg(dir.path().join("none.png"))
        .args(["--gallery-images", "no/such.png"]));
    assert_eq!(code, 1);
    assert!(err.contains("--gallery-images"), "{err}");
    assert!(!dir.path().join("none.png").exists());
}

/// `advex verify DIR`: exit 0 on an intact run; a damaged output makes it
/// exit 1 naming the file; a rerun redoes the shard, says nothing was left
/// only when that is true, and the run verifies again.
#[test]
fn verify_checks_a_run_and_a_rerun_repairs_it() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let attack = || {
        run(advex()
            .args([
                "attack",
                "--quiet",
                "--model",
                "weights/mnist_cnn.safetensors",
                "--images",
                "examples/digits/3",
                "--eps",
                "0.1",
                "--shard-size",
                "4",
                "--out",
            ])
            .arg(&out)
            .current_dir(root()))
    };
    let verify = || run(advex().arg("verify").arg(&out));
    let (code, _, err) = attack();
    assert_eq!(code, 0, "{err}");
    let (code, stdout, err) = verify();
    assert_eq!(code, 0, "{err}");
    assert!(stdout.contains("is intact"), "{stdout}");
    // a rerun with nothing to do says so
    let (code, stdout, err) = attack();
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("already committed"), "{err}");
    assert!(stdout.contains("nothing left to attack"), "{stdout}");
    // an image cut short
    let png = walkdir::WalkDir::new(out.join("eps_0.1"))
        .into_iter()
        .flatten()
        .find(|e| e.file_type().is_file())
        .unwrap()
        .into_path();
    let bytes = std::fs::read(&png).unwrap();
    std::fs::write(&png, &bytes[..bytes.len() / 2]).unwrap();
    let (code, _, err) = verify();
    assert_eq!(code, 1, "{err}");
    let name = png.file_name().unwrap().to_string_lossy().into_owned();
    assert!(err.contains(&name) && err.contains("rerun"), "{err}");
    let (code, _, err) = attack();
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("will be redone"), "{err}");
    assert_eq!(std::fs::read(&png).unwrap(), bytes);
    let (code, _, err) = verify();
    assert_eq!(code, 0, "{err}");
}
