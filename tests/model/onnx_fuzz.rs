//! Robustness: the bytes of a valid small ONNX model (covering most of the
//! importer's paths) are truncated, flipped and spliced; importing the result,
//! and loading it as a model when the import succeeds, must return an error or
//! a model, never panic. A few hundred cases, a few seconds.

use std::path::Path;

use crate::onnx_build::*;
use advex::onnx::{import_onnx_bytes, ImportOptions};
use proptest::prelude::*;
use proptest::test_runner::Config;

/// Conv + BatchNorm + Clip (constant inputs) + zero Pad folded into MaxPool,
/// a squeeze-excite Mul, SiLU, a Shape/Gather/Concat reshape target, Gemm.
fn seed_model() -> Vec<u8> {
    let mut g = G::new(13, 2, 6, 6);
    g.init(tf("w", &[3, 2, 3, 3], &vals(1, 54)))
        .init(tf("b", &[3], &vals(2, 3)))
        .init(tf("g", &[3], &[1.0, 0.5, 2.0]))
        .init(tf("beta", &[3], &vals(3, 3)))
        .init(tf("mean", &[3], &vals(4, 3)))
        .init(tf_fields("var", &[3], &[1.0, 2.0, 0.5]))
        .init(tf("lo", &[], &[0.0]))
        .init(tf("hi", &[], &[6.0]))
        .init(ti("pads", &[8], &[0, 0, 1, 1, 0, 0, 0, 0]))
        .init(ti("axes", &[2], &[2, 3]))
        .init(ti("zero", &[1], &[0]))
        .init(ti("minus1", &[1], &[-1]))
        .init(tf("fc.w", &[4, 12], &vals(5, 48)))
        .init(tf("fc.b", &[4], &vals(6, 4)))
        .n(
            "conv",
            "Conv",
            &["x", "w", "b"],
            &["c"],
            vec![
                a_ints("pads", &[1, 1, 1, 1]),
                a_ints("kernel_shape", &[3, 3]),
            ],
        )
        .n(
            "bn",
            "BatchNormalization",
            &["c", "g", "beta", "mean", "var"],
            &["n"],
            vec![a_float("epsilon", 1e-5)],
        )
        .n("clip", "Clip", &["n", "lo", "hi"], &["r"], vec![])
        .n("pad", "Pad", &["r", "pads"], &["p"], vec![])
        .n(
            "pool",
            "MaxPool",
            &["p"],
            &["m"],
            vec![a_ints("kernel_shape", &[2, 2]), a_ints("strides", &[2, 2])],
        )
        .n("mean", "ReduceMean", &["m", "axes"], &["s"], vec![])
        .n("sig", "Sigmoid", &["s"], &["sg"], vec![])
        .n("se", "Mul", &["sg", "m"], &["e"], vec![])
        .n("sig2", "Sigmoid", &["e"], &["e2"], vec![])
        .n("silu", "Mul", &["e", "e2"], &["f"], vec![])
        .n(
            "avg",
            "AveragePool",
            &["f"],
            &["q"],
            vec![
                a_ints("kernel_shape", &[2, 2]),
                a_ints("strides", &[2, 2]),
                a_int("ceil_mode", 1),
            ],
        )
        .n("shape", "Shape", &["q"], &["sh"], vec![])
        .n(
            "gather",
            "Gather",
            &["sh", "zero"],
            &["n0"],
            vec![a_int("axis", 0)],
        )
        .n(
            "cat",
            "Concat",
            &["n0", "minus1"],
            &["target"],
            vec![a_int("axis", 0)],
        )
        .n("view", "Reshape", &["q", "target"], &["v"], vec![])
        .n(
            "fc",
            "Gemm",
            &["v", "fc.w", "fc.b"],
            &["z"],
            vec![a_int("transB", 1)],
        )
        .n("softmax", "Softmax", &["z"], &["y"], vec![a_int("axis", 1)]);
    g.bytes()
}

/// Import, then load: errors are fine, panics are not.
fn exercise(bytes: &[u8]) {
    let path = Path::new("fuzz.onnx");
    if let Ok(imported) = import_onnx_bytes(path, bytes, &ImportOptions::default()) {
        let _ = imported.to_model(path);
    }
}

#[test]
fn the_seed_model_imports() {
    let imported = import_onnx_bytes(
        Path::new("seed.onnx"),
        &seed_model(),
        &ImportOptions::default(),
    )
    .unwrap();
    let m = imported.to_model(Path::new("seed.onnx")).unwrap();
    assert_eq!(m.num_classes(), 4);
}

#[derive(Debug, Clone)]
enum Mutation {
    Truncate(usize),
    Flip(Vec<(usize, u8)>),
    /// Copy `len` bytes from `from` over position `to`.
    Overwrite {
        from: usize,
        to: usize,
        len: usize,
    },
    /// Insert a copy of `len` bytes from `from` at `to`.
    Insert {
        from: usize,
        to: usize,
        len: usize,
    },
    /// Remove `len` bytes at `at`.
    Remove {
        at: usize,
        len: usize,
    },
    /// Set a byte to a value that often makes varints and lengths large.
    Poke(usize, u8),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (0usize..1 << 16).prop_map(Mutation::Truncate),
        prop::collection::vec((0usize..1 << 16, 1u8..=255), 1..8).prop_map(Mutation::Flip),
        (0usize..1 << 16, 0usize..1 << 16, 1usize..64)
            .prop_map(|(from, to, len)| Mutation::Overwrite { from, to, len }),
        (0usize..1 << 16, 0usize..1 << 16, 1usize..64)
            .prop_map(|(from, to, len)| Mutation::Insert { from, to, len }),
        (0usize..1 << 16, 1usize..32).prop_map(|(at, len)| Mutation::Remove { at, len }),
        (
            0usize..1 << 16,
            prop_oneof![Just(0u8), Just(0x7f), Just(0x80), Just(0xff), Just(0x01)]
        )
            .prop_map(|(at, v)| Mutation::Poke(at, v)),
    ]
}

fn apply(seed: &[u8], muts: &[Mutation]) -> Vec<u8> {
    let mut b = seed.to_vec();
    for m in muts {
        let n = b.len().max(1);
        match m {
            Mutation::Truncate(at) => b.truncate(at % n),
            Mutation::Flip(flips) => {
                for &(at, x) in flips {
                    if !b.is_empty() {
                        let i = at % b.len();
                        b[i] ^= x;
                    }
                }
            }
            Mutation::Overwrite { from, to, len } => {
                if !b.is_empty() {
                    let (from, to) = (from % b.len(), to % b.len());
                    let len = (*len).min(b.len() - from).min(b.len() - to);
                    let chunk = b[from..from + len].to_vec();
                    b[to..to + len].copy_from_slice(&chunk);
                }
            }
            Mutation::Insert { from, to, len } => {
                if !b.is_empty() {
                    let from = from % b.len();
                    let len = (*len).min(b.len() - from);
                    let chunk = b[from..from + len].to_vec();
                    let to = to % (b.len() + 1);
                    b.splice(to..to, chunk);
                }
            }
            Mutation::Remove { at, len } => {
                if !b.is_empty() {
                    let at = at % b.len();
                    let end = (at + len).min(b.len());
                    b.drain(at..end);
                }
            }
            Mutation::Poke(at, v) => {
                if !b.is_empty() {
                    let i = at % b.len();
                    b[i] = *v;
                }
            }
        }
    }
    b
}

proptest! {
    #![proptest_config(Config {
        cases: 400,
        failure_persistence: None,
        ..Config::default()
    })]

    #[test]
    fn mutated_models_never_panic(muts in prop::collection::vec(mutation(), 1..4)) {
        let bytes = apply(&seed_model(), &muts);
        exercise(&bytes);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        exercise(&bytes);
    }
}
