#!/usr/bin/env python3
"""The same FGSM work as `advex bench`, in PyTorch, for ratios in one run.

For each batch size it times, in fp32 eval mode on one device (CUDA when
available, else CPU, or `--device`):

* ``torch_loop``: the way torchattacks / Foolbox / ART run a sweep, one attack
  per eps: forward + backward + perturb, then a forward of the adversarial batch
  to score it. K eps cost K gradients. (Labels are given for free.)
* ``torch_best``: the best hand-written PyTorch: one forward + backward, labels
  from the clean logits, then K perturbations and K forwards.

Both quantise to the 8-bit grid like advex. Images are synthetic (decoding is
excluded on both sides); each configuration gets a warm-up batch first.

With ``--method pgd|apgd-ce|apgd-t`` (and ``--steps N``) it times the
iterative attacks instead, at one eps (``--eps``, default 8/255), against the
libraries users run today: torchattacks 3.5.1's PGD (random start, alpha =
2.5 eps / steps) and the AutoAttack reference code's APGD (PyPI pyautoattack:
APGDAttack with the CE loss, APGDAttack_targeted with 9 target classes), each
followed by a forward of the result to score it. ``impl`` is ``torchattacks``
or ``autoattack``; rows add ``method``, ``steps`` and ``image_steps_per_second``
(images x gradient steps per image: apgd-t runs ``steps`` per target class).
APGD skips images an earlier run already fooled, as AutoAttack does; advex
runs every image, so compare images/s.

    python tools/bench_torch.py --method pgd --steps 10 --compare \
        --model weights/mnist_cnn.safetensors --batch-size 32

    python tools/bench_torch.py --model weights/efficientnet_lite0.safetensors \
        --batch-size 1,8,32,128 --eps-count 1,8 [--json]
    python tools/bench_torch.py --compare ...   # also runs `advex bench --json`
                                                # and prints advex / PyTorch ratios
    python tools/bench_torch.py --compare --advex-precision f16 ...

Output (``--json``): one object per line with ``impl``, ``model``,
``batch_size``, ``eps_count``, ``images_per_second``, ``device``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from advex_format import TorchExecutor, load_model  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def build(path: str, device: torch.device) -> tuple[TorchExecutor, dict]:
    spec, tensors = load_model(path)
    model = TorchExecutor(spec, tensors).eval()
    model.t = {k: v.to(device) for k, v in model.t.items()}
    model.mean = model.mean.to(device)
    model.std = model.std.to(device)
    return model, spec


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def perturb(x, g, eps):
    adv = torch.clamp(x + eps * torch.sign(g), 0.0, 1.0)
    return torch.round(adv * 255.0) / 255.0


def torch_loop(model, x, y, eps_list):
    """One full attack per eps (torchattacks.FGSM semantics), then scoring."""
    preds = []
    for eps in eps_list:
        xr = x.clone().requires_grad_(True)
        loss = F.cross_entropy(model(xr), y, reduction="sum")
        (g,) = torch.autograd.grad(loss, xr)
        adv = perturb(x, g, eps)
        with torch.no_grad():
            preds.append(model(adv).argmax(1))
    return preds


def torch_best(model, x, eps_list):
    """One gradient, every eps from it."""
    xr = x.clone().requires_grad_(True)
    logits = model(xr)
    y = logits.argmax(1)
    loss = F.cross_entropy(logits, y, reduction="sum")
    (g,) = torch.autograd.grad(loss, xr)
    preds = []
    with torch.no_grad():
        for eps in eps_list:
            preds.append(model(perturb(x, g, eps)).argmax(1))
    return preds


def iterative(method: str, model, x, y, eps: float, steps: int):
    """One batch of the reference implementation, then a forward to score it."""
    if method == "pgd":
        import torchattacks
        adv = torchattacks.PGD(model, eps=eps, alpha=2.5 * eps / steps, steps=steps,
                               random_start=True)(x, y)
    elif method == "apgd-ce":
        from pyautoattack.autopgd_base import APGDAttack
        adv = APGDAttack(model, n_iter=steps, norm="Linf", n_restarts=1, eps=eps, seed=0,
                         loss="ce", device=x.device).perturb(x, y)
    elif method == "apgd-t":
        from pyautoattack.autopgd_base import APGDAttack_targeted
        adv = APGDAttack_targeted(model, n_iter=steps, norm="Linf", n_restarts=1, eps=eps,
                                  seed=0, n_target_classes=9, device=x.device).perturb(x, y)
    else:
        raise SystemExit(f"--method {method}: use pgd, apgd-ce or apgd-t")
    with torch.no_grad():
        return model(torch.round(adv * 255.0) / 255.0).argmax(1)


def timed(fn, device, iterations):
    fn()  # warm-up
    sync(device)
    t = time.perf_counter()
    for _ in range(iterations):
        fn()
    sync(device)
    return (time.perf_counter() - t) / iterations


def eps_values(k: int) -> list[float]:
    return [(i + 1) / 255.0 for i in range(k)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=os.path.join(ROOT, "weights", "efficientnet_lite0.safetensors"))
    ap.add_argument("--batch-size", default="1,8,32,128")
    ap.add_argument("--eps-count", default="1,8")
    ap.add_argument("--iterations", type=int, default=5)
    ap.add_argument("--device", default=None, help="cuda, cpu (default: cuda if available)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--compare", action="store_true", help="also run `advex bench --json` and print ratios")
    ap.add_argument("--advex", default=os.path.join(ROOT, "target", "release", "advex"))
    ap.add_argument("--advex-precision", default="f32", choices=["f32", "f16"],
                    help="advex's storage type in --compare (PyTorch stays fp32)")
    ap.add_argument("--method", default="fgsm", help="fgsm (default), pgd, apgd-ce or apgd-t")
    ap.add_argument("--steps", type=int, default=None, help="pgd: 10, apgd-*: 100")
    ap.add_argument("--eps", default="8/255", help="the iterative methods' eps")
    args = ap.parse_args()
    if args.method != "fgsm":
        return main_iterative(args)

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.backends.cudnn.benchmark = True
    model, spec = build(args.model, device)
    c, h, w = spec["input"]
    name = spec.get("name", os.path.basename(args.model))
    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    rows = []
    for k in [int(v) for v in args.eps_count.split(",")]:
        for b in [int(v) for v in args.batch_size.split(",")]:
            gen = torch.Generator().manual_seed(b)
            x = (torch.randint(0, 256, (b, c, h, w), generator=gen).float() / 255.0).to(device)
            with torch.no_grad():
                y = model(x).argmax(1)
            eps = eps_values(k)
            try:
                t_loop = timed(lambda: torch_loop(model, x, y, eps), device, args.iterations)
                t_best = timed(lambda: torch_best(model, x, eps), device, args.iterations)
            except torch.OutOfMemoryError:
                print(f"batch {b}: out of memory, skipped", file=sys.stderr)
                continue
            for impl, t in (("torch_loop", t_loop), ("torch_best", t_best)):
                row = {"impl": impl, "model": name, "batch_size": b, "eps_count": k,
                       "images_per_second": b / t, "device": dev_name}
                rows.append(row)
                if args.json:
                    print(json.dumps(row), flush=True)
            if not args.json:
                print(f"{name} batch {b:4d} eps {k}: torch_loop {b / t_loop:9.2f} img/s  "
                      f"torch_best {b / t_best:9.2f} img/s  ({dev_name})", flush=True)

    if not args.compare:
        return
    print("\nadvex vs PyTorch (same machine, same run)")
    print(f"{'batch':>6} {'eps':>4} {'advex':>10} {'loop':>10} {'best':>10} {'x loop':>8} {'x best':>8}  adapter"
          f" (advex {args.advex_precision})")
    for k in [int(v) for v in args.eps_count.split(",")]:
        eps_arg = ",".join(f"{i + 1}/255" for i in range(k))
        cmd = [args.advex, "bench", "--json", "--model", args.model, "--batch-size", args.batch_size,
               "--eps", eps_arg, "--iterations", str(args.iterations),
               "--precision", args.advex_precision]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        for line in out.splitlines():
            r = json.loads(line)
            b = r["batch_size"]
            loop = next((x for x in rows if x["impl"] == "torch_loop" and x["batch_size"] == b and x["eps_count"] == k), None)
            best = next((x for x in rows if x["impl"] == "torch_best" and x["batch_size"] == b and x["eps_count"] == k), None)
            if not loop or not best:
                continue
            a = r["images_per_second"]
            print(f"{b:>6} {k:>4} {a:>10.2f} {loop['images_per_second']:>10.2f} {best['images_per_second']:>10.2f} "
                  f"{a / loop['images_per_second']:>8.2f} {a / best['images_per_second']:>8.2f}  {r['adapter']}")


def main_iterative(args) -> None:
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.threads:
        torch.set_num_threads(args.threads)
    model, spec = build(args.model, device)
    c, h, w = spec["input"]
    name = spec.get("name", os.path.basename(args.model))
    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    steps = args.steps or (10 if args.method == "pgd" else 100)
    a, _, b = args.eps.partition("/")
    eps = float(a) / float(b) if b else float(a)
    runs = 9 if args.method == "apgd-t" else 1
    impl = "torchattacks" if args.method == "pgd" else "autoattack"
    rows = []
    for b in [int(v) for v in args.batch_size.split(",")]:
        gen = torch.Generator().manual_seed(b)
        x = (torch.randint(0, 256, (b, c, h, w), generator=gen).float() / 255.0).to(device)
        with torch.no_grad():
            y = model(x).argmax(1)
        t = timed(lambda: iterative(args.method, model, x, y, eps, steps), device, args.iterations)
        row = {"impl": impl, "method": args.method, "steps": steps, "model": name,
               "batch_size": b, "images_per_second": b / t,
               "image_steps_per_second": b * steps * runs / t, "device": dev_name}
        rows.append(row)
        if args.json:
            print(json.dumps(row), flush=True)
        else:
            print(f"{name} {args.method} steps {steps} batch {b:4d}: {impl} {b / t:9.2f} img/s, "
                  f"{b * steps * runs / t:10.1f} img*steps/s ({dev_name})", flush=True)
    if not args.compare:
        return
    print(f"\nadvex vs {impl} ({args.method}, {steps} steps, eps {args.eps}; same machine, same run)")
    print(f"{'batch':>6} {'advex img/s':>12} {impl + ' img/s':>18} {'ratio':>7}  adapter")
    cmd = [args.advex, "bench", "--json", "--model", args.model, "--batch-size", args.batch_size,
           "--eps", args.eps, "--iterations", str(args.iterations), "--method", args.method,
           "--steps", str(steps), "--precision", args.advex_precision]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    for line in out.splitlines():
        r = json.loads(line)
        ref = next((x for x in rows if x["batch_size"] == r["batch_size"]), None)
        if ref is None:
            continue
        a = r["images_per_second"]
        print(f"{r['batch_size']:>6} {a:>12.2f} {ref['images_per_second']:>18.2f} "
              f"{a / ref['images_per_second']:>7.2f}  {r['adapter']}")


if __name__ == "__main__":
    main()
