//! The autotune: measured tile choices per layer, their cache file, and that
//! plans built after tuning use them and compute the same values.

use std::sync::Arc;

use crate::common::*;
use advex::gpu::{Recording, Shape, Step, TuneTable};
use advex::model::{Dtype, Model};
use advex::ops::{conv, Conv2dParams};
use advex::plan::GpuModel;
use advex::{Context, ContextOptions, DType, KernelStyle};

/// A context on the tiled kernels (every convolution on the tuned GEMM) with
/// its tuning table in `cache`.
fn tiled_ctx(cache: &std::path::Path) -> Arc<Context> {
    Arc::new(
        Context::new(ContextOptions {
            kernels: Some(KernelStyle::Tiled),
            tune_cache: Some(cache.to_path_buf()),
            ..Default::default()
        })
        .unwrap(),
    )
}

/// The GEMM tile variants' names in the tuning table.
const TILES: [&str; 8] = [
    "square",
    "tall",
    "narrow",
    "wide",
    "square-db",
    "tall-db",
    "narrow-db",
    "wide-db",
];

fn adapter_key(ctx: &Context) -> String {
    let s = &ctx.summary;
    format!("{} | {} | {}", s.name, s.driver, s.backend)
}

#[test]
fn tuning_is_measured_cached_and_used() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("sub/tune.json");
    let path = builder::tiny_cnn(3).write(dir.path(), "m.safetensors", Dtype::F32);
    let model = Arc::new(Model::load(&path).unwrap());
    let n = 3u32;

    // Untuned reference values, on a context of its own.
    let plain_ctx = Arc::new(
        Context::new(ContextOptions {
            kernels: Some(KernelStyle::Tiled),
            tune_in_memory: true,
            ..Default::default()
        })
        .unwrap(),
    );
    let plain = GpuModel::new(plain_ctx.clone(), model.clone()).unwrap();
    let item = plain.input_shape(1).numel() as usize;
    let x: Vec<f32> = random(5, n as usize * item)
        .iter()
        .map(|v| 0.5 + 0.5 * v)
        .collect();
    let labels = [1u32, 0, 2];
    let run = |g: &GpuModel| {
        let plan = g.gradient_plan(n, 1.0).unwrap();
        plan.set_batch(&g.ctx, &x, &labels).unwrap();
        plan.run(&g.ctx).unwrap()
    };
    let want = run(&plain);

    // First use: every GEMM pass is timed and the file written.
    let ctx = tiled_ctx(&cache);
    let gpu = GpuModel::new(ctx.clone(), model.clone()).unwrap();
    let r = gpu.tune(n).unwrap();
    assert!(r.timed >= 4, "timed {} passes", r.timed);
    assert_eq!(r.cached, 0);
    assert_eq!(r.path.as_deref(), Some(cache.as_path()));
    assert_eq!(ctx.tuned_count(), r.timed);
    let file: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cache).unwrap()).unwrap();
    assert_eq!(file["format"], 1);
    let entries = file["adapters"][adapter_key(&ctx)].as_object().unwrap();
    assert_eq!(entries.len(), r.timed);
    for (k, v) in entries {
        assert!(k.starts_with("conv.wgsl#"), "{k}");
        assert!(TILES.contains(&v.as_str().unwrap()), "{k}: {v}");
    }
    // Tuned plans compute what untuned ones do (the tile changes the work split,
    // not the summation order).
    let got = run(&gpu);
    assert_close("tuned logits", &got.logits, &to_f64(&want.logits), 1e-5);
    assert_close(
        "tuned gradient",
        &got.input_grad,
        &to_f64(&want.input_grad),
        1e-5,
    );

    // Second use, new context: everything comes from the file.
    let ctx2 = tiled_ctx(&cache);
    let gpu2 = GpuModel::new(ctx2.clone(), model.clone()).unwrap();
    let r2 = gpu2.tune(n).unwrap();
    assert_eq!((r2.timed, r2.cached), (0, r.timed));
    // Another batch size is another set of layers.
    let r3 = gpu2.tune(n + 1).unwrap();
    assert_eq!(r3.timed, r.timed);
    let t = TuneTable::load(Some(cache.clone()), &adapter_key(&ctx2));
    assert_eq!(t.len(), 2 * r.timed, "both batch sizes saved");
}

/// The tiles only the autotune picks (the 128 x 128 one with an 8 x 8 block
/// per thread, and every double-buffered one) against the f64 reference when
/// a stored choice selects them: forward with bias, the stride-1 and the
/// phased (stride 2) backward, partial m and n tiles, K not a multiple of the
/// K slice, groups, batch 1.
#[test]
fn stored_tiles_match_the_reference() {
    use crate::common::ref_conv::RefConv;
    let dir = tempfile::tempdir().unwrap();
    let ctx = tiled_ctx(&dir.path().join("t.json"));
    // (input, oc, kernel, stride, pad, groups)
    let cases: [([u32; 4], u32, u32, u32, u32, u32); 4] = [
        ([2, 21, 13, 11], 150, 3, 1, 1, 1),
        ([1, 37, 17, 17], 130, 3, 2, 1, 1),
        ([3, 64, 9, 7], 136, 1, 1, 0, 1),
        ([1, 48, 10, 10], 264, 3, 1, 1, 2),
    ];
    // (name, WG_M, TM, TN, BK, DB)
    let stored = [
        ("wide", 16u32, 8u32, 8u32, 8u32, false),
        ("square-db", 16, 4, 4, 16, true),
        ("tall-db", 16, 8, 4, 16, true),
        ("narrow-db", 64, 4, 4, 8, true),
        ("wide-db", 16, 8, 8, 8, true),
    ];
    for (t, (name, wg_m, tm, tn, bk, db)) in stored.into_iter().enumerate() {
        for (i, (x4, oc, k, s, pad, groups)) in cases.into_iter().enumerate() {
            let p = Conv2dParams {
                stride: [s, s],
                padding: [pad; 4],
                dilation: [1, 1],
                groups,
            };
            let xs = Shape::new(x4[0], x4[1], x4[2], x4[3]);
            let ws = Shape::new(oc, x4[1] / groups, k, k);
            let ys = p.out_shape(xs, ws.dims()).unwrap();
            let seed = 900 + 100 * t as u64 + 10 * i as u64;
            let (xv, wv, bv, gyv) = (
                random(seed, xs.numel() as usize),
                random(seed + 1, ws.numel() as usize),
                random(seed + 2, oc as usize),
                random(seed + 3, ys.numel() as usize),
            );
            for pass in [conv::Pass::Forward, conv::Pass::Backward] {
                let key = conv::tune_key(&ctx, &p, xs, ws, DType::F32, pass)
                    .unwrap()
                    .expect("a GEMM layer");
                ctx.set_tuned(key, name.into());
            }
            let x = ctx.upload(&xv, xs, "x").unwrap();
            let w = ctx.upload(&wv, ws, "w").unwrap();
            let b = ctx.upload(&bv, Shape::new(1, oc, 1, 1), "b").unwrap();
            let gy = ctx.upload(&gyv, ys, "gy").unwrap();
            let y = ctx.tensor(ys, "y").unwrap();
            let gx = ctx.tensor(xs, "gx").unwrap();
            let mut rec = Recording::new();
            conv::forward(&ctx, &mut rec, &p, &x, &w, Some(&b), &y).unwrap();
            conv::backward(&ctx, &mut rec, &p, &gy, &w, &gx).unwrap();
            let want_tile = vec![
                ("BK".to_string(), (bk as f64).to_bits()),
                ("DB".into(), (db as u8 as f64).to_bits()),
                ("TM".into(), (tm as f64).to_bits()),
                ("TN".into(), (tn as f64).to_bits()),
                ("WG_M".into(), (wg_m as f64).to_bits()),
            ];
            assert_eq!(
                tiles(&rec),
                vec![want_tile.clone(), want_tile],
                "{name} case {i}: the stored tile"
            );
            let out = ctx.run_read(&[&rec], &[&y, &gx]).unwrap();
            let r = RefConv {
                x: xs.dims().map(|v| v as usize),
                w: ws.dims().map(|v| v as usize),
                stride: [s as usize; 2],
                padding: [pad as usize; 4],
                dilation: [1, 1],
                groups: groups as usize,
            };
            let want_y = r.forward(&to_f64(&xv), &to_f64(&wv), Some(&to_f64(&bv)));
            let want_gx = r.backward(&to_f64(&gyv), &to_f64(&wv));
            assert_close(&format!("{name} case {i} forward"), &out[0], &want_y, 1e-5);
            assert_close(
                &format!("{name} case {i} backward"),
                &out[1],
                &want_gx,
                1e-5,
            );
        }
    }
}

/// A device with WebGPU's 16 KiB of workgroup memory is never given a
/// double-buffered tile: the autotune leaves them out, and a stored choice
/// naming one (a table copied from another device) falls back to the shape's
/// own tile.
#[test]
fn double_buffered_tiles_need_the_workgroup_memory() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = Arc::new(
        Context::new(ContextOptions {
            kernels: Some(KernelStyle::Tiled),
            tune_cache: Some(dir.path().join("t.json")),
            webgpu_limits: true,
            ..Default::default()
        })
        .unwrap(),
    );
    assert_eq!(ctx.workgroup_storage_bytes(), 16384);
    let p = Conv2dParams {
        stride: [1, 1],
        padding: [1; 4],
        dilation: [1, 1],
        groups: 1,
    };
    let (xs, ws) = (Shape::new(2, 21, 13, 11), Shape::new(150, 21, 3, 3));
    let ys = p.out_shape(xs, ws.dims()).unwrap();
    for pass in [conv::Pass::Forward, conv::Pass::Backward] {
        let key = conv::tune_key(&ctx, &p, xs, ws, DType::F32, pass)
            .unwrap()
            .unwrap();
        ctx.set_tuned(key, "wide-db".into());
    }
    let (x, w, y) = (
        ctx.tensor(xs, "x").unwrap(),
        ctx.tensor(ws, "w").unwrap(),
        ctx.tensor(ys, "y").unwrap(),
    );
    let mut rec = Recording::new();
    conv::forward(&ctx, &mut rec, &p, &x, &w, None, &y).unwrap();
    conv::backward(&ctx, &mut rec, &p, &y, &w, &x).unwrap();
    for t in tiles(&rec) {
        assert!(t.contains(&("DB".into(), 0f64.to_bits())), "{t:?}");
    }
    // The autotune times single-buffered tiles only; on this adapter's own
    // limit (32 KiB on llvmpipe) every tile.
    assert_eq!(conv::tuned_tiles(&ctx), &TILES[..4]);
    let full = tiled_ctx(&dir.path().join("u.json"));
    if full.workgroup_storage_bytes() >= 25088 {
        assert_eq!(conv::tuned_tiles(&full), TILES);
    }
}

/// Tile constants of every conv.wgsl dispatch in `rec`.
fn tiles(rec: &Recording) -> Vec<Vec<(String, u64)>> {
    rec.steps
        .iter()
        .filter_map(|s| match s {
            Step::Dispatch { kernel, .. } if kernel.key.shader.name() == "conv" => Some(
                kernel
                    .key
                    .constants
                    .iter()
                    .filter(|(k, _)| ["WG_M", "TM", "TN", "BK", "DB"].contains(&k.as_str()))
                    .cloned()
                    .collect(),
            ),
            _ => None,
        })
        .collect()
}

#[test]
fn a_stored_choice_decides_the_tile() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = tiled_ctx(&dir.path().join("t.json"));
    let p = Conv2dParams {
        stride: [1, 1],
        padding: [1; 4],
        dilation: [1, 1],
        groups: 1,
    };
    let (xs, ws) = (Shape::new(2, 8, 12, 12), Shape::new(40, 8, 3, 3));
    let ys = p.out_shape(xs, ws.dims()).unwrap();
    let xv = random(1, xs.numel() as usize);
    let wv = random(2, ws.numel() as usize);
    let gyv = random(3, ys.numel() as usize);
    let x = ctx.upload(&xv, xs, "x").unwrap();
    let w = ctx.upload(&wv, ws, "w").unwrap();
    let gy = ctx.upload(&gyv, ys, "gy").unwrap();
    let record = |ctx: &Context| {
        let y = ctx.tensor(ys, "y").unwrap();
        let gx = ctx.tensor(xs, "gx").unwrap();
        let mut rec = Recording::new();
        conv::forward(ctx, &mut rec, &p, &x, &w, None, &y).unwrap();
        conv::backward(ctx, &mut rec, &p, &gy, &w, &gx).unwrap();
        let out = ctx.run_read(&[&rec], &[&y, &gx]).unwrap();
        (tiles(&rec), out)
    };
    let (before, want) = record(&ctx);
    let fwd = conv::tune_key(&ctx, &p, xs, ws, DType::F32, conv::Pass::Forward)
        .unwrap()
        .unwrap();
    let bwd = conv::tune_key(&ctx, &p, xs, ws, DType::F32, conv::Pass::Backward)
        .unwrap()
        .unwrap();
    assert_ne!(fwd, bwd);
    let narrow = vec![
        ("BK".to_string(), 8f64.to_bits()),
        ("DB".into(), 0f64.to_bits()),
        ("TM".into(), 4f64.to_bits()),
        ("TN".into(), 4f64.to_bits()),
        ("WG_M".into(), 64f64.to_bits()),
    ];
    let tall = vec![
        ("BK".to_string(), 16f64.to_bits()),
        ("DB".into(), 0f64.to_bits()),
        ("TM".into(), 8f64.to_bits()),
        ("TN".into(), 4f64.to_bits()),
        ("WG_M".into(), 16f64.to_bits()),
    ];
    assert_ne!(
        before,
        vec![narrow.clone(), tall.clone()],
        "the heuristic must pick otherwise for the test to mean something"
    );
    ctx.set_tuned(fwd, "narrow".into());
    ctx.set_tuned(bwd, "tall".into());
    let (after, got) = record(&ctx);
    assert_eq!(after, vec![narrow, tall]);
    assert_close(
        "forward with the stored tile",
        &got[0],
        &to_f64(&want[0]),
        1e-5,
    );
    assert_close(
        "backward with the stored tile",
        &got[1],
        &to_f64(&want[1]),
        1e-5,
    );
    // Layers on other kernels have no key: depthwise here.
    let dw = Conv2dParams { groups: 8, ..p };
    let key = conv::tune_key(
        &ctx,
        &dw,
        xs,
        Shape::new(8, 1, 3, 3),
        DType::F32,
        conv::Pass::Forward,
    )
    .unwrap();
    assert_eq!(key, None);
}

#[test]
fn unreadable_cache_files_are_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("tune.json");
    std::fs::write(&cache, "{ not json").unwrap();
    let mut t = TuneTable::load(Some(cache.clone()), "gpu");
    assert!(t.is_empty());
    t.insert("k".into(), "tall".into());
    t.save().unwrap();
    // Another adapter's entries survive a save by this one.
    let mut other = TuneTable::load(Some(cache.clone()), "other gpu");
    other.insert("k".into(), "square".into());
    other.save().unwrap();
    assert_eq!(
        TuneTable::load(Some(cache.clone()), "gpu").get("k"),
        Some("tall")
    );
    assert_eq!(
        TuneTable::load(Some(cache), "other gpu").get("k"),
        Some("square")
    );
    // In memory only: nothing written.
    let mut mem = TuneTable::load(None, "gpu");
    mem.insert("k".into(), "narrow".into());
    mem.save().unwrap();
    assert_eq!(mem.get("k"), Some("narrow"));
}
