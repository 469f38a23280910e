//! Running sums for one eps (or the clean pass).

use super::EpsStats;

/// What the GPU reported for one image at one eps.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Observation {
    pub label: u32,
    pub pred: u32,
    pub pred_prob: f32,
    pub label_prob: f32,
    /// Whether the clean prediction was right (success rate counts only those).
    pub clean_correct: bool,
    /// Targeted attacks: the target class (success = reaching it).
    pub target: Option<u32>,
    pub linf: f32,
    pub l2: f32,
    /// Whether the unrounded adversarial point succeeded (`None`: not rounded,
    /// or the clean pass).
    pub raw_success: Option<bool>,
    /// Steps taken when the attack first succeeded before rounding.
    pub steps: Option<u32>,
    /// A cascade of `.0` attacks: after how many of them (in order) the
    /// image's top-1 was still the label (`.0` when none changed it).
    pub stages: Option<(u8, u8)>,
    /// `--minimal` up to level `.0`: the image's smallest fooling level.
    pub min_eps: Option<(u32, Option<u32>)>,
    /// FGSM/FGM, untargeted: (eps times the clean gradient's dual norm, the
    /// first-order prediction of the loss increase; the measured increase
    /// J(x_adv) - J(x)).
    pub linear: Option<(f64, f64)>,
}

impl Observation {
    /// An image as given (the clean pass, or `advex eval`): no perturbation,
    /// nothing attack-specific.
    pub fn unattacked(
        label: u32,
        pred: u32,
        pred_prob: f32,
        label_prob: f32,
        clean_correct: bool,
        target: Option<u32>,
    ) -> Self {
        Observation {
            label,
            pred,
            pred_prob,
            label_prob,
            clean_correct,
            target,
            linf: 0.0,
            l2: 0.0,
            raw_success: None,
            steps: None,
            stages: None,
            min_eps: None,
            linear: None,
        }
    }
}

/// Whether an attack succeeded on an image: a targeted attack reaches its
/// target, an untargeted one leaves the label.
pub fn attack_success(pred: u32, label: u32, target: Option<u32>) -> bool {
    match target {
        Some(t) => pred == t,
        None => pred != label,
    }
}

#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct EpsAccumulator {
    pub images: u64,
    pub correct: u64,
    pub clean_correct: u64,
    pub successes: u64,
    pub confidence: f64,
    pub linf: f64,
    pub l2: f64,
    /// Images the unrounded point fooled and the rounded one did not.
    #[serde(default)]
    pub lost_to_rounding: u64,
    /// Whether `lost_to_rounding` was counted (images were rounded).
    #[serde(default)]
    pub rounding_counted: bool,
    /// Sum and count of steps to first success (clean-correct images).
    #[serde(default)]
    pub steps_sum: u64,
    #[serde(default)]
    pub steps_count: u64,
    /// A cascade: per attack, images still classified right after it and
    /// every attack before it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stage_correct: Vec<u64>,
    /// `--minimal` over the clean-correct images: counts per level 1..=K,
    /// then one for "not fooled up to K".
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub min_eps: Vec<u64>,
    /// Sums of the first-order prediction and the measured loss increase, and
    /// their count (images with finite losses).
    #[serde(default)]
    pub linear_predicted: f64,
    #[serde(default)]
    pub linear_measured: f64,
    #[serde(default)]
    pub linear_count: u64,
    /// Clean-correct images the attack did not fool (AutoAttack's robust
    /// accuracy, over `images`), and the same at the unrounded points (counted
    /// where `rounding_counted`).
    #[serde(default)]
    pub robust: u64,
    #[serde(default)]
    pub robust_float: u64,
    /// The clean pass's accumulator: model passes the attack spent on these
    /// images, forward and backward (one per image and pass).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub forward_passes: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub backward_passes: u64,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

impl EpsAccumulator {
    pub fn add(&mut self, o: &Observation) {
        self.images += 1;
        self.correct += (o.pred == o.label) as u64;
        self.confidence += o.pred_prob as f64;
        self.linf += o.linf as f64;
        self.l2 += o.l2 as f64;
        let success = attack_success(o.pred, o.label, o.target);
        if let Some(raw) = o.raw_success {
            self.rounding_counted = true;
            self.lost_to_rounding += (raw && !success) as u64;
        }
        if let Some((n, still)) = o.stages {
            self.stage_correct
                .resize(self.stage_correct.len().max(n as usize), 0);
            for c in &mut self.stage_correct[..still as usize] {
                *c += 1;
            }
        }
        if let (Some((top, level)), true) = (o.min_eps, o.clean_correct) {
            self.min_eps
                .resize(self.min_eps.len().max(top as usize + 1), 0);
            // level 0 (fooled clean) cannot happen for a clean-correct image
            let bin = level.map_or(top as usize, |k| (k.max(1) - 1) as usize);
            self.min_eps[bin] += 1;
        }
        if let Some((p, m)) = o.linear {
            if p.is_finite() && m.is_finite() {
                self.linear_predicted += p;
                self.linear_measured += m;
                self.linear_count += 1;
            }
        }
        if o.clean_correct {
            self.clean_correct += 1;
            self.successes += success as u64;
            self.robust += !success as u64;
            self.robust_float += !o.raw_success.unwrap_or(success) as u64;
            if let Some(s) = o.steps {
                self.steps_sum += s as u64;
                self.steps_count += 1;
            }
        }
    }

    /// Model passes an attack spent on one image (the clean accumulator's).
    pub fn add_passes(&mut self, (forward, backward): (u32, u32)) {
        self.forward_passes += forward as u64;
        self.backward_passes += backward as u64;
    }

    /// The passes summed so far, `None` when none were recorded (`advex eval`).
    pub fn passes(&self) -> Option<super::Passes> {
        (self.forward_passes + self.backward_passes > 0).then_some(super::Passes {
            forward: self.forward_passes,
            backward: self.backward_passes,
        })
    }

    /// Add another accumulator's sums (shards merge in shard order, so a split
    /// run sums in the same order as an unsplit one).
    pub fn merge(&mut self, o: &EpsAccumulator) {
        self.images += o.images;
        self.correct += o.correct;
        self.clean_correct += o.clean_correct;
        self.successes += o.successes;
        self.confidence += o.confidence;
        self.linf += o.linf;
        self.l2 += o.l2;
        self.lost_to_rounding += o.lost_to_rounding;
        self.rounding_counted |= o.rounding_counted;
        self.steps_sum += o.steps_sum;
        self.steps_count += o.steps_count;
        if self.stage_correct.len() < o.stage_correct.len() {
            self.stage_correct.resize(o.stage_correct.len(), 0);
        }
        for (a, b) in self.stage_correct.iter_mut().zip(&o.stage_correct) {
            *a += b;
        }
        self.linear_predicted += o.linear_predicted;
        self.linear_measured += o.linear_measured;
        self.linear_count += o.linear_count;
        self.robust += o.robust;
        self.robust_float += o.robust_float;
        self.forward_passes += o.forward_passes;
        self.backward_passes += o.backward_passes;
        if self.min_eps.len() < o.min_eps.len() {
            self.min_eps.resize(o.min_eps.len(), 0);
        }
        for (a, b) in self.min_eps.iter_mut().zip(&o.min_eps) {
            *a += b;
        }
    }

    /// The `--minimal` figures (see [`super::MinEpsStats`]).
    fn min_eps_stats(&self) -> Option<super::MinEpsStats> {
        let (&not_fooled, histogram) = self.min_eps.split_last()?;
        let total: u64 = self.min_eps.iter().sum();
        // the lower median: the smallest level with more than half at or below
        let mut seen = 0;
        let median = histogram.iter().enumerate().find_map(|(i, &c)| {
            seen += c;
            (2 * seen > total).then_some(i as u32 + 1)
        });
        Some(super::MinEpsStats {
            median: median.map(|k| k as f64 / 255.0),
            median_text: median.map(|k| format!("{k}/255")),
            histogram: histogram.to_vec(),
            not_fooled,
        })
    }

    fn ratio(a: u64, b: u64) -> f64 {
        if b == 0 {
            0.0
        } else {
            a as f64 / b as f64
        }
    }

    pub fn accuracy(&self) -> f64 {
        Self::ratio(self.correct, self.images)
    }

    pub fn mean_confidence(&self) -> f64 {
        if self.images == 0 {
            0.0
        } else {
            self.confidence / self.images as f64
        }
    }

    /// The clean pass's figures.
    pub fn clean_stats(&self) -> super::CleanStats {
        super::CleanStats {
            accuracy: self.accuracy(),
            mean_confidence: self.mean_confidence(),
        }
    }

    /// One figure row per eps, from their accumulators.
    pub fn eps_stats(eps: &[crate::attack::Eps], accs: &[EpsAccumulator]) -> Vec<EpsStats> {
        eps.iter()
            .zip(accs)
            .map(|(e, a)| a.stats(e.value as f64, &e.text))
            .collect()
    }

    pub fn stats(&self, eps: f64, eps_text: &str) -> EpsStats {
        let n = self.images.max(1) as f64;
        EpsStats {
            eps,
            eps_text: eps_text.to_string(),
            accuracy: self.accuracy(),
            success_rate: Self::ratio(self.successes, self.clean_correct),
            mean_adv_confidence: self.mean_confidence(),
            mean_linf: self.linf / n,
            mean_l2: self.l2 / n,
            lost_to_rounding: self.rounding_counted.then_some(self.lost_to_rounding),
            robust_accuracy: Self::ratio(self.robust, self.images),
            robust_accuracy_float: self
                .rounding_counted
                .then(|| Self::ratio(self.robust_float, self.images)),
            mean_steps_to_success: (self.steps_count > 0)
                .then(|| self.steps_sum as f64 / self.steps_count as f64),
            min_eps: self.min_eps_stats(),
            predicted_loss_increase: (self.linear_count > 0)
                .then(|| self.linear_predicted / self.linear_count as f64),
            loss_increase: (self.linear_count > 0)
                .then(|| self.linear_measured / self.linear_count as f64),
            robust_accuracy_after: (!self.stage_correct.is_empty()).then(|| {
                self.stage_correct
                    .iter()
                    .map(|&c| Self::ratio(c, self.images))
                    .collect()
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(label: u32, pred: u32, clean_correct: bool) -> Observation {
        Observation {
            linf: 0.1,
            l2: 1.0,
            ..Observation::unattacked(label, pred, 0.5, 0.1, clean_correct, None)
        }
    }

    #[test]
    fn success_counts_only_clean_correct_images() {
        let mut a = EpsAccumulator::default();
        a.add(&obs(1, 2, true)); // fooled
        a.add(&obs(1, 1, true)); // held
        a.add(&obs(3, 4, false)); // wrong before: not in the success rate
        let s = a.stats(0.1, "0.1");
        assert!((s.accuracy - 1.0 / 3.0).abs() < 1e-12);
        assert!((s.success_rate - 0.5).abs() < 1e-12);
        assert!((s.mean_l2 - 1.0).abs() < 1e-12);
        assert!(s.robust_accuracy_after.is_none());
    }

    #[test]
    fn cascades_count_robust_accuracy_after_each_attack() {
        let mut a = EpsAccumulator::default();
        let with = |pred, still| Observation {
            stages: Some((2, still)),
            ..obs(1, pred, true)
        };
        a.add(&with(2, 0)); // the first attack fooled it
        a.add(&with(2, 1)); // the second did
        a.add(&with(1, 2)); // robust to both
        a.add(&with(1, 2));
        let mut b = EpsAccumulator::default();
        b.merge(&a);
        let s = b.stats(0.1, "0.1");
        assert_eq!(s.robust_accuracy_after, Some(vec![0.75, 0.5]));
        assert_eq!(
            s.accuracy, 0.5,
            "the last attack's figure is the worst case"
        );
    }

    #[test]
    fn minimal_eps_gives_a_histogram_and_median() {
        let mut a = EpsAccumulator::default();
        let with = |level, clean_correct| Observation {
            min_eps: Some((4, level)),
            ..obs(1, 2, clean_correct)
        };
        for l in [Some(1), Some(2), Some(2), None, Some(4)] {
            a.add(&with(l, true));
        }
        a.add(&with(Some(0), false)); // wrong before the attack: not counted
        let s = a.stats(4.0 / 255.0, "4/255").min_eps.unwrap();
        assert_eq!(s.histogram, vec![1, 2, 0, 1]);
        assert_eq!(s.not_fooled, 1);
        assert_eq!(s.median_text.as_deref(), Some("2/255"));
        let mut b = EpsAccumulator::default();
        for _ in 0..3 {
            b.add(&with(None, true));
        }
        b.add(&with(Some(1), true));
        assert_eq!(b.stats(0.0, "").min_eps.unwrap().median, None);
    }
}
