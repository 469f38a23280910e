//! The Square Attack (Andriushchenko et al. 2020) on the GPU, L-inf and L2,
//! with the semantics of AutoAttack's `square.py` (pyautoattack 0.2.0) as
//! AutoAttack runs it: forward passes only, margin loss (targeted:
//! cross-entropy to the target), a start of vertical stripes (L-inf) or of
//! eta blocks (L2), then per query one random square of side `sqrt(p h w)`
//! with p from `p_init = 0.8` falling on the reference's schedule (not
//! rescaled to the query count, as AutoAttack sets it), kept when the loss
//! falls or the image is fooled. Only images still robust are queried.
//!
//! Differences from the reference, on purpose: every random draw comes from
//! (`--seed`, image, query), so a result never depends on the batch size
//! (the reference draws one square per batch); the attack runs all its
//! queries in one submit, the fooled images' queries being no-ops.
//!
//! Kernels: `shaders/attack/square.wgsl`.

use std::sync::Arc;

use super::apgd::{kernel_numel, Io};
use super::method::{AttackSpec, Norm, SQUARE_P_INIT as P_INIT};
use super::replay::{Builder, Piece};
use crate::error::{Error, Result};
use crate::gpu::{
    Binding, Context, DType, Kernel, Shader, Shape, Step, Tensor, WORKGROUP_1D, WORKGROUP_IMAGES,
};

/// f32 values of per-image state (`SQ_S` in the shader).
const STATE: u32 = 5;

const PHASE_CLEAN: u32 = 0;
const PHASE_START: u32 = 1;
const PHASE_QUERY: u32 = 2;

/// `p_selection` of square.py for query `it` (0-based), without rescaling.
pub fn p_at(it: u32) -> f64 {
    let d = match it {
        0..=10 => 1.0,
        11..=50 => 2.0,
        51..=200 => 4.0,
        201..=500 => 8.0,
        501..=1000 => 16.0,
        1001..=2000 => 32.0,
        2001..=4000 => 64.0,
        4001..=6000 => 128.0,
        6001..=8000 => 256.0,
        _ => 512.0,
    };
    P_INIT / d
}

/// The side of query `it`'s square on a `c x h x w` image: square.py's
/// `round(sqrt(p * n_features / c))` (Python rounds half to even), at least
/// 1 (L2: at least 3 and odd), at most the shorter side.
pub fn side(norm: Norm, it: u32, c: u32, h: u32, w: u32) -> u32 {
    let features = c as f64 * h as f64 * w as f64;
    let v = (p_at(it) * features / c as f64).sqrt().round_ties_even() as u32;
    let s = match norm {
        Norm::Linf => v.max(1),
        Norm::L2 => {
            let s = v.max(3);
            s + s.is_multiple_of(2) as u32
        }
    };
    s.min(h.min(w))
}

/// square.py's `eta_rectangles(x, y)` (L2): nested rectangles around the
/// centre weighted 1/(k+1)^2, normalised to unit L2 norm; row-major.
fn eta_rectangles(x: usize, y: usize) -> Vec<f64> {
    let mut d = vec![0.0f64; x * y];
    let (xc, yc) = (x / 2 + 1, y / 2 + 1);
    let (mut c0, mut c1) = (xc as i64 - 1, yc as i64 - 1);
    for k in 0..xc.max(yc) {
        let w = 1.0 / ((k + 1) as f64).powi(2);
        let r0 = c0.max(0) as usize;
        let r1 = (c0 + 2 * k as i64 + 1).min(x as i64).max(0) as usize;
        let q0 = c1.max(0) as usize;
        let q1 = (c1 + 2 * k as i64 + 1).min(y as i64).max(0) as usize;
        for r in r0..r1 {
            for q in q0..q1 {
                d[r * y + q] += w;
            }
        }
        c0 -= 1;
        c1 -= 1;
    }
    let n = d.iter().map(|v| v * v).sum::<f64>().sqrt();
    if n > 0.0 {
        d.iter_mut().for_each(|v| *v /= n);
    }
    d
}

/// square.py's `eta(s)` (L2): the upper half `eta_rectangles(s/2, s)`, the
/// lower half minus `eta_rectangles(s - s/2, s)`, unit L2 norm; row-major.
pub fn eta(s: u32) -> Vec<f32> {
    let s = s as usize;
    let top = eta_rectangles(s / 2, s);
    let bottom = eta_rectangles(s - s / 2, s);
    let mut d: Vec<f64> = top
        .into_iter()
        .chain(bottom.into_iter().map(|v| -v))
        .collect();
    let n = d.iter().map(|v| v * v).sum::<f64>().sqrt();
    if n > 0.0 {
        d.iter_mut().for_each(|v| *v /= n);
    }
    d.into_iter().map(|v| v as f32).collect()
}

/// The kernels' table: per query its side and the word offset of eta(side),
/// then the eta profiles (f32 bits); and the offset of eta(`init`).
fn table(norm: Norm, queries: u32, c: u32, h: u32, w: u32, init: u32) -> (Vec<u32>, u32) {
    let mut words = vec![0u32; 2 * queries as usize];
    let mut offsets: Vec<(u32, u32)> = Vec::new();
    let mut profile = |words: &mut Vec<u32>, s: u32| -> u32 {
        if norm == Norm::Linf {
            return 0;
        }
        if let Some(&(_, o)) = offsets.iter().find(|(t, _)| *t == s) {
            return o;
        }
        let o = words.len() as u32;
        words.extend(eta(s).into_iter().map(f32::to_bits));
        offsets.push((s, o));
        o
    };
    for q in 0..queries {
        let s = side(norm, q, c, h, w);
        let o = profile(&mut words, s);
        words[2 * q as usize] = s;
        words[2 * q as usize + 1] = o;
    }
    let init_off = if norm == Norm::L2 {
        profile(&mut words, init)
    } else {
        0
    };
    (words, init_off)
}

/// Mirrors `SquareParams` in `shaders/attack/square.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    item: u32,
    h: u32,
    w: u32,
    c: u32,
    seed_lo: u32,
    seed_hi: u32,
    init_s: u32,
    init_eta: u32,
    _pad: [u32; 3],
}

/// Mirrors `SquareTrackParams`.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct TrackParams {
    n: u32,
    classes: u32,
    targeted: u32,
    phase: u32,
    out0: u32,
    _pad: [u32; 3],
}

/// Mirrors `SquareFinishParams`.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct FinishParams {
    numel: u32,
    n: u32,
    _pad: [u32; 2],
}

/// Square's kernels, buffers and table for one batch size.
pub(super) struct Square {
    init: Arc<Kernel>,
    propose: Arc<Kernel>,
    track: Arc<Kernel>,
    finish: Arc<Kernel>,
    best: Tensor,
    /// The point each eps scores: the best point where it fooled, else x.
    pub result: Tensor,
    state: Tensor,
    table: Tensor,
    params: Params,
    queries: u32,
    batch: u32,
    classes: u32,
    numel: u32,
    targeted: bool,
}

impl Square {
    pub fn new(
        c: &Context,
        spec: &AttackSpec,
        batch: u32,
        shape: Shape,
        classes: u32,
        logits: DType,
    ) -> Result<Self> {
        let numel = kernel_numel(shape)?;
        let item = numel / batch;
        let (ch, h, w) = (shape.c, shape.h, shape.w);
        let init_s = h / 5;
        if spec.norm == Norm::L2 && (init_s == 0 || w < init_s) {
            return Err(Error::Usage(format!(
                "square --norm l2 starts from blocks of a fifth of the image's height, so it \
                 needs images at least 5 pixels high and wide; this model takes {h}x{w}: use \
                 --norm linf or another method"
            )));
        }
        let queries = spec.steps;
        let (words, init_eta) = table(spec.norm, queries, ch, h, w, init_s.max(1));
        let tab = c.tensor(Shape::new(words.len() as u32, 1, 1, 1), "square table")?;
        c.write_bytes(&tab, bytemuck::cast_slice(&words));
        let l2 = ("NORM_L2", if spec.norm == Norm::L2 { 1.0 } else { 0.0 });
        let r = Binding::ReadF32;
        let rw = Binding::ReadWriteF32;
        let init = c.kernel(
            Shader::Square,
            DType::F32,
            "square_init",
            &[r, r, r, rw, rw, r],
            &[l2],
        )?;
        let propose = c.kernel(
            Shader::Square,
            DType::F32,
            "square_propose",
            &[r, r, r, rw, rw, r, r],
            &[l2],
        )?;
        let track = c.kernel(
            Shader::Square,
            logits,
            "square_track",
            &[Binding::Read, r, r, rw, rw],
            &[],
        )?;
        let finish = c.kernel(
            Shader::Square,
            DType::F32,
            "square_finish",
            &[r, rw, r, r, rw],
            &[("ITEM", item as f64)],
        )?;
        Ok(Square {
            init,
            propose,
            track,
            finish,
            best: c.tensor(shape, "square best")?,
            result: c.tensor(shape, "square result")?,
            state: c.tensor(Shape::new(batch * STATE + 1, 1, 1, 1), "square state")?,
            table: tab,
            params: Params {
                n: batch,
                item,
                h,
                w,
                c: ch,
                seed_lo: spec.seed as u32,
                seed_hi: (spec.seed >> 32) as u32,
                init_s,
                init_eta,
                _pad: [0; 3],
            },
            queries,
            batch,
            classes,
            numel,
            targeted: spec.target != super::Target::Untargeted,
        })
    }

    /// A `square_track` dispatch of `phase` on `logits`.
    fn track(&self, c: &Context, logits: &Tensor, io: &Io, phase: u32, out0: u32) -> Result<Step> {
        let p = c.uniform(&TrackParams {
            n: self.batch,
            classes: self.classes,
            targeted: self.targeted as u32,
            phase,
            out0,
            _pad: [0; 3],
        });
        c.dispatch(
            "square_track",
            &self.track,
            &p,
            &[
                logits,
                io.true_labels,
                io.loss_labels,
                &self.state,
                io.first,
            ],
            self.batch.div_ceil(WORKGROUP_IMAGES),
        )
    }

    /// After the clean forward (`grad.logits`, labels resolved): which images
    /// are attacked.
    pub fn record_clean(&self, c: &Context, b: &mut Builder, io: &Io) -> Result<()> {
        let d = self.track(c, &io.grad.logits, io, PHASE_CLEAN, 0)?;
        b.push(d);
        Ok(())
    }

    /// The whole attack at the images' eps (`Io::eps`), first successes (in
    /// queries) into eps slot `slot`; returns the queries per image.
    pub fn record_eps(&self, c: &Context, b: &mut Builder, io: &Io, slot: u32) -> Result<u32> {
        let out0 = slot * self.batch;
        let fwd = io.fwd;
        let p = c.uniform(&self.params);
        let d = c.dispatch(
            "square_init",
            &self.init,
            &p,
            &[
                io.clean,
                io.ids,
                io.eps,
                &self.best,
                &fwd.input,
                &self.table,
            ],
            self.batch,
        )?;
        b.push(d);
        b.shared(Piece::Forward);
        let d = self.track(c, &fwd.logits, io, PHASE_START, out0)?;
        b.push(d);
        let propose = c.dispatch(
            "square_propose",
            &self.propose,
            &p,
            &[
                io.clean,
                io.ids,
                io.eps,
                &self.best,
                &fwd.input,
                &self.table,
                &self.state,
            ],
            self.batch,
        )?;
        let query = self.track(c, &fwd.logits, io, PHASE_QUERY, out0)?;
        for _ in 0..self.queries {
            b.push(propose.clone());
            b.shared(Piece::Forward);
            b.push(query.clone());
        }
        let p = c.uniform(&FinishParams {
            numel: self.numel,
            n: self.batch,
            _pad: [0; 2],
        });
        let d = c.dispatch(
            "square_finish",
            &self.finish,
            &p,
            &[io.clean, &self.best, &fwd.input, &self.state, &self.result],
            self.numel.div_ceil(WORKGROUP_1D),
        )?;
        b.push(d);
        Ok(self.queries + 1)
    }
}

/// This file's uniform structs and their WGSL twins (checked by
/// tests/backends.rs).
pub(crate) fn uniform_layouts() -> Vec<crate::gpu::UniformLayout> {
    vec![
        crate::gpu::uniform_layout!(
            "square",
            "SquareParams",
            Params,
            [n, item, h, w, c, seed_lo, seed_hi, init_s, init_eta]
        ),
        crate::gpu::uniform_layout!(
            "square",
            "SquareTrackParams",
            TrackParams,
            [n, classes, targeted, phase, out0]
        ),
        crate::gpu::uniform_layout!("square", "SquareFinishParams", FinishParams, [numel, n]),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sides_follow_the_reference_schedule() {
        // MNIST (1 x 28 x 28): p * 784 = 627.2, 313.6, 156.8, 78.4, 39.2, 19.6, 9.8, 4.9
        let at = |norm, it| side(norm, it, 1, 28, 28);
        let linf: Vec<u32> = [0, 11, 51, 201, 501, 1001, 2001, 4001]
            .iter()
            .map(|&i| at(Norm::Linf, i))
            .collect();
        assert_eq!(linf, vec![25, 18, 13, 9, 6, 4, 3, 2]);
        assert_eq!(at(Norm::Linf, 10), 25);
        assert_eq!(at(Norm::Linf, 8001), 1);
        let l2: Vec<u32> = [0, 11, 51, 201, 501, 1001, 2001, 4001]
            .iter()
            .map(|&i| at(Norm::L2, i))
            .collect();
        assert_eq!(l2, vec![25, 19, 13, 9, 7, 5, 3, 3]);
        // ImageNet (3 x 224 x 224): sqrt(0.8 * 50176) = 200.35; never past the side.
        assert_eq!(side(Norm::Linf, 0, 3, 224, 224), 200);
        assert_eq!(side(Norm::Linf, 0, 3, 8, 8), 7);
        assert_eq!(side(Norm::Linf, 0, 3, 4, 9), 4);
    }

    #[test]
    fn eta_is_the_reference_profile() {
        // square.py's eta(3) in float64: rows [a, b, a], [-c, -c, -c], [-d, -e, -d]
        // from eta_rectangles(1, 3) = [1, 1, 1]/sqrt(3) and eta_rectangles(2, 3).
        for s in [1u32, 3, 5, 7, 25] {
            let e = eta(s);
            assert_eq!(e.len(), (s * s) as usize);
            let n: f32 = e.iter().map(|v| v * v).sum();
            assert!((n - 1.0).abs() < 1e-5, "eta({s}) norm {n}");
            // The upper half positive, the lower negative.
            let half = (s / 2 * s) as usize;
            assert!(e[..half].iter().all(|&v| v > 0.0));
            assert!(e[half..].iter().all(|&v| v < 0.0));
        }
        // square.py's eta(3), printed by pyautoattack 0.2.0 (float32).
        let want = [
            0.13608277,
            0.68041384,
            0.13608277,
            -0.12909944,
            -0.12909944,
            -0.12909944,
            -0.12909944,
            -0.6454972,
            -0.12909944,
        ];
        let e = eta(3);
        for (i, (g, w)) in e.iter().zip(&want).enumerate() {
            assert!((g - w).abs() < 1e-6, "eta(3)[{i}] {g} vs {w}");
        }
    }
}
