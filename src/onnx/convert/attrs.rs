//! Attribute and shape helpers shared by the converters.

use super::*;

/// Per-item advex shape of ONNX dims (batch first, 1): `[1, C, H, W]` is
/// `[C, H, W]`; any other rank is flat, `[numel, 1, 1]`.
pub(super) fn adv_of(dims: &[usize]) -> Option<[usize; 3]> {
    if dims.first() != Some(&1) {
        return None;
    }
    if dims.len() == 4 {
        Some([dims[1], dims[2], dims[3]])
    } else {
        Some([numel(dims)?, 1, 1])
    }
}

pub(super) fn u32_of(v: usize, what: &str) -> R<u32> {
    u32::try_from(v).map_err(|_| Fail::Invalid(format!("{what} {v} is too large")))
}

pub(super) fn shape_of(adv: [usize; 3]) -> R<Shape> {
    Ok(Shape::new(
        1,
        u32_of(adv[0], "channel count")?,
        u32_of(adv[1], "height")?,
        u32_of(adv[2], "width")?,
    ))
}

/// f32 attribute values as the decimal they were written as (1e-5, not
/// 9.99999974738e-6).
pub(super) fn f64_of(v: f32) -> f64 {
    format!("{v}").parse().unwrap_or(v as f64)
}

pub(super) fn attr<'n>(n: &'n NodeProto, name: &str) -> Option<&'n AttributeProto> {
    n.attribute.iter().find(|a| a.name.as_deref() == Some(name))
}

pub(super) fn attr_i(n: &NodeProto, name: &str, default: i64) -> i64 {
    attr(n, name).and_then(|a| a.i).unwrap_or(default)
}

pub(super) fn attr_f(n: &NodeProto, name: &str, default: f32) -> f32 {
    attr(n, name).and_then(|a| a.f).unwrap_or(default)
}

pub(super) fn attr_ints(n: &NodeProto, name: &str) -> Option<Vec<i64>> {
    attr(n, name).map(|a| a.ints.clone())
}

pub(super) fn attr_s(n: &NodeProto, name: &str) -> Option<String> {
    attr(n, name)
        .and_then(|a| a.s.as_ref())
        .map(|s| String::from_utf8_lossy(s).into_owned())
}

/// Two positive values (kernel, stride, dilation) from an attribute.
pub(super) fn hw_attr(n: &NodeProto, name: &str, default: Option<[u32; 2]>) -> R<[u32; 2]> {
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
