//! The device context: owns adapter, device, queue, the pipeline cache and the
//! buffer pool, and runs recordings. Here: opening the device (limits,
//! features, the kernel style, the tuning table); by job: [`compile`]
//! (kernels), [`dispatch`] (recording one), [`memory`] (tensors, uploads),
//! [`submit`] (runs and readback), [`profile`] (timestamps).

mod compile;
mod dispatch;
mod memory;
mod profile;
mod submit;

pub use memory::decode;
pub(crate) use profile::Timer;
pub use submit::Pending;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytemuck::Pod;
use wgpu::util::DeviceExt;

use super::adapter::{
    cuda_visible_choice, describe_adapter, list_adapters, AdapterId, AdapterSummary,
};
use super::buffer::{self, DType, GpuBuffer, PoolInner, Shape, Tensor};
use super::diagnose::Diagnosis;
use super::pipeline::{layout_entries, Binding, Kernel, KernelKey};
use super::record::{encode, Recording, Step};
use super::shader::Shader;
use super::tune::{default_cache_path, TuneTable};
use crate::error::{Error, Result};

/// How to open a context.
#[derive(Debug, Clone, Default)]
pub struct ContextOptions {
    /// Case-insensitive substring of the adapter name (`--adapter`); falls back to
    /// the `WGPU_ADAPTER_NAME` environment variable, then to the best adapter.
    pub adapter: Option<String>,
    /// Index into [`list_adapters`] (the numbering of `advex devices`); wins over
    /// `adapter`. Set by `--devices`, which opens one context per listed index.
    pub adapter_index: Option<usize>,
    /// Cap on workgroups per grid dimension used when folding large dispatches
    /// (tests lower it to exercise the fold; defaults to the adapter's limit).
    pub max_workgroups_per_dim: Option<u32>,
    /// Kernel family for convolutions and linear layers; `None` reads the
    /// `ADVEX_KERNELS` environment variable (`tiled` or `direct`), then picks by
    /// adapter type ([`KernelStyle::for_adapter`]).
    pub kernels: Option<KernelStyle>,
    /// File of measured kernel choices (the autotune's cache, see
    /// [`crate::gpu::TuneTable`]); `None` takes [`default_cache_path`].
    pub tune_cache: Option<std::path::PathBuf>,
    /// Keep measured choices in memory only (no file read or written).
    pub tune_in_memory: bool,
    /// Refuse a software adapter (llvmpipe) with an explanation (`--require-gpu`);
    /// `ADVEX_REQUIRE_GPU=1` turns it on too.
    pub require_gpu: bool,
    /// Request the device with storage bindings (and buffers) of at most this
    /// many bytes, below the adapter's own limit (tests use it to exercise
    /// the plans' batch splitting).
    pub max_binding_bytes: Option<u64>,
    /// Request WebGPU's default limits (128 MiB storage bindings, 256 MiB
    /// buffers, 16 KiB of workgroup memory, 256 invocations per workgroup...)
    /// instead of the adapter's own, as a browser or a strict driver would give;
    /// `ADVEX_LIMITS=webgpu` turns it on too (the test suite runs under it).
    pub webgpu_limits: bool,
    /// `--precision mixed`: run convolutions and linear layers on cooperative
    /// matrices (tensor cores: f16 operands, f32 accumulation) where the
    /// adapter has them ([`crate::gpu::coop::CoopReport::check`]); elsewhere
    /// they stay strict f32, and [`Context::coop_note`] says why.
    pub mixed: bool,
}

/// `ADVEX_LIMITS`: `webgpu` asks for WebGPU's default limits, `adapter` (or
/// unset) for the adapter's own.
fn webgpu_limits_from_env() -> Result<bool> {
    match std::env::var("ADVEX_LIMITS") {
        Ok(v) if v.trim().eq_ignore_ascii_case("webgpu") => Ok(true),
        Ok(v) if v.trim().is_empty() || v.trim().eq_ignore_ascii_case("adapter") => Ok(false),
        Ok(v) => Err(Error::Usage(format!(
            "ADVEX_LIMITS={v:?} is not a limit set: use webgpu (WebGPU's default limits) \
             or adapter (the adapter's own), or unset it"
        ))),
        Err(_) => Ok(false),
    }
}

/// Which kernel family runs pointwise convolutions and linear layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelStyle {
    /// Workgroup-tiled GEMM (`shaders/conv/gemm.wgsl`): for GPUs.
    Tiled,
    /// Register-blocked GEMM straight from global memory, no workgroup memory
    /// (`shaders/conv/pointwise_direct.wgsl`): for CPU adapters such as llvmpipe, where each
    /// load instruction and barrier is costly. Shapes it does not cover fall back
    /// to the tiled kernels.
    Direct,
}

impl KernelStyle {
    /// Direct on CPU adapters (software Vulkan), tiled everywhere else.
    pub fn for_adapter(device_type: wgpu::DeviceType) -> Self {
        if device_type == wgpu::DeviceType::Cpu {
            KernelStyle::Direct
        } else {
            KernelStyle::Tiled
        }
    }

    /// Parse `tiled` / `direct` (case-insensitive).
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "tiled" => Some(KernelStyle::Tiled),
            "direct" => Some(KernelStyle::Direct),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            KernelStyle::Tiled => "tiled",
            KernelStyle::Direct => "direct",
        }
    }
}

/// The GPU: device, queue, caches. Cheap to share behind an `Arc`.
pub struct Context {
    pub adapter: wgpu::Adapter,
    pub summary: AdapterSummary,
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub limits: wgpu::Limits,
    pub features: wgpu::Features,
    /// Convolutions run on cooperative matrices (`--precision mixed` on an
    /// adapter that has them).
    coop: bool,
    /// Why `--precision mixed` runs in strict f32 here, if it does.
    coop_note: Option<String>,
    max_groups: u32,
    style: KernelStyle,
    tuning: Mutex<TuneTable>,
    modules: Mutex<HashMap<(Shader, DType), Arc<wgpu::ShaderModule>>>,
    /// The source each shader name was first compiled from: modules and
    /// kernels are cached by name, so one name must always mean one source.
    kernels: Mutex<HashMap<KernelKey, Arc<Kernel>>>,
    pool: Arc<Mutex<PoolInner>>,
    submits: AtomicU64,
    uncaptured: Arc<Mutex<Vec<String>>>,
}

fn convert(err: wgpu::Error, context: &str) -> Error {
    match err {
        wgpu::Error::OutOfMemory { .. } => Error::OutOfMemory {
            context: context.to_string(),
        },
        wgpu::Error::Validation { description, .. } => Error::Validation {
            context: context.to_string(),
            message: description,
        },
        wgpu::Error::Internal { description, .. } => Error::GpuInternal {
            context: context.to_string(),
            message: description,
        },
    }
}

/// Error scopes for out-of-memory, validation and internal errors, popped together.
struct Scopes([Option<wgpu::ErrorScopeGuard>; 3]);

impl Scopes {
    fn push(device: &wgpu::Device) -> Self {
        Scopes([
            Some(device.push_error_scope(wgpu::ErrorFilter::OutOfMemory)),
            Some(device.push_error_scope(wgpu::ErrorFilter::Validation)),
            Some(device.push_error_scope(wgpu::ErrorFilter::Internal)),
        ])
    }
    fn pop(mut self, context: &str) -> Result<()> {
        let mut first = None;
        for g in self.0.iter_mut().rev() {
            if let Some(err) = pollster::block_on(g.take().unwrap().pop()) {
                first.get_or_insert(convert(err, context));
            }
        }
        first.map_or(Ok(()), Err)
    }
}

/// `ADVEX_REQUIRE_GPU`: 1/true/yes/on or 0/false/no/off (unset or empty: off).
fn require_gpu_from_env() -> Result<bool> {
    let v = std::env::var("ADVEX_REQUIRE_GPU").unwrap_or_default();
    match v.trim().to_ascii_lowercase().as_str() {
        "" | "0" | "false" | "no" | "off" => Ok(false),
        "1" | "true" | "yes" | "on" => Ok(true),
        _ => Err(Error::Usage(format!(
            "ADVEX_REQUIRE_GPU={v:?}: use 1 to refuse software adapters, 0 or unset to allow them"
        ))),
    }
}

/// A software adapter is refused when the GPU is required, and otherwise
/// warned about when a GPU is visible to the OS but was not offered (unless
/// the user picked the adapter by name).
fn check_software(adapter: &wgpu::Adapter, require_gpu: bool, picked: bool) -> Result<()> {
    let info = adapter.get_info();
    if info.device_type != wgpu::DeviceType::Cpu || (picked && !require_gpu) {
        return Ok(());
    }
    let diag = Diagnosis::gather();
    if require_gpu {
        return Err(Error::SoftwareAdapter {
            adapter: info.name,
            why: diag.advice().unwrap_or_else(|| {
                "no GPU is visible to this machine (no /dev/nvidia*, no /dev/dri/renderD*): check \
                 that it has one and, in a container, that it was started with --gpus all"
                    .into()
            }),
        });
    }
    if let (Some(gpu), Some(advice)) = (diag.gpus().next(), diag.advice()) {
        log::warn!(
            "running on the software adapter {} although a GPU is visible ({}), hundreds of \
             times slower: {advice}",
            info.name,
            gpu.path.display()
        );
    }
    Ok(())
}

impl Context {
    /// Open the adapter chosen by `options` (see [`ContextOptions::adapter`]).
    pub fn new(options: ContextOptions) -> Result<Self> {
        let require_gpu = options.require_gpu || require_gpu_from_env()?;
        let adapters = list_adapters();
        if adapters.is_empty() {
            return Err(Error::NoAdapter {
                advice: Diagnosis::gather().advice(),
            });
        }
        let wanted = options
            .adapter
            .clone()
            .or_else(|| std::env::var("WGPU_ADAPTER_NAME").ok())
            .filter(|s| !s.is_empty());
        if let Some(i) = options.adapter_index {
            let adapter = adapters.get(i).cloned().ok_or_else(|| {
                Error::Usage(format!(
                    "there is no adapter {i}: `advex devices` lists {} (0..{})",
                    adapters.len(),
                    adapters.len() - 1
                ))
            })?;
            check_software(&adapter, require_gpu, true)?;
            return Self::from_adapter(adapter, options);
        }
        let adapter = match &wanted {
            Some(w) => {
                let lw = w.to_lowercase();
                adapters
                    .iter()
                    .find(|a| a.get_info().name.to_lowercase().contains(&lw))
                    .cloned()
                    .ok_or_else(|| Error::AdapterNotFound {
                        wanted: w.clone(),
                        available: adapters
                            .iter()
                            .map(|a| format!("{:?}", a.get_info().name))
                            .collect::<Vec<_>>()
                            .join(", "),
                    })?
            }
            None => {
                let ids: Vec<AdapterId> = adapters.iter().map(AdapterId::of).collect();
                let visible = std::env::var("CUDA_VISIBLE_DEVICES").ok();
                match cuda_visible_choice(visible.as_deref(), &ids).map_err(Error::Usage)? {
                    Some((i, how)) => {
                        log::info!("{how}");
                        adapters[i].clone()
                    }
                    None => adapters[0].clone(),
                }
            }
        };
        check_software(&adapter, require_gpu, wanted.is_some())?;
        Self::from_adapter(adapter, options)
    }

    fn from_adapter(adapter: wgpu::Adapter, options: ContextOptions) -> Result<Self> {
        let summary = describe_adapter(&adapter);
        let wanted_features = wgpu::Features::SHADER_F16 | wgpu::Features::TIMESTAMP_QUERY;
        let mut features = adapter.features() & wanted_features;
        // The adapter's own limits: wgpu's defaults (128 MiB storage bindings) are far
        // too small for real batches; the plans split batches to fit what is given.
        let webgpu = options.webgpu_limits || webgpu_limits_from_env()?;
        let mut limits = if webgpu {
            wgpu::Limits::default()
        } else {
            adapter.limits()
        };
        if let Some(cap) = options.max_binding_bytes {
            limits.max_storage_buffer_binding_size =
                limits.max_storage_buffer_binding_size.min(cap);
            limits.max_buffer_size = limits.max_buffer_size.min(cap);
        }
        let (coop, coop_note) = if options.mixed {
            match super::coop::CoopReport::of(&adapter, &limits).check() {
                Ok(needed) => {
                    features |= needed;
                    (true, None)
                }
                Err(why) => {
                    log::warn!(
                        "--precision mixed: {why}, so {} runs convolutions in strict f32",
                        summary.name
                    );
                    (false, Some(why))
                }
            }
        } else {
            (false, None)
        };
        let experimental = if coop {
            // SAFETY: only coop.wgsl uses the experimental feature (cooperative
            // matrices), on a configuration the adapter lists; its tests pin
            // it to the f32 kernels' results.
            unsafe { wgpu::ExperimentalFeatures::enabled() }
        } else {
            wgpu::ExperimentalFeatures::disabled()
        };
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("advex"),
            required_features: features,
            required_limits: limits.clone(),
            experimental_features: experimental,
            memory_hints: wgpu::MemoryHints::Performance,
            trace: wgpu::Trace::Off,
        }))
        .map_err(|e| Error::RequestDevice {
            adapter: summary.name.clone(),
            message: e.to_string(),
        })?;
        let uncaptured = Arc::new(Mutex::new(Vec::new()));
        let sink = uncaptured.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            sink.lock().unwrap().push(e.to_string());
        }));
        let max_groups = options
            .max_workgroups_per_dim
            .unwrap_or(limits.max_compute_workgroups_per_dimension)
            .min(limits.max_compute_workgroups_per_dimension)
            .max(1);
        let style = match options.kernels {
            Some(s) => s,
            None => match std::env::var("ADVEX_KERNELS") {
                Ok(v) if !v.trim().is_empty() => KernelStyle::parse(&v).ok_or_else(|| {
                    Error::Usage(format!(
                        "ADVEX_KERNELS={v:?} is not a kernel family: use tiled or direct, \
                             or unset it to pick by adapter"
                    ))
                })?,
                _ => KernelStyle::for_adapter(adapter.get_info().device_type),
            },
        };
        let tune_path = if options.tune_in_memory {
            None
        } else {
            options.tune_cache.clone().or_else(default_cache_path)
        };
        let tune_adapter = format!(
            "{} | {} | {}",
            summary.name, summary.driver, summary.backend
        );
        Ok(Context {
            style,
            tuning: Mutex::new(TuneTable::load(tune_path, &tune_adapter)),
            adapter,
            summary,
            device,
            queue,
            limits,
            features,
            coop,
            coop_note,
            max_groups,
            modules: Mutex::default(),
            kernels: Mutex::default(),
            pool: Arc::default(),
            submits: AtomicU64::new(0),
            uncaptured,
        })
    }

    /// Kernel family for pointwise convolutions and linear layers.
    pub fn kernel_style(&self) -> KernelStyle {
        self.style
    }

    /// Whether convolutions and linear layers may run on cooperative
    /// matrices (`--precision mixed` on an adapter that has them).
    pub fn coop(&self) -> bool {
        self.coop
    }

    /// Why `--precision mixed` was asked for and runs in strict f32 here.
    pub fn coop_note(&self) -> Option<&str> {
        self.coop_note.as_deref()
    }

    /// The measured choice stored under `key` (see [`crate::gpu::TuneTable`]).
    pub fn tuned(&self, key: &str) -> Option<String> {
        self.tuning.lock().unwrap().get(key).map(str::to_string)
    }

    /// Record a measured choice (kept for this context; [`Context::save_tuning`]
    /// writes it to the cache file).
    pub fn set_tuned(&self, key: String, choice: String) {
        self.tuning.lock().unwrap().insert(key, choice);
    }

    /// Write new measured choices to the cache file; returns its path (`None`
    /// when the table lives in memory only).
    pub fn save_tuning(&self) -> Result<Option<std::path::PathBuf>> {
        let mut t = self.tuning.lock().unwrap();
        t.save()?;
        Ok(t.path().map(|p| p.to_path_buf()))
    }

    /// Take the measured choices of `other` when it is the same kind of adapter
    /// (name, driver and backend): the devices of one `--devices` run are tuned
    /// once.
    pub fn adopt_tuning(&self, other: &Context) {
        if std::ptr::eq(self, other) {
            return;
        }
        let theirs = other.tuning.lock().unwrap();
        self.tuning.lock().unwrap().adopt(&theirs);
    }

    /// Number of measured choices known for this adapter.
    pub fn tuned_count(&self) -> usize {
        self.tuning.lock().unwrap().len()
    }

    /// Number of queue submits so far (a forward + backward pass is one).
    pub fn submit_count(&self) -> u64 {
        self.submits.load(Ordering::Relaxed)
    }

    /// Largest tensor in bytes a kernel can bind.
    pub fn max_binding_bytes(&self) -> u64 {
        self.limits
            .max_storage_buffer_binding_size
            .min(self.limits.max_buffer_size)
    }

    /// Bytes of workgroup memory one workgroup may use on this device (the
    /// adapter's own limit, or WebGPU's 16 KiB with `webgpu_limits`).
    pub fn workgroup_storage_bytes(&self) -> u32 {
        self.limits.max_compute_workgroup_storage_size
    }

    /// Whether the adapter can run F16 kernels (`SHADER_F16`).
    pub fn supports_f16(&self) -> bool {
        self.features.contains(wgpu::Features::SHADER_F16)
    }

    /// An error unless tensors of `dtype` can be computed on here.
    pub fn check_dtype(&self, dtype: DType) -> Result<()> {
        if dtype == DType::F16 && !self.supports_f16() {
            return Err(Error::Usage(format!(
                "adapter {} has no SHADER_F16 feature, so --precision f16 cannot run on it; \
                 use --precision f32 (the default) or pick another adapter with --adapter",
                self.summary.name
            )));
        }
        Ok(())
    }
}
