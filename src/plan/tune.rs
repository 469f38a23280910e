//! Autotune of the convolutions' tile shapes for a batch size.

use super::*;

impl GpuModel {
    /// Autotune every convolution and linear layer for batches of `batch`: each
    /// pass that runs on the tiled GEMM and is not in the context's tuning table
    /// yet has its tile variants timed (see [`ops::conv::tune`]), then the table
    /// is saved to its cache file. Plans built afterwards use the measured
    /// tiles. A second run on the same adapter finds everything cached.
    pub fn tune(&self, batch: u32) -> Result<TuneReport> {
        let start = std::time::Instant::now();
        let mut report = TuneReport::default();
        for node in &self.model.nodes {
            let input = match node.inputs.first() {
                Some(Src::Input) => self.input_shape(batch),
                Some(Src::Node(j)) => self.model.nodes[*j].shape.with_n(batch),
                None => continue,
            };
            let (p, x, w) = match &node.op {
                Op::Conv2d { params, weight, .. } => {
                    let [a, b, c, d] = weight.shape;
                    (*params, input, Shape::new(a, b, c, d))
                }
                Op::Linear { weight, .. } => {
                    let k = input.item() as u32;
                    (
                        ops::Conv2dParams::default(),
                        Shape::new(batch, k, 1, 1),
                        Shape::new(weight.shape[0], k, 1, 1),
                    )
                }
                _ => continue,
            };
            let c = ops::conv::tune(&self.ctx, &p, x, w, self.dtype, TUNE_REPS)?;
            report.timed += c.timed;
            report.cached += c.cached;
        }
        // A cache that cannot be written costs a re-tune next time, nothing more.
        report.path = match self.ctx.save_tuning() {
            Ok(p) => p,
            Err(e) => {
                log::warn!("autotune results not saved: {e}");
                None
            }
        };
        report.seconds = start.elapsed().as_secs_f64();
        Ok(report)
    }
}

/// Dispatches per timing in [`GpuModel::tune`].
const TUNE_REPS: u32 = 3;

/// What [`GpuModel::tune`] did.
#[derive(Debug, Clone, Default)]
pub struct TuneReport {
    /// Layer passes timed now.
    pub timed: usize,
    /// Layer passes found in the cache.
    pub cached: usize,
    pub seconds: f64,
    /// The cache file (`None`: in memory only).
    pub path: Option<std::path::PathBuf>,
}

impl TuneReport {
    /// One line for the user.
    pub fn describe(&self) -> String {
        let place = match &self.path {
            Some(p) => format!("saved to {}", p.display()),
            None => "kept in memory".into(),
        };
        format!(
            "autotune: timed {} convolution passes in {:.1} s ({} already known), {place}; \
             --no-tune skips it",
            self.timed, self.seconds, self.cached
        )
    }
}
