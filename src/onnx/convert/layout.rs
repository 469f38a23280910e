//! Converters for nodes that move values around: Reshape, Flatten,
//! Transpose, Slice, Concat, Pad (run-time values carry a map to their
//! source when the layout differs).

use super::*;

impl<'a> Converter<'a> {
    /// A reshape-like op on a run-time value: nothing, or a flatten.
    pub(super) fn relayout(
        &mut self,
        n: &NodeProto,
        idx: usize,
        x: &Dyn,
        dims: Vec<usize>,
    ) -> R<Vec<Val>> {
        if x.map.is_some() {
            let mut d = x.clone();
            d.dims = dims;
            return Ok(vec![Val::Dyn(simplify(d))]);
        }
        let Some(adv) = adv_of(&dims) else {
            // The graph's batch is 1: a reshape that merges it into other
            // dimensions (PyTorch's as_strided, decomposed) keeps every
            // element of the one item; carry the value as an identity map
            // until a layout advex runs gives it back.
            let count = numel(&x.dims);
            if count.is_some() && count == numel(&dims) && count <= Some(MAX_MAP) {
                let mut d = x.clone();
                d.map = Some(Rc::new(
                    (0..count.unwrap_or(0) as u32)
                        .map(|i| vec![(i, 1.0)])
                        .collect(),
                ));
                d.dims = dims;
                d.origin = Origin::Other;
                return Ok(vec![Val::Dyn(simplify(d))]);
            }
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

    /// Applies a selection (Transpose, Gather, ...) to a run-time value by
    /// running it on the element indices.
    pub(super) fn rearrange(
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
    pub(super) fn slice_args(
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

    pub(super) fn concat(&mut self, n: &NodeProto, idx: usize) -> R<Vec<Val>> {
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

    pub(super) fn pad(&mut self, n: &NodeProto) -> R<Vec<Val>> {
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
pub(super) fn simplify(mut d: Dyn) -> Dyn {
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

pub(super) fn add_pads(a: [u32; 4], b: [u32; 4]) -> R<[u32; 4]> {
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
pub(super) fn strip(c: &Const) -> Const {
    Const {
        origin: None,
        ..c.clone()
    }
}
