//! The jobs that run the attacks of [`crate::attack`] over folders and
//! shards: `advex attack` (`attack.rs`) and `advex eval` (`eval.rs`),
//! sharded and resumable runs and `advex merge` (`shards.rs`), workers of a
//! job array (`worker.rs`) and several devices (`devices.rs`); here their
//! options, preparation (discovery, labels, the model) and what both share.

mod attack;
pub mod devices;
mod eval;
pub mod shards;
pub mod worker;

pub use attack::run_attack;
pub use devices::{open_gpus, run_ordered, run_pipelined, DeviceOptions};
pub use eval::{run_eval, EvalRow};
pub use shards::{merge_run, write_merged, Manifest};
pub use worker::{resolve_worker, Worker};

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::Arc;
use std::time::Instant;

use self::shards::{digest, open_run, ShardRecord};
use crate::attack::{image_id, AttackRequest, Cascade, CascadePlan, Eps, EvalPlan, Pred, Target};
use crate::data::{
    assign_labels, discover, write_atomic, BatchLoader, ImageEntry, LabelSource, OutputFormat,
    OutputSpec, OutputWriter, PngCompression, Preprocessor, Sample, Skipped, DEFAULT_SHARD_SIZE,
};
use crate::error::{Error, Result};
use crate::gpu::DType;
use crate::model::Model;
use crate::plan::GpuModel;
use crate::report::gallery::{GalleryAdv, GalleryPick, GalleryRow};
use crate::report::leaderboard::LeaderboardRequest;
use crate::report::{
    prediction_record, EpsAccumulator, ModelInfo, Observation, PredictionRow, PredictionWriter,
    Report, Timing,
};

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
    /// `--method` (one, or a comma list: a cascade) and its settings (resolved
    /// by [`Cascade::resolve`]).
    pub attack: AttackRequest,
    pub out: Option<PathBuf>,
    /// How `out` is written (`--format`).
    pub format: OutputFormat,
    /// Images per output shard (`--shard-size`; webdataset and safetensors).
    pub shard_size: usize,
    /// `--png-compression` (png and webdataset).
    pub png_compression: PngCompression,
    /// `--worker i/W`; `None` reads a cluster engine's variables, else runs
    /// every shard (see [`resolve_worker`]).
    pub worker: Option<String>,
    pub overwrite: bool,
    /// `--verify`: a rerun checks committed shards by digest, not size.
    pub verify: bool,
    pub report: Option<PathBuf>,
    /// `--leaderboard FILE.json`: one RobustBench-style entry (one eps; the
    /// unrounded points are scored too, as with `--count-rounding`).
    pub leaderboard: Option<LeaderboardRequest>,
    pub plot: Option<PathBuf>,
    /// `--gallery FILE.png`: a contact sheet of the images `gallery_pick` picks.
    pub gallery: Option<PathBuf>,
    pub gallery_pick: GalleryPick,
    pub predictions: Option<PathBuf>,
    pub batch_size: Option<u32>,
    pub adapter: Option<String>,
    /// `--devices all|0,2|NAME`: several adapters at once (see [`open_gpus`]).
    pub devices: Option<String>,
    /// Storage type on the device (`--precision`; see [`GpuModel::with_precision`]).
    pub precision: DType,
    /// `--precision mixed`: tensor-core convolutions where the adapter has
    /// them (see [`crate::gpu::ContextOptions::mixed`]).
    pub mixed: bool,
    /// Autotune the convolutions at the batch size before running (measured
    /// choices are cached per adapter; see [`GpuModel::tune`]). The CLI turns it
    /// on unless `--no-tune`.
    pub tune: bool,
    pub quantize: bool,
    pub strict: bool,
    pub quiet: bool,
    /// Refuse a software adapter (see [`crate::gpu::ContextOptions::require_gpu`]).
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
            attack: AttackRequest::default(),
            out: None,
            format: OutputFormat::Png,
            shard_size: DEFAULT_SHARD_SIZE,
            png_compression: PngCompression::Fast,
            worker: None,
            overwrite: false,
            verify: false,
            report: None,
            leaderboard: None,
            plot: None,
            gallery: None,
            gallery_pick: GalleryPick::First(6),
            predictions: None,
            batch_size: None,
            adapter: None,
            devices: None,
            precision: DType::F32,
            mixed: false,
            tune: false,
            quantize: true,
            strict: false,
            quiet: true,
            require_gpu: false,
        }
    }

    /// Which devices to open.
    pub fn device_options(&self) -> DeviceOptions {
        DeviceOptions {
            adapter: self.adapter.clone(),
            devices: self.devices.clone(),
            require_gpu: self.require_gpu,
            mixed: self.mixed,
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

impl RunOptions {
    /// How a rerun checks what earlier runs committed.
    fn trust(&self) -> shards::Trust {
        if self.verify {
            shards::Trust::Digests
        } else {
            shards::Trust::Sizes
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
    let mut skipped = found.skipped;
    let mut entries = found.entries;
    if opts.out.is_some() {
        // Every image's output path decided before any work: names that
        // cannot name a file inside the output folder are skipped here.
        let (kept, refused) = crate::data::admit(entries, opts.format);
        entries = kept;
        skipped.extend(refused);
    }
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
        filter: crate::data::Filter::from_name(&model.preprocess.interpolation),
    };
    for p in [&opts.report, &opts.plot, &opts.predictions, &opts.gallery]
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
        skipped,
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

/// `--batch-size`, or the largest batch every device takes.
fn batch_for(opts: &RunOptions, gpus: &[GpuModel], eps_count: u32, images: usize) -> u32 {
    opts.batch_size.unwrap_or_else(|| {
        gpus.iter()
            .map(|g| choose_batch_size(g, eps_count, images))
            .min()
            .unwrap_or(1)
    })
}

/// Every device of a `--devices` run, for the report (empty with one device:
/// `adapter` says it all).
fn device_list(gpus: &[GpuModel]) -> Vec<crate::gpu::AdapterSummary> {
    if gpus.len() < 2 {
        return Vec::new();
    }
    gpus.iter().map(|g| g.ctx.summary.clone()).collect()
}

/// Half precision can overflow (f16 ends at 65504) on models with large
/// activations: their probabilities come out NaN. Say so, rather than report
/// nonsense. In f32 a NaN is the model's own and passes through.
fn check_finite<'a>(
    dtype: DType,
    model: &str,
    mut preds: impl Iterator<Item = &'a Pred>,
) -> Result<()> {
    if dtype != DType::F16 || preds.all(|p| p.prob.is_finite()) {
        return Ok(());
    }
    Err(Error::Usage(format!(
        "model {model} overflows half precision on these images (non-finite \
         probabilities); rerun with --precision f32"
    )))
}

/// Tune the model's convolutions at `batch` on every device when asked (once
/// per kind of adapter: the others adopt its choices); say so when it took time.
fn autotune(opts: &RunOptions, gpus: &[GpuModel], batch: u32) -> Result<()> {
    if !opts.tune {
        return Ok(());
    }
    for (i, gpu) in gpus.iter().enumerate() {
        for earlier in &gpus[..i] {
            gpu.ctx.adopt_tuning(&earlier.ctx);
        }
        let r = gpu.tune(batch)?;
        if r.timed > 0 && !opts.quiet {
            eprintln!("{}", r.describe());
        }
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

/// A `--out` run's share of the shards (see [`super::shards`]).
struct Share {
    dir: PathBuf,
    worker: Worker,
    shard_size: usize,
    shards: usize,
    /// Entry indices this process runs (its uncommitted shards), in order.
    todo: Vec<usize>,
}

/// Check or write the manifest, and find this worker's uncommitted shards.
fn open_share(opts: &RunOptions, attack: &Cascade, prep: &Prepared, dir: &Path) -> Result<Share> {
    let worker = resolve_worker(opts.worker.as_deref(), &|k| std::env::var(k).ok())?;
    if worker.count > 1 && opts.overwrite {
        return Err(Error::Usage(
            "--overwrite with several workers would let each one wipe the others' shards; \
             clear --out once before starting the workers, and leave --overwrite out"
                .into(),
        ));
    }
    let size = opts.shard_size;
    if size == 0 {
        return Err(Error::Usage("--shard-size must be at least 1".into()));
    }
    let n = prep.entries.len();
    let model_digest = match &opts.model {
        Some(p) => digest([std::fs::read(p).map_err(|e| Error::io(p, e))?]),
        None => digest([crate::BUNDLED_MODEL]),
    };
    let manifest = Manifest {
        advex: env!("CARGO_PKG_VERSION").into(),
        images: opts.images.display().to_string(),
        image_count: n,
        images_digest: digest(prep.entries.iter().map(|e| e.rel.as_bytes())),
        labels_digest: digest(
            prep.labels
                .iter()
                .map(|l| l.map_or("-".to_string(), |l| l.to_string())),
        ),
        model: model_info(&prep.model, opts.model.as_deref()),
        model_digest,
        method: attack.name(),
        attack: attack.settings(),
        eps: opts.eps.iter().map(|e| e.text.clone()).collect(),
        target: target_text(&opts.target),
        quantized: opts.quantize,
        precision: precision_name(opts.precision, opts.mixed).into(),
        format: opts.format.name().into(),
        shard_size: size,
        shards: n.div_ceil(size),
        labels: prep.label_source,
        class_names: prep.model.classes.is_some(),
        discovery_skipped: prep.skipped.clone(),
    };
    open_run(dir, &manifest, opts.overwrite)?;
    shards::sweep_stale(dir);
    let k = opts.eps.len();
    // Every committed shard of this worker checked, in parallel (a stat per
    // file: 20,000 of them for a run of that many images).
    let mine: Vec<bool> = {
        use rayon::prelude::*;
        (0..manifest.shards)
            .into_par_iter()
            .map(|u| worker.owns(u) && shards::committed(dir, u, k, opts.trust()).is_none())
            .collect()
    };
    Ok(Share {
        dir: dir.to_path_buf(),
        worker,
        shard_size: size,
        shards: manifest.shards,
        todo: (0..n).filter(|&i| mine[i / size]).collect(),
    })
}

fn target_text(t: &TargetSpec) -> Option<String> {
    match t {
        TargetSpec::None => None,
        TargetSpec::LeastLikely => Some("least-likely".into()),
        TargetSpec::Class(s) => Some(s.clone()),
    }
}

/// The attack request as run: `--leaderboard` scores the unrounded points
/// too (the float robust accuracy), as `--count-rounding` does.
fn attack_request(opts: &RunOptions) -> AttackRequest {
    let mut r = opts.attack.clone();
    if opts.leaderboard.is_some() {
        r.count_rounding |= opts.quantize;
    }
    r
}

/// `--leaderboard`'s checks before any work: one eps, untargeted, and a file
/// that is absent or an entry it may update.
fn check_leaderboard(opts: &RunOptions) -> Result<()> {
    let Some(lb) = &opts.leaderboard else {
        return Ok(());
    };
    if opts.eps.len() != 1 {
        return Err(Error::Usage(format!(
            "--leaderboard: an entry is for one eps, this run has {}; run once per eps",
            opts.eps.len()
        )));
    }
    if opts.target != TargetSpec::None {
        return Err(Error::Usage(
            "--leaderboard with --target: leaderboards rank untargeted robustness; drop --target"
                .into(),
        ));
    }
    if opts.attack.minimal {
        return Err(Error::Usage(
            "--leaderboard with --minimal: an entry reports robust accuracy at one eps; drop              --minimal"
                .into(),
        ));
    }
    lb.existing()?;
    check_writable_file(&lb.path)
}

/// The dataset an entry names when neither its file nor a field does: the
/// images folder's name.
pub(crate) fn folder_name(images: &Path) -> String {
    images
        .canonicalize()
        .unwrap_or_else(|_| images.to_path_buf())
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "images".into())
}

/// Write a `--leaderboard` entry for `report`.
pub(crate) fn write_leaderboard(
    lb: &LeaderboardRequest,
    report: &Report,
    images: &Path,
    seed: u64,
) -> Result<()> {
    let threat_model = match report.norm.as_deref() {
        Some("l2") => "L2",
        _ => "Linf",
    };
    let dataset = folder_name(images);
    let cx = crate::report::leaderboard::EntryContext {
        threat_model,
        dataset: &dataset,
        seed,
    };
    crate::report::leaderboard::write(lb, report, &cx)
}

fn write_reports(opts: &RunOptions, report: &Report) -> Result<()> {
    if let Some(lb) = &opts.leaderboard {
        write_leaderboard(lb, report, &opts.images, opts.attack.seed.unwrap_or(0))?;
    }
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

/// The precision a report names: `mixed` where convolutions ran on
/// cooperative matrices, else the storage type.
pub(super) fn precision_name(dtype: DType, mixed: bool) -> &'static str {
    if mixed {
        "mixed"
    } else {
        dtype.name()
    }
}
