//! The `advex` command line: parse, call the library, print.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use advex::{Context, ContextOptions, Error};

#[derive(Parser)]
#[command(
    name = "advex",
    version,
    about = "Adversarial examples (FGSM) on the GPU",
    propagate_version = true
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// `--model`'s help, shared by every subcommand that takes one.
const MODEL_HELP: &str = "Model file: .safetensors with advex metadata, a sidecar .json, or .onnx \
                          [default: the bundled EfficientNet-Lite0, carried inside advex]";

/// `--require-gpu`'s help.
const REQUIRE_GPU_HELP: &str = "Refuse to run on a software adapter (llvmpipe): exit 1 with what \
                                to check instead (also ADVEX_REQUIRE_GPU=1)";

/// `--devices`'s help.
const DEVICES_HELP: &str = "Drive several adapters at once, batches dealt to whichever is \
                            free, results identical to one device: `all` (every GPU; those \
                            CUDA_VISIBLE_DEVICES assigns where set; software adapters only where \
                            there is no GPU), indices from `advex devices` (0,2; an index twice \
                            opens two streams on one adapter) or a name substring";

#[derive(clap::Args)]
struct ImageArgs {
    #[arg(long, help = MODEL_HELP)]
    model: Option<PathBuf>,
    /// An image, or a folder walked recursively (png, jpeg, bmp, webp, gif, tiff).
    #[arg(long)]
    images: PathBuf,
    /// CSV `image,label` (label = index or class name; image relative to --images).
    /// Without it, class-named sub-folders give labels, else the clean prediction.
    #[arg(long)]
    labels: Option<PathBuf>,
    /// Write one row per image (and eps) here.
    #[arg(long)]
    predictions: Option<PathBuf>,
    /// JSON report (or an .svg plot of accuracy against eps).
    #[arg(long)]
    report: Option<PathBuf>,
    /// Images per GPU batch (default: chosen from the adapter's limits). An
    /// attack batch whose tensors would exceed the adapter's largest storage
    /// binding runs in parts that fit (same results).
    #[arg(long)]
    batch_size: Option<u32>,
    /// Adapter name substring (see `advex devices`).
    #[arg(long, conflicts_with = "devices")]
    adapter: Option<String>,
    #[arg(long, value_name = "all|LIST|NAME", help = DEVICES_HELP)]
    devices: Option<String>,
    /// Storage type of weights, activations and gradients on the GPU: f16 halves
    /// memory traffic (needs an adapter with SHADER_F16; arithmetic stays f32).
    #[arg(long, default_value = "f32", value_parser = ["f32", "f16"])]
    precision: String,
    /// Do not autotune (by default the convolutions' tile shapes are timed on
    /// first use per adapter and cached; see ADVEX_TUNE_CACHE).
    #[arg(long)]
    no_tune: bool,
    /// Stop at the first unreadable image instead of skipping it.
    #[arg(long)]
    strict: bool,
    /// No progress bar.
    #[arg(long, short)]
    quiet: bool,
    #[arg(long, help = REQUIRE_GPU_HELP)]
    require_gpu: bool,
}

impl ImageArgs {
    fn options(&self) -> advex::attack::RunOptions {
        let mut o = advex::attack::RunOptions::bundled(&self.images);
        o.model = self.model.clone();
        o.labels = self.labels.clone();
        o.predictions = self.predictions.clone();
        o.report = self.report.clone();
        o.batch_size = self.batch_size;
        o.adapter = self.adapter.clone();
        o.devices = self.devices.clone();
        o.precision = precision(&self.precision);
        o.tune = !self.no_tune;
        o.strict = self.strict;
        o.quiet = self.quiet;
        o.require_gpu = self.require_gpu;
        o
    }
}

#[derive(Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once
enum Command {
    /// Make adversarial examples (FGSM) for every eps from one gradient per batch.
    Attack {
        #[command(flatten)]
        common: ImageArgs,
        /// Comma list of eps in [0,1] pixel units: decimals or fractions (1/255).
        #[arg(long, default_value = "1/255,2/255,4/255,8/255")]
        eps: String,
        /// Attack method: fgsm (one signed step), fgm (one L2 step), bim
        /// (projected signed steps), pgd (bim from a random start, with
        /// restarts), mifgsm (momentum), or AutoAttack's apgd-ce, apgd-dlr and
        /// apgd-t (APGD on the cross-entropy, DLR and targeted DLR losses).
        /// Every method runs every eps.
        #[arg(long, default_value = "fgsm")]
        method: String,
        /// Norm of the threat model: linf (the default) or l2 (fgm always; bim
        /// and pgd with --norm l2, as torchattacks' PGDL2). L2 budgets in --eps
        /// may exceed 1.
        #[arg(long)]
        norm: Option<String>,
        /// Gradient steps of bim, pgd and mifgsm [default: 10], of apgd-* per
        /// run [default: 100].
        #[arg(long)]
        steps: Option<u32>,
        /// Step size in [0,1] pixel units, decimal or fraction, the same for
        /// every eps [default: 2.5 * eps / steps for bim and pgd, eps / steps
        /// for mifgsm].
        #[arg(long, value_name = "A")]
        step_size: Option<String>,
        /// Start pgd and apgd-* at a uniform random point of the eps ball (their default).
        #[arg(long, overrides_with = "no_random_start")]
        random_start: bool,
        /// Start pgd and apgd-* at the clean image.
        #[arg(long)]
        no_random_start: bool,
        /// Restarts of pgd (each image keeps its best: successful first, then
        /// highest loss) and of apgd-* (later runs attack the images earlier
        /// ones did not fool; apgd-t restarts per target class) [default: 1].
        #[arg(long)]
        restarts: Option<u32>,
        /// mifgsm's momentum decay [default: 1.0].
        #[arg(long)]
        decay: Option<f64>,
        /// Seed of the random starts (with the image's path and the pixel:
        /// results never depend on batch size, devices or order).
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Also find each image's smallest eps on the 8-bit grid (k/255, up to
        /// the one --eps) at which the attack succeeds, by bisection: a
        /// min_eps column in the predictions, its median and histogram in the
        /// report.
        #[arg(long)]
        minimal: bool,
        /// Targeted attack: a class index or name, or `least-likely`.
        #[arg(long)]
        target: Option<String>,
        /// Write adversarial images under DIR/eps_<value>/ (see --format).
        #[arg(long)]
        out: Option<PathBuf>,
        /// How --out is written: png (one file per image and eps), webdataset
        /// (tar shards: KEY.png, KEY.cls, KEY.json) or safetensors (u8 [N,C,H,W]
        /// shards with labels and predictions).
        #[arg(long, default_value = "png", value_parser = ["png", "webdataset", "safetensors"])]
        format: String,
        /// Images per shard for --format webdataset|safetensors (sorted by path).
        #[arg(long, default_value_t = advex::data::DEFAULT_SHARD_SIZE)]
        shard_size: usize,
        /// PNG compression for --format png|webdataset: fast (about 30x faster
        /// than default for files 3% larger), default (zlib 6) or best.
        #[arg(long, default_value = "fast", value_parser = ["fast", "default", "best"])]
        png_compression: String,
        /// This process's share of a sharded --out run: INDEX/COUNT takes the
        /// shards u with u % COUNT == INDEX. Without it the array index of Slurm,
        /// Kubernetes Indexed Jobs (with ADVEX_WORKERS), AWS Batch, Google Cloud
        /// Batch or torchrun (RANK/WORLD_SIZE) is used, else every shard.
        #[arg(long, value_name = "INDEX/COUNT")]
        worker: Option<String>,
        /// Replace the eps_* folders of an existing --out.
        #[arg(long)]
        overwrite: bool,
        /// Also draw accuracy against eps as SVG here.
        #[arg(long)]
        plot: Option<PathBuf>,
        /// Draw a contact sheet (PNG) of a few images: clean, the perturbation
        /// amplified, and the adversarial image per eps, each with its
        /// prediction and confidence.
        #[arg(long, value_name = "FILE.png")]
        gallery: Option<PathBuf>,
        /// The gallery's images: how many (the first N) or a comma list of
        /// paths relative to --images.
        #[arg(long, value_name = "N|LIST", default_value = "6", requires = "gallery")]
        gallery_images: String,
        /// Keep adversarial pixels in f32 instead of rounding to the 8-bit grid.
        #[arg(long)]
        no_quantize: bool,
    },
    /// Throughput of FGSM on synthetic images: images/s per batch size.
    Bench {
        #[arg(long, help = MODEL_HELP)]
        model: Option<PathBuf>,
        /// Batch sizes, comma separated (sizes that do not fit are skipped)
        /// [default: 1,8,32,128; with --pipeline, chosen as attack does].
        #[arg(long)]
        batch_size: Option<String>,
        /// Eps list; its length is the sweep size (8 for an 8-eps sweep).
        #[arg(long, default_value = "1/255")]
        eps: String,
        /// The attack timed (see `advex attack --help`).
        #[arg(long, default_value = "fgsm")]
        method: String,
        /// Gradient steps of bim, pgd and mifgsm [default: 10], apgd-* [default: 100].
        #[arg(long)]
        steps: Option<u32>,
        /// Timed batches per configuration (after one warm-up).
        #[arg(long, default_value_t = 5)]
        iterations: u32,
        /// Adapter name substring.
        #[arg(long, conflicts_with = "devices")]
        adapter: Option<String>,
        #[arg(long, value_name = "all|LIST|NAME", help = DEVICES_HELP)]
        devices: Option<String>,
        /// Storage type on the GPU (f16 needs SHADER_F16; arithmetic stays f32).
        #[arg(long, default_value = "f32", value_parser = ["f32", "f16"])]
        precision: String,
        /// Do not autotune before timing.
        #[arg(long)]
        no_tune: bool,
        /// Print one JSON object per configuration.
        #[arg(long)]
        json: bool,
        /// GPU time per op kind from timestamp queries.
        #[arg(long)]
        profile: bool,
        #[arg(long, help = REQUIRE_GPU_HELP)]
        require_gpu: bool,
        /// Host-pipeline benchmark on a folder of images: each stage alone per
        /// core (discover, read, decode, resize/crop, upload, readback, encode,
        /// write), then whole eval and attack runs with a near-free model
        /// (or --model); see tools/make_jpegs.rs for a folder of JPEGs.
        #[arg(long, value_name = "DIR")]
        pipeline: Option<PathBuf>,
        /// With --pipeline: images timed per stage.
        #[arg(long, default_value_t = 200, requires = "pipeline")]
        sample: usize,
        /// With --pipeline: only the per-stage timings.
        #[arg(long, requires = "pipeline")]
        stages_only: bool,
    },
    /// Convert an ONNX model (e.g. from `torch.onnx.export`) to an advex model file.
    Import {
        /// The .onnx file (external weights in FILE.onnx.data are read too).
        onnx: PathBuf,
        /// Output .safetensors file.
        #[arg(short, long)]
        output: PathBuf,
        /// Class names, one per line.
        #[arg(long)]
        classes: Option<PathBuf>,
        /// Per-channel mean of the normalisation the model expects (comma list, [0,1] units).
        #[arg(long)]
        mean: Option<String>,
        /// Per-channel standard deviation (comma list).
        #[arg(long)]
        std: Option<String>,
        /// Input size HxW when the file leaves it dynamic (or one number).
        #[arg(long)]
        size: Option<String>,
        /// Shorter-side resize before the center crop, for images of other sizes.
        #[arg(long)]
        resize: Option<u32>,
    },
    /// Combine the committed shards of a sharded run (attack --out DIR, any
    /// number of workers) into DIR/report.json, DIR/predictions.csv and
    /// DIR/accuracy.svg; lists the shards still missing.
    Merge {
        /// The run's --out folder.
        dir: PathBuf,
    },
    /// Clean predictions only.
    Eval {
        #[command(flatten)]
        common: ImageArgs,
    },
    /// List GPU adapters: name, backend, type and key limits.
    Devices {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Describe a model: layers, output shapes, parameters, input, classes, FLOPs.
    Info {
        #[arg(long, help = MODEL_HELP)]
        model: Option<PathBuf>,
        /// Also build the model on the GPU and check that it records (slower).
        #[arg(long)]
        check: bool,
        /// Adapter name substring (see `advex devices`).
        #[arg(long)]
        adapter: Option<String>,
    },
}

/// `--precision` (clap has already checked the value).
fn precision(s: &str) -> advex::DType {
    advex::DType::parse(s).expect("clap checks --precision")
}

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
            plot,
            gallery,
            gallery_images,
            no_quantize,
        } => {
            let mut o = common.options();
            o.eps = advex::attack::parse_l2_eps_list(&eps)?; // L-inf methods check <= 1
            o.target = match target.as_deref() {
                None => advex::attack::TargetSpec::None,
                Some("least-likely") => advex::attack::TargetSpec::LeastLikely,
                Some(t) => advex::attack::TargetSpec::Class(t.to_string()),
            };
            o.out = out;
            o.format = advex::data::OutputFormat::parse(&format).expect("clap checks --format");
            o.shard_size = shard_size;
            o.worker = worker;
            o.png_compression = advex::data::PngCompression::parse(&png_compression)
                .expect("clap checks --png-compression");
            o.overwrite = overwrite;
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
            };
            let report = advex::attack::run_attack(&o)?;
            print_attack_summary(&report);
            Ok(())
        }
        Command::Bench {
            model,
            batch_size,
            eps,
            method,
            steps,
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
                    ..Default::default()
                },
                iterations,
                adapter,
                devices,
                precision: precision(&prec),
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
        Command::Merge { dir } => {
            let report = advex::attack::write_merged(&dir)?;
            println!(
                "merged {} images into {}: report.json, predictions.csv, accuracy.svg",
                report.images,
                dir.display()
            );
            print_attack_summary(&report);
            Ok(())
        }
        Command::Eval { common } => {
            let (rows, report) = advex::attack::run_eval(&common.options())?;
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

/// `--batch-size 1,8,32`.
fn parse_batch_sizes(list: &str) -> Result<Vec<u32>, Error> {
    list.split(',')
        .map(|s| {
            s.trim()
                .parse::<u32>()
                .ok()
                .filter(|&b| b > 0)
                .ok_or_else(|| {
                    Error::Usage(format!(
                        "--batch-size {s:?}: expected positive integers like 1,8,32"
                    ))
                })
        })
        .collect()
}

/// `advex bench --pipeline DIR`: a table (or one JSON object).
fn pipeline_bench(opts: &advex::bench::PipelineOptions, json: bool) -> Result<(), Error> {
    let scratch = std::env::temp_dir().join(format!("advex-pipeline-{}", std::process::id()));
    let result = advex::bench::run_pipeline(opts, &scratch);
    let _ = std::fs::remove_dir_all(&scratch);
    let r = result?;
    if json {
        println!("{}", serde_json::to_string(&r).expect("serialisable"));
        return Ok(());
    }
    println!(
        "host pipeline: {} images, {} cores, model {}, adapter {}",
        r.images, r.cores, r.model, r.adapter
    );
    println!(
        "{:<28} {:>8} {:>14}",
        "stage (one core)", "images", "images/s/core"
    );
    for s in &r.stages {
        println!("{:<28} {:>8} {:>14.1}", s.stage, s.images, s.per_core);
    }
    if !r.runs.is_empty() {
        println!(
            "{:<28} {:>8} {:>14}",
            "run (all cores)", "images", "images/s"
        );
        for x in &r.runs {
            println!(
                "{:<28} {:>8} {:>14.1}",
                x.run, x.images, x.images_per_second
            );
        }
    }
    Ok(())
}

fn devices(json: bool) -> Result<(), Error> {
    let adapters = advex::gpu::list_adapters();
    let summaries: Vec<_> = adapters.iter().map(advex::gpu::describe_adapter).collect();
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&summaries).expect("serialisable")
        );
        return Ok(());
    }
    let diagnosis = advex::gpu::Diagnosis::gather();
    let print_diagnosis = || {
        println!();
        for line in diagnosis.lines() {
            println!("{line}");
        }
    };
    if summaries.is_empty() {
        print_diagnosis();
        return Err(Error::NoAdapter {
            advice: diagnosis.advice(),
        });
    }
    for (i, s) in summaries.iter().enumerate() {
        println!("{}{}: {}", if i == 0 { "* " } else { "  " }, i, s.name);
        println!(
            "     backend {}, {}, driver {}",
            s.backend, s.device_type, s.driver
        );
        println!(
            "     max storage binding {} MiB, max buffer {} MiB, workgroups/dim {}, invocations/workgroup {}, workgroup memory {} KiB",
            s.max_storage_buffer_binding_size >> 20,
            s.max_buffer_size >> 20,
            s.max_compute_workgroups_per_dimension,
            s.max_compute_invocations_per_workgroup,
            s.max_compute_workgroup_storage_size >> 10
        );
        println!(
            "     shader-f16 {}, timestamps {}",
            yes(s.shader_f16),
            yes(s.timestamp_query)
        );
    }
    println!("(* = chosen by default; pick another with --adapter NAME or WGPU_ADAPTER_NAME)");
    let ids: Vec<advex::gpu::AdapterId> = adapters.iter().map(advex::gpu::AdapterId::of).collect();
    let visible = std::env::var("CUDA_VISIBLE_DEVICES").ok();
    // CUDA_VISIBLE_DEVICES is read once here (it warns where it does not map)
    let mapped = match advex::gpu::cuda_visible_choice(visible.as_deref(), &ids) {
        Ok(Some((i, how))) => {
            println!("{how}: advex uses adapter {i} when no --adapter is given");
            true
        }
        Ok(None) => false,
        Err(e) => {
            println!("{e}");
            false
        }
    };
    let visible = visible.filter(|_| mapped);
    match advex::gpu::select_devices("all", &ids, visible.as_deref()) {
        Ok((_, how)) if how.starts_with("--devices") => {
            println!("{how}; --devices 0,2 or --devices NAME pick others")
        }
        Ok((_, how)) => {
            println!("--devices all: {how}; --devices 0,2 or --devices NAME pick others")
        }
        Err(e) => println!("--devices all: {e}"),
    }
    print_diagnosis();
    if adapters
        .iter()
        .all(|a| a.get_info().device_type == wgpu::DeviceType::Cpu)
    {
        let why = diagnosis.advice().unwrap_or_else(|| {
            "no GPU is visible to this machine (/dev/nvidia*, /dev/dri/renderD*)".into()
        });
        println!("No GPU adapter, only software rendering on the CPU: {why}.");
    }
    Ok(())
}

/// The report's adapter, or its devices: `NAME`, `2 x NAME`, `A + B`.
fn adapters_of(r: &advex::report::Report) -> String {
    if r.devices.len() < 2 {
        return r.adapter.name.clone();
    }
    advex::gpu::devices_phrase(r.devices.iter().map(|d| d.name.as_str()))
}

fn print_attack_summary(r: &advex::report::Report) {
    println!(
        "{} on {} image{} ({}), {}: clean accuracy {:.4}",
        r.method.to_uppercase(),
        r.images,
        if r.images == 1 { "" } else { "s" },
        r.model.name,
        match r.devices.len() {
            0 | 1 => format!("adapter {}", r.adapter.name),
            n => format!("{n} devices ({})", adapters_of(r)),
        },
        r.clean.accuracy
    );
    let lost = r.epsilons.iter().any(|e| e.lost_to_rounding.is_some());
    let steps = r.epsilons.iter().any(|e| e.mean_steps_to_success.is_some())
        && r.method != "fgsm"
        && r.method != "fgm";
    println!(
        "{:>10} {:>9} {:>9} {:>10} {:>9} {:>9}{}{}",
        "eps",
        "accuracy",
        "success",
        "adv conf",
        "L-inf",
        "L2",
        if lost { "  lost to rounding" } else { "" },
        if steps { "  steps to success" } else { "" }
    );
    for e in &r.epsilons {
        println!(
            "{:>10} {:>9.4} {:>9.4} {:>10.4} {:>9.5} {:>9.4}{}{}",
            e.eps_text,
            e.accuracy,
            e.success_rate,
            e.mean_adv_confidence,
            e.mean_linf,
            e.mean_l2,
            match e.lost_to_rounding {
                Some(n) if lost => format!("{n:>18}"),
                _ => String::new(),
            },
            match e.mean_steps_to_success {
                Some(m) if steps => format!("{m:>18.2}"),
                _ => String::new(),
            }
        );
    }
    for e in &r.epsilons {
        if let Some(m) = &e.min_eps {
            let fooled: u64 = m.histogram.iter().sum();
            println!(
                "smallest fooling eps (--minimal, clean-correct images): median {}, {} fooled \
                 at or below {}, {} not",
                m.median_text.as_deref().unwrap_or("above the eps"),
                fooled,
                e.eps_text,
                m.not_fooled
            );
        }
    }
    if let Some(names) = &r.cascade {
        println!("robust accuracy after each attack of the cascade (the table is the worst case):");
        print!("{:>10}", "eps");
        for n in names {
            print!(" {n:>10}");
        }
        println!();
        for e in &r.epsilons {
            print!("{:>10}", e.eps_text);
            for a in e.robust_accuracy_after.iter().flatten() {
                print!(" {a:>10.4}");
            }
            println!();
        }
    }
    if !r.skipped.is_empty() {
        println!(
            "skipped {} unreadable images (listed in the report)",
            r.skipped.len()
        );
    }
    let rate = r.timing.images_per_second;
    // three significant figures below 1 image/s (APGD on a CPU adapter)
    let decimals = if rate >= 1.0 || rate == 0.0 {
        1
    } else {
        (2 - rate.log10().floor() as i32).clamp(1, 6) as usize
    };
    println!("{:.2} s, {rate:.decimals$} images/s", r.timing.seconds);
}

fn yes(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

fn info(path: Option<PathBuf>, check: bool, adapter: Option<String>) -> Result<(), Error> {
    let model = advex::load_model_or_bundled(path.as_deref())?;
    print!("{}", model.summary());
    if check {
        let ctx = std::sync::Arc::new(Context::new(ContextOptions {
            adapter,
            ..Default::default()
        })?);
        let gpu = advex::plan::GpuModel::new(ctx.clone(), std::sync::Arc::new(model))?;
        let plan = gpu.gradient_plan(1, 1.0)?;
        println!(
            "GPU check on {}: forward + backward records {} dispatches in one submit",
            ctx.summary.name,
            plan.forward.dispatch_count() + plan.backward.dispatch_count()
        );
    }
    Ok(())
}
