//! Weights in the layouts their kernels need, prepared once. Some kernels read
//! a transposed or repacked copy of a convolution's weights; recorded inline,
//! that copy would be remade in every forward and backward of every batch and
//! eps. A model on the device ([`crate::plan::GpuModel`]) owns a
//! [`PreparedWeights`]: the first plan that needs a copy records its making
//! into a pending list, which the model submits once before the plan runs;
//! every later plan reuses the copy. Ops called without one (tests, tuning)
//! record the copy inline as before.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::error::Result;
use crate::gpu::{Context, Recording, Tensor};

/// Derived weights of one model, keyed by the source weight and the layout.
#[derive(Default)]
pub struct PreparedWeights {
    cache: Mutex<HashMap<(usize, String), Tensor>>,
    pending: Mutex<Recording>,
}

impl PreparedWeights {
    pub fn new() -> Self {
        Self::default()
    }

    /// The copy of `w` in layout `key`, made by `make` (recorded into the
    /// pending list) the first time. `w` must never be rewritten while this
    /// cache lives (a model's uploaded weights).
    pub fn get(
        &self,
        w: &Tensor,
        key: String,
        make: impl FnOnce(&mut Recording) -> Result<Tensor>,
    ) -> Result<Tensor> {
        let id = (Arc::as_ptr(&w.buffer) as usize, key);
        if let Some(t) = self.cache.lock().unwrap().get(&id) {
            return Ok(t.clone());
        }
        let t = make(&mut self.pending.lock().unwrap())?;
        self.cache.lock().unwrap().insert(id, t.clone());
        Ok(t)
    }

    /// Submit the copies recorded since the last call (before a new plan runs).
    pub fn flush(&self, ctx: &Context) -> Result<()> {
        let rec = std::mem::take(&mut *self.pending.lock().unwrap());
        if rec.is_empty() {
            return Ok(());
        }
        ctx.run(&[&rec])
    }

    /// Copies made so far.
    pub fn len(&self) -> usize {
        self.cache.lock().unwrap().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// `w` in layout `key`: from the model's cache when there is one, else made
/// inline into `rec`.
pub(crate) fn derived(
    prepared: Option<&PreparedWeights>,
    rec: &mut Recording,
    w: &Tensor,
    key: impl FnOnce() -> String,
    make: impl FnOnce(&mut Recording) -> Result<Tensor>,
) -> Result<Tensor> {
    match prepared {
        Some(p) => p.get(w, key(), make),
        None => make(rec),
    }
}
