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

/// What `CUDA_VISIBLE_DEVICES` says about one adapter: enough to map it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdapterId {
    pub name: String,
    /// PCI vendor id (0x10de for NVIDIA).
    pub vendor: u32,
    pub software: bool,
    /// `0000:3b:00.0`, where the driver reports one.
    pub pci_bus_id: String,
}

impl AdapterId {
    pub fn of(a: &wgpu::Adapter) -> Self {
        let i = a.get_info();
        AdapterId {
            name: i.name,
            vendor: i.vendor,
            software: i.device_type == wgpu::DeviceType::Cpu,
            pci_bus_id: i.device_pci_bus_id,
        }
    }
}

/// The adapter a scheduler's `CUDA_VISIBLE_DEVICES` assigns (Vulkan ignores the
/// variable). Its first entry, an index `k`, names the k-th NVIDIA GPU in PCI
/// bus order (CUDA's order with `CUDA_DEVICE_ORDER=PCI_BUS_ID`, and its default
/// order on hosts of identical GPUs). Returns the index into `adapters` and a
/// sentence saying how the mapping was made; `Ok(None)` (with a warning where
/// it matters) when the variable is unset, empty, names GPUs by UUID (which
/// Vulkan does not report here), or there is no NVIDIA adapter; an error when it
/// names a GPU past the last NVIDIA adapter.
pub fn cuda_visible_choice(
    visible: Option<&str>,
    adapters: &[AdapterId],
) -> Result<Option<(usize, String)>, String> {
    let Some(v) = visible.map(str::trim) else {
        return Ok(None);
    };
    let first = v.split(',').next().unwrap_or("").trim();
    if first.is_empty() || first == "-1" || first.eq_ignore_ascii_case("NoDevFiles") {
        log::warn!(
            "CUDA_VISIBLE_DEVICES={v:?} gives this process no GPU, but Vulkan does not read \
             it: using the default adapter (pick one with --adapter or WGPU_ADAPTER_NAME)"
        );
        return Ok(None);
    }
    let Ok(k) = first.parse::<usize>() else {
        log::warn!(
            "CUDA_VISIBLE_DEVICES={v}: GPUs named by UUID cannot be matched to Vulkan \
             adapters; using the default adapter (pick one with --adapter or WGPU_ADAPTER_NAME)"
        );
        return Ok(None);
    };
    let mut nvidia: Vec<usize> = (0..adapters.len())
        .filter(|&i| adapters[i].vendor == 0x10de && !adapters[i].software)
        .collect();
    let by_bus = nvidia.iter().all(|&i| !adapters[i].pci_bus_id.is_empty());
    if by_bus {
        nvidia.sort_by(|&a, &b| adapters[a].pci_bus_id.cmp(&adapters[b].pci_bus_id));
    }
    if nvidia.is_empty() {
        log::warn!(
            "CUDA_VISIBLE_DEVICES={v}: Vulkan offers no NVIDIA adapter to map it to; using \
             the default adapter (`advex devices` says why)"
        );
        return Ok(None);
    }
    let Some(&i) = nvidia.get(k) else {
        return Err(format!(
            "CUDA_VISIBLE_DEVICES={v} asks for NVIDIA GPU {k}, but Vulkan offers {} NVIDIA \
             adapter{}; check the driver's Vulkan ICD (`advex devices`)",
            nvidia.len(),
            if nvidia.len() == 1 { "" } else { "s" }
        ));
    };
    let how = format!(
        "CUDA_VISIBLE_DEVICES={v}: GPU {k} is {}{}, the NVIDIA adapter number {k} {}",
        adapters[i].name,
        if by_bus {
            format!(" (PCI {})", adapters[i].pci_bus_id)
        } else {
            String::new()
        },
        if by_bus {
            "in PCI bus order"
        } else {
            "in the order Vulkan lists them (no PCI bus ids reported)"
        }
    );
    Ok(Some((i, how)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(name: &str, vendor: u32, bus: &str) -> AdapterId {
        AdapterId {
            name: name.into(),
            vendor,
            software: false,
            pci_bus_id: bus.into(),
        }
    }

    #[test]
    fn cuda_indices_map_to_nvidia_adapters_in_bus_order() {
        let list = [
            id("NVIDIA H200", 0x10de, "0000:9b:00.0"),
            AdapterId {
                software: true,
                ..id("llvmpipe", 0x10005, "")
            },
            id("NVIDIA H200", 0x10de, "0000:1b:00.0"),
            id("AMD Radeon", 0x1002, "0000:05:00.0"),
            id("NVIDIA H200", 0x10de, "0000:3b:00.0"),
        ];
        let pick = |v: &str| cuda_visible_choice(Some(v), &list).map(|o| o.map(|(i, _)| i));
        assert_eq!(cuda_visible_choice(None, &list), Ok(None));
        assert_eq!(pick("0"), Ok(Some(2)));
        assert_eq!(pick("1,2"), Ok(Some(4)));
        assert_eq!(pick("2"), Ok(Some(0)));
        assert!(pick("3").unwrap_err().contains("offers 3 NVIDIA adapters"));
        assert_eq!(pick(""), Ok(None));
        assert_eq!(pick("-1"), Ok(None));
        assert_eq!(cuda_visible_choice(Some("0"), &list[1..2]), Ok(None));
        assert_eq!(pick("GPU-8a1b2c3d-0000"), Ok(None));
        let (_, how) = cuda_visible_choice(Some("1"), &list).unwrap().unwrap();
        assert!(
            how.contains("PCI 0000:3b:00.0") && how.contains("bus order"),
            "{how}"
        );
        // without bus ids, Vulkan's order
        let plain = [id("NVIDIA A", 0x10de, ""), id("NVIDIA B", 0x10de, "")];
        let (i, how) = cuda_visible_choice(Some("1"), &plain).unwrap().unwrap();
        assert_eq!(i, 1);
        assert!(how.contains("order Vulkan lists"), "{how}");
    }
}
