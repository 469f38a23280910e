//! ONNX graph to advex model description: a symbolic walk over the graph in
//! topological order. Every value is either a constant (initializers,
//! `Constant` nodes and whatever can be computed from them, evaluated on the CPU
//! here) or a run-time tensor produced by an advex node. Run-time ops become
//! [`NodeSpec`]s; ops that only reshape emit nothing or a `flatten`.
//!
//! Shapes carry the batch dimension as 1: the advex graph is per image.
//!
//! Here: the value model ([`Val`]: constants and run-time tensors with their
//! layout), the converter's state and its accessors, node emission, pruning,
//! and `convert_node`, which hands each op to its family: [`graph`] (the walk:
//! input, plan, nodes in order), [`fold`] (constant folding), [`conv`]
//! (convolution, batch norm, pooling), [`linear`] (Gemm, MatMul),
//! [`elementwise`] (activations, binary ops, ReduceMean), [`layout`] (reshapes,
//! transposes, slices, concat, pad); [`attrs`] reads attributes.

mod attrs;
mod channels_last;
mod conv;
mod elementwise;
mod fold;
mod gelu;
mod graph;
mod layout;
mod linear;

use attrs::*;
use layout::{add_pads, simplify, strip};

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::rc::Rc;

use super::proto::{AttributeProto, GraphProto, ModelProto, NodeProto};
use super::tensor::{self as t, fmt_dims, numel, Const, Data, ExternalData};
use crate::gpu::Shape;
use crate::model::{Hw, NodeSpec, Padding};
use crate::ops::params::{Conv2dParams, Pool2dParams};

/// Oldest and newest default-domain opsets the importer knows.
pub const MIN_OPSET: i64 = 7;
pub const MAX_OPSET: i64 = 28;

/// Why a node did not convert.
pub(crate) enum Fail {
    /// The model uses something advex cannot run: collected and reported together.
    Unsupported(String),
    /// The file is inconsistent: reported at once, naming the node.
    Invalid(String),
    /// An input comes from an unsupported node (already reported).
    Poisoned,
}

type R<T> = Result<T, Fail>;

fn unsup<T>(m: impl Into<String>) -> R<T> {
    Err(Fail::Unsupported(m.into()))
}

fn invalid<T>(m: impl Into<String>) -> R<T> {
    Err(Fail::Invalid(m.into()))
}

impl From<String> for Fail {
    fn from(m: String) -> Self {
        Fail::Invalid(m)
    }
}

/// What produced a run-time value (for pattern fusions).
#[derive(Clone, Debug, PartialEq)]
enum Origin {
    Other,
    /// `sigmoid(src)`.
    Sigmoid(String),
    /// `hardsigmoid(src)` with these parameters.
    HardSigmoid(String, f32, f32),
    /// A linear node (index into `nodes`) and the ONNX value it produced: an
    /// `Add` reading exactly that value, its only consumer, may join its bias.
    Linear(usize, String),
    /// The ONNX value named times a scalar (GELU's `x / sqrt 2` and `0.5 x`).
    Scaled(String, f32),
}

/// A run-time value.
#[derive(Clone, Debug)]
struct Dyn {
    /// The advex value: `input` or a node name.
    src: String,
    /// ONNX dims, batch 1, after any pending padding.
    dims: Vec<usize>,
    /// Per-item advex shape `[C, H, W]` of `src`.
    adv: [usize; 3],
    /// Known to be >= 0 (after ReLU, sigmoid, ...).
    nonneg: bool,
    /// Zero padding `[top, left, bottom, right]` of a `Pad` not yet folded into
    /// the following convolution or pooling.
    pad: [u32; 4],
    origin: Origin,
    /// Set when layout ops (Transpose, Gather, GatherND, Slice, Expand, a
    /// ReduceMean that is not a global pool) rearranged the value: each element
    /// (row-major in `dims`) is a weighted sum of `src`'s elements. Such a
    /// value can only feed reshapes, more layout ops, or a Gemm/MatMul, into
    /// whose weights the map is folded.
    map: Option<Map>,
    /// A channels-last view (`dims` `[1, H, W, C]`) of the NCHW tensor `src`
    /// (see `channels_last.rs`).
    nhwc: bool,
}

/// Per element, `(src element, weight)` pairs.
type Map = Rc<Vec<Vec<(u32, f32)>>>;

/// Most elements (and map entries) a rearranged value may have.
const MAX_MAP: usize = 1 << 22;

#[derive(Clone, Debug)]
enum Val {
    Const(Rc<Const>),
    Dyn(Dyn),
    /// Part of GELU's erf chain (see `gelu.rs`).
    Part(gelu::Part),
    /// Produced by an unsupported node.
    Poison,
}

/// The converter's state.
pub(crate) struct Converter<'a> {
    path: &'a Path,
    opset: i64,
    values: HashMap<String, Val>,
    /// Live consumers of each value (the graph output counts as one).
    consumers: HashMap<String, usize>,
    output: String,
    final_softmax: HashSet<usize>,
    pub nodes: Vec<NodeSpec>,
    names: HashSet<String>,
    pub tensors: Vec<(String, Vec<usize>, Vec<f32>)>,
    tensor_index: HashMap<String, usize>,
    reserved_tensors: HashSet<String>,
    unsupported: Vec<String>,
    pub warnings: Vec<String>,
}

/// What [`Converter::run`] found out about the graph input and output.
pub(crate) struct Converted {
    /// `[C, H, W]`.
    pub input: [u32; 3],
    /// The advex node giving the output.
    pub output: String,
    /// Number of classes.
    pub classes: usize,
}

/// Resolved graph input.
pub(crate) struct InputInfo {
    pub name: String,
    pub chw: [u32; 3],
}

impl<'a> Converter<'a> {
    fn err(&self, msg: impl Into<String>) -> crate::ModelError {
        crate::ModelError::new(self.path, msg)
    }

    fn warn(&mut self, m: String) {
        log::warn!("{}: {m}", self.path.display());
        self.warnings.push(m);
    }

    /// The node's name for messages and as the advex node name's base.
    fn label(&self, n: &NodeProto, idx: usize) -> String {
        match n.name.as_deref() {
            Some(s) if !s.is_empty() => s.to_string(),
            _ => match n.output.first() {
                Some(o) if !o.is_empty() => o.clone(),
                _ => format!("{}_{idx}", n.op_type.as_deref().unwrap_or("node")),
            },
        }
    }

    fn inp(n: &NodeProto, k: usize) -> Option<&str> {
        n.input.get(k).map(String::as_str).filter(|s| !s.is_empty())
    }

    fn get(&self, name: &str) -> R<Val> {
        self.values
            .get(name)
            .cloned()
            .ok_or_else(|| Fail::Invalid(format!("input `{name}` is not defined")))
    }

    /// A run-time input, padding allowed.
    fn dyn_padded(&self, n: &NodeProto, k: usize) -> R<Dyn> {
        let mut d = self.dyn_any(n, k)?;
        let op = n.op_type.as_deref().unwrap_or("");
        if d.nhwc && !channels_last::KEEPS_VIEW.contains(&op) {
            d = Self::materialize(d)?;
        }
        if d.map.is_some() {
            return unsup(format!(
                "its input `{}` is a rearrangement (Transpose, Gather, GatherND, Slice, Expand or ReduceMean) of a run-time value; advex supports those only when they feed a Gemm or MatMul",
                Self::inp(n, k).unwrap_or("")
            ));
        }
        Ok(d)
    }

    /// A run-time input without pending padding, possibly rearranged.
    fn dyn_in_any(&self, n: &NodeProto, k: usize) -> R<Dyn> {
        let d = Self::materialize(self.dyn_any(n, k)?)?;
        if d.pad != [0; 4] {
            return unsup(format!(
                "its input `{}` comes from a Pad; advex folds zero padding only into a directly following Conv, AveragePool or MaxPool",
                Self::inp(n, k).unwrap_or("")
            ));
        }
        Ok(d)
    }

    /// A run-time input, padded or rearranged.
    fn dyn_any(&self, n: &NodeProto, k: usize) -> R<Dyn> {
        let name = Self::inp(n, k).ok_or_else(|| Fail::Invalid(format!("input {k} is missing")))?;
        match self.get(name)? {
            Val::Dyn(d) => Ok(d),
            Val::Poison => Err(Fail::Poisoned),
            Val::Const(_) => unsup(format!(
                "input `{name}` is a constant; {} of constants is not supported",
                n.op_type.as_deref().unwrap_or("")
            )),
            Val::Part(_) => unsup(format!("{}; `{name}` is read elsewhere", gelu::PATTERN)),
        }
    }

    /// A run-time input with no pending padding.
    fn dyn_in(&self, n: &NodeProto, k: usize) -> R<Dyn> {
        let d = self.dyn_padded(n, k)?;
        if d.pad != [0; 4] {
            return unsup(format!(
                "its input `{}` comes from a Pad; advex folds zero padding only into a directly following Conv, AveragePool or MaxPool",
                Self::inp(n, k).unwrap_or("")
            ));
        }
        Ok(d)
    }

    /// A constant input (`what` names it in messages).
    fn const_in(&self, n: &NodeProto, k: usize, what: &str) -> R<Rc<Const>> {
        let name = Self::inp(n, k)
            .ok_or_else(|| Fail::Invalid(format!("input {k} ({what}) is missing")))?;
        match self.get(name)? {
            Val::Const(c) => Ok(c),
            Val::Poison => Err(Fail::Poisoned),
            Val::Part(_) => unsup(gelu::PATTERN.to_string()),
            Val::Dyn(_) => unsup(format!(
                "its {what} (`{name}`) is computed at run time; only constant {what} are supported"
            )),
        }
    }

    fn opt_const(&self, n: &NodeProto, k: usize, what: &str) -> R<Option<Rc<Const>>> {
        match Self::inp(n, k) {
            None => Ok(None),
            Some(_) => self.const_in(n, k, what).map(Some),
        }
    }

    /// Integer list from attribute `name` (older opsets) or input `k` (newer).
    fn ints_attr_or_input(&self, n: &NodeProto, name: &str, k: usize) -> R<Option<Vec<i64>>> {
        if let Some(v) = attr_ints(n, name) {
            return Ok(Some(v));
        }
        match self.opt_const(n, k, name)? {
            Some(c) => Ok(Some(c.to_i64()?)),
            None => Ok(None),
        }
    }

    fn is_used(&self, name: Option<&String>) -> bool {
        name.is_some_and(|s| !s.is_empty() && self.consumers.get(s).copied().unwrap_or(0) > 0)
    }

    fn single_consumer(&self, name: &str) -> bool {
        self.consumers.get(name) == Some(&1) && name != self.output
    }

    // ---- emission -----------------------------------------------------

    fn unique_node_name(&mut self, base: &str) -> String {
        let mut name = base.to_string();
        let mut k = 1;
        while self.names.contains(&name) {
            k += 1;
            name = format!("{base}_{k}");
        }
        self.names.insert(name.clone());
        name
    }

    fn emit(&mut self, n: &NodeProto, idx: usize, mut spec: NodeSpec) -> (String, usize) {
        let base = self.label(n, idx);
        spec.name = self.unique_node_name(&base);
        self.nodes.push(spec);
        let i = self.nodes.len() - 1;
        (self.nodes[i].name.clone(), i)
    }

    /// Adds a tensor under a fresh name derived from `hint`.
    fn new_tensor(&mut self, hint: &str, dims: Vec<usize>, data: Vec<f32>) -> String {
        let mut name = hint.to_string();
        let mut k = 1;
        while self.tensor_index.contains_key(&name) || self.reserved_tensors.contains(&name) {
            k += 1;
            name = format!("{hint}_{k}");
        }
        self.tensor_index.insert(name.clone(), self.tensors.len());
        self.tensors.push((name.clone(), dims, data));
        name
    }

    /// The tensor for a constant: its initializer's name when unchanged.
    fn tensor_of(&mut self, c: &Const, hint: &str) -> String {
        if let Some(o) = &c.origin {
            if !self.tensor_index.contains_key(o) {
                self.tensor_index.insert(o.clone(), self.tensors.len());
                self.tensors.push((o.clone(), c.dims.clone(), c.to_f32()));
            }
            return o.clone();
        }
        self.new_tensor(hint, c.dims.clone(), c.to_f32())
    }

    fn out_dyn(src: String, dims: Vec<usize>) -> R<Dyn> {
        let adv = adv_of(&dims).ok_or_else(|| Fail::Invalid("bad output shape".into()))?;
        Ok(Dyn {
            src,
            dims,
            adv,
            nonneg: false,
            pad: [0; 4],
            origin: Origin::Other,
            map: None,
            nhwc: false,
        })
    }

    /// Drops nodes that do not reach `out` and tensors no node uses.
    fn prune(&mut self, out: &str) {
        let index: HashMap<&str, usize> = self
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.name.as_str(), i))
            .collect();
        let mut live = vec![false; self.nodes.len()];
        let mut stack = vec![out];
        while let Some(v) = stack.pop() {
            if let Some(&i) = index.get(v) {
                if !live[i] {
                    live[i] = true;
                    stack.extend(self.nodes[i].inputs.iter().map(String::as_str));
                }
            }
        }
        let mut k = 0;
        self.nodes.retain(|_| {
            k += 1;
            live[k - 1]
        });
        let used: HashSet<&String> = self
            .nodes
            .iter()
            .flat_map(|n| {
                [&n.weight, &n.bias, &n.running_mean, &n.running_var]
                    .into_iter()
                    .flatten()
            })
            .collect();
        let tensors = std::mem::take(&mut self.tensors);
        self.tensors = tensors
            .into_iter()
            .filter(|t| used.contains(&t.0))
            .collect();
    }

    // ---- ops ----------------------------------------------------------

    fn convert_node(&mut self, idx: usize, n: &NodeProto) -> R<Vec<Val>> {
        let op = n.op_type.as_deref().unwrap_or("");
        let domain = n.domain.as_deref().unwrap_or("");
        if !domain.is_empty() && domain != "ai.onnx" {
            return unsup(format!("operator domain `{domain}` is not supported"));
        }
        if !super::SUPPORTED_OPS.contains(&op) && !CONSTANT_ONLY.contains(&op) {
            return unsup("this operator is not supported");
        }
        let mut any_dyn = false;
        let mut any_part = false;
        for name in n.input.iter().filter(|s| !s.is_empty()) {
            match self.get(name)? {
                Val::Poison => return Err(Fail::Poisoned),
                Val::Dyn(_) => any_dyn = true,
                Val::Part(_) => any_part = true,
                Val::Const(_) => {}
            }
        }
        if any_part {
            return match op {
                "Add" | "Mul" => self.gelu_step(n, idx, op),
                _ => unsup(gelu::PATTERN.to_string()),
            };
        }
        if !any_dyn {
            return self.fold(n).map(|c| vec![Val::Const(Rc::new(c))]);
        }
        match op {
            "Erf" => self.erf(n),
            "Conv" => self.conv(n, idx),
            "BatchNormalization" => self.batch_norm(n, idx),
            "Gemm" => self.gemm(n, idx),
            "MatMul" => match self.matmul_view(n, idx)? {
                Some(v) => Ok(v),
                None => self.matmul(n, idx),
            },
            "LayerNormalization" => self.layer_norm(n, idx),
            "Relu" => {
                let x = self.dyn_in(n, 0)?;
                self.unary_node(n, idx, "relu", &x, true, |_| {})
            }
            "Sigmoid" => {
                let x = self.dyn_in(n, 0)?;
                let mut v = self.unary_node(n, idx, "sigmoid", &x, true, |_| {})?;
                if let Some(Val::Dyn(d)) = v.first_mut() {
                    d.origin = Origin::Sigmoid(x.src.clone());
                }
                Ok(v)
            }
            "HardSigmoid" => {
                let x = self.dyn_in(n, 0)?;
                let (a, b) = (attr_f(n, "alpha", 0.2), attr_f(n, "beta", 0.5));
                let mut v = self.unary_node(n, idx, "hardsigmoid", &x, true, |s| {
                    s.alpha = Some(f64_of(a));
                    s.beta = Some(f64_of(b));
                })?;
                if let Some(Val::Dyn(d)) = v.first_mut() {
                    d.origin = Origin::HardSigmoid(x.src.clone(), a, b);
                }
                Ok(v)
            }
            "HardSwish" => {
                let x = self.dyn_in(n, 0)?;
                self.unary_node(n, idx, "hardswish", &x, false, |_| {})
            }
            "Gelu" => {
                let x = self.dyn_in(n, 0)?;
                let approximate = attr_s(n, "approximate").unwrap_or_else(|| "none".into());
                if approximate != "none" && approximate != "tanh" {
                    return invalid(format!(
                        "Gelu approximate `{approximate}` (ONNX allows none and tanh)"
                    ));
                }
                self.unary_node(n, idx, "gelu", &x, false, |s| {
                    s.approximate = (approximate == "tanh").then_some(approximate)
                })
            }
            "LeakyRelu" => {
                let x = self.dyn_in(n, 0)?;
                let a = attr_f(n, "alpha", 0.01);
                self.unary_node(n, idx, "leaky_relu", &x, false, |s| {
                    s.negative_slope = Some(f64_of(a))
                })
            }
            "Clip" => self.clip(n, idx),
            "Add" | "Sub" | "Mul" | "Div" => self.binary(n, idx, op),
            "MaxPool" | "AveragePool" => self.pool(n, idx, op == "MaxPool"),
            "GlobalAveragePool" => {
                let x = self.dyn_in(n, 0)?;
                self.global_pool(n, idx, &x, true, false)
            }
            "GlobalMaxPool" => {
                let x = self.dyn_in(n, 0)?;
                self.global_pool(n, idx, &x, true, true)
            }
            "ReduceMean" => self.reduce_mean(n, idx),
            "Flatten" => {
                let x = self.dyn_in_any(n, 0)?;
                let axis = attr_i(n, "axis", 1);
                let a = t::norm_axis(axis, x.dims.len() + 1).map_err(Fail::Invalid)?;
                if a != 1 {
                    return unsup(format!(
                        "Flatten with axis {axis} (only axis 1, keeping the batch dimension, is supported)"
                    ));
                }
                let dims = match x.dims.split_first() {
                    Some((&n0, rest)) => vec![n0, numel(rest).unwrap_or(0)],
                    None => return invalid("Flatten of a scalar"),
                };
                self.relayout(n, idx, &x, dims)
            }
            "Reshape" => {
                let x = self.dyn_in_any(n, 0)?;
                let target = self.const_in(n, 1, "shape")?.to_i64()?;
                let dims = t::reshape_target(&x.dims, &target, attr_i(n, "allowzero", 0) != 0)?;
                self.relayout(n, idx, &x, dims)
            }
            "Squeeze" | "Unsqueeze" => {
                let x = self.dyn_in_any(n, 0)?;
                let axes = self.ints_attr_or_input(n, "axes", 1)?.unwrap_or_default();
                let dims = if op == "Squeeze" {
                    t::squeeze_dims(&x.dims, &axes)?
                } else {
                    if axes.is_empty() {
                        return invalid("Unsqueeze needs axes");
                    }
                    t::unsqueeze_dims(&x.dims, &axes)?
                };
                self.relayout(n, idx, &x, dims)
            }
            "Concat" => self.concat(n, idx),
            "Pad" => self.pad(n),
            "Transpose" => {
                if let Some(v) = self.transpose_view(n)? {
                    return Ok(v);
                }
                let perm = attr_ints(n, "perm");
                self.rearrange(n, |c| t::transpose(c, perm.as_deref()))
            }
            "Gather" => {
                let ind = self.const_in(n, 1, "indices")?;
                let axis = attr_i(n, "axis", 0);
                self.rearrange(n, |c| t::gather(c, &ind, axis))
            }
            "GatherND" => {
                if attr_i(n, "batch_dims", 0) != 0 {
                    return unsup("GatherND with batch_dims != 0 is not supported");
                }
                let ind = self.const_in(n, 1, "indices")?;
                self.rearrange(n, |c| t::gather_nd(c, &ind))
            }
            "Expand" => {
                let shape = self.const_in(n, 1, "shape")?.to_i64()?;
                self.rearrange(n, |c| t::expand(c, &shape))
            }
            "Slice" => {
                let (starts, ends, axes, steps) = self.slice_args(n)?;
                self.rearrange(n, |c| {
                    t::slice(c, &starts, &ends, axes.as_deref(), steps.as_deref())
                })
            }
            "Dropout" => {
                if self.is_used(n.output.get(1)) {
                    return unsup("its mask output is used");
                }
                let x = self.dyn_any(n, 0)?;
                Ok(vec![Val::Dyn(x)])
            }
            "Identity" => Ok(vec![Val::Dyn(self.dyn_any(n, 0)?)]),
            "Cast" => {
                let x = self.dyn_any(n, 0)?;
                let to = attr_i(n, "to", 1);
                if to != super::proto::tensor_proto::DataType::Float as i64 {
                    return unsup(format!(
                        "casting the run-time value to {} is not supported",
                        t::dtype_name(to as i32)
                    ));
                }
                Ok(vec![Val::Dyn(x)])
            }
            "Shape" => {
                let x = self.dyn_any(n, 0)?;
                let dims: Vec<i64> = x.dims.iter().map(|&d| d as i64).collect();
                let r = dims.len() as i64;
                let fix = |v: i64| (if v < 0 { v + r } else { v }).clamp(0, r) as usize;
                let s = fix(attr_i(n, "start", 0));
                let e = fix(attr_i(n, "end", r));
                let v = if s < e {
                    dims[s..e].to_vec()
                } else {
                    Vec::new()
                };
                Ok(vec![Val::Const(Rc::new(Const::i64(vec![v.len()], v)))])
            }
            "Size" => {
                let x = self.dyn_any(n, 0)?;
                let v = numel(&x.dims).unwrap_or(0) as i64;
                Ok(vec![Val::Const(Rc::new(Const::i64(vec![], vec![v])))])
            }
            "Softmax" | "LogSoftmax" => {
                let x = self.dyn_in(n, 0)?;
                if self.final_softmax.contains(&idx) {
                    self.warn(format!(
                        "dropped the final {op} `{}`: advex works on logits (attacks need them); predictions still report softmax probabilities",
                        self.label(n, idx)
                    ));
                    return Ok(vec![Val::Dyn(x)]);
                }
                if op == "LogSoftmax" {
                    return unsup("LogSoftmax inside the graph is not supported");
                }
                let r = x.dims.len() as i64;
                let default = if self.opset < 13 { 1 } else { -1 };
                let axis = attr_i(n, "axis", default);
                let a = if axis < 0 { axis + r } else { axis };
                if a != 1 || x.adv[1] != 1 || x.adv[2] != 1 || (self.opset >= 13 && r != 2) {
                    return unsup(format!(
                        "Softmax over axis {axis} of {} inside the graph (only over the classes of [N, K] is supported)",
                        fmt_dims(&x.dims)
                    ));
                }
                self.unary_node(n, idx, "softmax", &x, true, |_| {})
            }
            _ => unsup("this operator is only supported on constants"),
        }
    }
}

/// Ops the importer evaluates only on constants, besides [`super::SUPPORTED_OPS`].
const CONSTANT_ONLY: &[&str] = &[
    "Constant",
    "Mod",
    "Equal",
    "Less",
    "Greater",
    "Not",
    "Where",
    "ConstantOfShape",
    "Shape",
    "Size",
    "Neg",
    "Sqrt",
    "Reciprocal",
    "Floor",
    "Ceil",
];
