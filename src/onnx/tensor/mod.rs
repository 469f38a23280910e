//! Constant tensors: decoding `TensorProto`s (inline, raw or external data);
//! [`eval`] evaluates the constant sub-graphs exporters emit (shape
//! arithmetic, weight transposes, ...) on the CPU.

mod eval;

pub(crate) use eval::*;

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};

use super::proto::{tensor_proto, TensorProto};

/// Most elements a constant may hold (1 GiB of f32): guards every allocation
/// sized by the file.
pub(crate) const MAX_CONST_ELEMS: usize = 1 << 28;

/// A constant's values.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Data {
    F32(Vec<f32>),
    I64(Vec<i64>),
}

/// A constant tensor, row-major.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Const {
    pub dims: Vec<usize>,
    pub data: Data,
    /// The initializer this constant is, unchanged (its name is reused for the
    /// advex tensor).
    pub origin: Option<String>,
}

pub(crate) fn numel(dims: &[usize]) -> Option<usize> {
    dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d))
}

pub(crate) fn fmt_dims<T: std::fmt::Display>(dims: &[T]) -> String {
    let parts: Vec<String> = dims.iter().map(|d| d.to_string()).collect();
    format!("[{}]", parts.join(", "))
}

impl Const {
    pub fn f32(dims: Vec<usize>, v: Vec<f32>) -> Const {
        Const {
            dims,
            data: Data::F32(v),
            origin: None,
        }
    }

    pub fn i64(dims: Vec<usize>, v: Vec<i64>) -> Const {
        Const {
            dims,
            data: Data::I64(v),
            origin: None,
        }
    }

    pub fn len(&self) -> usize {
        match &self.data {
            Data::F32(v) => v.len(),
            Data::I64(v) => v.len(),
        }
    }

    /// Values as f32 (integers converted).
    pub fn to_f32(&self) -> Vec<f32> {
        match &self.data {
            Data::F32(v) => v.clone(),
            Data::I64(v) => v.iter().map(|&x| x as f32).collect(),
        }
    }

    /// Values as f64 (integers converted).
    pub fn to_f64(&self) -> Vec<f64> {
        match &self.data {
            Data::F32(v) => v.iter().map(|&x| x as f64).collect(),
            Data::I64(v) => v.iter().map(|&x| x as f64).collect(),
        }
    }

    /// Values as integers; floats must be whole numbers.
    pub fn to_i64(&self) -> Result<Vec<i64>, String> {
        match &self.data {
            Data::I64(v) => Ok(v.clone()),
            Data::F32(v) => v
                .iter()
                .map(|&x| {
                    if x.is_finite() && x.fract() == 0.0 && x.abs() < 9.0e15 {
                        Ok(x as i64)
                    } else {
                        Err(format!("expected integers, found {x}"))
                    }
                })
                .collect(),
        }
    }

    /// The single value of a one-element constant, as f64.
    pub fn scalar(&self) -> Option<f64> {
        if self.len() == 1 {
            self.to_f64().first().copied()
        } else {
            None
        }
    }

    fn with_data_like(&self, dims: Vec<usize>, pick: &[usize]) -> Const {
        let data = match &self.data {
            Data::F32(v) => Data::F32(pick.iter().map(|&i| v[i]).collect()),
            Data::I64(v) => Data::I64(pick.iter().map(|&i| v[i]).collect()),
        };
        Const {
            dims,
            data,
            origin: None,
        }
    }

    fn reshaped(&self, dims: Vec<usize>) -> Const {
        Const {
            dims,
            data: self.data.clone(),
            origin: None,
        }
    }
}

/// ONNX data type names, for messages.
pub(crate) fn dtype_name(t: i32) -> String {
    match tensor_proto::DataType::try_from(t) {
        Ok(d) => d.as_str_name().to_string(),
        Err(_) => format!("data type {t}"),
    }
}

/// Reads external tensor data files (`data_location: EXTERNAL`) relative to the
/// model's folder, each file once.
pub(crate) struct ExternalData {
    dir: PathBuf,
    files: HashMap<String, Vec<u8>>,
}

impl ExternalData {
    pub fn new(model_path: &Path) -> Self {
        ExternalData {
            dir: model_path
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_default(),
            files: HashMap::new(),
        }
    }

    fn read(&mut self, t: &TensorProto) -> Result<Vec<u8>, String> {
        let mut location = None;
        let mut offset = 0u64;
        let mut length = None;
        for e in &t.external_data {
            let v = e.value.as_deref().unwrap_or("");
            match e.key.as_deref().unwrap_or("") {
                "location" => location = Some(v.to_string()),
                "offset" => {
                    offset = v
                        .parse()
                        .map_err(|_| format!("external data offset `{v}` is not a number"))?
                }
                "length" => {
                    length = Some(
                        v.parse::<u64>()
                            .map_err(|_| format!("external data length `{v}` is not a number"))?,
                    )
                }
                _ => {}
            }
        }
        let location =
            location.ok_or("its data is external but no `location` (file name) is given")?;
        let rel = Path::new(&location);
        if rel
            .components()
            .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
        {
            return Err(format!(
                "external data file `{location}` must be a relative path inside the model's folder"
            ));
        }
        if !self.files.contains_key(&location) {
            let path = self.dir.join(rel);
            let bytes = std::fs::read(&path).map_err(|e| {
                format!(
                    "cannot read its external data file {}: {e} (keep the .onnx file next to its data file)",
                    path.display()
                )
            })?;
            self.files.insert(location.clone(), bytes);
        }
        let bytes = &self.files[&location];
        let start = offset;
        let end = match length {
            Some(l) => start.checked_add(l),
            None => Some(bytes.len() as u64),
        };
        match end {
            Some(end) if start <= end && end <= bytes.len() as u64 => {
                Ok(bytes[start as usize..end as usize].to_vec())
            }
            _ => Err(format!(
                "external data range offset {offset}, length {} runs past the end of `{location}` ({} bytes)",
                length.map_or("(rest)".to_string(), |l| l.to_string()),
                bytes.len()
            )),
        }
    }
}

/// Decodes a `TensorProto` into f32 (FLOAT, DOUBLE, FLOAT16, BFLOAT16) or i64
/// (INT64, INT32, INT16, INT8, UINT8, UINT16, UINT32, BOOL) values, checking the
/// data length against `dims`. Errors are plain messages; the caller names the
/// tensor.
pub(crate) fn decode_tensor(t: &TensorProto, ext: &mut ExternalData) -> Result<Const, String> {
    use tensor_proto::DataType as D;
    let mut dims = Vec::with_capacity(t.dims.len());
    for &d in &t.dims {
        if d < 0 {
            return Err(format!(
                "dims {} contain a negative size",
                fmt_dims(&t.dims)
            ));
        }
        dims.push(
            usize::try_from(d).map_err(|_| format!("dims {} are too large", fmt_dims(&t.dims)))?,
        );
    }
    let n = numel(&dims)
        .filter(|&n| n <= MAX_CONST_ELEMS)
        .ok_or_else(|| format!("dims {} are too large", fmt_dims(&t.dims)))?;
    let dt = t.data_type.unwrap_or(0);
    let dtype = D::try_from(dt).map_err(|_| format!("unknown data type {dt}"))?;
    let elem = match dtype {
        D::Float | D::Int32 | D::Uint32 => 4,
        D::Double | D::Int64 | D::Uint64 => 8,
        D::Float16 | D::Bfloat16 | D::Int16 | D::Uint16 => 2,
        D::Int8 | D::Uint8 | D::Bool => 1,
        _ => {
            return Err(format!(
                "data type {} is not supported (float, double, float16, bfloat16 and integers are)",
                dtype.as_str_name()
            ))
        }
    };
    let external = t.data_location == Some(tensor_proto::DataLocation::External as i32);
    if t.segment.is_some() {
        return Err("segmented tensors are not supported".into());
    }
    let raw = if external {
        Some(ext.read(t)?)
    } else {
        t.raw_data.clone()
    };
    let wrong = |have: usize, what: &str| {
        format!(
            "dims {} need {n} values but {what} holds {have}",
            fmt_dims(&t.dims)
        )
    };
    if let Some(raw) = raw {
        let want = n * elem;
        if raw.len() != want {
            return Err(format!(
                "dims {} of {} need {want} bytes of data but raw_data holds {}",
                fmt_dims(&t.dims),
                dtype.as_str_name(),
                raw.len()
            ));
        }
        let f = |f: fn(&[u8]) -> f32| Data::F32(raw.chunks_exact(elem).map(f).collect());
        let i = |f: fn(&[u8]) -> i64| Data::I64(raw.chunks_exact(elem).map(f).collect());
        let data = match dtype {
            D::Float => f(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
            D::Double => {
                f(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32)
            }
            D::Float16 => f(|c| half::f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32()),
            D::Bfloat16 => f(|c| half::bf16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32()),
            D::Int64 => i(|c| i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]])),
            D::Uint64 => i(|c| {
                u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]])
                    .min(i64::MAX as u64) as i64
            }),
            D::Int32 => i(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as i64),
            D::Uint32 => i(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]) as i64),
            D::Int16 => i(|c| i16::from_le_bytes([c[0], c[1]]) as i64),
            D::Uint16 => i(|c| u16::from_le_bytes([c[0], c[1]]) as i64),
            D::Int8 => i(|c| c[0] as i8 as i64),
            D::Uint8 | D::Bool => i(|c| c[0] as i64),
            _ => unreachable!("dtype filtered above"),
        };
        return Ok(Const {
            dims,
            data,
            origin: None,
        });
    }
    let data = match dtype {
        D::Float => {
            if t.float_data.len() != n {
                return Err(wrong(t.float_data.len(), "float_data"));
            }
            Data::F32(t.float_data.clone())
        }
        D::Double => {
            if t.double_data.len() != n {
                return Err(wrong(t.double_data.len(), "double_data"));
            }
            Data::F32(t.double_data.iter().map(|&x| x as f32).collect())
        }
        D::Float16 | D::Bfloat16 => {
            if t.int32_data.len() != n {
                return Err(wrong(t.int32_data.len(), "int32_data"));
            }
            Data::F32(
                t.int32_data
                    .iter()
                    .map(|&b| {
                        if dtype == D::Float16 {
                            half::f16::from_bits(b as u16).to_f32()
                        } else {
                            half::bf16::from_bits(b as u16).to_f32()
                        }
                    })
                    .collect(),
            )
        }
        D::Int64 => {
            if t.int64_data.len() != n {
                return Err(wrong(t.int64_data.len(), "int64_data"));
            }
            Data::I64(t.int64_data.clone())
        }
        D::Uint64 | D::Uint32 => {
            if t.uint64_data.len() != n {
                return Err(wrong(t.uint64_data.len(), "uint64_data"));
            }
            Data::I64(
                t.uint64_data
                    .iter()
                    .map(|&x| x.min(i64::MAX as u64) as i64)
                    .collect(),
            )
        }
        _ => {
            if t.int32_data.len() != n {
                return Err(wrong(t.int32_data.len(), "int32_data"));
            }
            Data::I64(t.int32_data.iter().map(|&x| x as i64).collect())
        }
    };
    Ok(Const {
        dims,
        data,
        origin: None,
    })
}
