//! Metrics per eps, the JSON report, the predictions CSV and the accuracy plot.

pub mod gallery;
pub mod leaderboard;
mod metrics;
mod plot;
mod predictions;

pub use gallery::write_gallery;
pub use metrics::{attack_success, EpsAccumulator, Observation};
pub use plot::write_svg_plot;
pub use predictions::{
    prediction_header, prediction_record, PredictionRow, PredictionWriter, NO_METHOD,
    PREDICTION_HEADER, PREDICTION_HEADER_NAMED,
};

use serde::Serialize;

use crate::data::{LabelSource, Skipped};
use crate::gpu::AdapterSummary;

/// The model as the report describes it.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct ModelInfo {
    pub name: String,
    pub path: String,
    pub input: [u32; 3],
    pub classes: u32,
    pub parameters: u64,
    pub flops: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct CleanStats {
    pub accuracy: f64,
    pub mean_confidence: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct EpsStats {
    pub eps: f64,
    /// As written on the command line (`1/255`).
    pub eps_text: String,
    pub accuracy: f64,
    pub success_rate: f64,
    pub mean_adv_confidence: f64,
    pub mean_linf: f64,
    pub mean_l2: f64,
    /// Images the attack fooled before rounding to the 8-bit grid and not
    /// after (only with `--count-rounding`, which scores the unrounded point
    /// too: one more forward per eps).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lost_to_rounding: Option<u64>,
    /// AutoAttack's robust accuracy: the share of all images classified
    /// right clean and not fooled by the attack (`accuracy` also counts an
    /// image the clean model got wrong that the attacked one gets right).
    pub robust_accuracy: f64,
    /// The same at the unrounded points, as leaderboards evaluate (only
    /// with `--count-rounding`; with `--no-quantize`, `robust_accuracy` is
    /// already the float figure).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub robust_accuracy_float: Option<f64>,
    /// Mean steps (over restarts) to the first success, over the
    /// clean-correct images it fooled at some step; the last step is judged
    /// on the rounded image unless `--count-rounding`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mean_steps_to_success: Option<f64>,
    /// A cascade (`--method a,b`): robust accuracy after each attack, in the
    /// order of [`Report::cascade`]; the last is the pointwise worst case,
    /// which `accuracy` and the other figures describe.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub robust_accuracy_after: Option<Vec<f64>>,
    /// `--minimal`: each clean-correct image's smallest fooling eps on the
    /// 8-bit grid.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_eps: Option<MinEpsStats>,
    /// The seed's linear view (untargeted FGSM and FGM): the first-order
    /// prediction of the loss increase, eps times the clean gradient's L1
    /// norm (L2 for FGM), mean over images ...
    #[serde(skip_serializing_if = "Option::is_none")]
    pub predicted_loss_increase: Option<f64>,
    /// ... beside the measured mean of J(x_adv) - J(x) (cross-entropy of the
    /// label at the scored image).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loss_increase: Option<f64>,
}

/// The `--minimal` figures of one eps, over the clean-correct images.
#[derive(Debug, Clone, Serialize)]
pub struct MinEpsStats {
    /// Median smallest fooling eps (images not fooled up to the run's eps
    /// count as larger); `None` when at least half were not fooled.
    pub median: Option<f64>,
    /// The median as `k/255`.
    pub median_text: Option<String>,
    /// `histogram[k - 1]`: images first fooled at eps k/255, k = 1..=K.
    pub histogram: Vec<u64>,
    /// Images not fooled at any eps up to the run's.
    pub not_fooled: u64,
}

/// Model passes spent: one per image and pass through the model, forward or
/// backward to the input (padding of a partial batch not counted).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Passes {
    pub forward: u64,
    pub backward: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Timing {
    pub seconds: f64,
    pub images_per_second: f64,
}

impl Timing {
    pub fn new(images: usize, seconds: f64) -> Self {
        Timing {
            seconds,
            images_per_second: images as f64 / seconds.max(1e-9),
        }
    }
}

/// The `--report` JSON (DESIGN.md's schema, plus a few extra fields).
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub model: ModelInfo,
    pub adapter: AdapterSummary,
    /// Every device of a `--devices` run with more than one (`adapter` is the
    /// first); absent with one device.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<AdapterSummary>,
    /// `f32` or `f16`: storage type of weights, activations and gradients.
    pub precision: String,
    pub method: String,
    /// The attacks of a cascade, in order (`method` joins them); absent for
    /// one method.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cascade: Option<Vec<String>>,
    /// The threat model's norm, `linf` or `l2` (absent for `advex eval`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub norm: Option<String>,
    /// `None` for untargeted; else the target (class index, or `least-likely`).
    pub target: Option<String>,
    pub images: usize,
    pub labels: LabelSource,
    pub quantized: bool,
    pub clean: CleanStats,
    pub epsilons: Vec<EpsStats>,
    pub timing: Timing,
    /// Model passes the attack spent, summed over images (absent for `advex
    /// eval`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub passes: Option<Passes>,
    pub skipped: Vec<Skipped>,
    /// The share of a sharded run this report covers, when it is not the
    /// whole run (see `advex merge`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub worker: Option<crate::run::Worker>,
}

impl Report {
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("report serialises")
    }
}
