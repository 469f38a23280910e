//! Shared test helpers: seeded data, a GPU context, comparisons that name the
//! worst index.
#![allow(dead_code)]

use advex::{Context, ContextOptions, KernelStyle};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::sync::{Arc, OnceLock};

pub mod builder;
pub mod ref_conv;
pub mod ref_graph;
pub mod ref_misc;

/// One context per test binary (adapter creation is slow on lavapipe).
pub fn ctx() -> Arc<Context> {
    static CTX: OnceLock<Arc<Context>> = OnceLock::new();
    CTX.get_or_init(|| {
        Arc::new(
            Context::new(ContextOptions::default()).expect("a GPU adapter (see README: lavapipe)"),
        )
    })
    .clone()
}

/// One context per test binary and kernel family (tiled GEMM or direct), whatever
/// the adapter would pick: tests run both families on any adapter.
pub fn ctx_style(style: KernelStyle) -> Arc<Context> {
    static TILED: OnceLock<Arc<Context>> = OnceLock::new();
    static DIRECT: OnceLock<Arc<Context>> = OnceLock::new();
    let cell = match style {
        KernelStyle::Tiled => &TILED,
        KernelStyle::Direct => &DIRECT,
    };
    cell.get_or_init(|| {
        Arc::new(
            Context::new(ContextOptions {
                kernels: Some(style),
                ..Default::default()
            })
            .expect("a GPU adapter (see README: lavapipe)"),
        )
    })
    .clone()
}

/// A context whose dispatch grids fold past `max` workgroups per dimension.
pub fn ctx_with_fold(max: u32) -> Context {
    Context::new(ContextOptions {
        max_workgroups_per_dim: Some(max),
        ..Default::default()
    })
    .expect("a GPU adapter")
}

pub fn rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

/// Uniform values in [-1, 1).
pub fn random(seed: u64, n: usize) -> Vec<f32> {
    let mut r = rng(seed);
    (0..n).map(|_| r.random::<f32>() * 2.0 - 1.0).collect()
}

pub fn to_f64(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

/// Assert |got - want| <= rtol * |want| + atol_scale * max|want| everywhere; on
/// failure report the worst index.
pub fn assert_close(what: &str, got: &[f32], want: &[f64], rtol: f64) {
    assert_eq!(
        got.len(),
        want.len(),
        "{what}: length {} vs reference {}",
        got.len(),
        want.len()
    );
    let scale = want.iter().fold(0.0f64, |m, &v| m.max(v.abs()));
    let atol = rtol * 0.1 * scale + 1e-30;
    let mut worst = (0usize, 0.0f64);
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let err = (g as f64 - w).abs();
        let allowed = rtol * w.abs() + atol;
        let ratio = if g.is_finite() {
            err / allowed
        } else {
            f64::INFINITY
        };
        if ratio > worst.1 {
            worst = (i, ratio);
        }
    }
    let (i, ratio) = worst;
    assert!(
        ratio <= 1.0,
        "{what}: worst element {i}: got {} want {} (error {:.3e}, {:.1}x the tolerance rtol {rtol:e} with max|ref| {scale:.3e})",
        got[i],
        want[i],
        (got[i] as f64 - want[i]).abs(),
        ratio
    );
}

/// A test's storage type: how its inputs are drawn and uploaded, how its
/// outputs are poisoned, and how close results must be. One `Case` serves both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum St {
    F32,
    /// Inputs rounded to f16 before the reference sees them (so it computes
    /// what the GPU was given); kernels accumulate in f32 and round once on
    /// store.
    F16,
}

impl St {
    pub fn dtype(self) -> advex::DType {
        match self {
            St::F32 => advex::DType::F32,
            St::F16 => advex::DType::F16,
        }
    }

    /// Seeded values in [-1, 1), as this storage type holds them.
    pub fn random(self, seed: u64, n: usize) -> Vec<f32> {
        self.stored(&random(seed, n))
    }

    /// `v` as this storage type holds it (rounded to f16, or unchanged).
    pub fn stored(self, v: &[f32]) -> Vec<f32> {
        match self {
            St::F32 => v.to_vec(),
            St::F16 => v.iter().map(|&x| half::f16::from_f32(x).to_f32()).collect(),
        }
    }

    pub fn upload(
        self,
        ctx: &Context,
        v: &[f32],
        s: advex::gpu::Shape,
        label: &str,
    ) -> advex::Tensor {
        ctx.upload_as(v, s, self.dtype(), label).unwrap()
    }

    /// An output tensor every element of which fails the comparison until the
    /// kernel writes it.
    pub fn poisoned(self, ctx: &Context, s: advex::gpu::Shape, label: &str) -> advex::Tensor {
        // 1e30: far from any result in f32, infinity in f16
        self.upload(ctx, &vec![1.0e30; s.numel() as usize], s, label)
    }

    /// Per-element tolerance (relative; `assert_close` adds a tenth of it times
    /// the largest magnitude as absolute slack).
    pub fn tolerance(self) -> f64 {
        match self {
            St::F32 => 1e-4,
            St::F16 => 2e-3,
        }
    }
}
