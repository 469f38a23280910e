//! A recording: many GPU steps replayed into one command buffer and one submit.

use std::sync::Arc;

use super::{GpuBuffer, Kernel};

/// One recorded GPU step.
#[derive(Clone)]
pub enum Step {
    Dispatch {
        kernel: Arc<Kernel>,
        bind_group: wgpu::BindGroup,
        groups: [u32; 3],
        label: String,
        /// Buffers the bind group refers to: held so the pool cannot hand them out again.
        keep: Vec<Arc<GpuBuffer>>,
    },
    /// Fill a buffer with zeros.
    Clear { buffer: Arc<GpuBuffer> },
    /// Copy `bytes` bytes between buffers (offsets and size multiples of 4).
    Copy {
        src: Arc<GpuBuffer>,
        src_offset: u64,
        dst: Arc<GpuBuffer>,
        dst_offset: u64,
        bytes: u64,
    },
}

/// An ordered list of steps. Build it once, replay it for every batch.
#[derive(Default)]
pub struct Recording {
    pub steps: Vec<Step>,
}

impl Recording {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn push(&mut self, step: Step) {
        self.steps.push(step);
    }
    pub fn extend(&mut self, other: Recording) {
        self.steps.extend(other.steps);
    }
    /// Number of compute dispatches in this recording.
    pub fn dispatch_count(&self) -> usize {
        self.steps
            .iter()
            .filter(|s| matches!(s, Step::Dispatch { .. }))
            .count()
    }
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }
    pub fn len(&self) -> usize {
        self.steps.len()
    }
}

/// Encode steps into the encoder: consecutive dispatches share one compute pass
/// (wgpu inserts the barriers between them).
pub(crate) fn encode(
    encoder: &mut wgpu::CommandEncoder,
    recordings: &[&Recording],
    mut timer: Option<&mut super::context::Timer>,
) {
    let mut iter = recordings.iter().flat_map(|r| r.steps.iter()).peekable();
    while let Some(step) = iter.next() {
        match step {
            Step::Dispatch {
                kernel,
                bind_group,
                groups,
                label,
                ..
            } if timer.is_some() => {
                // Profiling: one pass per dispatch so each gets its own timestamps.
                let t = timer.as_deref_mut().unwrap();
                let writes = t.next(label);
                let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: Some(label),
                    timestamp_writes: writes,
                });
                pass.set_pipeline(&kernel.pipeline);
                pass.set_bind_group(0, bind_group, &[]);
                pass.dispatch_workgroups(groups[0], groups[1], groups[2]);
            }
            Step::Dispatch { .. } => {
                let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: Some("advex"),
                    timestamp_writes: None,
                });
                let mut current = Some(step);
                while let Some(Step::Dispatch {
                    kernel,
                    bind_group,
                    groups,
                    ..
                }) = current
                {
                    pass.set_pipeline(&kernel.pipeline);
                    pass.set_bind_group(0, bind_group, &[]);
                    pass.dispatch_workgroups(groups[0], groups[1], groups[2]);
                    current = match iter.peek() {
                        Some(Step::Dispatch { .. }) => iter.next(),
                        _ => None,
                    };
                }
            }
            Step::Clear { buffer } => encoder.clear_buffer(buffer.raw(), 0, None),
            Step::Copy {
                src,
                src_offset,
                dst,
                dst_offset,
                bytes,
            } => encoder.copy_buffer_to_buffer(
                src.raw(),
                *src_offset,
                dst.raw(),
                *dst_offset,
                *bytes,
            ),
        }
    }
}
