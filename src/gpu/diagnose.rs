//! Why the GPU is (not) used: what the OS shows of GPUs and Vulkan drivers.
//!
//! wgpu falls back to a software adapter (Mesa's llvmpipe) without a word when
//! a GPU's Vulkan driver is missing, which turns a run of minutes into days. The
//! usual causes on cloud machines and in containers: an NVIDIA container started
//! without the `graphics` driver capability (no Vulkan ICD is mounted), a host
//! without the driver's Vulkan part, no Vulkan loader, or `VK_DRIVER_FILES`
//! pointing elsewhere. [`Diagnosis::gather`] collects the facts (loader, ICD
//! manifests, GPU device nodes, environment) and [`Diagnosis::advice`] turns them
//! into what to do; `advex devices` prints both, the software-adapter warning and
//! the `--require-gpu` refusal quote the advice.

use std::path::{Path, PathBuf};

use serde::Serialize;

/// Environment variables that decide which Vulkan driver and adapter are used.
pub const VARIABLES: [&str; 9] = [
    "VK_DRIVER_FILES",
    "VK_ICD_FILENAMES",
    "VK_ADD_DRIVER_FILES",
    "NVIDIA_DRIVER_CAPABILITIES",
    "NVIDIA_VISIBLE_DEVICES",
    "CUDA_VISIBLE_DEVICES",
    "WGPU_ADAPTER_NAME",
    "WGPU_BACKEND",
    "ADVEX_REQUIRE_GPU",
];

/// A Vulkan driver manifest (ICD JSON file) the loader would read.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct IcdFile {
    pub path: PathBuf,
    /// `ICD.library_path` from the file (empty when unreadable).
    pub library: String,
    /// Which driver this is, in words.
    pub driver: String,
}

impl IcdFile {
    fn is_software(&self) -> bool {
        self.library.contains("lvp") || self.library.contains("swiftshader")
    }
    fn vendor(&self) -> Option<Vendor> {
        let l = self.library.to_ascii_lowercase();
        if l.contains("nvidia") {
            Some(Vendor::Nvidia)
        } else if l.contains("radeon") || l.contains("amdvlk") || l.contains("amd") {
            Some(Vendor::Amd)
        } else if l.contains("intel") {
            Some(Vendor::Intel)
        } else {
            None
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Vendor {
    Nvidia,
    Amd,
    Intel,
}

impl Vendor {
    pub fn name(self) -> &'static str {
        match self {
            Vendor::Nvidia => "NVIDIA",
            Vendor::Amd => "AMD",
            Vendor::Intel => "Intel",
        }
    }
    fn from_pci(id: &str) -> Option<Self> {
        match id.trim().to_ascii_lowercase().as_str() {
            "0x10de" => Some(Vendor::Nvidia),
            "0x1002" => Some(Vendor::Amd),
            "0x8086" => Some(Vendor::Intel),
            _ => None,
        }
    }
}

/// A GPU device node the OS exposes (`/dev/nvidia0`, `/dev/dri/renderD128`).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct GpuNode {
    pub path: PathBuf,
    /// `None` for a render node of another vendor (virtual GPUs and the like).
    pub vendor: Option<Vendor>,
}

/// What the OS shows of GPUs and Vulkan.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Diagnosis {
    /// The Vulkan loader library, when it loads (`None`: not installed).
    pub loader: Option<String>,
    pub icds: Vec<IcdFile>,
    pub gpu_nodes: Vec<GpuNode>,
    /// The variables that steer adapter choice (VK_*, NVIDIA_*, CUDA_VISIBLE_DEVICES,
    /// WGPU_*, ADVEX_REQUIRE_GPU) that are set.
    pub env: Vec<(String, String)>,
}

impl Diagnosis {
    /// Look at this machine.
    pub fn gather() -> Self {
        let mut d = Self::gather_under(Path::new("/"), &|k| std::env::var(k).ok());
        d.loader = vulkan_loader();
        d
    }

    /// Look at a tree laid out like `/` (tests), with `env` for the variables.
    /// The loader is looked for as a file in the usual library folders.
    pub fn gather_under(root: &Path, env: &dyn Fn(&str) -> Option<String>) -> Self {
        let under = |p: &str| root.join(p.trim_start_matches('/'));
        let loader = [
            "usr/lib/x86_64-linux-gnu",
            "usr/lib/aarch64-linux-gnu",
            "usr/lib64",
            "usr/lib",
        ]
        .iter()
        .map(|d| under(d).join("libvulkan.so.1"))
        .find(|p| p.exists())
        .map(|p| p.display().to_string());
        let mut seen = std::collections::HashSet::new();
        let icds: Vec<IcdFile> = icd_paths(env)
            .iter()
            .flat_map(|p| json_files(&under(&p.to_string_lossy())))
            .filter(|p| seen.insert(p.clone()))
            .map(|p| read_icd(&p))
            .collect();
        let mut gpu_nodes = Vec::new();
        for e in sorted_dir(&under("/dev")) {
            let name = file_name(&e);
            if name
                .strip_prefix("nvidia")
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            {
                gpu_nodes.push(GpuNode {
                    path: e,
                    vendor: Some(Vendor::Nvidia),
                });
            }
        }
        for e in sorted_dir(&under("/dev/dri")) {
            let name = file_name(&e);
            if name.starts_with("renderD") {
                let vendor = std::fs::read_to_string(
                    under("/sys/class/drm").join(&name).join("device/vendor"),
                )
                .ok()
                .and_then(|v| Vendor::from_pci(&v));
                gpu_nodes.push(GpuNode { path: e, vendor });
            }
        }
        let env = VARIABLES
            .iter()
            .filter_map(|k| env(k).map(|v| (k.to_string(), v)))
            .collect();
        Diagnosis {
            loader,
            icds,
            gpu_nodes,
            env,
        }
    }

    fn var(&self, k: &str) -> Option<&str> {
        self.env
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.as_str())
    }

    /// GPUs of a known vendor visible to the OS.
    pub fn gpus(&self) -> impl Iterator<Item = &GpuNode> {
        self.gpu_nodes.iter().filter(|n| n.vendor.is_some())
    }

    /// What keeps a visible GPU from being used, and what to do; `None` when
    /// nothing here explains it (no GPU visible, or every GPU has its driver).
    pub fn advice(&self) -> Option<String> {
        if self.loader.is_none() {
            return Some(
                "the Vulkan loader (libvulkan.so.1) is not installed: install it \
                 (Debian/Ubuntu: apt-get install libvulkan1)"
                    .into(),
            );
        }
        if let Some(files) = self.var("VK_DRIVER_FILES").or(self.var("VK_ICD_FILENAMES")) {
            if !self.icds.is_empty() && self.icds.iter().all(IcdFile::is_software) {
                return Some(format!(
                    "VK_DRIVER_FILES/VK_ICD_FILENAMES={files} limits Vulkan to the software \
                     driver: unset it"
                ));
            }
        }
        let gpu = self.gpus().next()?;
        let vendor = gpu.vendor?;
        let has_icd = self.icds.iter().any(|i| i.vendor() == Some(vendor));
        let at = format!("{} GPU at {}", vendor.name(), gpu.path.display());
        Some(match vendor {
            Vendor::Nvidia if !has_icd => match self.var("NVIDIA_DRIVER_CAPABILITIES") {
                Some(caps) if !caps.contains("graphics") && !caps.contains("all") => format!(
                    "the {at} has no Vulkan driver: this container was started with \
                     NVIDIA_DRIVER_CAPABILITIES={caps}, which leaves out the driver's Vulkan ICD; \
                     start it with -e NVIDIA_DRIVER_CAPABILITIES=compute,utility,graphics"
                ),
                _ => format!(
                    "the {at} has no Vulkan driver (no nvidia_icd.json in /etc/vulkan/icd.d or \
                     /usr/share/vulkan/icd.d): install the driver's Vulkan part (Ubuntu: \
                     libnvidia-gl-<driver version>, Debian: nvidia-vulkan-icd), or in a \
                     container add graphics to NVIDIA_DRIVER_CAPABILITIES"
                ),
            },
            Vendor::Amd | Vendor::Intel if !has_icd => format!(
                "the {at} has no Vulkan driver: install Mesa's (Debian/Ubuntu: apt-get install \
                 mesa-vulkan-drivers)"
            ),
            _ => format!(
                "the {at} has a Vulkan driver ({}) but it offered no adapter: its user-space \
                 library may not match the kernel driver, or this user may lack access to {}; \
                 VK_LOADER_DEBUG=error,warn advex devices shows the loader's reasons",
                self.icds
                    .iter()
                    .find(|i| i.vendor() == Some(vendor))
                    .map(|i| i.path.display().to_string())
                    .unwrap_or_default(),
                gpu.path.display()
            ),
        })
    }

    /// The report `advex devices` prints under the adapters.
    pub fn lines(&self) -> Vec<String> {
        let mut out = vec![format!(
            "Vulkan loader: {}",
            self.loader
                .as_deref()
                .unwrap_or("not found (install libvulkan1)")
        )];
        if self.icds.is_empty() {
            out.push("Vulkan drivers (ICD files): none".into());
        } else {
            out.push("Vulkan drivers (ICD files):".into());
            for i in &self.icds {
                out.push(format!("  {} ({})", i.path.display(), i.driver));
            }
        }
        if self.gpu_nodes.is_empty() {
            out.push("GPU devices: none visible (/dev/nvidia*, /dev/dri/renderD*)".into());
        } else {
            let nodes: Vec<String> = self
                .gpu_nodes
                .iter()
                .map(|n| match n.vendor {
                    Some(v) => format!("{} ({})", n.path.display(), v.name()),
                    None => n.path.display().to_string(),
                })
                .collect();
            out.push(format!("GPU devices: {}", nodes.join(", ")));
        }
        for k in VARIABLES {
            out.push(format!("{k}={}", self.var(k).unwrap_or("(unset)")));
        }
        out
    }
}

/// `libvulkan.so.1` (or the platform's name) when it loads.
fn vulkan_loader() -> Option<String> {
    let name = if cfg!(windows) {
        "vulkan-1.dll"
    } else if cfg!(target_os = "macos") {
        "libvulkan.1.dylib"
    } else {
        "libvulkan.so.1"
    };
    // SAFETY: loading the Vulkan loader runs no initialisation that conflicts
    // with wgpu, which loads the very same library.
    unsafe { libloading::Library::new(name) }
        .ok()
        .map(|_| name.to_string())
}

/// The loader's ICD search path (files or folders).
fn icd_paths(env: &dyn Fn(&str) -> Option<String>) -> Vec<PathBuf> {
    let split = |v: String| -> Vec<PathBuf> {
        v.split(':')
            .filter(|s| !s.is_empty())
            .map(PathBuf::from)
            .collect()
    };
    let add = env("VK_ADD_DRIVER_FILES").map(split).unwrap_or_default();
    if let Some(v) = env("VK_DRIVER_FILES").or_else(|| env("VK_ICD_FILENAMES")) {
        return split(v).into_iter().chain(add).collect();
    }
    let home = env("HOME").map(PathBuf::from);
    let mut dirs = Vec::new();
    let config_home = env("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| home.as_ref().map(|h| h.join(".config")));
    dirs.extend(config_home);
    dirs.extend(split(
        env("XDG_CONFIG_DIRS").unwrap_or_else(|| "/etc/xdg".into()),
    ));
    dirs.push("/etc".into());
    let data_home = env("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| home.as_ref().map(|h| h.join(".local/share")));
    dirs.extend(data_home);
    dirs.extend(split(
        env("XDG_DATA_DIRS").unwrap_or_else(|| "/usr/local/share:/usr/share".into()),
    ));
    dirs.into_iter()
        .map(|d| d.join("vulkan/icd.d"))
        .chain(add)
        .collect()
}

/// A manifest file itself, or the `.json` files of a folder.
fn json_files(p: &Path) -> Vec<PathBuf> {
    if p.is_file() {
        return vec![p.to_path_buf()];
    }
    sorted_dir(p)
        .into_iter()
        .filter(|f| f.extension().is_some_and(|e| e == "json"))
        .collect()
}

fn sorted_dir(p: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(p)
        .map(|r| r.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    v.sort();
    v
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn read_icd(path: &Path) -> IcdFile {
    let library = std::fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v["ICD"]["library_path"].as_str().map(str::to_string))
        .unwrap_or_default();
    let file = file_name(path);
    let l = format!("{library} {file}").to_ascii_lowercase();
    let driver = if l.contains("lvp") {
        "Mesa lavapipe, software".to_string()
    } else if l.contains("nvidia") {
        "NVIDIA".to_string()
    } else if l.contains("radeon") {
        "Mesa RADV, AMD".to_string()
    } else if l.contains("amd") {
        "AMD".to_string()
    } else if l.contains("intel") {
        "Mesa, Intel".to_string()
    } else if library.is_empty() {
        "unreadable".to_string()
    } else {
        library.clone()
    };
    IcdFile {
        path: path.to_path_buf(),
        library: if library.is_empty() { file } else { library },
        driver,
    }
}
