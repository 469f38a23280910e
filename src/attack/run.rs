//! Whole runs over a folder of images: `advex attack` and `advex eval`.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::mpsc::sync_channel;
use std::sync::Arc;
use std::time::Instant;

use super::devices::{open_gpus, run_ordered, DeviceOptions};
use super::shards::{self, digest, open_run, Manifest, ShardRecord};
use super::worker::{resolve_worker, Worker};
use super::{image_id, AttackRequest, Cascade, CascadePlan, Eps, EvalPlan, Pred, Target};
use crate::data::{
    assign_labels, discover, write_atomic, BatchLoader, ImageEntry, LabelSource, OutputFormat,
    OutputSpec, OutputWriter, PngCompression, Preprocessor, Sample, Skipped, DEFAULT_SHARD_SIZE,
};
use crate::error::{Error, Result};
use crate::gpu::DType;
use crate::model::Model;
use crate::plan::GpuModel;
use crate::report::gallery::{GalleryAdv, GalleryPick, GalleryRow};
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
    pub report: Option<PathBuf>,
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
            attack: AttackRequest::default(),
            out: None,
            format: OutputFormat::Png,
            shard_size: DEFAULT_SHARD_SIZE,
            png_compression: PngCompression::Fast,
            worker: None,
            overwrite: false,
            report: None,
            plot: None,
            gallery: None,
            gallery_pick: GalleryPick::First(6),
            predictions: None,
            batch_size: None,
            adapter: None,
            devices: None,
            precision: DType::F32,
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
        precision: opts.precision.name().into(),
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
    let mine: Vec<bool> = (0..manifest.shards)
        .map(|u| worker.owns(u) && shards::committed(dir, u, k).is_none())
        .collect();
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

/// One shard's results as the run goes (see [`ShardRecord`]).
struct ShardBook {
    shard: usize,
    start: Instant,
    clean: EpsAccumulator,
    per_eps: Vec<EpsAccumulator>,
    rows: csv::Writer<Vec<u8>>,
    skipped: Vec<Skipped>,
}

impl ShardBook {
    fn new(shard: usize, eps: usize) -> Self {
        ShardBook {
            shard,
            start: Instant::now(),
            clean: EpsAccumulator::default(),
            per_eps: vec![EpsAccumulator::default(); eps],
            rows: csv::Writer::from_writer(Vec::new()),
            skipped: Vec::new(),
        }
    }

    fn close(
        self,
        worker: &Worker,
        adapter: &crate::gpu::AdapterSummary,
        devices: &[crate::gpu::AdapterSummary],
    ) -> Result<WriterMsg> {
        let rows = self
            .rows
            .into_inner()
            .map_err(|e| Error::Usage(format!("predictions of a shard: {e}")))?;
        Ok(WriterMsg::Commit(
            Box::new(ShardRecord {
                shard: self.shard,
                images: self.clean.images as usize,
                seconds: self.start.elapsed().as_secs_f64(),
                clean: self.clean,
                per_eps: self.per_eps,
                skipped: self.skipped,
                worker: worker.clone(),
                adapter: adapter.clone(),
                devices: devices.to_vec(),
            }),
            rows,
        ))
    }
}

/// What the writer thread is sent, in order: a shard's commit follows its images.
enum WriterMsg {
    Samples(Vec<Sample>),
    Commit(Box<ShardRecord>, Vec<u8>),
}

/// Record one result: in the run's sums (`acc`) and the shard's (the clean
/// pass, or eps `eps`), and its prediction row in the shard's rows or else the
/// streaming `--predictions` file.
fn record(
    obs: &Observation,
    acc: &mut EpsAccumulator,
    eps: Option<usize>,
    predictions: &mut Option<PredictionWriter>,
    book: &mut Option<ShardBook>,
    classes: Option<&[String]>,
    row: &PredictionRow<'_>,
) -> Result<()> {
    acc.add(obs);
    if let Some(b) = book.as_mut() {
        match eps {
            Some(e) => b.per_eps[e].add(obs),
            None => b.clean.add(obs),
        }
        b.rows
            .write_record(prediction_record(row, classes))
            .map_err(|e| Error::Usage(format!("predictions of a shard: {e}")))?;
    } else if let Some(w) = predictions.as_mut() {
        w.row(row)?;
    }
    Ok(())
}

/// Run FGSM over every image; writes what the options ask for and returns the report.
///
/// With `--out`, the run is sharded and resumable: this process runs the
/// uncommitted shards of its worker share, commits each as it completes, and
/// when every shard of the run is committed writes the merged `report.json`,
/// `predictions.csv` and `accuracy.svg` into `--out` (and `--report`,
/// `--predictions`, `--plot` where asked).
pub fn run_attack(opts: &RunOptions) -> Result<Report> {
    if opts.eps.is_empty() {
        return Err(Error::Usage(
            "give at least one eps, e.g. --eps 1/255".into(),
        ));
    }
    let prep = prepare(opts)?;
    let target = resolve_target(&opts.target, &prep.model)?;
    let mut attack = Cascade::resolve(&opts.attack, &opts.eps, opts.quantize, target)?;
    if let (Some(_), GalleryPick::Paths(paths)) = (&opts.gallery, &opts.gallery_pick) {
        if let Some(p) = paths
            .iter()
            .find(|p| !prep.entries.iter().any(|e| &e.rel == *p))
        {
            return Err(Error::Usage(format!(
                "--gallery-images {p}: no such image under {} (give paths relative to \
                 --images, e.g. {})",
                opts.images.display(),
                prep.entries.first().map_or("cat.png", |e| e.rel.as_str())
            )));
        }
    }
    for note in attack.fit_to_model(prep.model.num_classes())? {
        eprintln!("note: {note}");
    }
    let method = attack.name();
    let stage_names = attack.names();
    let minimal = opts.attack.minimal;
    let top_level = if minimal {
        Some(super::minimal::eps_levels(&opts.eps[0])?)
    } else {
        None
    };
    let share = match &opts.out {
        Some(dir) => Some(open_share(opts, &attack, &prep, dir)?),
        None => None,
    };
    let (work, global): (Arc<Vec<ImageEntry>>, Vec<usize>) = match &share {
        Some(s) => (
            Arc::new(s.todo.iter().map(|&i| prep.entries[i].clone()).collect()),
            s.todo.clone(),
        ),
        None => (prep.entries.clone(), (0..prep.entries.len()).collect()),
    };
    if let Some(s) = &share {
        if work.is_empty() {
            eprintln!(
                "worker {}/{}: every shard it owns in {} is committed already",
                s.worker.index,
                s.worker.count,
                s.dir.display()
            );
            return finish_share(opts, s, None, Instant::now());
        }
    }
    let classes = prep.model.classes.clone();
    let mut predictions = match (&opts.predictions, &share) {
        (Some(p), None) => Some(PredictionWriter::create(p, classes.clone(), minimal)?),
        _ => None,
    };
    let gpus = open_gpus(&opts.device_options(), prep.model.clone(), opts.precision)?;
    let k = opts.eps.len() as u32;
    let batch = batch_for(opts, &gpus, k, work.len());
    autotune(opts, &gpus, batch)?;
    let plans = gpus
        .iter()
        .map(|g| CascadePlan::new(g, batch, &attack))
        .collect::<Result<Vec<_>>>()?;
    let (dtype, model_name) = (gpus[0].dtype, gpus[0].model.name.clone());
    // Images are encoded and written on a writer thread while the GPU works on;
    // it also commits each shard once its images are out.
    let (out_tx, out_rx) = sync_channel::<WriterMsg>(2);
    let out_writer = match &opts.out {
        Some(dir) => Some(OutputWriter::new(OutputSpec {
            dir: dir.clone(),
            format: opts.format,
            shard_size: opts.shard_size,
            eps: opts.eps.clone(),
            method: method.clone(),
            shape: prep.model.input,
            png_compression: opts.png_compression,
        })?),
        None => None,
    };
    let commit_dir = opts.out.clone();
    let writer = std::thread::spawn(move || -> Result<()> {
        let (Some(mut w), Some(dir)) = (out_writer, commit_dir) else {
            return Ok(());
        };
        for msg in out_rx {
            match msg {
                WriterMsg::Samples(samples) => w.write(samples)?,
                WriterMsg::Commit(record, rows) => {
                    w.finish_shard(record.shard)?;
                    shards::commit(&dir, &record, &rows)?;
                }
            }
        }
        w.finish_all()
    });

    let start = Instant::now();
    let bar = progress(work.len(), opts.quiet);
    let mut clean = EpsAccumulator::default();
    let mut per_eps = vec![EpsAccumulator::default(); opts.eps.len()];
    let mut skipped: Vec<Skipped> = discovery_skips(&prep);
    let mut book: Option<ShardBook> = None;
    let adapter = gpus[0].ctx.summary.clone();
    let devices = device_list(&gpus);
    let loader = BatchLoader::new(
        work.clone(),
        prep.prep,
        batch as usize,
        1 + gpus.len(),
        opts.strict,
    );
    let want_images = opts.out.is_some() || opts.gallery.is_some();
    let mut gallery: Vec<GalleryRow> = Vec::new();
    let class_name = |c: u32| match &prep.model.classes {
        Some(names) => names
            .get(c as usize)
            .cloned()
            .unwrap_or_else(|| c.to_string()),
        None => c.to_string(),
    };
    // Shard bookkeeping: a new shard closes (and commits) the previous one,
    // after the images sent so far. `false`: the writer has failed.
    let turn = |book: &mut Option<ShardBook>, job: &mut Vec<Sample>, g: usize| -> Result<bool> {
        let Some(s) = &share else { return Ok(true) };
        let shard = g / s.shard_size;
        if book.as_ref().is_some_and(|b| b.shard == shard) {
            return Ok(true);
        }
        if let Some(done) = book.take() {
            if out_tx
                .send(WriterMsg::Samples(std::mem::take(job)))
                .is_err()
                || out_tx
                    .send(done.close(&s.worker, &adapter, &devices)?)
                    .is_err()
            {
                return Ok(false);
            }
        }
        *book = Some(ShardBook::new(shard, opts.eps.len()));
        Ok(true)
    };
    let result = run_ordered(
        plans,
        loader,
        |plan, b| {
            if b.is_empty() {
                return Ok(None);
            }
            let labels: Vec<Option<u32>> =
                b.indices.iter().map(|&i| prep.labels[global[i]]).collect();
            let ids: Vec<u32> = b
                .indices
                .iter()
                .map(|&i| image_id(&prep.entries[global[i]].rel))
                .collect();
            let o = plan.run_ids(&b.pixels, &labels, &ids, want_images)?;
            check_finite(
                dtype,
                &model_name,
                o.clean.iter().chain(o.adv.iter().flatten()),
            )?;
            Ok(Some(o))
        },
        |b, o| {
            let mut job: Vec<Sample> = Vec::new();
            for (s, &at) in b.skipped.iter().zip(&b.skipped_at) {
                bar.suspend(|| eprintln!("warning: skipping {}: {}", s.image, s.reason));
                if !turn(&mut book, &mut job, global[at])? {
                    return Ok(false);
                }
                if let Some(bk) = book.as_mut() {
                    bk.skipped.push(s.clone());
                }
            }
            skipped.extend(b.skipped.iter().cloned());
            bar.inc(b.skipped.len() as u64);
            let Some(mut o) = o else {
                return Ok(true);
            };
            for (j, &idx) in b.indices.iter().enumerate() {
                let g = global[idx];
                if !turn(&mut book, &mut job, g)? {
                    return Ok(false);
                }
                let rel = &prep.entries[g].rel;
                let label = o.labels[j];
                let cp = o.clean[j];
                let mut gallery_row = (opts.gallery.is_some() && opts.gallery_pick.picks(g, rel))
                    .then(|| {
                        let item = b.pixels.len() / b.indices.len();
                        GalleryRow {
                            name: rel.clone(),
                            shape: prep.model.input,
                            clean: b.pixels[j * item..(j + 1) * item]
                                .iter()
                                .map(|v| (v * 255.0).round().clamp(0.0, 255.0) as u8)
                                .collect(),
                            class: class_name(cp.class),
                            prob: cp.prob,
                            adv: Vec::new(),
                        }
                    });
                let clean_correct = cp.class == label;
                let tgt = (target != Target::Untargeted).then_some(o.loss_labels[j]);
                let label_prob =
                    |p: f32, pred: &super::Pred| if p.is_nan() { pred.prob } else { p };
                let obs = Observation::unattacked(
                    label,
                    cp.class,
                    cp.prob,
                    label_prob(cp.label_prob, &cp),
                    clean_correct,
                    tgt,
                );
                record(
                    &obs,
                    &mut clean,
                    None,
                    &mut predictions,
                    &mut book,
                    classes.as_deref(),
                    &PredictionRow {
                        image: rel,
                        label,
                        attack: None,
                        pred: cp.class,
                        pred_prob: cp.prob,
                        label_prob: cp.label_prob,
                        min_eps: minimal.then_some(None),
                    },
                )?;
                for (e, eps) in opts.eps.iter().enumerate() {
                    let p = o.adv[e][j];
                    let (linf, l2) = o.norms[e][j];
                    let raw_success = o
                        .raw_adv
                        .as_ref()
                        .map(|r| crate::report::attack_success(r[e][j].class, label, tgt));
                    let obs = Observation {
                        label,
                        pred: p.class,
                        pred_prob: p.prob,
                        label_prob: p.label_prob,
                        clean_correct,
                        target: tgt,
                        linf,
                        l2,
                        raw_success,
                        steps: o.first_success[e][j],
                        stages: o
                            .stages
                            .as_ref()
                            .map(|st| (stage_names.len() as u8, st[e][j].1)),
                        min_eps: top_level
                            .zip(o.min_eps.as_ref())
                            .map(|(top, m)| (top, m[j])),
                        linear: o.grad_norm.as_ref().filter(|_| tgt.is_none()).map(|g| {
                            (
                                eps.exact * g[j] as f64,
                                cp.label_logp as f64 - p.label_logp as f64,
                            )
                        }),
                    };
                    // A cascade's row names the attack whose image it kept.
                    let row_method = match &o.stages {
                        Some(st) => stage_names[st[e][j].0 as usize].as_str(),
                        None => method.as_str(),
                    };
                    record(
                        &obs,
                        &mut per_eps[e],
                        Some(e),
                        &mut predictions,
                        &mut book,
                        classes.as_deref(),
                        &PredictionRow {
                            image: rel,
                            label,
                            attack: Some((row_method, eps)),
                            pred: p.class,
                            pred_prob: p.prob,
                            label_prob: p.label_prob,
                            min_eps: o.min_eps.as_ref().map(|m| m[j]),
                        },
                    )?;
                    if let (Some(row), Some(images)) = (gallery_row.as_mut(), o.images.as_ref()) {
                        let heading = if o.stages.is_some() {
                            format!("{row_method} {}", eps.text)
                        } else {
                            format!("eps {}", eps.text)
                        };
                        row.adv.push(GalleryAdv {
                            heading,
                            pixels: images[e][j].clone(),
                            class: class_name(p.class),
                            prob: p.prob,
                        });
                    }
                    if let (Some(images), true) = (o.images.as_mut(), opts.out.is_some()) {
                        job.push(Sample {
                            index: g,
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
                gallery.extend(gallery_row);
            }
            if !job.is_empty() && out_tx.send(WriterMsg::Samples(job)).is_err() {
                return Ok(false); // the writer failed; its error is reported below
            }
            bar.inc(b.len() as u64);
            Ok(true)
        },
    )
    .and_then(|()| {
        // the last shard is complete too
        if let (Some(done), Some(s)) = (book.take(), &share) {
            let _ = out_tx.send(done.close(&s.worker, &adapter, &devices)?);
        }
        Ok(())
    });
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
    let report = Report {
        model: model_info(&prep.model, opts.model.as_deref()),
        adapter,
        devices,
        precision: dtype.name().into(),
        method: method.clone(),
        cascade: attack.is_cascade().then(|| attack.names()),
        target: target_text(&opts.target),
        images,
        labels: prep.label_source,
        quantized: opts.quantize,
        clean: clean.clean_stats(),
        epsilons: EpsAccumulator::eps_stats(&opts.eps, &per_eps),
        timing: Timing::new(images, seconds),
        skipped,
        worker: share.as_ref().map(|s| s.worker.clone()),
    };
    if let Some(s) = &share {
        if !gallery.is_empty() {
            write_gallery_for(opts, &report, &gallery)?;
        }
        return finish_share(opts, s, Some(report), start);
    }
    if images == 0 {
        return Err(Error::Usage(format!(
            "none of the {} images could be read",
            prep.entries.len()
        )));
    }
    write_reports(opts, &report)?;
    write_gallery_for(opts, &report, &gallery)?;
    Ok(report)
}

/// `--gallery`: the contact sheet of the picked images this process attacked.
fn write_gallery_for(opts: &RunOptions, report: &Report, rows: &[GalleryRow]) -> Result<()> {
    let Some(path) = &opts.gallery else {
        return Ok(());
    };
    let title = format!(
        "{} - {} ({} images shown)",
        report.model.name,
        report.method.to_uppercase(),
        rows.len()
    );
    crate::report::write_gallery(path, &title, rows)
}

/// After a sharded run: when every shard of the run is committed, merge them
/// (into `--out` and wherever `--report`, `--predictions`, `--plot` ask) and
/// return the merged report; otherwise say what is left and return this
/// process's own share (`mine`).
fn finish_share(
    opts: &RunOptions,
    share: &Share,
    mine: Option<Report>,
    start: Instant,
) -> Result<Report> {
    let k = opts.eps.len();
    let left = (0..share.shards)
        .filter(|&u| shards::committed(&share.dir, u, k).is_none())
        .count();
    if left > 0 {
        eprintln!(
            "worker {}/{} ({}): done; {left} of {} shards are left to other workers. \
             When all are done, `advex merge {}` writes the report",
            share.worker.index,
            share.worker.count,
            share.worker.engine,
            share.shards,
            share.dir.display()
        );
        return match mine {
            Some(m) => Ok(m),
            // a retried task whose shards are all in: its share, from the markers
            None => shards::merge_share(&share.dir, &share.worker),
        };
    }
    let (mut report, csv) = shards::merge_run(&share.dir)?;
    if report.images == 0 {
        return Err(Error::Usage(format!(
            "none of the {} images could be read",
            report.skipped.len()
        )));
    }
    shards::write_merged_parts(&share.dir, &report, &csv)?;
    if let Some(p) = &opts.predictions {
        write_atomic(p, &csv)?;
    }
    write_reports(opts, &report)?;
    // what this process took, for the summary it prints
    report.timing.seconds = start.elapsed().as_secs_f64();
    report.timing.images_per_second = match &mine {
        Some(m) => m.timing.images_per_second,
        None => 0.0,
    };
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
        Some(p) => Some(PredictionWriter::create(
            p,
            prep.model.classes.clone(),
            false,
        )?),
        None => None,
    };
    let gpus = open_gpus(&opts.device_options(), prep.model.clone(), opts.precision)?;
    let batch = batch_for(opts, &gpus, 1, prep.entries.len());
    autotune(opts, &gpus, batch)?;
    let plans = gpus
        .iter()
        .map(|g| EvalPlan::new(g, batch))
        .collect::<Result<Vec<_>>>()?;
    let (dtype, model_name) = (gpus[0].dtype, gpus[0].model.name.clone());
    let start = Instant::now();
    let bar = progress(prep.entries.len(), opts.quiet);
    let mut acc = EpsAccumulator::default();
    let mut rows = Vec::new();
    let mut skipped = discovery_skips(&prep);
    let loader = BatchLoader::new(
        prep.entries.clone(),
        prep.prep,
        batch as usize,
        1 + gpus.len(),
        opts.strict,
    );
    run_ordered(
        plans,
        loader,
        |plan, b| {
            if b.is_empty() {
                return Ok(None);
            }
            let labels: Vec<Option<u32>> = b.indices.iter().map(|&i| prep.labels[i]).collect();
            let (used, preds) = plan.run(&b.pixels, &labels)?;
            check_finite(dtype, &model_name, preds.iter())?;
            Ok(Some((used, preds)))
        },
        |b, out| {
            for s in &b.skipped {
                bar.suspend(|| eprintln!("warning: skipping {}: {}", s.image, s.reason));
            }
            skipped.extend(b.skipped.iter().cloned());
            let Some((used, preds)) = out else {
                bar.inc(b.skipped.len() as u64);
                return Ok(true);
            };
            for (j, &idx) in b.indices.iter().enumerate() {
                let p = preds[j];
                let label_prob = if p.label_prob.is_nan() {
                    p.prob
                } else {
                    p.label_prob
                };
                acc.add(&Observation::unattacked(
                    used[j],
                    p.class,
                    p.prob,
                    label_prob,
                    p.class == used[j],
                    None,
                ));
                let rel = prep.entries[idx].rel.clone();
                if let Some(w) = predictions.as_mut() {
                    w.row(&PredictionRow {
                        image: &rel,
                        label: used[j],
                        attack: None,
                        pred: p.class,
                        pred_prob: p.prob,
                        label_prob,
                        min_eps: None,
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
            Ok(true)
        },
    )?;
    bar.finish_and_clear();
    if let Some(w) = predictions {
        w.finish()?;
    }
    let seconds = start.elapsed().as_secs_f64();
    let report = Report {
        model: model_info(&prep.model, opts.model.as_deref()),
        adapter: gpus[0].ctx.summary.clone(),
        devices: device_list(&gpus),
        precision: dtype.name().into(),
        method: crate::report::NO_METHOD.into(),
        cascade: None,
        target: None,
        images: rows.len(),
        labels: prep.label_source,
        quantized: false,
        clean: acc.clean_stats(),
        epsilons: Vec::new(),
        timing: Timing {
            seconds,
            images_per_second: rows.len() as f64 / seconds.max(1e-9),
        },
        skipped,
        worker: None,
    };
    if let Some(p) = &opts.report {
        std::fs::write(p, report.to_json()).map_err(|e| Error::io(p, e))?;
    }
    Ok((rows, report))
}
