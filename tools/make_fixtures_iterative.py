#!/usr/bin/env python3
"""torchattacks reference results for the deterministic iterative attacks.

Writes tests/fixtures/iterative_mnist.safetensors: for every digit of
examples/digits (100, sorted by path) and the MNIST CNN of weights/, the
8-bit adversarial images and their predictions under torchattacks 3.5.1's
BIM, PGD (random_start=False) and MIFGSM, each at two eps on the 8-bit grid
with step sizes on the grid, and PGDL2 (random_start=False) at two L2 eps, so that advex's results can be compared pixel
for pixel without PyTorch (tests/iterative.rs).

Computation, per method and eps:
  x       = PNG bytes / 255 ([1, 28, 28]); label = argmax(model(x)) (clean top-1,
            what advex uses without labels).
  x_adv   = torchattacks.<METHOD>(model, eps, alpha, steps)(x, label), float32.
  level   = the grid point nearest to x_adv*255 inside the eps ball and [0, 255]:
            clamp(round(x_adv * 255), ceil((x - eps) * 255 - 1e-3),
                  floor((x + eps) * 255 + 1e-3))
            (advex's in-ball rounding; round half to even as torch.round)
  pred    = argmax(model(level / 255)).

Tensors (key "<method>/<eps index>/..."): "adv" u8 [N, 1, 28, 28], "pred"
i32 [N]; "adv64" the same attack run in float64 (model and images), "well"
u8 [N]: 1 where the float32 and float64 runs give the same pixels. On this
saturated MNIST CNN (clean probabilities ~1.0) the loss gradient of many
images is below float32's resolution and its signs are rounding noise that
compounds over the steps: torchattacks in float32 and in float64 disagree on
3-11% of pixels. Pixel parity is only defined on the well-conditioned
images; elsewhere the test asks advex to be at least as close to the float64
result as torchattacks' float32 is. "clean_pred" i32 [N]. The header's metadata holds the file list,
the settings of each case and the model's sha256.

Usage: python tools/make_fixtures_iterative.py   (needs torch, torchattacks 3.5.1)
"""

from __future__ import annotations

import hashlib
import json
import os
import sys

import numpy as np
import torch
import torchattacks
from safetensors.numpy import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import advex_format as af  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = "weights/mnist_cnn.safetensors"
OUT = "tests/fixtures/iterative_mnist.safetensors"

# (method, eps levels, step levels, steps): eps and alpha = levels / 255
CASES = [
    ("bim", [20, 51], [2, 5], 10),
    ("pgd", [20, 51], [2, 5], 10),
    ("mifgsm", [20, 51], [2, 5], 10),
]
# L2 (torchattacks' PGDL2 without its random start): eps and alpha as given
CASES_L2 = [
    ("pgd-l2", ["1.5", "3"], ["0.25", "0.5"], 10),
]


def files() -> list[str]:
    out = []
    for c in sorted(os.listdir(os.path.join(ROOT, "examples/digits"))):
        d = os.path.join(ROOT, "examples/digits", c)
        if os.path.isdir(d):
            out += [f"examples/digits/{c}/{f}" for f in sorted(os.listdir(d)) if f.endswith(".png")]
    return sorted(out)


def attack(method: str, model, eps: float, alpha: float, steps: int):
    if method == "bim":
        return torchattacks.BIM(model, eps=eps, alpha=alpha, steps=steps)
    if method == "pgd":
        return torchattacks.PGD(model, eps=eps, alpha=alpha, steps=steps, random_start=False)
    if method == "mifgsm":
        return torchattacks.MIFGSM(model, eps=eps, alpha=alpha, steps=steps, decay=1.0)
    if method == "pgd-l2":
        return torchattacks.PGDL2(model, eps=eps, alpha=alpha, steps=steps, random_start=False)
    raise ValueError(method)


def frac(t: str) -> float:
    a, _, b = t.partition("/")
    return float(a) / float(b) if b else float(a)


def main() -> None:
    assert torchattacks.__version__ == "3.5.1", torchattacks.__version__
    torch.manual_seed(0)
    spec, tensors = af.load_model(os.path.join(ROOT, MODEL))
    model = af.TorchExecutor(spec, tensors).eval()
    model64 = af.TorchExecutor(spec, tensors, dtype=torch.float64).eval()
    paths = files()
    x = torch.stack([af.load_image(os.path.join(ROOT, p), spec) for p in paths])
    with torch.no_grad():
        label = model(x).argmax(1)
    out = {"clean_pred": label.numpy().astype(np.int32)}
    cases = []
    all_cases = [(m, [f"{e}/255" for e in el], [f"{a}/255" for a in al], st)
                 for m, el, al, st in CASES] + CASES_L2
    for method, eps_texts, step_texts, steps in all_cases:
        for k, (et, at) in enumerate(zip(eps_texts, step_texts)):
            eps, alpha = frac(et), frac(at)
            lo = torch.clamp(torch.ceil((x - eps) * 255.0 - 1e-3), min=0.0)
            hi = torch.clamp(torch.floor((x + eps) * 255.0 + 1e-3), max=255.0)
            l2 = method.endswith("-l2")

            def levels(adv):
                a = adv.float() * 255.0
                if l2:  # toward the clean pixel, so no change grows (advex's L2 rounding)
                    q = torch.where(a - x * 255.0 >= 0, torch.floor(a + 1e-3), torch.ceil(a - 1e-3))
                else:
                    q = torch.round(a)
                return torch.minimum(torch.maximum(q, lo), hi)

            level = levels(attack(method, model, eps, alpha, steps)(x, label).detach())
            level64 = levels(attack(method, model64, eps, alpha, steps)(x.double(), label).detach())
            d = (level / 255.0 - x).flatten(1)
            assert float(d.norm(dim=1).max() if l2 else d.abs().max()) <= eps + 1e-6
            with torch.no_grad():
                pred = model(level / 255.0).argmax(1)
            # well-conditioned: float32 and float64 give the same pixels
            well = (level == level64).flatten(1).all(1)
            out[f"{method}/{k}/adv"] = level.to(torch.uint8).numpy()
            out[f"{method}/{k}/adv64"] = level64.to(torch.uint8).numpy()
            out[f"{method}/{k}/well"] = well.numpy().astype(np.uint8)
            out[f"{method}/{k}/pred"] = pred.numpy().astype(np.int32)
            cases.append({"method": method, "index": k, "eps": et,
                          "step_size": at, "steps": steps,
                          "robust_accuracy": float((pred == label).float().mean()),
                          "f32_vs_f64_pixels": float((level != level64).float().mean()),
                          "well_conditioned": int(well.sum())})
            print(f"{method} eps {et}: robust accuracy {cases[-1]['robust_accuracy']:.2f}, "
                  f"f32 vs f64 pixels differ {cases[-1]['f32_vs_f64_pixels']:.4f}, "
                  f"well-conditioned images {int(well.sum())}")
    with open(os.path.join(ROOT, MODEL), "rb") as fh:
        sha = hashlib.sha256(fh.read()).hexdigest()
    meta = {
        "generator": "tools/make_fixtures_iterative.py",
        "torch": torch.__version__,
        "torchattacks": torchattacks.__version__,
        "model": MODEL,
        "model_sha256": sha,
        "files": json.dumps(paths),
        "cases": json.dumps(cases),
    }
    save_file(out, os.path.join(ROOT, OUT), metadata=meta)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
