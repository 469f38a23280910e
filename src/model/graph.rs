//! From a parsed description and container to a [`Model`]: name resolution,
//! topological sort, per-op validation and shape inference, tensor loading, and
//! the inference rewrites (identity removal, BatchNorm folding, normalisation).

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use super::container::{fmt_dims, tensor_to_f32, Container, RawTensor, METADATA_KEY};
use super::spec::{parse_spec, ModelSpec, NodeSpec, INTERPOLATIONS};
use super::{Model, ModelError, Node, Op, Preprocess, Src, Weight};
use crate::gpu::Shape;
use crate::ops::activation::Activation;
use crate::ops::params::{Conv2dParams, Pool2dParams};

/// Largest number of elements per item in any value of the graph (1 GiB of f32).
const MAX_ITEM: u64 = 1 << 28;
/// Largest number of input channels.
const MAX_INPUT_CHANNELS: u32 = 1024;
/// Largest kernel, stride, dilation or padding of a window.
const MAX_WINDOW: u32 = 1 << 16;

/// Elements per item, without overflow.
fn item(s: Shape) -> u128 {
    s.c as u128 * s.h as u128 * s.w as u128
}

/// Every op the format knows.
pub(crate) const OPS: [&str; 21] = [
    "conv2d",
    "batch_norm",
    "linear",
    "relu",
    "relu6",
    "leaky_relu",
    "sigmoid",
    "silu",
    "hardswish",
    "hardsigmoid",
    "max_pool",
    "avg_pool",
    "global_avg_pool",
    "add",
    "mul",
    "concat",
    "flatten",
    "dropout",
    "identity",
    "normalize",
    "softmax",
];

pub(crate) fn build(
    file: &Path,
    container: &Container,
    sidecar: Option<&str>,
) -> Result<Model, ModelError> {
    let (spec, desc) = match container.metadata.get(METADATA_KEY) {
        Some(json) => (
            parse_spec(json, file, "header `__metadata__.advex`")?,
            file.to_path_buf(),
        ),
        None => {
            let side = file.with_extension("json");
            match sidecar {
                Some(json) => (parse_spec(json, &side, "sidecar JSON")?, side),
                None => {
                    return Err(ModelError::new(
                        file,
                        format!(
                            "no model description: the header's __metadata__ has no `{METADATA_KEY}` key and there is no sidecar {}; export the model with its description, or write that sidecar JSON",
                            side.display()
                        ),
                    ))
                }
            }
        }
    };
    Builder {
        file,
        desc,
        tensors: container,
    }
    .build(spec)
}

/// A node before the rewrites.
enum IrOp {
    Final(Op),
    /// dropout, identity: removed.
    Identity,
    /// batch_norm as `x * scale + shift`, in f64 until folded or converted.
    Bn {
        scale: Vec<f64>,
        shift: Vec<f64>,
    },
}

struct IrNode {
    name: String,
    op: IrOp,
    inputs: Vec<Src>,
    shape: Shape,
}

struct Builder<'a, 'b> {
    /// The safetensors file (tensor errors).
    file: &'a Path,
    /// The file the description came from (description errors).
    desc: PathBuf,
    tensors: &'a Container<'b>,
}

fn shape_message(e: crate::Error) -> String {
    match e {
        crate::Error::Shape { message, .. } => message,
        other => other.to_string(),
    }
}

fn chw(s: Shape) -> String {
    format!("[{}, {}, {}]", s.c, s.h, s.w)
}

impl Builder<'_, '_> {
    fn err(&self, node: &str, msg: impl Into<String>) -> ModelError {
        ModelError::new(&self.desc, msg).node(node)
    }

    fn top_err(&self, msg: impl Into<String>) -> ModelError {
        ModelError::new(&self.desc, msg)
    }

    fn terr(&self, node: &str, tensor: &str, msg: impl Into<String>) -> ModelError {
        ModelError::new(self.file, msg).node(node).tensor(tensor)
    }

    fn build(&self, spec: ModelSpec) -> Result<Model, ModelError> {
        let name = spec.name.clone().unwrap_or_else(|| {
            self.file
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default()
        });
        let [c, h, w] = spec.input;
        let input_shape = Shape::new(1, c, h, w);
        if c == 0 || h == 0 || w == 0 {
            return Err(self.top_err(format!(
                "input {} has a zero dimension; it must be [C, H, W] without the batch",
                fmt_dims(&spec.input)
            )));
        }
        if item(input_shape) > MAX_ITEM as u128 || c > MAX_INPUT_CHANNELS {
            return Err(self.top_err(format!(
                "input {} is too large (at most {MAX_INPUT_CHANNELS} channels and {MAX_ITEM} elements per image)",
                fmt_dims(&spec.input),
            )));
        }
        let (preprocess, normalize) = self.preprocess(&spec)?;
        if spec.nodes.is_empty() {
            return Err(self.top_err("the graph has no nodes"));
        }

        // Names and inputs.
        let mut by_name: HashMap<&str, usize> = HashMap::new();
        for (i, n) in spec.nodes.iter().enumerate() {
            if n.name.is_empty() {
                return Err(self.top_err(format!("node #{i} (op {}) has an empty name", n.op)));
            }
            if n.name == "input" {
                return Err(self.err(
                    &n.name,
                    "the name `input` is reserved for the graph input; rename the node",
                ));
            }
            if let Some(j) = by_name.insert(&n.name, i) {
                return Err(self.err(
                    &n.name,
                    format!("duplicate node name (nodes #{j} and #{i}); node names must be unique"),
                ));
            }
        }
        let mut inputs: Vec<Vec<Option<usize>>> = Vec::with_capacity(spec.nodes.len());
        for n in &spec.nodes {
            let mut v = Vec::with_capacity(n.inputs.len());
            for inp in &n.inputs {
                if inp == "input" {
                    v.push(None);
                } else if let Some(&j) = by_name.get(inp.as_str()) {
                    v.push(Some(j));
                } else {
                    return Err(self.err(
                        &n.name,
                        format!(
                            "input `{inp}` is not the graph input (`input`) nor the name of any node"
                        ),
                    ));
                }
            }
            inputs.push(v);
        }
        let order = self.topo_order(&spec.nodes, &inputs)?;

        // Per-node validation and shape inference, in topological order.
        let mut ir: Vec<IrNode> = Vec::with_capacity(spec.nodes.len() + 1);
        let input_src = if let Some((scale, shift)) = normalize {
            let taken = by_name.contains_key("normalize");
            ir.push(IrNode {
                name: if taken {
                    "preprocess.normalize".into()
                } else {
                    "normalize".into()
                },
                op: IrOp::Final(Op::Affine { scale, shift }),
                inputs: vec![Src::Input],
                shape: input_shape,
            });
            Src::Node(0)
        } else {
            Src::Input
        };
        let mut pos = vec![usize::MAX; spec.nodes.len()];
        for &i in &order {
            let srcs: Vec<Src> = inputs[i]
                .iter()
                .map(|s| match s {
                    None => input_src,
                    Some(j) => Src::Node(pos[*j]),
                })
                .collect();
            let shapes: Vec<Shape> = srcs
                .iter()
                .map(|s| match s {
                    Src::Input => input_shape,
                    Src::Node(k) => ir[*k].shape,
                })
                .collect();
            let node = self.node(&spec.nodes[i], srcs, &shapes)?;
            pos[i] = ir.len();
            ir.push(node);
        }

        // Output and classes.
        let out_listed = match &spec.output {
            None => spec.nodes.len() - 1,
            Some(o) => match by_name.get(o.as_str()) {
                Some(&j) => j,
                None => {
                    return Err(self.top_err(format!("output `{o}` is not the name of any node")))
                }
            },
        };
        let out_ir = pos[out_listed];
        let out_shape = ir[out_ir].shape;
        if let Some(classes) = &spec.classes {
            if classes.len() as u64 != out_shape.item() {
                return Err(self.top_err(format!(
                    "`classes` has {} names but the output `{}` has {} values per image ({})",
                    classes.len(),
                    spec.nodes[out_listed].name,
                    out_shape.item(),
                    chw(out_shape)
                )));
            }
        }

        let (nodes, output) = self.rewrite(ir, out_ir)?;
        Ok(Model {
            path: self.file.to_path_buf(),
            name,
            input: spec.input,
            preprocess,
            classes: spec.classes,
            nodes,
            output,
        })
    }

    /// Validates `preprocess`; returns it with per-channel mean/std, and the
    /// normalisation affine when mean/std are not the identity.
    #[allow(clippy::type_complexity)]
    fn preprocess(
        &self,
        spec: &ModelSpec,
    ) -> Result<(Preprocess, Option<(Vec<f32>, Vec<f32>)>), ModelError> {
        let p = spec.preprocess.clone().unwrap_or_default();
        let [c, h, w] = spec.input;
        let per_channel =
            |field: &str, vals: &Option<Vec<f64>>, default: f64| -> Result<Vec<f64>, ModelError> {
                let v = match vals {
                    None => vec![default; c as usize],
                    Some(v) if v.len() == 1 => vec![v[0]; c as usize],
                    Some(v) if v.len() == c as usize => v.clone(),
                    Some(v) => {
                        return Err(self.top_err(format!(
                            "preprocess.{field} has {} values but the input has {c} channels",
                            v.len()
                        )))
                    }
                };
                if let Some(i) = v.iter().position(|x| !x.is_finite() || x.abs() > 1e30) {
                    return Err(self.top_err(format!(
                        "preprocess.{field}[{i}] = {} is not a usable number",
                        v[i]
                    )));
                }
                Ok(v)
            };
        let mean = per_channel("mean", &p.mean, 0.0)?;
        let std = per_channel("std", &p.std, 1.0)?;
        if let Some(i) = std.iter().position(|&s| s.abs() < 1e-30) {
            return Err(self.top_err(format!("preprocess.std[{i}] is zero")));
        }
        if p.resize == Some(0) || p.crop == Some(0) {
            return Err(self.top_err("preprocess.resize and preprocess.crop must be at least 1"));
        }
        if let Some(crop) = p.crop {
            if crop != h || crop != w {
                return Err(self.top_err(format!(
                    "preprocess.crop {crop} does not match the input size {h}x{w}"
                )));
            }
            if let Some(r) = p.resize {
                if r < crop {
                    return Err(self.top_err(format!(
                        "preprocess.resize {r} is smaller than preprocess.crop {crop}"
                    )));
                }
            }
        }
        let interpolation = p.interpolation.unwrap_or_else(|| "bilinear".into());
        if !INTERPOLATIONS.contains(&interpolation.as_str()) {
            return Err(self.top_err(format!(
                "preprocess.interpolation `{interpolation}` is not one of {}",
                INTERPOLATIONS.join(", ")
            )));
        }
        let identity = mean.iter().all(|&m| m == 0.0) && std.iter().all(|&s| s == 1.0);
        let normalize = if identity {
            None
        } else {
            Some((
                std.iter().map(|&s| (1.0 / s) as f32).collect(),
                mean.iter()
                    .zip(&std)
                    .map(|(&m, &s)| (-m / s) as f32)
                    .collect(),
            ))
        };
        Ok((
            Preprocess {
                resize: p.resize,
                crop: p.crop,
                interpolation,
                mean: mean.iter().map(|&m| m as f32).collect(),
                std: std.iter().map(|&s| s as f32).collect(),
            },
            normalize,
        ))
    }

    /// Kahn's algorithm, keeping the listed order among ready nodes. A cycle is
    /// reported with the nodes in it.
    fn topo_order(
        &self,
        nodes: &[NodeSpec],
        inputs: &[Vec<Option<usize>>],
    ) -> Result<Vec<usize>, ModelError> {
        let n = nodes.len();
        let mut indeg = vec![0usize; n];
        let mut users: Vec<Vec<usize>> = vec![Vec::new(); n];
        for (i, ins) in inputs.iter().enumerate() {
            for &j in ins.iter().flatten() {
                indeg[i] += 1;
                users[j].push(i);
            }
        }
        let mut ready: BTreeSet<usize> = (0..n).filter(|&i| indeg[i] == 0).collect();
        let mut order = Vec::with_capacity(n);
        let mut done = vec![false; n];
        while let Some(i) = ready.pop_first() {
            order.push(i);
            done[i] = true;
            for &u in &users[i] {
                indeg[u] -= 1;
                if indeg[u] == 0 {
                    ready.insert(u);
                }
            }
        }
        if order.len() == n {
            return Ok(order);
        }
        // Every unfinished node has an unfinished predecessor: walk back until a
        // node repeats.
        let start = done.iter().position(|d| !d).unwrap_or(0);
        let mut seen_at: Vec<Option<usize>> = vec![None; n];
        let mut path = Vec::new();
        let mut cur = start;
        let cycle = loop {
            if let Some(p) = seen_at[cur] {
                break path[p..].to_vec();
            }
            seen_at[cur] = Some(path.len());
            path.push(cur);
            match inputs[cur].iter().flatten().find(|&&j| !done[j]) {
                Some(&j) => cur = j,
                None => break path.clone(),
            }
        };
        // Data-flow order, starting from the node listed first.
        let mut cycle: Vec<usize> = cycle.into_iter().rev().collect();
        if let Some(k) = (0..cycle.len()).min_by_key(|&k| cycle[k]) {
            cycle.rotate_left(k);
        }
        let mut names: Vec<&str> = cycle.iter().map(|&i| nodes[i].name.as_str()).collect();
        let first = names.first().copied().unwrap_or("");
        names.push(first);
        Err(self.err(
            first,
            format!(
                "the graph has a cycle: {} (a node cannot depend on its own output)",
                names.join(" -> ")
            ),
        ))
    }

    fn raw(&self, node: &str, tensor: &str) -> Result<&RawTensor<'_>, ModelError> {
        self.tensors.tensors.get(tensor).ok_or_else(|| {
            self.terr(
                node,
                tensor,
                "tensor not found in the file (names must match the PyTorch state_dict)",
            )
        })
    }

    /// Checks a tensor's shape against `expected` (`None` = any size).
    fn expect_shape(
        &self,
        node: &str,
        tensor: &str,
        raw: &RawTensor,
        expected: &[Option<usize>],
        meaning: &str,
    ) -> Result<(), ModelError> {
        let ok = raw.shape.len() == expected.len()
            && raw
                .shape
                .iter()
                .zip(expected)
                .all(|(&g, e)| e.is_none_or(|e| e == g));
        if ok {
            return Ok(());
        }
        let want: Vec<String> = expected
            .iter()
            .map(|e| e.map_or("*".to_string(), |e| e.to_string()))
            .collect();
        Err(self.terr(
            node,
            tensor,
            format!(
                "wrong shape: expected [{}] ({meaning}), got {}",
                want.join(", "),
                fmt_dims(&raw.shape)
            ),
        ))
    }

    fn vector(&self, node: &str, tensor: &str, len: u32) -> Result<Vec<f32>, ModelError> {
        let raw = self.raw(node, tensor)?;
        self.expect_shape(
            node,
            tensor,
            raw,
            &[Some(len as usize)],
            "one value per channel",
        )?;
        tensor_to_f32(self.file, node, tensor, raw)
    }

    fn node(&self, n: &NodeSpec, inputs: Vec<Src>, shapes: &[Shape]) -> Result<IrNode, ModelError> {
        let name = n.name.as_str();
        let allowed: &[&str] = match n.op.as_str() {
            "conv2d" => &["weight", "bias", "stride", "padding", "dilation", "groups"],
            "batch_norm" => &["weight", "bias", "running_mean", "running_var", "eps"],
            "linear" => &["weight", "bias"],
            "relu" | "relu6" | "sigmoid" | "silu" | "hardswish" | "global_avg_pool" | "add"
            | "mul" | "flatten" | "identity" => &[],
            "leaky_relu" => &["negative_slope"],
            "hardsigmoid" => &["alpha", "beta"],
            "max_pool" => &["kernel", "stride", "padding", "dilation", "ceil_mode"],
            "avg_pool" => &[
                "kernel",
                "stride",
                "padding",
                "ceil_mode",
                "count_include_pad",
            ],
            "concat" | "softmax" => &["axis"],
            "dropout" => &["p"],
            "normalize" => &["mean", "std"],
            other => {
                return Err(self.err(
                    name,
                    format!("unknown op `{other}`; known ops: {}", OPS.join(", ")),
                ))
            }
        };
        for a in n.attributes_set() {
            if !allowed.contains(&a) {
                return Err(self.err(
                    name,
                    format!(
                        "attribute `{a}` does not apply to op {} (it takes: {})",
                        n.op,
                        if allowed.is_empty() {
                            "none".to_string()
                        } else {
                            allowed.join(", ")
                        }
                    ),
                ));
            }
        }
        let (lo, hi) = match n.op.as_str() {
            "add" | "mul" => (2, 2),
            "concat" => (2, usize::MAX),
            _ => (1, 1),
        };
        if inputs.len() < lo || inputs.len() > hi {
            let want = match (lo, hi) {
                (2, 2) => "exactly 2 inputs".to_string(),
                (2, _) => "at least 2 inputs".to_string(),
                _ => "exactly 1 input".to_string(),
            };
            return Err(self.err(
                name,
                format!("op {} takes {want}, got {}", n.op, inputs.len()),
            ));
        }
        let x = shapes[0];
        let final_op = |op: Op, shape: Shape| (IrOp::Final(op), shape);
        let act = |a: Activation| final_op(Op::Activation(a), x);
        let finite = |field: &str, v: f64| -> Result<f32, ModelError> {
            if v.is_finite() && v.abs() < 1e30 {
                Ok(v as f32)
            } else {
                Err(self.err(name, format!("`{field}` = {v} is not a usable number")))
            }
        };
        let (op, shape) = match n.op.as_str() {
            "conv2d" => self.conv2d(n, x)?,
            "linear" => self.linear(n, x)?,
            "batch_norm" => self.batch_norm(n, x)?,
            "relu" => act(Activation::Relu),
            "relu6" => act(Activation::Relu6),
            "sigmoid" => act(Activation::Sigmoid),
            "silu" => act(Activation::Silu),
            "hardswish" => act(Activation::Hardswish),
            "leaky_relu" => act(Activation::LeakyRelu {
                negative_slope: finite("negative_slope", n.negative_slope.unwrap_or(0.01))?,
            }),
            "hardsigmoid" => act(Activation::Hardsigmoid {
                alpha: finite("alpha", n.alpha.unwrap_or(1.0 / 6.0))?,
                beta: finite("beta", n.beta.unwrap_or(0.5))?,
            }),
            "max_pool" | "avg_pool" => self.pool(n, x)?,
            "global_avg_pool" => final_op(Op::GlobalAvgPool, Shape::new(1, x.c, 1, 1)),
            "add" | "mul" => {
                let y = shapes[1];
                let mut out = [0u32; 3];
                let dims = [
                    ("channels", x.c, y.c),
                    ("height", x.h, y.h),
                    ("width", x.w, y.w),
                ];
                for (k, (what, a, b)) in dims.into_iter().enumerate() {
                    out[k] = if a == b || b == 1 {
                        a
                    } else if a == 1 {
                        b
                    } else {
                        return Err(self.err(
                            name,
                            format!(
                                "{} cannot broadcast {} with {}: {what} {a} vs {b} (each dimension must be equal or 1)",
                                n.op,
                                chw(x),
                                chw(y)
                            ),
                        ));
                    };
                }
                let op = if n.op == "add" { Op::Add } else { Op::Mul };
                final_op(op, Shape::new(1, out[0], out[1], out[2]))
            }
            "concat" => {
                let axis = n.axis.unwrap_or(1);
                if axis != 1 {
                    return Err(self.err(
                        name,
                        format!("concat supports axis 1 (channels) only, got axis {axis}"),
                    ));
                }
                let mut c: u64 = 0;
                for (k, s) in shapes.iter().enumerate() {
                    if s.h != x.h || s.w != x.w {
                        return Err(self.err(
                            name,
                            format!(
                                "concat along channels needs equal height and width: input 0 is {} but input {k} (`{}`) is {}",
                                chw(x),
                                n.inputs[k],
                                chw(*s)
                            ),
                        ));
                    }
                    c += s.c as u64;
                }
                if c > u32::MAX as u64 {
                    return Err(self.err(name, "concat output has too many channels"));
                }
                final_op(Op::Concat, Shape::new(1, c as u32, x.h, x.w))
            }
            "flatten" => final_op(Op::Flatten, Shape::new(1, x.item() as u32, 1, 1)),
            "dropout" | "identity" => (IrOp::Identity, x),
            "normalize" => {
                let get = |field: &str, v: &Option<Vec<f64>>| -> Result<Vec<f64>, ModelError> {
                    let v = v.as_ref().ok_or_else(|| {
                        self.err(name, format!("normalize needs `{field}` (per channel)"))
                    })?;
                    let v = if v.len() == 1 {
                        vec![v[0]; x.c as usize]
                    } else if v.len() == x.c as usize {
                        v.clone()
                    } else {
                        return Err(self.err(
                            name,
                            format!(
                                "`{field}` has {} values but the input has {} channels",
                                v.len(),
                                x.c
                            ),
                        ));
                    };
                    for &e in &v {
                        finite(field, e)?;
                    }
                    Ok(v)
                };
                let mean = get("mean", &n.mean)?;
                let std = get("std", &n.std)?;
                if let Some(i) = std.iter().position(|s| s.abs() < 1e-30) {
                    return Err(self.err(name, format!("std[{i}] is zero")));
                }
                let scale = std.iter().map(|&s| (1.0 / s) as f32).collect();
                let shift = mean
                    .iter()
                    .zip(&std)
                    .map(|(&m, &s)| (-m / s) as f32)
                    .collect();
                final_op(Op::Affine { scale, shift }, x)
            }
            "softmax" => {
                let axis = n.axis.unwrap_or(1);
                if axis != 1 {
                    return Err(self.err(
                        name,
                        format!("softmax is over channels (axis 1) only, got axis {axis}"),
                    ));
                }
                final_op(Op::Softmax, x)
            }
            _ => return Err(self.err(name, format!("unknown op `{}`", n.op))),
        };
        if item(shape) > MAX_ITEM as u128 || item(shape) == 0 {
            return Err(self.err(
                name,
                format!(
                    "output shape {} is too large: {} elements per image (at most {MAX_ITEM})",
                    chw(shape),
                    item(shape)
                ),
            ));
        }
        Ok(IrNode {
            name: n.name.clone(),
            op,
            inputs,
            shape,
        })
    }

    fn hw_at_least_1(&self, n: &NodeSpec, field: &str, v: [u32; 2]) -> Result<(), ModelError> {
        if v[0] == 0 || v[1] == 0 {
            return Err(self.err(
                &n.name,
                format!("`{field}` {} must be at least 1", fmt_dims(&v)),
            ));
        }
        self.window_limit(n, field, &v)
    }

    fn window_limit(&self, n: &NodeSpec, field: &str, v: &[u32]) -> Result<(), ModelError> {
        if v.iter().any(|&x| x > MAX_WINDOW) {
            return Err(self.err(
                &n.name,
                format!(
                    "`{field}` {} is too large (at most {MAX_WINDOW})",
                    fmt_dims(v)
                ),
            ));
        }
        Ok(())
    }

    fn conv2d(&self, n: &NodeSpec, x: Shape) -> Result<(IrOp, Shape), ModelError> {
        let name = n.name.as_str();
        let groups = n.groups.unwrap_or(1);
        if groups == 0 {
            return Err(self.err(name, "`groups` must be at least 1"));
        }
        if !x.c.is_multiple_of(groups) {
            return Err(self.err(
                name,
                format!(
                    "groups {groups} does not divide the input's {} channels (input {})",
                    x.c,
                    chw(x)
                ),
            ));
        }
        let icg = x.c / groups;
        let wname = n
            .weight
            .as_deref()
            .ok_or_else(|| self.err(name, "conv2d needs a `weight` tensor"))?;
        let raw = self.raw(name, wname)?;
        self.expect_shape(
            name,
            wname,
            raw,
            &[None, Some(icg as usize), None, None],
            &format!(
                "[out_channels, in_channels / groups, kh, kw] for an input of {} channels and groups {groups}",
                x.c
            ),
        )?;
        let dims = &raw.shape;
        if dims.iter().any(|&d| d == 0 || d > u32::MAX as usize) {
            return Err(self.terr(
                name,
                wname,
                format!("weight shape {} is not usable", fmt_dims(dims)),
            ));
        }
        let (oc, kh, kw) = (dims[0] as u32, dims[2] as u32, dims[3] as u32);
        if !oc.is_multiple_of(groups) {
            return Err(self.terr(
                name,
                wname,
                format!("{oc} output channels are not divisible by groups {groups}"),
            ));
        }
        let stride = n.stride.map_or([1, 1], |v| v.0);
        let dilation = n.dilation.map_or([1, 1], |v| v.0);
        self.hw_at_least_1(n, "stride", stride)?;
        self.hw_at_least_1(n, "dilation", dilation)?;
        self.hw_at_least_1(n, "kernel", [kh, kw])?;
        let padding = n.padding.map_or([0; 4], |p| p.0);
        self.window_limit(n, "padding", &padding)?;
        let params = Conv2dParams {
            stride,
            padding,
            dilation,
            groups,
        };
        let shape = params
            .out_shape(x, [oc, icg, kh, kw])
            .map_err(|e| self.err(name, format!("{} (input {})", shape_message(e), chw(x))))?;
        let bias = match &n.bias {
            Some(b) => Some(self.vector(name, b, oc)?),
            None => None,
        };
        let data = tensor_to_f32(self.file, name, wname, raw)?;
        let op = Op::Conv2d {
            params,
            weight: Weight {
                shape: [oc, icg, kh, kw],
                data,
            },
            bias,
        };
        Ok((IrOp::Final(op), shape))
    }

    fn linear(&self, n: &NodeSpec, x: Shape) -> Result<(IrOp, Shape), ModelError> {
        let name = n.name.as_str();
        if x.h != 1 || x.w != 1 {
            return Err(self.err(
                name,
                format!(
                    "linear needs a [K, 1, 1] input per image, got {}; put a flatten or global_avg_pool before it",
                    chw(x)
                ),
            ));
        }
        let wname = n
            .weight
            .as_deref()
            .ok_or_else(|| self.err(name, "linear needs a `weight` tensor"))?;
        let raw = self.raw(name, wname)?;
        self.expect_shape(
            name,
            wname,
            raw,
            &[None, Some(x.c as usize)],
            &format!(
                "[out_features, in_features] for an input of {} features",
                x.c
            ),
        )?;
        let out = raw.shape[0];
        if out == 0 || out > u32::MAX as usize {
            return Err(self.terr(
                name,
                wname,
                format!("weight shape {} is not usable", fmt_dims(&raw.shape)),
            ));
        }
        let out = out as u32;
        let bias = match &n.bias {
            Some(b) => Some(self.vector(name, b, out)?),
            None => None,
        };
        let data = tensor_to_f32(self.file, name, wname, raw)?;
        let op = Op::Linear {
            weight: Weight {
                shape: [out, x.c, 1, 1],
                data,
            },
            bias,
        };
        Ok((IrOp::Final(op), Shape::new(1, out, 1, 1)))
    }

    fn batch_norm(&self, n: &NodeSpec, x: Shape) -> Result<(IrOp, Shape), ModelError> {
        let name = n.name.as_str();
        let c = x.c;
        let eps = n.eps.unwrap_or(1e-5);
        if !eps.is_finite() || eps < 0.0 {
            return Err(self.err(name, format!("`eps` = {eps} must be a non-negative number")));
        }
        let mname = n
            .running_mean
            .as_deref()
            .ok_or_else(|| self.err(name, "batch_norm needs a `running_mean` tensor"))?;
        let vname = n
            .running_var
            .as_deref()
            .ok_or_else(|| self.err(name, "batch_norm needs a `running_var` tensor"))?;
        let mean = self.vector(name, mname, c)?;
        let var = self.vector(name, vname, c)?;
        let gamma = match &n.weight {
            Some(t) => self.vector(name, t, c)?,
            None => vec![1.0; c as usize],
        };
        let beta = match &n.bias {
            Some(t) => self.vector(name, t, c)?,
            None => vec![0.0; c as usize],
        };
        let mut scale = Vec::with_capacity(c as usize);
        let mut shift = Vec::with_capacity(c as usize);
        for i in 0..c as usize {
            let d = var[i] as f64 + eps;
            if d <= 0.0 {
                return Err(self.terr(
                    name,
                    vname,
                    format!(
                        "running_var[{i}] + eps = {d} is not positive (a variance cannot be negative)"
                    ),
                ));
            }
            let s = gamma[i] as f64 / d.sqrt();
            scale.push(s);
            shift.push(beta[i] as f64 - mean[i] as f64 * s);
        }
        Ok((IrOp::Bn { scale, shift }, x))
    }

    fn pool(&self, n: &NodeSpec, x: Shape) -> Result<(IrOp, Shape), ModelError> {
        let name = n.name.as_str();
        let is_max = n.op == "max_pool";
        let kernel = n
            .kernel
            .ok_or_else(|| self.err(name, format!("{} needs `kernel`", n.op)))?
            .0;
        let stride = n.stride.map_or(kernel, |s| s.0);
        let dilation = n.dilation.map_or([1, 1], |d| d.0);
        let padding = n.padding.map_or([0; 4], |p| p.0);
        self.hw_at_least_1(n, "kernel", kernel)?;
        self.hw_at_least_1(n, "stride", stride)?;
        self.hw_at_least_1(n, "dilation", dilation)?;
        self.window_limit(n, "padding", &padding)?;
        // PyTorch: padding at most half the (effective) kernel, so no window lies
        // entirely in the padding.
        for (k, &p) in padding.iter().enumerate() {
            let d = k % 2; // top/bottom -> height, left/right -> width
            let limit = if is_max {
                ((kernel[d] as u64 - 1) * dilation[d] as u64).div_ceil(2)
            } else {
                kernel[d] as u64 / 2
            };
            if p as u64 > limit {
                return Err(self.err(
                    name,
                    format!(
                        "padding {} is more than half the {}kernel {} (as in PyTorch, padding must be at most {limit} here)",
                        fmt_dims(&padding),
                        if is_max { "effective " } else { "" },
                        fmt_dims(&kernel)
                    ),
                ));
            }
        }
        let params = Pool2dParams {
            kernel,
            stride,
            padding,
            dilation,
            ceil_mode: n.ceil_mode.unwrap_or(false),
            count_include_pad: n.count_include_pad.unwrap_or(true),
        };
        let shape = params
            .out_shape(x)
            .map_err(|e| self.err(name, format!("{} (input {})", shape_message(e), chw(x))))?;
        let op = if is_max {
            Op::MaxPool(params)
        } else {
            Op::AvgPool(params)
        };
        Ok((IrOp::Final(op), shape))
    }

    /// Removes identities, folds batch_norm into convolutions, turns the rest
    /// into affines, drops nodes that do not reach the output and renumbers.
    fn rewrite(&self, mut ir: Vec<IrNode>, out: usize) -> Result<(Vec<Node>, usize), ModelError> {
        let n = ir.len();
        let mut alias: Vec<Option<Src>> = vec![None; n];
        let resolve = |alias: &[Option<Src>], mut s: Src| {
            while let Src::Node(i) = s {
                match alias[i] {
                    Some(t) => s = t,
                    None => break,
                }
            }
            s
        };
        for i in 0..n {
            let ins: Vec<Src> = ir[i].inputs.iter().map(|&s| resolve(&alias, s)).collect();
            if let IrOp::Identity = ir[i].op {
                alias[i] = Some(ins[0]);
            }
            ir[i].inputs = ins;
        }
        let Src::Node(out_node) = resolve(&alias, Src::Node(out)) else {
            return Err(self.err(
                &ir[out].name,
                "the output is the graph input itself: there is nothing to compute",
            ));
        };
        let live = liveness(&ir, &alias, out_node);
        let mut consumers = vec![0usize; n];
        consumers[out_node] += 1;
        for i in (0..n).filter(|&i| live[i] && alias[i].is_none()) {
            for s in &ir[i].inputs {
                if let Src::Node(j) = s {
                    consumers[*j] += 1;
                }
            }
        }
        for i in 0..n {
            if !live[i] || alias[i].is_some() {
                continue;
            }
            let ins: Vec<Src> = ir[i].inputs.iter().map(|&s| resolve(&alias, s)).collect();
            ir[i].inputs = ins;
            let IrOp::Bn { scale, shift } = &ir[i].op else {
                continue;
            };
            let Src::Node(j) = ir[i].inputs[0] else {
                continue;
            };
            if consumers[j] != 1 || !matches!(ir[j].op, IrOp::Final(Op::Conv2d { .. })) {
                continue;
            }
            let (scale, shift) = (scale.clone(), shift.clone());
            let bn_name = ir[i].name.clone();
            let conv = &mut ir[j];
            if let IrOp::Final(Op::Conv2d { weight, bias, .. }) = &mut conv.op {
                let oc = weight.shape[0] as usize;
                let per = weight.data.len() / oc.max(1);
                for (o, chunk) in weight.data.chunks_mut(per.max(1)).enumerate() {
                    let s = scale.get(o).copied().unwrap_or(1.0);
                    for v in chunk {
                        *v = (*v as f64 * s) as f32;
                    }
                }
                let b: Vec<f32> = (0..oc)
                    .map(|o| {
                        let b0 = bias.as_ref().and_then(|b| b.get(o)).copied().unwrap_or(0.0);
                        let (s, t) = (scale.get(o).copied(), shift.get(o).copied());
                        (b0 as f64 * s.unwrap_or(1.0) + t.unwrap_or(0.0)) as f32
                    })
                    .collect();
                let bad = weight.data.iter().chain(&b).any(|v| !v.is_finite());
                if bad {
                    return Err(self.err(
                        &bn_name,
                        format!(
                            "folding into `{}` gives non-finite weights (running_var too small?)",
                            conv.name
                        ),
                    ));
                }
                *bias = Some(b);
            }
            conv.name = format!("{}+{}", conv.name, bn_name);
            alias[i] = Some(Src::Node(j));
            consumers[j] = consumers[i];
        }
        let Src::Node(out_node) = resolve(&alias, Src::Node(out)) else {
            return Err(self.err(&ir[out].name, "the output is the graph input itself"));
        };
        let live = liveness(&ir, &alias, out_node);
        let mut index = vec![usize::MAX; n];
        let mut nodes = Vec::new();
        for (i, node) in ir.into_iter().enumerate() {
            if !live[i] || alias[i].is_some() {
                continue;
            }
            let op = match node.op {
                IrOp::Final(op) => op,
                IrOp::Bn { scale, shift } => {
                    let scale: Vec<f32> = scale.iter().map(|&v| v as f32).collect();
                    let shift: Vec<f32> = shift.iter().map(|&v| v as f32).collect();
                    if scale.iter().chain(&shift).any(|v| !v.is_finite()) {
                        return Err(self.err(
                            &node.name,
                            "batch_norm gives a non-finite scale (running_var too small?)",
                        ));
                    }
                    Op::Affine { scale, shift }
                }
                IrOp::Identity => continue,
            };
            let inputs = node
                .inputs
                .iter()
                .map(|&s| match resolve(&alias, s) {
                    Src::Input => Src::Input,
                    Src::Node(j) => Src::Node(index[j]),
                })
                .collect();
            index[i] = nodes.len();
            nodes.push(Node {
                name: node.name,
                op,
                inputs,
                shape: node.shape,
            });
        }
        Ok((nodes, index[out_node]))
    }
}

/// Nodes whose value reaches `out` (inputs always point to earlier nodes).
fn liveness(ir: &[IrNode], alias: &[Option<Src>], out: usize) -> Vec<bool> {
    let mut live = vec![false; ir.len()];
    live[out] = true;
    for i in (0..ir.len()).rev() {
        if !live[i] {
            continue;
        }
        let srcs: Vec<Src> = match alias[i] {
            Some(s) => vec![s],
            None => ir[i].inputs.clone(),
        };
        for s in srcs {
            if let Src::Node(j) = s {
                live[j] = true;
            }
        }
    }
    live
}
