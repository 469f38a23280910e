//! Running recordings: one submit per call, readback of tensors, errors
//! captured on the way.

use super::*;

impl Context {
    pub(super) fn take_uncaptured(&self, context: &str) -> Result<()> {
        let mut errs = self.uncaptured.lock().unwrap();
        if errs.is_empty() {
            return Ok(());
        }
        let message = errs.join("; ");
        errs.clear();
        Err(Error::Validation {
            context: context.to_string(),
            message,
        })
    }

    /// Run recordings in one submit and wait for them.
    pub fn run(&self, recordings: &[&Recording]) -> Result<()> {
        self.run_read_bytes(recordings, &[]).map(|_| ())
    }

    /// Run recordings, then copy `reads` back, all in one submit. Returns f32 data
    /// (F16 tensors converted).
    pub fn run_read(&self, recordings: &[&Recording], reads: &[&Tensor]) -> Result<Vec<Vec<f32>>> {
        Ok(self
            .run_read_bytes(recordings, reads)?
            .into_iter()
            .zip(reads)
            .map(|(b, t)| decode(t, &b))
            .collect())
    }

    /// Read a tensor back.
    pub fn read(&self, t: &Tensor) -> Result<Vec<f32>> {
        Ok(self.run_read(&[], &[t])?.remove(0))
    }

    /// Run recordings and read back the given tensors' raw bytes, in one submit.
    pub fn run_read_bytes(
        &self,
        recordings: &[&Recording],
        reads: &[&Tensor],
    ) -> Result<Vec<Vec<u8>>> {
        self.run_inner(recordings, reads, None)
    }

    pub(super) fn run_inner(
        &self,
        recordings: &[&Recording],
        reads: &[&Tensor],
        timer: Option<&mut Timer>,
    ) -> Result<Vec<Vec<u8>>> {
        let pending = self.submit_inner(recordings, reads, timer)?;
        self.wait_read(pending)
    }

    /// Run recordings and copy `reads` back, in one submit, without waiting:
    /// [`Context::wait_read`] gives the bytes. Work submitted after it (and
    /// [`Context::write`]s made after it) runs after it on the device, so the
    /// host can prepare and submit the next batch while this one runs.
    pub fn submit_read(&self, recordings: &[&Recording], reads: &[&Tensor]) -> Result<Pending> {
        self.submit_inner(recordings, reads, None)
    }

    fn submit_inner(
        &self,
        recordings: &[&Recording],
        reads: &[&Tensor],
        timer: Option<&mut Timer>,
    ) -> Result<Pending> {
        let context = "running GPU work";
        let scopes = Scopes::push(&self.device);
        let mut encoder = self
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("advex"),
            });
        let mut timer_opt = timer;
        encode(&mut encoder, recordings, timer_opt.as_deref_mut());
        if let Some(t) = timer_opt.as_deref_mut() {
            t.resolve(&mut encoder);
        }
        let mut staging = Vec::with_capacity(reads.len());
        for t in reads {
            let bytes = t.bytes();
            let s = self.raw_buffer(
                bytes.max(4),
                wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                "readback",
            );
            if bytes > 0 {
                encoder.copy_buffer_to_buffer(t.raw(), 0, s.raw(), 0, bytes);
            }
            staging.push((s, bytes));
        }
        let index = self.queue.submit([encoder.finish()]);
        self.submits.fetch_add(1, Ordering::Relaxed);
        let mut pending = Vec::new();
        for (s, bytes) in &staging {
            if *bytes == 0 {
                continue;
            }
            let (tx, rx) = std::sync::mpsc::channel();
            s.raw()
                .slice(0..*bytes)
                .map_async(wgpu::MapMode::Read, move |r| {
                    let _ = tx.send(r);
                });
            pending.push(rx);
        }
        if let Some(t) = timer_opt.as_mut() {
            t.map();
        }
        // Validation and out-of-memory errors of encoding and submitting
        // surface here, before anything waits.
        scopes.pop(context)?;
        self.take_uncaptured(context)?;
        Ok(Pending {
            staging,
            mapped: pending,
            index,
        })
    }

    /// Wait for a [`Context::submit_read`] and return its reads' bytes.
    pub fn wait_read(&self, p: Pending) -> Result<Vec<Vec<u8>>> {
        let context = "running GPU work";
        self.device
            .poll(wgpu::PollType::Wait {
                submission_index: Some(p.index),
                timeout: None,
            })
            .map_err(|e| Error::DeviceLost(e.to_string()))?;
        self.take_uncaptured(context)?;
        let mut out = Vec::with_capacity(p.staging.len());
        let mut rx_iter = p.mapped.into_iter();
        for (s, bytes) in &p.staging {
            if *bytes == 0 {
                out.push(Vec::new());
                continue;
            }
            rx_iter
                .next()
                .unwrap()
                .recv()
                .map_err(|e| Error::DeviceLost(e.to_string()))?
                .map_err(|e| Error::DeviceLost(format!("mapping a readback buffer failed: {e}")))?;
            let view = s
                .raw()
                .slice(0..*bytes)
                .get_mapped_range()
                .map_err(|e| Error::DeviceLost(format!("reading back: {e}")))?;
            out.push(view.to_vec());
            drop(view);
            s.raw().unmap();
        }
        Ok(out)
    }
}

/// Work submitted by [`Context::submit_read`] whose reads are not back yet.
#[must_use = "wait_read gives the results (and any error)"]
pub struct Pending {
    staging: Vec<(GpuBuffer, u64)>,
    mapped: Vec<std::sync::mpsc::Receiver<std::result::Result<(), wgpu::BufferAsyncError>>>,
    index: wgpu::SubmissionIndex,
}
