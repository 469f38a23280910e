#!/usr/bin/env python3
"""AutoAttack's standard version: advex against the reference code, same
model, same images, same machine, one run.

The reference is pyautoattack 0.2.0's ``AutoAttack(version="standard")``
(APGD-CE, APGD-T with 9 targets, FAB-T with 9 targets, Square with 5000
queries, each on the images still robust) on PyTorch, CUDA when torch sees a
GPU; advex is ``advex attack --method autoattack --leaderboard``. Both start
from the same 8-bit images (a folder of class-named sub-folders, the bundled
digits by default) and report robust accuracy on the float points; advex
also on the 8-bit images it saves.

    python3 tools/bench_autoattack.py [--advex target/release/advex]
        [--model weights/mnist_cnn.safetensors] [--images examples/digits]
        [--eps 0.1] [--norm Linf|L2] [--batch-size 100] [--count N]
        [--json-out FILE] [--tag NAME]

Prints one line per side and the ratio of their times; ``--json-out`` appends
one JSON line with ``kind: "autoattack"``: ``reference`` (seconds, clean and
robust accuracy, images forwarded through the model, device) and ``advex``
(wall seconds of the process, the attack's own seconds, clean, float and
8-bit robust accuracy, forward and backward passes, adapter), ``speedup``
(reference seconds / advex wall seconds) and the run's settings.
tools/bench_results.py puts it in the results file's ``autoattack`` list.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from advex_format import TorchExecutor, load_model  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def read_folder(folder: str, count: int | None):
    """Images of class-named sub-folders, in sorted path order (as advex
    discovers them), as [0, 1] floats, and their labels (the folder names)."""
    files = []
    for cls in sorted(os.listdir(folder)):
        d = os.path.join(folder, cls)
        if os.path.isdir(d):
            files += [(os.path.join(cls, f), int(cls)) for f in sorted(os.listdir(d))]
    files.sort()
    if count is not None:
        files = files[:count]
    x = np.stack([np.asarray(Image.open(os.path.join(folder, f))) for f, _ in files])
    if x.ndim == 3:
        x = x[:, None]
    else:
        x = x.transpose(0, 3, 1, 2)
    return [f for f, _ in files], torch.from_numpy(x.astype(np.float32) / 255.0), torch.tensor(
        [c for _, c in files])


class Counting(torch.nn.Module):
    """The model, counting the images it forwards."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model
        self.images = 0

    def forward(self, x):
        self.images += x.shape[0]
        return self.model(x)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--advex", default=os.path.join(ROOT, "target", "release", "advex"))
    ap.add_argument("--model", default=os.path.join(ROOT, "weights", "mnist_cnn.safetensors"))
    ap.add_argument("--images", default=os.path.join(ROOT, "examples", "digits"))
    ap.add_argument("--eps", default="0.1", help="as advex reads it: 0.1 or 8/255")
    ap.add_argument("--norm", default="Linf", choices=["Linf", "L2"])
    ap.add_argument("--batch-size", type=int, default=100)
    ap.add_argument("--count", type=int, default=None, help="only the first N images (a subset folder "
                    "is made for advex)")
    ap.add_argument("--json-out", default=None)
    ap.add_argument("--tag", default=None)
    args = ap.parse_args()
    a, _, b = args.eps.partition("/")
    eps = float(a) / float(b) if b else float(a)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({os.cpu_count()} cores)"

    files, x, y = read_folder(args.images, args.count)
    spec, tensors = load_model(args.model)
    net = TorchExecutor(spec, tensors).eval()
    net.t = {k: v.to(device) for k, v in net.t.items()}
    net.mean, net.std = net.mean.to(device), net.std.to(device)
    model = Counting(net).eval()

    # The reference.
    from pyautoattack import AutoAttack
    import importlib.metadata as md
    adversary = AutoAttack(model, norm=args.norm, eps=eps, version="standard", device=device, seed=0)
    adversary.verbose = False
    xd, yd = x.to(device), y.to(device)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    x_adv, _ = adversary.run_standard_evaluation(xd, yd, batch_size=args.batch_size)
    if device.type == "cuda":
        torch.cuda.synchronize()
    ref_seconds = time.perf_counter() - t0
    forwarded = model.images
    with torch.no_grad():
        clean = float((net(xd).argmax(1) == yd).float().mean())
        robust = float((net(x_adv).argmax(1) == yd).float().mean())
    reference = {"impl": "pyautoattack", "version": md.version("pyautoattack"), "seconds": ref_seconds,
                 "clean_accuracy": clean, "robust_accuracy": robust, "images_forwarded": forwarded,
                 "device": dev_name, "torch_version": torch.__version__}
    print(f"reference AutoAttack ({dev_name}): {ref_seconds:.2f} s, clean {clean:.4f}, robust {robust:.4f}, "
          f"{forwarded} images forwarded", flush=True)

    # advex, on the same images.
    with tempfile.TemporaryDirectory() as tmp:
        images = args.images
        if args.count is not None:
            images = os.path.join(tmp, "images")
            for f in files:
                os.makedirs(os.path.dirname(os.path.join(images, f)), exist_ok=True)
                os.symlink(os.path.join(os.path.abspath(args.images), f), os.path.join(images, f))
        entry = os.path.join(tmp, "entry.json")
        report = os.path.join(tmp, "report.json")
        cmd = [args.advex, "attack", "-q", "--model", args.model, "--images", images, "--eps", args.eps,
               "--method", "autoattack", "--norm", args.norm.lower(), "--batch-size", str(args.batch_size),
               "--leaderboard", entry, "--report", report]
        t0 = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if done.returncode != 0:
            raise SystemExit(f"advex failed ({done.returncode}): {done.stderr.strip()}")
        with open(entry) as f:
            e = json.load(f)
        with open(report) as f:
            r = json.load(f)
    ours = {"wall_seconds": wall, "attack_seconds": r["timing"]["seconds"],
            "clean_accuracy": r["clean"]["accuracy"],
            "robust_accuracy_float": float(e["autoattack_acc"]) / 100.0,
            "robust_accuracy_8bit": (float(e["autoattack_acc_8bit"]) / 100.0
                                     if e.get("autoattack_acc_8bit") is not None else None),
            "passes": e["passes"], "adapter": r["adapter"]["name"], "backend": r["adapter"]["backend"],
            "precision": r["precision"]}
    print(f"advex ({ours['adapter']}): {wall:.2f} s ({ours['attack_seconds']:.2f} s attacking), clean "
          f"{ours['clean_accuracy']:.4f}, robust float {ours['robust_accuracy_float']:.4f}, 8-bit "
          f"{ours['robust_accuracy_8bit']}, passes {ours['passes']}", flush=True)
    print(f"speedup (reference seconds / advex wall seconds): {ref_seconds / wall:.2f}x")
    if args.json_out:
        row = {"kind": "autoattack", "tag": args.tag, "model": spec.get("name", os.path.basename(args.model)),
               "images": len(files), "eps": args.eps, "norm": args.norm, "batch_size": args.batch_size,
               "reference": reference, "advex": ours, "speedup": ref_seconds / wall}
        with open(args.json_out, "a") as f:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
