//! The inference rewrites, as three passes: identity resolution, BatchNorm
//! folding into the convolution before it, and compaction (dead nodes
//! dropped, the rest renumbered).

use super::*;

impl Builder<'_, '_> {
    /// The rewrites, in order: identities resolved, batch norms folded into
    /// the convolution before them (the rest become affines), then the nodes
    /// that reach the output kept and renumbered.
    pub(super) fn rewrite(
        &self,
        mut ir: Vec<IrNode>,
        out: usize,
    ) -> Result<(Vec<Node>, usize), ModelError> {
        let mut alias: Vec<Option<Src>> = vec![None; ir.len()];
        let out_node = self.resolve_identities(&mut ir, &mut alias, out)?;
        self.fold_batch_norms(&mut ir, &mut alias, out_node)?;
        self.compact(ir, &alias, out)
    }

    /// Pass 1: every identity becomes an alias of its input, and every input
    /// points past aliases. Returns the node giving the output.
    fn resolve_identities(
        &self,
        ir: &mut [IrNode],
        alias: &mut [Option<Src>],
        out: usize,
    ) -> Result<usize, ModelError> {
        for i in 0..ir.len() {
            let ins: Vec<Src> = ir[i].inputs.iter().map(|&s| resolve(alias, s)).collect();
            if let IrOp::Identity = ir[i].op {
                alias[i] = Some(ins[0]);
            }
            ir[i].inputs = ins;
        }
        match resolve(alias, Src::Node(out)) {
            Src::Node(j) => Ok(j),
            Src::Input => Err(self.err(
                &ir[out].name,
                "the output is the graph input itself: there is nothing to compute",
            )),
        }
    }

    /// Pass 2: a batch norm whose input is a convolution read by nothing else
    /// is folded into that convolution's weights and bias (and becomes its
    /// alias); non-finite results are an error naming the batch norm.
    fn fold_batch_norms(
        &self,
        ir: &mut [IrNode],
        alias: &mut [Option<Src>],
        out_node: usize,
    ) -> Result<(), ModelError> {
        let n = ir.len();
        let live = liveness(ir, alias, out_node);
        let mut consumers = vec![0usize; n];
        consumers[out_node] += 1;
        for i in (0..n).filter(|&i| live[i] && alias[i].is_none()) {
            for s in &ir[i].inputs {
                if let Src::Node(j) = s {
                    consumers[*j] += 1;
                }
            }
        }
        for i in 0..n {
            if !live[i] || alias[i].is_some() {
                continue;
            }
            let ins: Vec<Src> = ir[i].inputs.iter().map(|&s| resolve(alias, s)).collect();
            ir[i].inputs = ins;
            let IrOp::Bn { scale, shift } = &ir[i].op else {
                continue;
            };
            let Src::Node(j) = ir[i].inputs[0] else {
                continue;
            };
            if consumers[j] != 1 || !matches!(ir[j].op, IrOp::Final(Op::Conv2d { .. })) {
                continue;
            }
            let (scale, shift) = (scale.clone(), shift.clone());
            let bn_name = ir[i].name.clone();
            let conv = &mut ir[j];
            if let IrOp::Final(Op::Conv2d { weight, bias, .. }) = &mut conv.op {
                let oc = weight.shape[0] as usize;
                let per = weight.data.len() / oc.max(1);
                for (o, chunk) in weight.data.chunks_mut(per.max(1)).enumerate() {
                    let s = scale.get(o).copied().unwrap_or(1.0);
                    for v in chunk {
                        *v = (*v as f64 * s) as f32;
                    }
                }
                let b: Vec<f32> = (0..oc)
                    .map(|o| {
                        let b0 = bias.as_ref().and_then(|b| b.get(o)).copied().unwrap_or(0.0);
                        let (s, t) = (scale.get(o).copied(), shift.get(o).copied());
                        (b0 as f64 * s.unwrap_or(1.0) + t.unwrap_or(0.0)) as f32
                    })
                    .collect();
                let bad = weight.data.iter().chain(&b).any(|v| !v.is_finite());
                if bad {
                    return Err(self.err(
                        &bn_name,
                        format!(
                            "folding into `{}` gives non-finite weights (running_var too small?)",
                            conv.name
                        ),
                    ));
                }
                *bias = Some(b);
            }
            conv.name = format!("{}+{}", conv.name, bn_name);
            alias[i] = Some(Src::Node(j));
            consumers[j] = consumers[i];
        }
        Ok(())
    }

    /// Pass 3: the nodes that reach the output, renumbered in order, the
    /// remaining batch norms as affines. Returns them and the output's index.
    fn compact(
        &self,
        ir: Vec<IrNode>,
        alias: &[Option<Src>],
        out: usize,
    ) -> Result<(Vec<Node>, usize), ModelError> {
        let Src::Node(out_node) = resolve(alias, Src::Node(out)) else {
            return Err(self.err(&ir[out].name, "the output is the graph input itself"));
        };
        let live = liveness(&ir, alias, out_node);
        let mut index = vec![usize::MAX; ir.len()];
        let mut nodes = Vec::new();
        for (i, node) in ir.into_iter().enumerate() {
            if !live[i] || alias[i].is_some() {
                continue;
            }
            let op = match node.op {
                IrOp::Final(op) => op,
                IrOp::Bn { scale, shift } => {
                    let scale: Vec<f32> = scale.iter().map(|&v| v as f32).collect();
                    let shift: Vec<f32> = shift.iter().map(|&v| v as f32).collect();
                    if scale.iter().chain(&shift).any(|v| !v.is_finite()) {
                        return Err(self.err(
                            &node.name,
                            "batch_norm gives a non-finite scale (running_var too small?)",
                        ));
                    }
                    Op::Affine { scale, shift }
                }
                IrOp::Identity => continue,
            };
            let inputs = node
                .inputs
                .iter()
                .map(|&s| match resolve(alias, s) {
                    Src::Input => Src::Input,
                    Src::Node(j) => Src::Node(index[j]),
                })
                .collect();
            index[i] = nodes.len();
            nodes.push(Node {
                name: node.name,
                op,
                inputs,
                shape: node.shape,
            });
        }
        Ok((nodes, index[out_node]))
    }
}

/// Follows aliases from `s` to the node (or input) that gives its value.
fn resolve(alias: &[Option<Src>], mut s: Src) -> Src {
    while let Src::Node(i) = s {
        match alias[i] {
            Some(t) => s = t,
            None => break,
        }
    }
    s
}

/// Nodes whose value reaches `out` (inputs always point to earlier nodes).
fn liveness(ir: &[IrNode], alias: &[Option<Src>], out: usize) -> Vec<bool> {
    let mut live = vec![false; ir.len()];
    live[out] = true;
    for i in (0..ir.len()).rev() {
        if !live[i] {
            continue;
        }
        let srcs: Vec<Src> = match alias[i] {
            Some(s) => vec![s],
            None => ir[i].inputs.clone(),
        };
        for s in srcs {
            if let Src::Node(j) = s {
                live[j] = true;
            }
        }
    }
    live
}
