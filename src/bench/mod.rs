//! `advex bench`: end-to-end FGSM throughput on synthetic images (decoding
//! excluded, GPU work, uploads and readbacks included), and per-kernel GPU time
//! from timestamp queries.

mod pipeline;

pub use pipeline::{
    probe_model, run_pipeline, PipelineOptions, PipelineReport, RunResult, StageResult,
};

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;

use crate::attack::{Eps, Target};
use crate::error::Error;
use crate::error::Result;
use crate::gpu::DType;
use crate::model::{Model, Op};
use crate::plan::GpuModel;

#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// The model file; `None` runs the bundled EfficientNet-Lite0.
    pub model: Option<PathBuf>,
    pub batch_sizes: Vec<u32>,
    pub eps: Vec<Eps>,
    /// `--method` and `--steps` (the attack timed; fgsm by default).
    pub attack: crate::attack::AttackRequest,
    /// Timed batches per configuration (after one warm-up batch).
    pub iterations: u32,
    pub adapter: Option<String>,
    /// `--devices`: every batch size runs on all of them at once.
    pub devices: Option<String>,
    /// Storage type on the device (see [`GpuModel::with_precision`]).
    pub precision: DType,
    /// `--precision mixed` (see [`crate::gpu::ContextOptions::mixed`]).
    pub mixed: bool,
    /// Autotune at each batch size first (see [`GpuModel::tune`]).
    pub tune: bool,
    pub profile: bool,
    /// Refuse a software adapter (see [`crate::gpu::ContextOptions::require_gpu`]).
    pub require_gpu: bool,
}

/// One configuration's result (`--json` prints one per line).
#[derive(Debug, Clone, Serialize)]
pub struct BenchResult {
    pub model: String,
    /// The attack timed (`fgsm`, `pgd`, ...) and its gradient steps per eps.
    pub method: String,
    pub steps: u32,
    pub batch_size: u32,
    pub eps_count: usize,
    /// Over all devices.
    pub images_per_second: f64,
    /// Wall time of one batch on one device.
    pub seconds_per_batch: f64,
    /// The adapter's name; `N x NAME` or `A + B` with several devices.
    pub adapter: String,
    /// Devices that ran at once (`--devices`).
    pub devices: usize,
    pub backend: String,
    /// `f32` or `f16` (storage type of weights, activations and gradients).
    pub precision: String,
    pub dispatches: usize,
    /// GPU time per op kind in ms per batch (with --profile).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub profile: Option<Profile>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Profile {
    pub gpu_ms: f64,
    pub ops: BTreeMap<String, f64>,
    /// Conv + linear forward FLOPs over their GPU time (clean and eps forwards).
    pub conv_gflops: Option<f64>,
    /// The fused perturbation kernel's bytes moved per second.
    pub perturb_gbps: Option<f64>,
    /// The adapter's peak, where known (see [`known_peak`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peak: Option<Peak>,
    /// conv_gflops / peak GFLOP/s.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conv_peak_fraction: Option<f64>,
    /// perturb_gbps / peak GB/s.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub perturb_peak_fraction: Option<f64>,
}

/// An adapter's peak FP32 arithmetic (non-tensor-core FMA) and memory
/// bandwidth, for "% of peak" figures.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Peak {
    pub gflops: f64,
    pub gbps: f64,
    /// Where the figures come from (a datasheet entry, or `ADVEX_PEAK`).
    pub source: String,
}

/// Datasheet peaks (FP32 GFLOP/s without tensor cores, memory GB/s), matched by
/// substring of the adapter name, first match wins (so specific names first).
const KNOWN_PEAKS: &[(&str, f64, f64)] = &[
    ("H100 PCIe", 51_200.0, 2_000.0),
    ("H100 NVL", 60_000.0, 3_900.0),
    ("H100", 66_900.0, 3_350.0), // SXM5 80GB HBM3
    ("H200", 66_900.0, 4_800.0),
    ("A100-PCIE-40GB", 19_500.0, 1_555.0),
    ("A100-SXM4-40GB", 19_500.0, 1_555.0),
    ("A100 80GB PCIe", 19_500.0, 1_935.0),
    ("A100", 19_500.0, 2_039.0), // SXM4 80GB
    ("L40S", 91_600.0, 864.0),
    ("L4", 30_300.0, 300.0),
    ("A10G", 31_200.0, 600.0),
    ("A10", 31_200.0, 600.0),
    ("T4", 8_100.0, 320.0),
    ("RTX 4090", 82_600.0, 1_008.0),
    ("RTX 3090", 35_600.0, 936.0),
];

/// The peak of `adapter` (its name): `ADVEX_PEAK=GFLOPS,GBPS` when set, else the
/// datasheet table, else `None` (software adapters, unknown cards).
pub fn known_peak(adapter: &str) -> Option<Peak> {
    if let Ok(v) = std::env::var("ADVEX_PEAK") {
        let parts: Vec<f64> = v.split(',').filter_map(|s| s.trim().parse().ok()).collect();
        if let [gflops, gbps] = parts[..] {
            if gflops > 0.0 && gbps > 0.0 {
                return Some(Peak {
                    gflops,
                    gbps,
                    source: "ADVEX_PEAK".into(),
                });
            }
        }
        log::warn!("ADVEX_PEAK={v:?} is not GFLOPS,GBPS (two positive numbers); ignored");
    }
    KNOWN_PEAKS
        .iter()
        .find(|(name, ..)| adapter.contains(name))
        .map(|&(name, gflops, gbps)| Peak {
            gflops,
            gbps,
            source: format!("datasheet: {name}"),
        })
}

/// Kind of a dispatch from its label (`conv2d_backward`, `relu6`, ...).
fn kind(label: &str) -> String {
    label.split([' ', ':']).next().unwrap_or(label).to_string()
}

fn synthetic(n: usize, seed: u64) -> Vec<f32> {
    // A fixed pseudo-random image batch on the 8-bit grid (xorshift).
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s % 256) as f32 / 255.0
        })
        .collect()
}

fn conv_flops(model: &Model) -> u64 {
    model
        .nodes
        .iter()
        .filter(|n| matches!(n.op, Op::Conv2d { .. } | Op::Linear { .. }))
        .map(|n| match &n.op {
            Op::Conv2d { weight, .. } | Op::Linear { weight, .. } => {
                let [_, icg, kh, kw] = weight.shape;
                2 * n.shape.numel() * (icg * kh * kw) as u64
            }
            _ => 0,
        })
        .sum()
}

/// The devices' adapter names (see [`crate::gpu::devices_phrase`]).
pub(crate) fn devices_name(gpus: &[GpuModel]) -> String {
    crate::gpu::devices_phrase(gpus.iter().map(|g| g.ctx.summary.name.as_str()))
}

pub fn run_bench(
    opts: &BenchOptions,
    mut each: impl FnMut(&BenchResult),
) -> Result<Vec<BenchResult>> {
    let model = Arc::new(crate::load_model_or_bundled(opts.model.as_deref())?);
    if opts
        .attack
        .method
        .as_deref()
        .is_some_and(|m| m.contains(','))
    {
        return Err(crate::error::Error::Usage(
            "bench times one method at a time; give --method once per run (a cascade costs \
             the sum of its attacks)"
                .into(),
        ));
    }
    let mut spec =
        crate::attack::AttackSpec::resolve(&opts.attack, &opts.eps, true, Target::Untargeted)?;
    if let Some(note) = spec.fit_to_model(model.num_classes())? {
        eprintln!("note: {note}");
    }
    let gpus = crate::run::open_gpus(
        &crate::run::DeviceOptions {
            adapter: opts.adapter.clone(),
            devices: opts.devices.clone(),
            require_gpu: opts.require_gpu,
            mixed: opts.mixed,
        },
        model.clone(),
        opts.precision,
    )?;
    let ctx = gpus[0].ctx.clone();
    let mut results = Vec::new();
    'sizes: for &batch in &opts.batch_sizes {
        let mut plans = Vec::with_capacity(gpus.len());
        for (i, gpu) in gpus.iter().enumerate() {
            if opts.tune {
                for earlier in &gpus[..i] {
                    gpu.ctx.adopt_tuning(&earlier.ctx);
                }
                let r = gpu.tune(batch)?;
                if r.timed > 0 {
                    eprintln!("batch {batch}: {}", r.describe());
                }
            }
            let one = crate::attack::Cascade {
                stages: vec![spec.clone()],
            };
            match crate::attack::CascadePlan::new(gpu, batch, &one) {
                Ok(p) => plans.push(p),
                Err(e) => {
                    log::warn!("batch size {batch} skipped: {e}");
                    continue 'sizes;
                }
            }
        }
        // one part's plan (the whole batch unless it had to be split to fit
        // the adapter's storage bindings): its dispatches and profile
        let plan = &plans[0].stages[0];
        let item = gpus[0].input_shape(1).numel() as usize;
        let pixels = synthetic(item * batch as usize, batch as u64);
        let labels = vec![None; batch as usize];
        for p in &plans {
            if let Err(e) = p.run(&pixels, &labels, false) {
                log::warn!("batch size {batch} skipped: {e}");
                continue 'sizes;
            }
        }
        let iterations = opts.iterations.max(1);
        let start = Instant::now();
        // every device at once, each on its own thread
        std::thread::scope(|s| -> Result<()> {
            let runs: Vec<_> = plans
                .iter()
                .map(|p| {
                    let (pixels, labels) = (&pixels, &labels);
                    s.spawn(move || -> Result<()> {
                        // as `advex attack` runs: the next batch submitted
                        // before the one in flight is waited for
                        let ids: Vec<u32> = (0..labels.len() as u32).collect();
                        let mut held = None;
                        for _ in 0..iterations {
                            let next = p.submit_ids(pixels, labels, &ids, false)?;
                            if let Some(h) = held.replace(next) {
                                p.finish(h)?;
                            }
                        }
                        if let Some(h) = held {
                            p.finish(h)?;
                        }
                        Ok(())
                    })
                })
                .collect();
            for r in runs {
                r.join()
                    .map_err(|_| Error::Usage("a device thread panicked".into()))??;
            }
            Ok(())
        })?;
        let seconds = start.elapsed().as_secs_f64() / iterations as f64;
        let profile = if opts.profile {
            let times = ctx.profile(&plan.recordings())?;
            let mut ops: BTreeMap<String, f64> = BTreeMap::new();
            for (label, ns) in &times {
                *ops.entry(kind(label)).or_default() += ns / 1e6;
            }
            let gpu_ms = ops.values().sum();
            let conv_ms: f64 = ops
                .iter()
                .filter(|(k, _)| {
                    (k.starts_with("conv") || k.starts_with("linear") || k.starts_with("depthwise"))
                        && !k.contains("backward")
                })
                .map(|(_, v)| v)
                .sum();
            let fwd_flops =
                conv_flops(&model) as f64 * plan.batch as f64 * (1 + opts.eps.len()) as f64;
            let perturb_ms = ops.get("perturb").copied();
            let conv_gflops = (conv_ms > 0.0).then(|| fwd_flops / (conv_ms / 1e3) / 1e9);
            let perturb_gbps = perturb_ms
                .filter(|&m| m > 0.0)
                .map(|m| plan.perturb_bytes() as f64 / (m / 1e3) / 1e9);
            let peak = known_peak(&ctx.summary.name);
            Some(Profile {
                gpu_ms,
                conv_gflops,
                perturb_gbps,
                conv_peak_fraction: peak.as_ref().zip(conv_gflops).map(|(p, g)| g / p.gflops),
                perturb_peak_fraction: peak.as_ref().zip(perturb_gbps).map(|(p, g)| g / p.gbps),
                peak,
                ops,
            })
        } else {
            None
        };
        let r = BenchResult {
            model: model.name.clone(),
            method: spec.method.name().into(),
            steps: spec.steps,
            batch_size: batch,
            eps_count: opts.eps.len(),
            images_per_second: (batch as usize * plans.len()) as f64 / seconds,
            seconds_per_batch: seconds,
            adapter: devices_name(&gpus),
            devices: gpus.len(),
            backend: ctx.summary.backend.clone(),
            precision: if ctx.coop() {
                "mixed".into()
            } else {
                opts.precision.name().into()
            },
            dispatches: plan.dispatch_count(),
            profile,
        };
        each(&r);
        results.push(r);
    }
    Ok(results)
}

#[cfg(test)]
mod tests {
    use super::known_peak;

    #[test]
    fn peaks_match_the_most_specific_name() {
        if std::env::var_os("ADVEX_PEAK").is_some() {
            return; // the override wins over the table by design
        }
        let g = |n: &str| known_peak(n).map(|p| (p.gflops, p.gbps));
        assert_eq!(g("NVIDIA H100 PCIe"), Some((51_200.0, 2_000.0)));
        assert_eq!(g("NVIDIA H100 80GB HBM3"), Some((66_900.0, 3_350.0)));
        assert_eq!(g("NVIDIA H200"), Some((66_900.0, 4_800.0)));
        assert_eq!(g("NVIDIA A100-SXM4-40GB"), Some((19_500.0, 1_555.0)));
        assert_eq!(g("NVIDIA A10G"), Some((31_200.0, 600.0)));
        assert_eq!(g("llvmpipe (LLVM 15.0.6, 256 bits)"), None);
    }
}
