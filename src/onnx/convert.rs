//! ONNX graph to advex model description: a symbolic walk over the graph in
//! topological order. Every value is either a constant (initializers,
//! `Constant` nodes and whatever can be computed from them, evaluated on the CPU
//! here) or a run-time tensor produced by an advex node. Run-time ops become
//! [`NodeSpec`]s; ops that only reshape emit nothing or a `flatten`.
//!
//! Shapes carry the batch dimension as 1: the advex graph is per image.

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
}

/// Per element, `(src element, weight)` pairs.
type Map = Rc<Vec<Vec<(u32, f32)>>>;

/// Most elements (and map entries) a rearranged value may have.
const MAX_MAP: usize = 1 << 22;

#[derive(Clone, Debug)]
enum Val {
    Const(Rc<Const>),
    Dyn(Dyn),
    /// Produced by an unsupported node.
    Poison,
}

/// Per-item advex shape of ONNX dims (batch first, 1): `[1, C, H, W]` is
/// `[C, H, W]`; any other rank is flat, `[numel, 1, 1]`.
fn adv_of(dims: &[usize]) -> Option<[usize; 3]> {
    if dims.first() != Some(&1) {
        return None;
    }
    if dims.len() == 4 {
        Some([dims[1], dims[2], dims[3]])
    } else {
        Some([numel(dims)?, 1, 1])
    }
}

fn u32_of(v: usize, what: &str) -> R<u32> {
    u32::try_from(v).map_err(|_| Fail::Invalid(format!("{what} {v} is too large")))
}

fn shape_of(adv: [usize; 3]) -> R<Shape> {
    Ok(Shape::new(
        1,
        u32_of(adv[0], "channel count")?,
        u32_of(adv[1], "height")?,
        u32_of(adv[2], "width")?,
    ))
}

/// f32 attribute values as the decimal they were written as (1e-5, not
/// 9.99999974738e-6).
fn f64_of(v: f32) -> f64 {
    format!("{v}").parse().unwrap_or(v as f64)
}

fn attr<'n>(n: &'n NodeProto, name: &str) -> Option<&'n AttributeProto> {
    n.attribute.iter().find(|a| a.name.as_deref() == Some(name))
}

fn attr_i(n: &NodeProto, name: &str, default: i64) -> i64 {
    attr(n, name).and_then(|a| a.i).unwrap_or(default)
}

fn attr_f(n: &NodeProto, name: &str, default: f32) -> f32 {
    attr(n, name).and_then(|a| a.f).unwrap_or(default)
}

fn attr_ints(n: &NodeProto, name: &str) -> Option<Vec<i64>> {
    attr(n, name).map(|a| a.ints.clone())
}

fn attr_s(n: &NodeProto, name: &str) -> Option<String> {
    attr(n, name)
        .and_then(|a| a.s.as_ref())
        .map(|s| String::from_utf8_lossy(s).into_owned())
}

/// Two positive values (kernel, stride, dilation) from an attribute.
fn hw_attr(n: &NodeProto, name: &str, default: Option<[u32; 2]>) -> R<[u32; 2]> {
    match attr_ints(n, name) {
        None => default.ok_or_else(|| Fail::Invalid(format!("attribute `{name}` is missing"))),
        Some(v) if v.len() == 2 && v.iter().all(|&x| x >= 1 && x <= u32::MAX as i64) => {
            Ok([v[0] as u32, v[1] as u32])
        }
        Some(v) if v.len() != 2 => unsup(format!(
            "`{name}` {} is not 2-D (only 2-D convolution and pooling are supported)",
            fmt_dims(&v)
        )),
        Some(v) => invalid(format!("`{name}` {} must be positive", fmt_dims(&v))),
    }
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

    /// Converts `model`'s graph. `size` resolves dynamic input height/width.
    pub fn run(
        path: &'a Path,
        model: &ModelProto,
        opset: i64,
        size: Option<[u32; 2]>,
    ) -> Result<(Converter<'a>, Converted), crate::ModelError> {
        let graph = model
            .graph
            .as_ref()
            .ok_or_else(|| crate::ModelError::new(path, "not an ONNX model: it has no graph"))?;
        let mut c = Converter {
            path,
            opset,
            values: HashMap::new(),
            consumers: HashMap::new(),
            output: String::new(),
            final_softmax: HashSet::new(),
            nodes: Vec::new(),
            names: ["input", "normalize"]
                .iter()
                .map(|s| s.to_string())
                .collect(),
            tensors: Vec::new(),
            tensor_index: HashMap::new(),
            reserved_tensors: HashSet::new(),
            unsupported: Vec::new(),
            warnings: Vec::new(),
        };
        if !graph.sparse_initializer.is_empty() {
            return Err(c.err("sparse initializers are not supported"));
        }
        for init in &graph.initializer {
            let name = init.name.clone().unwrap_or_default();
            if name.is_empty() {
                return Err(c.err("an initializer has no name"));
            }
            c.reserved_tensors.insert(name);
        }
        let input = c.graph_input(graph, size)?;
        let [ch, h, w] = input.chw;
        let out_name = match graph.output.as_slice() {
            [] => return Err(c.err("the graph has no output")),
            [first, rest @ ..] => {
                if !rest.is_empty() {
                    c.warn(format!(
                        "the graph has {} outputs; advex uses the first, `{}`",
                        graph.output.len(),
                        first.name.as_deref().unwrap_or("")
                    ));
                }
                first.name.clone().unwrap_or_default()
            }
        };
        c.output = out_name.clone();
        let mut known = c.reserved_tensors.clone();
        known.insert(input.name.clone());
        let order = c.plan(graph, &known)?;
        // Decode the initializers the output depends on (others may be of
        // types advex does not read).
        let mut ext = ExternalData::new(path);
        for init in &graph.initializer {
            let name = init.name.clone().unwrap_or_default();
            if !c.consumers.contains_key(&name) || c.values.contains_key(&name) {
                continue;
            }
            let mut k = t::decode_tensor(init, &mut ext)
                .map_err(|m| c.err(format!("initializer: {m}")).tensor(name.clone()))?;
            k.origin = Some(name.clone());
            c.values.insert(name, Val::Const(Rc::new(k)));
        }
        c.values.insert(
            input.name.clone(),
            Val::Dyn(Dyn {
                src: "input".into(),
                dims: vec![1, ch as usize, h as usize, w as usize],
                adv: [ch as usize, h as usize, w as usize],
                nonneg: false,
                pad: [0; 4],
                origin: Origin::Other,
                map: None,
            }),
        );
        for idx in order {
            let n = &graph.node[idx];
            let result = c.convert_node(idx, n);
            let op = n.op_type.as_deref().unwrap_or("");
            let label = c.label(n, idx);
            match result {
                Ok(vals) => {
                    for (k, name) in n.output.iter().enumerate() {
                        if name.is_empty() {
                            continue;
                        }
                        let v = vals.get(k).cloned().unwrap_or(Val::Poison);
                        c.values.insert(name.clone(), v);
                    }
                }
                Err(f) => {
                    match f {
                        Fail::Unsupported(m) => {
                            c.unsupported.push(format!("`{label}` ({op}): {m}"))
                        }
                        Fail::Invalid(m) => {
                            return Err(c.err(format!("{op}: {m}")).node(label));
                        }
                        Fail::Poisoned => {}
                    }
                    for name in &n.output {
                        c.values.insert(name.clone(), Val::Poison);
                    }
                }
            }
        }
        if !c.unsupported.is_empty() {
            let k = c.unsupported.len();
            return Err(c.err(format!(
                "cannot import: {k} unsupported node{}:\n  {}",
                if k == 1 { "" } else { "s" },
                c.unsupported.join("\n  ")
            )));
        }
        let out = c.values.get(&out_name).cloned();
        let d = match out {
            Some(Val::Dyn(d)) => d,
            Some(Val::Const(_)) => {
                return Err(c.err(format!(
                    "no classifier output: the output `{out_name}` is a constant that does not depend on the input"
                )))
            }
            _ => return Err(c.err(format!("the output `{out_name}` is not computed"))),
        };
        if d.map.is_some() {
            return Err(c.err(format!(
                "the output `{out_name}` is a rearrangement (Transpose, Gather, ...) of a run-time value; advex supports those only before a Gemm or MatMul"
            )));
        }
        let is_classifier = matches!(d.dims.as_slice(), [1, _] | [1, _, 1, 1]) && d.pad == [0; 4];
        if !is_classifier {
            return Err(c.err(format!(
                "no classifier output: the output `{out_name}` has shape {} (batch as 1); advex needs class scores of shape [N, K] or [N, K, 1, 1]",
                fmt_dims(&d.dims)
            )));
        }
        if d.src == "input" {
            return Err(c.err(format!(
                "no classifier output: the output `{out_name}` is the graph input itself"
            )));
        }
        let classes = d.dims[1];
        c.prune(&d.src);
        Ok((
            c,
            Converted {
                input: input.chw,
                output: d.src,
                classes,
            },
        ))
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

    /// The graph input (inputs that are not initializers): one 4-D float tensor.
    fn graph_input(
        &self,
        graph: &GraphProto,
        size: Option<[u32; 2]>,
    ) -> Result<InputInfo, crate::ModelError> {
        use super::proto::tensor_shape_proto::dimension::Value as DimV;
        use super::proto::type_proto::Value as TypeV;
        let real: Vec<_> = graph
            .input
            .iter()
            .filter(|i| {
                !self
                    .reserved_tensors
                    .contains(i.name.as_deref().unwrap_or(""))
            })
            .collect();
        let vi = match real.as_slice() {
            [one] => *one,
            [] => return Err(self.err("the graph has no input (every input is an initializer)")),
            many => {
                let names: Vec<_> = many
                    .iter()
                    .map(|i| format!("`{}`", i.name.as_deref().unwrap_or("")))
                    .collect();
                return Err(self.err(format!(
                    "the graph has {} inputs ({}); advex imports models with one image input",
                    many.len(),
                    names.join(", ")
                )));
            }
        };
        let name = vi.name.clone().unwrap_or_default();
        let ierr = |m: String| self.err(format!("graph input `{name}`: {m}"));
        let tensor = match vi.r#type.as_ref().and_then(|t| t.value.as_ref()) {
            Some(TypeV::TensorType(tt)) => tt,
            _ => return Err(ierr("it is not a tensor".into())),
        };
        let et = tensor.elem_type.unwrap_or(0);
        if et != super::proto::tensor_proto::DataType::Float as i32 {
            return Err(ierr(format!(
                "its element type is {}; advex imports float32 inputs only",
                t::dtype_name(et)
            )));
        }
        let dims: Vec<Option<i64>> = match &tensor.shape {
            Some(s) => s
                .dim
                .iter()
                .map(|d| match d.value {
                    Some(DimV::DimValue(v)) if v > 0 => Some(v),
                    _ => None,
                })
                .collect(),
            None => {
                return Err(ierr(
                    "its shape is not given; advex needs [N, C, H, W]".into(),
                ))
            }
        };
        if dims.len() != 4 {
            return Err(ierr(format!(
                "it has rank {}; advex imports image models with input [N, C, H, W]",
                dims.len()
            )));
        }
        let show: Vec<String> = tensor
            .shape
            .iter()
            .flat_map(|s| s.dim.iter())
            .map(|d| match &d.value {
                Some(DimV::DimValue(v)) => v.to_string(),
                Some(DimV::DimParam(p)) => p.clone(),
                None => "?".into(),
            })
            .collect();
        let c = dims[1].and_then(|c| u32::try_from(c).ok()).ok_or_else(|| {
            ierr(format!(
                "its channel count is not fixed (shape [{}]); re-export with a fixed channel count",
                show.join(", ")
            ))
        })?;
        let fixed = |k: usize| dims[k].and_then(|v| u32::try_from(v).ok());
        let hw = match (fixed(2), fixed(3), size) {
            (Some(h), Some(w), None) => [h, w],
            (Some(h), Some(w), Some(s)) => {
                if s != [h, w] {
                    return Err(ierr(format!(
                        "its size is fixed at {h}x{w} in the file; --size {}x{} differs (leave --size out)",
                        s[0], s[1]
                    )));
                }
                [h, w]
            }
            (h, w, Some(s)) => {
                for (got, want, what) in [(h, s[0], "height"), (w, s[1], "width")] {
                    if let Some(g) = got {
                        if g != want {
                            return Err(ierr(format!(
                                "its {what} is fixed at {g} in the file but --size gives {want}"
                            )));
                        }
                    }
                }
                s
            }
            _ => {
                return Err(ierr(format!(
                    "its height and width are dynamic (shape [{}]); pass --size HxW (for example --size 224x224)",
                    show.join(", ")
                )))
            }
        };
        if c == 0 || hw[0] == 0 || hw[1] == 0 {
            return Err(ierr("a dimension is zero".into()));
        }
        Ok(InputInfo {
            name,
            chw: [c, hw[0], hw[1]],
        })
    }

    /// Topological order of the nodes the output depends on; fills
    /// `consumers` and `final_softmax`.
    fn plan(
        &mut self,
        graph: &GraphProto,
        known: &HashSet<String>,
    ) -> Result<Vec<usize>, crate::ModelError> {
        let mut producer: HashMap<&str, usize> = HashMap::new();
        for (i, n) in graph.node.iter().enumerate() {
            for o in &n.output {
                if o.is_empty() {
                    continue;
                }
                if known.contains(o) || producer.insert(o, i).is_some() {
                    return Err(self
                        .err(format!("value `{o}` is produced more than once"))
                        .node(self.label(n, i)));
                }
            }
        }
        // Liveness: the nodes the output depends on.
        let mut live = vec![false; graph.node.len()];
        let mut stack = vec![self.output.as_str()];
        if !known.contains(&self.output) && !producer.contains_key(self.output.as_str()) {
            return Err(self.err(format!(
                "the graph output `{}` is not produced by any node",
                self.output
            )));
        }
        while let Some(v) = stack.pop() {
            if let Some(&i) = producer.get(v) {
                if !live[i] {
                    live[i] = true;
                    for inp in &graph.node[i].input {
                        if !inp.is_empty() {
                            stack.push(inp);
                        }
                    }
                }
            }
        }
        // Kahn's algorithm, keeping file order among ready nodes.
        let mut indeg = vec![0usize; graph.node.len()];
        let mut users: HashMap<usize, Vec<usize>> = HashMap::new();
        for (i, n) in graph.node.iter().enumerate() {
            if !live[i] {
                continue;
            }
            for inp in n.input.iter().filter(|s| !s.is_empty()) {
                *self.consumers.entry(inp.clone()).or_default() += 1;
                match producer.get(inp.as_str()) {
                    Some(&p) => {
                        indeg[i] += 1;
                        users.entry(p).or_default().push(i);
                    }
                    None if known.contains(inp) => {}
                    None => {
                        return Err(self
                            .err(format!(
                                "input `{inp}` is not a graph input, an initializer or any node's output"
                            ))
                            .node(self.label(n, i)))
                    }
                }
            }
        }
        *self.consumers.entry(self.output.clone()).or_default() += 1;
        let mut ready: std::collections::BTreeSet<usize> = (0..graph.node.len())
            .filter(|&i| live[i] && indeg[i] == 0)
            .collect();
        let mut order = Vec::new();
        while let Some(i) = ready.pop_first() {
            order.push(i);
            for &u in users.get(&i).map(Vec::as_slice).unwrap_or(&[]) {
                indeg[u] -= 1;
                if indeg[u] == 0 {
                    ready.insert(u);
                }
            }
        }
        if order.len() != live.iter().filter(|&&l| l).count() {
            return Err(self.err("the graph has a cycle"));
        }
        // Softmax nodes whose output reaches the graph output through
        // layout-only ops: dropped (attacks need logits).
        for &i in &order {
            let n = &graph.node[i];
            if !matches!(n.op_type.as_deref(), Some("Softmax" | "LogSoftmax")) {
                continue;
            }
            let mut v = n.output.first().cloned().unwrap_or_default();
            let mut steps = 0;
            loop {
                if v == self.output {
                    if self.consumers.get(&v) == Some(&1) {
                        self.final_softmax.insert(i);
                    }
                    break;
                }
                let next: Vec<usize> = users
                    .get(&producer.get(v.as_str()).copied().unwrap_or(usize::MAX))
                    .map(|u| {
                        u.iter()
                            .copied()
                            .filter(|&k| graph.node[k].input.contains(&v))
                            .collect()
                    })
                    .unwrap_or_default();
                let [k] = next.as_slice() else { break };
                let m = &graph.node[*k];
                let layout_only = matches!(
                    m.op_type.as_deref(),
                    Some(
                        "Identity"
                            | "Dropout"
                            | "Flatten"
                            | "Reshape"
                            | "Squeeze"
                            | "Unsqueeze"
                            | "Cast"
                    )
                );
                if !layout_only
                    || m.input.first() != Some(&v)
                    || self.consumers.get(&v) != Some(&1)
                    || steps > 64
                {
                    break;
                }
                v = m.output.first().cloned().unwrap_or_default();
                steps += 1;
            }
        }
        Ok(order)
    }

    // ---- value access -------------------------------------------------

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
        let d = self.dyn_any(n, k)?;
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
        let d = self.dyn_any(n, k)?;
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
        })
    }

    /// Emits a one-input node and returns its output value.
    fn unary_node(
        &mut self,
        n: &NodeProto,
        idx: usize,
        op: &str,
        x: &Dyn,
        nonneg: bool,
        f: impl FnOnce(&mut NodeSpec),
    ) -> R<Vec<Val>> {
        let mut spec = NodeSpec::new("", op, &[&x.src]);
        f(&mut spec);
        let (name, _) = self.emit(n, idx, spec);
        let mut d = Self::out_dyn(name, x.dims.clone())?;
        d.adv = x.adv;
        d.nonneg = nonneg;
        Ok(vec![Val::Dyn(d)])
    }

    /// Emits `x * scale[c] + shift[c]` as a batch_norm with mean 0, variance 1
    /// and eps 0 (exact, and folded into a preceding convolution at load time).
    fn affine(
        &mut self,
        n: &NodeProto,
        idx: usize,
        x: &Dyn,
        scale: Vec<f32>,
        shift: Vec<f32>,
    ) -> R<Vec<Val>> {
        let c = x.adv[0];
        let expand = |v: Vec<f32>| if v.len() == 1 { vec![v[0]; c] } else { v };
        let (scale, shift) = (expand(scale), expand(shift));
        if scale.len() != c || shift.len() != c {
            return invalid("per-channel constant does not match the channel count");
        }
        if scale.iter().chain(&shift).any(|v| !v.is_finite()) {
            return unsup("the constant makes a non-finite scale or shift");
        }
        let base = self.label(n, idx);
        let w = self.new_tensor(&format!("{base}.weight"), vec![c], scale);
        let b = self.new_tensor(&format!("{base}.bias"), vec![c], shift);
        let m = self.new_tensor(&format!("{base}.running_mean"), vec![c], vec![0.0; c]);
        let v = self.new_tensor(&format!("{base}.running_var"), vec![c], vec![1.0; c]);
        let mut spec = NodeSpec::new("", "batch_norm", &[&x.src]);
        spec.weight = Some(w);
        spec.bias = Some(b);
        spec.running_mean = Some(m);
        spec.running_var = Some(v);
        spec.eps = Some(0.0);
        let (name, _) = self.emit(n, idx, spec);
        let mut d = Self::out_dyn(name, x.dims.clone())?;
        d.adv = x.adv;
        Ok(vec![Val::Dyn(d)])
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
        for name in n.input.iter().filter(|s| !s.is_empty()) {
            match self.get(name)? {
                Val::Poison => return Err(Fail::Poisoned),
                Val::Dyn(_) => any_dyn = true,
                Val::Const(_) => {}
            }
        }
        if !any_dyn {
            return self.fold(n).map(|c| vec![Val::Const(Rc::new(c))]);
        }
        match op {
            "Conv" => self.conv(n, idx),
            "BatchNormalization" => self.batch_norm(n, idx),
            "Gemm" => self.gemm(n, idx),
            "MatMul" => self.matmul(n, idx),
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

    /// Evaluates a node whose inputs are all constants.
    fn fold(&self, n: &NodeProto) -> R<Const> {
        let op = n.op_type.as_deref().unwrap_or("");
        let c = |k: usize| self.const_in(n, k, "input");
        let cv = |k: usize| -> R<Const> { Ok((*self.const_in(n, k, "input")?).clone()) };
        let r = match op {
            "Constant" => return self.constant(n),
            "Identity" | "Dropout" => return Ok(strip(&cv(0)?)),
            "Cast" => t::cast(&cv(0)?, attr_i(n, "to", 1)),
            "Shape" => {
                let x = c(0)?;
                let dims: Vec<i64> = x.dims.iter().map(|&d| d as i64).collect();
                let r = dims.len() as i64;
                let fix = |v: i64| (if v < 0 { v + r } else { v }).clamp(0, r) as usize;
                let (s, e) = (fix(attr_i(n, "start", 0)), fix(attr_i(n, "end", r)));
                let v = if s < e { dims[s..e].to_vec() } else { Vec::new() };
                Ok(Const::i64(vec![v.len()], v))
            }
            "Size" => Ok(Const::i64(vec![], vec![c(0)?.len() as i64])),
            "Gather" => t::gather(&cv(0)?, &cv(1)?, attr_i(n, "axis", 0)),
            "Unsqueeze" | "Squeeze" => {
                let x = c(0)?;
                let axes = self.ints_attr_or_input(n, "axes", 1)?.unwrap_or_default();
                let dims = if op == "Squeeze" {
                    t::squeeze_dims(&x.dims, &axes)
                } else {
                    t::unsqueeze_dims(&x.dims, &axes)
                };
                dims.and_then(|d| t::reshape(&x, d))
            }
            "Concat" => {
                let parts: Vec<Rc<Const>> = (0..n.input.len())
                    .filter(|&k| Self::inp(n, k).is_some())
                    .map(c)
                    .collect::<R<_>>()?;
                let refs: Vec<&Const> = parts.iter().map(|p| p.as_ref()).collect();
                let axis = attr(n, "axis")
                    .and_then(|a| a.i)
                    .ok_or_else(|| Fail::Invalid("Concat needs `axis`".into()))?;
                t::concat(&refs, axis)
            }
            "Reshape" => {
                let x = c(0)?;
                let target = c(1)?.to_i64()?;
                t::reshape_target(&x.dims, &target, attr_i(n, "allowzero", 0) != 0)
                    .and_then(|d| t::reshape(&x, d))
            }
            "Flatten" => {
                let x = c(0)?;
                let a = t::norm_axis(attr_i(n, "axis", 1), x.dims.len() + 1)?;
                let d = vec![
                    numel(&x.dims[..a]).unwrap_or(0),
                    numel(&x.dims[a..]).unwrap_or(0),
                ];
                t::reshape(&x, d)
            }
            "Slice" => {
                let x = cv(0)?;
                let (starts, ends, axes, steps) = self.slice_args(n)?;
                t::slice(&x, &starts, &ends, axes.as_deref(), steps.as_deref())
            }
            "GatherND" => {
                if attr_i(n, "batch_dims", 0) != 0 {
                    return unsup("GatherND with batch_dims != 0 is not supported");
                }
                t::gather_nd(&cv(0)?, &cv(1)?)
            }
            "ReduceMean" => {
                let x = cv(0)?;
                let r = x.dims.len();
                let axes = match self.ints_attr_or_input(n, "axes", 1)? {
                    Some(a) if !a.is_empty() => a
                        .iter()
                        .map(|&v| t::norm_axis(v, r))
                        .collect::<Result<Vec<_>, _>>()?,
                    _ => (0..r).collect(),
                };
                let (dims, groups) = t::reduce_groups(&x.dims, &axes, attr_i(n, "keepdims", 1) != 0)?;
                let v = x.to_f64();
                Ok(Const::f32(
                    dims,
                    groups
                        .iter()
                        .map(|g| (g.iter().map(|&i| v[i]).sum::<f64>() / g.len().max(1) as f64) as f32)
                        .collect(),
                ))
            }
            "Transpose" => t::transpose(&cv(0)?, attr_ints(n, "perm").as_deref()),
            "Add" | "Sub" | "Mul" | "Div" => t::binary(op, &cv(0)?, &cv(1)?),
            "Neg" | "Sqrt" | "Reciprocal" | "Floor" | "Ceil" => t::unary(op, &cv(0)?),
            "ConstantOfShape" => {
                let shape = c(0)?.to_i64()?;
                let value = match attr(n, "value").and_then(|a| a.t.as_ref()) {
                    Some(tp) => Some(
                        t::decode_tensor(tp, &mut ExternalData::new(self.path))
                            .map_err(Fail::Invalid)?,
                    ),
                    None => None,
                };
                t::constant_of_shape(&shape, value.as_ref())
            }
            "Expand" => t::expand(&cv(0)?, &c(1)?.to_i64()?),
            _ => {
                return unsup(format!(
                    "{op} on constant inputs is not supported (advex evaluates only shape arithmetic and simple element-wise ops on constants)"
                ))
            }
        };
        r.map_err(Fail::Invalid)
    }

    fn constant(&self, n: &NodeProto) -> R<Const> {
        if let Some(tp) = attr(n, "value").and_then(|a| a.t.as_ref()) {
            return t::decode_tensor(tp, &mut ExternalData::new(self.path)).map_err(Fail::Invalid);
        }
        if let Some(a) = attr(n, "value_float") {
            return Ok(Const::f32(vec![], vec![a.f.unwrap_or(0.0)]));
        }
        if let Some(a) = attr(n, "value_floats") {
            return Ok(Const::f32(vec![a.floats.len()], a.floats.clone()));
        }
        if let Some(a) = attr(n, "value_int") {
            return Ok(Const::i64(vec![], vec![a.i.unwrap_or(0)]));
        }
        if let Some(a) = attr(n, "value_ints") {
            return Ok(Const::i64(vec![a.ints.len()], a.ints.clone()));
        }
        if attr(n, "sparse_value").is_some() {
            return unsup("sparse constants are not supported");
        }
        if attr(n, "value_string").is_some() || attr(n, "value_strings").is_some() {
            return unsup("string constants are not supported");
        }
        invalid("Constant has no value attribute")
    }

    /// A reshape-like op on a run-time value: nothing, or a flatten.
    fn relayout(&mut self, n: &NodeProto, idx: usize, x: &Dyn, dims: Vec<usize>) -> R<Vec<Val>> {
        if x.map.is_some() {
            let mut d = x.clone();
            d.dims = dims;
            return Ok(vec![Val::Dyn(simplify(d))]);
        }
        let Some(adv) = adv_of(&dims) else {
            return unsup(format!(
                "reshaping {} to {} moves the batch dimension",
                fmt_dims(&x.dims),
                fmt_dims(&dims)
            ));
        };
        if adv == x.adv {
            let mut d = x.clone();
            d.dims = dims;
            return Ok(vec![Val::Dyn(d)]);
        }
        if adv[1] == 1 && adv[2] == 1 && Some(adv[0]) == numel(&x.adv) {
            let (name, _) = self.emit(n, idx, NodeSpec::new("", "flatten", &[&x.src]));
            let mut d = Self::out_dyn(name, dims)?;
            d.nonneg = x.nonneg;
            return Ok(vec![Val::Dyn(d)]);
        }
        unsup(format!(
            "reshaping {} to {} (advex can only flatten to [N, K] or keep the layout)",
            fmt_dims(&x.dims),
            fmt_dims(&dims)
        ))
    }

    /// Resolves `pads`/`auto_pad` to `[top, left, bottom, right]` for a window
    /// on an input of `hw` (after pending padding).
    fn window_pads(
        n: &NodeProto,
        hw: [usize; 2],
        kernel: [u32; 2],
        stride: [u32; 2],
        dilation: [u32; 2],
    ) -> R<[u32; 4]> {
        let auto = attr_s(n, "auto_pad").unwrap_or_default();
        match auto.as_str() {
            "" | "NOTSET" => match attr_ints(n, "pads") {
                None => Ok([0; 4]),
                Some(p) if p.len() == 4 => {
                    let mut out = [0u32; 4];
                    for (o, &v) in out.iter_mut().zip(&p) {
                        *o = u32::try_from(v).map_err(|_| {
                            Fail::Unsupported(format!(
                                "pads {} (negative or huge padding is not supported)",
                                fmt_dims(&p)
                            ))
                        })?;
                    }
                    Ok(out)
                }
                Some(p) => invalid(format!("pads {} should have 4 values", fmt_dims(&p))),
            },
            "VALID" => Ok([0; 4]),
            "SAME_UPPER" | "SAME_LOWER" => {
                let mut out = [0u32; 4];
                for k in 0..2 {
                    let i = hw[k] as i128;
                    let s = stride[k] as i128;
                    let o = (i + s - 1) / s;
                    let span = (kernel[k] as i128 - 1) * dilation[k] as i128 + 1;
                    let total = ((o - 1) * s + span - i).max(0);
                    let small = total / 2;
                    let big = total - small;
                    let (b, e) = if auto == "SAME_UPPER" {
                        (small, big)
                    } else {
                        (big, small)
                    };
                    out[k] =
                        u32::try_from(b).map_err(|_| Fail::Invalid("padding too large".into()))?;
                    out[k + 2] =
                        u32::try_from(e).map_err(|_| Fail::Invalid("padding too large".into()))?;
                }
                Ok(out)
            }
            other => invalid(format!("unknown auto_pad `{other}`")),
        }
    }

    fn conv(&mut self, n: &NodeProto, idx: usize) -> R<Vec<Val>> {
        let x = self.dyn_padded(n, 0)?;
        let w = self.const_in(n, 1, "weights")?;
        let b = self.opt_const(n, 2, "bias")?;
        if x.dims.len() != 4 {
            return unsup(format!(
                "input of rank {} (only 2-D convolution on [N, C, H, W] is supported)",
                x.dims.len()
            ));
        }
        if w.dims.len() != 4 {
            return unsup(format!(
                "weights {} (only 2-D convolution is supported)",
                fmt_dims(&w.dims)
            ));
        }
        let kernel = [u32_of(w.dims[2], "kernel")?, u32_of(w.dims[3], "kernel")?];
        if let Some(k) = attr_ints(n, "kernel_shape") {
            if k != [kernel[0] as i64, kernel[1] as i64] {
                return invalid(format!(
                    "kernel_shape {} does not match weights {}",
                    fmt_dims(&k),
                    fmt_dims(&w.dims)
                ));
            }
        }
        let stride = hw_attr(n, "strides", Some([1, 1]))?;
        let dilation = hw_attr(n, "dilations", Some([1, 1]))?;
        let groups = attr_i(n, "group", 1);
        let groups = u32::try_from(groups)
            .ok()
            .filter(|&g| g >= 1)
            .ok_or_else(|| Fail::Invalid(format!("group {groups} must be positive")))?;
        let own = Self::window_pads(n, [x.dims[2], x.dims[3]], kernel, stride, dilation)?;
        let padding = add_pads(own, x.pad)?;
        let params = Conv2dParams {
            stride,
            padding,
            dilation,
            groups,
        };
        let wshape = [
            u32_of(w.dims[0], "output channels")?,
            u32_of(w.dims[1], "input channels")?,
            kernel[0],
            kernel[1],
        ];
        let out = params
            .out_shape(shape_of(x.adv)?, wshape)
            .map_err(|e| Fail::Invalid(format!("{e} (input {})", fmt_dims(&x.dims))))?;
        let base = self.label(n, idx);
        let wname = self.tensor_of(&w, &format!("{base}.weight"));
        let bname = match &b {
            Some(b) => {
                if b.len() != w.dims[0] {
                    return invalid(format!(
                        "bias {} does not match {} output channels",
                        fmt_dims(&b.dims),
                        w.dims[0]
                    ));
                }
                Some(self.tensor_of(b, &format!("{base}.bias")))
            }
            None => None,
        };
        let mut spec = NodeSpec::new("", "conv2d", &[&x.src]);
        spec.weight = Some(wname);
        spec.bias = bname;
        spec.stride = Some(Hw(stride));
        spec.padding = Some(Padding(padding));
        spec.dilation = Some(Hw(dilation));
        spec.groups = Some(groups);
        let (name, _) = self.emit(n, idx, spec);
        let dims = vec![1, out.c as usize, out.h as usize, out.w as usize];
        Ok(vec![Val::Dyn(Self::out_dyn(name, dims)?)])
    }

    fn batch_norm(&mut self, n: &NodeProto, idx: usize) -> R<Vec<Val>> {
        if attr_i(n, "training_mode", 0) != 0
            || n.output.iter().skip(1).any(|o| self.is_used(Some(o)))
        {
            return unsup(
                "training-mode BatchNormalization (running statistics outputs) is not supported",
            );
        }
        let x = self.dyn_in(n, 0)?;
        if !(x.dims.len() == 4 || x.dims.len() == 2) {
            return unsup(format!(
                "input of rank {} (only [N, C, H, W] and [N, C] are supported)",
                x.dims.len()
            ));
        }
        let c = x.adv[0];
        let mut ts = Vec::new();
        for (k, what) in [(1, "scale"), (2, "bias"), (3, "mean"), (4, "variance")] {
            let v = self.const_in(n, k, what)?;
            if v.len() != c {
                return invalid(format!(
                    "{what} {} does not match the input's {c} channels",
                    fmt_dims(&v.dims)
                ));
            }
            ts.push(v);
        }
        let base = self.label(n, idx);
        let mut names = Vec::new();
        for (v, role) in ts
            .iter()
            .zip(["weight", "bias", "running_mean", "running_var"])
        {
            let flat = if v.dims == [c] {
                (**v).clone()
            } else {
                Const {
                    dims: vec![c],
                    origin: None,
                    ..(**v).clone()
                }
            };
            names.push(self.tensor_of(&flat, &format!("{base}.{role}")));
        }
        let eps = f64_of(attr_f(n, "epsilon", 1e-5));
        let x2 = x.clone();
        self.unary_node(n, idx, "batch_norm", &x2, false, move |s| {
            s.weight = Some(names[0].clone());
            s.bias = Some(names[1].clone());
            s.running_mean = Some(names[2].clone());
            s.running_var = Some(names[3].clone());
            s.eps = Some(eps);
        })
    }

    /// A linear node from `x` ([1, K]) with weight `[out, K]`.
    fn linear(
        &mut self,
        n: &NodeProto,
        idx: usize,
        x: &Dyn,
        weight: String,
        bias: Option<String>,
        out: usize,
    ) -> R<Vec<Val>> {
        let mut spec = NodeSpec::new("", "linear", &[&x.src]);
        spec.weight = Some(weight);
        spec.bias = bias;
        let (name, i) = self.emit(n, idx, spec);
        let mut d = Self::out_dyn(name, vec![1, out])?;
        d.origin = Origin::Linear(i, n.output.first().cloned().unwrap_or_default());
        Ok(vec![Val::Dyn(d)])
    }

    fn gemm(&mut self, n: &NodeProto, idx: usize) -> R<Vec<Val>> {
        let x = self.dyn_in_any(n, 0)?;
        let b = self.const_in(n, 1, "weights")?;
        let c = self.opt_const(n, 2, "bias")?;
        if attr_i(n, "transA", 0) != 0 {
            return unsup("transA = 1 (the run-time input transposed) is not supported");
        }
        if x.dims.len() != 2 || b.dims.len() != 2 {
            return invalid(format!(
                "Gemm needs 2-D operands, got {} and {}",
                fmt_dims(&x.dims),
                fmt_dims(&b.dims)
            ));
        }
        let trans_b = attr_i(n, "transB", 0) != 0;
        let (alpha, beta) = (attr_f(n, "alpha", 1.0), attr_f(n, "beta", 1.0));
        let k = x.dims[1];
        let (bk, out) = if trans_b {
            (b.dims[1], b.dims[0])
        } else {
            (b.dims[0], b.dims[1])
        };
        if bk != k {
            return invalid(format!(
                "weights {} do not match the input {} (transB = {})",
                fmt_dims(&b.dims),
                fmt_dims(&x.dims),
                trans_b as u8
            ));
        }
        let base = self.label(n, idx);
        let bias = |this: &mut Self, c: Option<Rc<Const>>| -> R<Option<String>> {
            Ok(match c {
                None => None,
                Some(c) if beta == 1.0 && c.dims == [out] => {
                    Some(this.tensor_of(&c, &format!("{base}.bias")))
                }
                Some(c) => {
                    let v = t::expand_f32(&c, &[1, out])
                        .map_err(|m| Fail::Invalid(format!("bias: {m}")))?;
                    let data = v.iter().map(|v| v * beta).collect();
                    Some(this.new_tensor(&format!("{base}.bias"), vec![out], data))
                }
            })
        };
        if x.map.is_some() {
            let bt = if trans_b {
                strip(&b)
            } else {
                t::transpose(&b, None)?
            };
            let data: Vec<f32> = bt.to_f32().iter().map(|v| v * alpha).collect();
            let bname = bias(self, c)?;
            return self.mapped_linear(n, idx, &x, &data, out, bname);
        }
        let wname = if trans_b && alpha == 1.0 {
            self.tensor_of(&b, &format!("{base}.weight"))
        } else {
            let bt = if trans_b {
                strip(&b)
            } else {
                t::transpose(&b, None)?
            };
            let data = bt.to_f32().iter().map(|v| v * alpha).collect();
            self.new_tensor(&format!("{base}.weight"), vec![out, k], data)
        };
        let bname = bias(self, c)?;
        self.linear(n, idx, &x, wname, bname, out)
    }

    fn matmul(&mut self, n: &NodeProto, idx: usize) -> R<Vec<Val>> {
        let x = self.dyn_in_any(n, 0)?;
        let b = self.const_in(n, 1, "weights")?;
        if x.dims.len() != 2 || b.dims.len() != 2 {
            return unsup(format!(
                "MatMul of {} by {} (only [N, K] by constant [K, M] is supported)",
                fmt_dims(&x.dims),
                fmt_dims(&b.dims)
            ));
        }
        if b.dims[0] != x.dims[1] {
            return invalid(format!(
                "cannot multiply {} by {}",
                fmt_dims(&x.dims),
                fmt_dims(&b.dims)
            ));
        }
        let out = b.dims[1];
        let wt = t::transpose(&b, None)?;
        if x.map.is_some() {
            return self.mapped_linear(n, idx, &x, &wt.to_f32(), out, None);
        }
        let base = self.label(n, idx);
        let wname = self.new_tensor(&format!("{base}.weight"), vec![out, x.dims[1]], wt.to_f32());
        self.linear(n, idx, &x, wname, None, out)
    }

    fn clip(&mut self, n: &NodeProto, idx: usize) -> R<Vec<Val>> {
        let x = self.dyn_in(n, 0)?;
        let bound = |k: usize, a: &str, default: f32| -> R<f32> {
            if let Some(v) = attr(n, a).and_then(|a| a.f) {
                return Ok(v);
            }
            match self.opt_const(n, k, a)? {
                Some(c) => c
                    .scalar()
                    .map(|v| v as f32)
                    .ok_or_else(|| Fail::Invalid(format!("`{a}` must be a scalar"))),
                None => Ok(default),
            }
        };
        let lo = bound(1, "min", f32::NEG_INFINITY)?;
        let hi = bound(2, "max", f32::INFINITY)?;
        if lo == 0.0 && hi == 6.0 {
            return self.unary_node(n, idx, "relu6", &x, true, |_| {});
        }
        if lo == 0.0 && hi >= f32::MAX {
            return self.unary_node(n, idx, "relu", &x, true, |_| {});
        }
        if lo <= f32::MIN && hi >= f32::MAX {
            return Ok(vec![Val::Dyn(x)]);
        }
        unsup(format!(
            "Clip to [{lo}, {hi}] (only [0, 6] as ReLU6 and [0, inf) as ReLU are supported)"
        ))
    }

    /// The constant as one value per channel of `x` (length 1 or C), if it is
    /// constant over every other dimension and does not grow `x`.
    fn per_channel(x: &Dyn, c: &Const) -> Option<Vec<f32>> {
        let r = x.dims.len();
        if !(r == 2 || r == 4) || c.dims.len() > r {
            return None;
        }
        if t::broadcast_dims(&x.dims, &c.dims).ok()? != x.dims {
            return None;
        }
        let off = r - c.dims.len();
        for (j, &d) in c.dims.iter().enumerate() {
            if j + off != 1 && d != 1 {
                return None;
            }
        }
        Some(c.to_f32())
    }

    fn binary(&mut self, n: &NodeProto, idx: usize, op: &str) -> R<Vec<Val>> {
        let a_name = Self::inp(n, 0).unwrap_or("").to_string();
        let b_name = Self::inp(n, 1).unwrap_or("").to_string();
        let a = self.get(&a_name)?;
        let b = self.get(&b_name)?;
        match (a, b) {
            (Val::Dyn(_), Val::Dyn(_)) => {
                let x = self.dyn_in(n, 0)?;
                let y = self.dyn_in(n, 1)?;
                if op == "Mul" {
                    for (p, q, q_name) in [(&x, &y, &b_name), (&y, &x, &a_name)] {
                        let fused = match &q.origin {
                            Origin::Sigmoid(s) if *s == p.src => Some("silu"),
                            Origin::HardSigmoid(s, al, be)
                                if *s == p.src
                                    && (al - 1.0 / 6.0).abs() < 1e-6
                                    && (be - 0.5).abs() < 1e-6 =>
                            {
                                Some("hardswish")
                            }
                            _ => None,
                        };
                        if let Some(f) = fused {
                            if p.dims == q.dims && self.single_consumer(q_name) {
                                return self.unary_node(n, idx, f, p, false, |_| {});
                            }
                        }
                    }
                }
                if op == "Sub" || op == "Div" {
                    return unsup(format!("{op} of two run-time values is not supported"));
                }
                let dims = t::broadcast_dims(&x.dims, &y.dims)?;
                if x.dims.len() != y.dims.len() || !(dims.len() == 4 || dims.len() == 2) {
                    return unsup(format!(
                        "{op} of {} and {} (only same-rank [N, C, H, W] or [N, K] operands are supported)",
                        fmt_dims(&x.dims),
                        fmt_dims(&y.dims)
                    ));
                }
                let spec = NodeSpec::new(
                    "",
                    if op == "Add" { "add" } else { "mul" },
                    &[&x.src, &y.src],
                );
                let (name, _) = self.emit(n, idx, spec);
                let mut d = Self::out_dyn(name, dims)?;
                d.nonneg = x.nonneg && y.nonneg;
                Ok(vec![Val::Dyn(d)])
            }
            (Val::Dyn(_), Val::Const(c)) => {
                let x = self.dyn_in(n, 0)?;
                self.binary_const(n, idx, op, &x, &a_name, &c, false)
            }
            (Val::Const(c), Val::Dyn(_)) => {
                let x = self.dyn_in(n, 1)?;
                self.binary_const(n, idx, op, &x, &b_name, &c, true)
            }
            _ => Err(Fail::Poisoned),
        }
    }

    /// `x op c` (or `c op x` when `const_first`) as a per-channel affine.
    #[allow(clippy::too_many_arguments)]
    fn binary_const(
        &mut self,
        n: &NodeProto,
        idx: usize,
        op: &str,
        x: &Dyn,
        x_name: &str,
        c: &Const,
        const_first: bool,
    ) -> R<Vec<Val>> {
        let Some(v) = Self::per_channel(x, c) else {
            return unsup(format!(
                "{op} of {} with a constant of shape {} (only scalars and per-channel constants are supported)",
                fmt_dims(&x.dims),
                fmt_dims(&c.dims)
            ));
        };
        let ones = vec![1.0f32; v.len()];
        let zeros = vec![0.0f32; v.len()];
        let (scale, shift) = match (op, const_first) {
            ("Add", _) => (ones, v),
            ("Sub", false) => (ones, v.iter().map(|x| -x).collect()),
            ("Sub", true) => (vec![-1.0; v.len()], v),
            ("Mul", _) => (v, zeros),
            ("Div", false) => (v.iter().map(|x| 1.0 / x).collect(), zeros),
            _ => {
                return unsup(format!(
                    "{op} of a constant by a run-time value is not supported"
                ))
            }
        };
        // A bias after a linear node (MatMul + Add) joins the linear node.
        if let Origin::Linear(i, value) = &x.origin {
            let i = *i;
            if value == x_name
                && scale.iter().all(|&s| s == 1.0)
                && self.single_consumer(x_name)
                && i < self.nodes.len()
            {
                let out = x.adv[0];
                let add = if shift.len() == 1 {
                    vec![shift[0]; out]
                } else {
                    shift.clone()
                };
                let old = match self.nodes[i].bias.clone() {
                    Some(b) => self
                        .tensor_index
                        .get(&b)
                        .map(|&k| self.tensors[k].2.clone())
                        .unwrap_or_else(|| vec![0.0; out]),
                    None => vec![0.0; out],
                };
                if old.len() == out && add.len() == out {
                    let bias: Vec<f32> = old.iter().zip(&add).map(|(a, b)| a + b).collect();
                    let hint = format!("{}.bias", self.nodes[i].name);
                    let name = self.new_tensor(&hint, vec![out], bias);
                    self.nodes[i].bias = Some(name);
                    let mut d = x.clone();
                    d.origin = Origin::Other;
                    return Ok(vec![Val::Dyn(d)]);
                }
            }
        }
        self.affine(n, idx, x, scale, shift)
    }

    fn pool(&mut self, n: &NodeProto, idx: usize, is_max: bool) -> R<Vec<Val>> {
        if is_max && self.is_used(n.output.get(1)) {
            return unsup("its Indices output is used");
        }
        let x = self.dyn_padded(n, 0)?;
        if x.dims.len() != 4 {
            return unsup(format!(
                "input of rank {} (only 2-D pooling on [N, C, H, W] is supported)",
                x.dims.len()
            ));
        }
        let kernel = hw_attr(n, "kernel_shape", None)?;
        let stride = hw_attr(n, "strides", Some([1, 1]))?;
        let dilation = hw_attr(n, "dilations", Some([1, 1]))?;
        if !is_max && dilation != [1, 1] {
            return unsup("dilated AveragePool is not supported");
        }
        let own = Self::window_pads(n, [x.dims[2], x.dims[3]], kernel, stride, dilation)?;
        let ceil_mode = attr_i(n, "ceil_mode", 0) != 0;
        let mut count_include_pad = attr_i(n, "count_include_pad", 0) != 0;
        let folded = x.pad != [0; 4];
        if folded {
            if is_max && !x.nonneg {
                return unsup(
                    "zero padding before MaxPool folds only when its input is non-negative (after ReLU)",
                );
            }
            if !is_max && own != [0; 4] && !count_include_pad {
                return unsup(
                    "zero padding before an AveragePool that has its own padding and count_include_pad = 0",
                );
            }
            count_include_pad = true;
        }
        let padding = add_pads(own, x.pad)?;
        let params = Pool2dParams {
            kernel,
            stride,
            padding,
            dilation,
            ceil_mode,
            count_include_pad,
        };
        let out = params
            .out_shape(shape_of(x.adv)?)
            .map_err(|e| Fail::Invalid(format!("{e} (input {})", fmt_dims(&x.dims))))?;
        if folded {
            // The padded tensor pooled with the pool's own padding must give the
            // same windows (ceil_mode may differ at the edge).
            let padded = Shape::new(
                1,
                out.c,
                u32_of(x.dims[2], "height")?,
                u32_of(x.dims[3], "width")?,
            );
            let plain = Pool2dParams {
                padding: own,
                ..params
            };
            match plain.out_shape(padded) {
                Ok(s) if s == out => {}
                _ => {
                    return unsup(
                        "zero padding before this pooling changes its output size with ceil_mode; it cannot be folded",
                    )
                }
            }
        }
        let mut spec = NodeSpec::new("", if is_max { "max_pool" } else { "avg_pool" }, &[&x.src]);
        spec.kernel = Some(Hw(kernel));
        spec.stride = Some(Hw(stride));
        spec.padding = Some(Padding(padding));
        spec.ceil_mode = Some(ceil_mode);
        if is_max {
            spec.dilation = Some(Hw(dilation));
        } else {
            spec.count_include_pad = Some(count_include_pad);
        }
        let (name, _) = self.emit(n, idx, spec);
        let mut d = Self::out_dyn(
            name,
            vec![1, out.c as usize, out.h as usize, out.w as usize],
        )?;
        d.nonneg = x.nonneg;
        Ok(vec![Val::Dyn(d)])
    }

    fn global_pool(
        &mut self,
        n: &NodeProto,
        idx: usize,
        x: &Dyn,
        keep: bool,
        max: bool,
    ) -> R<Vec<Val>> {
        if x.dims.len() != 4 {
            return unsup(format!(
                "input of rank {} (only [N, C, H, W] is supported)",
                x.dims.len()
            ));
        }
        let spec = if max {
            let mut s = NodeSpec::new("", "max_pool", &[&x.src]);
            let k = [u32_of(x.adv[1], "height")?, u32_of(x.adv[2], "width")?];
            s.kernel = Some(Hw(k));
            s.stride = Some(Hw([1, 1]));
            s
        } else {
            NodeSpec::new("", "global_avg_pool", &[&x.src])
        };
        let (name, _) = self.emit(n, idx, spec);
        let c = x.adv[0];
        let dims = if keep { vec![1, c, 1, 1] } else { vec![1, c] };
        let mut d = Self::out_dyn(name, dims)?;
        d.nonneg = x.nonneg;
        Ok(vec![Val::Dyn(d)])
    }

    fn reduce_mean(&mut self, n: &NodeProto, idx: usize) -> R<Vec<Val>> {
        let x = self.dyn_in_any(n, 0)?;
        let axes = self.ints_attr_or_input(n, "axes", 1)?.unwrap_or_default();
        let keep = attr_i(n, "keepdims", 1) != 0;
        let r = x.dims.len();
        let mut norm: Vec<usize> = axes
            .iter()
            .map(|&a| t::norm_axis(a, r))
            .collect::<Result<_, _>>()?;
        norm.sort_unstable();
        norm.dedup();
        if norm.is_empty() {
            if attr_i(n, "noop_with_empty_axes", 0) != 0 {
                return Ok(vec![Val::Dyn(x)]);
            }
            norm = (0..r).collect();
        }
        if x.map.is_none() && r == 4 && norm == [2, 3] {
            return self.global_pool(n, idx, &x, keep, false);
        }
        // Any other mean is a constant linear map of the value.
        let (dims, groups) = t::reduce_groups(&x.dims, &norm, keep)?;
        let mut rows = Vec::with_capacity(groups.len());
        let mut entries = 0usize;
        for g in &groups {
            let w = 1.0 / g.len().max(1) as f64;
            let mut acc: HashMap<u32, f64> = HashMap::new();
            for &i in g {
                match &x.map {
                    Some(m) => {
                        for &(j, a) in m.get(i).map(Vec::as_slice).unwrap_or(&[]) {
                            *acc.entry(j).or_default() += a as f64 * w;
                        }
                    }
                    None => *acc.entry(i as u32).or_default() += w,
                }
            }
            let mut row: Vec<(u32, f32)> = acc.into_iter().map(|(j, a)| (j, a as f32)).collect();
            row.sort_unstable_by_key(|e| e.0);
            entries += row.len();
            if entries > MAX_MAP {
                return unsup("the ReduceMean is too large to fold into the next layer");
            }
            rows.push(row);
        }
        let mut d = x.clone();
        d.dims = dims;
        d.map = Some(Rc::new(rows));
        d.origin = Origin::Other;
        Ok(vec![Val::Dyn(simplify(d))])
    }

    /// Applies a selection (Transpose, Gather, ...) to a run-time value by
    /// running it on the element indices.
    fn rearrange(
        &mut self,
        n: &NodeProto,
        f: impl FnOnce(&Const) -> Result<Const, String>,
    ) -> R<Vec<Val>> {
        let x = self.dyn_in_any(n, 0)?;
        let count = numel(&x.dims)
            .filter(|&c| c <= MAX_MAP)
            .ok_or_else(|| Fail::Unsupported("the value is too large to rearrange".into()))?;
        let iota = Const::i64(x.dims.clone(), (0..count as i64).collect());
        let out = f(&iota)?;
        let Data::I64(pick) = &out.data else {
            return invalid("rearrangement lost the element indices");
        };
        let mut entries = 0usize;
        let mut rows = Vec::with_capacity(pick.len());
        for &p in pick {
            let row = match &x.map {
                Some(m) => m.get(p as usize).cloned().unwrap_or_default(),
                None => vec![(p as u32, 1.0)],
            };
            entries += row.len();
            if entries > MAX_MAP {
                return unsup("the value is too large to rearrange");
            }
            rows.push(row);
        }
        let mut d = x.clone();
        d.dims = out.dims;
        d.map = Some(Rc::new(rows));
        d.origin = Origin::Other;
        Ok(vec![Val::Dyn(simplify(d))])
    }

    /// Slice's starts, ends, axes and steps (attributes before opset 10).
    #[allow(clippy::type_complexity)]
    fn slice_args(
        &self,
        n: &NodeProto,
    ) -> R<(Vec<i64>, Vec<i64>, Option<Vec<i64>>, Option<Vec<i64>>)> {
        if self.opset < 10 {
            return Ok((
                attr_ints(n, "starts").unwrap_or_default(),
                attr_ints(n, "ends").unwrap_or_default(),
                attr_ints(n, "axes"),
                None,
            ));
        }
        let opt = |k| -> R<Option<Vec<i64>>> {
            match self.opt_const(n, k, "slice bounds")? {
                Some(v) => Ok(Some(v.to_i64()?)),
                None => Ok(None),
            }
        };
        Ok((
            opt(1)?.unwrap_or_default(),
            opt(2)?.unwrap_or_default(),
            opt(3)?,
            opt(4)?,
        ))
    }

    /// A linear layer on a rearranged value: the map is folded into the
    /// weights (`weight` is `[out, K]` row-major over the value's K elements)
    /// and the layer reads `src` (flattened if needed).
    fn mapped_linear(
        &mut self,
        n: &NodeProto,
        idx: usize,
        x: &Dyn,
        weight: &[f32],
        out: usize,
        bias: Option<String>,
    ) -> R<Vec<Val>> {
        let Some(map) = &x.map else {
            return invalid("internal: not a rearranged value");
        };
        let k = map.len();
        if x.dims.len() != 2 || x.dims[0] != 1 || weight.len() != out * k {
            return unsup(format!(
                "a rearranged value of shape {} feeding a linear layer (it must be [1, K])",
                fmt_dims(&x.dims)
            ));
        }
        let m = numel(&x.adv).unwrap_or(0);
        if out.checked_mul(m).is_none_or(|s| s > t::MAX_CONST_ELEMS) {
            return unsup("the folded linear layer is too large");
        }
        let mut w = Vec::with_capacity(out * m);
        let mut acc = vec![0f64; m];
        for o in 0..out {
            acc.iter_mut().for_each(|v| *v = 0.0);
            for (kk, row) in map.iter().enumerate() {
                let wk = weight[o * k + kk] as f64;
                for &(j, a) in row {
                    if let Some(v) = acc.get_mut(j as usize) {
                        *v += wk * a as f64;
                    }
                }
            }
            w.extend(acc.iter().map(|&v| v as f32));
        }
        let src = if x.adv[1] == 1 && x.adv[2] == 1 {
            x.src.clone()
        } else {
            let base = format!("{}/flatten", self.label(n, idx));
            let name = self.unique_node_name(&base);
            let mut spec = NodeSpec::new("", "flatten", &[&x.src]);
            spec.name = name.clone();
            self.nodes.push(spec);
            name
        };
        let base = self.label(n, idx);
        let wname = self.new_tensor(&format!("{base}.weight"), vec![out, m], w);
        let flat = Self::out_dyn(src, vec![1, m])?;
        self.linear(n, idx, &flat, wname, bias, out)
    }

    fn concat(&mut self, n: &NodeProto, idx: usize) -> R<Vec<Val>> {
        let mut parts = Vec::new();
        for k in 0..n.input.len() {
            if Self::inp(n, k).is_none() {
                continue;
            }
            match self.get(Self::inp(n, k).unwrap_or(""))? {
                Val::Const(_) => {
                    return unsup("concatenating constants with run-time values is not supported")
                }
                _ => parts.push(self.dyn_in(n, k)?),
            }
        }
        let first = parts
            .first()
            .cloned()
            .ok_or_else(|| Fail::Invalid("Concat has no inputs".into()))?;
        let r = first.dims.len();
        let axis = attr(n, "axis")
            .and_then(|a| a.i)
            .ok_or_else(|| Fail::Invalid("Concat needs `axis`".into()))?;
        let a = t::norm_axis(axis, r)?;
        if a != 1 || !(r == 2 || r == 4) {
            return unsup(format!(
                "Concat along axis {axis} of {} (only along channels is supported)",
                fmt_dims(&first.dims)
            ));
        }
        let mut dims = first.dims.clone();
        dims[1] = 0;
        for p in &parts {
            if p.dims.len() != r || (r == 4 && p.dims[2..] != first.dims[2..]) {
                return invalid(format!(
                    "cannot concatenate {} with {} along channels",
                    fmt_dims(&first.dims),
                    fmt_dims(&p.dims)
                ));
            }
            dims[1] += p.dims[1];
        }
        if parts.len() == 1 {
            return Ok(vec![Val::Dyn(first)]);
        }
        let srcs: Vec<&str> = parts.iter().map(|p| p.src.as_str()).collect();
        let mut spec = NodeSpec::new("", "concat", &srcs);
        spec.axis = Some(1);
        let (name, _) = self.emit(n, idx, spec);
        let mut d = Self::out_dyn(name, dims)?;
        d.nonneg = parts.iter().all(|p| p.nonneg);
        Ok(vec![Val::Dyn(d)])
    }

    fn pad(&mut self, n: &NodeProto) -> R<Vec<Val>> {
        let x = self.dyn_padded(n, 0)?;
        let mode = attr_s(n, "mode").unwrap_or_else(|| "constant".into());
        if mode != "constant" {
            return unsup(format!(
                "Pad mode `{mode}` (only constant zero padding is supported)"
            ));
        }
        let pads = self
            .ints_attr_or_input(n, "pads", 1)?
            .ok_or_else(|| Fail::Invalid("Pad needs pads".into()))?;
        let value = match attr(n, "value").and_then(|a| a.f) {
            Some(v) => v as f64,
            None => match self.opt_const(n, 2, "constant_value")? {
                Some(c) => c.scalar().unwrap_or(f64::NAN),
                None => 0.0,
            },
        };
        if value != 0.0 {
            return unsup(format!(
                "Pad with value {value} (only zero padding is supported)"
            ));
        }
        let r = x.dims.len();
        let axes: Vec<usize> = match self.opt_const(n, 3, "axes")? {
            Some(a) => a
                .to_i64()?
                .iter()
                .map(|&v| t::norm_axis(v, r))
                .collect::<Result<_, _>>()?,
            None => (0..r).collect(),
        };
        if pads.len() != 2 * axes.len() {
            return invalid(format!(
                "pads {} should have {} values",
                fmt_dims(&pads),
                2 * axes.len()
            ));
        }
        let mut begin = vec![0i64; r];
        let mut end = vec![0i64; r];
        for (k, &a) in axes.iter().enumerate() {
            begin[a] = pads[k];
            end[a] = pads[k + axes.len()];
        }
        if r != 4 || begin[..2].iter().chain(&end[..2]).any(|&p| p != 0) {
            return unsup(format!(
                "Pad {} of {} (only spatial padding of [N, C, H, W] is supported)",
                fmt_dims(&pads),
                fmt_dims(&x.dims)
            ));
        }
        if begin
            .iter()
            .chain(&end)
            .any(|&p| !(0..=1 << 16).contains(&p))
        {
            return unsup(format!(
                "Pad {} (negative padding, a crop, is not supported)",
                fmt_dims(&pads)
            ));
        }
        let add = [
            begin[2] as u32,
            begin[3] as u32,
            end[2] as u32,
            end[3] as u32,
        ];
        let mut d = x.clone();
        d.pad = add_pads(d.pad, add)?;
        d.dims[2] += (add[0] + add[2]) as usize;
        d.dims[3] += (add[1] + add[3]) as usize;
        d.origin = Origin::Other;
        Ok(vec![Val::Dyn(d)])
    }
}

/// A rearranged value whose map is the identity on `src`, in `src`'s layout,
/// is `src` itself.
fn simplify(mut d: Dyn) -> Dyn {
    let identity = d.map.as_ref().is_some_and(|m| {
        Some(m.len()) == numel(&d.adv)
            && m.iter()
                .enumerate()
                .all(|(i, r)| r.len() == 1 && r[0].0 as usize == i && r[0].1 == 1.0)
    });
    if identity && adv_of(&d.dims) == Some(d.adv) {
        d.map = None;
    }
    d
}

fn add_pads(a: [u32; 4], b: [u32; 4]) -> R<[u32; 4]> {
    let mut out = [0u32; 4];
    for k in 0..4 {
        out[k] = a[k]
            .checked_add(b[k])
            .ok_or_else(|| Fail::Invalid("padding too large".into()))?;
    }
    Ok(out)
}

/// A copy without the initializer name (its data is about to be changed or
/// reinterpreted).
fn strip(c: &Const) -> Const {
    Const {
        origin: None,
        ..c.clone()
    }
}

/// Ops the importer evaluates only on constants, besides [`super::SUPPORTED_OPS`].
const CONSTANT_ONLY: &[&str] = &[
    "Constant",
    "ConstantOfShape",
    "Shape",
    "Size",
    "Neg",
    "Sqrt",
    "Reciprocal",
    "Floor",
    "Ceil",
];
