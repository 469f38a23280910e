//! Operators: host side of each op family's forward and backward-to-input kernels.
//!
//! Conventions shared by every op:
//! - tensors are f32 NCHW ([`crate::gpu::Shape`]); vectors are `[n, k, 1, 1]`;
//! - a host function records dispatches into a [`crate::gpu::Recording`] and never
//!   waits on the GPU; the caller submits many ops at once;
//! - uniform parameters sit at binding 0, tensors follow in the order passed;
//! - workgroup counts go through [`crate::gpu::Context::grid`], so shaders rebuild
//!   the flat workgroup index as `wid.x + wid.y * nwg.x`;
//! - backward functions compute the gradient with respect to the input(s) only.

pub mod activation;
pub mod affine;
pub mod binary;
pub mod concat;
pub mod conv;

pub mod elementwise;
pub mod layer_norm;
pub mod linear;
pub mod loss;
pub mod params;
pub mod pool;
pub mod prepared;
pub mod softmax;

pub use activation::Activation;
pub use params::{Conv2dParams, Pool2dParams};
