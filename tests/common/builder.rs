//! Builds model files for tests: a JSON description plus seeded random tensors,
//! tracking each value's shape so tensor sizes come out right.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use advex::model::{encode_safetensors, write_model, Dtype, METADATA_KEY};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Map, Value};

/// (name, shape, values), as `write_model` takes them.
pub type Tensors = Vec<(String, Vec<usize>, Vec<f32>)>;

pub struct ModelBuilder {
    /// Top-level fields other than `nodes`.
    pub top: Map<String, Value>,
    pub nodes: Vec<Value>,
    pub tensors: Tensors,
    shapes: HashMap<String, [u32; 3]>,
    rng: ChaCha8Rng,
}

/// Output size of a window along one dimension (PyTorch floor mode).
pub fn window(input: u32, pad_a: u32, pad_b: u32, k: u32, stride: u32, dilation: u32) -> u32 {
    let span = (dilation * (k - 1) + 1) as i64;
    let padded = (input + pad_a + pad_b) as i64;
    if padded < span {
        return 0; // does not fit: the loader must refuse it
    }
    ((padded - span) / stride as i64 + 1) as u32
}

impl ModelBuilder {
    pub fn new(name: &str, input: [u32; 3], seed: u64) -> Self {
        let mut top = Map::new();
        top.insert("format".into(), json!(1));
        top.insert("name".into(), json!(name));
        top.insert("input".into(), json!(input));
        let mut shapes = HashMap::new();
        shapes.insert("input".to_string(), input);
        ModelBuilder {
            top,
            nodes: Vec::new(),
            tensors: Vec::new(),
            shapes,
            rng: ChaCha8Rng::seed_from_u64(seed),
        }
    }

    /// Shape `[C, H, W]` of a value built so far.
    pub fn shape(&self, value: &str) -> [u32; 3] {
        self.shapes[value]
    }

    /// Sets a top-level field (`preprocess`, `classes`, `output`...).
    pub fn set(&mut self, key: &str, value: Value) -> &mut Self {
        self.top.insert(key.into(), value);
        self
    }

    /// Adds a tensor of uniform values in `[lo, hi)`; returns its name.
    pub fn tensor(&mut self, name: &str, shape: &[usize], lo: f32, hi: f32) -> String {
        let n: usize = shape.iter().product();
        let v = (0..n)
            .map(|_| lo + (hi - lo) * self.rng.random::<f32>())
            .collect();
        self.tensors.push((name.to_string(), shape.to_vec(), v));
        name.to_string()
    }

    /// Adds a node with explicit JSON attributes and output shape.
    pub fn node(
        &mut self,
        name: &str,
        op: &str,
        inputs: &[&str],
        attrs: Value,
        out: [u32; 3],
    ) -> String {
        let mut v = json!({"name": name, "op": op, "inputs": inputs});
        if let Value::Object(a) = attrs {
            for (k, x) in a {
                v[k] = x;
            }
        }
        self.nodes.push(v);
        self.shapes.insert(name.to_string(), out);
        name.to_string()
    }

    /// conv2d with `padding` `[top, left, bottom, right]`, dilation 1.
    #[allow(clippy::too_many_arguments)]
    pub fn conv(
        &mut self,
        name: &str,
        input: &str,
        oc: u32,
        k: u32,
        stride: u32,
        padding: [u32; 4],
        groups: u32,
        bias: bool,
    ) -> String {
        let [c, h, w] = self.shape(input);
        let fan_in = (c / groups * k * k) as f32;
        let s = 1.0 / fan_in.sqrt();
        let wn = self.tensor(
            &format!("{name}.weight"),
            &[oc as usize, (c / groups) as usize, k as usize, k as usize],
            -s,
            s,
        );
        let mut attrs =
            json!({"weight": wn, "stride": stride, "padding": padding, "groups": groups});
        if bias {
            attrs["bias"] = json!(self.tensor(&format!("{name}.bias"), &[oc as usize], -0.5, 0.5));
        }
        let [pt, pl, pb, pr] = padding;
        let out = [
            oc,
            window(h, pt, pb, k, stride, 1),
            window(w, pl, pr, k, stride, 1),
        ];
        self.node(name, "conv2d", &[input], attrs, out)
    }

    /// batch_norm with random statistics (variance in [0.5, 2)).
    pub fn bn(&mut self, name: &str, input: &str) -> String {
        let c = self.shape(input)[0] as usize;
        let attrs = json!({
            "weight": self.tensor(&format!("{name}.weight"), &[c], 0.5, 1.5),
            "bias": self.tensor(&format!("{name}.bias"), &[c], -0.5, 0.5),
            "running_mean": self.tensor(&format!("{name}.running_mean"), &[c], -0.5, 0.5),
            "running_var": self.tensor(&format!("{name}.running_var"), &[c], 0.5, 2.0),
            "eps": 1e-3,
        });
        let out = self.shape(input);
        self.node(name, "batch_norm", &[input], attrs, out)
    }

    /// A shape-preserving single-input op (activations, dropout, softmax...).
    pub fn unary(&mut self, name: &str, op: &str, input: &str) -> String {
        let out = self.shape(input);
        self.node(name, op, &[input], json!({}), out)
    }

    pub fn linear(&mut self, name: &str, input: &str, out: u32, bias: bool) -> String {
        let [k, _, _] = self.shape(input);
        let s = 1.0 / (k as f32).sqrt();
        let mut attrs = json!({
            "weight": self.tensor(&format!("{name}.weight"), &[out as usize, k as usize], -s, s)
        });
        if bias {
            attrs["bias"] = json!(self.tensor(&format!("{name}.bias"), &[out as usize], -0.5, 0.5));
        }
        self.node(name, "linear", &[input], attrs, [out, 1, 1])
    }

    /// max_pool or avg_pool, square kernel, symmetric padding, floor mode.
    pub fn pool(
        &mut self,
        name: &str,
        op: &str,
        input: &str,
        k: u32,
        stride: u32,
        pad: u32,
    ) -> String {
        let [c, h, w] = self.shape(input);
        let out = [
            c,
            window(h, pad, pad, k, stride, 1),
            window(w, pad, pad, k, stride, 1),
        ];
        self.node(
            name,
            op,
            &[input],
            json!({"kernel": k, "stride": stride, "padding": pad}),
            out,
        )
    }

    pub fn global_avg_pool(&mut self, name: &str, input: &str) -> String {
        let c = self.shape(input)[0];
        self.node(name, "global_avg_pool", &[input], json!({}), [c, 1, 1])
    }

    pub fn flatten(&mut self, name: &str, input: &str) -> String {
        let [c, h, w] = self.shape(input);
        self.node(name, "flatten", &[input], json!({}), [c * h * w, 1, 1])
    }

    /// The node's JSON, to edit or corrupt.
    pub fn node_mut(&mut self, name: &str) -> &mut Value {
        self.nodes
            .iter_mut()
            .find(|n| n["name"] == name)
            .unwrap_or_else(|| panic!("no node {name}"))
    }

    /// A tensor, to edit or corrupt.
    pub fn tensor_mut(&mut self, name: &str) -> &mut (String, Vec<usize>, Vec<f32>) {
        self.tensors
            .iter_mut()
            .find(|t| t.0 == name)
            .unwrap_or_else(|| panic!("no tensor {name}"))
    }

    pub fn tensor_values(&self, name: &str) -> &[f32] {
        &self
            .tensors
            .iter()
            .find(|t| t.0 == name)
            .unwrap_or_else(|| panic!("no tensor {name}"))
            .2
    }

    /// The whole description.
    pub fn spec(&self) -> Value {
        let mut top = self.top.clone();
        top.insert("nodes".into(), Value::Array(self.nodes.clone()));
        Value::Object(top)
    }

    /// The model file's bytes, description in the header.
    pub fn bytes(&self, dtype: Dtype) -> Vec<u8> {
        let mut meta = BTreeMap::new();
        meta.insert(METADATA_KEY.to_string(), self.spec().to_string());
        encode_safetensors(&meta, &self.tensors, dtype).expect("encode")
    }

    /// Writes `dir/file` and returns its path.
    pub fn write(&self, dir: &Path, file: &str, dtype: Dtype) -> PathBuf {
        let path = dir.join(file);
        write_model(&path, &self.spec(), &self.tensors, dtype).expect("write_model");
        path
    }
}

/// A safetensors file from a hand-written header (no checks, no padding) and data.
pub fn raw_safetensors(header: &Value, data: &[u8]) -> Vec<u8> {
    let h = header.to_string().into_bytes();
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend(h);
    out.extend_from_slice(data);
    out
}

/// The example model of the format: conv (stride 2, asymmetric padding) ->
/// batch_norm -> relu6 -> global_avg_pool -> flatten -> linear; `[1, 8, 8]` input.
pub fn tiny_cnn(seed: u64) -> ModelBuilder {
    let mut b = ModelBuilder::new("tiny_cnn", [1, 8, 8], seed);
    b.conv("conv1", "input", 4, 3, 2, [0, 0, 1, 1], 1, true);
    b.bn("bn1", "conv1");
    b.unary("act1", "relu6", "bn1");
    b.global_avg_pool("pool", "act1");
    b.flatten("flat", "pool");
    b.linear("fc", "flat", 3, true);
    b
}

/// Every op, including a depthwise conv, squeeze-excite, ceil-mode pools and
/// a bn that cannot fold (after a linear).
pub fn every_op(seed: u64) -> ModelBuilder {
    let mut b = ModelBuilder::new("every_op", [3, 12, 12], seed);
    b.set(
        "preprocess",
        json!({"resize": 14, "crop": 12, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}),
    );
    b.conv("c1", "input", 8, 3, 1, [1, 1, 1, 1], 1, false);
    b.bn("bn1", "c1");
    b.unary("a1", "relu", "bn1");
    b.conv("dw", "a1", 8, 3, 2, [0, 0, 1, 1], 8, true);
    b.unary("a2", "relu6", "dw");
    b.unary("a3", "leaky_relu", "a2");
    b.node_mut("a3")["negative_slope"] = json!(0.2);
    b.unary("a4", "hardswish", "a3");
    b.global_avg_pool("se_pool", "a4");
    b.unary("se_sig", "hardsigmoid", "se_pool");
    b.node("se_mul", "mul", &["a4", "se_sig"], json!({}), [8, 6, 6]);
    b.unary("s1", "silu", "se_mul");
    b.unary("s2", "sigmoid", "s1");
    b.node("add1", "add", &["s2", "a2"], json!({}), [8, 6, 6]);
    b.node(
        "mp",
        "max_pool",
        &["add1"],
        json!({"kernel": 3, "stride": 2, "padding": 1, "ceil_mode": true}),
        [8, 4, 4],
    );
    b.node(
        "ap",
        "avg_pool",
        &["add1"],
        json!({"kernel": [3, 3], "stride": [2, 2], "padding": [1, 1], "ceil_mode": true, "count_include_pad": false}),
        [8, 4, 4],
    );
    b.node(
        "cat",
        "concat",
        &["mp", "ap"],
        json!({"axis": 1}),
        [16, 4, 4],
    );
    b.node(
        "nz",
        "normalize",
        &["cat"],
        json!({"mean": [0.1], "std": [2.0]}),
        [16, 4, 4],
    );
    b.unary("dr", "dropout", "nz");
    b.flatten("fl", "dr");
    b.linear("fc", "fl", 10, true);
    b.bn("bnfc", "fc");
    b.unary("sm", "softmax", "bnfc");
    b
}
