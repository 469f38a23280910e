//! The walk over the ONNX graph: the input's shape, the plan (which nodes
//! run, which fold, which were pruned), then every node in topological order.

use super::*;

impl<'a> Converter<'a> {
    /// Converts `model`'s graph. `size` resolves dynamic input height/width.
    pub fn run(
        path: &'a Path,
        model: &ModelProto,
        opset: i64,
        size: Option<[u32; 2]>,
    ) -> Result<(Converter<'a>, Converted), crate::ModelError> {
        let graph = model
            .graph
            .as_ref()
            .ok_or_else(|| crate::ModelError::new(path, "not an ONNX model: it has no graph"))?;
        let mut c = Converter {
            path,
            opset,
            values: HashMap::new(),
            consumers: HashMap::new(),
            output: String::new(),
            final_softmax: HashSet::new(),
            nodes: Vec::new(),
            names: ["input", "normalize"]
                .iter()
                .map(|s| s.to_string())
                .collect(),
            tensors: Vec::new(),
            tensor_index: HashMap::new(),
            reserved_tensors: HashSet::new(),
            unsupported: Vec::new(),
            warnings: Vec::new(),
        };
        if !graph.sparse_initializer.is_empty() {
            return Err(c.err("sparse initializers are not supported"));
        }
        for init in &graph.initializer {
            let name = init.name.clone().unwrap_or_default();
            if name.is_empty() {
                return Err(c.err("an initializer has no name"));
            }
            c.reserved_tensors.insert(name);
        }
        let input = c.graph_input(graph, size)?;
        let [ch, h, w] = input.chw;
        let out_name = match graph.output.as_slice() {
            [] => return Err(c.err("the graph has no output")),
            [first, rest @ ..] => {
                if !rest.is_empty() {
                    c.warn(format!(
                        "the graph has {} outputs; advex uses the first, `{}`",
                        graph.output.len(),
                        first.name.as_deref().unwrap_or("")
                    ));
                }
                first.name.clone().unwrap_or_default()
            }
        };
        c.output = out_name.clone();
        let mut known = c.reserved_tensors.clone();
        known.insert(input.name.clone());
        let order = c.plan(graph, &known)?;
        // Decode the initializers the output depends on (others may be of
        // types advex does not read).
        let mut ext = ExternalData::new(path);
        for init in &graph.initializer {
            let name = init.name.clone().unwrap_or_default();
            if !c.consumers.contains_key(&name) || c.values.contains_key(&name) {
                continue;
            }
            let mut k = t::decode_tensor(init, &mut ext)
                .map_err(|m| c.err(format!("initializer: {m}")).tensor(name.clone()))?;
            k.origin = Some(name.clone());
            c.values.insert(name, Val::Const(Rc::new(k)));
        }
        c.values.insert(
            input.name.clone(),
            Val::Dyn(Dyn {
                src: "input".into(),
                dims: vec![1, ch as usize, h as usize, w as usize],
                adv: [ch as usize, h as usize, w as usize],
                nonneg: false,
                pad: [0; 4],
                origin: Origin::Other,
                map: None,
                nhwc: false,
            }),
        );
        for idx in order {
            let n = &graph.node[idx];
            let result = c.convert_node(idx, n);
            let op = n.op_type.as_deref().unwrap_or("");
            let label = c.label(n, idx);
            match result {
                Ok(vals) => {
                    for (k, name) in n.output.iter().enumerate() {
                        if name.is_empty() {
                            continue;
                        }
                        let v = vals.get(k).cloned().unwrap_or(Val::Poison);
                        c.values.insert(name.clone(), v);
                    }
                }
                Err(f) => {
                    match f {
                        Fail::Unsupported(m) => {
                            c.unsupported.push(format!("`{label}` ({op}): {m}"))
                        }
                        Fail::Invalid(m) => {
                            return Err(c.err(format!("{op}: {m}")).node(label));
                        }
                        Fail::Poisoned => {}
                    }
                    for name in &n.output {
                        c.values.insert(name.clone(), Val::Poison);
                    }
                }
            }
        }
        if !c.unsupported.is_empty() {
            let k = c.unsupported.len();
            return Err(c.err(format!(
                "cannot import: {k} unsupported node{}:\n  {}",
                if k == 1 { "" } else { "s" },
                c.unsupported.join("\n  ")
            )));
        }
        let out = c.values.get(&out_name).cloned();
        let d = match out {
            Some(Val::Dyn(d)) => d,
            Some(Val::Const(_)) => {
                return Err(c.err(format!(
                    "no classifier output: the output `{out_name}` is a constant that does not depend on the input"
                )))
            }
            _ => return Err(c.err(format!("the output `{out_name}` is not computed"))),
        };
        if d.map.is_some() {
            return Err(c.err(format!(
                "the output `{out_name}` is a rearrangement (Transpose, Gather, ...) of a run-time value; advex supports those only before a Gemm or MatMul"
            )));
        }
        let is_classifier = matches!(d.dims.as_slice(), [1, _] | [1, _, 1, 1]) && d.pad == [0; 4];
        if !is_classifier {
            return Err(c.err(format!(
                "no classifier output: the output `{out_name}` has shape {} (batch as 1); advex needs class scores of shape [N, K] or [N, K, 1, 1]",
                fmt_dims(&d.dims)
            )));
        }
        if d.src == "input" {
            return Err(c.err(format!(
                "no classifier output: the output `{out_name}` is the graph input itself"
            )));
        }
        let classes = d.dims[1];
        c.prune(&d.src);
        Ok((
            c,
            Converted {
                input: input.chw,
                output: d.src,
                classes,
            },
        ))
    }

    /// The graph input (inputs that are not initializers): one 4-D float tensor.
    pub(super) fn graph_input(
        &self,
        graph: &GraphProto,
        size: Option<[u32; 2]>,
    ) -> Result<InputInfo, crate::ModelError> {
        use crate::onnx::proto::tensor_shape_proto::dimension::Value as DimV;
        use crate::onnx::proto::type_proto::Value as TypeV;
        let real: Vec<_> = graph
            .input
            .iter()
            .filter(|i| {
                !self
                    .reserved_tensors
                    .contains(i.name.as_deref().unwrap_or(""))
            })
            .collect();
        let vi = match real.as_slice() {
            [one] => *one,
            [] => return Err(self.err("the graph has no input (every input is an initializer)")),
            many => {
                let names: Vec<_> = many
                    .iter()
                    .map(|i| format!("`{}`", i.name.as_deref().unwrap_or("")))
                    .collect();
                return Err(self.err(format!(
                    "the graph has {} inputs ({}); advex imports models with one image input",
                    many.len(),
                    names.join(", ")
                )));
            }
        };
        let name = vi.name.clone().unwrap_or_default();
        let ierr = |m: String| self.err(format!("graph input `{name}`: {m}"));
        let tensor = match vi.r#type.as_ref().and_then(|t| t.value.as_ref()) {
            Some(TypeV::TensorType(tt)) => tt,
            _ => return Err(ierr("it is not a tensor".into())),
        };
        let et = tensor.elem_type.unwrap_or(0);
        if et != crate::onnx::proto::tensor_proto::DataType::Float as i32 {
            return Err(ierr(format!(
                "its element type is {}; advex imports float32 inputs only",
                t::dtype_name(et)
            )));
        }
        let dims: Vec<Option<i64>> = match &tensor.shape {
            Some(s) => s
                .dim
                .iter()
                .map(|d| match d.value {
                    Some(DimV::DimValue(v)) if v > 0 => Some(v),
                    _ => None,
                })
                .collect(),
            None => {
                return Err(ierr(
                    "its shape is not given; advex needs [N, C, H, W]".into(),
                ))
            }
        };
        if dims.len() != 4 {
            return Err(ierr(format!(
                "it has rank {}; advex imports image models with input [N, C, H, W]",
                dims.len()
            )));
        }
        let show: Vec<String> = tensor
            .shape
            .iter()
            .flat_map(|s| s.dim.iter())
            .map(|d| match &d.value {
                Some(DimV::DimValue(v)) => v.to_string(),
                Some(DimV::DimParam(p)) => p.clone(),
                None => "?".into(),
            })
            .collect();
        let c = dims[1].and_then(|c| u32::try_from(c).ok()).ok_or_else(|| {
            ierr(format!(
                "its channel count is not fixed (shape [{}]); re-export with a fixed channel count",
                show.join(", ")
            ))
        })?;
        let fixed = |k: usize| dims[k].and_then(|v| u32::try_from(v).ok());
        let hw = match (fixed(2), fixed(3), size) {
            (Some(h), Some(w), None) => [h, w],
            (Some(h), Some(w), Some(s)) => {
                if s != [h, w] {
                    return Err(ierr(format!(
                        "its size is fixed at {h}x{w} in the file; --size {}x{} differs (leave --size out)",
                        s[0], s[1]
                    )));
                }
                [h, w]
            }
            (h, w, Some(s)) => {
                for (got, want, what) in [(h, s[0], "height"), (w, s[1], "width")] {
                    if let Some(g) = got {
                        if g != want {
                            return Err(ierr(format!(
                                "its {what} is fixed at {g} in the file but --size gives {want}"
                            )));
                        }
                    }
                }
                s
            }
            _ => {
                return Err(ierr(format!(
                    "its height and width are dynamic (shape [{}]); pass --size HxW (for example --size 224x224)",
                    show.join(", ")
                )))
            }
        };
        if c == 0 || hw[0] == 0 || hw[1] == 0 {
            return Err(ierr("a dimension is zero".into()));
        }
        Ok(InputInfo {
            name,
            chw: [c, hw[0], hw[1]],
        })
    }

    /// Topological order of the nodes the output depends on; fills
    /// `consumers` and `final_softmax`.
    pub(super) fn plan(
        &mut self,
        graph: &GraphProto,
        known: &HashSet<String>,
    ) -> Result<Vec<usize>, crate::ModelError> {
        let mut producer: HashMap<&str, usize> = HashMap::new();
        for (i, n) in graph.node.iter().enumerate() {
            for o in &n.output {
                if o.is_empty() {
                    continue;
                }
                if known.contains(o) || producer.insert(o, i).is_some() {
                    return Err(self
                        .err(format!("value `{o}` is produced more than once"))
                        .node(self.label(n, i)));
                }
            }
        }
        // Liveness: the nodes the output depends on.
        let mut live = vec![false; graph.node.len()];
        let mut stack = vec![self.output.as_str()];
        if !known.contains(&self.output) && !producer.contains_key(self.output.as_str()) {
            return Err(self.err(format!(
                "the graph output `{}` is not produced by any node",
                self.output
            )));
        }
        while let Some(v) = stack.pop() {
            if let Some(&i) = producer.get(v) {
                if !live[i] {
                    live[i] = true;
                    for inp in &graph.node[i].input {
                        if !inp.is_empty() {
                            stack.push(inp);
                        }
                    }
                }
            }
        }
        // Kahn's algorithm, keeping file order among ready nodes.
        let mut indeg = vec![0usize; graph.node.len()];
        let mut users: HashMap<usize, Vec<usize>> = HashMap::new();
        for (i, n) in graph.node.iter().enumerate() {
            if !live[i] {
                continue;
            }
            for inp in n.input.iter().filter(|s| !s.is_empty()) {
                *self.consumers.entry(inp.clone()).or_default() += 1;
                match producer.get(inp.as_str()) {
                    Some(&p) => {
                        indeg[i] += 1;
                        users.entry(p).or_default().push(i);
                    }
                    None if known.contains(inp) => {}
                    None => {
                        return Err(self
                            .err(format!(
                                "input `{inp}` is not a graph input, an initializer or any node's output"
                            ))
                            .node(self.label(n, i)))
                    }
                }
            }
        }
        *self.consumers.entry(self.output.clone()).or_default() += 1;
        let mut ready: std::collections::BTreeSet<usize> = (0..graph.node.len())
            .filter(|&i| live[i] && indeg[i] == 0)
            .collect();
        let mut order = Vec::new();
        while let Some(i) = ready.pop_first() {
            order.push(i);
            for &u in users.get(&i).map(Vec::as_slice).unwrap_or(&[]) {
                indeg[u] -= 1;
                if indeg[u] == 0 {
                    ready.insert(u);
                }
            }
        }
        if order.len() != live.iter().filter(|&&l| l).count() {
            return Err(self.err("the graph has a cycle"));
        }
        // Softmax nodes whose output reaches the graph output through
        // layout-only ops: dropped (attacks need logits).
        for &i in &order {
            let n = &graph.node[i];
            if !matches!(n.op_type.as_deref(), Some("Softmax" | "LogSoftmax")) {
                continue;
            }
            let mut v = n.output.first().cloned().unwrap_or_default();
            let mut steps = 0;
            loop {
                if v == self.output {
                    if self.consumers.get(&v) == Some(&1) {
                        self.final_softmax.insert(i);
                    }
                    break;
                }
                let next: Vec<usize> = users
                    .get(&producer.get(v.as_str()).copied().unwrap_or(usize::MAX))
                    .map(|u| {
                        u.iter()
                            .copied()
                            .filter(|&k| graph.node[k].input.contains(&v))
                            .collect()
                    })
                    .unwrap_or_default();
                let [k] = next.as_slice() else { break };
                let m = &graph.node[*k];
                let layout_only = matches!(
                    m.op_type.as_deref(),
                    Some(
                        "Identity"
                            | "Dropout"
                            | "Flatten"
                            | "Reshape"
                            | "Squeeze"
                            | "Unsqueeze"
                            | "Cast"
                    )
                );
                if !layout_only
                    || m.input.first() != Some(&v)
                    || self.consumers.get(&v) != Some(&1)
                    || steps > 64
                {
                    break;
                }
                v = m.output.first().cloned().unwrap_or_default();
                steps += 1;
            }
        }
        Ok(order)
    }

    // ---- value access -------------------------------------------------
}
