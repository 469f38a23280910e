//! Recording a dispatch: uniforms, the grid (folded past the adapter's
//! per-dimension limit), bindings checked against the kernel.

use super::*;

impl Context {
    /// A small uniform buffer holding `params`.
    pub fn uniform<T: Pod>(&self, params: &T) -> wgpu::Buffer {
        self.device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some("params"),
                contents: bytemuck::bytes_of(params),
                usage: wgpu::BufferUsages::UNIFORM,
            })
    }

    /// Workgroup grid for `groups` workgroups, folded into two dimensions past the
    /// per-dimension limit. Shaders rebuild the flat index as
    /// `wid.x + wid.y * nwg.x` and return when it reaches the count.
    pub fn grid(&self, groups: u32) -> [u32; 3] {
        let groups = groups.max(1);
        if groups <= self.max_groups {
            [groups, 1, 1]
        } else {
            let y = groups.div_ceil(self.max_groups);
            [groups.div_ceil(y), y, 1]
        }
    }

    /// Record one dispatch of `kernel` over `groups` workgroups (flat count), with
    /// `params` at binding 0 and `tensors` at bindings 1...
    pub fn dispatch(
        &self,
        label: impl Into<String>,
        kernel: &Arc<Kernel>,
        params: &wgpu::Buffer,
        tensors: &[&Tensor],
        groups: u32,
    ) -> Result<Step> {
        let label = label.into();
        if tensors.len() != kernel.key.bindings.len() {
            return Err(Error::Validation {
                context: format!("recording {label}"),
                message: format!(
                    "kernel {}::{} takes {} tensors, got {}",
                    kernel.key.shader,
                    kernel.key.entry,
                    kernel.key.bindings.len(),
                    tensors.len()
                ),
            });
        }
        let mut entries = vec![wgpu::BindGroupEntry {
            binding: 0,
            resource: params.as_entire_binding(),
        }];
        for (i, t) in tensors.iter().enumerate() {
            let want = kernel.key.bindings[i].dtype(kernel.key.dtype);
            if t.dtype != want {
                return Err(Error::Validation {
                    context: format!("recording {label}"),
                    message: format!(
                        "kernel {}::{} ({}) takes {want} at binding {}, got a {} tensor",
                        kernel.key.shader,
                        kernel.key.entry,
                        kernel.key.dtype,
                        i + 1,
                        t.dtype
                    ),
                });
            }
            if t.bytes() > self.max_binding_bytes() {
                return Err(Error::TooLarge {
                    context: label,
                    bytes: t.bytes(),
                    limit: self.max_binding_bytes(),
                });
            }
            entries.push(wgpu::BindGroupEntry {
                binding: i as u32 + 1,
                resource: t.binding(),
            });
        }
        let bind_group = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(&label),
            layout: &kernel.layout,
            entries: &entries,
        });
        Ok(Step::Dispatch {
            kernel: kernel.clone(),
            bind_group,
            groups: self.grid(groups),
            label,
            keep: tensors.iter().map(|t| t.buffer.clone()).collect(),
        })
    }
}
