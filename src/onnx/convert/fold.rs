//! Constant folding: ops evaluated on the CPU when every input is constant.

use super::*;

impl<'a> Converter<'a> {
    /// Evaluates a node whose inputs are all constants.
    pub(super) fn fold(&self, n: &NodeProto) -> R<Const> {
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
            "Mod" => t::modulo(&cv(0)?, &cv(1)?, attr_i(n, "fmod", 0) != 0),
            "Equal" | "Less" | "Greater" => t::compare(op, &cv(0)?, &cv(1)?),
            "Not" => t::not(&cv(0)?),
            "Where" => t::where_(&cv(0)?, &cv(1)?, &cv(2)?),
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

    pub(super) fn constant(&self, n: &NodeProto) -> R<Const> {
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
}
