//! Compiling kernels: a shader module per (shader, storage type), a pipeline
//! per (entry, bindings, pipeline constants), both cached.

use super::*;

impl Context {
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
        // The module's workgroup sizes (the host's), unless the caller set them.
        let mut all: Vec<(&str, f64)> = constants.to_vec();
        for &(name, size) in shader.workgroup_constants() {
            if !all.iter().any(|(n, _)| *n == name) {
                all.push((name, size as f64));
            }
        }
        let constants = &all[..];
        let key = KernelKey::new(shader, dtype, entry, bindings, constants);
        if let Some(k) = self.kernels.lock().unwrap().get(&key) {
            return Ok(k.clone());
        }
        self.check_dtype(dtype)?;
        let missing = shader.features() - self.device.features();
        if !missing.is_empty() {
            return Err(Error::Usage(format!(
                "{shader}.wgsl needs the device features {missing:?}, which this device was \
                 not opened with (the cooperative GEMM runs only with --precision mixed on an \
                 adapter that has them)"
            )));
        }
        let context = format!("compiling {shader}.wgsl ({dtype}) entry {entry}");
        let scopes = Scopes::push(&self.device);
        let module = {
            let mut modules = self.modules.lock().unwrap();
            modules
                .entry((shader, dtype))
                .or_insert_with(|| {
                    // Every shader names its storage element type `st`.
                    let desc = wgpu::ShaderModuleDescriptor {
                        label: Some(shader.name()),
                        source: wgpu::ShaderSource::Wgsl(shader.text(dtype).into()),
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
}
