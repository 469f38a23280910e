//! Converters for convolution, batch norm and pooling nodes.

use super::*;

impl<'a> Converter<'a> {
    /// Resolves `pads`/`auto_pad` to `[top, left, bottom, right]` for a window
    /// on an input of `hw` (after pending padding).
    pub(super) fn window_pads(
        n: &NodeProto,
        hw: [usize; 2],
        kernel: [u32; 2],
        stride: [u32; 2],
        dilation: [u32; 2],
    ) -> R<[u32; 4]> {
        let auto = attr_s(n, "auto_pad").unwrap_or_default();
        match auto.as_str() {
            "" | "NOTSET" => match attr_ints(n, "pads") {
                None => Ok([0; 4]),
                Some(p) if p.len() == 4 => {
                    let mut out = [0u32; 4];
                    for (o, &v) in out.iter_mut().zip(&p) {
                        *o = u32::try_from(v).map_err(|_| {
                            Fail::Unsupported(format!(
                                "pads {} (negative or huge padding is not supported)",
                                fmt_dims(&p)
                            ))
                        })?;
                    }
                    Ok(out)
                }
                Some(p) => invalid(format!("pads {} should have 4 values", fmt_dims(&p))),
            },
            "VALID" => Ok([0; 4]),
            "SAME_UPPER" | "SAME_LOWER" => {
                let mut out = [0u32; 4];
                for k in 0..2 {
                    let i = hw[k] as i128;
                    let s = stride[k] as i128;
                    let o = (i + s - 1) / s;
                    let span = (kernel[k] as i128 - 1) * dilation[k] as i128 + 1;
                    let total = ((o - 1) * s + span - i).max(0);
                    let small = total / 2;
                    let big = total - small;
                    let (b, e) = if auto == "SAME_UPPER" {
                        (small, big)
                    } else {
                        (big, small)
                    };
                    out[k] =
                        u32::try_from(b).map_err(|_| Fail::Invalid("padding too large".into()))?;
                    out[k + 2] =
                        u32::try_from(e).map_err(|_| Fail::Invalid("padding too large".into()))?;
                }
                Ok(out)
            }
            other => invalid(format!("unknown auto_pad `{other}`")),
        }
    }

    pub(super) fn conv(&mut self, n: &NodeProto, idx: usize) -> R<Vec<Val>> {
        let x = self.dyn_padded(n, 0)?;
        let w = self.const_in(n, 1, "weights")?;
        let b = self.opt_const(n, 2, "bias")?;
        if x.dims.len() != 4 {
            return unsup(format!(
                "input of rank {} (only 2-D convolution on [N, C, H, W] is supported)",
                x.dims.len()
            ));
        }
        if w.dims.len() != 4 {
            return unsup(format!(
                "weights {} (only 2-D convolution is supported)",
                fmt_dims(&w.dims)
            ));
        }
        let kernel = [u32_of(w.dims[2], "kernel")?, u32_of(w.dims[3], "kernel")?];
        if let Some(k) = attr_ints(n, "kernel_shape") {
            if k != [kernel[0] as i64, kernel[1] as i64] {
                return invalid(format!(
                    "kernel_shape {} does not match weights {}",
                    fmt_dims(&k),
                    fmt_dims(&w.dims)
                ));
            }
        }
        let stride = hw_attr(n, "strides", Some([1, 1]))?;
        let dilation = hw_attr(n, "dilations", Some([1, 1]))?;
        let groups = attr_i(n, "group", 1);
        let groups = u32::try_from(groups)
            .ok()
            .filter(|&g| g >= 1)
            .ok_or_else(|| Fail::Invalid(format!("group {groups} must be positive")))?;
        let own = Self::window_pads(n, [x.dims[2], x.dims[3]], kernel, stride, dilation)?;
        let padding = add_pads(own, x.pad)?;
        let params = Conv2dParams {
            stride,
            padding,
            dilation,
            groups,
        };
        let wshape = [
            u32_of(w.dims[0], "output channels")?,
            u32_of(w.dims[1], "input channels")?,
            kernel[0],
            kernel[1],
        ];
        let out = params
            .out_shape(shape_of(x.adv)?, wshape)
            .map_err(|e| Fail::Invalid(format!("{e} (input {})", fmt_dims(&x.dims))))?;
        let base = self.label(n, idx);
        let wname = self.tensor_of(&w, &format!("{base}.weight"));
        let bname = match &b {
            Some(b) => {
                if b.len() != w.dims[0] {
                    return invalid(format!(
                        "bias {} does not match {} output channels",
                        fmt_dims(&b.dims),
                        w.dims[0]
                    ));
                }
                Some(self.tensor_of(b, &format!("{base}.bias")))
            }
            None => None,
        };
        let mut spec = NodeSpec::new("", "conv2d", &[&x.src]);
        spec.weight = Some(wname);
        spec.bias = bname;
        spec.stride = Some(Hw(stride));
        spec.padding = Some(Padding(padding));
        spec.dilation = Some(Hw(dilation));
        spec.groups = Some(groups);
        let (name, _) = self.emit(n, idx, spec);
        let dims = vec![1, out.c as usize, out.h as usize, out.w as usize];
        Ok(vec![Val::Dyn(Self::out_dyn(name, dims)?)])
    }

    pub(super) fn batch_norm(&mut self, n: &NodeProto, idx: usize) -> R<Vec<Val>> {
        if attr_i(n, "training_mode", 0) != 0
            || n.output.iter().skip(1).any(|o| self.is_used(Some(o)))
        {
            return unsup(
                "training-mode BatchNormalization (running statistics outputs) is not supported",
            );
        }
        let x = self.dyn_in(n, 0)?;
        if !(x.dims.len() == 4 || x.dims.len() == 2) {
            return unsup(format!(
                "input of rank {} (only [N, C, H, W] and [N, C] are supported)",
                x.dims.len()
            ));
        }
        let c = x.adv[0];
        let mut ts = Vec::new();
        for (k, what) in [(1, "scale"), (2, "bias"), (3, "mean"), (4, "variance")] {
            let v = self.const_in(n, k, what)?;
            if v.len() != c {
                return invalid(format!(
                    "{what} {} does not match the input's {c} channels",
                    fmt_dims(&v.dims)
                ));
            }
            ts.push(v);
        }
        let base = self.label(n, idx);
        let mut names = Vec::new();
        for (v, role) in ts
            .iter()
            .zip(["weight", "bias", "running_mean", "running_var"])
        {
            let flat = if v.dims == [c] {
                (**v).clone()
            } else {
                Const {
                    dims: vec![c],
                    origin: None,
                    ..(**v).clone()
                }
            };
            names.push(self.tensor_of(&flat, &format!("{base}.{role}")));
        }
        let eps = f64_of(attr_f(n, "epsilon", 1e-5));
        let x2 = x.clone();
        self.unary_node(n, idx, "batch_norm", &x2, false, move |s| {
            s.weight = Some(names[0].clone());
            s.bias = Some(names[1].clone());
            s.running_mean = Some(names[2].clone());
            s.running_var = Some(names[3].clone());
            s.eps = Some(eps);
        })
    }

    pub(super) fn pool(&mut self, n: &NodeProto, idx: usize, is_max: bool) -> R<Vec<Val>> {
        if is_max && self.is_used(n.output.get(1)) {
            return unsup("its Indices output is used");
        }
        let x = self.dyn_padded(n, 0)?;
        if x.dims.len() != 4 {
            return unsup(format!(
                "input of rank {} (only 2-D pooling on [N, C, H, W] is supported)",
                x.dims.len()
            ));
        }
        let kernel = hw_attr(n, "kernel_shape", None)?;
        let stride = hw_attr(n, "strides", Some([1, 1]))?;
        let dilation = hw_attr(n, "dilations", Some([1, 1]))?;
        if !is_max && dilation != [1, 1] {
            return unsup("dilated AveragePool is not supported");
        }
        let own = Self::window_pads(n, [x.dims[2], x.dims[3]], kernel, stride, dilation)?;
        let ceil_mode = attr_i(n, "ceil_mode", 0) != 0;
        let mut count_include_pad = attr_i(n, "count_include_pad", 0) != 0;
        let folded = x.pad != [0; 4];
        if folded {
            if is_max && !x.nonneg {
                return unsup(
                    "zero padding before MaxPool folds only when its input is non-negative (after ReLU)",
                );
            }
            if !is_max && own != [0; 4] && !count_include_pad {
                return unsup(
                    "zero padding before an AveragePool that has its own padding and count_include_pad = 0",
                );
            }
            count_include_pad = true;
        }
        let padding = add_pads(own, x.pad)?;
        let params = Pool2dParams {
            kernel,
            stride,
            padding,
            dilation,
            ceil_mode,
            count_include_pad,
        };
        let out = params
            .out_shape(shape_of(x.adv)?)
            .map_err(|e| Fail::Invalid(format!("{e} (input {})", fmt_dims(&x.dims))))?;
        if folded {
            // The padded tensor pooled with the pool's own padding must give the
            // same windows (ceil_mode may differ at the edge).
            let padded = Shape::new(
                1,
                out.c,
                u32_of(x.dims[2], "height")?,
                u32_of(x.dims[3], "width")?,
            );
            let plain = Pool2dParams {
                padding: own,
                ..params
            };
            match plain.out_shape(padded) {
                Ok(s) if s == out => {}
                _ => {
                    return unsup(
                        "zero padding before this pooling changes its output size with ceil_mode; it cannot be folded",
                    )
                }
            }
        }
        let mut spec = NodeSpec::new("", if is_max { "max_pool" } else { "avg_pool" }, &[&x.src]);
        spec.kernel = Some(Hw(kernel));
        spec.stride = Some(Hw(stride));
        spec.padding = Some(Padding(padding));
        spec.ceil_mode = Some(ceil_mode);
        if is_max {
            spec.dilation = Some(Hw(dilation));
        } else {
            spec.count_include_pad = Some(count_include_pad);
        }
        let (name, _) = self.emit(n, idx, spec);
        let mut d = Self::out_dyn(
            name,
            vec![1, out.c as usize, out.h as usize, out.w as usize],
        )?;
        d.nonneg = x.nonneg;
        Ok(vec![Val::Dyn(d)])
    }

    pub(super) fn global_pool(
        &mut self,
        n: &NodeProto,
        idx: usize,
        x: &Dyn,
        keep: bool,
        max: bool,
    ) -> R<Vec<Val>> {
        if x.dims.len() != 4 {
            return unsup(format!(
                "input of rank {} (only [N, C, H, W] is supported)",
                x.dims.len()
            ));
        }
        let spec = if max {
            let mut s = NodeSpec::new("", "max_pool", &[&x.src]);
            let k = [u32_of(x.adv[1], "height")?, u32_of(x.adv[2], "width")?];
            s.kernel = Some(Hw(k));
            s.stride = Some(Hw([1, 1]));
            s
        } else {
            NodeSpec::new("", "global_avg_pool", &[&x.src])
        };
        let (name, _) = self.emit(n, idx, spec);
        let c = x.adv[0];
        let dims = if keep { vec![1, c, 1, 1] } else { vec![1, c] };
        let mut d = Self::out_dyn(name, dims)?;
        d.nonneg = x.nonneg;
        Ok(vec![Val::Dyn(d)])
    }
}
