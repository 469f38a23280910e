//! Conv / linear kernel throughput on EfficientNet-Lite0-like layers (batch 8,
//! 224 x 224 input), forward and backward-to-input.
//!
//! Each timed iteration is ONE submit of a recording that repeats the op `reps`
//! times (`ADVEX_BENCH_REPS`, default 10; fewer for ops that are very slow on the
//! adapter at hand, so a run stays within a few minutes on a software rasteriser),
//! so submit and readback overhead is amortised. Criterion's throughput is set to
//! the op's FLOPs (2 x MACs, counting only the true MACs of the convolution, not the
//! zeros a kernel may multiply), so its `elem/s` reads as FLOP/s; a GFLOP/s table is
//! printed at the end as well.
//!
//! Runs:
//! - `cargo bench --bench kernels` (criterion, 10 samples per op);
//! - `cargo bench --bench kernels -- fwd/stem` (criterion filter);
//! - `ADVEX_BENCH_QUICK=1 cargo bench --bench kernels` skips criterion and times
//!   every op `ADVEX_BENCH_ROUNDS` (default 5) times, printing the median (what the
//!   A/B comparisons in PERF_NOTES.md use: two builds run alternately).
//!
//! Environment: `ADVEX_BENCH_BATCH` (default 8), `ADVEX_BENCH_REPS`,
//! `ADVEX_BENCH_ROUNDS`, `WGPU_ADAPTER_NAME` (adapter choice, as everywhere).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use advex::gpu::{Recording, Shape, Tensor};
use advex::ops::{conv, linear, Conv2dParams};
use advex::{Context, ContextOptions};
use criterion::{Criterion, Throughput};

#[derive(Clone, Copy)]
struct Layer {
    name: &'static str,
    c: u32,
    hw: u32,
    oc: u32,
    k: u32,
    stride: u32,
    pad: [u32; 4],
    groups: u32,
    linear: bool,
}

const fn conv(
    name: &'static str,
    c: u32,
    hw: u32,
    oc: u32,
    k: u32,
    stride: u32,
    pad: [u32; 4],
    groups: u32,
) -> Layer {
    Layer {
        name,
        c,
        hw,
        oc,
        k,
        stride,
        pad,
        groups,
        linear: false,
    }
}

const LAYERS: [Layer; 7] = [
    // TF-SAME stride 2 on an even input: pad [top, left, bottom, right] = [0, 0, 1, 1]
    conv("stem_3x3s2_3_32", 3, 224, 32, 3, 2, [0, 0, 1, 1], 1),
    conv("expand_1x1_24_144", 24, 56, 144, 1, 1, [0; 4], 1),
    conv("dw_3x3s1_144", 144, 56, 144, 3, 1, [1; 4], 144),
    conv("dw_5x5s2_240", 240, 28, 240, 5, 2, [1, 1, 2, 2], 240),
    conv("project_1x1_144_24", 144, 56, 24, 1, 1, [0; 4], 1),
    conv("head_1x1_320_1280", 320, 7, 1280, 1, 1, [0; 4], 1),
    Layer {
        name: "linear_1280_1000",
        c: 1280,
        hw: 1,
        oc: 1000,
        k: 1,
        stride: 1,
        pad: [0; 4],
        groups: 1,
        linear: true,
    },
];

fn env_u32(name: &str, default: u32) -> u32 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&v| v > 0)
        .unwrap_or(default)
}

fn fill(n: u64, seed: u32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            (s % 2001) as f32 / 1000.0 - 1.0
        })
        .collect()
}

/// One layer's tensors and its forward / backward recordings.
struct Bench {
    ctx: std::sync::Arc<Context>,
    layer: Layer,
    flops: u64,
    fwd: Recording,
    bwd: Recording,
    // keep the tensors alive
    _t: Vec<Tensor>,
}

impl Bench {
    fn params(l: &Layer) -> Conv2dParams {
        Conv2dParams {
            stride: [l.stride; 2],
            padding: l.pad,
            dilation: [1, 1],
            groups: l.groups,
        }
    }

    fn new(ctx: std::sync::Arc<Context>, l: Layer, batch: u32) -> Self {
        let p = Self::params(&l);
        let xs = Shape::new(batch, l.c, l.hw, l.hw);
        let ws = Shape::new(l.oc, l.c / l.groups, l.k, l.k);
        let ys = p.out_shape(xs, ws.dims()).expect("layer shape");
        let macs = ys.numel() * (l.c / l.groups) as u64 * (l.k * l.k) as u64;
        let up = |shape: Shape, seed: u32, label: &str| {
            ctx.upload(&fill(shape.numel(), seed), shape, label)
                .expect("upload")
        };
        let x = up(xs, 1, "x");
        let w = up(ws, 2, "w");
        let b = up(Shape::new(1, l.oc, 1, 1), 3, "b");
        let gy = up(ys, 4, "gy");
        let y = ctx.tensor(ys, "y").expect("y");
        let gx = ctx.tensor(xs, "gx").expect("gx");
        let mut bench = Bench {
            ctx: ctx.clone(),
            layer: l,
            flops: 2 * macs,
            fwd: Recording::new(),
            bwd: Recording::new(),
            _t: vec![],
        };
        bench.record(1, &x, &w, &b, &gy, &y, &gx);
        // Size the repetition count: ~1 s per iteration at most on slow adapters
        // (first runs compile the pipelines: time the second).
        let reps_max = env_u32("ADVEX_BENCH_REPS", 10);
        bench.time_once(true);
        bench.time_once(false);
        let t_f = bench.time_once(true).max(1e-6);
        let t_b = bench.time_once(false).max(1e-6);
        let reps = |t: f64| ((1.0 / t) as u32).clamp(1, reps_max);
        let (rf, rb) = (reps(t_f), reps(t_b));
        bench.fwd = Recording::new();
        bench.bwd = Recording::new();
        bench.record_n(rf, rb, &x, &w, &b, &gy, &y, &gx);
        bench._t = vec![x, w, b, gy, y, gx];
        bench
    }

    #[allow(clippy::too_many_arguments)]
    fn record(
        &mut self,
        reps: u32,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        gy: &Tensor,
        y: &Tensor,
        gx: &Tensor,
    ) {
        self.record_n(reps, reps, x, w, b, gy, y, gx)
    }

    #[allow(clippy::too_many_arguments)]
    fn record_n(
        &mut self,
        rf: u32,
        rb: u32,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        gy: &Tensor,
        y: &Tensor,
        gx: &Tensor,
    ) {
        let ctx = &*self.ctx;
        let l = self.layer;
        let p = Self::params(&l);
        for _ in 0..rf {
            if l.linear {
                linear::forward(ctx, &mut self.fwd, x, w, Some(b), y).expect("linear forward");
            } else {
                conv::forward(ctx, &mut self.fwd, &p, x, w, Some(b), y).expect("conv forward");
            }
        }
        for _ in 0..rb {
            if l.linear {
                linear::backward(ctx, &mut self.bwd, gy, w, gx).expect("linear backward");
            } else {
                conv::backward(ctx, &mut self.bwd, &p, gy, w, gx).expect("conv backward");
            }
        }
    }

    fn reps(&self, forward: bool) -> u32 {
        let r = if forward { &self.fwd } else { &self.bwd };
        r.dispatch_count().max(1) as u32
    }

    /// Seconds for one submit of the recording (all its repetitions).
    fn time_once(&self, forward: bool) -> f64 {
        let r = if forward { &self.fwd } else { &self.bwd };
        let t = Instant::now();
        self.ctx.run(&[r]).expect("run");
        t.elapsed().as_secs_f64()
    }
}

/// Per-op seconds per repetition, gathered from every timed iteration.
static TIMES: Mutex<BTreeMap<String, (u64, Vec<f64>)>> = Mutex::new(BTreeMap::new());

fn note(id: &str, flops: u64, secs_per_rep: f64) {
    TIMES
        .lock()
        .unwrap()
        .entry(id.to_string())
        .or_insert((flops, Vec::new()))
        .1
        .push(secs_per_rep);
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = v.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        0.5 * (v[n / 2 - 1] + v[n / 2])
    }
}

fn print_table(ctx: &Context, batch: u32) {
    let mut times = TIMES.lock().unwrap();
    println!();
    println!(
        "advex kernels on {} ({}), batch {batch}: median per op",
        ctx.summary.name, ctx.summary.backend
    );
    println!("{:<34} {:>12} {:>10} {:>6}", "op", "ms", "GFLOP/s", "runs");
    for (id, (flops, v)) in times.iter_mut() {
        let runs = v.len();
        let t = median(v);
        println!(
            "{:<34} {:>12.3} {:>10.2} {:>6}",
            id,
            t * 1e3,
            *flops as f64 / t / 1e9,
            runs
        );
    }
}

fn benches(c: &mut Criterion, ctx: &std::sync::Arc<Context>, list: &[Bench]) {
    for dir in ["fwd", "bwd"] {
        let forward = dir == "fwd";
        let mut g = c.benchmark_group(dir);
        g.sample_size(10)
            .warm_up_time(Duration::from_millis(300))
            .measurement_time(Duration::from_secs(2));
        for b in list {
            let reps = b.reps(forward);
            g.throughput(Throughput::Elements(b.flops * reps as u64));
            let id = format!("{dir}/{}", b.layer.name);
            g.bench_function(b.layer.name, |bencher| {
                bencher.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        let t = b.time_once(forward);
                        note(&id, b.flops, t / reps as f64);
                        total += Duration::from_secs_f64(t);
                    }
                    total
                })
            });
        }
        g.finish();
    }
    let _ = ctx;
}

fn quick(list: &[Bench], rounds: u32) {
    for _ in 0..rounds {
        for b in list {
            for (dir, forward) in [("fwd", true), ("bwd", false)] {
                let t = b.time_once(forward);
                note(
                    &format!("{dir}/{}", b.layer.name),
                    b.flops,
                    t / b.reps(forward) as f64,
                );
            }
        }
    }
}

fn main() {
    let ctx = std::sync::Arc::new(Context::new(ContextOptions::default()).expect("a GPU adapter"));
    let batch = env_u32("ADVEX_BENCH_BATCH", 8);
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let wanted = |name: &str| {
        filter.is_empty()
            || filter
                .iter()
                .any(|f| format!("fwd/{name}").contains(f) || format!("bwd/{name}").contains(f))
    };
    let list: Vec<Bench> = LAYERS
        .iter()
        .filter(|l| wanted(l.name))
        .map(|&l| Bench::new(ctx.clone(), l, batch))
        .collect();
    // Warm every pipeline once before timing.
    for b in &list {
        b.time_once(true);
        b.time_once(false);
    }
    if std::env::var("ADVEX_BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0") {
        quick(&list, env_u32("ADVEX_BENCH_ROUNDS", 5));
    } else {
        let mut c = Criterion::default().configure_from_args();
        benches(&mut c, &ctx, &list);
        c.final_summary();
    }
    print_table(&ctx, batch);
}
