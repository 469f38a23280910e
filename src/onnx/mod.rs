//! ONNX import: an ONNX image classifier (as `torch.onnx.export` writes them,
//! TorchScript or dynamo exporter, external data included) becomes an advex
//! model description plus its tensors, a loaded [`Model`], or a model file.
//!
//! # Parsing
//! The protobuf messages are generated at build time by `prost-build` from the
//! official `onnx.proto` (ONNX 1.23.2, Apache-2.0, vendored as
//! `src/onnx/onnx.proto`), compiled by `protox`, a pure-Rust protobuf compiler,
//! so no `protoc` binary is needed. `prost` is the most used Rust protobuf
//! runtime; its decoder checks every length against the input and limits
//! nesting depth, so a truncated or hostile file is an error, never a panic.
//! The alternatives were heavier or less fitting: `onnx-protobuf` (MPL-2.0, on
//! the older `protobuf` runtime, rarely updated) and burn's `onnx-ir` (a whole
//! pre-release IR and code-generation framework, far more than a reader).
//!
//! # Conversion
//! The graph is walked in topological order from the input to the (first)
//! output. Values that do not depend on the input are evaluated on the CPU
//! (initializers, `Constant`, and `Shape`/`Gather`/`Unsqueeze`/`Concat`/`Cast`/
//! `Slice`/`Reshape`/`Transpose`/arithmetic chains that compute reshape
//! targets). Run-time ops map to advex nodes (see [`SUPPORTED_OPS`]):
//! `Conv`, `BatchNormalization` (folded into the convolution at load time),
//! `Gemm` (transB, alpha, beta folded into the weights), `MatMul` (+ `Add` of a
//! constant, as one `linear`), `Relu`, `Clip` (0..6 as relu6, 0..inf as relu;
//! bounds as attributes or constant inputs), `LeakyRelu`, `Sigmoid`,
//! `HardSigmoid`, `HardSwish`, `Gelu` (opset 20; both forms) and below opset 20
//! its `x * 0.5 * (1 + Erf(x / sqrt 2))` chain as PyTorch's exporters write it,
//! `LayerNormalization` over channels (ConvNeXt: `Transpose` to channels-last,
//! normalise the last axis, `MatMul` by a constant as a pointwise convolution,
//! element-wise ops, `Transpose` back; the data stays NCHW), `Add`/`Mul` of two run-time values (broadcast,
//! squeeze-excite), `Add`/`Sub`/`Mul`/`Div` by a scalar or per-channel constant
//! (an exact per-channel affine), `x * Sigmoid(x)` (silu), `x * HardSigmoid(x)`
//! with PyTorch's parameters (hardswish), `MaxPool` and `AveragePool` (ceil_mode,
//! count_include_pad, auto_pad, asymmetric pads), `GlobalAveragePool`,
//! `GlobalMaxPool`, `ReduceMean` over H and W, `Flatten`/`Reshape`/`Squeeze`/
//! `Unsqueeze` (nothing or a `flatten`), `Concat` along channels, `Pad` with
//! zeros (folded into the next convolution or pooling), `Dropout`, `Identity`,
//! `Cast` to float. `Transpose`, `Gather`, `GatherND`, `Slice`, `Expand` and a
//! `ReduceMean` over other axes, applied to run-time values, are constant
//! linear maps folded into the weights of the `Gemm`/`MatMul` they feed (this
//! is how the dynamo exporter writes an `AdaptiveAvgPool2d` that enlarges a
//! small map, as in VGG on small inputs). A final `Softmax`/`LogSoftmax` is
//! dropped with a warning: attacks need logits.
//!
//! Everything unsupported is reported at once: one error listing every
//! unsupported node with its name, op type and the reason.

mod convert;
mod tensor;

/// The ONNX protobuf messages (generated from the vendored `onnx.proto`).
#[allow(clippy::all, missing_docs, rustdoc::all)]
pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/onnx.rs"));
}

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use prost::Message;

use crate::error::{Error, ModelError, Result};
use crate::model::{
    encode_safetensors, write_model, Dtype, Model, ModelSpec, PreprocessSpec, FORMAT_VERSION,
    METADATA_KEY,
};

pub use convert::{MAX_OPSET, MIN_OPSET};

/// ONNX operators the importer converts when they act on the image (run-time
/// values; the layout ops among them only before a `Gemm`/`MatMul`). On
/// constants it also evaluates `Constant`, `Shape`, `Size`, `Neg`, `Sqrt`,
/// `Reciprocal`, `Floor`, `Ceil`, `ConstantOfShape`, `Mod`, `Equal`, `Less`,
/// `Greater`, `Not` and `Where` (the shape guards of PyTorch's exports).
pub const SUPPORTED_OPS: &[&str] = &[
    "Conv",
    "BatchNormalization",
    "Gemm",
    "MatMul",
    "Relu",
    "Clip",
    "LeakyRelu",
    "Sigmoid",
    "HardSigmoid",
    "HardSwish",
    "Gelu",
    "Erf",
    "LayerNormalization",
    "Add",
    "Sub",
    "Mul",
    "Div",
    "MaxPool",
    "AveragePool",
    "GlobalAveragePool",
    "GlobalMaxPool",
    "ReduceMean",
    "Flatten",
    "Reshape",
    "Squeeze",
    "Unsqueeze",
    "Concat",
    "Pad",
    "Dropout",
    "Identity",
    "Cast",
    "Transpose",
    "Gather",
    "GatherND",
    "Slice",
    "Expand",
    "Softmax",
    "LogSoftmax",
];

/// What the ONNX file does not say: input size for dynamic dimensions, class
/// names and preprocessing.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ImportOptions {
    /// `[height, width]` for inputs whose spatial size is dynamic (`--size`).
    /// Must agree with the file where the file fixes them.
    pub size: Option<[u32; 2]>,
    /// A text file with one class name per line (`--classes`); blank lines at
    /// the end are ignored. Its line count must equal the model's outputs.
    pub classes: Option<PathBuf>,
    /// Per-channel (or one) mean of the normalisation the model expects (`--mean`).
    pub mean: Option<Vec<f64>>,
    /// Per-channel (or one) standard deviation (`--std`).
    pub std: Option<Vec<f64>>,
    /// Shorter-side resize before cropping, if any.
    pub resize: Option<u32>,
    /// Centre crop, if any.
    pub crop: Option<u32>,
    /// Model name; defaults to the file stem.
    pub name: Option<String>,
}

/// Named tensors `(name, shape, row-major f32 values)`, as the model writer takes them.
pub type Tensors = Vec<(String, Vec<usize>, Vec<f32>)>;

/// A converted model: description, tensors and the importer's warnings
/// (dropped softmax, extra outputs ignored).
#[derive(Debug, Clone)]
pub struct Imported {
    pub spec: ModelSpec,
    pub tensors: Tensors,
    pub warnings: Vec<String>,
}

/// Whether `path` names an ONNX file (extension `.onnx`, any case).
pub fn is_onnx_path(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("onnx"))
}

/// Converts the ONNX file at `path` to an advex model description and tensors.
/// External data files are read relative to `path`'s folder.
pub fn import_onnx(path: &Path, opts: &ImportOptions) -> Result<(ModelSpec, Tensors)> {
    let i = import_onnx_full(path, opts)?;
    Ok((i.spec, i.tensors))
}

/// [`import_onnx`], also returning the warnings.
pub fn import_onnx_full(path: &Path, opts: &ImportOptions) -> Result<Imported> {
    let bytes = std::fs::read(path)
        .map_err(|e| ModelError::new(path, crate::model::unreadable(path, &e)))?;
    import_onnx_bytes(path, &bytes, opts)
}

/// [`import_onnx_full`] on the bytes of an ONNX file; `path` names it in
/// messages and locates external data.
pub fn import_onnx_bytes(path: &Path, bytes: &[u8], opts: &ImportOptions) -> Result<Imported> {
    let err = |m: String| Error::Model(ModelError::new(path, m));
    if bytes.is_empty() {
        return Err(err("the file is empty; it is not an ONNX model".into()));
    }
    let model = proto::ModelProto::decode(bytes).map_err(|e| {
        err(format!(
            "not an ONNX model, or the file is truncated or corrupt: cannot decode it ({e})"
        ))
    })?;
    if model.ir_version.unwrap_or(0) <= 0 || model.graph.is_none() {
        return Err(err(
            "not an ONNX model: it has no IR version or no graph (the file is truncated, corrupt or of another format)"
                .into(),
        ));
    }
    let opset = model
        .opset_import
        .iter()
        .filter(|o| matches!(o.domain.as_deref(), None | Some("") | Some("ai.onnx")))
        .filter_map(|o| o.version)
        .max()
        .ok_or_else(|| err("the model declares no ai.onnx opset".into()))?;
    if !(MIN_OPSET..=MAX_OPSET).contains(&opset) {
        return Err(err(format!(
            "opset {opset} is not supported: advex imports ONNX opsets {MIN_OPSET} to {MAX_OPSET}; re-export the model with one of those (for example torch.onnx.export(..., opset_version=17))"
        )));
    }
    let (conv, out) = convert::Converter::run(path, &model, opset, opts.size)?;
    let [c, _, _] = out.input;
    let classes = match &opts.classes {
        Some(file) => Some(read_classes(file, out.classes)?),
        None => None,
    };
    let per_channel = |what: &str, v: &Option<Vec<f64>>| -> Result<Option<Vec<f64>>> {
        let Some(v) = v else { return Ok(None) };
        if !(v.len() == 1 || v.len() == c as usize) {
            return Err(Error::Usage(format!(
                "--{what} has {} values but the model's input has {c} channels (give 1 or {c})",
                v.len()
            )));
        }
        if v.iter().any(|x| !x.is_finite()) || (what == "std" && v.contains(&0.0)) {
            return Err(Error::Usage(format!(
                "--{what} values must be finite{}",
                if what == "std" { " and non-zero" } else { "" }
            )));
        }
        Ok(Some(v.clone()))
    };
    let mean = per_channel("mean", &opts.mean)?;
    let std = per_channel("std", &opts.std)?;
    let preprocess = PreprocessSpec {
        resize: opts.resize,
        crop: opts.crop,
        interpolation: None,
        mean,
        std,
    };
    let file_name = path
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    let name = opts.name.clone().unwrap_or_else(|| {
        path.file_stem()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_else(|| "model".into())
    });
    let producer = match (&model.producer_name, &model.producer_version) {
        (Some(p), Some(v)) if !p.is_empty() => format!("{p} {v}, "),
        (Some(p), _) if !p.is_empty() => format!("{p}, "),
        _ => String::new(),
    };
    let spec = ModelSpec {
        format: FORMAT_VERSION,
        name: Some(name),
        description: Some(format!(
            "Imported from the ONNX file {file_name} ({producer}opset {opset})."
        )),
        input: out.input,
        preprocess: if preprocess == PreprocessSpec::default() {
            None
        } else {
            Some(preprocess)
        },
        classes,
        nodes: conv.nodes,
        output: Some(out.output),
    };
    Ok(Imported {
        spec,
        tensors: conv.tensors,
        warnings: conv.warnings,
    })
}

fn read_classes(file: &Path, want: usize) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(file).map_err(|e| Error::io(file, e))?;
    let mut names: Vec<String> = text
        .lines()
        .map(|l| l.trim_end_matches('\r').trim().to_string())
        .collect();
    while names.last().is_some_and(|l| l.is_empty()) {
        names.pop();
    }
    if names.len() != want {
        return Err(Error::Usage(format!(
            "{} lists {} class names but the model has {want} outputs (one name per line)",
            file.display(),
            names.len()
        )));
    }
    if let Some(i) = names.iter().position(|n| n.is_empty()) {
        return Err(Error::Usage(format!(
            "{}: line {} is blank; every class needs a name",
            file.display(),
            i + 1
        )));
    }
    Ok(names)
}

impl Imported {
    /// The model file's bytes: safetensors (f32) with the description in
    /// `__metadata__.advex`.
    pub fn to_safetensors(&self) -> Result<Vec<u8>> {
        let json = serde_json::to_string(&self.spec)
            .map_err(|e| Error::Usage(format!("cannot serialise the model description: {e}")))?;
        let mut meta = BTreeMap::new();
        meta.insert(METADATA_KEY.to_string(), json);
        Ok(encode_safetensors(&meta, &self.tensors, Dtype::F32)?)
    }

    /// Loads the result as a [`Model`] (the model module's checks, shape
    /// inference and BatchNorm folding); `path` names it in messages.
    pub fn to_model(&self, path: &Path) -> Result<Model> {
        Ok(Model::from_bytes(path, &self.to_safetensors()?, None)?)
    }
}

/// Loads an ONNX file as a [`Model`] (for `--model x.onnx`): import, then the
/// model module's checks, shape inference and BatchNorm folding.
pub fn load_onnx_model(path: &Path, opts: &ImportOptions) -> Result<Model> {
    import_onnx_full(path, opts)?.to_model(path)
}

/// Converts an ONNX file to an advex model file at `out` (for `advex import`).
/// The result is loaded once to check it before it is written (atomically).
pub fn convert_onnx(path: &Path, out: &Path, opts: &ImportOptions) -> Result<()> {
    let imported = import_onnx_full(path, opts)?;
    imported.to_model(path)?;
    let json = serde_json::to_value(&imported.spec)
        .map_err(|e| Error::Usage(format!("cannot serialise the model description: {e}")))?;
    write_model(out, &json, &imported.tensors, Dtype::F32)?;
    Ok(())
}

/// Parses `--size`: `224`, `224x224` or `224,224` (height then width).
pub fn parse_size(s: &str) -> Result<[u32; 2]> {
    let bad = || {
        Error::Usage(format!(
            "--size `{s}` is not a size: give HxW (for example 224x224) or one number"
        ))
    };
    let parts: Vec<&str> = s.split(['x', 'X', ',']).map(str::trim).collect();
    let nums: Vec<u32> = parts
        .iter()
        .map(|p| p.parse::<u32>().map_err(|_| bad()))
        .collect::<Result<_>>()?;
    match nums[..] {
        [n] if n > 0 => Ok([n, n]),
        [h, w] if h > 0 && w > 0 => Ok([h, w]),
        _ => Err(bad()),
    }
}

/// Parses a comma list of numbers (`--mean 0.485,0.456,0.406`).
pub fn parse_floats(what: &str, s: &str) -> Result<Vec<f64>> {
    s.split(',')
        .map(|p| {
            let p = p.trim();
            p.parse::<f64>()
                .ok()
                .filter(|v| v.is_finite())
                .ok_or_else(|| {
                    Error::Usage(format!(
                        "--{what}: `{p}` is not a number (give a comma list such as 0.485,0.456,0.406)"
                    ))
                })
        })
        .collect()
}
