//! The ops' kernels against CPU references on seeded data (f64, the worst
//! index reported), a module per op family, in one test binary: one device
//! for the run and one link. `half` runs the ops in f16 storage; `gradient` a
//! whole random network against finite differences; `tune` the autotune.

#[path = "../common/mod.rs"]
mod common;

mod activation;
mod binary;
mod concat_affine;
mod conv;
mod coop;
mod gradient;
mod half;
mod layer_norm;
mod pool;
mod softmax_loss;
mod tune;
