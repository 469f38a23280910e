//! Tensors: allocation from the buffer pool, uploads and writes.

use super::*;

impl Context {
    pub(super) fn raw_buffer(
        &self,
        bytes: u64,
        usage: wgpu::BufferUsages,
        label: &str,
    ) -> GpuBuffer {
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
