//! `--minimal`: per image, the smallest eps on the 8-bit grid (k/255, up to
//! the run's eps K/255) at which the attack succeeds, by bisection on the GPU
//! inside the batch's one submit. After the run's own attack at K, each round
//! runs the whole attack again at every image's own eps, the midpoint of its
//! interval, and updates the interval from the rounded result's prediction
//! (`bisect_*` in `shaders/attack/attack.wgsl`): ceil(log2 K) rounds. Bisection
//! assumes that an attack that succeeds at an eps succeeds at larger ones; the
//! level it reports always succeeded when it was tried.

use std::sync::Arc;

use super::apgd::Io;
use super::replay::Builder;
use super::Eps;
use crate::error::Result;
use crate::gpu::{Binding, Context, DType, Kernel, Shader, Shape, Tensor, WORKGROUP_IMAGES};

/// Mirrors `BisectParams` in `shaders/attack/attack.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct BisectParams {
    n: u32,
    classes: u32,
    targeted: u32,
    phase: u32,
    top: f32,
    _pad: [u32; 3],
}

/// The bisection's kernels and per-image interval.
pub(super) struct Bisect {
    mid: Arc<Kernel>,
    update: Arc<Kernel>,
    /// Per image (lo, hi) in levels: lo fails, hi succeeds (K + 1: never).
    pub lohi: Tensor,
    batch: u32,
    classes: u32,
    targeted: bool,
    /// K: the run's eps in levels.
    top: u32,
}

impl Bisect {
    pub fn new(
        c: &Context,
        batch: u32,
        classes: u32,
        targeted: bool,
        eps: &Eps,
        logits: DType,
    ) -> Result<Self> {
        let top = eps.levels()?;
        let mid = c.kernel(
            Shader::Attack,
            DType::F32,
            "bisect_mid",
            &[Binding::ReadWriteF32, Binding::ReadWriteF32],
            &[],
        )?;
        let update = c.kernel(
            Shader::Attack,
            logits,
            "bisect_update",
            &[
                Binding::Read,
                Binding::ReadF32,
                Binding::ReadF32,
                Binding::ReadWriteF32,
            ],
            &[],
        )?;
        Ok(Bisect {
            mid,
            update,
            lohi: c.tensor(Shape::new(batch, 2, 1, 1), "bisection")?,
            batch,
            classes,
            targeted,
            top,
        })
    }

    /// Rounds after the run's own eps: ceil(log2 K).
    pub fn rounds(&self) -> u32 {
        let mut r = 0;
        while (1u32 << r) < self.top {
            r += 1;
        }
        r
    }

    fn params(&self, c: &Context, phase: u32) -> wgpu::Buffer {
        c.uniform(&BisectParams {
            n: self.batch,
            classes: self.classes,
            targeted: self.targeted as u32,
            phase,
            top: self.top as f32,
            _pad: [0; 3],
        })
    }

    /// Each image's eps for the next round.
    pub fn mid(&self, c: &Context, b: &mut Builder, io: &Io) -> Result<()> {
        let p = self.params(c, 0);
        b.push(c.dispatch(
            "bisect_mid",
            &self.mid,
            &p,
            &[&self.lohi, io.eps],
            self.batch.div_ceil(WORKGROUP_IMAGES),
        )?);
        Ok(())
    }

    /// After a forward: phase 0 the clean logits, 1 the run's eps, 2 a round.
    pub fn update(
        &self,
        c: &Context,
        b: &mut Builder,
        io: &Io,
        logits: &Tensor,
        phase: u32,
    ) -> Result<()> {
        let p = self.params(c, phase);
        b.push(c.dispatch(
            "bisect_update",
            &self.update,
            &p,
            &[logits, io.true_labels, io.loss_labels, &self.lohi],
            self.batch.div_ceil(WORKGROUP_IMAGES),
        )?);
        Ok(())
    }
}

/// Per image, the level found from the read-back (lo, hi) pairs: `None` when
/// the attack did not succeed up to `top`.
pub fn min_levels(lohi: &[f32], count: usize, top: u32) -> Vec<Option<u32>> {
    (0..count)
        .map(|i| {
            let hi = lohi[2 * i + 1];
            (hi <= top as f32).then_some(hi.max(0.0) as u32)
        })
        .collect()
}

/// This file's uniform structs and their WGSL twins (checked by
/// tests/backends.rs).
pub(crate) fn uniform_layouts() -> Vec<crate::gpu::UniformLayout> {
    vec![crate::gpu::uniform_layout!(
        "attack",
        "BisectParams",
        BisectParams,
        [n, classes, targeted, phase, top]
    )]
}
