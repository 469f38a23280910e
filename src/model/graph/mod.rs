//! From a parsed description and container to a [`Model`]: name resolution,
//! topological sort, per-op validation and shape inference, tensor loading, and
//! the inference rewrites (identity removal, BatchNorm folding, normalisation).
//! Here: the builder, name resolution and the topological sort; [`ops`]
//! validates each node and infers its shape, [`rewrite`] runs the rewrites.

mod ops;
mod rewrite;

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
pub(crate) const OPS: [&str; 23] = [
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
    "gelu",
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
    "layer_norm",
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
}
