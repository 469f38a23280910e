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
//! - `cargo bench --bench kernels -- 'fwd/stem|bwd/stem'` (substring filters,
//!   `|`-separated as criterion takes one regex, on the op ids
//!   `fwd/LAYER`, `bwd/LAYER`, `fused/LAYER` (conv + relu6 in one dispatch) and
//!   `unfused/LAYER` (conv, then relu6 as its own dispatch));
//! - `ADVEX_BENCH_QUICK=1 cargo bench --bench kernels` skips criterion and times
//!   every op `ADVEX_BENCH_ROUNDS` (default 5) times, printing the median (what the
//!   A/B comparisons in PERF_NOTES.md use: two builds run alternately).
//!
//! Environment: `ADVEX_BENCH_BATCH` (default 8), `ADVEX_BENCH_REPS`,
//! `ADVEX_BENCH_ROUNDS`, `WGPU_ADAPTER_NAME` (adapter choice, as everywhere).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use advex::gpu::{Recording, Shape, Tensor};
use advex::ops::{activation, conv, linear, Activation, Conv2dParams};
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
    /// followed by relu6 in the network (the fused / unfused comparison)
    act: bool,
}

/// EfficientNet-Lite0's activation.
const ACT: Activation = Activation::Relu6;

#[allow(clippy::too_many_arguments)]
const fn conv(
    name: &'static str,
    c: u32,
    hw: u32,
    oc: u32,
    k: u32,
    stride: u32,
    pad: [u32; 4],
    groups: u32,
    act: bool,
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
        act,
    }
}

const LAYERS: [Layer; 7] = [
    // TF-SAME stride 2 on an even input: pad [top, left, bottom, right] = [0, 0, 1, 1]
    conv("stem_3x3s2_3_32", 3, 224, 32, 3, 2, [0, 0, 1, 1], 1, true),
    conv("expand_1x1_24_144", 24, 56, 144, 1, 1, [0; 4], 1, true),
    conv("dw_3x3s1_144", 144, 56, 144, 3, 1, [1; 4], 144, true),
    conv("dw_5x5s2_240", 240, 28, 240, 5, 2, [1, 1, 2, 2], 240, true),
    conv("project_1x1_144_24", 144, 56, 24, 1, 1, [0; 4], 1, false),
    conv("head_1x1_320_1280", 320, 7, 1280, 1, 1, [0; 4], 1, true),
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
        act: false,
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

/// The op an entry times.
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    /// conv / linear forward (bias, no activation)
    Fwd,
    /// backward to the input
    Bwd,
    /// forward with the layer's activation fused in the epilogue
    FwdAct,
    /// forward, then the activation as its own dispatch (the unfused baseline)
    FwdThenAct,
}

impl Kind {
    fn prefix(self) -> &'static str {
        match self {
            Kind::Fwd => "fwd",
            Kind::Bwd => "bwd",
            Kind::FwdAct => "fused",
            Kind::FwdThenAct => "unfused",
        }
    }
}

/// One timed op: a recording of `reps` repetitions, replayed in one submit.
struct Entry {
    ctx: Arc<Context>,
    id: String,
    flops: u64,
    reps: u32,
    rec: Recording,
    // keep the tensors alive
    _t: Vec<Tensor>,
}

fn params(l: &Layer) -> Conv2dParams {
    Conv2dParams {
        stride: [l.stride; 2],
        padding: l.pad,
        dilation: [1, 1],
        groups: l.groups,
    }
}

impl Entry {
    fn new(ctx: Arc<Context>, l: Layer, kind: Kind, batch: u32) -> Self {
        let p = params(&l);
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
        let y2 = ctx.tensor(ys, "y2").expect("y2");
        let gx = ctx.tensor(xs, "gx").expect("gx");
        let record = |n: u32| {
            let mut rec = Recording::new();
            let c = &*ctx;
            for _ in 0..n {
                let r = &mut rec;
                match (kind, l.linear) {
                    (Kind::Fwd, false) => conv::forward(c, r, &p, &x, &w, Some(&b), &y),
                    (Kind::Fwd, true) => linear::forward(c, r, &x, &w, Some(&b), &y),
                    (Kind::Bwd, false) => conv::backward(c, r, &p, &gy, &w, &gx),
                    (Kind::Bwd, true) => linear::backward(c, r, &gy, &w, &gx),
                    (Kind::FwdAct, _) => conv::forward_act(c, r, &p, &x, &w, Some(&b), ACT, &y),
                    (Kind::FwdThenAct, _) => conv::forward(c, r, &p, &x, &w, Some(&b), &y)
                        .and_then(|_| activation::forward(c, r, ACT, &y, &y2)),
                }
                .expect("recording");
            }
            rec
        };
        let mut e = Entry {
            ctx: ctx.clone(),
            id: format!("{}/{}", kind.prefix(), l.name),
            flops: 2 * macs,
            reps: 1,
            rec: record(1),
            _t: vec![],
        };
        // Size the repetition count: ~1 s per iteration at most on slow adapters
        // (the first run compiles the pipelines: time the second).
        e.time_once();
        let t = e.time_once().max(1e-6);
        e.reps = ((1.0 / t) as u32).clamp(1, env_u32("ADVEX_BENCH_REPS", 10));
        e.rec = record(e.reps);
        e._t = vec![x, w, b, gy, y, y2, gx];
        e
    }

    /// Seconds for one submit of the recording (all its repetitions).
    fn time_once(&self) -> f64 {
        let t = Instant::now();
        self.ctx.run(&[&self.rec]).expect("run");
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
    let peak = advex::bench::known_peak(&ctx.summary.name);
    match &peak {
        Some(p) => println!("peak {:.0} GFLOP/s ({})", p.gflops, p.source),
        None => println!("peak unknown for this adapter (ADVEX_PEAK=GFLOPS,GBPS sets it)"),
    }
    println!(
        "{:<34} {:>12} {:>10} {:>8} {:>6}",
        "op", "ms", "GFLOP/s", "% peak", "runs"
    );
    for (id, (flops, v)) in times.iter_mut() {
        let runs = v.len();
        let t = median(v);
        let gflops = *flops as f64 / t / 1e9;
        let pct = peak
            .as_ref()
            .map(|p| format!("{:.1}", 100.0 * gflops / p.gflops))
            .unwrap_or_else(|| "-".into());
        println!(
            "{:<34} {:>12.3} {:>10.2} {:>8} {:>6}",
            id,
            t * 1e3,
            gflops,
            pct,
            runs
        );
    }
}

fn benches(c: &mut Criterion, list: &[Entry]) {
    let mut g = c.benchmark_group("kernels");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2));
    for e in list {
        g.throughput(Throughput::Elements(e.flops * e.reps as u64));
        g.bench_function(&e.id, |bencher| {
            bencher.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let t = e.time_once();
                    note(&e.id, e.flops, t / e.reps as f64);
                    total += Duration::from_secs_f64(t);
                }
                total
            })
        });
    }
    g.finish();
}

fn quick(list: &[Entry], rounds: u32) {
    for _ in 0..rounds {
        for e in list {
            let t = e.time_once();
            note(&e.id, e.flops, t / e.reps as f64);
        }
    }
}

fn main() {
    let ctx = Arc::new(Context::new(ContextOptions::default()).expect("a GPU adapter"));
    let batch = env_u32("ADVEX_BENCH_BATCH", 8);
    // Positional arguments filter the ops by substring of their id
    // (`fwd/stem_3x3s2_3_32`, `bwd/...`, `fused/...`, `unfused/...`).
    // (criterion takes one filter, a regex: `a|b` selects either here too)
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .flat_map(|a| a.split('|').map(str::to_string).collect::<Vec<_>>())
        .collect();
    let mut list = Vec::new();
    for l in LAYERS {
        let mut kinds = vec![Kind::Fwd, Kind::Bwd];
        if l.act {
            kinds.extend([Kind::FwdAct, Kind::FwdThenAct]);
        }
        for kind in kinds {
            let id = format!("{}/{}", kind.prefix(), l.name);
            if filter.is_empty() || filter.iter().any(|f| id.contains(f.as_str())) {
                list.push(Entry::new(ctx.clone(), l, kind, batch));
            }
        }
    }
    if std::env::var("ADVEX_BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0") {
        quick(&list, env_u32("ADVEX_BENCH_ROUNDS", 5));
    } else {
        let mut c = Criterion::default().configure_from_args();
        benches(&mut c, &list);
        c.final_summary();
    }
    print_table(&ctx, batch);
}
