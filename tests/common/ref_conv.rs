//! CPU reference (f64) for conv2d and linear, forward and backward to the input.
#![allow(dead_code)]
