//! Converters for element-wise nodes: activations, Clip, per-channel
//! affine ops, binary ops with a constant or a run-time operand, ReduceMean.

use super::*;

impl<'a> Converter<'a> {
    /// Emits a one-input node and returns its output value.
    pub(super) fn unary_node(
        &mut self,
        n: &NodeProto,
        idx: usize,
        op: &str,
        x: &Dyn,
        nonneg: bool,
        f: impl FnOnce(&mut NodeSpec),
    ) -> R<Vec<Val>> {
        let mut spec = NodeSpec::new("", op, &[&x.src]);
        f(&mut spec);
        let (name, _) = self.emit(n, idx, spec);
        let mut d = Self::out_dyn(name, x.dims.clone())?;
        d.adv = x.adv;
        d.nonneg = nonneg;
        d.nhwc = x.nhwc;
        Ok(vec![Val::Dyn(d)])
    }

    /// Emits `x * scale[c] + shift[c]` as a batch_norm with mean 0, variance 1
    /// and eps 0 (exact, and folded into a preceding convolution at load time).
    pub(super) fn affine(
        &mut self,
        n: &NodeProto,
        idx: usize,
        x: &Dyn,
        scale: Vec<f32>,
        shift: Vec<f32>,
    ) -> R<Vec<Val>> {
        let c = x.adv[0];
        let expand = |v: Vec<f32>| if v.len() == 1 { vec![v[0]; c] } else { v };
        let (scale, shift) = (expand(scale), expand(shift));
        if scale.len() != c || shift.len() != c {
            return invalid("per-channel constant does not match the channel count");
        }
        if scale.iter().chain(&shift).any(|v| !v.is_finite()) {
            return unsup("the constant makes a non-finite scale or shift");
        }
        let base = self.label(n, idx);
        let w = self.new_tensor(&format!("{base}.weight"), vec![c], scale);
        let b = self.new_tensor(&format!("{base}.bias"), vec![c], shift);
        let m = self.new_tensor(&format!("{base}.running_mean"), vec![c], vec![0.0; c]);
        let v = self.new_tensor(&format!("{base}.running_var"), vec![c], vec![1.0; c]);
        let mut spec = NodeSpec::new("", "batch_norm", &[&x.src]);
        spec.weight = Some(w);
        spec.bias = Some(b);
        spec.running_mean = Some(m);
        spec.running_var = Some(v);
        spec.eps = Some(0.0);
        let (name, _) = self.emit(n, idx, spec);
        let mut d = Self::out_dyn(name, x.dims.clone())?;
        d.adv = x.adv;
        d.nhwc = x.nhwc;
        Ok(vec![Val::Dyn(d)])
    }

    pub(super) fn clip(&mut self, n: &NodeProto, idx: usize) -> R<Vec<Val>> {
        let x = self.dyn_in(n, 0)?;
        let bound = |k: usize, a: &str, default: f32| -> R<f32> {
            if let Some(v) = attr(n, a).and_then(|a| a.f) {
                return Ok(v);
            }
            match self.opt_const(n, k, a)? {
                Some(c) => c
                    .scalar()
                    .map(|v| v as f32)
                    .ok_or_else(|| Fail::Invalid(format!("`{a}` must be a scalar"))),
                None => Ok(default),
            }
        };
        let lo = bound(1, "min", f32::NEG_INFINITY)?;
        let hi = bound(2, "max", f32::INFINITY)?;
        if lo == 0.0 && hi == 6.0 {
            return self.unary_node(n, idx, "relu6", &x, true, |_| {});
        }
        if lo == 0.0 && hi >= f32::MAX {
            return self.unary_node(n, idx, "relu", &x, true, |_| {});
        }
        if lo <= f32::MIN && hi >= f32::MAX {
            return Ok(vec![Val::Dyn(x)]);
        }
        unsup(format!(
            "Clip to [{lo}, {hi}] (only [0, 6] as ReLU6 and [0, inf) as ReLU are supported)"
        ))
    }

    /// The constant as one value per channel of `x` (length 1 or C), if it is
    /// constant over every other dimension and does not grow `x`.
    pub(super) fn per_channel(x: &Dyn, c: &Const) -> Option<Vec<f32>> {
        let r = x.dims.len();
        if !(r == 2 || r == 4) || c.dims.len() > r {
            return None;
        }
        if t::broadcast_dims(&x.dims, &c.dims).ok()? != x.dims {
            return None;
        }
        // channels-last views keep their channels on the last axis
        let channel_axis = if x.nhwc { 3 } else { 1 };
        let off = r - c.dims.len();
        for (j, &d) in c.dims.iter().enumerate() {
            if j + off != channel_axis && d != 1 {
                return None;
            }
        }
        Some(c.to_f32())
    }

    pub(super) fn binary(&mut self, n: &NodeProto, idx: usize, op: &str) -> R<Vec<Val>> {
        let a_name = Self::inp(n, 0).unwrap_or("").to_string();
        let b_name = Self::inp(n, 1).unwrap_or("").to_string();
        let a = self.get(&a_name)?;
        let b = self.get(&b_name)?;
        match (a, b) {
            (Val::Dyn(_), Val::Dyn(_)) => {
                let x = self.dyn_in(n, 0)?;
                let y = self.dyn_in(n, 1)?;
                if op == "Mul" {
                    for (p, q, q_name) in [(&x, &y, &b_name), (&y, &x, &a_name)] {
                        let fused = match &q.origin {
                            Origin::Sigmoid(s) if *s == p.src => Some("silu"),
                            Origin::HardSigmoid(s, al, be)
                                if *s == p.src
                                    && (al - 1.0 / 6.0).abs() < 1e-6
                                    && (be - 0.5).abs() < 1e-6 =>
                            {
                                Some("hardswish")
                            }
                            _ => None,
                        };
                        if let Some(f) = fused {
                            if p.dims == q.dims && self.single_consumer(q_name) {
                                return self.unary_node(n, idx, f, p, false, |_| {});
                            }
                        }
                    }
                }
                if op == "Sub" || op == "Div" {
                    return unsup(format!("{op} of two run-time values is not supported"));
                }
                let nhwc = x.nhwc || y.nhwc;
                if nhwc && !(x.nhwc && y.nhwc && x.dims == y.dims) {
                    return unsup(format!(
                        "{op} of channels-last values of shapes {} and {} (only equal \
                         shapes, both channels-last, are supported)",
                        fmt_dims(&x.dims),
                        fmt_dims(&y.dims)
                    ));
                }
                let dims = t::broadcast_dims(&x.dims, &y.dims)?;
                if x.dims.len() != y.dims.len() || !(dims.len() == 4 || dims.len() == 2) {
                    return unsup(format!(
                        "{op} of {} and {} (only same-rank [N, C, H, W] or [N, K] operands are supported)",
                        fmt_dims(&x.dims),
                        fmt_dims(&y.dims)
                    ));
                }
                let spec = NodeSpec::new(
                    "",
                    if op == "Add" { "add" } else { "mul" },
                    &[&x.src, &y.src],
                );
                let (name, _) = self.emit(n, idx, spec);
                let mut d = Self::out_dyn(name, dims)?;
                if nhwc {
                    // the view's dims are [1, H, W, C]; its tensor is x's shape
                    d.adv = x.adv;
                    d.nhwc = true;
                }
                d.nonneg = x.nonneg && y.nonneg;
                Ok(vec![Val::Dyn(d)])
            }
            (Val::Dyn(_), Val::Const(c)) => {
                let x = self.dyn_in(n, 0)?;
                self.binary_const(n, idx, op, &x, &a_name, &c, false)
            }
            (Val::Const(c), Val::Dyn(_)) => {
                let x = self.dyn_in(n, 1)?;
                self.binary_const(n, idx, op, &x, &b_name, &c, true)
            }
            _ => Err(Fail::Poisoned),
        }
    }

    /// `x op c` (or `c op x` when `const_first`) as a per-channel affine.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn binary_const(
        &mut self,
        n: &NodeProto,
        idx: usize,
        op: &str,
        x: &Dyn,
        x_name: &str,
        c: &Const,
        const_first: bool,
    ) -> R<Vec<Val>> {
        let Some(v) = Self::per_channel(x, c) else {
            return unsup(format!(
                "{op} of {} with a constant of shape {} (only scalars and per-channel constants are supported)",
                fmt_dims(&x.dims),
                fmt_dims(&c.dims)
            ));
        };
        let ones = vec![1.0f32; v.len()];
        let zeros = vec![0.0f32; v.len()];
        let (scale, shift) = match (op, const_first) {
            ("Add", _) => (ones, v),
            ("Sub", false) => (ones, v.iter().map(|x| -x).collect()),
            ("Sub", true) => (vec![-1.0; v.len()], v),
            ("Mul", _) => (v, zeros),
            ("Div", false) => (v.iter().map(|x| 1.0 / x).collect(), zeros),
            _ => {
                return unsup(format!(
                    "{op} of a constant by a run-time value is not supported"
                ))
            }
        };
        // A bias after a linear node (MatMul + Add) joins the linear node.
        if let Origin::Linear(i, value) = &x.origin {
            let i = *i;
            if value == x_name
                && scale.iter().all(|&s| s == 1.0)
                && self.single_consumer(x_name)
                && i < self.nodes.len()
            {
                let out = x.adv[0];
                let add = if shift.len() == 1 {
                    vec![shift[0]; out]
                } else {
                    shift.clone()
                };
                let old = match self.nodes[i].bias.clone() {
                    Some(b) => self
                        .tensor_index
                        .get(&b)
                        .map(|&k| self.tensors[k].2.clone())
                        .unwrap_or_else(|| vec![0.0; out]),
                    None => vec![0.0; out],
                };
                if old.len() == out && add.len() == out {
                    let bias: Vec<f32> = old.iter().zip(&add).map(|(a, b)| a + b).collect();
                    let hint = format!("{}.bias", self.nodes[i].name);
                    let name = self.new_tensor(&hint, vec![out], bias);
                    self.nodes[i].bias = Some(name);
                    let mut d = x.clone();
                    d.origin = Origin::Other;
                    return Ok(vec![Val::Dyn(d)]);
                }
            }
        }
        let scalar = (scale.len() == 1 && matches!(op, "Mul" | "Div")).then(|| scale[0]);
        let mut out = self.affine(n, idx, x, scale, shift)?;
        if let (Some(s), Some(Val::Dyn(d))) = (scalar, out.first_mut()) {
            d.origin = Origin::Scaled(x_name.to_string(), s);
        }
        Ok(out)
    }

    pub(super) fn reduce_mean(&mut self, n: &NodeProto, idx: usize) -> R<Vec<Val>> {
        let x = self.dyn_in_any(n, 0)?;
        let axes = self.ints_attr_or_input(n, "axes", 1)?.unwrap_or_default();
        let keep = attr_i(n, "keepdims", 1) != 0;
        let r = x.dims.len();
        let mut norm: Vec<usize> = axes
            .iter()
            .map(|&a| t::norm_axis(a, r))
            .collect::<Result<_, _>>()?;
        norm.sort_unstable();
        norm.dedup();
        if norm.is_empty() {
            if attr_i(n, "noop_with_empty_axes", 0) != 0 {
                return Ok(vec![Val::Dyn(x)]);
            }
            norm = (0..r).collect();
        }
        if x.map.is_none() && r == 4 && norm == [2, 3] {
            return self.global_pool(n, idx, &x, keep, false);
        }
        // Any other mean is a constant linear map of the value.
        let (dims, groups) = t::reduce_groups(&x.dims, &norm, keep)?;
        let mut rows = Vec::with_capacity(groups.len());
        let mut entries = 0usize;
        for g in &groups {
            let w = 1.0 / g.len().max(1) as f64;
            let mut acc: HashMap<u32, f64> = HashMap::new();
            for &i in g {
                match &x.map {
                    Some(m) => {
                        for &(j, a) in m.get(i).map(Vec::as_slice).unwrap_or(&[]) {
                            *acc.entry(j).or_default() += a as f64 * w;
                        }
                    }
                    None => *acc.entry(i as u32).or_default() += w,
                }
            }
            let mut row: Vec<(u32, f32)> = acc.into_iter().map(|(j, a)| (j, a as f32)).collect();
            row.sort_unstable_by_key(|e| e.0);
            entries += row.len();
            if entries > MAX_MAP {
                return unsup("the ReduceMean is too large to fold into the next layer");
            }
            rows.push(row);
        }
        let mut d = x.clone();
        d.dims = dims;
        d.map = Some(Rc::new(rows));
        d.origin = Origin::Other;
        Ok(vec![Val::Dyn(simplify(d))])
    }
}
