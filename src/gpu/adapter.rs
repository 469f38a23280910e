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

/// The NVIDIA adapters, in the order CUDA numbers them: PCI bus order where
/// every one reports a bus id (CUDA's order with `CUDA_DEVICE_ORDER=PCI_BUS_ID`,
/// and its default order on hosts of identical GPUs), else Vulkan's order.
/// Returns the indices into `adapters` and whether bus ids gave the order.
fn nvidia_in_cuda_order(adapters: &[AdapterId]) -> (Vec<usize>, bool) {
    let mut nvidia: Vec<usize> = (0..adapters.len())
        .filter(|&i| adapters[i].vendor == 0x10de && !adapters[i].software)
        .collect();
    let by_bus = !nvidia.is_empty() && nvidia.iter().all(|&i| !adapters[i].pci_bus_id.is_empty());
    if by_bus {
        nvidia.sort_by(|&a, &b| adapters[a].pci_bus_id.cmp(&adapters[b].pci_bus_id));
    }
    (nvidia, by_bus)
}

/// Every adapter a scheduler's `CUDA_VISIBLE_DEVICES` assigns, in its order
/// (see [`cuda_visible_choice`] for one). `Ok(None)` where the variable does not
/// map (unset, empty, UUIDs, no NVIDIA adapter).
pub fn cuda_visible_set(
    visible: Option<&str>,
    adapters: &[AdapterId],
) -> Result<Option<(Vec<usize>, String)>, String> {
    let Some((first, how)) = cuda_visible_choice(visible, adapters)? else {
        return Ok(None);
    };
    let v = visible.unwrap_or_default().trim();
    let (nvidia, _) = nvidia_in_cuda_order(adapters);
    let mut chosen = vec![first];
    for item in v
        .split(',')
        .skip(1)
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        let k: usize = item.parse().map_err(|_| {
            format!("CUDA_VISIBLE_DEVICES={v}: {item:?} is not a GPU index (mixing indices and UUIDs is not supported)")
        })?;
        let &i = nvidia.get(k).ok_or_else(|| {
            format!(
                "CUDA_VISIBLE_DEVICES={v} asks for NVIDIA GPU {k}, but Vulkan offers {} NVIDIA \
                 adapter{}; check the driver's Vulkan ICD (`advex devices`)",
                nvidia.len(),
                if nvidia.len() == 1 { "" } else { "s" }
            )
        })?;
        if !chosen.contains(&i) {
            chosen.push(i);
        }
    }
    let how = if chosen.len() == 1 {
        how
    } else {
        format!(
            "CUDA_VISIBLE_DEVICES={v}: GPUs {} are adapters {} (NVIDIA adapters numbered as \
             CUDA does; the first: {how})",
            v,
            chosen
                .iter()
                .map(|i| i.to_string())
                .collect::<Vec<_>>()
                .join(",")
        )
    };
    Ok(Some((chosen, how)))
}

/// The adapters `--devices` names, as indices into `adapters` (the order of
/// `advex devices`), with a sentence saying how they were chosen.
///
/// - `all`: every real GPU (those `CUDA_VISIBLE_DEVICES` assigns, where it is
///   set and maps); only where there is none, the software adapters. Software
///   and real adapters are never mixed by `all`.
/// - `0,2`: those indices, in that order; an index given twice opens two
///   devices on one adapter (two batch streams), which is how the parity tests
///   drive two devices on one llvmpipe.
/// - anything else: every adapter whose name contains it (case-insensitive),
///   real GPUs first as with `all`.
pub fn select_devices(
    spec: &str,
    adapters: &[AdapterId],
    cuda_visible: Option<&str>,
) -> Result<(Vec<usize>, String), String> {
    let spec = spec.trim();
    let listing = || {
        adapters
            .iter()
            .enumerate()
            .map(|(i, a)| format!("{i}: {}", a.name))
            .collect::<Vec<_>>()
            .join(", ")
    };
    if adapters.is_empty() {
        return Err("no adapter at all (`advex devices` says why)".into());
    }
    if spec.is_empty() {
        return Err(
            "--devices is empty: give all, a comma list of indices (`advex devices`) or a name"
                .into(),
        );
    }
    let real_first = |pool: Vec<usize>| -> Vec<usize> {
        let real: Vec<usize> = pool
            .iter()
            .copied()
            .filter(|&i| !adapters[i].software)
            .collect();
        if real.is_empty() {
            pool
        } else {
            real
        }
    };
    if spec.eq_ignore_ascii_case("all") {
        if let Some((set, how)) = cuda_visible_set(cuda_visible, adapters)? {
            return Ok((set, how));
        }
        let chosen = real_first((0..adapters.len()).collect());
        let how = if adapters[chosen[0]].software {
            format!(
                "--devices all: no GPU adapter, so the software adapter{} {}",
                if chosen.len() == 1 { "" } else { "s" },
                join(&chosen)
            )
        } else {
            format!("--devices all: every GPU adapter ({})", join(&chosen))
        };
        return Ok((chosen, how));
    }
    let items: Vec<&str> = spec.split(',').map(str::trim).collect();
    if items.iter().all(|s| s.parse::<usize>().is_ok()) {
        let chosen: Vec<usize> = items.iter().map(|s| s.parse().unwrap()).collect();
        if let Some(&bad) = chosen.iter().find(|&&i| i >= adapters.len()) {
            return Err(format!(
                "--devices {spec}: there is no adapter {bad}; the adapters are {}",
                listing()
            ));
        }
        return Ok((
            chosen.clone(),
            format!("--devices {spec}: adapters {}", join(&chosen)),
        ));
    }
    if items.iter().any(|s| s.parse::<usize>().is_ok()) {
        return Err(format!(
            "--devices {spec}: give either indices (0,2) or one name, not both"
        ));
    }
    let lw = spec.to_lowercase();
    let matching: Vec<usize> = (0..adapters.len())
        .filter(|&i| adapters[i].name.to_lowercase().contains(&lw))
        .collect();
    if matching.is_empty() {
        return Err(format!(
            "--devices {spec}: no adapter's name contains {spec:?}; the adapters are {}",
            listing()
        ));
    }
    let chosen = real_first(matching);
    Ok((
        chosen.clone(),
        format!("--devices {spec}: adapters {}", join(&chosen)),
    ))
}

/// Several devices' adapter names in one phrase: `NAME`, `2 x NAME`, or `A + B`.
pub fn devices_phrase<'a>(names: impl IntoIterator<Item = &'a str>) -> String {
    let names: Vec<&str> = names.into_iter().collect();
    match names.as_slice() {
        [] => String::new(),
        [one] => one.to_string(),
        [first, rest @ ..] if rest.iter().all(|n| n == first) => {
            format!("{} x {first}", names.len())
        }
        _ => names.join(" + "),
    }
}

fn join(list: &[usize]) -> String {
    list.iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(",")
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
    let (nvidia, by_bus) = nvidia_in_cuda_order(adapters);
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

    #[test]
    fn devices_select_gpus_indices_and_names() {
        let soft = AdapterId {
            software: true,
            ..id("llvmpipe (LLVM 15)", 0x10005, "")
        };
        let list = [
            id("NVIDIA H200", 0x10de, "0000:9b:00.0"),
            soft.clone(),
            id("NVIDIA H200", 0x10de, "0000:1b:00.0"),
            id("AMD Radeon", 0x1002, "0000:05:00.0"),
        ];
        let sel = |s: &str, cuda: Option<&str>| select_devices(s, &list, cuda).map(|(v, _)| v);
        // all: every real GPU, never the software adapter
        assert_eq!(sel("all", None), Ok(vec![0, 2, 3]));
        assert_eq!(sel("ALL", None), Ok(vec![0, 2, 3]));
        // a scheduler's assignment wins, in CUDA's (bus) order
        assert_eq!(sel("all", Some("1,0")), Ok(vec![0, 2]));
        assert_eq!(sel("all", Some("1")), Ok(vec![0]));
        assert!(sel("all", Some("0,5")).unwrap_err().contains("GPU 5"));
        // indices, in order, repeats allowed (two streams on one adapter)
        assert_eq!(sel("2,0", None), Ok(vec![2, 0]));
        assert_eq!(sel("1,1", None), Ok(vec![1, 1]));
        assert!(sel("0,7", None).unwrap_err().contains("no adapter 7"));
        assert!(sel("0,h200", None).unwrap_err().contains("not both"));
        // names: case-insensitive substring
        assert_eq!(sel("h200", None), Ok(vec![0, 2]));
        assert_eq!(sel("llvmpipe", None), Ok(vec![1]));
        assert!(sel("A100", None).unwrap_err().contains("0: NVIDIA H200"));
        assert!(sel(" ", None).is_err());
        // a machine with only software adapters: all means them
        let cpu_only = [soft.clone(), soft];
        let (v, how) = select_devices("all", &cpu_only, None).unwrap();
        assert_eq!(v, vec![0, 1]);
        assert!(how.contains("software"), "{how}");
    }
}
