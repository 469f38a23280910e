//! Adapter discovery and choice.

use serde::{Deserialize, Serialize};

/// What `advex devices` prints and what reports record about the adapter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdapterSummary {
    pub name: String,
    pub backend: String,
    pub device_type: String,
    pub driver: String,
    pub max_storage_buffer_binding_size: u64,
    pub max_buffer_size: u64,
    pub max_compute_workgroups_per_dimension: u32,
    pub max_compute_invocations_per_workgroup: u32,
    pub max_compute_workgroup_storage_size: u32,
    pub shader_f16: bool,
    pub timestamp_query: bool,
}

pub fn describe_adapter(adapter: &wgpu::Adapter) -> AdapterSummary {
    let info = adapter.get_info();
    let limits = adapter.limits();
    let features = adapter.features();
    AdapterSummary {
        name: info.name.clone(),
        backend: format!("{:?}", info.backend),
        device_type: device_type_name(info.device_type).to_string(),
        driver: if info.driver_info.is_empty() {
            info.driver.clone()
        } else {
            format!("{} {}", info.driver, info.driver_info)
        },
        max_storage_buffer_binding_size: limits.max_storage_buffer_binding_size,
        max_buffer_size: limits.max_buffer_size,
        max_compute_workgroups_per_dimension: limits.max_compute_workgroups_per_dimension,
        max_compute_invocations_per_workgroup: limits.max_compute_invocations_per_workgroup,
        max_compute_workgroup_storage_size: limits.max_compute_workgroup_storage_size,
        shader_f16: features.contains(wgpu::Features::SHADER_F16),
        timestamp_query: features.contains(wgpu::Features::TIMESTAMP_QUERY),
    }
}

pub(crate) fn device_type_name(t: wgpu::DeviceType) -> &'static str {
    match t {
        wgpu::DeviceType::DiscreteGpu => "discrete GPU",
        wgpu::DeviceType::IntegratedGpu => "integrated GPU",
        wgpu::DeviceType::VirtualGpu => "virtual GPU",
        wgpu::DeviceType::Cpu => "CPU (software)",
        wgpu::DeviceType::Other => "other",
    }
}

/// Rank for automatic choice: discrete > integrated > virtual > other > CPU.
pub(crate) fn rank(adapter: &wgpu::Adapter) -> u32 {
    let info = adapter.get_info();
    let type_rank = match info.device_type {
        wgpu::DeviceType::DiscreteGpu => 50,
        wgpu::DeviceType::IntegratedGpu => 40,
        wgpu::DeviceType::VirtualGpu => 30,
        wgpu::DeviceType::Other => 20,
        wgpu::DeviceType::Cpu => 10,
    };
    // Prefer the native modern backends over GL for the same device.
    let backend_rank = match info.backend {
        wgpu::Backend::Vulkan | wgpu::Backend::Metal | wgpu::Backend::Dx12 => 2,
        wgpu::Backend::Gl => 0,
        _ => 1,
    };
    type_rank + backend_rank
}

/// Keeps Mesa's device-select Vulkan layer out of the process, unless the user
/// steers it (`MESA_VK_DEVICE_SELECT`) or has set `NODEVICE_SELECT` already.
///
/// The layer only reorders devices (advex ranks adapters itself), but in order
/// to find the display's GPU it connects to Wayland, which prints
/// `error: XDG_RUNTIME_DIR is invalid or not set in the environment.` twice on
/// every headless machine. It is disabled through the environment variable its
/// manifest names, so this must run before any other thread starts (the first
/// line of `main`, or once before the first [`crate::Context`]).
pub fn quiet_window_system_probes() {
    if std::env::var_os("MESA_VK_DEVICE_SELECT").is_none()
        && std::env::var_os("NODEVICE_SELECT").is_none()
    {
        std::env::set_var("NODEVICE_SELECT", "1");
    }
}

pub(crate) fn instance() -> wgpu::Instance {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
    if std::env::var_os("WGPU_BACKEND").is_none() {
        // GL compute lacks what we need on most drivers; use it only when asked.
        desc.backends = wgpu::Backends::VULKAN | wgpu::Backends::METAL | wgpu::Backends::DX12;
    }
    wgpu::Instance::new(desc)
}

/// Every adapter wgpu can see, best first.
pub fn list_adapters() -> Vec<wgpu::Adapter> {
    let instance = instance();
    let mut adapters = pollster::block_on(instance.enumerate_adapters(wgpu::Backends::all()));
    adapters.retain(|a| {
        // Compute shaders are all we need; GL adapters without compute are useless.
        a.get_downlevel_capabilities()
            .flags
            .contains(wgpu::DownlevelFlags::COMPUTE_SHADERS)
    });
    adapters.sort_by_key(|a| std::cmp::Reverse(rank(a)));
    adapters
}
