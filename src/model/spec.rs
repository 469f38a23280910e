//! The JSON model description (format 1): serde structs that tools can build and
//! serialise, and a parser whose errors name the file, the node and the bad field.

use std::path::Path;

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::ser::Serializer;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::ModelError;

/// The only format version this crate reads and writes.
pub const FORMAT_VERSION: u32 = 1;

/// The whole model description, stored as JSON under the key `advex` of the
/// safetensors header's `__metadata__` (or in a sidecar `NAME.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    /// Must be [`FORMAT_VERSION`].
    pub format: u32,
    /// Defaults to the file's stem.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Free text (provenance, licence); not interpreted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// `[C, H, W]`, batch excluded.
    pub input: [u32; 3],
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preprocess: Option<PreprocessSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub classes: Option<Vec<String>>,
    pub nodes: Vec<NodeSpec>,
    /// Name of the node whose value is the model output; defaults to the last node listed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
}

/// Image preprocessing. Every field is optional.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreprocessSpec {
    /// Target size of the shorter side before cropping.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resize: Option<u32>,
    /// Centre-crop size (square).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crop: Option<u32>,
    /// One of [`INTERPOLATIONS`]; default `bilinear`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interpolation: Option<String>,
    /// Per channel (or one value for all channels); default 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mean: Option<Vec<f64>>,
    /// Per channel (or one value for all channels); default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub std: Option<Vec<f64>>,
}

/// Interpolation names accepted in `preprocess.interpolation`.
pub const INTERPOLATIONS: [&str; 4] = ["nearest", "bilinear", "bicubic", "lanczos"];

/// One graph node. Which attributes apply depends on `op`; an attribute that does
/// not apply to the op is refused at load time.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSpec {
    pub name: String,
    pub op: String,
    /// Value names: `input` (the graph input) or other nodes' names.
    #[serde(default)]
    pub inputs: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bias: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub running_mean: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub running_var: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eps: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<Hw>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stride: Option<Hw>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub padding: Option<Padding>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dilation: Option<Hw>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub groups: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ceil_mode: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count_include_pad: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub negative_slope: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alpha: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub beta: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub axis: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mean: Option<Vec<f64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub std: Option<Vec<f64>>,
    /// Dropout probability; accepted and ignored (dropout is the identity at inference).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p: Option<f64>,
    /// gelu: `"none"` (the exact erf form) or `"tanh"`, as PyTorch's `approximate`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approximate: Option<String>,
}

impl NodeSpec {
    /// A node with no attributes.
    pub fn new(name: &str, op: &str, inputs: &[&str]) -> Self {
        NodeSpec {
            name: name.to_string(),
            op: op.to_string(),
            inputs: inputs.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    /// Names of the optional attributes that are set.
    pub fn attributes_set(&self) -> Vec<&'static str> {
        let mut v = Vec::new();
        let mut add = |set: bool, name: &'static str| {
            if set {
                v.push(name)
            }
        };
        add(self.weight.is_some(), "weight");
        add(self.bias.is_some(), "bias");
        add(self.running_mean.is_some(), "running_mean");
        add(self.running_var.is_some(), "running_var");
        add(self.eps.is_some(), "eps");
        add(self.kernel.is_some(), "kernel");
        add(self.stride.is_some(), "stride");
        add(self.padding.is_some(), "padding");
        add(self.dilation.is_some(), "dilation");
        add(self.groups.is_some(), "groups");
        add(self.ceil_mode.is_some(), "ceil_mode");
        add(self.count_include_pad.is_some(), "count_include_pad");
        add(self.negative_slope.is_some(), "negative_slope");
        add(self.alpha.is_some(), "alpha");
        add(self.beta.is_some(), "beta");
        add(self.axis.is_some(), "axis");
        add(self.mean.is_some(), "mean");
        add(self.std.is_some(), "std");
        add(self.p.is_some(), "p");
        add(self.approximate.is_some(), "approximate");
        v
    }
}

/// A `[height, width]` pair; JSON accepts a number (both) or `[h, w]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hw(pub [u32; 2]);

/// Padding `[top, left, bottom, right]`; JSON accepts a number (all sides),
/// `[ph, pw]` (symmetric) or `[top, left, bottom, right]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Padding(pub [u32; 4]);

impl From<u32> for Hw {
    fn from(v: u32) -> Self {
        Hw([v, v])
    }
}
impl From<[u32; 2]> for Hw {
    fn from(v: [u32; 2]) -> Self {
        Hw(v)
    }
}
impl From<u32> for Padding {
    fn from(v: u32) -> Self {
        Padding([v; 4])
    }
}
impl From<[u32; 2]> for Padding {
    fn from([h, w]: [u32; 2]) -> Self {
        Padding([h, w, h, w])
    }
}
impl From<[u32; 4]> for Padding {
    fn from(v: [u32; 4]) -> Self {
        Padding(v)
    }
}

impl Serialize for Hw {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.0[0] == self.0[1] {
            s.serialize_u32(self.0[0])
        } else {
            self.0.serialize(s)
        }
    }
}

impl Serialize for Padding {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let [t, l, b, r] = self.0;
        if t == l && l == b && b == r {
            s.serialize_u32(t)
        } else if t == b && l == r {
            [t, l].serialize(s)
        } else {
            self.0.serialize(s)
        }
    }
}

/// Reads a number or a list of 1..=max numbers.
struct IntsVisitor {
    expecting: &'static str,
    lengths: &'static [usize],
}

impl<'de> Visitor<'de> for IntsVisitor {
    type Value = Vec<u32>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str(self.expecting)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        u32::try_from(v)
            .map(|v| vec![v])
            .map_err(|_| E::invalid_value(de::Unexpected::Unsigned(v), &self))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        if v < 0 {
            return Err(E::invalid_value(de::Unexpected::Signed(v), &self));
        }
        self.visit_u64(v as u64)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut out = Vec::new();
        while let Some(v) = seq.next_element::<u32>()? {
            out.push(v);
            if out.len() > 4 {
                break;
            }
        }
        if !self.lengths.contains(&out.len()) {
            return Err(de::Error::invalid_length(out.len(), &self));
        }
        Ok(out)
    }
}

impl<'de> Deserialize<'de> for Hw {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = d.deserialize_any(IntsVisitor {
            expecting: "a non-negative integer or a pair [h, w]",
            lengths: &[2],
        })?;
        Ok(match v[..] {
            [a] => Hw([a, a]),
            [h, w] => Hw([h, w]),
            _ => return Err(de::Error::custom("expected 1 or 2 integers")),
        })
    }
}

impl<'de> Deserialize<'de> for Padding {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = d.deserialize_any(IntsVisitor {
            expecting: "a non-negative integer, [ph, pw] or [top, left, bottom, right]",
            lengths: &[2, 4],
        })?;
        Ok(match v[..] {
            [a] => Padding([a; 4]),
            [h, w] => Padding([h, w, h, w]),
            [t, l, b, r] => Padding([t, l, b, r]),
            _ => return Err(de::Error::custom("expected 1, 2 or 4 integers")),
        })
    }
}

/// Parses the model description JSON. `file` is the file named in errors and
/// `source` says where the JSON came from (for the message).
pub(crate) fn parse_spec(json: &str, file: &Path, source: &str) -> Result<ModelSpec, ModelError> {
    let value: Value = serde_json::from_str(json).map_err(|e| {
        ModelError::new(
            file,
            format!("the model description ({source}) is not valid JSON: {e}"),
        )
    })?;
    let Some(obj) = value.as_object() else {
        return Err(ModelError::new(
            file,
            format!("the model description ({source}) must be a JSON object"),
        ));
    };
    match obj.get("format") {
        None => {
            return Err(ModelError::new(
                file,
                format!(
                    "the model description ({source}) has no `format` field; this advex reads format {FORMAT_VERSION}"
                ),
            ))
        }
        Some(Value::Number(n)) if n.as_u64() == Some(FORMAT_VERSION as u64) => {}
        Some(other) => {
            return Err(ModelError::new(
                file,
                format!(
                    "model format {other} is not supported: this advex reads format {FORMAT_VERSION} only (re-export the model, or upgrade advex)"
                ),
            ))
        }
    }
    serde_json::from_str::<ModelSpec>(json).map_err(|e| {
        let mut msg = format!("invalid model description ({source}): {e}");
        let (field, node) = locate_bad_field(obj);
        if let Some(field) = field {
            msg.push_str(&format!(" (bad field `{field}`)"));
        }
        let err = ModelError::new(file, msg);
        match node {
            Some(n) => err.node(n),
            None => err,
        }
    })
}

fn overlay(base: &Value, key: &str, v: &Value) -> Value {
    let mut m = base.as_object().cloned().unwrap_or_default();
    m.insert(key.to_string(), v.clone());
    Value::Object(m)
}

/// Finds which field makes the description fail to deserialise, by trying each
/// field alone on a minimal valid object. Returns the field path and, inside a
/// node, the node's name.
fn locate_bad_field(obj: &Map<String, Value>) -> (Option<String>, Option<String>) {
    let base = serde_json::json!({"format": FORMAT_VERSION, "input": [1, 1, 1], "nodes": []});
    for (k, v) in obj {
        if k == "nodes" {
            if let Value::Array(nodes) = v {
                for (i, node) in nodes.iter().enumerate() {
                    if NodeSpec::deserialize(node).is_ok() {
                        continue;
                    }
                    let name = node
                        .get("name")
                        .and_then(Value::as_str)
                        .map(str::to_string)
                        .or_else(|| Some(format!("#{i}")));
                    if let Value::Object(fields) = node {
                        let node_base = serde_json::json!({"name": "n", "op": "relu"});
                        for (k2, v2) in fields {
                            if NodeSpec::deserialize(&overlay(&node_base, k2, v2)).is_err() {
                                return (Some(format!("nodes[{i}].{k2}")), name);
                            }
                        }
                    }
                    return (Some(format!("nodes[{i}]")), name);
                }
            }
        }
        if k == "preprocess" {
            if let Value::Object(fields) = v {
                for (k2, v2) in fields {
                    if PreprocessSpec::deserialize(&overlay(&serde_json::json!({}), k2, v2))
                        .is_err()
                    {
                        return (Some(format!("preprocess.{k2}")), None);
                    }
                }
            }
        }
        if ModelSpec::deserialize(&overlay(&base, k, v)).is_err() {
            return (Some(k.clone()), None);
        }
    }
    (None, None)
}
