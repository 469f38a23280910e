//! The command line's arguments (clap).

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use advex::Error;

#[derive(Parser)]
#[command(
    name = "advex",
    version,
    about = "Adversarial examples (FGSM) on the GPU",
    propagate_version = true
)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
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
pub(crate) struct ImageArgs {
    #[arg(long, help = MODEL_HELP)]
    pub(crate) model: Option<PathBuf>,
    /// An image, or a folder walked recursively (png, jpeg, bmp, webp, gif, tiff).
    #[arg(long)]
    pub(crate) images: PathBuf,
    /// CSV `image,label` (label = index or class name; image relative to --images).
    /// Without it, class-named sub-folders give labels, else the clean prediction.
    #[arg(long)]
    pub(crate) labels: Option<PathBuf>,
    /// Write one row per image (and eps) here.
    #[arg(long)]
    pub(crate) predictions: Option<PathBuf>,
    /// JSON report (or an .svg plot of accuracy against eps).
    #[arg(long)]
    pub(crate) report: Option<PathBuf>,
    /// Images per GPU batch (default: chosen from the adapter's limits). An
    /// attack batch whose tensors would exceed the adapter's largest storage
    /// binding runs in parts that fit (same results).
    #[arg(long)]
    pub(crate) batch_size: Option<u32>,
    /// Adapter name substring (see `advex devices`).
    #[arg(long, conflicts_with = "devices")]
    pub(crate) adapter: Option<String>,
    #[arg(long, value_name = "all|LIST|NAME", help = DEVICES_HELP)]
    pub(crate) devices: Option<String>,
    /// Storage type of weights, activations and gradients on the GPU: f16 halves
    /// memory traffic (needs an adapter with SHADER_F16; arithmetic stays f32).
    /// mixed: f32 storage, convolutions and linear layers on tensor cores (f16
    /// operands, f32 accumulation, as TF32 in PyTorch) where the adapter has
    /// cooperative matrices; strict f32 elsewhere.
    #[arg(long, default_value = "f32", value_parser = ["f32", "f16", "mixed"])]
    pub(crate) precision: String,
    /// Do not autotune (by default the convolutions' tile shapes are timed on
    /// first use per adapter and cached; see ADVEX_TUNE_CACHE).
    #[arg(long)]
    pub(crate) no_tune: bool,
    /// Stop at the first unreadable image instead of skipping it.
    #[arg(long)]
    pub(crate) strict: bool,
    /// No progress bar.
    #[arg(long, short)]
    pub(crate) quiet: bool,
    #[arg(long, help = REQUIRE_GPU_HELP)]
    pub(crate) require_gpu: bool,
}

impl ImageArgs {
    pub(crate) fn options(&self) -> advex::run::RunOptions {
        let mut o = advex::run::RunOptions::bundled(&self.images);
        o.model = self.model.clone();
        o.labels = self.labels.clone();
        o.predictions = self.predictions.clone();
        o.report = self.report.clone();
        o.batch_size = self.batch_size;
        o.adapter = self.adapter.clone();
        o.devices = self.devices.clone();
        (o.precision, o.mixed) = precision(&self.precision);
        o.tune = !self.no_tune;
        o.strict = self.strict;
        o.quiet = self.quiet;
        o.require_gpu = self.require_gpu;
        o
    }
}

#[derive(Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once
pub(crate) enum Command {
    /// Make adversarial examples (FGSM) for every eps from one gradient per batch.
    Attack {
        #[command(flatten)]
        common: ImageArgs,
        /// Comma list of eps in [0,1] pixel units: decimals or fractions (1/255).
        #[arg(long, default_value = "1/255,2/255,4/255,8/255")]
        eps: String,
        /// Attack method: fgsm (one signed step), fgm (one L2 step), bim
        /// (projected signed steps), pgd (bim from a random start, with
        /// restarts), mifgsm (momentum), AutoAttack's apgd-ce, apgd-dlr and
        /// apgd-t (APGD on the cross-entropy, DLR and targeted DLR losses),
        /// fab-t (AutoAttack's targeted FAB, the closest boundary point), or
        /// square (random squares, forward passes only). A comma list is a
        /// cascade: each attack runs only on the images the earlier ones left
        /// robust; autoattack is AutoAttack's standard version, the cascade
        /// apgd-ce,apgd-t,fab-t,square with the reference's settings. Every
        /// method runs every eps.
        #[arg(long, default_value = "fgsm")]
        method: String,
        /// Norm of the threat model: linf (the default) or l2 (fgm always; bim,
        /// pgd, fab-t and square with --norm l2). L2 budgets in --eps may exceed 1.
        #[arg(long)]
        norm: Option<String>,
        /// Gradient steps of bim, pgd and mifgsm [default: 10], of apgd-* and
        /// fab-t per run [default: 100]; square's queries per image [default: 5000].
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
        /// Seed of the random starts and of square's squares (with the image's
        /// path and the pixel or query: results never depend on batch size,
        /// devices or order).
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
        /// Resuming an --out run: check every committed shard's files by
        /// their digests (a full read, for after a copy between machines),
        /// not only by their sizes. Shards that fail are redone.
        #[arg(long)]
        verify: bool,
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
        /// Also count what rounding to the 8-bit grid cost (the report's
        /// lost_to_rounding): one more forward pass per eps.
        #[arg(long, conflicts_with = "no_quantize")]
        count_rounding: bool,
        #[command(flatten)]
        leaderboard: LeaderboardArgs,
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
        /// Gradient steps of bim, pgd and mifgsm [default: 10], apgd-* [default: 100];
        /// square's queries [default: 5000].
        #[arg(long)]
        steps: Option<u32>,
        /// Time the attack with --count-rounding (one more forward per eps).
        #[arg(long)]
        count_rounding: bool,
        /// Timed batches per configuration (after one warm-up).
        #[arg(long, default_value_t = 5)]
        iterations: u32,
        /// Adapter name substring.
        #[arg(long, conflicts_with = "devices")]
        adapter: Option<String>,
        #[arg(long, value_name = "all|LIST|NAME", help = DEVICES_HELP)]
        devices: Option<String>,
        /// Storage type on the GPU (f16 needs SHADER_F16; arithmetic stays
        /// f32); mixed: tensor-core convolutions where the adapter has them.
        #[arg(long, default_value = "f32", value_parser = ["f32", "f16", "mixed"])]
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
        #[command(flatten)]
        leaderboard: LeaderboardArgs,
    },
    /// Check a finished sharded run end to end: its manifest, every shard's
    /// marker, every file the shards wrote (size and digest), and that
    /// report.json and predictions.csv are the merge of the shards. Prints
    /// what is wrong and exits 1; rerunning the same attack command redoes
    /// the damaged shards.
    Verify {
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

/// `--precision` (clap has already checked the value): the storage type,
/// and whether convolutions may run on cooperative matrices (`mixed`).
pub(crate) fn precision(s: &str) -> (advex::DType, bool) {
    match s {
        "mixed" => (advex::DType::F32, true),
        _ => (
            advex::DType::parse(s).expect("clap checks --precision"),
            false,
        ),
    }
}

/// `--batch-size 1,8,32`.
pub(crate) fn parse_batch_sizes(list: &str) -> Result<Vec<u32>, Error> {
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

/// `--leaderboard` and its fields (attack and merge).
#[derive(clap::Args)]
pub(crate) struct LeaderboardArgs {
    /// Write one leaderboard entry here in the form of RobustBench's model
    /// zoo (one eps, untargeted): clean_acc, autoattack_acc on the float
    /// points as leaderboards evaluate, autoattack_acc_8bit after rounding to
    /// the 8-bit grid, the attacks, the model passes spent. Scores the
    /// unrounded points too (--count-rounding). An existing entry keeps the
    /// fields the run does not measure.
    #[arg(long, value_name = "FILE.json")]
    pub(crate) leaderboard: Option<PathBuf>,
    /// A field of the entry the run cannot know, e.g. architecture=WRN-28-10,
    /// dataset=cifar10, additional_data=false (repeatable) [default: name and
    /// architecture the model's name, dataset the images folder's name].
    #[arg(long, value_name = "KEY=VALUE", requires = "leaderboard")]
    pub(crate) leaderboard_field: Vec<String>,
}

impl LeaderboardArgs {
    pub(crate) fn request(
        &self,
    ) -> Result<Option<advex::report::leaderboard::LeaderboardRequest>, Error> {
        self.leaderboard
            .as_ref()
            .map(|p| {
                advex::report::leaderboard::LeaderboardRequest::parse(p, &self.leaderboard_field)
            })
            .transpose()
    }
}
