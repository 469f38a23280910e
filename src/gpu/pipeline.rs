//! Compute kernels and their cache key: (shader, storage type, entry point,
//! specialisation constants).

use super::buffer::DType;
use super::shader::Shader;

/// How a kernel sees one tensor binding. Binding 0 is always the uniform parameter
/// block; tensors follow at bindings 1, 2, ... in the order the op passes them.
///
/// `Read` / `ReadWrite` hold elements of the kernel's storage type (`st` in the
/// shader: f32, or f16 for an F16 kernel); `ReadF32` / `ReadWriteF32` always hold
/// 4-byte elements (f32 or u32: images, labels, losses). [`crate::gpu::Context::dispatch`]
/// refuses a tensor whose dtype does not match.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Binding {
    Read,
    ReadWrite,
    ReadF32,
    ReadWriteF32,
}

impl Binding {
    pub fn read_only(self) -> bool {
        matches!(self, Binding::Read | Binding::ReadF32)
    }
    /// The dtype a tensor bound here must have, for a kernel of storage type `st`.
    pub fn dtype(self, st: DType) -> DType {
        match self {
            Binding::Read | Binding::ReadWrite => st,
            Binding::ReadF32 | Binding::ReadWriteF32 => DType::F32,
        }
    }
}

/// Cache key of a compiled pipeline.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KernelKey {
    pub shader: Shader,
    /// Storage type of the kernel's `st` bindings.
    pub dtype: DType,
    pub entry: &'static str,
    /// Override constants as (name, value bits), sorted by name.
    pub constants: Vec<(String, u64)>,
    pub bindings: Vec<Binding>,
}

impl KernelKey {
    pub fn new(
        shader: Shader,
        dtype: DType,
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
            dtype,
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
        write!(
            f,
            "Kernel({}::{}:{})",
            self.key.shader, self.key.entry, self.key.dtype
        )
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
                    read_only: b.read_only(),
                },
                has_dynamic_offset: false,
                min_binding_size: None,
            },
            count: None,
        });
    }
    entries
}
