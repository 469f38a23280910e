//! CPU reference (f64) for pooling, add/mul, concat, affine, softmax and loss.
#![allow(dead_code)]
