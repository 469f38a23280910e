//! Plain Rust CPU reference ops in f64, NCHW. Written for clarity, not speed.
#![allow(dead_code)]
