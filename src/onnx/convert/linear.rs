//! Converters for Gemm and MatMul (linear layers, also through a reshape).

use super::*;

impl<'a> Converter<'a> {
    /// A linear node from `x` ([1, K]) with weight `[out, K]`.
    pub(super) fn linear(
        &mut self,
        n: &NodeProto,
        idx: usize,
        x: &Dyn,
        weight: String,
        bias: Option<String>,
        out: usize,
    ) -> R<Vec<Val>> {
        let mut spec = NodeSpec::new("", "linear", &[&x.src]);
        spec.weight = Some(weight);
        spec.bias = bias;
        let (name, i) = self.emit(n, idx, spec);
        let mut d = Self::out_dyn(name, vec![1, out])?;
        d.origin = Origin::Linear(i, n.output.first().cloned().unwrap_or_default());
        Ok(vec![Val::Dyn(d)])
    }

    pub(super) fn gemm(&mut self, n: &NodeProto, idx: usize) -> R<Vec<Val>> {
        let x = self.dyn_in_any(n, 0)?;
        let b = self.const_in(n, 1, "weights")?;
        let c = self.opt_const(n, 2, "bias")?;
        if attr_i(n, "transA", 0) != 0 {
            return unsup("transA = 1 (the run-time input transposed) is not supported");
        }
        if x.dims.len() != 2 || b.dims.len() != 2 {
            return invalid(format!(
                "Gemm needs 2-D operands, got {} and {}",
                fmt_dims(&x.dims),
                fmt_dims(&b.dims)
            ));
        }
        let trans_b = attr_i(n, "transB", 0) != 0;
        let (alpha, beta) = (attr_f(n, "alpha", 1.0), attr_f(n, "beta", 1.0));
        let k = x.dims[1];
        let (bk, out) = if trans_b {
            (b.dims[1], b.dims[0])
        } else {
            (b.dims[0], b.dims[1])
        };
        if bk != k {
            return invalid(format!(
                "weights {} do not match the input {} (transB = {})",
                fmt_dims(&b.dims),
                fmt_dims(&x.dims),
                trans_b as u8
            ));
        }
        let base = self.label(n, idx);
        let bias = |this: &mut Self, c: Option<Rc<Const>>| -> R<Option<String>> {
            Ok(match c {
                None => None,
                Some(c) if beta == 1.0 && c.dims == [out] => {
                    Some(this.tensor_of(&c, &format!("{base}.bias")))
                }
                Some(c) => {
                    let v = t::expand_f32(&c, &[1, out])
                        .map_err(|m| Fail::Invalid(format!("bias: {m}")))?;
                    let data = v.iter().map(|v| v * beta).collect();
                    Some(this.new_tensor(&format!("{base}.bias"), vec![out], data))
                }
            })
        };
        if x.map.is_some() {
            let bt = if trans_b {
                strip(&b)
            } else {
                t::transpose(&b, None)?
            };
            let data: Vec<f32> = bt.to_f32().iter().map(|v| v * alpha).collect();
            let bname = bias(self, c)?;
            return self.mapped_linear(n, idx, &x, &data, out, bname);
        }
        let wname = if trans_b && alpha == 1.0 {
            self.tensor_of(&b, &format!("{base}.weight"))
        } else {
            let bt = if trans_b {
                strip(&b)
            } else {
                t::transpose(&b, None)?
            };
            let data = bt.to_f32().iter().map(|v| v * alpha).collect();
            self.new_tensor(&format!("{base}.weight"), vec![out, k], data)
        };
        let bname = bias(self, c)?;
        self.linear(n, idx, &x, wname, bname, out)
    }

    pub(super) fn matmul(&mut self, n: &NodeProto, idx: usize) -> R<Vec<Val>> {
        let x = self.dyn_in_any(n, 0)?;
        let b = self.const_in(n, 1, "weights")?;
        if x.dims.len() != 2 || b.dims.len() != 2 {
            return unsup(format!(
                "MatMul of {} by {} (only [N, K] by constant [K, M] is supported)",
                fmt_dims(&x.dims),
                fmt_dims(&b.dims)
            ));
        }
        if b.dims[0] != x.dims[1] {
            return invalid(format!(
                "cannot multiply {} by {}",
                fmt_dims(&x.dims),
                fmt_dims(&b.dims)
            ));
        }
        let out = b.dims[1];
        let wt = t::transpose(&b, None)?;
        if x.map.is_some() {
            return self.mapped_linear(n, idx, &x, &wt.to_f32(), out, None);
        }
        let base = self.label(n, idx);
        let wname = self.new_tensor(&format!("{base}.weight"), vec![out, x.dims[1]], wt.to_f32());
        self.linear(n, idx, &x, wname, None, out)
    }

    /// A linear layer on a rearranged value: the map is folded into the
    /// weights (`weight` is `[out, K]` row-major over the value's K elements)
    /// and the layer reads `src` (flattened if needed).
    pub(super) fn mapped_linear(
        &mut self,
        n: &NodeProto,
        idx: usize,
        x: &Dyn,
        weight: &[f32],
        out: usize,
        bias: Option<String>,
    ) -> R<Vec<Val>> {
        let Some(map) = &x.map else {
            return invalid("internal: not a rearranged value");
        };
        let k = map.len();
        if x.dims.len() != 2 || x.dims[0] != 1 || weight.len() != out * k {
            return unsup(format!(
                "a rearranged value of shape {} feeding a linear layer (it must be [1, K])",
                fmt_dims(&x.dims)
            ));
        }
        let m = numel(&x.adv).unwrap_or(0);
        if out.checked_mul(m).is_none_or(|s| s > t::MAX_CONST_ELEMS) {
            return unsup("the folded linear layer is too large");
        }
        let mut w = Vec::with_capacity(out * m);
        let mut acc = vec![0f64; m];
        for o in 0..out {
            acc.iter_mut().for_each(|v| *v = 0.0);
            for (kk, row) in map.iter().enumerate() {
                let wk = weight[o * k + kk] as f64;
                for &(j, a) in row {
                    if let Some(v) = acc.get_mut(j as usize) {
                        *v += wk * a as f64;
                    }
                }
            }
            w.extend(acc.iter().map(|&v| v as f32));
        }
        let src = if x.adv[1] == 1 && x.adv[2] == 1 {
            x.src.clone()
        } else {
            let base = format!("{}/flatten", self.label(n, idx));
            let name = self.unique_node_name(&base);
            let mut spec = NodeSpec::new("", "flatten", &[&x.src]);
            spec.name = name.clone();
            self.nodes.push(spec);
            name
        };
        let base = self.label(n, idx);
        let wname = self.new_tensor(&format!("{base}.weight"), vec![out, m], w);
        let flat = Self::out_dyn(src, vec![1, m])?;
        self.linear(n, idx, &flat, wname, bias, out)
    }
}
