//! Buffers handed out again once their values are dead.

use super::*;

/// Buffers a plan may hand out again once the values in them are dead. Reuse is
/// safe inside one recording because the GPU runs its steps in order.
pub(super) struct Arena<'a> {
    ctx: &'a Context,
    free: Vec<Arc<GpuBuffer>>,
}

impl<'a> Arena<'a> {
    pub(super) fn new(ctx: &'a Context) -> Self {
        Arena {
            ctx,
            free: Vec::new(),
        }
    }

    pub(super) fn tensor(&mut self, shape: Shape, dtype: DType, label: &str) -> Result<Tensor> {
        let need = shape.bytes_as(dtype);
        let best = self
            .free
            .iter()
            .enumerate()
            .filter(|(_, b)| b.size() >= need && b.size() <= need.saturating_mul(2).max(4096))
            .min_by_key(|(_, b)| b.size())
            .map(|(i, _)| i);
        match best {
            Some(i) => Ok(Tensor {
                buffer: self.free.swap_remove(i),
                shape,
                dtype,
            }),
            None => self.ctx.tensor_as(shape, dtype, label),
        }
    }

    pub(super) fn release(&mut self, t: &Tensor) {
        if !self.free.iter().any(|b| Arc::ptr_eq(b, &t.buffer)) {
            self.free.push(t.buffer.clone());
        }
    }
}
