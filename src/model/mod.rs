//! The model file: a safetensors file whose header's `__metadata__` holds, under
//! the key `advex`, a JSON description of the graph ([`ModelSpec`]); or a plain
//! state_dict safetensors with a sidecar `NAME.json` holding the same JSON.
//!
//! Loading converts tensors to f32 (from F32, F16, BF16 or F64), checks every
//! shape, sorts the graph topologically, infers each node's per-item output
//! shape and rewrites the graph for inference:
//! - `dropout` (and `identity`) nodes are removed, their consumers read their input;
//! - a `batch_norm` right after a `conv2d` whose output feeds only that
//!   batch_norm is folded into the convolution (computed in f64); any other
//!   batch_norm, and `normalize`, become [`Op::Affine`];
//! - a non-identity `preprocess.mean`/`std` becomes an [`Op::Affine`] node named
//!   `normalize` at the front, so the graph takes `[0, 1]` pixels;
//! - nodes that do not contribute to the output are dropped (after validation).
//!
//! Every problem is a [`ModelError`] naming the file and, where relevant, the node
//! and tensor; no input makes the loader panic.
//!
//! # Description (format 1)
//!
//! ```json
//! {"format": 1, "name": "mnist_cnn", "input": [1, 28, 28],
//!  "preprocess": {"resize": 32, "crop": 28, "interpolation": "bilinear",
//!                 "mean": [0.1307], "std": [0.3081]},
//!  "classes": ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"],
//!  "nodes": [
//!    {"name": "conv1", "op": "conv2d", "inputs": ["input"], "weight": "conv1.weight",
//!     "bias": "conv1.bias", "stride": 2, "padding": [0, 0, 1, 1]},
//!    {"name": "bn1", "op": "batch_norm", "inputs": ["conv1"], "weight": "bn1.weight",
//!     "bias": "bn1.bias", "running_mean": "bn1.running_mean",
//!     "running_var": "bn1.running_var", "eps": 1e-3},
//!    {"name": "act1", "op": "relu6", "inputs": ["bn1"]},
//!    {"name": "pool", "op": "global_avg_pool", "inputs": ["act1"]},
//!    {"name": "flat", "op": "flatten", "inputs": ["pool"]},
//!    {"name": "fc", "op": "linear", "inputs": ["flat"], "weight": "fc.weight", "bias": "fc.bias"}],
//!  "output": "fc"}
//! ```
//!
//! `input` is `[C, H, W]`; the graph input value is called `input`; `output`
//! defaults to the last node listed; nodes may be listed in any order (they are
//! sorted; only a cycle is refused). Unknown fields are refused, as are
//! attributes that do not apply to a node's op. Sizes are a number or `[h, w]`;
//! padding is a number, `[ph, pw]` or `[top, left, bottom, right]`.
//!
//! | op | attributes (default) |
//! |----|----------------------|
//! | `conv2d` | `weight` `[oc, ic/groups, kh, kw]`, `bias`, `stride` (1), `padding` (0), `dilation` (1), `groups` (1) |
//! | `batch_norm` | `running_mean`, `running_var`, `weight` (1), `bias` (0), `eps` (1e-5) |
//! | `linear` | `weight` `[out, in]`, `bias`; input `[in, 1, 1]` |
//! | `relu` `relu6` `sigmoid` `silu` `hardswish` | none |
//! | `leaky_relu` | `negative_slope` (0.01) |
//! | `hardsigmoid` | `alpha` (1/6), `beta` (0.5) |
//! | `gelu` | `approximate` (`"none"`: x Phi(x); `"tanh"`: PyTorch's tanh form) |
//! | `layer_norm` | over channels at each position: `weight` (1), `bias` (0), `eps` (1e-5) |
//! | `max_pool` | `kernel`, `stride` (kernel), `padding` (0), `dilation` (1), `ceil_mode` (false) |
//! | `avg_pool` | `kernel`, `stride` (kernel), `padding` (0), `ceil_mode` (false), `count_include_pad` (true) |
//! | `global_avg_pool` `flatten` | none |
//! | `add` `mul` | two inputs, each dimension equal or 1 |
//! | `concat` | two or more inputs, `axis` (1; only 1) |
//! | `dropout` | `p` (ignored) |
//! | `identity` | none |
//! | `normalize` | `mean`, `std` (per channel, or one value) |
//! | `softmax` | `axis` (1; only 1) |
//!
//! Limits: at most 1024 input channels, 2^28 elements per image in any value,
//! 65536 for any kernel, stride, dilation or padding; pooling padding at most
//! half the (effective) kernel, as in PyTorch.

mod container;
mod graph;
mod spec;
mod summary;

use std::path::{Path, PathBuf};

pub use crate::error::ModelError;
use crate::gpu::Shape;
use crate::ops::activation::Activation;
use crate::ops::params::{Conv2dParams, Pool2dParams};

pub use container::{encode_safetensors, write_model, write_safetensors, Dtype, METADATA_KEY};
pub use spec::{Hw, ModelSpec, NodeSpec, Padding, PreprocessSpec, FORMAT_VERSION, INTERPOLATIONS};

/// A loaded model, rewritten for inference.
#[derive(Debug, Clone, PartialEq)]
pub struct Model {
    pub path: PathBuf,
    pub name: String,
    /// `[C, H, W]`.
    pub input: [u32; 3],
    pub preprocess: Preprocess,
    pub classes: Option<Vec<String>>,
    /// Topologically ordered: a node's inputs are the graph input or earlier nodes.
    pub nodes: Vec<Node>,
    /// Index into `nodes` of the output node.
    pub output: usize,
}

/// Image preprocessing from the model file. `mean` and `std` always have one
/// value per input channel (defaults 0 and 1). They are informational: when
/// they are not the identity the graph already starts with a `normalize`
/// [`Op::Affine`] node, so images must be fed as `[0, 1]` pixels.
#[derive(Debug, Clone, PartialEq)]
pub struct Preprocess {
    /// Shorter-side target size of the resize, if any.
    pub resize: Option<u32>,
    /// Centre-crop size, if any.
    pub crop: Option<u32>,
    /// One of [`INTERPOLATIONS`].
    pub interpolation: String,
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
}

/// One node of the loaded graph.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// The user's node name (`conv+bn` for a folded pair, `normalize` for the
    /// preprocessing node).
    pub name: String,
    pub op: Op,
    pub inputs: Vec<Src>,
    /// Per-item output shape, `n = 1`.
    pub shape: Shape,
}

/// Where a node input comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Src {
    /// The graph input (`[1, C, H, W]` per item).
    Input,
    /// The output of `nodes[i]`, always an earlier node.
    Node(usize),
}

/// A loaded operation.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// Weight `[oc, ic / groups, kh, kw]`; a following batch_norm may be folded in.
    Conv2d {
        params: Conv2dParams,
        weight: Weight,
        bias: Option<Vec<f32>>,
    },
    /// Weight shape `[out, in, 1, 1]`; the input is `[in, 1, 1]` per item.
    Linear {
        weight: Weight,
        bias: Option<Vec<f32>>,
    },
    /// `y = x * scale[c] + shift[c]` (normalize, or an unfolded batch_norm).
    Affine {
        scale: Vec<f32>,
        shift: Vec<f32>,
    },
    Activation(Activation),
    MaxPool(Pool2dParams),
    AvgPool(Pool2dParams),
    GlobalAvgPool,
    /// Two inputs, NCHW broadcasting (each dim equal or 1).
    Add,
    /// Two inputs, NCHW broadcasting (each dim equal or 1).
    Mul,
    /// Along channels, two or more inputs.
    Concat,
    /// To `[C * H * W, 1, 1]`.
    Flatten,
    /// Over channels.
    Softmax,
    /// Layer normalisation over channels at each position, with a weight
    /// and bias per channel (ConvNeXt's LayerNorm).
    LayerNorm {
        eps: f32,
        weight: Vec<f32>,
        bias: Vec<f32>,
    },
}

impl Op {
    /// Short name, as in the model file where one exists.
    pub fn name(&self) -> &'static str {
        match self {
            Op::Conv2d { .. } => "conv2d",
            Op::Linear { .. } => "linear",
            Op::Affine { .. } => "affine",
            Op::Activation(a) => a.name(),
            Op::MaxPool(_) => "max_pool",
            Op::AvgPool(_) => "avg_pool",
            Op::GlobalAvgPool => "global_avg_pool",
            Op::Add => "add",
            Op::Mul => "mul",
            Op::Concat => "concat",
            Op::Flatten => "flatten",
            Op::Softmax => "softmax",
            Op::LayerNorm { .. } => "layer_norm",
        }
    }
}

/// A weight tensor in f32, row-major in `shape` (`[oc, ic, kh, kw]`).
#[derive(Clone, PartialEq)]
pub struct Weight {
    pub shape: [u32; 4],
    pub data: Vec<f32>,
}

impl std::fmt::Debug for Weight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Weight {:?} ({} values)", self.shape, self.data.len())
    }
}

/// Why a model file could not be read, and what to do about it.
pub(crate) fn unreadable(path: &Path, e: &std::io::Error) -> String {
    use std::io::ErrorKind;
    match e.kind() {
        ErrorKind::NotFound => {
            let from = if path.is_relative() {
                std::env::current_dir()
                    .map(|d| format!(" (a relative path, looked for in {})", d.display()))
                    .unwrap_or_default()
            } else {
                String::new()
            };
            format!(
                "no such file{from}. Give the path of an advex .safetensors model or an .onnx \
                 file, or leave out --model to use the bundled EfficientNet-Lite0"
            )
        }
        ErrorKind::PermissionDenied => {
            "permission denied: make the file readable for this user (chmod a+r)".into()
        }
        ErrorKind::IsADirectory => {
            "this is a folder: give the model file inside it (.safetensors or .onnx)".into()
        }
        _ => format!("cannot read the file: {e}"),
    }
}

impl Model {
    /// Loads a model file. The description comes from the header's
    /// `__metadata__.advex`, or else from the sidecar `NAME.json` next to the
    /// file. A path ending in `.json` loads the sidecar with its
    /// `NAME.safetensors`.
    pub fn load(path: &Path) -> Result<Model, ModelError> {
        let is_json = path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("json"));
        let tensors_path = if is_json {
            path.with_extension("safetensors")
        } else {
            path.to_path_buf()
        };
        let bytes = std::fs::read(&tensors_path)
            .map_err(|e| ModelError::new(&tensors_path, unreadable(&tensors_path, &e)))?;
        let container = container::parse_container(&tensors_path, &bytes)?;
        let sidecar_path = tensors_path.with_extension("json");
        let sidecar = if container.metadata.contains_key(METADATA_KEY) {
            None
        } else {
            match std::fs::read(&sidecar_path) {
                Ok(b) => Some(String::from_utf8(b).map_err(|e| {
                    ModelError::new(
                        &sidecar_path,
                        format!(
                            "the sidecar is not valid UTF-8 (bad byte at offset {})",
                            e.utf8_error().valid_up_to()
                        ),
                    )
                })?),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => {
                    return Err(ModelError::new(
                        &sidecar_path,
                        format!("cannot read the sidecar model description: {e}"),
                    ))
                }
            }
        };
        graph::build(&tensors_path, &container, sidecar.as_deref())
    }

    /// Loads a model from the bytes of a safetensors file. `path_for_messages`
    /// names the file in errors (a sidecar is reported as the same path with
    /// the extension `.json`); `sidecar_json` is used only when the header has
    /// no `__metadata__.advex`.
    pub fn from_bytes(
        path_for_messages: &Path,
        bytes: &[u8],
        sidecar_json: Option<&str>,
    ) -> Result<Model, ModelError> {
        let container = container::parse_container(path_for_messages, bytes)?;
        graph::build(path_for_messages, &container, sidecar_json)
    }

    /// Parameters after folding: conv and linear weights and biases, affine
    /// scales and shifts.
    pub fn param_count(&self) -> u64 {
        self.nodes.iter().map(Node::param_count).sum()
    }

    /// Forward FLOPs per image: 2 per multiply-accumulate in conv2d and linear;
    /// 1 per output element for element-wise ops (activations, affine, add,
    /// mul, softmax); 1 per window element for pooling; 0 for concat and flatten.
    pub fn flops(&self) -> u64 {
        (0..self.nodes.len())
            .map(|i| self.node_flops(i))
            .fold(0u64, u64::saturating_add)
    }

    /// Forward FLOPs per image of `nodes[i]` (see [`Model::flops`]); 0 past the end.
    pub fn node_flops(&self, i: usize) -> u64 {
        let Some(node) = self.nodes.get(i) else {
            return 0;
        };
        let out = node.shape.item();
        let input_item = |k: usize| match node.inputs.get(k) {
            Some(Src::Input) => Shape::new(1, self.input[0], self.input[1], self.input[2]).item(),
            Some(Src::Node(j)) => self.nodes.get(*j).map_or(0, |n| n.shape.item()),
            None => 0,
        };
        match &node.op {
            Op::Conv2d { weight, .. } => {
                let [_, icg, kh, kw] = weight.shape;
                2u64.saturating_mul(out)
                    .saturating_mul(icg as u64 * kh as u64 * kw as u64)
            }
            Op::Linear { weight, .. } => {
                2u64.saturating_mul(weight.shape[0] as u64 * weight.shape[1] as u64)
            }
            Op::Affine { .. } | Op::Activation(_) | Op::Add | Op::Mul | Op::Softmax => out,
            Op::LayerNorm { .. } => 8u64.saturating_mul(out),
            Op::MaxPool(p) | Op::AvgPool(p) => {
                out.saturating_mul(p.kernel[0] as u64 * p.kernel[1] as u64)
            }
            Op::GlobalAvgPool => input_item(0),
            Op::Concat | Op::Flatten => 0,
        }
    }

    /// Number of outputs: the output node's `C * H * W`.
    pub fn num_classes(&self) -> u32 {
        self.nodes
            .get(self.output)
            .map_or(0, |n| n.shape.item().min(u32::MAX as u64) as u32)
    }

    /// The output node.
    pub fn output_node(&self) -> Option<&Node> {
        self.nodes.get(self.output)
    }

    /// Per-item input shape, `[1, C, H, W]`.
    pub fn input_shape(&self) -> Shape {
        Shape::new(1, self.input[0], self.input[1], self.input[2])
    }

    /// A table for `advex info`: one row per node (index, name, inputs, op,
    /// attributes, output shape, parameters, FLOPs), then totals, input,
    /// preprocessing and classes.
    pub fn summary(&self) -> String {
        summary::summary(self)
    }
}

impl Node {
    /// Stored parameters of this node.
    pub fn param_count(&self) -> u64 {
        let opt = |b: &Option<Vec<f32>>| b.as_ref().map_or(0, |b| b.len() as u64);
        match &self.op {
            Op::Conv2d { weight, bias, .. } | Op::Linear { weight, bias } => {
                weight.data.len() as u64 + opt(bias)
            }
            Op::Affine { scale, shift } => (scale.len() + shift.len()) as u64,
            Op::LayerNorm { weight, bias, .. } => (weight.len() + bias.len()) as u64,
            _ => 0,
        }
    }
}
