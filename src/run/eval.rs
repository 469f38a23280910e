//! `advex eval`: clean predictions of every image.

use super::*;

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
        precision: precision_name(dtype, gpus.iter().all(|g| g.ctx.coop())).into(),
        method: crate::report::NO_METHOD.into(),
        cascade: None,
        norm: None,
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
        passes: None,
        skipped,
        worker: None,
    };
    if let Some(p) = &opts.report {
        std::fs::write(p, report.to_json()).map_err(|e| Error::io(p, e))?;
    }
    Ok((rows, report))
}
