//! Whole runs over a folder of images: `advex attack` and `advex eval`.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::mpsc::sync_channel;
use std::sync::Arc;
use std::time::Instant;

use super::{Eps, EvalPlan, FgsmPlan, Pred, Target};
use crate::data::{
    assign_labels, discover, BatchLoader, ImageEntry, LabelSource, OutputFormat, OutputSpec,
    OutputWriter, PngCompression, Preprocessor, Sample, Skipped, DEFAULT_SHARD_SIZE,
};
use crate::error::{Error, Result};
use crate::gpu::DType;
use crate::model::Model;
use crate::plan::GpuModel;
use crate::report::{
    CleanStats, EpsAccumulator, ModelInfo, Observation, PredictionRow, PredictionWriter, Report,
    Timing,
};
use crate::{Context, ContextOptions};

/// The attack `advex attack` runs (the report's and the predictions' `method`).
const METHOD: &str = "fgsm";

/// How the attack's target is given on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetSpec {
    None,
    /// Class index or class name.
    Class(String),
    LeastLikely,
}

/// Everything `advex attack` (and `advex eval`, which ignores the attack fields) takes.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The model file; `None` runs the bundled EfficientNet-Lite0 ([`crate::BUNDLED_MODEL`]).
    pub model: Option<PathBuf>,
    pub images: PathBuf,
    pub labels: Option<PathBuf>,
    pub eps: Vec<Eps>,
    pub target: TargetSpec,
    pub out: Option<PathBuf>,
    /// How `out` is written (`--format`).
    pub format: OutputFormat,
    /// Images per output shard (`--shard-size`; webdataset and safetensors).
    pub shard_size: usize,
    /// `--png-compression` (png and webdataset).
    pub png_compression: PngCompression,
    pub overwrite: bool,
    pub report: Option<PathBuf>,
    pub plot: Option<PathBuf>,
    pub predictions: Option<PathBuf>,
    pub batch_size: Option<u32>,
    pub adapter: Option<String>,
    /// Storage type on the device (`--precision`; see [`GpuModel::with_precision`]).
    pub precision: DType,
    /// Autotune the convolutions at the batch size before running (measured
    /// choices are cached per adapter; see [`GpuModel::tune`]). The CLI turns it
    /// on unless `--no-tune`.
    pub tune: bool,
    pub quantize: bool,
    pub strict: bool,
    pub quiet: bool,
    /// Refuse a software adapter (see [`ContextOptions::require_gpu`]).
    pub require_gpu: bool,
}

impl RunOptions {
    pub fn new(model: impl Into<PathBuf>, images: impl Into<PathBuf>) -> Self {
        RunOptions {
            model: Some(model.into()),
            images: images.into(),
            labels: None,
            eps: Vec::new(),
            target: TargetSpec::None,
            out: None,
            format: OutputFormat::Png,
            shard_size: DEFAULT_SHARD_SIZE,
            png_compression: PngCompression::Fast,
            overwrite: false,
            report: None,
            plot: None,
            predictions: None,
            batch_size: None,
            adapter: None,
            precision: DType::F32,
            tune: false,
            quantize: true,
            strict: false,
            quiet: true,
            require_gpu: false,
        }
    }

    /// Options for the bundled model (`model` = `None`).
    pub fn bundled(images: impl Into<PathBuf>) -> Self {
        RunOptions {
            model: None,
            ..Self::new(PathBuf::new(), images)
        }
    }
}

/// Everything checked before any GPU work.
struct Prepared {
    model: Arc<Model>,
    entries: Arc<Vec<ImageEntry>>,
    labels: Vec<Option<u32>>,
    label_source: LabelSource,
    prep: Preprocessor,
    /// What discovery could not use (keys without an image, truncated shards).
    skipped: Vec<Skipped>,
}

fn prepare(opts: &RunOptions) -> Result<Prepared> {
    let model = Arc::new(crate::load_model_or_bundled(opts.model.as_deref())?);
    let found = discover(&opts.images)?;
    let entries = found.entries;
    let classes = model.classes.as_deref();
    let (labels, label_source) = assign_labels(
        &entries,
        opts.labels.as_deref(),
        classes,
        model.num_classes(),
    )?;
    let [c, h, w] = model.input;
    let prep = Preprocessor {
        channels: c,
        height: h,
        width: w,
        resize: model.preprocess.resize,
    };
    if let Some(out) = &opts.out {
        prepare_out_dir(out, opts.overwrite)?;
    }
    for p in [&opts.report, &opts.plot, &opts.predictions]
        .into_iter()
        .flatten()
    {
        check_writable_file(p)?;
    }
    Ok(Prepared {
        model,
        entries: Arc::new(entries),
        labels,
        label_source,
        prep,
        skipped: found.skipped,
    })
}

/// What discovery skipped, said once each (the report lists them too).
fn discovery_skips(prep: &Prepared) -> Vec<Skipped> {
    for s in &prep.skipped {
        eprintln!("warning: skipping {}: {}", s.image, s.reason);
    }
    prep.skipped.clone()
}

fn check_writable_file(path: &Path) -> Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if !dir.is_dir() {
        return Err(Error::Usage(format!(
            "cannot write {}: folder {} does not exist",
            path.display(),
            dir.display()
        )));
    }
    Ok(())
}

/// `--out` must be new or empty, or `--overwrite` clears its `eps_*` folders.
fn prepare_out_dir(out: &Path, overwrite: bool) -> Result<()> {
    if out.exists() {
        if !out.is_dir() {
            return Err(Error::Usage(format!(
                "--out {} is a file, not a folder",
                out.display()
            )));
        }
        let existing: Vec<_> = std::fs::read_dir(out)
            .map_err(|e| Error::io(out, e))?
            .flatten()
            .collect();
        if !existing.is_empty() {
            if !overwrite {
                return Err(Error::Usage(format!(
                    "--out {} already holds files; choose an empty folder or pass --overwrite to replace its eps_* folders",
                    out.display()
                )));
            }
            for e in existing {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with("eps_") && e.path().is_dir() {
                    std::fs::remove_dir_all(e.path()).map_err(|err| Error::io(e.path(), err))?;
                }
            }
        }
    }
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let probe = out.join(".advex-write-test");
    std::fs::write(&probe, b"")
        .map_err(|e| Error::Usage(format!("--out {} is not writable: {e}", out.display())))?;
    let _ = std::fs::remove_file(probe);
    Ok(())
}

fn resolve_target(spec: &TargetSpec, model: &Model) -> Result<Target> {
    Ok(match spec {
        TargetSpec::None => Target::Untargeted,
        TargetSpec::LeastLikely => Target::LeastLikely,
        TargetSpec::Class(s) => {
            let n = model.num_classes();
            if let Ok(i) = s.parse::<u32>() {
                if i >= n {
                    return Err(Error::Usage(format!(
                        "--target {i}: the model has {n} classes (0..{})",
                        n - 1
                    )));
                }
                Target::Class(i)
            } else {
                let pos = model
                    .classes
                    .as_ref()
                    .and_then(|c| c.iter().position(|name| name == s));
                Target::Class(pos.ok_or_else(|| {
                    Error::Usage(format!(
                        "--target {s:?} is neither a class index nor a class name of the model"
                    ))
                })? as u32)
            }
        }
    })
}

/// A batch size that fits the adapter: activations for backward, a forward
/// plan, and `eps_count` adversarial copies per image.
pub fn choose_batch_size(gpu: &GpuModel, eps_count: u32, images: usize) -> u32 {
    let ctx = &gpu.ctx;
    let input = gpu.input_shape(1).bytes();
    let per_image = gpu.bytes_per_image() + input * (eps_count as u64 + 1) * 2;
    let budget: u64 = if gpu.ctx.summary.device_type.starts_with("CPU") {
        1 << 30
    } else {
        6 << 30
    };
    let largest = gpu
        .model
        .nodes
        .iter()
        .map(|n| n.shape.bytes())
        .max()
        .unwrap_or(4)
        .max(input * eps_count as u64);
    let by_budget = budget / per_image.max(1);
    let by_binding = ctx.max_binding_bytes() / largest.max(1);
    let cap = if gpu.ctx.summary.device_type.starts_with("CPU") {
        32
    } else {
        128
    };
    (by_budget.min(by_binding).min(cap).min(images as u64).max(1)) as u32
}

fn open_gpu(opts: &RunOptions, model: Arc<Model>) -> Result<GpuModel> {
    let ctx = Arc::new(Context::new(ContextOptions {
        adapter: opts.adapter.clone(),
        require_gpu: opts.require_gpu,
        ..Default::default()
    })?);
    GpuModel::with_precision(ctx, model, opts.precision)
}

/// Half precision can overflow (f16 ends at 65504) on models with large
/// activations: their probabilities come out NaN. Say so, rather than report
/// nonsense. In f32 a NaN is the model's own and passes through.
fn check_finite<'a>(gpu: &GpuModel, preds: impl Iterator<Item = &'a Pred>) -> Result<()> {
    if gpu.dtype != DType::F16 {
        return Ok(());
    }
    for p in preds {
        if !p.prob.is_finite() {
            return Err(Error::Usage(format!(
                "model {} overflows half precision on these images (non-finite \
                 probabilities); rerun with --precision f32",
                gpu.model.name
            )));
        }
    }
    Ok(())
}

/// Tune the model's convolutions at `batch` when asked; say so when it took time.
fn autotune(opts: &RunOptions, gpu: &GpuModel, batch: u32) -> Result<()> {
    if !opts.tune {
        return Ok(());
    }
    let r = gpu.tune(batch)?;
    if r.timed > 0 && !opts.quiet {
        eprintln!("{}", r.describe());
    }
    Ok(())
}

fn progress(total: usize, quiet: bool) -> indicatif::ProgressBar {
    if quiet || !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(total as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:40} {pos}/{len} images  {per_sec}  ETA {eta}",
        )
        .expect("valid template"),
    );
    bar
}

fn model_info(model: &Model, path: Option<&Path>) -> ModelInfo {
    ModelInfo {
        name: model.name.clone(),
        path: path.map_or(crate::BUNDLED_MODEL_NAME.to_string(), |p| {
            p.display().to_string()
        }),
        input: model.input,
        classes: model.num_classes(),
        parameters: model.param_count(),
        flops: model.flops(),
    }
}

/// Run FGSM over every image; writes what the options ask for and returns the report.
pub fn run_attack(opts: &RunOptions) -> Result<Report> {
    if opts.eps.is_empty() {
        return Err(Error::Usage(
            "give at least one eps, e.g. --eps 1/255".into(),
        ));
    }
    let prep = prepare(opts)?;
    let target = resolve_target(&opts.target, &prep.model)?;
    let mut predictions = match &opts.predictions {
        Some(p) => Some(PredictionWriter::create(p, prep.model.classes.clone())?),
        None => None,
    };
    let gpu = open_gpu(opts, prep.model.clone())?;
    let k = opts.eps.len() as u32;
    let batch = opts
        .batch_size
        .unwrap_or_else(|| choose_batch_size(&gpu, k, prep.entries.len()));
    autotune(opts, &gpu, batch)?;
    let plan = FgsmPlan::new(&gpu, batch, &opts.eps, opts.quantize, target)?;
    // Images are encoded and written on a writer thread while the GPU works on.
    let (out_tx, out_rx) = sync_channel::<Vec<Sample>>(2);
    let out_writer = match &opts.out {
        Some(dir) => Some(OutputWriter::new(OutputSpec {
            dir: dir.clone(),
            format: opts.format,
            shard_size: opts.shard_size,
            eps: opts.eps.clone(),
            method: METHOD.into(),
            shape: prep.model.input,
            png_compression: opts.png_compression,
        })?),
        None => None,
    };
    let writer = std::thread::spawn(move || -> Result<()> {
        let Some(mut w) = out_writer else {
            return Ok(());
        };
        for samples in out_rx {
            w.write(samples)?;
        }
        w.finish_all()
    });

    let start = Instant::now();
    let bar = progress(prep.entries.len(), opts.quiet);
    let mut clean = EpsAccumulator::default();
    let mut per_eps = vec![EpsAccumulator::default(); opts.eps.len()];
    let mut skipped: Vec<Skipped> = discovery_skips(&prep);
    let loader = BatchLoader::new(
        prep.entries.clone(),
        prep.prep,
        batch as usize,
        2,
        opts.strict,
    );
    let result = (|| -> Result<()> {
        for b in loader {
            let b = b?;
            for s in &b.skipped {
                bar.suspend(|| eprintln!("warning: skipping {}: {}", s.image, s.reason));
            }
            skipped.extend(b.skipped.iter().cloned());
            bar.inc(b.skipped.len() as u64);
            if b.is_empty() {
                continue;
            }
            let labels: Vec<Option<u32>> = b.indices.iter().map(|&i| prep.labels[i]).collect();
            let mut o = plan.run(&b.pixels, &labels, opts.out.is_some())?;
            check_finite(&gpu, o.clean.iter().chain(o.adv.iter().flatten()))?;
            let mut job: Vec<Sample> = Vec::new();
            for (j, &idx) in b.indices.iter().enumerate() {
                let rel = &prep.entries[idx].rel;
                let label = o.labels[j];
                let cp = o.clean[j];
                let clean_correct = cp.class == label;
                let tgt = (target != Target::Untargeted).then_some(o.loss_labels[j]);
                let label_prob =
                    |p: f32, pred: &super::Pred| if p.is_nan() { pred.prob } else { p };
                clean.add(&Observation {
                    label,
                    pred: cp.class,
                    pred_prob: cp.prob,
                    label_prob: label_prob(cp.label_prob, &cp),
                    clean_correct,
                    target: tgt,
                    linf: 0.0,
                    l2: 0.0,
                });
                if let Some(w) = predictions.as_mut() {
                    w.row(&PredictionRow {
                        image: rel,
                        label,
                        attack: None,
                        pred: cp.class,
                        pred_prob: cp.prob,
                        label_prob: cp.label_prob,
                    })?;
                }
                for (e, eps) in opts.eps.iter().enumerate() {
                    let p = o.adv[e][j];
                    let (linf, l2) = o.norms[e][j];
                    per_eps[e].add(&Observation {
                        label,
                        pred: p.class,
                        pred_prob: p.prob,
                        label_prob: p.label_prob,
                        clean_correct,
                        target: tgt,
                        linf,
                        l2,
                    });
                    if let Some(w) = predictions.as_mut() {
                        w.row(&PredictionRow {
                            image: rel,
                            label,
                            attack: Some((METHOD, eps)),
                            pred: p.class,
                            pred_prob: p.prob,
                            label_prob: p.label_prob,
                        })?;
                    }
                    if let Some(images) = o.images.as_mut() {
                        job.push(Sample {
                            index: idx,
                            rel: rel.clone(),
                            label,
                            clean_pred: cp.class,
                            adv_pred: p.class,
                            adv_prob: p.prob,
                            eps: e,
                            pixels: std::mem::take(&mut images[e][j]),
                        });
                    }
                }
            }
            if !job.is_empty() && out_tx.send(job).is_err() {
                break; // the writer failed; its error is reported below
            }
            bar.inc(b.len() as u64);
        }
        Ok(())
    })();
    drop(out_tx);
    let written = writer
        .join()
        .map_err(|_| Error::Usage("the output writer thread panicked".into()))?;
    result?;
    written?;
    bar.finish_and_clear();
    let seconds = start.elapsed().as_secs_f64();
    if let Some(w) = predictions {
        w.finish()?;
    }
    let images = clean.images as usize;
    if images == 0 {
        return Err(Error::Usage(format!(
            "none of the {} images could be read",
            prep.entries.len()
        )));
    }
    let report = Report {
        model: model_info(&prep.model, opts.model.as_deref()),
        adapter: gpu.ctx.summary.clone(),
        precision: gpu.dtype.name().into(),
        method: METHOD.into(),
        target: match &opts.target {
            TargetSpec::None => None,
            TargetSpec::LeastLikely => Some("least-likely".into()),
            TargetSpec::Class(s) => Some(s.clone()),
        },
        images,
        labels: prep.label_source,
        quantized: opts.quantize,
        clean: CleanStats {
            accuracy: clean.accuracy(),
            mean_confidence: clean.mean_confidence(),
        },
        epsilons: opts
            .eps
            .iter()
            .zip(&per_eps)
            .map(|(e, a)| a.stats(e.value as f64, &e.text))
            .collect(),
        timing: Timing {
            seconds,
            images_per_second: images as f64 / seconds.max(1e-9),
        },
        skipped,
    };
    write_reports(opts, &report)?;
    Ok(report)
}

fn write_reports(opts: &RunOptions, report: &Report) -> Result<()> {
    if let Some(p) = &opts.report {
        if p.extension().is_some_and(|e| e == "svg") {
            crate::report::write_svg_plot(p, report)?;
        } else {
            std::fs::write(p, report.to_json()).map_err(|e| Error::io(p, e))?;
        }
    }
    if let Some(p) = &opts.plot {
        crate::report::write_svg_plot(p, report)?;
    }
    Ok(())
}

/// One image's clean result from [`run_eval`].
#[derive(Debug, Clone, serde::Serialize)]
pub struct EvalRow {
    pub image: String,
    pub label: u32,
    pub pred: u32,
    pub pred_prob: f32,
    pub label_prob: f32,
}

/// Clean predictions for every image; writes `--predictions` when given.
pub fn run_eval(opts: &RunOptions) -> Result<(Vec<EvalRow>, Report)> {
    let prep = prepare(opts)?;
    let mut predictions = match &opts.predictions {
        Some(p) => Some(PredictionWriter::create(p, prep.model.classes.clone())?),
        None => None,
    };
    let gpu = open_gpu(opts, prep.model.clone())?;
    let batch = opts
        .batch_size
        .unwrap_or_else(|| choose_batch_size(&gpu, 1, prep.entries.len()));
    autotune(opts, &gpu, batch)?;
    let plan = EvalPlan::new(&gpu, batch)?;
    let start = Instant::now();
    let bar = progress(prep.entries.len(), opts.quiet);
    let mut acc = EpsAccumulator::default();
    let mut rows = Vec::new();
    let mut skipped = discovery_skips(&prep);
    for b in BatchLoader::new(
        prep.entries.clone(),
        prep.prep,
        batch as usize,
        2,
        opts.strict,
    ) {
        let b = b?;
        for s in &b.skipped {
            bar.suspend(|| eprintln!("warning: skipping {}: {}", s.image, s.reason));
        }
        skipped.extend(b.skipped.iter().cloned());
        if b.is_empty() {
            continue;
        }
        let labels: Vec<Option<u32>> = b.indices.iter().map(|&i| prep.labels[i]).collect();
        let (used, preds) = plan.run(&b.pixels, &labels)?;
        check_finite(&gpu, preds.iter())?;
        for (j, &idx) in b.indices.iter().enumerate() {
            let p = preds[j];
            let label_prob = if p.label_prob.is_nan() {
                p.prob
            } else {
                p.label_prob
            };
            acc.add(&Observation {
                label: used[j],
                pred: p.class,
                pred_prob: p.prob,
                label_prob,
                clean_correct: p.class == used[j],
                target: None,
                linf: 0.0,
                l2: 0.0,
            });
            let rel = prep.entries[idx].rel.clone();
            if let Some(w) = predictions.as_mut() {
                w.row(&PredictionRow {
                    image: &rel,
                    label: used[j],
                    attack: None,
                    pred: p.class,
                    pred_prob: p.prob,
                    label_prob,
                })?;
            }
            rows.push(EvalRow {
                image: rel,
                label: used[j],
                pred: p.class,
                pred_prob: p.prob,
                label_prob,
            });
        }
        bar.inc((b.len() + b.skipped.len()) as u64);
    }
    bar.finish_and_clear();
    if let Some(w) = predictions {
        w.finish()?;
    }
    let seconds = start.elapsed().as_secs_f64();
    let report = Report {
        model: model_info(&prep.model, opts.model.as_deref()),
        adapter: gpu.ctx.summary.clone(),
        precision: gpu.dtype.name().into(),
        method: crate::report::NO_METHOD.into(),
        target: None,
        images: rows.len(),
        labels: prep.label_source,
        quantized: false,
        clean: CleanStats {
            accuracy: acc.accuracy(),
            mean_confidence: acc.mean_confidence(),
        },
        epsilons: Vec::new(),
        timing: Timing {
            seconds,
            images_per_second: rows.len() as f64 / seconds.max(1e-9),
        },
        skipped,
    };
    if let Some(p) = &opts.report {
        std::fs::write(p, report.to_json()).map_err(|e| Error::io(p, e))?;
    }
    Ok((rows, report))
}
