#!/usr/bin/env python3
"""Benchmark models beyond EfficientNet-Lite0, made on the machine that times them.

Each model is built in PyTorch with random weights under a fixed seed (eval
mode), exported to ONNX with the TorchScript exporter
(``torch.onnx.export(..., dynamo=False)``, opset 17, batch 1) and converted with
``advex import`` into an advex model file. The files are far too big to carry
to a lent GPU machine (ResNet-50: 100 MB, WRN-28-10: 146 MB), so they are made
there, in seconds:

* ``resnet50``: torchvision's ResNet-50 (its own class when torchvision imports,
  else the same architecture written here, with the same state_dict names),
  224x224, ImageNet's mean/std, 1000 classes;
* ``convnext_tiny``: torchvision's ConvNeXt-T (ONNX route only), random
  LayerNorm weights and layer scales (torchvision's 1e-6 would hide every
  block), 224x224, ImageNet's mean/std, 1000 classes;
* ``wrn28_10``: the CIFAR-10 WideResNet-28-10 of the robustness literature
  (3 groups of 4 pre-activation BasicBlocks, BN-ReLU before each conv, widths
  160/320/640, 32x32 input, ``avg_pool2d(8)``, 10 classes), written here,
  CIFAR-10's mean/std.

Random weights must still give a meaningful FGSM: the clean logits of a few
random images are checked (finite, not huge, not the same for every image),
and when they are degenerate the BatchNorm running statistics are recalibrated
on seeded random batches (cumulative average, train mode, no gradient) before
export (``--calibrate always`` does it anyway).

Two routes make the advex file; the script prints which one it takes and why:

* ``onnx`` (the default when the ``onnx`` package imports): the export and
  ``advex import`` above, which also exercises advex's ONNX importer;
* ``native`` (``--native``, or when ``import onnx`` fails, since the
  TorchScript exporter refuses to run without it, or when the ONNX export
  itself fails): the graph is written straight from the nn.Module by walking
  the known structure of these two architectures (:func:`native_graph`), with
  the state_dict's tensor names and the spec ``advex import --mean --std``
  records (name, input, preprocess mean/std, no classes). The file is then
  checked: its logits under tools/advex_format.py's TorchExecutor against the
  module's on 2 random images (relative difference at most 1e-3, else the
  model is not made), and ``advex info --model`` loads it when ``--advex``
  exists. No ONNX file is made on this route.

For OUT/NAME.safetensors (the advex file) it also writes, next to it,
NAME.pt (the network's state_dict, without the normalisation) and
NAME.torch.json (architecture, input, mean/std, seed, how it was made), so that
``tools/bench_torch.py --model OUT/NAME.safetensors`` times the very same
nn.Module in PyTorch (see :func:`load_torch`), and NAME.onnx (``--no-onnx``
removes it after the import).

    python3 tools/bench_models.py                       # both, into bench-models/
    python3 tools/bench_models.py --models wrn28_10 --out /tmp/m --advex target/release/advex
    python3 tools/bench_models.py --native              # no ONNX, whether or not onnx imports

Prints one line per model and, last, the advex files made, one per line after
``made:`` (for scripts). Exit status 1 when a model could not be made (the
reason is printed: export failure, ``advex import``'s refusal verbatim, or on
the native route a logit mismatch or ``advex info``'s refusal).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOLS = os.path.dirname(os.path.abspath(__file__))

IMAGENET = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
CIFAR10 = ([0.4914, 0.4822, 0.4465], [0.2471, 0.2435, 0.2616])

# name -> input [C, H, W], classes, mean/std, the batch size gpu_bench.sh times.
ARCHS = {
    "resnet50": {"input": [3, 224, 224], "classes": 1000, "norm": IMAGENET, "batch": 64},
    "wrn28_10": {"input": [3, 32, 32], "classes": 10, "norm": CIFAR10, "batch": 512},
    "convnext_tiny": {"input": [3, 224, 224], "classes": 1000, "norm": IMAGENET, "batch": 64},
}


# ---------------------------------------------------------------------------
# ResNet-50 (torchvision's architecture and state_dict names)
# ---------------------------------------------------------------------------

class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample=None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)  # v1.5
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        idt = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + idt)


class ResNet50(nn.Module):
    """torchvision.models.resnet50's layers, names and initialisation."""

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.layer1 = self._layer(64, 3, 1)
        self.layer2 = self._layer(128, 4, 2)
        self.layer3 = self._layer(256, 6, 2)
        self.layer4 = self._layer(512, 3, 2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(2048, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def _layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        down = None
        if stride != 1 or self.inplanes != planes * 4:
            down = nn.Sequential(nn.Conv2d(self.inplanes, planes * 4, 1, stride=stride, bias=False),
                                 nn.BatchNorm2d(planes * 4))
        layers = [Bottleneck(self.inplanes, planes, stride, down)]
        self.inplanes = planes * 4
        layers += [Bottleneck(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


# ---------------------------------------------------------------------------
# WideResNet-28-10 (CIFAR-10, pre-activation blocks)
# ---------------------------------------------------------------------------

class WideBasic(nn.Module):
    """BN-ReLU-conv3x3-BN-ReLU-conv3x3; the shortcut is the identity, or a 1x1
    conv of the activated input when the width or stride changes."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.relu1 = nn.ReLU()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu2 = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, stride=1, padding=1, bias=False)
        self.equal = cin == cout and stride == 1
        self.shortcut = None if self.equal else nn.Conv2d(cin, cout, 1, stride=stride, bias=False)

    def forward(self, x):
        o = self.relu1(self.bn1(x))
        y = self.conv2(self.relu2(self.bn2(self.conv1(o))))
        return y + (x if self.equal else self.shortcut(o))


class WideResNet(nn.Module):
    def __init__(self, depth: int = 28, widen: int = 10, num_classes: int = 10) -> None:
        super().__init__()
        n = (depth - 4) // 6
        widths = [16, 16 * widen, 32 * widen, 64 * widen]
        self.conv1 = nn.Conv2d(3, widths[0], 3, stride=1, padding=1, bias=False)
        self.block1 = self._group(widths[0], widths[1], n, 1)
        self.block2 = self._group(widths[1], widths[2], n, 2)
        self.block3 = self._group(widths[2], widths[3], n, 2)
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.relu = nn.ReLU()
        self.fc = nn.Linear(widths[3], num_classes)
        self.channels = widths[3]
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                k = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                m.weight.data.normal_(0, (2.0 / k) ** 0.5)
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.data.fill_(1)
                m.bias.data.zero_()
            elif isinstance(m, nn.Linear):
                m.bias.data.zero_()

    @staticmethod
    def _group(cin: int, cout: int, n: int, stride: int) -> nn.Sequential:
        return nn.Sequential(*[WideBasic(cin if i == 0 else cout, cout, stride if i == 0 else 1)
                               for i in range(n)])

    def forward(self, x):
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        out = self.relu(self.bn1(out))
        out = F.avg_pool2d(out, 8)
        return self.fc(out.view(-1, self.channels))


# ---------------------------------------------------------------------------
# Building, checking, calibrating
# ---------------------------------------------------------------------------

def build_net(arch: str, seed: int = 0, prefer_torchvision: bool = True) -> tuple[nn.Module, str]:
    """The raw network (normalised input), seeded, eval mode, and what built it."""
    if arch not in ARCHS:
        raise SystemExit(f"unknown model {arch!r}: use {', '.join(ARCHS)}")
    torch.manual_seed(seed)
    if arch == "resnet50":
        net, how = None, "bench_models.ResNet50 (torchvision's architecture)"
        if prefer_torchvision:
            try:
                from torchvision.models import resnet50
                net = resnet50(weights=None)
                import torchvision
                how = f"torchvision.models.resnet50 (torchvision {torchvision.__version__})"
            except Exception as e:  # not installed, or broken
                how += f"; torchvision unusable: {type(e).__name__}: {e}"
        if net is None:
            net = ResNet50(ARCHS[arch]["classes"])
    elif arch == "convnext_tiny":
        # torchvision's own class only (no copy written here), so only the
        # ONNX route: its layer norms, GELUs and layer scales go through advex's
        # importer. The layer scale starts at 1e-6 in torchvision, which would
        # make every block nearly the identity: random weights get a random
        # scale in [0.25, 0.75] and random LayerNorm weights instead.
        from torchvision.models import convnext_tiny
        import torchvision
        net = convnext_tiny(weights=None)
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for m in net.modules():
                if isinstance(m, nn.LayerNorm):
                    m.weight.copy_(torch.rand(m.weight.shape, generator=gen) * 0.8 + 0.6)
                    m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.2)
                if isinstance(getattr(m, "layer_scale", None), nn.Parameter):
                    m.layer_scale.copy_(torch.rand(m.layer_scale.shape, generator=gen) * 0.5 + 0.25)
        how = (f"torchvision.models.convnext_tiny (torchvision {torchvision.__version__}), random "
               "LayerNorm weights and layer scales")
    else:
        net, how = WideResNet(28, 10, ARCHS[arch]["classes"]), "bench_models.WideResNet(28, 10)"
    return net.eval(), how


class Normalized(nn.Module):
    """(x - mean) / std in front of a network: takes [0, 1] pixels like advex."""

    def __init__(self, net: nn.Module, mean, std) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x):
        return self.net((x - self.mean) / self.std)


def random_pixels(n: int, shape, seed: int, device) -> torch.Tensor:
    """8-bit random images in [0, 1], the kind bench_torch.py and advex bench use."""
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, 256, (n, *shape), generator=g).float() / 255.0).to(device)


@torch.no_grad()
def logit_stats(model: nn.Module, shape, device, n: int = 8) -> dict:
    model.eval()
    z = model(random_pixels(n, shape, 12345, device)).float()
    finite = bool(torch.isfinite(z).all())
    stats = {"finite": finite}
    if finite:
        stats.update({
            "max_abs": float(z.abs().max()),
            # how much the logits differ between images, against their size
            "spread": float(z.std(0).mean() / (z.abs().mean() + 1e-12)),
            "distinct_top1": int(z.argmax(1).unique().numel()),
            "margin": float((z.topk(2, 1).values[:, 0] - z.topk(2, 1).values[:, 1]).mean()),
        })
    return stats


def degenerate(stats: dict) -> str | None:
    """Why these logits make a meaningless FGSM, or None."""
    if not stats["finite"]:
        return "non-finite logits"
    if stats["max_abs"] > 1e3:
        return f"logits up to {stats['max_abs']:.3g} (softmax saturates: zero gradients)"
    if stats["spread"] < 0.05:
        return f"logits nearly the same for every image (spread {stats['spread']:.2g})"
    return None


@torch.no_grad()
def calibrate_bn(model: nn.Module, shape, device, batches: int, batch: int, seed: int) -> None:
    """BatchNorm running stats from seeded random images (cumulative average)."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    for i in range(batches):
        model(random_pixels(batch, shape, seed * 1000 + i, device))
    for m in bns:
        m.momentum = 0.1
    model.eval()


# ---------------------------------------------------------------------------
# Export and import
# ---------------------------------------------------------------------------

def export_onnx(net: nn.Module, shape, path: str) -> str:
    """TorchScript exporter, opset 17, batch 1; returns the call that worked.
    Falls back to the dynamo exporter (saying why) when the legacy one fails."""
    x = torch.zeros(1, *shape)
    for p in (path, path + ".data"):
        if os.path.exists(p):
            os.remove(p)
    kw = dict(input_names=["input"], output_names=["logits"], opset_version=17)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(net, (x,), path, dynamo=False, **kw)
        return "torch.onnx.export(net, (x,), path, dynamo=False, opset_version=17)"
    except TypeError as e:  # a torch from before the dynamo keyword: legacy is the default
        if "dynamo" not in str(e):
            raise
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(net, (x,), path, **kw)
        return "torch.onnx.export(net, (x,), path, opset_version=17)  [torch without dynamo=]"
    except Exception as e:
        legacy = f"{type(e).__name__}: {str(e).strip()[:300]}"
        print(f"  legacy ONNX export failed ({legacy}); trying the dynamo exporter", flush=True)
        try:
            torch.onnx.export(net, (x,), path, dynamo=True, **kw)
        except Exception as e2:
            raise RuntimeError(f"ONNX export failed: legacy exporter: {legacy}; dynamo exporter: "
                               f"{type(e2).__name__}: {str(e2).strip()[:300]} (the legacy exporter "
                               "needs the onnx package, the dynamo one onnx and onnxscript)") from None
        return "torch.onnx.export(net, (x,), path, dynamo=True, opset_version=17)  [legacy failed]"


def advex_import(advex: str, onnx_path: str, out: str, mean, std) -> None:
    cmd = [advex, "import", onnx_path, "-o", out,
           "--mean", ",".join(str(v) for v in mean), "--std", ",".join(str(v) for v in std)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"`{' '.join(cmd)}` exited {r.returncode}:\n{(r.stderr + r.stdout).strip()}")


# ---------------------------------------------------------------------------
# The native route: the advex graph written from the module, no ONNX
# ---------------------------------------------------------------------------

NATIVE_TOL = 1e-3  # max |logit difference| / max |logit| accepted on the native route


def _advex_format():
    """tools/advex_format.py (imported on the native route only)."""
    if TOOLS not in sys.path:
        sys.path.insert(0, TOOLS)
    import advex_format
    return advex_format


def onnx_route() -> tuple[bool, str]:
    """Whether the ONNX route can run here, and why (the TorchScript exporter
    refuses to run without the onnx package)."""
    try:
        import onnx  # noqa: F401
    except Exception as e:
        return False, f"`import onnx` failed ({type(e).__name__}: {e})"
    return True, f"onnx {getattr(onnx, '__version__', '?')} imports"


def _hw(v) -> int | list[int]:
    """A torch (h, w) attribute as the spec writes it: a number when square."""
    v = (int(v), int(v)) if isinstance(v, int) else tuple(int(a) for a in v)
    return v[0] if v[0] == v[1] else [v[0], v[1]]


class _NativeGraph:
    """Emits advex nodes for known nn.Module pieces; tensors by state_dict name."""

    def __init__(self, net: nn.Module) -> None:
        af = _advex_format()
        self.g = af.GraphBuilder()
        self.state = {k: v for k, v in net.state_dict().items()
                      if not k.endswith("num_batches_tracked")}
        self.mods = dict(net.named_modules())

    def _mod(self, path: str, kind):
        m = self.mods.get(path)
        if not isinstance(m, kind):
            raise TypeError(f"native route: `{path}` is {type(m).__name__}, expected "
                            f"{kind.__name__} (the architecture is not the one this walker knows)")
        return m

    def _tensor(self, name: str) -> str:
        if name not in self.state:
            raise KeyError(f"native route: tensor {name!r} is not in the state_dict")
        self.g.add_tensor(name, self.state[name])
        return name

    def conv(self, path: str, x: str) -> str:
        m = self._mod(path, nn.Conv2d)
        if m.padding_mode != "zeros" or isinstance(m.padding, str):
            raise ValueError(f"native route: `{path}` has padding {m.padding!r} "
                             f"({m.padding_mode}); only explicit zero padding is written")
        return self.g.conv2d(path, x, weight=self._tensor(f"{path}.weight"),
                             bias=self._tensor(f"{path}.bias") if m.bias is not None else None,
                             stride=_hw(m.stride), padding=_hw(m.padding),
                             dilation=_hw(m.dilation), groups=int(m.groups))

    def bn(self, path: str, x: str) -> str:
        """batch_norm: advex folds it into the conv before it when that conv
        feeds nothing else, and runs it as a per-channel affine otherwise."""
        m = self._mod(path, nn.BatchNorm2d)
        if not (m.affine and m.track_running_stats):
            raise ValueError(f"native route: `{path}` needs affine=True and running statistics")
        for t in ("weight", "bias", "running_mean", "running_var"):
            self._tensor(f"{path}.{t}")
        return self.g.batch_norm(path, x, prefix=path, eps=float(m.eps))

    def linear(self, path: str, x: str) -> str:
        m = self._mod(path, nn.Linear)
        return self.g.linear(path, x, weight=self._tensor(f"{path}.weight"),
                             bias=self._tensor(f"{path}.bias") if m.bias is not None else None)

    def max_pool(self, path: str, x: str) -> str:
        m = self._mod(path, nn.MaxPool2d)
        return self.g.max_pool(path, x, kernel=_hw(m.kernel_size),
                               stride=_hw(m.stride if m.stride is not None else m.kernel_size),
                               padding=_hw(m.padding), dilation=_hw(m.dilation),
                               ceil_mode=bool(m.ceil_mode))

    def unused(self) -> list[str]:
        return sorted(set(self.state) - set(self.g.tensors))


def _resnet50_graph(ng: _NativeGraph, net: nn.Module) -> str:
    """torchvision's ResNet (Bottleneck blocks, downsample = Sequential(conv, bn)),
    as torchvision.models.resnet50 or ResNet50 above: same names, same forward."""
    g = ng.g
    x = ng.conv("conv1", "input")
    x = g.relu("relu", ng.bn("bn1", x))
    x = ng.max_pool("maxpool", x)
    for layer in ("layer1", "layer2", "layer3", "layer4"):
        for i in range(len(ng._mod(layer, nn.Sequential))):
            p = f"{layer}.{i}"
            blk = ng.mods[p]
            if not all(hasattr(blk, a) for a in ("conv1", "conv2", "conv3", "bn3", "downsample")):
                raise TypeError(f"native route: `{p}` ({type(blk).__name__}) is not a Bottleneck")
            idt = x
            if blk.downsample is not None:
                down = ng._mod(f"{p}.downsample", nn.Sequential)
                if len(down) != 2:
                    raise TypeError(f"native route: `{p}.downsample` is not (conv, bn)")
                idt = ng.bn(f"{p}.downsample.1", ng.conv(f"{p}.downsample.0", x))
            y = g.relu(f"{p}.relu1", ng.bn(f"{p}.bn1", ng.conv(f"{p}.conv1", x)))
            y = g.relu(f"{p}.relu2", ng.bn(f"{p}.bn2", ng.conv(f"{p}.conv2", y)))
            y = ng.bn(f"{p}.bn3", ng.conv(f"{p}.conv3", y))
            x = g.relu(f"{p}.relu", g.add(f"{p}.add", y, idt))
    pool = ng._mod("avgpool", nn.AdaptiveAvgPool2d)
    if _hw(pool.output_size) != 1:
        raise ValueError(f"native route: avgpool output size {pool.output_size} is not 1x1")
    x = g.flatten("flatten", g.global_avg_pool("avgpool", x))
    return ng.linear("fc", x)


def _wrn_graph(ng: _NativeGraph, net: nn.Module) -> str:
    """WideResNet above: pre-activation WideBasic blocks; the BN-ReLU opening
    each block follows an add (or the stem conv), the block's bn2 a conv."""
    g = ng.g
    x = ng.conv("conv1", "input")
    for group in ("block1", "block2", "block3"):
        for i in range(len(ng._mod(group, nn.Sequential))):
            p = f"{group}.{i}"
            blk = ng._mod(p, WideBasic)
            o = g.relu(f"{p}.relu1", ng.bn(f"{p}.bn1", x))
            y = g.relu(f"{p}.relu2", ng.bn(f"{p}.bn2", ng.conv(f"{p}.conv1", o)))
            y = ng.conv(f"{p}.conv2", y)
            x = g.add(f"{p}.add", y, x if blk.equal else ng.conv(f"{p}.shortcut", o))
    x = g.relu("relu", ng.bn("bn1", x))
    x = g.avg_pool("avg_pool", x, kernel=8, stride=8)  # F.avg_pool2d(out, 8)
    x = g.flatten("flatten", x)  # out.view(-1, channels)
    return ng.linear("fc", x)


def native_graph(arch: str, net: nn.Module, name: str, mean, std, description: str
                 ) -> tuple[dict, dict]:
    """(spec, tensors) of NET written straight into advex's format: the spec
    `advex import --mean --std` records (name, input, preprocess mean/std, no
    classes, output) with its own description; tensors keep their state_dict names."""
    graphs = {"resnet50": _resnet50_graph, "wrn28_10": _wrn_graph}
    if arch not in graphs:
        raise ValueError(f"{arch} has no native route (only the ONNX one: install onnx, and "
                         "onnxscript for the dynamo exporter)")
    ng = _NativeGraph(net)
    out = graphs[arch](ng, net)
    unused = ng.unused()
    if unused:
        raise ValueError(f"native route: state_dict tensors the graph does not use: {unused[:5]}")
    af = _advex_format()
    spec = {"format": af.FORMAT_VERSION, "name": name, "description": description,
            "input": [int(v) for v in ARCHS[arch]["input"]],
            "preprocess": {"mean": [float(v) for v in mean], "std": [float(v) for v in std]},
            "nodes": ng.g.nodes, "output": out}
    return spec, ng.g.tensors


@torch.no_grad()
def check_native(path: str, model: nn.Module, shape, device, n: int = 2) -> dict:
    """The written file under TorchExecutor against MODEL (normalisation in
    front) on N random images: max |difference| and that over max |logit|."""
    af = _advex_format()
    spec, tensors = af.load_model(path)
    ex = af.executor_on(spec, tensors, device)
    x = random_pixels(n, shape, 4242, device)
    tf32 = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        ref, got = model.eval()(x).float(), ex(x).float()
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    diff, scale = float((ref - got).abs().max()), float(ref.abs().max())
    return {"images": n, "max_abs_diff": diff, "max_abs_logit": scale,
            "rel": diff / max(scale, 1e-12),
            "same_top1": bool((ref.argmax(1) == got.argmax(1)).all())}


def advex_info(advex: str, path: str) -> str:
    """`advex info --model PATH` (CPU only): the engine loads the file."""
    cmd = [advex, "info", "--model", path]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"`{' '.join(cmd)}` exited {r.returncode}:\n{(r.stderr + r.stdout).strip()}")
    return r.stdout


def write_native(arch: str, net: nn.Module, model: nn.Module, path: str, how: str, seed: int,
                 device, advex: str) -> tuple[str, dict]:
    """The native route: write, check logits, let advex load it. Returns the
    description of how it was made and the logit check."""
    info = ARCHS[arch]
    mean, std = info["norm"]
    desc = (f"Written from the PyTorch module by tools/bench_models.py (native route, no ONNX): "
            f"{how}, seed {seed}.")
    spec, tensors = native_graph(arch, net, os.path.splitext(os.path.basename(path))[0],
                                 mean, std, desc)
    _advex_format().save_model(path, spec, tensors)
    check = check_native(path, model.to(device), info["input"], device)
    if not (check["rel"] <= NATIVE_TOL):
        raise RuntimeError(f"native route: {path} does not reproduce the module: max |logit "
                           f"difference| {check['max_abs_diff']:.3g} against max |logit| "
                           f"{check['max_abs_logit']:.3g} (relative {check['rel']:.3g} > {NATIVE_TOL})")
    if os.path.exists(advex):
        out = advex_info(advex, path).strip().splitlines()
        total = [l for l in out if l.startswith("total:")]
        check["advex_info"] = (total or out or ["loads"])[0]
    else:
        check["advex_info"] = f"not run: {advex} does not exist"
    return (f"native: bench_models.native_graph ({len(spec['nodes'])} nodes, "
            f"{len(tensors)} tensors)"), check


def make(arch: str, out_dir: str, advex: str, seed: int, calibrate: str, device: torch.device,
         keep_onnx: bool, force: bool, prefer_torchvision: bool,
         route: tuple[str, str, bool] = ("onnx", "default", False)) -> str:
    """ROUTE: (``onnx`` or ``native``, why, whether a failed ONNX export may
    fall back to the native route)."""
    info = ARCHS[arch]
    shape, (mean, std) = info["input"], info["norm"]
    st = os.path.join(out_dir, arch + ".safetensors")
    meta_path = os.path.join(out_dir, arch + ".torch.json")
    if not force and os.path.exists(st) and os.path.exists(meta_path):
        with open(meta_path) as f:
            old = json.load(f)
        if old.get("seed") == seed and os.path.exists(os.path.join(out_dir, arch + ".pt")):
            print(f"{arch}: {st} already made (seed {seed}, route {old.get('route', 'onnx')}); "
                  "--force remakes it", flush=True)
            return st
    t0 = time.perf_counter()
    net, how = build_net(arch, seed, prefer_torchvision)
    model = Normalized(net, mean, std).to(device).eval()
    stats = logit_stats(model, shape, device)
    why = degenerate(stats)
    calibrated = None
    if calibrate == "always" or (calibrate == "auto" and why):
        batches, batch = (4, 32) if device.type == "cuda" else (2, 8)
        calibrate_bn(model, shape, device, batches, batch, seed)
        calibrated = {"reason": why or "--calibrate always", "batches": batches, "batch": batch,
                      "before": stats}
        stats = logit_stats(model, shape, device)
        still = degenerate(stats)
        print(f"  {arch}: BN running stats recalibrated ({calibrated['reason']})"
              + (f"; still degenerate: {still}" if still else ""), flush=True)
    t_build = time.perf_counter() - t0
    model = model.cpu().eval()
    net = model.net
    os.makedirs(out_dir, exist_ok=True)
    torch.save(net.state_dict(), os.path.join(out_dir, arch + ".pt"))
    onnx_path = os.path.join(out_dir, arch + ".onnx")
    kind, reason, may_fall_back = route
    native_check = None
    t1 = time.perf_counter()
    if kind == "onnx":
        try:
            call = export_onnx(net, shape, onnx_path)
        except Exception as e:
            if not may_fall_back:
                raise
            kind, reason = "native", (f"the ONNX export failed: {type(e).__name__}: "
                                      f"{str(e).strip()[:300]}")
            print(f"  {arch}: route native ({reason})", flush=True)
    if kind == "onnx":
        t_export = time.perf_counter() - t1
        t2 = time.perf_counter()
        advex_import(advex, onnx_path, st, mean, std)
        t_import = time.perf_counter() - t2
        if not keep_onnx:
            for p in (onnx_path, onnx_path + ".data"):
                if os.path.exists(p):
                    os.remove(p)
        timing = f"export {t_export:.1f} s, import {t_import:.1f} s"
    else:
        for p in (onnx_path, onnx_path + ".data"):  # a stale one would not match
            if os.path.exists(p):
                os.remove(p)
        call, native_check = write_native(arch, net, model, st, how, seed, device, advex)
        model.cpu()
        timing = (f"native write + check {time.perf_counter() - t1:.1f} s (max |dlogit| "
                  f"{native_check['max_abs_diff']:.2e} of max |logit| "
                  f"{native_check['max_abs_logit']:.3g}; advex info: {native_check['advex_info']})")
    meta = {"arch": arch, "built_by": how, "input": shape, "classes": info["classes"],
            "mean": mean, "std": std, "seed": seed, "bench_batch": info["batch"],
            "params": sum(p.numel() for p in net.parameters()), "torch": torch.__version__,
            "route": kind, "route_reason": reason, "export": call, "native_check": native_check,
            "bn_calibrated": calibrated, "logits": stats}
    with open(meta_path, "w") as f:
        json.dump(meta, f, indent=1)
    print(f"{arch}: {meta['params'] / 1e6:.1f} M params, {how}; logits {json.dumps(stats)}; "
          f"route {kind}; build {t_build:.1f} s, {timing} -> {st}", flush=True)
    return st


def load_torch(path: str, device: torch.device) -> tuple[nn.Module, dict] | None:
    """The nn.Module behind a model made here (None when PATH is not one):
    the network with its saved weights, normalisation in front, eval mode."""
    base = os.path.splitext(path)[0]
    if not os.path.exists(base + ".torch.json"):
        return None
    with open(base + ".torch.json") as f:
        meta = json.load(f)
    net, _ = build_net(meta["arch"], meta["seed"])
    model = Normalized(net, meta["mean"], meta["std"])
    pt = base + ".pt"
    if os.path.exists(pt):
        net.load_state_dict(torch.load(pt, map_location="cpu", weights_only=True))
    else:  # same seed; BN stats recalibrated on the same seeded batches
        print(f"{pt} missing: rebuilt from seed {meta['seed']}", file=sys.stderr)
        if meta.get("bn_calibrated"):
            c = meta["bn_calibrated"]
            calibrate_bn(model, meta["input"], "cpu", c["batches"], c["batch"], meta["seed"])
    model = model.to(device).eval()
    spec = {"name": os.path.basename(base), "input": meta["input"], "meta": meta}
    return model, spec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(ARCHS), help="comma list (default: %(default)s)")
    ap.add_argument("--out", default=os.path.join(ROOT, "bench-models"))
    ap.add_argument("--advex", default=os.path.join(ROOT, "target", "release", "advex"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--calibrate", default="auto", choices=["auto", "always", "never"],
                    help="BN running stats from random batches: when the logits are degenerate (auto)")
    ap.add_argument("--device", default=None, help="for the BN check/calibration (default: cuda if available)")
    ap.add_argument("--no-onnx", action="store_true", help="remove NAME.onnx after the import")
    ap.add_argument("--no-torchvision", action="store_true", help="ResNet-50 from the definition here")
    ap.add_argument("--force", action="store_true", help="remake files already there")
    how = ap.add_mutually_exclusive_group()
    how.add_argument("--native", action="store_true",
                     help="write the advex file straight from the module, no ONNX (default: "
                          "only when `import onnx` fails or the ONNX export does)")
    how.add_argument("--onnx", action="store_true",
                     help="the ONNX route only: no native fallback when the export fails")
    args = ap.parse_args()
    if args.native:
        route = ("native", "--native given", False)
    else:
        ok, why = onnx_route()
        if ok:
            route = ("onnx", why + (" (--onnx given)" if args.onnx else ""), not args.onnx)
        elif args.onnx:
            raise SystemExit(f"--onnx: {why}; torch.onnx.export needs the onnx package")
        else:
            route = ("native", f"{why}: torch.onnx.export needs the onnx package", False)
    print(f"route: {route[0]} ({route[1]})", flush=True)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cpu":
        torch.set_num_threads(max(1, os.cpu_count() or 1))
    made, failed = [], []
    for arch in [m.strip() for m in args.models.split(",") if m.strip()]:
        try:
            made.append(make(arch, args.out, args.advex, args.seed, args.calibrate, device,
                             not args.no_onnx, args.force, not args.no_torchvision, route))
        except Exception as e:
            print(f"{arch}: NOT MADE: {type(e).__name__}: {e}", flush=True)
            failed.append(arch)
    print("made:")
    for p in made:
        print(p)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
