//! The host-pipeline benchmark (`advex bench --pipeline DIR`): how fast the CPU
//! side (finding, reading, decoding, resizing, uploading, reading back, encoding
//! and writing images) can feed the GPU.
//!
//! Two parts:
//! - **Stages**: each stage alone, on one thread, over a sample of the folder's
//!   images, as images per second per core (files are read from the page cache
//!   after the first pass). These say which stage limits the pipeline and how
//!   many cores it needs to keep up with a given GPU rate.
//! - **Host only**: the loader and the output writer of an 8-eps attack with
//!   no device work at all (the clean image stands in for the adversarial
//!   ones): the most images per second the host can feed and drain.
//! - **Runs**: whole `advex eval` / `advex attack` runs over the folder through
//!   the library, as a user runs them, with a near-free model (global average
//!   pooling and a linear layer on 3x224x224 with ImageNet preprocessing, so that
//!   almost all the time is host work), output into a scratch folder.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;

use crate::attack::parse_eps_list;
use crate::data::{
    decode_bytes, discover, encode_png, to_input, write_atomic, BatchLoader, OutputFormat,
    OutputSpec, OutputWriter, Preprocessor, Sample, DEFAULT_SHARD_SIZE,
};
use crate::error::{Error, Result};
use crate::gpu::Shape;
use crate::run::{run_attack, run_eval, RunOptions};
use crate::Context;

/// What `advex bench --pipeline` takes.
#[derive(Debug, Clone)]
pub struct PipelineOptions {
    /// A folder (or file) of images.
    pub images: PathBuf,
    /// The model of the end-to-end runs; `None`: the near-free probe model.
    pub model: Option<PathBuf>,
    /// Images timed per stage (the first ones by path).
    pub sample: usize,
    pub batch_size: Option<u32>,
    pub adapter: Option<String>,
    /// `--devices` for the whole runs (the stages use one device).
    pub devices: Option<String>,
    pub require_gpu: bool,
    /// Skip the end-to-end runs (stages only).
    pub stages_only: bool,
}

/// One stage alone on one thread.
#[derive(Debug, Clone, Serialize)]
pub struct StageResult {
    pub stage: String,
    pub images: usize,
    pub seconds: f64,
    /// Images per second on one core.
    pub per_core: f64,
}

/// One whole run.
#[derive(Debug, Clone, Serialize)]
pub struct RunResult {
    pub run: String,
    pub images: usize,
    /// The run's own timing (its report's `timing`): the image loop, without
    /// loading the model or opening the device.
    pub seconds: f64,
    pub images_per_second: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct PipelineReport {
    pub images: usize,
    pub cores: usize,
    pub adapter: String,
    pub model: String,
    pub stages: Vec<StageResult>,
    pub runs: Vec<RunResult>,
}

/// The probe model's preprocessing: ImageNet's resize 256, crop 224.
const PROBE_INPUT: Preprocessor = Preprocessor {
    channels: 3,
    height: 224,
    width: 224,
    resize: Some(256),
    filter: crate::data::Filter::Bilinear,
};

/// The near-free model: `[3, 224, 224]` -> global average pool -> linear(3, 1000),
/// ImageNet preprocessing (resize 256, crop 224, mean/std), seeded weights.
pub fn probe_model(path: &Path) -> Result<()> {
    let spec = serde_json::json!({
        "format": 1,
        "name": "pipeline_probe",
        "input": [3, 224, 224],
        "preprocess": {"resize": 256, "crop": 224, "interpolation": "bilinear",
                       "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
        "nodes": [
            {"name": "pool", "op": "global_avg_pool", "inputs": ["input"]},
            {"name": "flat", "op": "flatten", "inputs": ["pool"]},
            {"name": "fc", "op": "linear", "inputs": ["flat"], "weight": "fc.weight", "bias": "fc.bias"}
        ],
        "output": "fc"
    });
    let mut s = 0x2545_F491_4F6C_DD1Du64;
    let weight: Vec<f32> = (0..3000)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s % 2001) as f32 / 1000.0 - 1.0
        })
        .collect();
    let tensors = vec![
        ("fc.weight".to_string(), vec![1000, 3], weight),
        ("fc.bias".to_string(), vec![1000], vec![0.0; 1000]),
    ];
    crate::model::write_model(path, &spec, &tensors, crate::model::Dtype::F32)?;
    Ok(())
}

fn stage(name: &str, images: usize, seconds: f64) -> StageResult {
    StageResult {
        stage: name.to_string(),
        images,
        seconds,
        per_core: images as f64 / seconds.max(1e-9),
    }
}

/// Time each stage alone (see the module comment).
fn stages(opts: &PipelineOptions, scratch: &Path, ctx: &Context) -> Result<Vec<StageResult>> {
    let prep = PROBE_INPUT;
    let mut out = Vec::new();

    let t = Instant::now();
    let entries = discover(&opts.images)?.entries;
    out.push(stage("discover", entries.len(), t.elapsed().as_secs_f64()));
    let sample: Vec<_> = entries.iter().take(opts.sample.max(1)).collect();

    let t = Instant::now();
    let files: Vec<Vec<u8>> = sample.iter().map(|e| e.read()).collect::<Result<_>>()?;
    out.push(stage("read", files.len(), t.elapsed().as_secs_f64()));

    let t = Instant::now();
    let decoded: Vec<image::DynamicImage> = files
        .iter()
        .zip(&sample)
        .map(|(b, e)| decode_bytes(b, &e.path))
        .collect::<Result<_>>()?;
    out.push(stage("decode", decoded.len(), t.elapsed().as_secs_f64()));
    drop(files);

    let t = Instant::now();
    let inputs: Vec<Vec<f32>> = decoded
        .into_iter()
        .map(|img| to_input(img, &prep))
        .collect::<Result<_>>()?;
    out.push(stage(
        "resize/crop",
        inputs.len(),
        t.elapsed().as_secs_f64(),
    ));

    // Upload and readback: whole batches through the device's queue.
    let batch = inputs.len().min(32);
    let item = prep.numel();
    let pixels: Vec<f32> = inputs[..batch].concat();
    let shape = Shape::new(batch as u32, 3, 224, 224);
    let input = ctx.tensor(shape, "pipeline upload")?;
    let probe = ctx.tensor(Shape::new(1, 1, 1, 1), "pipeline sync")?;
    let rounds = (inputs.len() / batch).max(1);
    ctx.write(&input, &pixels);
    ctx.run_read_bytes(&[], &[&probe])?;
    let t = Instant::now();
    for _ in 0..rounds {
        ctx.write(&input, &pixels);
        ctx.run_read_bytes(&[], &[&probe])?;
    }
    out.push(stage("upload", rounds * batch, t.elapsed().as_secs_f64()));
    // 8-bit images come back as bytes: a quarter of the f32 input's size.
    let u8s = ctx.tensor(
        Shape::new(1, 1, 1, (batch * item / 4) as u32),
        "pipeline readback",
    )?;
    ctx.run_read_bytes(&[], &[&u8s])?;
    let t = Instant::now();
    for _ in 0..rounds {
        ctx.run_read_bytes(&[], &[&u8s])?;
    }
    out.push(stage("readback", rounds * batch, t.elapsed().as_secs_f64()));

    let chw: Vec<Vec<u8>> = inputs
        .iter()
        .map(|v| v.iter().map(|&x| (x * 255.0).round() as u8).collect())
        .collect();
    drop(inputs);
    let t = Instant::now();
    let pngs: Vec<Vec<u8>> = chw
        .iter()
        .map(|px| encode_png(px, 3, 224, 224))
        .collect::<Result<_>>()?;
    out.push(stage("encode png", pngs.len(), t.elapsed().as_secs_f64()));

    let dir = scratch.join("stage_write");
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let t = Instant::now();
    for (i, png) in pngs.iter().enumerate() {
        write_atomic(&dir.join(format!("{i:06}.png")), png)?;
    }
    out.push(stage("write", pngs.len(), t.elapsed().as_secs_f64()));
    let _ = std::fs::remove_dir_all(&dir);
    Ok(out)
}

/// The host side of an 8-eps attack alone, as if the GPU took no time: the
/// images are discovered, decoded and resized by the same loader, and each
/// clean image, rounded to 8 bits, stands in for all 8 adversarial ones in the
/// same writer. What the host can sustain, whatever the device.
fn host_only(
    opts: &PipelineOptions,
    dir: &Path,
    format: OutputFormat,
    eps_count: usize,
) -> Result<(usize, f64)> {
    let prep = PROBE_INPUT;
    let t = Instant::now();
    let entries = Arc::new(discover(&opts.images)?.entries);
    let eps = parse_eps_list(
        &(1..=eps_count)
            .map(|i| format!("{i}/255"))
            .collect::<Vec<_>>()
            .join(","),
    )?;
    let mut writer = OutputWriter::new(OutputSpec {
        dir: dir.to_path_buf(),
        format,
        shard_size: DEFAULT_SHARD_SIZE,
        eps,
        method: "fgsm".into(),
        shape: [3, 224, 224],
        png_compression: Default::default(),
    })?;
    let batch = opts.batch_size.unwrap_or(16) as usize;
    let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<Sample>>(2);
    let handle = std::thread::spawn(move || -> Result<()> {
        for samples in rx {
            writer.write(samples)?;
        }
        writer.finish_all()
    });
    let mut images = 0;
    for b in BatchLoader::new(entries.clone(), prep, batch, 2, false) {
        let b = b?;
        let item = prep.numel();
        let mut job = Vec::with_capacity(b.len() * eps_count);
        for (j, &idx) in b.indices.iter().enumerate() {
            let px: Vec<u8> = b.pixels[j * item..(j + 1) * item]
                .iter()
                .map(|&x| (x * 255.0).round() as u8)
                .collect();
            for e in 0..eps_count {
                job.push(Sample {
                    index: idx,
                    rel: entries[idx].rel.clone(),
                    label: 0,
                    clean_pred: 0,
                    adv_pred: 0,
                    adv_prob: 0.0,
                    eps: e,
                    pixels: px.clone(),
                });
            }
        }
        images += b.len();
        if tx.send(job).is_err() {
            break;
        }
    }
    drop(tx);
    handle
        .join()
        .map_err(|_| Error::Usage("the output writer thread panicked".into()))??;
    Ok((images, t.elapsed().as_secs_f64()))
}

/// Whole runs over the folder (see the module comment).
fn runs(opts: &PipelineOptions, scratch: &Path, model: &Path) -> Result<Vec<RunResult>> {
    let base = || {
        let mut o = RunOptions::new(model, &opts.images);
        o.batch_size = opts.batch_size;
        o.adapter = opts.adapter.clone();
        o.devices = opts.devices.clone();
        o.require_gpu = opts.require_gpu;
        o
    };
    let sweep = "1/255,2/255,3/255,4/255,5/255,6/255,7/255,8/255";
    let mut out = Vec::new();
    let mut push = |run: &str, images: usize, seconds: f64| {
        out.push(RunResult {
            run: run.to_string(),
            images,
            seconds,
            images_per_second: images as f64 / seconds.max(1e-9),
        })
    };
    for (name, format) in [
        ("host only, 8 eps, png", OutputFormat::Png),
        ("host only, 8 eps, webdataset", OutputFormat::WebDataset),
        ("host only, 8 eps, safetensors", OutputFormat::Safetensors),
    ] {
        let dir = scratch.join("host_only");
        let (images, seconds) = host_only(opts, &dir, format, 8)?;
        push(name, images, seconds);
        let _ = std::fs::remove_dir_all(&dir);
    }
    let (_, r) = run_eval(&base())?;
    push("eval", r.images, r.timing.seconds);
    let cases: [(&str, &str, Option<OutputFormat>); 5] = [
        ("attack, 1 eps", "4/255", None),
        ("attack, 1 eps, png", "4/255", Some(OutputFormat::Png)),
        ("attack, 8 eps, png", sweep, Some(OutputFormat::Png)),
        (
            "attack, 8 eps, webdataset",
            sweep,
            Some(OutputFormat::WebDataset),
        ),
        (
            "attack, 8 eps, safetensors",
            sweep,
            Some(OutputFormat::Safetensors),
        ),
    ];
    for (i, (name, eps, format)) in cases.into_iter().enumerate() {
        let mut o = base();
        o.eps = parse_eps_list(eps)?;
        let dir = scratch.join(format!("run{i}"));
        if let Some(f) = format {
            o.out = Some(dir.clone());
            o.format = f;
        }
        let r = run_attack(&o)?;
        push(name, r.images, r.timing.seconds);
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(out)
}

/// Run the benchmark; `scratch` receives the probe model and the outputs (and
/// is emptied of them afterwards).
pub fn run_pipeline(opts: &PipelineOptions, scratch: &Path) -> Result<PipelineReport> {
    std::fs::create_dir_all(scratch).map_err(|e| Error::io(scratch, e))?;
    let probe = scratch.join("pipeline_probe.safetensors");
    let model_path = match &opts.model {
        Some(p) => p.clone(),
        None => {
            probe_model(&probe)?;
            probe.clone()
        }
    };
    let model = crate::load_model(&model_path)?;
    let gpus = crate::run::open_gpus(
        &crate::run::DeviceOptions {
            adapter: opts.adapter.clone(),
            devices: opts.devices.clone(),
            require_gpu: opts.require_gpu,
            mixed: false,
        },
        Arc::new(model.clone()),
        crate::gpu::DType::F32,
    )?;
    let stages = stages(opts, scratch, &gpus[0].ctx)?;
    let adapter = super::devices_name(&gpus);
    drop(gpus);
    let runs = if opts.stages_only {
        Vec::new()
    } else {
        runs(opts, scratch, &model_path)?
    };
    let _ = std::fs::remove_file(&probe);
    Ok(PipelineReport {
        images: stages.first().map_or(0, |s| s.images),
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        adapter,
        model: model.name,
        stages,
        runs,
    })
}
