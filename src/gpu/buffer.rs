//! Device buffers, a pool that reuses them across batches, and tensors.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

/// Element type of a tensor's storage. Arithmetic always runs in f32; F16
/// tensors (the `--precision f16` path, on adapters with `SHADER_F16`) store
/// activations, gradients and weights in half precision and convert on load
/// and store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum DType {
    #[default]
    F32,
    F16,
}

impl DType {
    /// Bytes per element.
    pub fn size(self) -> u64 {
        match self {
            DType::F32 => 4,
            DType::F16 => 2,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
        }
    }

    /// Parse `f32` / `f16` (case-insensitive).
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "f32" | "fp32" | "float32" => Some(DType::F32),
            "f16" | "fp16" | "half" | "float16" => Some(DType::F16),
            _ => None,
        }
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// NCHW shape. Vectors (after flatten or linear) are `[n, k, 1, 1]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Shape {
    pub n: u32,
    pub c: u32,
    pub h: u32,
    pub w: u32,
}

impl Shape {
    pub const fn new(n: u32, c: u32, h: u32, w: u32) -> Self {
        Shape { n, c, h, w }
    }
    pub fn numel(&self) -> u64 {
        self.n as u64 * self.c as u64 * self.h as u64 * self.w as u64
    }
    /// Elements per batch item.
    pub fn item(&self) -> u64 {
        self.c as u64 * self.h as u64 * self.w as u64
    }
    /// Bytes as f32.
    pub fn bytes(&self) -> u64 {
        self.numel() * 4
    }
    /// Bytes of storage with elements of `dtype`, rounded up to whole 4-byte words
    /// (storage bindings are word-sized).
    pub fn bytes_as(&self, dtype: DType) -> u64 {
        (self.numel() * dtype.size()).div_ceil(4) * 4
    }
    pub fn with_n(self, n: u32) -> Self {
        Shape { n, ..self }
    }
    pub fn dims(&self) -> [u32; 4] {
        [self.n, self.c, self.h, self.w]
    }
}

impl std::fmt::Display for Shape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "[{}, {}, {}, {}]", self.n, self.c, self.h, self.w)
    }
}

type PoolKey = (u64, u32);

#[derive(Default)]
pub(crate) struct PoolInner {
    free: HashMap<PoolKey, Vec<wgpu::Buffer>>,
    pub(crate) idle_bytes: u64,
    pub(crate) created: u64,
    pub(crate) reused: u64,
}

/// A pooled device buffer. Dropping it hands the buffer back to the pool.
pub struct GpuBuffer {
    buffer: Option<wgpu::Buffer>,
    size: u64,
    usage: wgpu::BufferUsages,
    pool: Weak<Mutex<PoolInner>>,
}

impl GpuBuffer {
    pub fn raw(&self) -> &wgpu::Buffer {
        self.buffer.as_ref().expect("buffer present until drop")
    }
    /// Size actually allocated (a size class, at least what was asked).
    pub fn size(&self) -> u64 {
        self.size
    }
}

impl Drop for GpuBuffer {
    fn drop(&mut self) {
        if let (Some(buf), Some(pool)) = (self.buffer.take(), self.pool.upgrade()) {
            let mut p = pool.lock().unwrap();
            p.idle_bytes += self.size;
            p.free
                .entry((self.size, self.usage.bits()))
                .or_default()
                .push(buf);
        }
    }
}

/// Rounds a request up to a size class so buffers are reused across batch sizes:
/// multiples of 256 bytes below 64 KiB, then 2^k or 1.5 * 2^k.
pub(crate) fn size_class(bytes: u64) -> u64 {
    let bytes = bytes.max(16);
    if bytes <= 65536 {
        return bytes.div_ceil(256) * 256;
    }
    let p = bytes.next_power_of_two();
    let three_quarters = p / 4 * 3;
    if bytes <= three_quarters {
        three_quarters
    } else {
        p
    }
}

pub(crate) fn take(
    pool: &Arc<Mutex<PoolInner>>,
    device: &wgpu::Device,
    bytes: u64,
    usage: wgpu::BufferUsages,
    label: &str,
) -> GpuBuffer {
    let size = size_class(bytes);
    let key = (size, usage.bits());
    let mut p = pool.lock().unwrap();
    if let Some(buf) = p.free.get_mut(&key).and_then(|v| v.pop()) {
        p.idle_bytes -= size;
        p.reused += 1;
        return GpuBuffer {
            buffer: Some(buf),
            size,
            usage,
            pool: Arc::downgrade(pool),
        };
    }
    p.created += 1;
    drop(p);
    let buf = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some(label),
        size,
        usage,
        mapped_at_creation: false,
    });
    GpuBuffer {
        buffer: Some(buf),
        size,
        usage,
        pool: Arc::downgrade(pool),
    }
}

pub(crate) fn trim(pool: &Arc<Mutex<PoolInner>>) {
    let mut p = pool.lock().unwrap();
    p.free.clear();
    p.idle_bytes = 0;
}

/// An NCHW tensor (f32 unless it says otherwise) in a device buffer of its own.
#[derive(Clone)]
pub struct Tensor {
    pub buffer: Arc<GpuBuffer>,
    pub shape: Shape,
    pub dtype: DType,
}

impl Tensor {
    pub fn raw(&self) -> &wgpu::Buffer {
        self.buffer.raw()
    }
    pub fn numel(&self) -> u64 {
        self.shape.numel()
    }
    /// The same storage seen with another shape of equal size (flatten).
    pub fn reshaped(&self, shape: Shape) -> Tensor {
        assert_eq!(
            shape.numel(),
            self.shape.numel(),
            "reshape must keep the element count"
        );
        Tensor {
            buffer: self.buffer.clone(),
            shape,
            dtype: self.dtype,
        }
    }
    /// Bytes the tensor occupies (whole words).
    pub fn bytes(&self) -> u64 {
        self.shape.bytes_as(self.dtype)
    }
    /// Binding of exactly the tensor's bytes.
    pub fn binding(&self) -> wgpu::BindingResource<'_> {
        wgpu::BindingResource::Buffer(wgpu::BufferBinding {
            buffer: self.raw(),
            offset: 0,
            size: wgpu::BufferSize::new(self.bytes().max(4)),
        })
    }
}

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.dtype {
            DType::F32 => write!(f, "Tensor{}", self.shape),
            d => write!(f, "Tensor{}:{d}", self.shape),
        }
    }
}
