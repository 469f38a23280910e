//! Channels-last views, as ConvNeXt is exported: `Transpose(perm [0, 2, 3, 1])`
//! of an NCHW value, then `LayerNormalization` over the last axis, `MatMul`
//! by a `[C, K]` constant (+ `Add` of a bias), element-wise ops, and
//! `Transpose(perm [0, 3, 1, 2])` back. advex keeps the data NCHW: the view
//! is the same tensor with `Dyn::nhwc` set, the layer norm becomes a
//! `layer_norm` over channels, the MatMul a pointwise `conv2d`, and the
//! transposes cost nothing. Any other op reading a view sees it as the
//! rearrangement it is (`materialize`), as before these views existed.

use super::*;

/// Element-wise ops that keep a channels-last view a view.
pub(super) const KEEPS_VIEW: [&str; 15] = [
    "Relu",
    "Sigmoid",
    "HardSigmoid",
    "HardSwish",
    "LeakyRelu",
    "Clip",
    "Gelu",
    "Erf",
    "Add",
    "Sub",
    "Mul",
    "Div",
    "Dropout",
    "Identity",
    "LayerNormalization",
];

impl Converter<'_> {
    /// The view as a rearrangement map of its source (for the ops that fold
    /// maps into a following linear layer).
    pub(super) fn materialize(d: Dyn) -> R<Dyn> {
        if !d.nhwc {
            return Ok(d);
        }
        let [c, h, w] = d.adv;
        if c * h * w > MAX_MAP {
            return unsup("the channels-last value is too large to rearrange");
        }
        let mut rows = Vec::with_capacity(c * h * w);
        for y in 0..h {
            for x in 0..w {
                for k in 0..c {
                    rows.push(vec![((k * h * w + y * w + x) as u32, 1.0)]);
                }
            }
        }
        let mut out = d;
        out.nhwc = false;
        out.map = Some(Rc::new(rows));
        out.origin = Origin::Other;
        Ok(out)
    }

    /// `Transpose` to or from channels-last, when it is one: `None` otherwise.
    pub(super) fn transpose_view(&mut self, n: &NodeProto) -> R<Option<Vec<Val>>> {
        let perm = attr_ints(n, "perm");
        let d = match self.get(Self::inp(n, 0).unwrap_or(""))? {
            Val::Dyn(d) => d,
            _ => return Ok(None),
        };
        if d.map.is_some() || d.pad != [0; 4] || d.dims.len() != 4 {
            return Ok(None);
        }
        let [c, h, w] = d.adv;
        match perm.as_deref() {
            Some([0, 2, 3, 1]) if !d.nhwc && d.dims == [1, c, h, w] => {
                let mut v = d;
                v.dims = vec![1, h, w, c];
                v.nhwc = true;
                v.origin = Origin::Other;
                Ok(Some(vec![Val::Dyn(v)]))
            }
            Some([0, 3, 1, 2]) if d.nhwc => {
                let mut v = d;
                v.dims = vec![1, c, h, w];
                v.nhwc = false;
                v.origin = Origin::Other;
                Ok(Some(vec![Val::Dyn(v)]))
            }
            _ => Ok(None),
        }
    }

    /// `LayerNormalization` over channels: the last axis of a channels-last
    /// view, or the features of a `[1, K]` value.
    pub(super) fn layer_norm(&mut self, n: &NodeProto, idx: usize) -> R<Vec<Val>> {
        let d = match self.get(Self::inp(n, 0).unwrap_or(""))? {
            Val::Dyn(d) => d,
            Val::Poison => return Err(Fail::Poisoned),
            _ => return unsup("LayerNormalization of a constant"),
        };
        let r = d.dims.len() as i64;
        let axis = attr_i(n, "axis", -1);
        let last = axis == -1 || axis == r - 1;
        // A value of one position whose map is the identity (a pooled
        // [1, C, 1, 1] that went through reshapes and transposes to
        // [1, 1, 1, C]) normalises over its channels too.
        let pooled = d.map.as_ref().is_some_and(|m| {
            d.adv[1] == 1
                && d.adv[2] == 1
                && d.dims.last() == Some(&d.adv[0])
                && m.len() == d.adv[0]
                && m.iter()
                    .enumerate()
                    .all(|(i, r)| r.len() == 1 && r[0].0 as usize == i && r[0].1 == 1.0)
        });
        let channels = if d.nhwc && last && d.pad == [0; 4] {
            d.adv[0]
        } else if !d.nhwc && d.map.is_none() && r == 2 && last {
            d.dims[1]
        } else if pooled && last {
            d.adv[0]
        } else {
            return unsup(format!(
                "LayerNormalization over axis {axis} of {} (advex normalises over channels: \
                 the last axis of a channels-last value, as ConvNeXt and its exporters write it, \
                 or the features of a [N, K] value)",
                fmt_dims(&d.dims)
            ));
        };
        if n.output.len() > 1 && n.output[1..].iter().any(|o| !o.is_empty()) {
            return unsup(
                "LayerNormalization's mean and inverse deviation outputs are not supported",
            );
        }
        let base = self.label(n, idx);
        let per_channel = |this: &Self, k: usize, what: &str| -> R<Option<Vec<f32>>> {
            match this.opt_const(n, k, what)? {
                None => Ok(None),
                Some(c) => {
                    let v = c.to_f32();
                    if v.len() == channels {
                        Ok(Some(v))
                    } else if v.len() == 1 {
                        Ok(Some(vec![v[0]; channels]))
                    } else {
                        invalid(format!(
                            "its {what} has {} values for {channels} channels",
                            v.len()
                        ))
                    }
                }
            }
        };
        let scale = per_channel(self, 1, "scale")?.unwrap_or_else(|| vec![1.0; channels]);
        let bias = per_channel(self, 2, "bias")?.unwrap_or_else(|| vec![0.0; channels]);
        let w = self.new_tensor(&format!("{base}.weight"), vec![channels], scale);
        let b = self.new_tensor(&format!("{base}.bias"), vec![channels], bias);
        let mut spec = NodeSpec::new("", "layer_norm", &[&d.src]);
        spec.weight = Some(w);
        spec.bias = Some(b);
        spec.eps = Some(f64_of(attr_f(n, "epsilon", 1e-5)));
        let (name, _) = self.emit(n, idx, spec);
        let mut out = Self::out_dyn(name, vec![1, d.adv[0], d.adv[1], d.adv[2]])?;
        out.dims = d.dims.clone();
        out.adv = d.adv;
        out.nhwc = d.nhwc;
        // the pooled value keeps its (identity) map: the same dims as before
        out.map = if pooled { d.map.clone() } else { None };
        Ok(vec![Val::Dyn(out)])
    }

    /// `MatMul` of a channels-last view by a constant `[C, K]`: a pointwise
    /// convolution (weight `[K, C, 1, 1]`), its output a view again. `None`
    /// when the input is no view.
    pub(super) fn matmul_view(&mut self, n: &NodeProto, idx: usize) -> R<Option<Vec<Val>>> {
        let d = match self.get(Self::inp(n, 0).unwrap_or(""))? {
            Val::Dyn(d) if d.nhwc => d,
            _ => return Ok(None),
        };
        let b = self.const_in(n, 1, "weights")?;
        let [c, h, w] = d.adv;
        if b.dims.len() != 2 || b.dims[0] != c {
            return unsup(format!(
                "MatMul of the channels-last {} by {} (only a constant [C, K] is supported)",
                fmt_dims(&d.dims),
                fmt_dims(&b.dims)
            ));
        }
        let k = b.dims[1];
        let wt = t::transpose(&b, None)?;
        let base = self.label(n, idx);
        let wname = self.new_tensor(&format!("{base}.weight"), vec![k, c, 1, 1], wt.to_f32());
        let mut spec = NodeSpec::new("", "conv2d", &[&d.src]);
        spec.weight = Some(wname);
        let (name, i) = self.emit(n, idx, spec);
        let mut out = Self::out_dyn(name, vec![1, k, h, w])?;
        out.dims = vec![1, h, w, k];
        out.nhwc = true;
        out.origin = Origin::Linear(i, n.output.first().cloned().unwrap_or_default());
        Ok(Some(vec![Val::Dyn(out)]))
    }
}
