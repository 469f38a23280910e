//! The small commands: `devices`, `info`, `bench --pipeline`.

use std::path::PathBuf;

use advex::{Context, ContextOptions, Error};

use super::yes;

/// `advex bench --pipeline DIR`: a table (or one JSON object).
pub(crate) fn pipeline_bench(
    opts: &advex::bench::PipelineOptions,
    json: bool,
) -> Result<(), Error> {
    let scratch = std::env::temp_dir().join(format!("advex-pipeline-{}", std::process::id()));
    let result = advex::bench::run_pipeline(opts, &scratch);
    let _ = std::fs::remove_dir_all(&scratch);
    let r = result?;
    if json {
        println!("{}", serde_json::to_string(&r).expect("serialisable"));
        return Ok(());
    }
    println!(
        "host pipeline: {} images, {} cores, model {}, adapter {}",
        r.images, r.cores, r.model, r.adapter
    );
    println!(
        "{:<28} {:>8} {:>14}",
        "stage (one core)", "images", "images/s/core"
    );
    for s in &r.stages {
        println!("{:<28} {:>8} {:>14.1}", s.stage, s.images, s.per_core);
    }
    if !r.runs.is_empty() {
        println!(
            "{:<28} {:>8} {:>14}",
            "run (all cores)", "images", "images/s"
        );
        for x in &r.runs {
            println!(
                "{:<28} {:>8} {:>14.1}",
                x.run, x.images, x.images_per_second
            );
        }
    }
    Ok(())
}

pub(crate) fn devices(json: bool) -> Result<(), Error> {
    let adapters = advex::gpu::list_adapters();
    let summaries: Vec<_> = adapters.iter().map(advex::gpu::describe_adapter).collect();
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&summaries).expect("serialisable")
        );
        return Ok(());
    }
    let diagnosis = advex::gpu::Diagnosis::gather();
    let print_diagnosis = || {
        println!();
        for line in diagnosis.lines() {
            println!("{line}");
        }
    };
    if summaries.is_empty() {
        print_diagnosis();
        return Err(Error::NoAdapter {
            advice: diagnosis.advice(),
        });
    }
    for (i, s) in summaries.iter().enumerate() {
        println!("{}{}: {}", if i == 0 { "* " } else { "  " }, i, s.name);
        println!(
            "     backend {}, {}, driver {}",
            s.backend, s.device_type, s.driver
        );
        println!(
            "     max storage binding {} MiB, max buffer {} MiB, workgroups/dim {}, invocations/workgroup {}, workgroup memory {} KiB",
            s.max_storage_buffer_binding_size >> 20,
            s.max_buffer_size >> 20,
            s.max_compute_workgroups_per_dimension,
            s.max_compute_invocations_per_workgroup,
            s.max_compute_workgroup_storage_size >> 10
        );
        println!(
            "     shader-f16 {}, timestamps {}",
            yes(s.shader_f16),
            yes(s.timestamp_query)
        );
    }
    println!("(* = chosen by default; pick another with --adapter NAME or WGPU_ADAPTER_NAME)");
    let ids: Vec<advex::gpu::AdapterId> = adapters.iter().map(advex::gpu::AdapterId::of).collect();
    let visible = std::env::var("CUDA_VISIBLE_DEVICES").ok();
    // CUDA_VISIBLE_DEVICES is read once here (it warns where it does not map)
    let mapped = match advex::gpu::cuda_visible_choice(visible.as_deref(), &ids) {
        Ok(Some((i, how))) => {
            println!("{how}: advex uses adapter {i} when no --adapter is given");
            true
        }
        Ok(None) => false,
        Err(e) => {
            println!("{e}");
            false
        }
    };
    let visible = visible.filter(|_| mapped);
    match advex::gpu::select_devices("all", &ids, visible.as_deref()) {
        Ok((_, how)) if how.starts_with("--devices") => {
            println!("{how}; --devices 0,2 or --devices NAME pick others")
        }
        Ok((_, how)) => {
            println!("--devices all: {how}; --devices 0,2 or --devices NAME pick others")
        }
        Err(e) => println!("--devices all: {e}"),
    }
    print_diagnosis();
    if adapters
        .iter()
        .all(|a| a.get_info().device_type == wgpu::DeviceType::Cpu)
    {
        let why = diagnosis.advice().unwrap_or_else(|| {
            "no GPU is visible to this machine (/dev/nvidia*, /dev/dri/renderD*)".into()
        });
        println!("No GPU adapter, only software rendering on the CPU: {why}.");
    }
    Ok(())
}

pub(crate) fn info(
    path: Option<PathBuf>,
    check: bool,
    adapter: Option<String>,
) -> Result<(), Error> {
    let model = advex::load_model_or_bundled(path.as_deref())?;
    print!("{}", model.summary());
    if check {
        let ctx = std::sync::Arc::new(Context::new(ContextOptions {
            adapter,
            ..Default::default()
        })?);
        let gpu = advex::plan::GpuModel::new(ctx.clone(), std::sync::Arc::new(model))?;
        let plan = gpu.gradient_plan(1, 1.0)?;
        println!(
            "GPU check on {}: forward + backward records {} dispatches in one submit",
            ctx.summary.name,
            plan.forward.dispatch_count() + plan.backward.dispatch_count()
        );
    }
    Ok(())
}
