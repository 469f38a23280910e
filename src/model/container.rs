//! The safetensors container: a defensive header parser (every malformed,
//! truncated or lying header is an error naming the file and tensor, never a
//! panic), dtype conversion to f32, and a writer.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use serde::Deserialize;
use serde_json::Value;

use crate::error::ModelError;

/// Key of `__metadata__` that holds the model description.
pub const METADATA_KEY: &str = "advex";

/// One tensor as the header describes it, its bytes already bounds-checked.
pub(crate) struct RawTensor<'a> {
    pub dtype: String,
    pub shape: Vec<usize>,
    pub data: &'a [u8],
}

/// A parsed safetensors file.
pub(crate) struct Container<'a> {
    pub metadata: BTreeMap<String, String>,
    pub tensors: HashMap<String, RawTensor<'a>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TensorHeader {
    dtype: String,
    shape: Vec<u64>,
    data_offsets: [u64; 2],
}

/// Bits per element of the dtypes safetensors defines; `None` for unknown names.
fn dtype_bits(dtype: &str) -> Option<u64> {
    Some(match dtype {
        "F4" => 4,
        "F6_E2M3" | "F6_E3M2" => 6,
        "BOOL" | "U8" | "I8" | "F8_E5M2" | "F8_E4M3" | "F8_E8M0" => 8,
        "I16" | "U16" | "F16" | "BF16" => 16,
        "I32" | "U32" | "F32" => 32,
        "I64" | "U64" | "F64" => 64,
        _ => return None,
    })
}

pub(crate) fn fmt_dims<T: std::fmt::Display>(dims: &[T]) -> String {
    let parts: Vec<String> = dims.iter().map(|d| d.to_string()).collect();
    format!("[{}]", parts.join(", "))
}

/// Parses the header and checks every tensor's byte range against the file.
pub(crate) fn parse_container<'a>(
    file: &Path,
    bytes: &'a [u8],
) -> Result<Container<'a>, ModelError> {
    let err = |m: String| ModelError::new(file, m);
    if bytes.len() < 8 {
        return Err(err(format!(
            "the file is {} bytes long, too short for a safetensors file (it starts with an 8-byte header length)",
            bytes.len()
        )));
    }
    let mut len8 = [0u8; 8];
    len8.copy_from_slice(&bytes[..8]);
    let n = u64::from_le_bytes(len8);
    let rest = (bytes.len() - 8) as u64;
    if n > rest {
        return Err(err(format!(
            "the header length {n} runs past the end of the file ({} bytes): the file is truncated or not a safetensors file",
            bytes.len()
        )));
    }
    let n = n as usize;
    let header = std::str::from_utf8(&bytes[8..8 + n]).map_err(|e| {
        err(format!(
            "the safetensors header is not valid UTF-8 (bad byte at header offset {}): the file is corrupt or not a safetensors file",
            e.valid_up_to()
        ))
    })?;
    let header: Value = serde_json::from_str(header).map_err(|e| {
        err(format!(
            "the safetensors header is not valid JSON: {e}; the file is corrupt or not a safetensors file"
        ))
    })?;
    let Value::Object(entries) = header else {
        return Err(err("the safetensors header is not a JSON object".into()));
    };
    let data = &bytes[8 + n..];
    let mut metadata = BTreeMap::new();
    let mut tensors = HashMap::new();
    for (name, entry) in &entries {
        if name == "__metadata__" {
            let Value::Object(m) = entry else {
                return Err(err(
                    "`__metadata__` in the safetensors header must be an object of strings".into(),
                ));
            };
            for (k, v) in m {
                let Value::String(s) = v else {
                    return Err(err(format!(
                        "`__metadata__.{k}` in the safetensors header must be a string (the model description is stored as a JSON string)"
                    )));
                };
                metadata.insert(k.clone(), s.clone());
            }
            continue;
        }
        let terr = |m: String| ModelError::new(file, m).tensor(name.clone());
        let info = TensorHeader::deserialize(entry)
            .map_err(|e| terr(format!("bad entry in the safetensors header: {e}")))?;
        let [start, end] = info.data_offsets;
        if end < start {
            return Err(terr(format!(
                "data_offsets [{start}, {end}] end before they start"
            )));
        }
        if end > data.len() as u64 {
            return Err(terr(format!(
                "data_offsets [{start}, {end}] run past the end of the data section ({} bytes): the file is truncated or its header is wrong",
                data.len()
            )));
        }
        let mut shape = Vec::with_capacity(info.shape.len());
        for &d in &info.shape {
            match usize::try_from(d) {
                Ok(d) => shape.push(d),
                Err(_) => {
                    return Err(terr(format!(
                        "shape {} is too large",
                        fmt_dims(&info.shape)
                    )))
                }
            }
        }
        if let Some(bits) = dtype_bits(&info.dtype) {
            let want = info
                .shape
                .iter()
                .try_fold(1u64, |a, &d| a.checked_mul(d))
                .and_then(|numel| numel.checked_mul(bits))
                .map(|b| b.div_ceil(8));
            if want != Some(end - start) {
                let want = match want {
                    Some(w) => format!("{w} bytes"),
                    None => "an impossible size".to_string(),
                };
                return Err(terr(format!(
                    "the header says {} {} ({want}) but data_offsets [{start}, {end}] hold {} bytes",
                    info.dtype,
                    fmt_dims(&info.shape),
                    end - start
                )));
            }
        }
        tensors.insert(
            name.clone(),
            RawTensor {
                dtype: info.dtype,
                shape,
                data: &data[start as usize..end as usize],
            },
        );
    }
    Ok(Container { metadata, tensors })
}

/// Converts a tensor to f32 (F32, F16, BF16 and F64 are accepted) and checks
/// that every value is finite. Errors name `node` and `tensor`.
pub(crate) fn tensor_to_f32(
    file: &Path,
    node: &str,
    tensor: &str,
    raw: &RawTensor,
) -> Result<Vec<f32>, ModelError> {
    let terr = |m: String| ModelError::new(file, m).node(node).tensor(tensor);
    let values: Vec<f32> = match raw.dtype.as_str() {
        "F32" => raw
            .data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        "F16" => raw
            .data
            .chunks_exact(2)
            .map(|c| half::f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32())
            .collect(),
        "BF16" => raw
            .data
            .chunks_exact(2)
            .map(|c| half::bf16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32())
            .collect(),
        "F64" => {
            let mut out = Vec::with_capacity(raw.data.len() / 8);
            for (i, c) in raw.data.chunks_exact(8).enumerate() {
                let mut b = [0u8; 8];
                b.copy_from_slice(c);
                let v = f64::from_le_bytes(b);
                if v.is_finite() && !(v as f32).is_finite() {
                    return Err(terr(format!(
                        "value {v:e} at index {i}{} does not fit in f32",
                        multi_index(i, &raw.shape)
                    )));
                }
                out.push(v as f32);
            }
            out
        }
        other => {
            return Err(terr(format!(
                "dtype {other} is not supported: tensors must be F32, F16, BF16 or F64"
            )))
        }
    };
    let numel: usize = raw.shape.iter().product();
    if values.len() != numel {
        // parse_container checked the byte count; this guards the invariant anyway.
        return Err(terr(format!(
            "holds {} values but its shape {} needs {numel}",
            values.len(),
            fmt_dims(&raw.shape)
        )));
    }
    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
        return Err(terr(format!(
            "value {} at index {i}{} is not finite (NaN or infinity)",
            values[i],
            multi_index(i, &raw.shape)
        )));
    }
    Ok(values)
}

/// ` (element [a, b, c])` for multi-dimensional tensors.
fn multi_index(mut i: usize, shape: &[usize]) -> String {
    if shape.len() < 2 || shape.contains(&0) {
        return String::new();
    }
    let mut idx = vec![0usize; shape.len()];
    for (k, &d) in shape.iter().enumerate().rev() {
        idx[k] = i % d;
        i /= d;
    }
    format!(" (element {})", fmt_dims(&idx))
}

/// Storage dtype for [`write_model`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dtype {
    F32,
    F16,
    BF16,
}

struct WriteView {
    dtype: safetensors::Dtype,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

impl safetensors::View for &WriteView {
    fn dtype(&self) -> safetensors::Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.bytes)
    }
    fn data_len(&self) -> usize {
        self.bytes.len()
    }
}

/// Encodes tensors (name, shape, values) as a safetensors file in memory, with
/// `metadata` (if any) stored under `__metadata__`. Values are rounded to
/// `dtype` (round to nearest even); nothing is checked for finiteness.
pub fn encode_safetensors(
    metadata: &BTreeMap<String, String>,
    tensors: &[(String, Vec<usize>, Vec<f32>)],
    dtype: Dtype,
) -> Result<Vec<u8>, ModelError> {
    let mut views = Vec::with_capacity(tensors.len());
    for (name, shape, values) in tensors {
        let numel = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        if numel != Some(values.len()) {
            return Err(ModelError::new(
                "<writer>",
                format!(
                    "shape {} does not hold {} values",
                    fmt_dims(shape),
                    values.len()
                ),
            )
            .tensor(name.clone()));
        }
        let (st, bytes) = match dtype {
            Dtype::F32 => (
                safetensors::Dtype::F32,
                values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            ),
            Dtype::F16 => (
                safetensors::Dtype::F16,
                values
                    .iter()
                    .flat_map(|&v| half::f16::from_f32(v).to_bits().to_le_bytes())
                    .collect(),
            ),
            Dtype::BF16 => (
                safetensors::Dtype::BF16,
                values
                    .iter()
                    .flat_map(|&v| half::bf16::from_f32(v).to_bits().to_le_bytes())
                    .collect(),
            ),
        };
        views.push((
            name.clone(),
            WriteView {
                dtype: st,
                shape: shape.clone(),
                bytes,
            },
        ));
    }
    let info: HashMap<String, String> = metadata
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let info = if info.is_empty() { None } else { Some(info) };
    safetensors::serialize(views.iter().map(|(n, v)| (n.as_str(), v)), info)
        .map_err(|e| ModelError::new("<writer>", format!("cannot encode safetensors: {e}")))
}

/// Writes bytes to `path` through a temporary file in the same folder and a
/// rename ([`crate::data::write_atomic`]), so a crash never leaves a
/// half-written file.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ModelError> {
    crate::data::write_atomic(path, bytes)
        .map_err(|e| ModelError::new(path, format!("cannot write: {e}")))
}

/// Writes a plain safetensors file (a state_dict; `metadata` goes to `__metadata__`).
pub fn write_safetensors(
    path: &Path,
    metadata: &BTreeMap<String, String>,
    tensors: &[(String, Vec<usize>, Vec<f32>)],
    dtype: Dtype,
) -> Result<(), ModelError> {
    let bytes = encode_safetensors(metadata, tensors, dtype).map_err(|mut e| {
        e.file = path.to_path_buf();
        e
    })?;
    write_atomic(path, &bytes)
}

/// Writes a complete model file: the tensors and, under `__metadata__.advex`,
/// the model description `spec_json` (a [`crate::model::ModelSpec`] serialised
/// with `serde_json::to_value`, or hand-written JSON). The description is not
/// validated here; [`crate::model::Model::load`] does that.
pub fn write_model(
    path: &Path,
    spec_json: &Value,
    tensors: &[(String, Vec<usize>, Vec<f32>)],
    dtype: Dtype,
) -> Result<(), ModelError> {
    let mut metadata = BTreeMap::new();
    metadata.insert(METADATA_KEY.to_string(), spec_json.to_string());
    write_safetensors(path, &metadata, tensors, dtype)
}
