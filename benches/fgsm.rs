//! End-to-end FGSM throughput (criterion): images/s for the bundled models at
//! several batch sizes, one eps and an 8-eps sweep. Synthetic images (decoding
//! excluded); GPU work, uploads and readbacks included, as `advex bench` does.
//!
//!     cargo bench --bench fgsm                    # everything
//!     cargo bench --bench fgsm -- mnist           # one model

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use advex::attack::{parse_eps_list, FgsmPlan, Target};
use advex::model::Model;
use advex::plan::GpuModel;
use advex::{Context, ContextOptions};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

fn bench_model(c: &mut Criterion, ctx: &Arc<Context>, file: &str, batches: &[u32]) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("weights")
        .join(file);
    let model = Arc::new(Model::load(&path).expect("bundled model"));
    let gpu = GpuModel::new(ctx.clone(), model.clone()).expect("model on the GPU");
    let item = gpu.input_shape(1).numel() as usize;
    let mut group = c.benchmark_group(format!("fgsm/{}", model.name));
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(5));
    for (sweep, eps) in [
        ("1eps", "1/255"),
        ("8eps", "1/255,2/255,3/255,4/255,5/255,6/255,7/255,8/255"),
    ] {
        let eps = parse_eps_list(eps).unwrap();
        for &batch in batches {
            // As `advex bench` does: tiles measured (or read from the cache) first.
            if let Err(e) = gpu.tune(batch) {
                eprintln!("{} batch {batch}: autotune failed ({e})", model.name);
            }
            let plan = match FgsmPlan::new(&gpu, batch, &eps, true, Target::Untargeted) {
                Ok(p) => p,
                Err(e) => {
                    eprintln!("{} batch {batch}: skipped ({e})", model.name);
                    continue;
                }
            };
            let pixels: Vec<f32> = (0..item * batch as usize)
                .map(|i| ((i * 7919) % 256) as f32 / 255.0)
                .collect();
            let labels = vec![None; batch as usize];
            group.throughput(Throughput::Elements(batch as u64));
            group.bench_function(format!("{sweep}/batch{batch}"), |b| {
                b.iter(|| plan.run(&pixels, &labels, false).expect("batch runs"))
            });
        }
    }
    group.finish();
}

fn fgsm(c: &mut Criterion) {
    let ctx = Arc::new(Context::new(ContextOptions::default()).expect("a GPU adapter"));
    let cpu = ctx.summary.device_type.starts_with("CPU");
    bench_model(c, &ctx, "mnist_cnn.safetensors", &[1, 8, 32, 128]);
    // On a software adapter the large batches take minutes each: keep them for GPUs.
    let effnet: &[u32] = if cpu { &[1, 8] } else { &[1, 8, 32, 128] };
    bench_model(c, &ctx, "efficientnet_lite0.safetensors", effnet);
}

criterion_group!(benches, fgsm);
criterion_main!(benches);
