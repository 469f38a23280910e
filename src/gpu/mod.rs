//! GPU infrastructure: adapter and device, buffers and their pool, the pipeline
//! cache, recording many dispatches into one submit, and readback.

mod adapter;
mod buffer;
mod context;
pub mod coop;
mod diagnose;
mod pipeline;
mod record;
mod registry;
mod shader;
mod tune;

pub use adapter::{
    cuda_visible_choice, cuda_visible_set, describe_adapter, devices_phrase, list_adapters,
    quiet_window_system_probes, select_devices, AdapterId, AdapterSummary,
};
pub use buffer::{DType, GpuBuffer, Shape, Tensor};
pub use context::{decode, Context, ContextOptions, KernelStyle, Pending};
pub use diagnose::{Diagnosis, GpuNode, IcdFile, Vendor};
pub use pipeline::{Binding, Kernel, KernelKey};
pub use record::{Recording, Step};
pub(crate) use registry::uniform_layout;
pub use registry::{uniform_layouts, UniformLayout};
pub use shader::{shader_modules, Shader, WORKGROUP_1D, WORKGROUP_DIRECT, WORKGROUP_IMAGES};
pub use tune::{default_cache_path, TuneTable};

/// Ceiling division.
pub fn div_ceil(a: u32, b: u32) -> u32 {
    a.div_ceil(b)
}
