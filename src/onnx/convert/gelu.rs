//! GELU written out, as PyTorch's exporters do below opset 20:
//! `x * 0.5 * (1 + erf(x / sqrt 2))`, its factors in any of the orders the
//! legacy exporter and torchlib emit. `x / sqrt 2` (or `x * (1 / sqrt 2)`) is
//! an ordinary affine; from `Erf` on, each step is a [`Part`] that only the
//! chain's next step may read, and the last one becomes one `gelu` node on
//! x (the affine is pruned). A part read by anything else is reported as
//! unsupported, naming the pattern.

use super::*;

/// How far along the chain a value is (x is the chain's input).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Stage {
    /// erf(x / sqrt 2)
    Erf,
    /// 1 + erf(x / sqrt 2)
    OnePlusErf,
    /// 0.5 * (1 + erf(x / sqrt 2))
    Half,
    /// x * (1 + erf(x / sqrt 2))
    XTimes,
}

/// A value part of the way through GELU's chain.
#[derive(Clone, Debug)]
pub(super) struct Part {
    pub x: Dyn,
    pub stage: Stage,
}

/// What a part may not be read by, in messages.
pub(super) const PATTERN: &str =
    "advex reads Erf only inside GELU, x * 0.5 * (1 + erf(x / sqrt 2)), as PyTorch exports it";

fn near(v: f32, want: f64) -> bool {
    ((v as f64) - want).abs() <= 1e-5 * want.abs()
}

impl Converter<'_> {
    /// The scalar value of input `k` when it is a one-element constant.
    fn scalar_in(&self, n: &NodeProto, k: usize) -> Option<f32> {
        match self.get(Self::inp(n, k)?).ok()? {
            Val::Const(c) => {
                let v = c.to_f32();
                (v.len() == 1).then(|| v[0])
            }
            _ => None,
        }
    }

    fn part_in(&self, n: &NodeProto, k: usize) -> Option<Part> {
        match self.get(Self::inp(n, k)?).ok()? {
            Val::Part(p) => Some(p),
            _ => None,
        }
    }

    /// `Erf` of `x / sqrt 2`.
    pub(super) fn erf(&mut self, n: &NodeProto) -> R<Vec<Val>> {
        let d = self.dyn_in(n, 0)?;
        if let Origin::Scaled(x_name, s) = &d.origin {
            if near(*s, std::f64::consts::FRAC_1_SQRT_2) {
                if let Val::Dyn(x) = self.get(x_name)? {
                    return Ok(vec![Val::Part(Part {
                        x,
                        stage: Stage::Erf,
                    })]);
                }
            }
        }
        unsup(format!("{PATTERN}; this Erf's input is not x / sqrt 2"))
    }

    /// The next step of the chain for an `Add` or `Mul` reading a part.
    pub(super) fn gelu_step(&mut self, n: &NodeProto, idx: usize, op: &str) -> R<Vec<Val>> {
        let (k, p) = match (self.part_in(n, 0), self.part_in(n, 1)) {
            (Some(p), None) => (1, p),
            (None, Some(p)) => (0, p),
            _ => return unsup(PATTERN.to_string()),
        };
        let next = |stage| {
            Ok(vec![Val::Part(Part {
                x: p.x.clone(),
                stage,
            })])
        };
        let scalar = self.scalar_in(n, k);
        match (op, p.stage, scalar) {
            ("Add", Stage::Erf, Some(v)) if near(v, 1.0) => next(Stage::OnePlusErf),
            ("Mul", Stage::OnePlusErf, Some(v)) if near(v, 0.5) => next(Stage::Half),
            ("Mul", Stage::XTimes, Some(v)) if near(v, 0.5) => self.gelu_node(n, idx, &p.x),
            ("Mul", Stage::OnePlusErf | Stage::Half, None) => {
                let other = match self.get(Self::inp(n, k).unwrap_or(""))? {
                    Val::Dyn(d) => d,
                    _ => return unsup(PATTERN.to_string()),
                };
                let half_x = matches!(&other.origin, Origin::Scaled(name, s)
                    if near(*s, 0.5) && matches!(self.get(name), Ok(Val::Dyn(ref x)) if x.src == p.x.src));
                match (p.stage, other.src == p.x.src && other.pad == [0; 4], half_x) {
                    (Stage::OnePlusErf, true, _) => next(Stage::XTimes),
                    (Stage::OnePlusErf, _, true) | (Stage::Half, true, _) => {
                        self.gelu_node(n, idx, &p.x)
                    }
                    _ => unsup(PATTERN.to_string()),
                }
            }
            _ => unsup(PATTERN.to_string()),
        }
    }

    fn gelu_node(&mut self, n: &NodeProto, idx: usize, x: &Dyn) -> R<Vec<Val>> {
        self.unary_node(n, idx, "gelu", x, false, |_| {})
    }
}
