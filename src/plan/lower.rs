//! Lowering: every graph op's forward and backward recordings, side by side,
//! so an op is added (or changed) in one place. The plans decide buffers,
//! fusion and gradient accumulation; this file only says which kernels record
//! each op.

use super::*;

/// What one node's recordings read besides its op.
pub(super) struct Lowering<'a> {
    pub ctx: &'a Context,
    /// The node's weights, if its op has any.
    pub weights: &'a Weights,
    /// The model's weight copies in kernel layouts (transposed, repacked).
    pub prepared: &'a PreparedWeights,
    /// For errors: the node's name.
    pub name: &'a str,
}

impl Lowering<'_> {
    /// The op needs weights this node does not have (`pass`: "" or "backward of ").
    fn missing(&self, pass: &str) -> Error {
        Error::Validation {
            context: format!("recording {pass}node {}", self.name),
            message: "parameters missing for this op".into(),
        }
    }

    /// Record `y = op(xs)`, with `act` applied in the epilogue of ops that take
    /// one (convolutions and linear layers fused with the activation after them).
    pub(super) fn forward(
        &self,
        rec: &mut Recording,
        op: &Op,
        xs: &[&Tensor],
        act: Activation,
        y: &Tensor,
    ) -> Result<()> {
        let ctx = self.ctx;
        match (op, self.weights) {
            (Op::Conv2d { params, .. }, Weights::Conv { w, b }) => ops::conv::forward_act_with(
                ctx,
                rec,
                params,
                xs[0],
                w,
                b.as_ref(),
                act,
                y,
                Some(self.prepared),
            ),
            (Op::Linear { .. }, Weights::Conv { w, b }) => {
                ops::linear::forward_act(ctx, rec, xs[0], w, b.as_ref(), act, y)
            }
            (Op::Affine { .. }, Weights::Affine { scale, shift }) => {
                ops::affine::forward(ctx, rec, xs[0], scale, shift, y)
            }
            (Op::Activation(a), _) => ops::activation::forward(ctx, rec, *a, xs[0], y),
            (Op::MaxPool(p), _) => ops::pool::max_forward(ctx, rec, p, xs[0], y),
            (Op::AvgPool(p), _) => ops::pool::avg_forward(ctx, rec, p, xs[0], y),
            (Op::GlobalAvgPool, _) => ops::pool::global_avg_forward(ctx, rec, xs[0], y),
            (Op::Add, _) => ops::binary::forward(ctx, rec, BinaryOp::Add, xs[0], xs[1], y),
            (Op::Mul, _) => ops::binary::forward(ctx, rec, BinaryOp::Mul, xs[0], xs[1], y),
            (Op::Concat, _) => ops::concat::forward(ctx, rec, xs, y),
            (Op::Softmax, _) => ops::softmax::forward(ctx, rec, xs[0], y),
            (Op::LayerNorm { eps, .. }, Weights::Affine { scale, shift }) => {
                ops::layer_norm::forward(ctx, rec, xs[0], scale, shift, *eps, y)
            }
            _ => Err(self.missing("")),
        }
    }

    /// Record the gradients `gxs` (one per input, overwritten) from the output
    /// gradient `gy`, given the forward's inputs `xs` and output `y`. `fused`:
    /// this activation ran in the epilogue of the convolution before it (its
    /// input was never stored, so its derivative comes from `y`). `through`:
    /// this convolution's input is the output of that activation, whose
    /// derivative its backward pass applies as it writes
    /// ([`ops::conv::backward_through`]).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn backward(
        &self,
        rec: &mut Recording,
        op: &Op,
        xs: &[&Tensor],
        y: &Tensor,
        gy: &Tensor,
        gxs: &[&Tensor],
        fused: bool,
        through: Option<Activation>,
    ) -> Result<()> {
        let ctx = self.ctx;
        match (op, self.weights) {
            (Op::Conv2d { params, .. }, Weights::Conv { w, .. }) => {
                let through = through.map(|act| ops::conv::Through { act, y: xs[0] });
                let prepared = Some(self.prepared);
                ops::conv::backward_through(ctx, rec, params, gy, w, gxs[0], through, prepared)
            }
            (Op::Linear { .. }, Weights::Conv { w, .. }) => {
                ops::linear::backward(ctx, rec, gy, w, gxs[0])
            }
            (Op::Affine { .. }, Weights::Affine { scale, .. }) => {
                ops::affine::backward(ctx, rec, gy, scale, gxs[0])
            }
            (Op::Activation(a), _) if fused => {
                ops::activation::backward_from_output(ctx, rec, *a, y, gy, gxs[0])
            }
            (Op::Activation(a), _) => ops::activation::backward(ctx, rec, *a, xs[0], gy, gxs[0]),
            (Op::MaxPool(p), _) => ops::pool::max_backward(ctx, rec, p, xs[0], gy, gxs[0]),
            (Op::AvgPool(p), _) => ops::pool::avg_backward(ctx, rec, p, gy, gxs[0]),
            (Op::GlobalAvgPool, _) => ops::pool::global_avg_backward(ctx, rec, gy, gxs[0]),
            (Op::Add, _) | (Op::Mul, _) => {
                let bop = if matches!(op, Op::Add) {
                    BinaryOp::Add
                } else {
                    BinaryOp::Mul
                };
                let (g0, g1) = (Some(gxs[0]), Some(gxs[1]));
                ops::binary::backward(ctx, rec, bop, xs[0], xs[1], gy, g0, g1)
            }
            (Op::Concat, _) => ops::concat::backward(ctx, rec, gy, gxs),
            (Op::Softmax, _) => ops::softmax::backward(ctx, rec, y, gy, gxs[0]),
            (Op::LayerNorm { eps, .. }, Weights::Affine { scale, .. }) => {
                ops::layer_norm::backward(ctx, rec, xs[0], scale, *eps, gy, gxs[0])
            }
            _ => Err(self.missing("backward of ")),
        }
    }
}
