//! What an attack plan works on and gives back: targets, predictions, a
//! batch's outcome, and the images' identities for the random numbers.

/// Which class's loss the attack moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// Raise the loss of the label.
    Untargeted,
    /// Lower the loss of this class.
    Class(u32),
    /// Lower the loss of the class the clean model finds least likely.
    LeastLikely,
}

/// A prediction: class, its probability, and the label's probability.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pred {
    pub class: u32,
    pub prob: f32,
    pub label_prob: f32,
    /// The label's log-probability, -J(x) (NaN without a label).
    pub label_logp: f32,
}

/// What one batch gives back.
pub struct BatchOutcome {
    /// Labels used for accuracy (given, or the clean prediction).
    pub labels: Vec<u32>,
    /// Classes whose loss was moved (labels, or targets).
    pub loss_labels: Vec<u32>,
    pub clean: Vec<Pred>,
    /// Per eps, per image.
    pub adv: Vec<Vec<Pred>>,
    /// Per eps, per image: the unrounded point's prediction (when rounding).
    pub raw_adv: Option<Vec<Vec<Pred>>>,
    /// Per eps, per image: (L-inf, L2) of the perturbation.
    pub norms: Vec<Vec<(f32, f32)>>,
    /// Per eps, per image: the steps taken when the attack first succeeded
    /// (counted over restarts; `None`: it never did before rounding).
    pub first_success: Vec<Vec<Option<u32>>>,
    /// Per eps, per image: CHW 8-bit pixels (when asked for).
    pub images: Option<Vec<Vec<Vec<u8>>>>,
    /// A cascade, per eps, per image: (the attack whose result is kept, how
    /// many leading attacks left the top-1 on the label).
    pub stages: Option<Vec<Vec<(u8, u8)>>>,
    /// FGSM and FGM: per image the clean gradient's L1 (FGSM) or L2 (FGM)
    /// norm; eps times it is the first-order prediction of the loss increase.
    pub grad_norm: Option<Vec<f32>>,
    /// --minimal, per image: the smallest eps level (k of k/255) at which the
    /// attack succeeded (0: the clean image already did), `None`: not up to
    /// the run's eps.
    pub min_eps: Option<Vec<Option<u32>>>,
    /// Per image: the model passes its attack ran, (forward, backward), one
    /// per image and pass; a cascade sums the attacks that ran on it.
    pub passes: Vec<(u32, u32)>,
}

impl BatchOutcome {
    /// Append the next images' outcome (a batch run in parts).
    pub fn append(&mut self, o: BatchOutcome) {
        fn per_eps<T>(a: &mut [Vec<T>], b: Vec<Vec<T>>) {
            for (x, y) in a.iter_mut().zip(b) {
                x.extend(y);
            }
        }
        self.labels.extend(o.labels);
        self.loss_labels.extend(o.loss_labels);
        self.clean.extend(o.clean);
        per_eps(&mut self.adv, o.adv);
        if let (Some(a), Some(b)) = (self.raw_adv.as_mut(), o.raw_adv) {
            per_eps(a, b);
        }
        per_eps(&mut self.norms, o.norms);
        per_eps(&mut self.first_success, o.first_success);
        if let (Some(a), Some(b)) = (self.images.as_mut(), o.images) {
            per_eps(a, b);
        }
        if let (Some(a), Some(b)) = (self.stages.as_mut(), o.stages) {
            per_eps(a, b);
        }
        if let (Some(a), Some(b)) = (self.grad_norm.as_mut(), o.grad_norm) {
            a.extend(b);
        }
        if let (Some(a), Some(b)) = (self.min_eps.as_mut(), o.min_eps) {
            a.extend(b);
        }
        self.passes.extend(o.passes);
    }
}

/// An image's identity for the random numbers: a hash of its path relative to
/// `--images` (so it does not depend on which other images are in the run).
pub fn image_id(rel: &str) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in rel.bytes() {
        h ^= b as u32;
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}
