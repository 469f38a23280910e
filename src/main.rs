//! The `advex` command line: parse, call the library, print.

use std::process::ExitCode;

use clap::Parser;

use advex::Error;

mod cli;

use cli::args::{parse_batch_sizes, precision, Cli, Command};
use cli::commands::{devices, info, pipeline_bench};
use cli::summary::{adapters_of, print_attack_summary};

fn main() -> ExitCode {
    // First, before any thread exists: keep the Vulkan loader's display probes
    // quiet on headless machines.
    advex::gpu::quiet_window_system_probes();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"))
        .format(|buf, record| {
            use std::io::Write;
            let level = match record.level() {
                log::Level::Error => "error",
                log::Level::Warn => "warning",
                log::Level::Info => "info",
                log::Level::Debug => "debug",
                log::Level::Trace => "trace",
            };
            if record.target().starts_with("advex") {
                writeln!(buf, "{level}: {}", record.args())
            } else {
                writeln!(buf, "{level} ({}): {}", record.target(), record.args())
            }
        })
        .init();
    // Usage mistakes are user errors: exit 1 (clap's own default is 2).
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code() as u8)
        }
    }
}

fn run(cli: Cli) -> Result<(), Error> {
    match cli.command {
        Command::Devices { json } => devices(json),
        Command::Info {
            model,
            check,
            adapter,
        } => info(model, check, adapter),
        Command::Attack {
            common,
            eps,
            method,
            norm,
            steps,
            step_size,
            random_start,
            no_random_start,
            restarts,
            decay,
            seed,
            minimal,
            target,
            out,
            format,
            shard_size,
            png_compression,
            worker,
            overwrite,
            verify,
            plot,
            gallery,
            gallery_images,
            no_quantize,
            count_rounding,
            leaderboard,
        } => {
            let mut o = common.options();
            o.leaderboard = leaderboard.request()?;
            o.eps = advex::attack::parse_l2_eps_list(&eps)?; // L-inf methods check <= 1
            o.target = match target.as_deref() {
                None => advex::run::TargetSpec::None,
                Some("least-likely") => advex::run::TargetSpec::LeastLikely,
                Some(t) => advex::run::TargetSpec::Class(t.to_string()),
            };
            o.out = out;
            o.format = advex::data::OutputFormat::parse(&format).expect("clap checks --format");
            o.shard_size = shard_size;
            o.worker = worker;
            o.png_compression = advex::data::PngCompression::parse(&png_compression)
                .expect("clap checks --png-compression");
            o.overwrite = overwrite;
            o.verify = verify;
            o.plot = plot;
            o.gallery = gallery;
            o.gallery_pick = advex::report::gallery::GalleryPick::parse(&gallery_images)?;
            o.quantize = !no_quantize;
            o.attack = advex::attack::AttackRequest {
                method: Some(method),
                norm,
                steps,
                step_size,
                random_start: match (random_start, no_random_start) {
                    (true, _) => Some(true),
                    (_, true) => Some(false),
                    _ => None,
                },
                restarts,
                decay,
                seed: Some(seed),
                minimal,
                count_rounding,
            };
            let report = advex::run::run_attack(&o)?;
            print_attack_summary(&report);
            Ok(())
        }
        Command::Bench {
            model,
            batch_size,
            eps,
            method,
            steps,
            count_rounding,
            iterations,
            adapter,
            devices,
            precision: prec,
            no_tune,
            json,
            profile,
            require_gpu,
            pipeline,
            sample,
            stages_only,
        } => {
            let batch_sizes = batch_size.as_deref().map(parse_batch_sizes).transpose()?;
            if let Some(images) = pipeline {
                let opts = advex::bench::PipelineOptions {
                    images,
                    model,
                    sample,
                    batch_size: match batch_sizes.as_deref() {
                        None => None,
                        Some([b]) => Some(*b),
                        Some(_) => {
                            return Err(Error::Usage(
                                "--pipeline takes one --batch-size (or none)".into(),
                            ))
                        }
                    },
                    adapter,
                    devices,
                    require_gpu,
                    stages_only,
                };
                return pipeline_bench(&opts, json);
            }
            let batch_sizes = batch_sizes.unwrap_or_else(|| vec![1, 8, 32, 128]);
            let opts = advex::bench::BenchOptions {
                model,
                batch_sizes,
                eps: advex::attack::parse_l2_eps_list(&eps)?, // checked per method
                attack: advex::attack::AttackRequest {
                    method: Some(method),
                    steps,
                    count_rounding,
                    ..Default::default()
                },
                iterations,
                adapter,
                devices,
                precision: precision(&prec).0,
                mixed: precision(&prec).1,
                tune: !no_tune,
                profile,
                require_gpu,
            };
            // the header comes with the first result, so a usage error stands alone
            let mut header = !json;
            advex::bench::run_bench(&opts, |r| {
                if std::mem::take(&mut header) {
                    println!(
                        "{:>6} {:>5} {:>9} {:>12} {:>12} {:>10}  adapter",
                        "batch", "eps", "precision", "images/s", "ms/batch", "dispatches"
                    );
                }
                if json {
                    println!("{}", serde_json::to_string(r).expect("serialisable"));
                } else {
                    println!(
                        "{:>6} {:>5} {:>9} {:>12.2} {:>12.2} {:>10}  {} ({})",
                        r.batch_size,
                        r.eps_count,
                        r.precision,
                        r.images_per_second,
                        r.seconds_per_batch * 1e3,
                        r.dispatches,
                        r.adapter,
                        r.backend
                    );
                    if let Some(p) = &r.profile {
                        println!("        GPU {:.2} ms per batch", p.gpu_ms);
                        for (k, ms) in &p.ops {
                            println!("        {k:<28} {ms:>9.3} ms");
                        }
                        let of = |f: Option<f64>| {
                            f.map(|f| format!(" ({:.1}% of peak)", f * 100.0))
                                .unwrap_or_default()
                        };
                        if let Some(g) = p.conv_gflops {
                            println!(
                                "        conv/linear forward: {g:.1} GFLOP/s{}",
                                of(p.conv_peak_fraction)
                            );
                        }
                        if let Some(g) = p.perturb_gbps {
                            println!(
                                "        perturbation kernel: {g:.1} GB/s{}",
                                of(p.perturb_peak_fraction)
                            );
                        }
                        match &p.peak {
                            Some(k) => println!(
                                "        peak {:.0} GFLOP/s, {:.0} GB/s ({})",
                                k.gflops, k.gbps, k.source
                            ),
                            None => println!(
                                "        peak unknown for this adapter: set ADVEX_PEAK=GFLOPS,GBPS for % of peak"
                            ),
                        }
                    }
                }
            })?;
            Ok(())
        }
        Command::Import {
            onnx,
            output,
            classes,
            mean,
            std,
            size,
            resize,
        } => {
            let opts = advex::onnx::ImportOptions {
                size: size.as_deref().map(advex::onnx::parse_size).transpose()?,
                classes,
                mean: mean
                    .as_deref()
                    .map(|m| advex::onnx::parse_floats("--mean", m))
                    .transpose()?,
                std: std
                    .as_deref()
                    .map(|s| advex::onnx::parse_floats("--std", s))
                    .transpose()?,
                resize,
                ..Default::default()
            };
            let imported = advex::onnx::import_onnx_full(&onnx, &opts)?;
            for w in &imported.warnings {
                eprintln!("warning: {w}");
            }
            let model = imported.to_model(&onnx)?;
            let spec = serde_json::to_value(&imported.spec).expect("the description serialises");
            advex::model::write_model(&output, &spec, &imported.tensors, advex::model::Dtype::F32)?;
            println!(
                "wrote {}: {} nodes, {} parameters, input {:?}, {} classes",
                output.display(),
                model.nodes.len(),
                model.param_count(),
                model.input,
                model.num_classes()
            );
            Ok(())
        }
        Command::Merge { dir, leaderboard } => {
            let lb = leaderboard.request()?;
            if let Some(lb) = &lb {
                lb.existing()?;
            }
            let report = advex::run::write_merged(&dir)?;
            if let Some(lb) = &lb {
                advex::run::shards::write_leaderboard(&dir, lb, &report)?;
                println!("leaderboard entry: {}", lb.path.display());
            }
            println!(
                "merged {} images into {}: report.json, predictions.csv, accuracy.svg",
                report.images,
                dir.display()
            );
            print_attack_summary(&report);
            Ok(())
        }
        Command::Verify { dir } => {
            let checked = advex::run::shards::verify_run(&dir)?;
            println!(
                "{} is intact: {} shards, {} files checked by size and digest; report.json and \
                 predictions.csv are their merge",
                dir.display(),
                checked.shards,
                checked.files
            );
            Ok(())
        }
        Command::Eval { common } => {
            let (rows, report) = advex::run::run_eval(&common.options())?;
            if common.predictions.is_none() && rows.len() <= 50 {
                for r in &rows {
                    println!(
                        "{}\tpred {} ({:.4})\tlabel {}",
                        r.image, r.pred, r.pred_prob, r.label
                    );
                }
            }
            println!(
                "{} images, clean accuracy {:.4}, {:.1} images/s on {}",
                report.images,
                report.clean.accuracy,
                report.timing.images_per_second,
                adapters_of(&report)
            );
            Ok(())
        }
    }
}
