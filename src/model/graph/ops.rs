//! Per-op validation and shape inference: each node's attributes, weights
//! and input shapes checked, its output shape computed.

use super::*;

impl Builder<'_, '_> {
    pub(super) fn node(
        &self,
        n: &NodeSpec,
        inputs: Vec<Src>,
        shapes: &[Shape],
    ) -> Result<IrNode, ModelError> {
        let name = n.name.as_str();
        let allowed: &[&str] = match n.op.as_str() {
            "conv2d" => &["weight", "bias", "stride", "padding", "dilation", "groups"],
            "batch_norm" => &["weight", "bias", "running_mean", "running_var", "eps"],
            "linear" => &["weight", "bias"],
            "relu" | "relu6" | "sigmoid" | "silu" | "hardswish" | "global_avg_pool" | "add"
            | "mul" | "flatten" | "identity" => &[],
            "leaky_relu" => &["negative_slope"],
            "hardsigmoid" => &["alpha", "beta"],
            "gelu" => &["approximate"],
            "layer_norm" => &["weight", "bias", "eps"],
            "max_pool" => &["kernel", "stride", "padding", "dilation", "ceil_mode"],
            "avg_pool" => &[
                "kernel",
                "stride",
                "padding",
                "ceil_mode",
                "count_include_pad",
            ],
            "concat" | "softmax" => &["axis"],
            "dropout" => &["p"],
            "normalize" => &["mean", "std"],
            other => {
                return Err(self.err(
                    name,
                    format!("unknown op `{other}`; known ops: {}", OPS.join(", ")),
                ))
            }
        };
        for a in n.attributes_set() {
            if !allowed.contains(&a) {
                return Err(self.err(
                    name,
                    format!(
                        "attribute `{a}` does not apply to op {} (it takes: {})",
                        n.op,
                        if allowed.is_empty() {
                            "none".to_string()
                        } else {
                            allowed.join(", ")
                        }
                    ),
                ));
            }
        }
        let (lo, hi) = match n.op.as_str() {
            "add" | "mul" => (2, 2),
            "concat" => (2, usize::MAX),
            _ => (1, 1),
        };
        if inputs.len() < lo || inputs.len() > hi {
            let want = match (lo, hi) {
                (2, 2) => "exactly 2 inputs".to_string(),
                (2, _) => "at least 2 inputs".to_string(),
                _ => "exactly 1 input".to_string(),
            };
            return Err(self.err(
                name,
                format!("op {} takes {want}, got {}", n.op, inputs.len()),
            ));
        }
        let x = shapes[0];
        let final_op = |op: Op, shape: Shape| (IrOp::Final(op), shape);
        let act = |a: Activation| final_op(Op::Activation(a), x);
        let finite = |field: &str, v: f64| -> Result<f32, ModelError> {
            if v.is_finite() && v.abs() < 1e30 {
                Ok(v as f32)
            } else {
                Err(self.err(name, format!("`{field}` = {v} is not a usable number")))
            }
        };
        let (op, shape) = match n.op.as_str() {
            "conv2d" => self.conv2d(n, x)?,
            "linear" => self.linear(n, x)?,
            "batch_norm" => self.batch_norm(n, x)?,
            "relu" => act(Activation::Relu),
            "relu6" => act(Activation::Relu6),
            "sigmoid" => act(Activation::Sigmoid),
            "silu" => act(Activation::Silu),
            "hardswish" => act(Activation::Hardswish),
            "leaky_relu" => act(Activation::LeakyRelu {
                negative_slope: finite("negative_slope", n.negative_slope.unwrap_or(0.01))?,
            }),
            "hardsigmoid" => act(Activation::Hardsigmoid {
                alpha: finite("alpha", n.alpha.unwrap_or(1.0 / 6.0))?,
                beta: finite("beta", n.beta.unwrap_or(0.5))?,
            }),
            "gelu" => match n.approximate.as_deref() {
                None | Some("none") => act(Activation::Gelu),
                Some("tanh") => act(Activation::GeluTanh),
                Some(other) => {
                    return Err(self.err(
                        name,
                        format!("gelu: approximate `{other}`; use \"none\" (erf) or \"tanh\""),
                    ))
                }
            },
            "max_pool" | "avg_pool" => self.pool(n, x)?,
            "global_avg_pool" => final_op(Op::GlobalAvgPool, Shape::new(1, x.c, 1, 1)),
            "add" | "mul" => {
                let y = shapes[1];
                let mut out = [0u32; 3];
                let dims = [
                    ("channels", x.c, y.c),
                    ("height", x.h, y.h),
                    ("width", x.w, y.w),
                ];
                for (k, (what, a, b)) in dims.into_iter().enumerate() {
                    out[k] = if a == b || b == 1 {
                        a
                    } else if a == 1 {
                        b
                    } else {
                        return Err(self.err(
                            name,
                            format!(
                                "{} cannot broadcast {} with {}: {what} {a} vs {b} (each dimension must be equal or 1)",
                                n.op,
                                chw(x),
                                chw(y)
                            ),
                        ));
                    };
                }
                let op = if n.op == "add" { Op::Add } else { Op::Mul };
                final_op(op, Shape::new(1, out[0], out[1], out[2]))
            }
            "concat" => {
                let axis = n.axis.unwrap_or(1);
                if axis != 1 {
                    return Err(self.err(
                        name,
                        format!("concat supports axis 1 (channels) only, got axis {axis}"),
                    ));
                }
                let mut c: u64 = 0;
                for (k, s) in shapes.iter().enumerate() {
                    if s.h != x.h || s.w != x.w {
                        return Err(self.err(
                            name,
                            format!(
                                "concat along channels needs equal height and width: input 0 is {} but input {k} (`{}`) is {}",
                                chw(x),
                                n.inputs[k],
                                chw(*s)
                            ),
                        ));
                    }
                    c += s.c as u64;
                }
                if c > u32::MAX as u64 {
                    return Err(self.err(name, "concat output has too many channels"));
                }
                final_op(Op::Concat, Shape::new(1, c as u32, x.h, x.w))
            }
            "flatten" => final_op(Op::Flatten, Shape::new(1, x.item() as u32, 1, 1)),
            "dropout" | "identity" => (IrOp::Identity, x),
            "normalize" => {
                let get = |field: &str, v: &Option<Vec<f64>>| -> Result<Vec<f64>, ModelError> {
                    let v = v.as_ref().ok_or_else(|| {
                        self.err(name, format!("normalize needs `{field}` (per channel)"))
                    })?;
                    let v = if v.len() == 1 {
                        vec![v[0]; x.c as usize]
                    } else if v.len() == x.c as usize {
                        v.clone()
                    } else {
                        return Err(self.err(
                            name,
                            format!(
                                "`{field}` has {} values but the input has {} channels",
                                v.len(),
                                x.c
                            ),
                        ));
                    };
                    for &e in &v {
                        finite(field, e)?;
                    }
                    Ok(v)
                };
                let mean = get("mean", &n.mean)?;
                let std = get("std", &n.std)?;
                if let Some(i) = std.iter().position(|s| s.abs() < 1e-30) {
                    return Err(self.err(name, format!("std[{i}] is zero")));
                }
                let scale = std.iter().map(|&s| (1.0 / s) as f32).collect();
                let shift = mean
                    .iter()
                    .zip(&std)
                    .map(|(&m, &s)| (-m / s) as f32)
                    .collect();
                final_op(Op::Affine { scale, shift }, x)
            }
            "layer_norm" => {
                let c = x.c;
                let eps = n.eps.unwrap_or(1e-5);
                if !eps.is_finite() || eps < 0.0 {
                    return Err(
                        self.err(name, format!("`eps` = {eps} must be a non-negative number"))
                    );
                }
                let weight = match &n.weight {
                    Some(t) => self.vector(name, t, c)?,
                    None => vec![1.0; c as usize],
                };
                let bias = match &n.bias {
                    Some(t) => self.vector(name, t, c)?,
                    None => vec![0.0; c as usize],
                };
                final_op(
                    Op::LayerNorm {
                        eps: eps as f32,
                        weight,
                        bias,
                    },
                    x,
                )
            }
            "softmax" => {
                let axis = n.axis.unwrap_or(1);
                if axis != 1 {
                    return Err(self.err(
                        name,
                        format!("softmax is over channels (axis 1) only, got axis {axis}"),
                    ));
                }
                final_op(Op::Softmax, x)
            }
            _ => return Err(self.err(name, format!("unknown op `{}`", n.op))),
        };
        if item(shape) > MAX_ITEM as u128 || item(shape) == 0 {
            return Err(self.err(
                name,
                format!(
                    "output shape {} is too large: {} elements per image (at most {MAX_ITEM})",
                    chw(shape),
                    item(shape)
                ),
            ));
        }
        Ok(IrNode {
            name: n.name.clone(),
            op,
            inputs,
            shape,
        })
    }

    pub(super) fn hw_at_least_1(
        &self,
        n: &NodeSpec,
        field: &str,
        v: [u32; 2],
    ) -> Result<(), ModelError> {
        if v[0] == 0 || v[1] == 0 {
            return Err(self.err(
                &n.name,
                format!("`{field}` {} must be at least 1", fmt_dims(&v)),
            ));
        }
        self.window_limit(n, field, &v)
    }

    pub(super) fn window_limit(
        &self,
        n: &NodeSpec,
        field: &str,
        v: &[u32],
    ) -> Result<(), ModelError> {
        if v.iter().any(|&x| x > MAX_WINDOW) {
            return Err(self.err(
                &n.name,
                format!(
                    "`{field}` {} is too large (at most {MAX_WINDOW})",
                    fmt_dims(v)
                ),
            ));
        }
        Ok(())
    }

    pub(super) fn conv2d(&self, n: &NodeSpec, x: Shape) -> Result<(IrOp, Shape), ModelError> {
        let name = n.name.as_str();
        let groups = n.groups.unwrap_or(1);
        if groups == 0 {
            return Err(self.err(name, "`groups` must be at least 1"));
        }
        if !x.c.is_multiple_of(groups) {
            return Err(self.err(
                name,
                format!(
                    "groups {groups} does not divide the input's {} channels (input {})",
                    x.c,
                    chw(x)
                ),
            ));
        }
        let icg = x.c / groups;
        let wname = n
            .weight
            .as_deref()
            .ok_or_else(|| self.err(name, "conv2d needs a `weight` tensor"))?;
        let raw = self.raw(name, wname)?;
        self.expect_shape(
            name,
            wname,
            raw,
            &[None, Some(icg as usize), None, None],
            &format!(
                "[out_channels, in_channels / groups, kh, kw] for an input of {} channels and groups {groups}",
                x.c
            ),
        )?;
        let dims = &raw.shape;
        if dims.iter().any(|&d| d == 0 || d > u32::MAX as usize) {
            return Err(self.terr(
                name,
                wname,
                format!("weight shape {} is not usable", fmt_dims(dims)),
            ));
        }
        let (oc, kh, kw) = (dims[0] as u32, dims[2] as u32, dims[3] as u32);
        if !oc.is_multiple_of(groups) {
            return Err(self.terr(
                name,
                wname,
                format!("{oc} output channels are not divisible by groups {groups}"),
            ));
        }
        let stride = n.stride.map_or([1, 1], |v| v.0);
        let dilation = n.dilation.map_or([1, 1], |v| v.0);
        self.hw_at_least_1(n, "stride", stride)?;
        self.hw_at_least_1(n, "dilation", dilation)?;
        self.hw_at_least_1(n, "kernel", [kh, kw])?;
        let padding = n.padding.map_or([0; 4], |p| p.0);
        self.window_limit(n, "padding", &padding)?;
        let params = Conv2dParams {
            stride,
            padding,
            dilation,
            groups,
        };
        let shape = params
            .out_shape(x, [oc, icg, kh, kw])
            .map_err(|e| self.err(name, format!("{} (input {})", shape_message(e), chw(x))))?;
        let bias = match &n.bias {
            Some(b) => Some(self.vector(name, b, oc)?),
            None => None,
        };
        let data = tensor_to_f32(self.file, name, wname, raw)?;
        let op = Op::Conv2d {
            params,
            weight: Weight {
                shape: [oc, icg, kh, kw],
                data,
            },
            bias,
        };
        Ok((IrOp::Final(op), shape))
    }

    pub(super) fn linear(&self, n: &NodeSpec, x: Shape) -> Result<(IrOp, Shape), ModelError> {
        let name = n.name.as_str();
        if x.h != 1 || x.w != 1 {
            return Err(self.err(
                name,
                format!(
                    "linear needs a [K, 1, 1] input per image, got {}; put a flatten or global_avg_pool before it",
                    chw(x)
                ),
            ));
        }
        let wname = n
            .weight
            .as_deref()
            .ok_or_else(|| self.err(name, "linear needs a `weight` tensor"))?;
        let raw = self.raw(name, wname)?;
        self.expect_shape(
            name,
            wname,
            raw,
            &[None, Some(x.c as usize)],
            &format!(
                "[out_features, in_features] for an input of {} features",
                x.c
            ),
        )?;
        let out = raw.shape[0];
        if out == 0 || out > u32::MAX as usize {
            return Err(self.terr(
                name,
                wname,
                format!("weight shape {} is not usable", fmt_dims(&raw.shape)),
            ));
        }
        let out = out as u32;
        let bias = match &n.bias {
            Some(b) => Some(self.vector(name, b, out)?),
            None => None,
        };
        let data = tensor_to_f32(self.file, name, wname, raw)?;
        let op = Op::Linear {
            weight: Weight {
                shape: [out, x.c, 1, 1],
                data,
            },
            bias,
        };
        Ok((IrOp::Final(op), Shape::new(1, out, 1, 1)))
    }

    pub(super) fn batch_norm(&self, n: &NodeSpec, x: Shape) -> Result<(IrOp, Shape), ModelError> {
        let name = n.name.as_str();
        let c = x.c;
        let eps = n.eps.unwrap_or(1e-5);
        if !eps.is_finite() || eps < 0.0 {
            return Err(self.err(name, format!("`eps` = {eps} must be a non-negative number")));
        }
        let mname = n
            .running_mean
            .as_deref()
            .ok_or_else(|| self.err(name, "batch_norm needs a `running_mean` tensor"))?;
        let vname = n
            .running_var
            .as_deref()
            .ok_or_else(|| self.err(name, "batch_norm needs a `running_var` tensor"))?;
        let mean = self.vector(name, mname, c)?;
        let var = self.vector(name, vname, c)?;
        let gamma = match &n.weight {
            Some(t) => self.vector(name, t, c)?,
            None => vec![1.0; c as usize],
        };
        let beta = match &n.bias {
            Some(t) => self.vector(name, t, c)?,
            None => vec![0.0; c as usize],
        };
        let mut scale = Vec::with_capacity(c as usize);
        let mut shift = Vec::with_capacity(c as usize);
        for i in 0..c as usize {
            let d = var[i] as f64 + eps;
            if d <= 0.0 {
                return Err(self.terr(
                    name,
                    vname,
                    format!(
                        "running_var[{i}] + eps = {d} is not positive (a variance cannot be negative)"
                    ),
                ));
            }
            let s = gamma[i] as f64 / d.sqrt();
            scale.push(s);
            shift.push(beta[i] as f64 - mean[i] as f64 * s);
        }
        Ok((IrOp::Bn { scale, shift }, x))
    }

    pub(super) fn pool(&self, n: &NodeSpec, x: Shape) -> Result<(IrOp, Shape), ModelError> {
        let name = n.name.as_str();
        let is_max = n.op == "max_pool";
        let kernel = n
            .kernel
            .ok_or_else(|| self.err(name, format!("{} needs `kernel`", n.op)))?
            .0;
        let stride = n.stride.map_or(kernel, |s| s.0);
        let dilation = n.dilation.map_or([1, 1], |d| d.0);
        let padding = n.padding.map_or([0; 4], |p| p.0);
        self.hw_at_least_1(n, "kernel", kernel)?;
        self.hw_at_least_1(n, "stride", stride)?;
        self.hw_at_least_1(n, "dilation", dilation)?;
        self.window_limit(n, "padding", &padding)?;
        // PyTorch: padding at most half the (effective) kernel, so no window lies
        // entirely in the padding.
        for (k, &p) in padding.iter().enumerate() {
            let d = k % 2; // top/bottom -> height, left/right -> width
            let limit = if is_max {
                ((kernel[d] as u64 - 1) * dilation[d] as u64).div_ceil(2)
            } else {
                kernel[d] as u64 / 2
            };
            if p as u64 > limit {
                return Err(self.err(
                    name,
                    format!(
                        "padding {} is more than half the {}kernel {} (as in PyTorch, padding must be at most {limit} here)",
                        fmt_dims(&padding),
                        if is_max { "effective " } else { "" },
                        fmt_dims(&kernel)
                    ),
                ));
            }
        }
        let params = Pool2dParams {
            kernel,
            stride,
            padding,
            dilation,
            ceil_mode: n.ceil_mode.unwrap_or(false),
            count_include_pad: n.count_include_pad.unwrap_or(true),
        };
        let shape = params
            .out_shape(x)
            .map_err(|e| self.err(name, format!("{} (input {})", shape_message(e), chw(x))))?;
        let op = if is_max {
            Op::MaxPool(params)
        } else {
            Op::AvgPool(params)
        };
        Ok((IrOp::Final(op), shape))
    }
}
