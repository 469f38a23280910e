//! The FGSM family: which attack, its settings, their defaults and checks.

use super::{Eps, Target};
use crate::error::{Error, Result};

/// An attack method (`--method`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// One signed-gradient step of eps (Goodfellow et al. 2015).
    Fgsm,
    /// One L2 step: `x + eps * g / ||g||_2`.
    Fgm,
    /// Basic iterative method: projected signed steps from x (Kurakin et al. 2017).
    Bim,
    /// BIM from a uniform random start in the ball, with restarts (Madry et al. 2018).
    Pgd,
    /// Momentum iterative FGSM (Dong et al. 2018).
    Mifgsm,
    /// AutoAttack's APGD on the cross-entropy loss (Croce & Hein 2020).
    ApgdCe,
    /// APGD on the DLR loss (AutoAttack's `apgd-dlr`).
    ApgdDlr,
    /// APGD on the targeted DLR loss, one run per target class: the classes
    /// the clean model ranks 2nd to 10th (AutoAttack's `apgd-t`).
    ApgdT,
    /// The Square Attack: random squares, forward passes only
    /// (Andriushchenko et al. 2020; AutoAttack's `square`).
    Square,
    /// FAB-T: the fast adaptive boundary attack toward each of the classes
    /// the clean model ranks 2nd to 10th (Croce & Hein 2020; AutoAttack's `fab-t`).
    FabT,
}

/// Every method name `--method` takes.
pub const METHOD_NAMES: [&str; 10] = [
    "fgsm", "fgm", "bim", "pgd", "mifgsm", "apgd-ce", "apgd-dlr", "apgd-t", "fab-t", "square",
];

/// AutoAttack's `apgd-t` attacks the 9 classes ranked after the top one.
pub const APGD_TARGETS: u32 = 9;

impl Method {
    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s.trim().to_ascii_lowercase().as_str() {
            "fgsm" => Method::Fgsm,
            "fgm" => Method::Fgm,
            "bim" => Method::Bim,
            "pgd" => Method::Pgd,
            "mifgsm" | "mi-fgsm" => Method::Mifgsm,
            "apgd-ce" | "apgd" => Method::ApgdCe,
            "apgd-dlr" => Method::ApgdDlr,
            "apgd-t" | "apgd-dlr-t" => Method::ApgdT,
            "square" => Method::Square,
            "fab-t" | "fab" => Method::FabT,
            _ => {
                return Err(Error::Usage(format!(
                    "--method {s}: unknown method; use one of {}, or autoattack (AutoAttack's \
                     standard version: {AUTOATTACK_STANDARD})",
                    METHOD_NAMES.join(", ")
                )))
            }
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Method::Fgsm => "fgsm",
            Method::Fgm => "fgm",
            Method::Bim => "bim",
            Method::Pgd => "pgd",
            Method::Mifgsm => "mifgsm",
            Method::ApgdCe => "apgd-ce",
            Method::ApgdDlr => "apgd-dlr",
            Method::ApgdT => "apgd-t",
            Method::Square => "square",
            Method::FabT => "fab-t",
        }
    }

    /// Takes several steps (`--steps`; square's are queries).
    pub fn iterative(self) -> bool {
        !matches!(self, Method::Fgsm | Method::Fgm)
    }

    /// One of AutoAttack's APGD attacks.
    pub fn apgd(self) -> bool {
        matches!(self, Method::ApgdCe | Method::ApgdDlr | Method::ApgdT)
    }

    /// Takes a random start and restarts (`--random-start`, `--restarts`).
    pub fn restarts(self) -> bool {
        self == Method::Pgd || self.apgd()
    }

    /// The norm of its threat model.
    pub fn norm(self) -> Norm {
        match self {
            Method::Fgm => Norm::L2,
            _ => Norm::Linf,
        }
    }
}

/// The threat model's norm (`--norm`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Norm {
    Linf,
    L2,
}

impl Norm {
    pub fn parse(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "linf" | "l-inf" | "inf" => Ok(Norm::Linf),
            "l2" => Ok(Norm::L2),
            _ => Err(Error::Usage(format!("--norm {s}: use linf or l2"))),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Norm::Linf => "linf",
            Norm::L2 => "l2",
        }
    }
}

/// A fully resolved attack: method, budgets and every setting.
#[derive(Debug, Clone)]
pub struct AttackSpec {
    pub method: Method,
    /// The threat model: L-inf, or L2 (fgm; bim and pgd with `--norm l2`).
    pub norm: Norm,
    pub eps: Vec<Eps>,
    /// Gradient steps per restart (1 for fgsm and fgm).
    pub steps: u32,
    /// `--step-size`, the same for every eps; `None`: the method's default per eps.
    pub step_size: Option<f64>,
    pub random_start: bool,
    pub restarts: u32,
    /// MI-FGSM's momentum decay.
    pub decay: f32,
    /// apgd-t: target classes per image (the clean ranks 2, 3, ...; clamped
    /// to the model's classes by the plan).
    pub targets: u32,
    pub seed: u64,
    /// Round scored and saved images to the 8-bit grid (inside the ball).
    pub quantize: bool,
    pub target: Target,
    /// `--minimal`: also search each image's smallest eps on the 8-bit grid.
    pub minimal: bool,
    /// `--count-rounding`: also score the unrounded point of every eps (one
    /// more forward per eps) to count `lost_to_rounding`.
    pub count_rounding: bool,
}

/// What the user asked for, before defaults and checks (the CLI's flags).
#[derive(Debug, Clone, Default)]
pub struct AttackRequest {
    /// `--method` (default fgsm).
    pub method: Option<String>,
    pub norm: Option<String>,
    pub steps: Option<u32>,
    /// `--step-size` as written (decimal or fraction).
    pub step_size: Option<String>,
    pub random_start: Option<bool>,
    pub restarts: Option<u32>,
    pub decay: Option<f64>,
    pub seed: Option<u64>,
    /// `--minimal`.
    pub minimal: bool,
    /// `--count-rounding`.
    pub count_rounding: bool,
}

/// Default `--steps` of the iterative methods.
pub const DEFAULT_STEPS: u32 = 10;

/// Default `--steps` of APGD (AutoAttack's `standard` version).
pub const APGD_STEPS: u32 = 100;

/// Default `--steps` of square: queries per image (AutoAttack's standard version).
pub const SQUARE_QUERIES: u32 = 5000;

/// Square's initial fraction of the pixels a square covers (the reference's `p_init`).
pub const SQUARE_P_INIT: f64 = 0.8;

/// FAB-T's step settings: the reference's defaults, which AutoAttack keeps
/// (the largest weight of the clean point's projection, the overshoot, the
/// step back toward the clean point after a success).
pub const FAB_ALPHA_MAX: f32 = 0.1;
pub const FAB_ETA: f32 = 1.05;
pub const FAB_BETA: f32 = 0.9;

impl AttackSpec {
    /// FGSM over `eps`.
    pub fn fgsm(eps: &[Eps], quantize: bool, target: Target) -> Self {
        AttackSpec {
            method: Method::Fgsm,
            norm: Norm::Linf,
            eps: eps.to_vec(),
            steps: 1,
            step_size: None,
            random_start: false,
            restarts: 1,
            decay: 1.0,
            targets: APGD_TARGETS,
            seed: 0,
            quantize,
            target,
            minimal: false,
            count_rounding: false,
        }
    }

    /// Resolve and check a request; every mistake is a usage error before any
    /// GPU work.
    pub fn resolve(r: &AttackRequest, eps: &[Eps], quantize: bool, target: Target) -> Result<Self> {
        let method = Method::parse(r.method.as_deref().unwrap_or("fgsm"))?;
        let m = method.name();
        if r.count_rounding && !quantize {
            return Err(Error::Usage(
                "--count-rounding counts what rounding to the 8-bit grid cost, but \
                 --no-quantize rounds nothing; drop one of the two"
                    .into(),
            ));
        }
        if r.minimal {
            match eps {
                [one] => {
                    one.levels()?;
                }
                _ => {
                    return Err(Error::Usage(format!(
                        "--minimal searches below one eps, but {} were given; give only the \
                         largest, e.g. --eps 16/255",
                        eps.len()
                    )))
                }
            }
        }
        let norm = match &r.norm {
            None => method.norm(),
            Some(n) => {
                let norm = Norm::parse(n)?;
                let l2_capable = matches!(
                    method,
                    Method::Bim
                        | Method::Pgd
                        | Method::Square
                        | Method::FabT
                        | Method::ApgdCe
                        | Method::ApgdDlr
                        | Method::ApgdT
                );
                if norm != method.norm() && !(l2_capable && norm == Norm::L2) {
                    return Err(Error::Usage(match (method, norm) {
                        (Method::Fgsm, Norm::L2) => {
                            "--norm l2 with fgsm: the L2 single step is --method fgm".into()
                        }
                        (_, Norm::L2) => format!(
                            "--norm l2: {m} runs in L-inf; the L2 attacks are fgm, bim, pgd, \
                             apgd-*, fab-t and square"
                        ),
                        _ => format!("--norm {}: {m} is an L2 attack", norm.name()),
                    }));
                }
                norm
            }
        };
        if norm == Norm::Linf {
            if let Some(e) = eps.iter().find(|e| e.exact > 1.0) {
                return Err(Error::Usage(format!(
                    "--eps {}: an L-inf budget lies in [0, 1] (pixel units); only L2 \
                     attacks (fgm, --norm l2) take larger ones",
                    e.text
                )));
            }
        }
        let iterative = method.iterative();
        let only_iterative = |flag: &str| {
            Error::Usage(format!(
                "{flag} applies to the iterative methods (bim, pgd, mifgsm, apgd-*, fab-t, \
                 square), not {m}"
            ))
        };
        let steps = match r.steps {
            Some(0) => return Err(Error::Usage("--steps must be at least 1".into())),
            Some(s) if iterative => s,
            Some(_) => return Err(only_iterative("--steps")),
            None if method.apgd() || method == Method::FabT => APGD_STEPS,
            None if method == Method::Square => SQUARE_QUERIES,
            None if iterative => DEFAULT_STEPS,
            None => 1,
        };
        if method == Method::FabT && target != Target::Untargeted {
            return Err(Error::Usage(
                "--target with fab-t: FAB-T aims at each of the clean model's runner-up \
                 classes in turn and counts any misclassification, as AutoAttack does; for an \
                 attack that must reach one class use apgd-t --target CLASS"
                    .into(),
            ));
        }
        if method == Method::ApgdDlr && target != Target::Untargeted {
            return Err(Error::Usage(
                "--target with apgd-dlr: its loss is untargeted; for a targeted APGD use \
                 --method apgd-t --target CLASS (or apgd-ce --target CLASS)"
                    .into(),
            ));
        }
        let step_size = match &r.step_size {
            None => None,
            Some(_) if !iterative => return Err(only_iterative("--step-size")),
            Some(_) if method.apgd() => {
                return Err(Error::Usage(format!(
                    "--step-size: {m} adapts its own step (2 eps at first, halved at its \
                     checkpoints); drop the flag"
                )))
            }
            Some(_) if method == Method::FabT => {
                return Err(Error::Usage(
                    "--step-size: fab-t steps onto its linearised decision boundary (with \
                     the reference's alpha_max 0.1, eta 1.05, beta 0.9); drop the flag"
                        .into(),
                ))
            }
            Some(_) if method == Method::Square => {
                return Err(Error::Usage(
                    "--step-size: square moves each pixel of its square to the edge of the \
                     ball and shrinks its squares on AutoAttack's schedule; drop the flag"
                        .into(),
                ))
            }
            Some(s) => {
                let v = super::eps::parse_eps_list(s).map_err(|_| {
                    Error::Usage(format!(
                        "--step-size {s}: give one positive number, a decimal or a fraction \
                         (2/255), in [0,1] pixel units"
                    ))
                })?;
                match v.as_slice() {
                    [one] if one.exact.is_finite() && one.exact > 0.0 => Some(one.exact),
                    _ => {
                        return Err(Error::Usage(format!(
                            "--step-size {s}: give one positive number in [0,1] pixel units"
                        )))
                    }
                }
            }
        };
        let random_start = match r.random_start {
            Some(true) if !method.restarts() => {
                return Err(Error::Usage(format!(
                    "--random-start applies to pgd and apgd-* (bim with a random start is \
                     pgd), not {m}"
                )))
            }
            Some(v) => v,
            None => method.restarts(),
        };
        let restarts = match r.restarts {
            Some(0) => return Err(Error::Usage("--restarts must be at least 1".into())),
            Some(n) if n > 1 && !method.restarts() => {
                return Err(Error::Usage(format!(
                    "--restarts applies to pgd and apgd-*, not {m}"
                )))
            }
            Some(n) => n,
            None => 1,
        };
        let decay = match r.decay {
            None => 1.0,
            Some(_) if method != Method::Mifgsm => {
                return Err(Error::Usage(format!("--decay applies to mifgsm, not {m}")))
            }
            Some(d) if d.is_finite() && d >= 0.0 => d as f32,
            Some(d) => {
                return Err(Error::Usage(format!(
                    "--decay {d}: give a finite number >= 0 (1.0 is the usual choice)"
                )))
            }
        };
        Ok(AttackSpec {
            method,
            norm,
            eps: eps.to_vec(),
            steps,
            step_size,
            random_start,
            restarts,
            decay,
            targets: APGD_TARGETS,
            seed: r.seed.unwrap_or(0),
            quantize,
            target,
            minimal: r.minimal,
            count_rounding: r.count_rounding,
        })
    }

    /// The step for budget `eps`: `--step-size`, else 2.5 eps / steps for bim
    /// and pgd (Madry et al.), eps / steps for mifgsm (torchattacks' MIFGSM),
    /// eps for the single-step methods.
    pub fn step_for(&self, eps: f64) -> f64 {
        let (abs, rel) = self.step_rule();
        abs + rel * eps
    }

    /// The step as `abs + rel * eps` (the kernels take each image's eps).
    pub fn step_rule(&self) -> (f64, f64) {
        if let Some(a) = self.step_size {
            return (a, 0.0);
        }
        let rel = match self.method {
            Method::Fgsm | Method::Fgm => 1.0,
            Method::Bim | Method::Pgd => 2.5 / self.steps as f64,
            Method::Mifgsm => 1.0 / self.steps as f64,
            // APGD's first step; its checkpoints halve it per image.
            Method::ApgdCe | Method::ApgdDlr | Method::ApgdT => 2.0,
            // Square moves the pixels of its square by 2 eps (then projects).
            Method::Square => 2.0,
            // FAB-T's steps come from its projections, not from eps.
            Method::FabT => 0.0,
        };
        (0.0, rel)
    }

    /// Fit the settings to a model with `classes` classes, before any GPU work:
    /// apgd-dlr and apgd-t need 3 and 4 classes; apgd-t attacks at most
    /// `classes - 1` targets (the note returned says so when that lowers 9).
    pub fn fit_to_model(&mut self, classes: u32) -> Result<Option<String>> {
        let need = match self.method {
            Method::ApgdDlr => 3,
            Method::ApgdT => 4,
            Method::Square | Method::FabT => 2,
            _ => return Ok(None),
        };
        let m = self.method.name();
        if classes < need {
            return Err(Error::Usage(if need == 2 {
                format!(
                    "--method {m} needs a model with at least 2 classes (it compares the \
                     label's logit with others); this one has {classes}"
                )
            } else {
                format!(
                    "--method {m} needs a model with at least {need} classes (its DLR loss \
                     reads the {need} largest logits); this one has {classes}: use apgd-ce"
                )
            }));
        }
        if !matches!(self.method, Method::ApgdT | Method::FabT) || self.target != Target::Untargeted
        {
            return Ok(None);
        }
        let (n, lowered) = self.apgd_targets(classes);
        let note = lowered.then(|| {
            format!(
                "{m}: the model has {classes} classes, so each image gets {n} target \
                 runs instead of AutoAttack's {}",
                self.targets
            )
        });
        self.targets = n;
        Ok(note)
    }

    /// apgd-t's target runs per image on a model with `classes` classes: 9 as
    /// AutoAttack, or all but the top class on a smaller model; the flag is
    /// true when the count had to be lowered (the caller says so).
    pub fn apgd_targets(&self, classes: u32) -> (u32, bool) {
        let n = self.targets.min(classes.saturating_sub(1));
        (n, n < self.targets)
    }

    /// The settings that change results, as `name=value` text (the run
    /// manifest's `attack`, so that a resumed run cannot mix settings).
    pub fn settings(&self) -> Vec<String> {
        let mut s = Vec::new();
        if self.minimal {
            s.push("minimal=true".into());
        }
        if self.count_rounding {
            s.push("count_rounding=true".into());
        }
        if self.method == Method::Fgsm {
            return s;
        }
        s.push(format!("norm={}", self.norm.name()));
        if self.method == Method::Square {
            s.push(format!("queries={}", self.steps));
            s.push(format!("p_init={}", SQUARE_P_INIT));
            s.push("loss=margin".into());
            s.push(format!("seed={}", self.seed));
            return s;
        }
        if self.method.iterative() {
            s.push(format!("steps={}", self.steps));
            if !self.method.apgd() {
                s.push(match self.step_size {
                    Some(a) => format!("step_size={a}"),
                    None => "step_size=default".into(),
                });
            }
        }
        if self.method.apgd() {
            s.push("rho=0.75".into());
            s.push("momentum=0.75".into());
        }
        if self.method == Method::FabT {
            s.push(format!("alpha_max={}", FAB_ALPHA_MAX));
            s.push(format!("eta={}", FAB_ETA));
            s.push(format!("beta={}", FAB_BETA));
        }
        if matches!(self.method, Method::ApgdT | Method::FabT) {
            s.push(format!("targets={}", self.targets));
        }
        if self.method.restarts() {
            s.push(format!("random_start={}", self.random_start));
            s.push(format!("restarts={}", self.restarts));
            s.push(format!("seed={}", self.seed));
        }
        if self.method == Method::Mifgsm {
            s.push(format!("decay={}", self.decay));
        }
        s
    }
}

/// The attacks of a run: one method, or a cascade (`--method apgd-ce,apgd-t`)
/// where each later attack counts only for the images the earlier ones left
/// robust (AutoAttack's protocol), per eps.
#[derive(Debug, Clone)]
pub struct Cascade {
    pub stages: Vec<AttackSpec>,
}

impl Cascade {
    /// Resolve every method of the comma list with the same flags; a flag that
    /// does not apply to one of them is refused as for that method alone.
    pub fn resolve(r: &AttackRequest, eps: &[Eps], quantize: bool, target: Target) -> Result<Self> {
        let asked = r.method.as_deref().unwrap_or("fgsm");
        let list = if asked.trim().eq_ignore_ascii_case(AUTOATTACK) {
            check_autoattack(r, target)?;
            AUTOATTACK_STANDARD
        } else {
            if asked
                .split(',')
                .any(|m| m.trim().eq_ignore_ascii_case(AUTOATTACK))
            {
                return Err(Error::Usage(format!(
                    "--method {asked}: autoattack is a cascade of its own ({AUTOATTACK_STANDARD}); \
                     give it alone, or list the attacks you want"
                )));
            }
            asked
        };
        let mut stages = Vec::new();
        for m in list.split(',') {
            if m.trim().is_empty() {
                return Err(Error::Usage(format!(
                    "--method {list}: an empty name in the list; give methods separated by \
                     commas, e.g. apgd-ce,apgd-t"
                )));
            }
            let one = AttackRequest {
                method: Some(m.trim().into()),
                ..r.clone()
            };
            stages.push(
                AttackSpec::resolve(&one, eps, quantize, target).map_err(|e| match e {
                    Error::Usage(msg) if stages_len(list) > 1 => {
                        Error::Usage(format!("{msg} (in the cascade {list})"))
                    }
                    other => other,
                })?,
            );
        }
        Ok(Cascade { stages })
    }

    /// Several attacks.
    pub fn is_cascade(&self) -> bool {
        self.stages.len() > 1
    }

    /// `fgsm`, or `apgd-ce,apgd-t`.
    pub fn name(&self) -> String {
        let names: Vec<&str> = self.stages.iter().map(|s| s.method.name()).collect();
        names.join(",")
    }

    pub fn names(&self) -> Vec<String> {
        self.stages
            .iter()
            .map(|s| s.method.name().to_string())
            .collect()
    }

    /// The run manifest's settings: one method's, or each attack's prefixed
    /// with its name.
    pub fn settings(&self) -> Vec<String> {
        if !self.is_cascade() {
            return self.stages[0].settings();
        }
        self.stages
            .iter()
            .flat_map(|s| {
                let m = s.method.name();
                s.settings().into_iter().map(move |v| format!("{m}:{v}"))
            })
            .collect()
    }

    /// [`AttackSpec::fit_to_model`] for every attack; the notes to print.
    pub fn fit_to_model(&mut self, classes: u32) -> Result<Vec<String>> {
        let mut notes = Vec::new();
        for s in &mut self.stages {
            notes.extend(s.fit_to_model(classes)?);
        }
        Ok(notes)
    }
}

/// `--method autoattack`: AutoAttack's standard version.
pub const AUTOATTACK: &str = "autoattack";

/// The attacks of AutoAttack's standard version, in its order; each with the
/// reference's settings, which are advex's defaults for them (apgd-ce: 100
/// steps, 1 restart; apgd-t and fab-t: 100 steps, 9 targets; square: 5000
/// queries).
pub const AUTOATTACK_STANDARD: &str = "apgd-ce,apgd-t,fab-t,square";

/// The standard version's settings are the reference's: flags that would
/// change them are refused, and so are what advex cannot run in it yet.
fn check_autoattack(r: &AttackRequest, target: Target) -> Result<()> {
    let fixed = [
        ("--steps", r.steps.is_some()),
        ("--step-size", r.step_size.is_some()),
        ("--restarts", r.restarts.is_some()),
        (
            "--random-start / --no-random-start",
            r.random_start.is_some(),
        ),
        ("--decay", r.decay.is_some()),
    ];
    if let Some((flag, _)) = fixed.iter().find(|(_, set)| *set) {
        return Err(Error::Usage(format!(
            "{flag} with --method autoattack: the standard version runs the reference's \
             settings; to change them, list the attacks instead: --method \
             {AUTOATTACK_STANDARD} {flag} ..."
        )));
    }
    if target != Target::Untargeted {
        return Err(Error::Usage(
            "--target with --method autoattack: AutoAttack's standard version is untargeted \
             (apgd-t and fab-t pick their own target classes); for one target class use \
             apgd-t --target CLASS"
                .into(),
        ));
    }
    if let Some(n) = &r.norm {
        Norm::parse(n)?;
    }
    Ok(())
}

fn stages_len(list: &str) -> usize {
    list.split(',').count()
}

#[cfg(test)]
mod tests;
