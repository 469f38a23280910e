//! `advex attack`: every batch through the attack plans, its results into
//! the report, the predictions, the images and the shards.

use super::*;
use crate::attack::BatchOutcome;
use crate::data::Batch;

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
                // filled in by shards::commit
                rows: 0,
                files: Vec::new(),
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

/// Run the attack over every image; writes what the options ask for and
/// returns the report.
///
/// With `--out`, the run is sharded and resumable: this process runs the
/// uncommitted shards of its worker share, commits each as it completes, and
/// when every shard of the run is committed writes the merged `report.json`,
/// `predictions.csv` and `accuracy.svg` into `--out` (and `--report`,
/// `--predictions`, `--plot` where asked).
///
/// The stages, in order: [`discover`] (images, labels, the model, the attack),
/// [`plan_shards`] (what this process runs), [`run_shards`] (every batch on
/// the devices; each shard is committed by the writer thread, [`committer`],
/// once its images are out), then [`merge_and_report`].
pub fn run_attack(opts: &RunOptions) -> Result<Report> {
    let job = discover(opts)?;
    let plan = plan_shards(opts, &job)?;
    if let Some(share) = plan.share.as_ref().filter(|_| plan.work.is_empty()) {
        if share.worker.count > 1 {
            eprintln!(
                "worker {}/{}: every shard it owns in {} is committed already",
                share.worker.index,
                share.worker.count,
                share.dir.display()
            );
        }
        let report = finish_share(opts, share, None, Instant::now())?;
        if share.worker.count == 1 {
            eprintln!(
                "all {} shard{} of {} were already committed (checked); merged",
                share.shards,
                if share.shards == 1 { "" } else { "s" },
                share.dir.display()
            );
        }
        return Ok(report);
    }
    let ran = run_shards(opts, &job, &plan)?;
    merge_and_report(opts, &job, &plan, ran)
}

/// What [`discover`] settles before any GPU work.
struct Job {
    prep: Prepared,
    target: Target,
    attack: Cascade,
    /// The method's name (`fgsm`, `apgd-ce,apgd-t`, ...).
    method: String,
    /// The cascade's attacks, by name.
    stage_names: Vec<String>,
    minimal: bool,
    /// `--minimal`: the eps in 8-bit levels.
    top_level: Option<u32>,
}

impl Job {
    fn class_name(&self, c: u32) -> String {
        match &self.prep.model.classes {
            Some(names) => names
                .get(c as usize)
                .cloned()
                .unwrap_or_else(|| c.to_string()),
            None => c.to_string(),
        }
    }
}

/// Stage 1: the images (each one's output path decided), labels, the model,
/// the attack fitted to it, and every option checked.
fn discover(opts: &RunOptions) -> Result<Job> {
    if opts.eps.is_empty() {
        return Err(Error::Usage(
            "give at least one eps, e.g. --eps 1/255".into(),
        ));
    }
    check_leaderboard(opts)?;
    let prep = prepare(opts)?;
    let target = resolve_target(&opts.target, &prep.model)?;
    let mut attack = Cascade::resolve(&attack_request(opts), &opts.eps, opts.quantize, target)?;
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
    let minimal = opts.attack.minimal;
    let top_level = if minimal {
        Some(opts.eps[0].levels()?)
    } else {
        None
    };
    Ok(Job {
        method: attack.name(),
        stage_names: attack.names(),
        prep,
        target,
        attack,
        minimal,
        top_level,
    })
}

/// What this process runs.
struct Plan {
    /// With `--out`: the run's shards and this worker's share of them.
    share: Option<Share>,
    /// The images to attack, in order.
    work: Arc<Vec<ImageEntry>>,
    /// Each one's index in the run's image list.
    global: Vec<usize>,
}

/// Stage 2: with `--out`, check or write the manifest and keep this worker's
/// uncommitted shards; without, every image.
fn plan_shards(opts: &RunOptions, job: &Job) -> Result<Plan> {
    let prep = &job.prep;
    let share = match &opts.out {
        Some(dir) => Some(open_share(opts, &job.attack, prep, dir)?),
        None => None,
    };
    let (work, global) = match &share {
        Some(s) => (
            Arc::new(s.todo.iter().map(|&i| prep.entries[i].clone()).collect()),
            s.todo.clone(),
        ),
        None => (prep.entries.clone(), (0..prep.entries.len()).collect()),
    };
    Ok(Plan {
        share,
        work,
        global,
    })
}

/// What [`run_shards`] gives.
struct Ran {
    clean: EpsAccumulator,
    per_eps: Vec<EpsAccumulator>,
    skipped: Vec<Skipped>,
    gallery: Vec<GalleryRow>,
    adapter: crate::gpu::AdapterSummary,
    devices: Vec<crate::gpu::AdapterSummary>,
    dtype: DType,
    ran_mixed: bool,
    start: Instant,
    /// From the first batch to the last result written.
    seconds: f64,
}

/// Stage 3: every batch of the plan through the attack on the devices, the
/// results into the sums, the predictions, the gallery and the writer thread
/// (which writes the images and commits each shard: [`committer`]).
fn run_shards(opts: &RunOptions, job: &Job, plan: &Plan) -> Result<Ran> {
    let prep = &job.prep;
    let predictions = match (&opts.predictions, &plan.share) {
        (Some(p), None) => Some(PredictionWriter::create(
            p,
            prep.model.classes.clone(),
            job.minimal,
        )?),
        _ => None,
    };
    let gpus = open_gpus(&opts.device_options(), prep.model.clone(), opts.precision)?;
    let k = opts.eps.len() as u32;
    let batch = batch_for(opts, &gpus, k, plan.work.len());
    autotune(opts, &gpus, batch)?;
    let plans = gpus
        .iter()
        .map(|g| CascadePlan::new(g, batch, &job.attack))
        .collect::<Result<Vec<_>>>()?;
    let (dtype, model_name) = (gpus[0].dtype, gpus[0].model.name.clone());
    let (out_tx, writer) = committer(opts, job)?;

    let start = Instant::now();
    let mut tally = Tally {
        opts,
        job,
        plan,
        bar: progress(plan.work.len(), opts.quiet),
        out: out_tx,
        adapter: gpus[0].ctx.summary.clone(),
        devices: device_list(&gpus),
        clean: EpsAccumulator::default(),
        per_eps: vec![EpsAccumulator::default(); opts.eps.len()],
        skipped: discovery_skips(prep),
        book: None,
        predictions,
        gallery: Vec::new(),
    };
    let ran_mixed = gpus.iter().all(|g| g.ctx.coop());
    let loader = BatchLoader::new(
        plan.work.clone(),
        prep.prep,
        batch as usize,
        1 + gpus.len(),
        opts.strict,
    );
    let want_images = opts.out.is_some() || opts.gallery.is_some();
    // Each device uploads and submits its next batch before it waits for
    // the one in flight (run_pipelined).
    let result = run_pipelined(
        plans,
        loader,
        |cascade, b| {
            if b.is_empty() {
                return Ok(None);
            }
            let labels: Vec<Option<u32>> = b
                .indices
                .iter()
                .map(|&i| prep.labels[plan.global[i]])
                .collect();
            let ids: Vec<u32> = b
                .indices
                .iter()
                .map(|&i| image_id(&prep.entries[plan.global[i]].rel))
                .collect();
            cascade
                .submit_ids(&b.pixels, &labels, &ids, want_images)
                .map(Some)
        },
        |cascade, pending| {
            let Some(pending) = pending else {
                return Ok(None);
            };
            let o = cascade.finish(pending)?;
            check_finite(
                dtype,
                &model_name,
                o.clean.iter().chain(o.adv.iter().flatten()),
            )?;
            Ok(Some(o))
        },
        |b, o| tally.batch(&b, o),
    )
    .and_then(|()| tally.close_last_shard());
    let Tally {
        out,
        bar,
        clean,
        per_eps,
        skipped,
        gallery,
        predictions,
        adapter,
        devices,
        ..
    } = tally;
    drop(out);
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
    Ok(Ran {
        clean,
        per_eps,
        skipped,
        gallery,
        adapter,
        devices,
        dtype,
        ran_mixed,
        start,
        seconds,
    })
}

/// The writer thread: encodes and writes the images while the GPU works on,
/// and commits each shard ([`shards::commit`]) once its images are out.
/// Without `--out` it has nothing to do.
#[allow(clippy::type_complexity)]
fn committer(
    opts: &RunOptions,
    job: &Job,
) -> Result<(SyncSender<WriterMsg>, std::thread::JoinHandle<Result<()>>)> {
    let (out_tx, out_rx) = sync_channel::<WriterMsg>(2);
    let out_writer = match &opts.out {
        Some(dir) => Some(OutputWriter::new(OutputSpec {
            dir: dir.clone(),
            format: opts.format,
            shard_size: opts.shard_size,
            eps: opts.eps.clone(),
            method: job.method.clone(),
            shape: job.prep.model.input,
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
                    let files = w.take_written(record.shard);
                    shards::commit(&dir, &record, &rows, files)?;
                }
            }
        }
        w.finish_all()
    });
    Ok((out_tx, writer))
}

/// The run's bookkeeping as results come in ([`run_shards`]): the sums, the
/// current shard's book, prediction rows, gallery rows, and the images sent
/// to the writer thread.
struct Tally<'a> {
    opts: &'a RunOptions,
    job: &'a Job,
    plan: &'a Plan,
    bar: indicatif::ProgressBar,
    /// To the writer thread; a failed send means it has failed (its error is
    /// reported when it is joined).
    out: SyncSender<WriterMsg>,
    adapter: crate::gpu::AdapterSummary,
    devices: Vec<crate::gpu::AdapterSummary>,
    clean: EpsAccumulator,
    per_eps: Vec<EpsAccumulator>,
    skipped: Vec<Skipped>,
    book: Option<ShardBook>,
    predictions: Option<PredictionWriter>,
    gallery: Vec<GalleryRow>,
}

impl Tally<'_> {
    /// Shard bookkeeping before image `g`: a new shard closes (and commits)
    /// the previous one, after the images sent so far. `false`: the writer
    /// has failed.
    fn turn(&mut self, samples: &mut Vec<Sample>, g: usize) -> Result<bool> {
        let Some(s) = &self.plan.share else {
            return Ok(true);
        };
        let shard = g / s.shard_size;
        if self.book.as_ref().is_some_and(|b| b.shard == shard) {
            return Ok(true);
        }
        if let Some(done) = self.book.take() {
            if self
                .out
                .send(WriterMsg::Samples(std::mem::take(samples)))
                .is_err()
                || self
                    .out
                    .send(done.close(&s.worker, &self.adapter, &self.devices)?)
                    .is_err()
            {
                return Ok(false);
            }
        }
        self.book = Some(ShardBook::new(shard, self.opts.eps.len()));
        Ok(true)
    }

    /// One batch's results (`o`: `None` when every image of it was skipped).
    /// `false`: the writer has failed.
    fn batch(&mut self, b: &Batch, o: Option<BatchOutcome>) -> Result<bool> {
        let mut samples: Vec<Sample> = Vec::new();
        for (s, &at) in b.skipped.iter().zip(&b.skipped_at) {
            self.bar
                .suspend(|| eprintln!("warning: skipping {}: {}", s.image, s.reason));
            if !self.turn(&mut samples, self.plan.global[at])? {
                return Ok(false);
            }
            if let Some(bk) = self.book.as_mut() {
                bk.skipped.push(s.clone());
            }
        }
        self.skipped.extend(b.skipped.iter().cloned());
        self.bar.inc(b.skipped.len() as u64);
        let Some(mut o) = o else {
            return Ok(true);
        };
        for j in 0..b.indices.len() {
            if !self.image(b, &mut o, j, &mut samples)? {
                return Ok(false);
            }
        }
        if !samples.is_empty() && self.out.send(WriterMsg::Samples(samples)).is_err() {
            return Ok(false); // the writer failed; its error is reported below
        }
        self.bar.inc(b.len() as u64);
        Ok(true)
    }

    /// Image `j` of batch `b`: its clean and per-eps results recorded, its
    /// gallery row and adversarial images taken. `false`: the writer has
    /// failed.
    fn image(
        &mut self,
        b: &Batch,
        o: &mut BatchOutcome,
        j: usize,
        samples: &mut Vec<Sample>,
    ) -> Result<bool> {
        let (opts, job) = (self.opts, self.job);
        let prep = &job.prep;
        let classes = prep.model.classes.as_deref();
        let g = self.plan.global[b.indices[j]];
        if !self.turn(samples, g)? {
            return Ok(false);
        }
        let rel = &prep.entries[g].rel;
        let label = o.labels[j];
        let cp = o.clean[j];
        let mut gallery_row =
            (opts.gallery.is_some() && opts.gallery_pick.picks(g, rel)).then(|| {
                let item = b.pixels.len() / b.indices.len();
                GalleryRow {
                    name: rel.clone(),
                    shape: prep.model.input,
                    clean: b.pixels[j * item..(j + 1) * item]
                        .iter()
                        .map(|v| (v * 255.0).round().clamp(0.0, 255.0) as u8)
                        .collect(),
                    class: job.class_name(cp.class),
                    prob: cp.prob,
                    adv: Vec::new(),
                }
            });
        let clean_correct = cp.class == label;
        let tgt = (job.target != Target::Untargeted).then_some(o.loss_labels[j]);
        let label_prob = |p: f32, pred: &Pred| if p.is_nan() { pred.prob } else { p };
        let obs = Observation::unattacked(
            label,
            cp.class,
            cp.prob,
            label_prob(cp.label_prob, &cp),
            clean_correct,
            tgt,
        );
        self.clean.add_passes(o.passes[j]);
        if let Some(bk) = self.book.as_mut() {
            bk.clean.add_passes(o.passes[j]);
        }
        record(
            &obs,
            &mut self.clean,
            None,
            &mut self.predictions,
            &mut self.book,
            classes,
            &PredictionRow {
                image: rel,
                label,
                attack: None,
                pred: cp.class,
                pred_prob: cp.prob,
                label_prob: cp.label_prob,
                min_eps: job.minimal.then_some(None),
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
                    .map(|st| (job.stage_names.len() as u8, st[e][j].1)),
                min_eps: job
                    .top_level
                    .zip(o.min_eps.as_ref())
                    .map(|(top, m)| (top, m[j])),
                linear: o.grad_norm.as_ref().filter(|_| tgt.is_none()).map(|gn| {
                    (
                        eps.exact * gn[j] as f64,
                        cp.label_logp as f64 - p.label_logp as f64,
                    )
                }),
            };
            // A cascade's row names the attack whose image it kept.
            let row_method = match &o.stages {
                Some(st) => job.stage_names[st[e][j].0 as usize].as_str(),
                None => job.method.as_str(),
            };
            record(
                &obs,
                &mut self.per_eps[e],
                Some(e),
                &mut self.predictions,
                &mut self.book,
                classes,
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
                    class: job.class_name(p.class),
                    prob: p.prob,
                });
            }
            if let (Some(images), true) = (o.images.as_mut(), opts.out.is_some()) {
                samples.push(Sample {
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
        self.gallery.extend(gallery_row);
        Ok(true)
    }

    /// After the last batch: the last shard is complete too.
    fn close_last_shard(&mut self) -> Result<()> {
        if let (Some(done), Some(s)) = (self.book.take(), &self.plan.share) {
            let _ = self
                .out
                .send(done.close(&s.worker, &self.adapter, &self.devices)?);
        }
        Ok(())
    }
}

/// Stage 4: this process's report; with shards, the merge of every shard
/// once all are committed ([`finish_share`]), else the report files.
fn merge_and_report(opts: &RunOptions, job: &Job, plan: &Plan, ran: Ran) -> Result<Report> {
    let (seconds, images) = (ran.seconds, ran.clean.images as usize);
    let report = Report {
        model: model_info(&job.prep.model, opts.model.as_deref()),
        adapter: ran.adapter,
        devices: ran.devices,
        precision: precision_name(ran.dtype, ran.ran_mixed).into(),
        method: job.method.clone(),
        cascade: job.attack.is_cascade().then(|| job.attack.names()),
        norm: Some(job.attack.stages[0].norm.name().into()),
        target: target_text(&opts.target),
        images,
        labels: job.prep.label_source,
        quantized: opts.quantize,
        clean: ran.clean.clean_stats(),
        epsilons: EpsAccumulator::eps_stats(&opts.eps, &ran.per_eps),
        timing: Timing::new(images, seconds),
        passes: ran.clean.passes(),
        skipped: ran.skipped,
        worker: plan.share.as_ref().map(|s| s.worker.clone()),
    };
    if let Some(s) = &plan.share {
        if !ran.gallery.is_empty() {
            write_gallery_for(opts, &report, &ran.gallery)?;
        }
        return finish_share(opts, s, Some(report), ran.start);
    }
    if images == 0 {
        return Err(Error::Usage(format!(
            "none of the {} images could be read",
            job.prep.entries.len()
        )));
    }
    write_reports(opts, &report)?;
    write_gallery_for(opts, &report, &ran.gallery)?;
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
        .filter(|&u| !shards::is_committed(&share.dir, u, k))
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
