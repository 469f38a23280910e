//! The device context: owns adapter, device, queue, the pipeline cache and the
//! buffer pool, and runs recordings.

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
        let features = adapter.features() & wanted_features;
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
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("advex"),
            required_features: features,
            required_limits: limits.clone(),
            experimental_features: wgpu::ExperimentalFeatures::disabled(),
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

    /// Get or compile a kernel: `shader`'s module with its storage type `st`
    /// aliased to `dtype` (f32 or f16); `constants` are override constants (part
    /// of the cache key).
    pub fn kernel(
        &self,
        shader: Shader,
        dtype: DType,
        entry: &'static str,
        bindings: &[Binding],
        constants: &[(&str, f64)],
    ) -> Result<Arc<Kernel>> {
        let key = KernelKey::new(shader, dtype, entry, bindings, constants);
        if let Some(k) = self.kernels.lock().unwrap().get(&key) {
            return Ok(k.clone());
        }
        self.check_dtype(dtype)?;
        let context = format!("compiling {shader}.wgsl ({dtype}) entry {entry}");
        let scopes = Scopes::push(&self.device);
        let module = {
            let mut modules = self.modules.lock().unwrap();
            modules
                .entry((shader, dtype))
                .or_insert_with(|| {
                    // Every shader names its storage element type `st`.
                    let prelude = match dtype {
                        DType::F32 => "alias st = f32;\n",
                        DType::F16 => "enable f16;\nalias st = f16;\n",
                    };
                    let desc = wgpu::ShaderModuleDescriptor {
                        label: Some(shader.name()),
                        source: wgpu::ShaderSource::Wgsl(
                            format!("{prelude}{}", shader.source()).into(),
                        ),
                    };
                    Arc::new(if shader.trusted() {
                        // SAFETY: trusted shaders bounds-check every storage,
                        // workgroup and private-array access against the tensor
                        // shapes the host validated, loop over uniform-bounded
                        // ranges only, and divide only by host-validated non-zero
                        // values (audited; see the shaders' headers).
                        unsafe {
                            self.device.create_shader_module_trusted(
                                desc,
                                wgpu::ShaderRuntimeChecks::unchecked(),
                            )
                        }
                    } else {
                        self.device.create_shader_module(desc)
                    })
                })
                .clone()
        };
        let layout = self
            .device
            .create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                label: Some(entry),
                entries: &layout_entries(bindings),
            });
        let pipeline_layout = self
            .device
            .create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                label: Some(entry),
                bind_group_layouts: &[Some(&layout)],
                immediate_size: 0,
            });
        let pipeline = self
            .device
            .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(entry),
                layout: Some(&pipeline_layout),
                module: &module,
                entry_point: Some(entry),
                compilation_options: wgpu::PipelineCompilationOptions {
                    constants,
                    // Every kernel initialises the workgroup memory it reads.
                    zero_initialize_workgroup_memory: false,
                },
                cache: None,
            });
        if let Err(e) = scopes.pop(&context) {
            // A failed module stays broken; forget it so the error repeats cleanly.
            self.modules.lock().unwrap().remove(&(shader, dtype));
            return Err(e);
        }
        let kernel = Arc::new(Kernel {
            key: key.clone(),
            pipeline,
            layout,
        });
        self.kernels.lock().unwrap().insert(key, kernel.clone());
        Ok(kernel)
    }

    /// Number of compiled kernels in the cache.
    pub fn kernel_count(&self) -> usize {
        self.kernels.lock().unwrap().len()
    }

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

    fn raw_buffer(&self, bytes: u64, usage: wgpu::BufferUsages, label: &str) -> GpuBuffer {
        buffer::take(&self.pool, &self.device, bytes, usage, label)
    }

    /// An uninitialised f32 tensor from the pool.
    pub fn tensor(&self, shape: Shape, label: &str) -> Result<Tensor> {
        self.tensor_as(shape, DType::F32, label)
    }

    /// An uninitialised tensor of `dtype` from the pool.
    pub fn tensor_as(&self, shape: Shape, dtype: DType, label: &str) -> Result<Tensor> {
        let bytes = shape.bytes_as(dtype);
        if bytes > self.limits.max_buffer_size {
            return Err(Error::TooLarge {
                context: label.to_string(),
                bytes,
                limit: self.limits.max_buffer_size,
            });
        }
        let usage = wgpu::BufferUsages::STORAGE
            | wgpu::BufferUsages::COPY_DST
            | wgpu::BufferUsages::COPY_SRC;
        Ok(Tensor {
            buffer: Arc::new(self.raw_buffer(bytes, usage, label)),
            shape,
            dtype,
        })
    }

    /// An f32 tensor holding `data` (length must match the shape).
    pub fn upload(&self, data: &[f32], shape: Shape, label: &str) -> Result<Tensor> {
        self.upload_as(data, shape, DType::F32, label)
    }

    /// A tensor of `dtype` holding `data` (converted; length must match the shape).
    pub fn upload_as(
        &self,
        data: &[f32],
        shape: Shape,
        dtype: DType,
        label: &str,
    ) -> Result<Tensor> {
        if data.len() as u64 != shape.numel() {
            return Err(Error::shape(
                label,
                format!("{} values for shape {shape}", data.len()),
            ));
        }
        let t = self.tensor_as(shape, dtype, label)?;
        self.write(&t, data);
        Ok(t)
    }

    /// Overwrite a tensor's contents (queued before the next submit), converting
    /// to the tensor's dtype.
    pub fn write(&self, t: &Tensor, data: &[f32]) {
        match t.dtype {
            DType::F32 => self.write_bytes(t, bytemuck::cast_slice(data)),
            DType::F16 => {
                let mut h: Vec<half::f16> = data.iter().map(|&v| half::f16::from_f32(v)).collect();
                if h.len() % 2 == 1 {
                    h.push(half::f16::ZERO); // whole words
                }
                self.write_bytes(t, bytemuck::cast_slice(&h));
            }
        }
    }

    pub fn write_bytes(&self, t: &Tensor, bytes: &[u8]) {
        if !bytes.is_empty() {
            self.queue.write_buffer(t.raw(), 0, bytes);
        }
    }

    /// A zero-filled tensor.
    pub fn zeros(&self, shape: Shape, label: &str) -> Result<Tensor> {
        let t = self.tensor(shape, label)?;
        let mut r = Recording::new();
        r.push(Step::Clear {
            buffer: t.buffer.clone(),
        });
        self.run(&[&r])?;
        Ok(t)
    }

    fn take_uncaptured(&self, context: &str) -> Result<()> {
        let mut errs = self.uncaptured.lock().unwrap();
        if errs.is_empty() {
            return Ok(());
        }
        let message = errs.join("; ");
        errs.clear();
        Err(Error::Validation {
            context: context.to_string(),
            message,
        })
    }

    /// Run recordings in one submit and wait for them.
    pub fn run(&self, recordings: &[&Recording]) -> Result<()> {
        self.run_read_bytes(recordings, &[]).map(|_| ())
    }

    /// Run recordings, then copy `reads` back, all in one submit. Returns f32 data
    /// (F16 tensors converted).
    pub fn run_read(&self, recordings: &[&Recording], reads: &[&Tensor]) -> Result<Vec<Vec<f32>>> {
        Ok(self
            .run_read_bytes(recordings, reads)?
            .into_iter()
            .zip(reads)
            .map(|(b, t)| decode(t, &b))
            .collect())
    }

    /// Read a tensor back.
    pub fn read(&self, t: &Tensor) -> Result<Vec<f32>> {
        Ok(self.run_read(&[], &[t])?.remove(0))
    }

    /// Run recordings and read back the given tensors' raw bytes, in one submit.
    pub fn run_read_bytes(
        &self,
        recordings: &[&Recording],
        reads: &[&Tensor],
    ) -> Result<Vec<Vec<u8>>> {
        self.run_inner(recordings, reads, None)
    }

    fn run_inner(
        &self,
        recordings: &[&Recording],
        reads: &[&Tensor],
        timer: Option<&mut Timer>,
    ) -> Result<Vec<Vec<u8>>> {
        let context = "running GPU work";
        let scopes = Scopes::push(&self.device);
        let mut encoder = self
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("advex"),
            });
        let mut timer_opt = timer;
        encode(&mut encoder, recordings, timer_opt.as_deref_mut());
        if let Some(t) = timer_opt.as_deref_mut() {
            t.resolve(&mut encoder);
        }
        let mut staging = Vec::with_capacity(reads.len());
        for t in reads {
            let bytes = t.bytes();
            let s = self.raw_buffer(
                bytes.max(4),
                wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                "readback",
            );
            if bytes > 0 {
                encoder.copy_buffer_to_buffer(t.raw(), 0, s.raw(), 0, bytes);
            }
            staging.push((s, bytes));
        }
        self.queue.submit([encoder.finish()]);
        self.submits.fetch_add(1, Ordering::Relaxed);
        let mut out = Vec::with_capacity(staging.len());
        let mut pending = Vec::new();
        for (s, bytes) in &staging {
            if *bytes == 0 {
                continue;
            }
            let (tx, rx) = std::sync::mpsc::channel();
            s.raw()
                .slice(0..*bytes)
                .map_async(wgpu::MapMode::Read, move |r| {
                    let _ = tx.send(r);
                });
            pending.push(rx);
        }
        if let Some(t) = timer_opt.as_mut() {
            t.map();
        }
        self.device
            .poll(wgpu::PollType::Wait {
                submission_index: None,
                timeout: None,
            })
            .map_err(|e| Error::DeviceLost(e.to_string()))?;
        scopes.pop(context)?;
        self.take_uncaptured(context)?;
        let mut rx_iter = pending.into_iter();
        for (s, bytes) in &staging {
            if *bytes == 0 {
                out.push(Vec::new());
                continue;
            }
            rx_iter
                .next()
                .unwrap()
                .recv()
                .map_err(|e| Error::DeviceLost(e.to_string()))?
                .map_err(|e| Error::DeviceLost(format!("mapping a readback buffer failed: {e}")))?;
            let view = s
                .raw()
                .slice(0..*bytes)
                .get_mapped_range()
                .map_err(|e| Error::DeviceLost(format!("reading back: {e}")))?;
            out.push(view.to_vec());
            drop(view);
            s.raw().unmap();
        }
        Ok(out)
    }

    /// Run recordings with one timestamp pair per dispatch; returns
    /// (label, nanoseconds) per dispatch. Needs TIMESTAMP_QUERY.
    pub fn profile(&self, recordings: &[&Recording]) -> Result<Vec<(String, f64)>> {
        if !self.features.contains(wgpu::Features::TIMESTAMP_QUERY) {
            return Err(Error::Usage(format!(
                "adapter {} has no timestamp queries; --profile is unavailable",
                self.summary.name
            )));
        }
        let n = recordings.iter().map(|r| r.dispatch_count()).sum::<usize>();
        let mut timer = Timer::new(self, n as u32);
        self.run_inner(recordings, &[], Some(&mut timer))?;
        timer.results(self)
    }

    /// Drop idle pooled buffers.
    pub fn trim_pool(&self) {
        buffer::trim(&self.pool);
    }

    /// (buffers created, buffers reused, idle bytes) of the pool.
    pub fn pool_stats(&self) -> (u64, u64, u64) {
        let p = self.pool.lock().unwrap();
        (p.created, p.reused, p.idle_bytes)
    }
}

/// A tensor's values from its raw bytes (as read back), as f32.
pub fn decode(t: &Tensor, bytes: &[u8]) -> Vec<f32> {
    let n = t.numel() as usize;
    match t.dtype {
        DType::F32 => bytemuck::pod_collect_to_vec(&bytes[..(n * 4).min(bytes.len())]),
        DType::F16 => {
            let h: Vec<half::f16> =
                bytemuck::pod_collect_to_vec(&bytes[..(n * 2).min(bytes.len())]);
            h.into_iter().map(f32::from).collect()
        }
    }
}

/// Timestamp queries, one pair per dispatch.
pub(crate) struct Timer {
    set: wgpu::QuerySet,
    resolve: wgpu::Buffer,
    read: wgpu::Buffer,
    labels: Vec<String>,
    capacity: u32,
    period: f32,
    mapped: Option<std::sync::mpsc::Receiver<Result<(), wgpu::BufferAsyncError>>>,
}

impl Timer {
    fn new(ctx: &Context, dispatches: u32) -> Self {
        let capacity = (dispatches * 2).clamp(2, 4096);
        let set = ctx.device.create_query_set(&wgpu::QuerySetDescriptor {
            label: Some("advex timestamps"),
            ty: wgpu::QueryType::Timestamp,
            count: capacity,
        });
        let bytes = capacity as u64 * 8;
        let resolve = ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("timestamps"),
            size: bytes,
            usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        let read = ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("timestamps read"),
            size: bytes,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        Timer {
            set,
            resolve,
            read,
            labels: Vec::new(),
            capacity,
            period: ctx.queue.get_timestamp_period(),
            mapped: None,
        }
    }

    pub(crate) fn next(&mut self, label: &str) -> Option<wgpu::ComputePassTimestampWrites<'_>> {
        let i = self.labels.len() as u32;
        if 2 * i + 1 >= self.capacity {
            return None;
        }
        self.labels.push(label.to_string());
        Some(wgpu::ComputePassTimestampWrites {
            query_set: &self.set,
            beginning_of_pass_write_index: Some(2 * i),
            end_of_pass_write_index: Some(2 * i + 1),
        })
    }

    fn resolve(&mut self, encoder: &mut wgpu::CommandEncoder) {
        let n = (self.labels.len() as u32 * 2).max(2);
        encoder.resolve_query_set(&self.set, 0..n, &self.resolve, 0);
        encoder.copy_buffer_to_buffer(&self.resolve, 0, &self.read, 0, n as u64 * 8);
    }

    fn map(&mut self) {
        let (tx, rx) = std::sync::mpsc::channel();
        self.read
            .slice(..)
            .map_async(wgpu::MapMode::Read, move |r| {
                let _ = tx.send(r);
            });
        self.mapped = Some(rx);
    }

    fn results(self, _ctx: &Context) -> Result<Vec<(String, f64)>> {
        if let Some(rx) = &self.mapped {
            rx.recv()
                .map_err(|e| Error::DeviceLost(e.to_string()))?
                .map_err(|e| Error::DeviceLost(e.to_string()))?;
        }
        let view = self
            .read
            .slice(..)
            .get_mapped_range()
            .map_err(|e| Error::DeviceLost(format!("reading timestamps: {e}")))?;
        let ticks: &[u64] = bytemuck::cast_slice(&view);
        let out = self
            .labels
            .iter()
            .enumerate()
            .map(|(i, l)| {
                let dt = ticks[2 * i + 1].saturating_sub(ticks[2 * i]);
                (l.clone(), dt as f64 * self.period as f64)
            })
            .collect();
        Ok(out)
    }
}
