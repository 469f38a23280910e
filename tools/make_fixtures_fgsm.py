#!/usr/bin/env python3
"""PyTorch reference results for FGSM on the bundled models and images.

Writes tests/fixtures/efficientnet_lite0_photos.json (every PNG in
examples/photos) and tests/fixtures/mnist_digits.json (the first 2 digits per
class in examples/digits), computed in PyTorch float32 on CPU with the advex
reference executor (tools/advex_format.py) from the model files in weights/.

Computation, per image:
  x        = PNG bytes as u8 / 255, [C, H, W] (RGB for the photos, grey "L"
             for the digits); the files are at the model's input size, so no
             resize. The model's preprocess mean/std is applied inside the
             model (gradients are w.r.t. x in [0, 1]).
  logits   = model(x); label = argmax(logits) (the clean top-1).
  L        = cross_entropy(logits, label), summed over the batch.
  g        = dL/dx.
  x_adv    = clamp(x + eps * sign(g), 0, 1)   (sign(0) = 0: that pixel stays)
  x_q      = ball(x_adv) / 255: the level nearest to x_adv * 255 inside the
             eps ball: clamp(round(x_adv * 255), ceil((x - eps) * 255 - 1e-3),
             floor((x + eps) * 255 + 1e-3)) (torch.round: half to even)
  adversarial prediction = argmax(model(x_q)).

JSON schema (all floats as written by Python's json, i.e. shortest repr of
the float32 value widened to float64):
{
  "schema": 1,
  "generator": "tools/make_fixtures_fgsm.py",
  "model": "weights/efficientnet_lite0.safetensors",   # repo-relative
  "model_sha256": "<hex of the model file>",
  "torch": "<torch version>",
  "method": "fgsm",
  "loss": "cross_entropy(logits, clean top-1), summed over the batch",
  "quantize": "clamp(round(clamp(x + eps*sign(g), 0, 1) * 255), ceil((x-eps)*255-1e-3), floor((x+eps)*255+1e-3)) / 255, round half to even",
  "epsilons": [{"text": "1/255", "value": 0.00392156...}, ...],
  "top_k": 5,
  "images": [
    {
      "file": "examples/photos/chelsea.png",     # repo-relative path
      "label": 282, "label_name": "tiger cat",   # clean top-1
      "clean": {
        "top": [282, 285, ...],                   # top_k class indices, best first
        "probs": [0.379, ...],                    # their softmax probabilities
        "logits": [7.12, ...],                    # their raw logits
        "logits_all": [...]                       # every logit; only when <= 16 classes
      },
      "grad": {
        "l1": 0.0123,                             # sum |g|
        "linf": 1.2e-5,                           # max |g|
        "zero_fraction": 0.0,                     # fraction of g == 0 exactly
        "tiny_fraction": 0.0,                     # fraction with 0 < |g| <= 1e-6 * max|g|
                                                  # (signs another implementation may flip)
        "sign_agree_f64": 0.9999                  # fraction of elements where sign(g) equals
                                                  # the sign of the same gradient computed in
                                                  # float64: how well-defined the f32 signs are
      },
      "adversarial": [
        {
          "eps": "1/255", "eps_value": 0.0039215...,
          "pred": 285, "pred_name": "Egyptian cat",
          "pred_prob": 0.41,                      # softmax prob of pred on x_q
          "label_prob": 0.20,                     # softmax prob of the clean label on x_q
          "top2": [285, 282], "top2_probs": [0.41, 0.20],
          "linf": 0.0039215, "l2": 0.76,          # of x_q - x over all C*H*W values
          "round_ties": 0.0,                      # fraction of x_adv*255 exactly at k+0.5
                                                  # (float32), where rounding rules matter
          "adv_u8_sha256": "<hex>",               # sha256 of round(x_q*255) as u8, HWC order
                                                  # (matches only if every sign(g) matches)
          "pred_f64_signs": 285                   # top-1 of the same f32 model when x_q is
                                                  # built from the float64 gradient's signs;
                                                  # differs from "pred" when the result hinges
                                                  # on rounding noise in g
        }, ...
      ]
    }, ...
  ]
}

Usage: python tools/make_fixtures_fgsm.py [--which effnet|mnist|both]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from fractions import Fraction

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import advex_format as af  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOP_K = 5
TINY_REL = 1e-6

CONFIGS = {
    "effnet": {
        "model": "weights/efficientnet_lite0.safetensors",
        "out": "tests/fixtures/efficientnet_lite0_photos.json",
        "eps": ["1/255", "2/255", "4/255"],
        "images": lambda: sorted(os.path.join("examples/photos", f)
                                 for f in os.listdir(os.path.join(ROOT, "examples/photos"))
                                 if f.endswith(".png")),
    },
    "mnist": {
        "model": "weights/mnist_cnn.safetensors",
        "out": "tests/fixtures/mnist_digits.json",
        "eps": ["0.05", "0.1", "0.2", "0.3"],
        "images": lambda: [os.path.join("examples/digits", str(c), f)
                           for c in range(10)
                           for f in sorted(os.listdir(os.path.join(ROOT, "examples/digits", str(c))))[:2]],
    },
}


def eps_value(text: str) -> float:
    """'1/255' or '0.05' -> the float32 value used in the attack (as a Python float)."""
    return float(torch.tensor(float(Fraction(text)), dtype=torch.float32))


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def f(x) -> float:
    return float(x)


def float64_gradient(spec: dict, tensors: dict, x: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """The same loss gradient computed in float64 (a yardstick for the f32 signs)."""
    model = af.TorchExecutor(spec, tensors, dtype=torch.float64).eval()
    x = x.double().requires_grad_(True)
    loss = F.cross_entropy(model(x), label, reduction="sum")
    (g,) = torch.autograd.grad(loss, x)
    return g


def ball(level: torch.Tensor, x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """Levels clamped into the eps ball around x (advex's in-ball rounding)."""
    lo = torch.clamp(torch.ceil((x - eps) * 255.0 - 1e-3), min=0.0)
    hi = torch.clamp(torch.floor((x + eps) * 255.0 + 1e-3), max=255.0)
    return torch.minimum(torch.maximum(level, lo), hi)


def run(which: str) -> None:
    cfg = CONFIGS[which]
    torch.manual_seed(0)
    model_path = os.path.join(ROOT, cfg["model"])
    spec, tensors = af.load_model(model_path)
    model = af.TorchExecutor(spec, tensors).eval()
    classes = spec.get("classes")
    files = cfg["images"]()
    x = torch.stack([af.load_image(os.path.join(ROOT, p), spec) for p in files])
    assert list(x.shape[1:]) == spec["input"], "example images must be at the input size"

    x.requires_grad_(True)
    logits = model(x)
    label = logits.argmax(1)
    loss = F.cross_entropy(logits, label, reduction="sum")
    (g,) = torch.autograd.grad(loss, x)
    x = x.detach()
    logits = logits.detach()
    g64 = float64_gradient(spec, tensors, x, label)
    probs = torch.softmax(logits, 1)

    adv = {}
    with torch.no_grad():
        for text in cfg["eps"]:
            e = torch.tensor(eps_value(text), dtype=torch.float32)
            x_adv = torch.clamp(x + e * torch.sign(g), 0.0, 1.0)
            scaled = x_adv * 255.0
            ties = (scaled - torch.floor(scaled) == 0.5).flatten(1).float().mean(1)
            x_u8 = ball(torch.round(scaled), x, e)
            x_q = x_u8 / 255.0
            p = torch.softmax(model(x_q), 1)
            x_q64 = ball(torch.round(torch.clamp(x + e * torch.sign(g64).float(), 0.0, 1.0) * 255.0), x, e) / 255.0
            pred64 = model(x_q64).argmax(1)
            adv[text] = (x_q, x_u8.to(torch.uint8), p, ties, pred64)

    images = []
    for i, path in enumerate(files):
        top = torch.topk(probs[i], min(TOP_K, probs.shape[1]))
        gi = g[i]
        glinf = gi.abs().max()
        entry = {
            "file": path.replace(os.sep, "/"),
            "label": int(label[i]),
        }
        if classes:
            entry["label_name"] = classes[int(label[i])]
        entry["clean"] = {
            "top": [int(k) for k in top.indices],
            "probs": [f(v) for v in top.values],
            "logits": [f(logits[i, k]) for k in top.indices],
        }
        if logits.shape[1] <= 16:
            entry["clean"]["logits_all"] = [f(v) for v in logits[i]]
        entry["grad"] = {
            "l1": f(gi.abs().double().sum()),
            "linf": f(glinf),
            "zero_fraction": f((gi == 0).double().mean()),
            "tiny_fraction": f(((gi != 0) & (gi.abs() <= TINY_REL * glinf)).double().mean()),
            "sign_agree_f64": f((torch.sign(gi).double() == torch.sign(g64[i])).double().mean()),
        }
        rows = []
        for text in cfg["eps"]:
            x_q, x_u8, p, ties, pred64 = adv[text]
            pi = p[i]
            t2 = torch.topk(pi, 2)
            d = (x_q[i] - x[i]).double()
            row = {
                "eps": text,
                "eps_value": eps_value(text),
                "pred": int(t2.indices[0]),
            }
            if classes:
                row["pred_name"] = classes[int(t2.indices[0])]
            row.update({
                "pred_prob": f(t2.values[0]),
                "label_prob": f(pi[label[i]]),
                "top2": [int(k) for k in t2.indices],
                "top2_probs": [f(v) for v in t2.values],
                "linf": f(d.abs().max()),
                "l2": f(d.pow(2).sum().sqrt()),
                "round_ties": f(ties[i]),
                "adv_u8_sha256": hashlib.sha256(
                    x_u8[i].permute(1, 2, 0).contiguous().numpy().tobytes()).hexdigest(),
                "pred_f64_signs": int(pred64[i]),
            })
            rows.append(row)
        entry["adversarial"] = rows
        images.append(entry)

    doc = {
        "schema": 1,
        "generator": "tools/make_fixtures_fgsm.py",
        "model": cfg["model"],
        "model_sha256": sha256_file(model_path),
        "torch": torch.__version__,
        "method": "fgsm",
        "loss": "cross_entropy(logits, clean top-1), summed over the batch",
        "quantize": "clamp(round(clamp(x + eps*sign(g), 0, 1) * 255), ceil((x-eps)*255-1e-3), floor((x+eps)*255+1e-3)) / 255, round half to even",
        "epsilons": [{"text": t, "value": eps_value(t)} for t in cfg["eps"]],
        "top_k": TOP_K,
        "images": images,
    }
    out = os.path.join(ROOT, cfg["out"])
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out + ".tmp", "w") as fh:
        json.dump(doc, fh, indent=1)
        fh.write("\n")
    os.replace(out + ".tmp", out)

    print(f"{cfg['out']}: {len(images)} images, {os.path.getsize(out):,} bytes")
    for e in images:
        name = e.get("label_name", str(e["label"]))
        advs = "  ".join(f"{r['eps']}:{r.get('pred_name', r['pred'])}({r['pred_prob']:.2f})"
                         for r in e["adversarial"])
        fragile = sum(r["pred"] != r["pred_f64_signs"] for r in e["adversarial"])
        print(f"  {e['file']:36s} {name} ({e['clean']['probs'][0]:.2f}) "
              f"sign~f64 {e['grad']['sign_agree_f64']:.4f}"
              f"{' FRAGILE x%d' % fragile if fragile else ''} -> {advs}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--which", choices=["effnet", "mnist", "both"], default="both")
    args = ap.parse_args()
    torch.set_num_threads(1)
    for w in (["effnet", "mnist"] if args.which == "both" else [args.which]):
        run(w)


if __name__ == "__main__":
    main()
