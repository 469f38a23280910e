#!/usr/bin/env python3
"""One machine-readable results file from a tools/gpu_bench.sh run.

Reads BENCH_DIR/results.jsonl (the JSON lines that tools/bench_torch.py
``--json-out`` and gpu_bench.sh's steps append) and the ``--json`` output of
gpu_bench.sh's advex-only steps (BENCH_DIR/NAME.txt), and writes
OUT_DIR/DATE_SLUG.json, where SLUG names the GPU (``nvidia-h200``, from
nvidia-smi) or, on a machine without one, ``cpu-`` and the advex adapter
(``cpu-llvmpipe``). A second run the same day gets ``_2``, ``_3``...; the same
run (BENCH_DIR/run_id) overwrites its own file. Only the standard library.

    python3 tools/bench_results.py --bench-dir bench-out [--out-dir benchmarks/results] [--copy-to DIR]

The file::

    {
      "format": 1, "run_id": ..., "date": "2026-12-03", "created_utc": ...,
      "form": "gpu" | "cpu",
      "commit": {"hash": ..., "source": "git" | "target/COMMIT", "dirty": bool | null},
      "machine": {"gpu": "NVIDIA H200", "driver": "580.159.04", "gpu_memory": "143771 MiB",
                  "cpus": 16, "system": "Linux ... x86_64"},
      "torch": {"version": ..., "cuda": ..., "cudnn": ..., "device": ...},
      "advex": {"adapter": ..., "backend": ...},
      "settings": {gpu_bench.sh's environment},
      "configurations": [            # advex against PyTorch, one per
        {"model", "method", "steps", "batch_size", "eps_count", "advex_precision",
         "advex_images_per_second",
         "torch": {MODE: {VARIANT: images/s}},   # fgsm: VARIANT loop / best;
         "ratio": {MODE: {VARIANT: advex / torch}}, # pgd: torchattacks, apgd: autoattack
         "eps" (iterative only), "step", "iterations"}, ...],
      "torch_only": [PyTorch rows with no advex row beside them],
      "advex_runs": [advex bench rows of the advex-only steps, with "step"],
      "autoattack": [AutoAttack's standard version, advex against the reference
                     code (tools/bench_autoattack.py rows)],
      "notes": [skipped modes, precisions, batches, and why],
      "steps": [{"name", "rc", "seconds"} or {"name", "skipped"}]
    }

MODE is one of PyTorch's modes (strict, default, amp; see tools/bench_torch.py).
Prints the path written.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def read_jsonl(path: str) -> list[dict]:
    rows = []
    if not os.path.exists(path):
        return rows
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line.startswith("{"):
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    pass  # a line cut short by a step's time limit
    return rows


def run(cmd: list[str]) -> str | None:
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=30, cwd=ROOT)
    except (OSError, subprocess.SubprocessError):
        return None
    return r.stdout.strip() if r.returncode == 0 else None


def commit() -> dict:
    h = run(["git", "rev-parse", "HEAD"])
    if h:
        st = run(["git", "status", "--porcelain", "--untracked-files=no"])
        return {"hash": h, "source": "git", "dirty": bool(st) if st is not None else None}
    path = os.path.join(ROOT, "target", "COMMIT")  # written by tools/device_pack.sh
    if os.path.exists(path):
        with open(path) as f:
            lines = f.read().split("\n")
        dirty = None
        for line in lines[1:]:
            if line.startswith("dirty:"):
                dirty = line.split(":", 1)[1].strip() not in ("0", "no", "false", "")
        return {"hash": lines[0].strip() or None, "source": "target/COMMIT", "dirty": dirty}
    return {"hash": None, "source": None, "dirty": None}


def gpu_info() -> dict | None:
    out = run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"])
    if not out:
        return None
    name, driver, mem = [v.strip() for v in out.splitlines()[0].split(",")][:3]
    return {"gpu": name, "driver": driver, "gpu_memory": mem, "gpus": len(out.splitlines())}


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "unknown"


def pick_name(out_dir: str, base: str, run_id: str | None) -> str:
    """BASE.json, or BASE_N.json when another run already has BASE.json."""
    n = 1
    while True:
        name = f"{base}.json" if n == 1 else f"{base}_{n}.json"
        path = os.path.join(out_dir, name)
        if not os.path.exists(path):
            return path
        try:
            with open(path) as f:
                if run_id and json.load(f).get("run_id") == run_id:
                    return path  # this run's own file: overwrite
        except (OSError, json.JSONDecodeError):
            pass
        n += 1


def rounded(v):
    """Floats to 6 significant digits (timings are not better than that)."""
    if isinstance(v, float):
        return float(f"{v:.6g}")
    if isinstance(v, dict):
        return {k: rounded(x) for k, x in v.items()}
    if isinstance(v, list):
        return [rounded(x) for x in v]
    return v


def dumps(result: dict) -> str:
    """JSON with one line per top-level key, and one per item of its lists
    (a configuration per line: short diffs, easy greps)."""
    result = rounded(result)
    out = []
    for k, v in result.items():
        if isinstance(v, list) and v:
            items = ",\n".join("  " + json.dumps(x) for x in v)
            out.append(f" {json.dumps(k)}: [\n{items}\n ]")
        else:
            out.append(f" {json.dumps(k)}: {json.dumps(v)}")
    return "{\n" + ",\n".join(out) + "\n}\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bench-dir", required=True, help="gpu_bench.sh's OUT_DIR")
    ap.add_argument("--out-dir", default=os.path.join(ROOT, "benchmarks", "results"))
    ap.add_argument("--copy-to", default=None, help="also copy the file into this folder")
    ap.add_argument("--name", default=None, help="file name (default DATE_SLUG.json)")
    args = ap.parse_args()

    rows = read_jsonl(os.path.join(args.bench_dir, "results.jsonl"))
    run_id = None
    if os.path.exists(os.path.join(args.bench_dir, "run_id")):
        with open(os.path.join(args.bench_dir, "run_id")) as f:
            run_id = f.read().strip() or None
    settings = next((r for r in rows if r.get("kind") == "settings"), {})
    settings = {k: v for k, v in settings.items() if k != "kind"}
    run_id = run_id or settings.get("run_id")
    steps = [{k: v for k, v in r.items() if k != "kind"} for r in rows if r.get("kind") == "step"]

    # advex-only steps: their --json lines.
    advex_runs = []
    for s in steps:
        if s.get("name", "").startswith("torch_") or "file" not in s:
            continue
        for r in read_jsonl(os.path.join(args.bench_dir, s["file"])):
            if "images_per_second" in r and "adapter" in r:
                advex_runs.append({"step": s["name"], **r})

    env = next((r for r in rows if r.get("kind") == "torch_env"), None)
    advex_rows = [r for r in rows if r.get("kind") == "advex"] + advex_runs
    adapter = next((r.get("adapter") for r in advex_rows if r.get("adapter")), None)
    devices = os.path.join(args.bench_dir, "devices.txt")  # `advex devices`: "* 0: NAME"
    if adapter is None and os.path.exists(devices):
        with open(devices) as f:
            adapter = next((m.group(1).strip() for m in map(re.compile(r"^\* \d+: (.+)$").match, f) if m), None)
    backend = next((r.get("backend") for r in advex_rows if r.get("backend")), None)

    configurations = []
    covered = set()
    for r in rows:
        if r.get("kind") != "compare":
            continue
        c = {k: r.get(k) for k in ("model", "method", "steps", "batch_size", "eps_count", "advex_precision",
                                   "advex_images_per_second")}
        if r["method"] == "fgsm":
            c["torch"], c["ratio"] = r["torch"], r["ratio"]
        else:  # one compare row per PyTorch mode: fold them
            same = next((x for x in configurations if x.get("step") == r.get("tag") and all(
                x[k] == c[k] for k in ("model", "method", "steps", "batch_size", "advex_precision"))), None)
            ref = r["reference"]
            if same is not None:
                same["torch"][r["torch_mode"]] = {ref: r["reference_images_per_second"]}
                same["ratio"][r["torch_mode"]] = {ref: r["ratio"]}
                continue
            c["eps"] = r.get("eps")
            c["torch"] = {r["torch_mode"]: {ref: r["reference_images_per_second"]}}
            c["ratio"] = {r["torch_mode"]: {ref: r["ratio"]}}
        c["step"], c["iterations"] = r.get("tag"), r.get("iterations")
        configurations.append(c)
        covered.add((r.get("tag"), r["model"], r["method"], r["batch_size"], r["eps_count"]))
    torch_only = [{k: v for k, v in r.items() if k != "kind"} for r in rows if r.get("kind") == "torch"
                  and (r.get("tag"), r["model"], r["method"], r["batch_size"], r["eps_count"]) not in covered]
    notes = [{k: v for k, v in r.items() if k != "kind"} for r in rows if r.get("kind") == "note"]
    autoattack = [{k: v for k, v in r.items() if k != "kind"} for r in rows if r.get("kind") == "autoattack"]

    gpu = gpu_info()
    form = "gpu" if gpu else "cpu"
    if form == "gpu":
        name_slug = slug(gpu["gpu"])
    else:
        short = (adapter or "no-adapter").split(" (")[0]
        name_slug = "cpu-" + slug(short)
    now = datetime.datetime.now(datetime.timezone.utc)
    machine = {"gpu": None, "driver": None, "gpu_memory": None, "gpus": 0, **(gpu or {}),
               "cpus": os.cpu_count(), "system": " ".join(platform.uname()[:3] + (platform.machine(),))}
    result = {
        "format": 1,
        "run_id": run_id,
        "date": now.strftime("%Y-%m-%d"),
        "created_utc": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "form": form,
        "commit": commit(),
        "machine": machine,
        "torch": ({"version": env.get("torch_version"), "cuda": env.get("cuda"), "cudnn": env.get("cudnn"),
                   "device": env.get("device")} if env else None),
        "advex": {"adapter": adapter, "backend": backend},
        "settings": settings,
        "configurations": configurations,
        "torch_only": torch_only,
        "advex_runs": advex_runs,
        "autoattack": autoattack,
        "notes": notes,
        "steps": steps,
    }
    os.makedirs(args.out_dir, exist_ok=True)
    path = (os.path.join(args.out_dir, args.name) if args.name
            else pick_name(args.out_dir, f"{result['date']}_{name_slug}", run_id))
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(dumps(result))
    os.replace(tmp, path)
    print(f"bench_results: {len(configurations)} configurations, {len(advex_runs)} advex-only rows -> {path}")
    if args.copy_to:
        os.makedirs(args.copy_to, exist_ok=True)
        shutil.copy(path, os.path.join(args.copy_to, os.path.basename(path)))


if __name__ == "__main__":
    sys.exit(main())
