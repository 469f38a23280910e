#!/usr/bin/env python3
"""The same FGSM work as `advex bench`, in PyTorch, for ratios in one run.

For each batch size it times, in eval mode on one device (CUDA when available,
else CPU, or `--device`):

* ``torch_loop``: the way torchattacks / Foolbox / ART run a sweep, one attack
  per eps: forward + backward + perturb, then a forward of the adversarial batch
  to score it. K eps cost K gradients. (Labels are given for free.)
* ``torch_best``: the best hand-written PyTorch: one forward + backward, labels
  from the clean logits, then K perturbations and K forwards.

each in every one of PyTorch's modes (``--torch-modes``, all three by default
on CUDA; cuDNN's autotuner, ``cudnn.benchmark``, is on in all of them):

* ``strict``: fp32 throughout, TF32 off (``torch.backends.cudnn.allow_tf32 =
  False``, ``torch.backends.cuda.matmul.allow_tf32 = False``);
* ``default``: PyTorch's defaults: convolutions may use TF32 (cuDNN's flag on),
  matmuls not;
* ``amp``: the defaults plus ``torch.autocast("cuda", dtype=torch.float16)``
  around the forward and backward passes.

On a CPU device only ``strict`` applies (TF32 and fp16 autocast are CUDA
modes; the output says so). Both quantise to the 8-bit grid like advex. Images
are synthetic (decoding is excluded on both sides); each configuration gets a
warm-up batch first.

The model: an advex model file runs in PyTorch through
``advex_format.TorchExecutor`` (e.g. the bundled EfficientNet-Lite0); a file
made by ``tools/bench_models.py`` (ResNet-50, WRN-28-10: NAME.torch.json next
to it) runs as the very nn.Module it was exported from (its weights from
NAME.pt), normalisation in front.

With ``--method pgd|apgd-ce|apgd-t`` (and ``--steps N``) it times the
iterative attacks instead, at one eps (``--eps``, default 8/255), against the
libraries users run today: torchattacks 3.5.1's PGD (random start, alpha =
2.5 eps / steps) and the AutoAttack reference code's APGD (PyPI pyautoattack:
APGDAttack with the CE loss, APGDAttack_targeted with 9 target classes), each
followed by a forward of the result to score it, in the modes of
``--torch-modes`` (default here: ``default`` only). ``impl`` is
``torchattacks`` or ``autoattack``; rows add ``method``, ``steps`` and
``image_steps_per_second`` (images x gradient steps per image: apgd-t runs
``steps`` per target class). APGD skips images an earlier run already fooled,
as AutoAttack does; advex runs every image, so compare images/s.

    python tools/bench_torch.py --method pgd --steps 10 --compare \\
        --model weights/mnist_cnn.safetensors --batch-size 32

    python tools/bench_torch.py --model weights/efficientnet_lite0.safetensors \\
        --batch-size 1,8,32,128 --eps-count 1,8 [--json]
    python tools/bench_torch.py --compare ...   # also runs `advex bench --json`
                                                # and prints advex / PyTorch ratios
    python tools/bench_torch.py --compare --advex-precision f32,f16,mixed ...
    python tools/bench_torch.py --compare --model bench-models/resnet50.safetensors \\
        --batch-size 64 --eps-count 1 --iterations 3 --json-out results.jsonl

``--advex-precision`` takes a comma list; a precision the binary does not
offer (``advex bench --help``), or one the adapter refuses, is skipped with a
note, and the rest still run.

Output: ``--json`` prints the PyTorch rows as JSON, one object per line, with
``impl``, ``mode``, ``model``, ``batch_size``, ``eps_count``,
``images_per_second``, ``device``. ``--json-out FILE`` appends every row to
FILE as JSON lines, each with a ``kind``: ``torch_env`` (versions, device),
``torch`` (a PyTorch timing), ``advex`` (an ``advex bench --json`` row as
printed, plus ``tag``), ``compare`` (advex against each PyTorch mode and
variant, with the ratios advex / PyTorch) and ``note`` (a skipped mode,
precision or batch, and why); ``tools/bench_results.py`` assembles them.
``--tag NAME`` labels every row (gpu_bench.sh passes its step's name).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from advex_format import TorchExecutor, load_model  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODES = ("strict", "default", "amp")
OOM = getattr(torch, "OutOfMemoryError", getattr(torch.cuda, "OutOfMemoryError", RuntimeError))


def build(path: str, device: torch.device) -> tuple[torch.nn.Module, dict]:
    """(module taking [0, 1] pixels, spec with "name" and "input")."""
    try:
        from bench_models import load_torch
        made = load_torch(path, device)
    except ImportError:
        made = None
    if made is not None:
        return made
    spec, tensors = load_model(path)
    model = TorchExecutor(spec, tensors).eval()
    model.t = {k: v.to(device) for k, v in model.t.items()}
    model.mean = model.mean.to(device)
    model.std = model.std.to(device)
    return model, spec


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def modes_for(device: torch.device, wanted: str) -> tuple[list[str], str | None]:
    """The modes to time and, when some were dropped, why."""
    modes = [m.strip() for m in wanted.split(",") if m.strip()]
    bad = [m for m in modes if m not in MODES]
    if bad:
        raise SystemExit(f"--torch-modes {','.join(bad)}: use {', '.join(MODES)}")
    if device.type != "cuda":
        dropped = [m for m in modes if m != "strict"]
        if dropped:
            return ["strict"], (f"{device.type} device: only 'strict' (fp32) applies; skipped "
                                f"{', '.join(dropped)} (TF32 and fp16 autocast are CUDA modes)")
    return modes, None


def set_mode(mode: str) -> dict:
    """Sets PyTorch's global flags for MODE; returns what was set."""
    tf32_conv = mode != "strict"
    torch.backends.cudnn.allow_tf32 = tf32_conv
    torch.backends.cuda.matmul.allow_tf32 = False
    return {"tf32_conv": tf32_conv, "tf32_matmul": False,
            "autocast": "float16" if mode == "amp" else None, "cudnn_benchmark": torch.backends.cudnn.benchmark}


def mode_ctx(mode: str, device: torch.device):
    if mode == "amp":
        return torch.autocast(device_type=device.type, dtype=torch.float16)
    return contextlib.nullcontext()


def perturb(x, g, eps):
    adv = torch.clamp(x + eps * torch.sign(g), 0.0, 1.0)
    return torch.round(adv * 255.0) / 255.0


def torch_loop(model, x, y, eps_list):
    """One full attack per eps (torchattacks.FGSM semantics), then scoring."""
    preds = []
    for eps in eps_list:
        xr = x.clone().requires_grad_(True)
        loss = F.cross_entropy(model(xr).float(), y, reduction="sum")
        (g,) = torch.autograd.grad(loss, xr)
        adv = perturb(x, g, eps)
        with torch.no_grad():
            preds.append(model(adv).argmax(1))
    return preds


def torch_best(model, x, eps_list):
    """One gradient, every eps from it."""
    xr = x.clone().requires_grad_(True)
    logits = model(xr).float()
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


def ints(s: str) -> list[int]:
    return [int(v) for v in s.split(",") if v.strip()]


class Sink:
    """Rows to stdout (--json: torch rows only) and to --json-out (all)."""

    def __init__(self, args) -> None:
        self.json, self.path, self.tag = args.json, args.json_out, args.tag

    def emit(self, row: dict, stdout: bool = False) -> None:
        if self.tag:
            row = {**row, "tag": self.tag}
        if stdout and self.json:
            print(json.dumps(row), flush=True)
        if self.path:
            with open(self.path, "a") as f:
                f.write(json.dumps(row) + "\n")

    def note(self, text: str, **where) -> None:
        print(f"note: {text}", file=sys.stderr if self.json else sys.stdout, flush=True)
        self.emit({"kind": "note", "text": text, **where})


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({torch.get_num_threads()} threads)"


def env_row(device: torch.device) -> dict:
    row = {"kind": "torch_env", "torch_version": torch.__version__, "device": device_name(device),
           "device_type": device.type, "threads": torch.get_num_threads(), "python": platform.python_version()}
    if device.type == "cuda":
        row.update({"cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version()})
    return row


def advex_help(advex: str) -> str:
    try:
        return subprocess.run([advex, "bench", "--help"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError) as e:
        return f"(advex bench --help failed: {e})"


def run_advex(cmd: list[str], sink: Sink, **where) -> list[dict]:
    """`advex bench --json` rows; a failure becomes a note, not an exception."""
    r = subprocess.run(cmd, capture_output=True, text=True)
    rows = []
    for line in r.stdout.splitlines():
        if line.startswith("{"):
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    if r.returncode != 0:
        err = (r.stderr.strip().splitlines() or ["(no message)"])[-1]
        sink.note(f"`{' '.join(cmd)}` exited {r.returncode}: {err}", **where)
    for row in rows:
        sink.emit({"kind": "advex", **row})
    return rows


def precisions_for(args, sink: Sink) -> list[str]:
    """The precisions asked for that this advex offers (the rest noted)."""
    wanted = [p.strip() for p in args.advex_precision.split(",") if p.strip()]
    text = advex_help(args.advex)
    out = []
    for p in wanted:
        if p == "f32" or p in text:
            out.append(p)
        else:
            sink.note(f"advex precision {p!r} skipped: `{args.advex} bench --help` does not offer it",
                      advex_precision=p)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=os.path.join(ROOT, "weights", "efficientnet_lite0.safetensors"))
    ap.add_argument("--batch-size", default="1,8,32,128")
    ap.add_argument("--eps-count", default="1,8")
    ap.add_argument("--iterations", type=int, default=5)
    ap.add_argument("--device", default=None, help="cuda, cpu (default: cuda if available)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--torch-modes", default=None,
                    help="comma list of strict, default, amp (default: all three for fgsm, "
                         "'default' for the iterative methods; CPU: strict only)")
    ap.add_argument("--json", action="store_true", help="PyTorch rows as JSON lines on stdout")
    ap.add_argument("--json-out", default=None, metavar="FILE", help="append every row (JSON lines) to FILE")
    ap.add_argument("--tag", default=None, help="label added to every JSON row")
    ap.add_argument("--compare", action="store_true", help="also run `advex bench --json` and print ratios")
    ap.add_argument("--advex", default=os.path.join(ROOT, "target", "release", "advex"))
    ap.add_argument("--advex-precision", default="f32",
                    help="advex's storage type(s) in --compare, comma list of f32, f16, mixed")
    ap.add_argument("--advex-no-tune", action="store_true", help="pass --no-tune to advex bench")
    ap.add_argument("--method", default="fgsm", help="fgsm (default), pgd, apgd-ce or apgd-t")
    ap.add_argument("--steps", type=int, default=None, help="pgd: 10, apgd-*: 100")
    ap.add_argument("--eps", default="8/255", help="the iterative methods' eps")
    args = ap.parse_args()

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.backends.cudnn.benchmark = True
    sink = Sink(args)
    default_modes = "strict,default,amp" if args.method == "fgsm" else "default"
    modes, why = modes_for(device, args.torch_modes or default_modes)
    sink.emit(env_row(device))
    if why:
        sink.note(why)
    model, spec = build(args.model, device)
    if args.method != "fgsm":
        return main_iterative(args, device, model, spec, modes, sink)

    c, h, w = spec["input"]
    name = spec.get("name", os.path.basename(args.model))
    dev_name = device_name(device)
    # (mode, variant, batch, eps count) -> images/s
    ips: dict[tuple, float] = {}
    for k in ints(args.eps_count):
        for b in ints(args.batch_size):
            gen = torch.Generator().manual_seed(b)
            x = (torch.randint(0, 256, (b, c, h, w), generator=gen).float() / 255.0).to(device)
            set_mode("strict")
            try:
                with torch.no_grad():
                    y = model(x).argmax(1)
            except OOM:
                sink.note(f"batch {b}: out of memory, skipped", batch_size=b, eps_count=k)
                continue
            eps = eps_values(k)
            line = []
            for mode in modes:
                flags = set_mode(mode)
                for variant, fn in (("loop", lambda: torch_loop(model, x, y, eps)),
                                    ("best", lambda: torch_best(model, x, eps))):
                    try:
                        with mode_ctx(mode, device):
                            t = timed(fn, device, args.iterations)
                    except OOM:
                        if device.type == "cuda":
                            torch.cuda.empty_cache()
                        sink.note(f"batch {b}, eps {k}, {mode} {variant}: out of memory, skipped",
                                  batch_size=b, eps_count=k, mode=mode, variant=variant)
                        continue
                    ips[(mode, variant, b, k)] = b / t
                    sink.emit({"kind": "torch", "impl": f"torch_{variant}", "variant": variant, "mode": mode,
                               "model": name, "method": "fgsm", "batch_size": b, "eps_count": k,
                               "images_per_second": b / t, "seconds_per_batch": t,
                               "iterations": args.iterations, "device": dev_name,
                               "torch_version": torch.__version__, **flags}, stdout=True)
                if (mode, "loop", b, k) in ips and (mode, "best", b, k) in ips:
                    line.append(f"{mode} loop {ips[(mode, 'loop', b, k)]:9.2f} best {ips[(mode, 'best', b, k)]:9.2f}")
            set_mode("default")
            if not args.json:
                print(f"{name} batch {b:4d} eps {k}: " + " | ".join(line) + f" img/s ({dev_name})", flush=True)

    if not args.compare:
        return
    precisions = precisions_for(args, sink)
    print("\nadvex vs PyTorch (same machine, same run; img/s, and advex / PyTorch)")
    for prec in precisions:
        for k in ints(args.eps_count):
            eps_arg = ",".join(f"{i + 1}/255" for i in range(k))
            cmd = [args.advex, "bench", "--json", "--model", args.model, "--batch-size", args.batch_size,
                   "--eps", eps_arg, "--iterations", str(args.iterations), "--precision", prec]
            if args.advex_no_tune:
                cmd.append("--no-tune")
            for r in run_advex(cmd, sink, eps_count=k, advex_precision=prec):
                b, a = r["batch_size"], r["images_per_second"]
                torch_ips = {m: {v: ips[(m, v, b, k)] for v in ("loop", "best") if (m, v, b, k) in ips}
                             for m in modes}
                ratio = {m: {v: a / t for v, t in vs.items()} for m, vs in torch_ips.items()}
                sink.emit({"kind": "compare", "model": name, "method": "fgsm", "steps": 1, "batch_size": b,
                           "eps_count": k, "advex_precision": prec, "advex_images_per_second": a,
                           "adapter": r.get("adapter"), "backend": r.get("backend"),
                           "torch": torch_ips, "ratio": ratio, "torch_device": dev_name,
                           "iterations": args.iterations})
                parts = [f"{m} {vs.get('loop', 0):9.2f}/{vs.get('best', 0):9.2f} "
                         f"({ratio[m].get('loop', 0):5.2f}x/{ratio[m].get('best', 0):5.2f}x)"
                         for m, vs in torch_ips.items()]
                print(f"batch {b:>4} eps {k:>2} advex {prec:>5} {a:10.2f} | torch loop/best: "
                      + " | ".join(parts) + f"  [{r.get('adapter')}]", flush=True)


def main_iterative(args, device, model, spec, modes, sink: Sink) -> None:
    c, h, w = spec["input"]
    name = spec.get("name", os.path.basename(args.model))
    dev_name = device_name(device)
    steps = args.steps or (10 if args.method == "pgd" else 100)
    a, _, b = args.eps.partition("/")
    eps = float(a) / float(b) if b else float(a)
    runs = 9 if args.method == "apgd-t" else 1
    impl = "torchattacks" if args.method == "pgd" else "autoattack"
    ips: dict[tuple, float] = {}
    for b in ints(args.batch_size):
        gen = torch.Generator().manual_seed(b)
        x = (torch.randint(0, 256, (b, c, h, w), generator=gen).float() / 255.0).to(device)
        set_mode("strict")
        with torch.no_grad():
            y = model(x).argmax(1)
        for mode in modes:
            flags = set_mode(mode)
            try:
                with mode_ctx(mode, device):
                    t = timed(lambda: iterative(args.method, model, x, y, eps, steps), device, args.iterations)
            except OOM:
                sink.note(f"{args.method} batch {b} {mode}: out of memory, skipped", batch_size=b, mode=mode)
                continue
            ips[(mode, b)] = b / t
            sink.emit({"kind": "torch", "impl": impl, "mode": mode, "method": args.method, "steps": steps,
                       "eps": args.eps, "model": name, "batch_size": b, "eps_count": 1,
                       "images_per_second": b / t, "image_steps_per_second": b * steps * runs / t,
                       "seconds_per_batch": t, "iterations": args.iterations, "device": dev_name,
                       "torch_version": torch.__version__, **flags}, stdout=True)
            if not args.json:
                print(f"{name} {args.method} steps {steps} batch {b:4d} [{mode}]: {impl} {b / t:9.2f} img/s, "
                      f"{b * steps * runs / t:10.1f} img*steps/s ({dev_name})", flush=True)
    set_mode("default")
    if not args.compare:
        return
    print(f"\nadvex vs {impl} ({args.method}, {steps} steps, eps {args.eps}; same machine, same run)")
    print(f"{'batch':>6} {'prec':>5} {'advex img/s':>12} {'mode':>8} {impl + ' img/s':>18} {'ratio':>7}  adapter")
    for prec in precisions_for(args, sink):
        cmd = [args.advex, "bench", "--json", "--model", args.model, "--batch-size", args.batch_size,
               "--eps", args.eps, "--iterations", str(args.iterations), "--method", args.method,
               "--steps", str(steps), "--precision", prec]
        if args.advex_no_tune:
            cmd.append("--no-tune")
        for r in run_advex(cmd, sink, method=args.method, advex_precision=prec):
            bs, a = r["batch_size"], r["images_per_second"]
            for mode in modes:
                ref = ips.get((mode, bs))
                if ref is None:
                    continue
                sink.emit({"kind": "compare", "model": name, "method": args.method, "steps": steps,
                           "eps": args.eps, "batch_size": bs, "eps_count": 1, "advex_precision": prec,
                           "advex_images_per_second": a, "adapter": r.get("adapter"), "backend": r.get("backend"),
                           "reference": impl, "torch_mode": mode, "reference_images_per_second": ref,
                           "ratio": a / ref, "torch_device": dev_name, "iterations": args.iterations})
                print(f"{bs:>6} {prec:>5} {a:>12.2f} {mode:>8} {ref:>18.2f} {a / ref:>7.2f}  {r.get('adapter')}",
                      flush=True)


if __name__ == "__main__":
    main()
