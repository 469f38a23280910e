//! GPU time per dispatch from timestamp queries.

use super::*;

impl Context {
    /// Run recordings with one timestamp pair per dispatch; returns
    /// (label, nanoseconds) per dispatch. Needs TIMESTAMP_QUERY.
    pub fn profile(&self, recordings: &[&Recording]) -> Result<Vec<(String, f64)>> {
        if !self.features.contains(wgpu::Features::TIMESTAMP_QUERY) {
            return Err(Error::Usage(format!(
                "adapter {} has no timestamp queries; --profile is unavailable",
                self.summary.name
            )));
        }
        let n = recordings.iter().map(|r| r.dispatch_count()).sum::<usize>();
        let mut timer = Timer::new(self, n as u32);
        self.run_inner(recordings, &[], Some(&mut timer))?;
        timer.results(self)
    }
}

/// Timestamp queries, one pair per dispatch.
pub(crate) struct Timer {
    set: wgpu::QuerySet,
    resolve: wgpu::Buffer,
    read: wgpu::Buffer,
    labels: Vec<String>,
    capacity: u32,
    period: f32,
    mapped: Option<std::sync::mpsc::Receiver<Result<(), wgpu::BufferAsyncError>>>,
}

impl Timer {
    pub(super) fn new(ctx: &Context, dispatches: u32) -> Self {
        let capacity = (dispatches * 2).clamp(2, 4096);
        let set = ctx.device.create_query_set(&wgpu::QuerySetDescriptor {
            label: Some("advex timestamps"),
            ty: wgpu::QueryType::Timestamp,
            count: capacity,
        });
        let bytes = capacity as u64 * 8;
        let resolve = ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("timestamps"),
            size: bytes,
            usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        let read = ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("timestamps read"),
            size: bytes,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        Timer {
            set,
            resolve,
            read,
            labels: Vec::new(),
            capacity,
            period: ctx.queue.get_timestamp_period(),
            mapped: None,
        }
    }

    pub(crate) fn next(&mut self, label: &str) -> Option<wgpu::ComputePassTimestampWrites<'_>> {
        let i = self.labels.len() as u32;
        if 2 * i + 1 >= self.capacity {
            return None;
        }
        self.labels.push(label.to_string());
        Some(wgpu::ComputePassTimestampWrites {
            query_set: &self.set,
            beginning_of_pass_write_index: Some(2 * i),
            end_of_pass_write_index: Some(2 * i + 1),
        })
    }

    pub(super) fn resolve(&mut self, encoder: &mut wgpu::CommandEncoder) {
        let n = (self.labels.len() as u32 * 2).max(2);
        encoder.resolve_query_set(&self.set, 0..n, &self.resolve, 0);
        encoder.copy_buffer_to_buffer(&self.resolve, 0, &self.read, 0, n as u64 * 8);
    }

    pub(super) fn map(&mut self) {
        let (tx, rx) = std::sync::mpsc::channel();
        self.read
            .slice(..)
            .map_async(wgpu::MapMode::Read, move |r| {
                let _ = tx.send(r);
            });
        self.mapped = Some(rx);
    }

    pub(super) fn results(self, _ctx: &Context) -> Result<Vec<(String, f64)>> {
        if let Some(rx) = &self.mapped {
            rx.recv()
                .map_err(|e| Error::DeviceLost(e.to_string()))?
                .map_err(|e| Error::DeviceLost(e.to_string()))?;
        }
        let view = self
            .read
            .slice(..)
            .get_mapped_range()
            .map_err(|e| Error::DeviceLost(format!("reading timestamps: {e}")))?;
        let ticks: &[u64] = bytemuck::cast_slice(&view);
        let out = self
            .labels
            .iter()
            .enumerate()
            .map(|(i, l)| {
                let dt = ticks[2 * i + 1].saturating_sub(ticks[2 * i]);
                (l.clone(), dt as f64 * self.period as f64)
            })
            .collect();
        Ok(out)
    }
}
