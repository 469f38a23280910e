//! Compute kernels and their cache key: (shader, entry point, specialisation constants).

/// How a kernel sees one tensor binding. Binding 0 is always the uniform parameter
/// block; tensors follow at bindings 1, 2, ... in the order the op passes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Binding {
    Read,
    ReadWrite,
}

/// Cache key of a compiled pipeline.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KernelKey {
    pub shader: &'static str,
    pub entry: &'static str,
    /// Override constants as (name, value bits), sorted by name.
    pub constants: Vec<(String, u64)>,
    pub bindings: Vec<Binding>,
}

impl KernelKey {
    pub fn new(
        shader: &'static str,
        entry: &'static str,
        bindings: &[Binding],
        constants: &[(&str, f64)],
    ) -> Self {
        let mut c: Vec<(String, u64)> = constants
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_bits()))
            .collect();
        c.sort();
        KernelKey {
            shader,
            entry,
            constants: c,
            bindings: bindings.to_vec(),
        }
    }
}

/// A compiled compute pipeline with its bind group layout.
pub struct Kernel {
    pub key: KernelKey,
    pub pipeline: wgpu::ComputePipeline,
    pub layout: wgpu::BindGroupLayout,
}

impl std::fmt::Debug for Kernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Kernel({}::{})", self.key.shader, self.key.entry)
    }
}

pub(crate) fn layout_entries(bindings: &[Binding]) -> Vec<wgpu::BindGroupLayoutEntry> {
    let mut entries = vec![wgpu::BindGroupLayoutEntry {
        binding: 0,
        visibility: wgpu::ShaderStages::COMPUTE,
        ty: wgpu::BindingType::Buffer {
            ty: wgpu::BufferBindingType::Uniform,
            has_dynamic_offset: false,
            min_binding_size: None,
        },
        count: None,
    }];
    for (i, b) in bindings.iter().enumerate() {
        entries.push(wgpu::BindGroupLayoutEntry {
            binding: i as u32 + 1,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer {
                ty: wgpu::BufferBindingType::Storage {
                    read_only: *b == Binding::Read,
                },
                has_dynamic_offset: false,
                min_binding_size: None,
            },
            count: None,
        });
    }
    entries
}
