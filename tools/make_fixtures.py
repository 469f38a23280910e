#!/usr/bin/env python3
"""Build the PyTorch parity fixtures for advex's ONNX importer.

For each model family listed in FAMILIES this script

1. builds a small model from the real torchvision classes (same blocks, same
   forward code; only widths, depths and the input resolution are reduced so
   that the committed files stay small),
2. gives it deterministic random weights: torchvision's own initialisers under
   a fixed seed, then random biases, random BatchNorm affine parameters and
   non-trivial BatchNorm running statistics (calibrated on random images and
   then perturbed, so that BN folding is exercised and activations stay O(1)),
3. exports it with the plain call a user would write,
       torch.onnx.export(model, (x,), path)
   (in torch >= 2.9 that is the dynamo exporter, which also writes the weights
   to a sidecar `path + ".data"`), and, for the families in LEGACY_DEFAULT
   (files made with older torch releases look like this), a second copy with
   the TorchScript exporter
       torch.onnx.export(model, (x,), path, dynamo=False)
   written as `<family>.legacy.onnx` (weights inline),
4. picks three 8-bit test images, and records in `<family>.json` the float32
   logits, the clean top-1 label, the gradient of the summed cross-entropy
   w.r.t. the [0,1] input (sign string, L1 norm, max |g|) and the FGSM top-1 at
   eps = 1/255, 4/255, 16/255 after rounding the adversarial image to the 8-bit
   grid,
5. checks every ONNX file with onnx.checker and, when onnxruntime is
   installed, compares its logits with PyTorch's.

Usage (from the repository root; needs torch, torchvision, onnx, onnxscript,
and onnxruntime for the cross-checks):

    python tools/make_fixtures.py                   # all families -> tests/fixtures/onnx
    python tools/make_fixtures.py --only squeezenet1_1 --out /tmp/fx
    python tools/make_fixtures.py --verify          # re-check the committed files

Everything is seeded; rerunning with the same torch/torchvision/onnx versions
reproduces every file byte for byte (the dynamo exporter's per-node metadata
holds stack traces, so the script's path and line numbers end up in the .onnx
files; other versions may also export a different graph).

Inputs: every model takes x in [0,1] with shape [1,C,H,W], x = u8 / 255.
None of the models normalises internally except `vgg11_bn`, which carries a
(x - mean) / std front end in the graph (recorded under "preprocess_in_graph"
in its JSON); its reference gradients are still w.r.t. the [0,1] input.
"""

from __future__ import annotations

import argparse
import collections
import json
import platform
import sys
import warnings
from fractions import Fraction
from pathlib import Path

import numpy as np
import onnx
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from onnx import numpy_helper
from torchvision.models.convnext import CNBlockConfig, ConvNeXt
from torchvision.models.efficientnet import EfficientNet, _efficientnet_conf
from torchvision.models.mobilenetv2 import MobileNetV2
from torchvision.models.mobilenetv3 import MobileNetV3, _mobilenet_v3_conf
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet
from torchvision.models.squeezenet import Fire, SqueezeNet
from torchvision.models.vgg import VGG, make_layers
from torchvision.ops.misc import Conv2dNormActivation

NUM_CLASSES = 10
# Families that also get a TorchScript-exporter copy (weights inline, older op
# choices). Not all of them: the committed fixtures must stay under 5 MB.
LEGACY_DEFAULT = ["mobilenet_v2", "squeezenet1_1", "vgg11_bn", "convnext"]
EPSILONS = ["1/255", "4/255", "16/255"]
MASTER_SEED = 20240611
SCHEMA_VERSION = 1


# --------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------


class NarrowResNet(ResNet):
    """torchvision ResNet with a configurable base width.

    torchvision hard-codes the stage widths 64/128/256/512. This subclass sets up
    the same attributes as ResNet.__init__ but with stage widths
    w, 2w, 4w, 8w, then builds the stages with torchvision's own
    `ResNet._make_layer` and runs torchvision's own `forward`.
    """

    def __init__(self, block, layers, width, num_classes, groups=1, width_per_group=64):
        nn.Module.__init__(self)
        self._norm_layer = nn.BatchNorm2d
        self.inplanes = width
        self.dilation = 1
        self.groups = groups
        self.base_width = width_per_group
        self.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, width, layers[0])
        self.layer2 = self._make_layer(block, 2 * width, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 4 * width, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 8 * width, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(8 * width * block.expansion, num_classes)
        for m in self.modules():  # torchvision's initialisation scheme
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")


class Normalize(nn.Module):
    """(x - mean) / std with ImageNet constants, as users often prepend."""

    MEAN = [0.485, 0.456, 0.406]
    STD = [0.229, 0.224, 0.225]

    def __init__(self):
        super().__init__()
        self.register_buffer("mean", torch.tensor(self.MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(self.STD).view(1, 3, 1, 1))

    def forward(self, x):
        return (x - self.mean) / self.std


class WithNormalize(nn.Sequential):
    def __init__(self, model):
        super().__init__()
        self.normalize = Normalize()
        self.model = model


def build_resnet_basic():
    # resnet18's structure with one BasicBlock per stage: stages 2-4 open with a
    # strided block whose shortcut is conv1x1(stride 2) + BN.
    return NarrowResNet(BasicBlock, [1, 1, 1, 1], width=8, num_classes=NUM_CLASSES)


def build_resnet_bottleneck():
    # resnet50/resnext50's Bottleneck (v1.5: stride on the 3x3), one per stage.
    # groups=2, width_per_group=32 makes the 3x3 a grouped (not depthwise)
    # convolution with 2 groups of `planes/2` channels, as in ResNeXt; the 1x1s
    # stay groups=1 as in resnet50.
    # Stage 1 has a stride-1 projection shortcut (channels 6 -> 24),
    # stages 2-4 a stride-2 one.
    return NarrowResNet(Bottleneck, [1, 1, 1, 1], width=6, num_classes=NUM_CLASSES,
                        groups=2, width_per_group=32)


# torchvision's MobileNetV2 setting (t, c, n, s) with the repeats n cut to
# 1-2 per stage; every stage with n = 2 keeps a stride-1 residual block.
MNV2_SETTING = [[1, 16, 1, 1], [6, 24, 2, 2], [6, 32, 2, 2], [6, 64, 2, 2],
                [6, 96, 1, 1], [6, 160, 2, 2], [6, 320, 1, 1]]


def build_mobilenet_v2():
    # torchvision pins the last 1x1 conv at 1280 channels whatever width_mult;
    # it is swapped for a 256-channel one (same Conv-BN-ReLU6 block) and the
    # classifier's Linear resized to match, to keep the file small.
    net = MobileNetV2(num_classes=NUM_CLASSES, width_mult=0.2, inverted_residual_setting=MNV2_SETTING)
    cin = net.features[-1][0].in_channels
    net.features[-1] = Conv2dNormActivation(cin, 256, kernel_size=1, norm_layer=nn.BatchNorm2d,
                                            activation_layer=nn.ReLU6)
    net.last_channel = 256
    net.classifier[1] = nn.Linear(256, NUM_CLASSES)
    nn.init.kaiming_normal_(net.features[-1][0].weight, mode="fan_out")
    return net


def build_mobilenet_v3_small():
    # last_channel (the classifier's hidden width) 64 instead of 256.
    setting, _ = _mobilenet_v3_conf("mobilenet_v3_small", width_mult=0.25)
    return MobileNetV3(setting, 64, num_classes=NUM_CLASSES)


def build_efficientnet_b0():
    # efficientnet_b0's 7 MBConv stages at width 0.15 and depth 0.5 (stage
    # lengths 1,1,1,2,2,2,1: stride-1 repeats keep their residual adds).
    setting, last_channel = _efficientnet_conf("efficientnet_b0", width_mult=0.15, depth_mult=0.5)
    return EfficientNet(setting, dropout=0.2, last_channel=last_channel, num_classes=NUM_CLASSES)


VGG_CFG = [8, "M", 16, "M", 16, 16, "M", 16, 16, "M", 16, 16, "M"]  # vgg11 "A" shape
VGG_HIDDEN = 32


def build_vgg11_bn():
    # torchvision VGG with make_layers(cfg "A", batch_norm=True) at 1/32 width;
    # the classifier keeps its Linear-ReLU-Dropout-Linear-ReLU-Dropout-Linear
    # shape with 32 hidden units instead of 4096 (reassigned after construction).
    vgg = VGG(make_layers(VGG_CFG, batch_norm=True), num_classes=NUM_CLASSES)
    c = VGG_CFG[-2]
    vgg.classifier = nn.Sequential(
        nn.Linear(c * 7 * 7, VGG_HIDDEN), nn.ReLU(True), nn.Dropout(p=0.5),
        nn.Linear(VGG_HIDDEN, VGG_HIDDEN), nn.ReLU(True), nn.Dropout(p=0.5),
        nn.Linear(VGG_HIDDEN, NUM_CLASSES),
    )
    for m in vgg.classifier:
        if isinstance(m, nn.Linear):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    return WithNormalize(vgg)


def build_squeezenet1_1():
    # torchvision SqueezeNet 1.1 with every width divided by 4: features are
    # rebuilt from torchvision's Fire modules in the 1.1 order (three
    # MaxPool2d(3, 2, ceil_mode=True)), the classifier's final conv is replaced
    # by a 128 -> 10 one; SqueezeNet.forward is unchanged.
    net = SqueezeNet("1_1", num_classes=NUM_CLASSES)
    net.features = nn.Sequential(
        nn.Conv2d(3, 16, kernel_size=3, stride=2),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True),
        Fire(16, 4, 16, 16),
        Fire(32, 4, 16, 16),
        nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True),
        Fire(32, 8, 32, 32),
        Fire(64, 8, 32, 32),
        nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True),
        Fire(64, 12, 48, 48),
        Fire(96, 12, 48, 48),
        Fire(96, 16, 64, 64),
        Fire(128, 16, 64, 64),
    )
    net.classifier[1] = nn.Conv2d(128, NUM_CLASSES, kernel_size=1)
    for m in net.features.modules():  # SqueezeNet's own init scheme
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_uniform_(m.weight)
    nn.init.normal_(net.classifier[1].weight, mean=0.0, std=0.01)
    return net


def build_convnext():
    # torchvision ConvNeXt with convnext_tiny's block (7x7 depthwise conv,
    # LayerNorm over channels written as permute / LayerNorm / permute, 4x MLP
    # with GELU, layer scale, residual), its stem (4x4 stride 4 + LayerNorm2d),
    # downsampling (LayerNorm2d + 2x2 stride 2) and head (pool, LayerNorm2d,
    # flatten, linear), at widths 16/32/64/128 and depths 1/1/2/1
    # (convnext_tiny: 96/192/384/768, 3/3/9/3); stochastic depth 0.
    cfg = [CNBlockConfig(16, 32, 1), CNBlockConfig(32, 64, 1), CNBlockConfig(64, 128, 2),
           CNBlockConfig(128, None, 1)]
    return ConvNeXt(cfg, stochastic_depth_prob=0.0, num_classes=NUM_CLASSES)


class WideBasic(nn.Module):
    """The pre-activation block of the WideResNet that CIFAR-10 robustness
    work uses (Zagoruyko & Komodakis; the definition RobustBench's model zoo
    and most adversarial-training code carry): BN-ReLU-conv3x3-BN-ReLU-conv3x3,
    a 1x1 shortcut conv on the activated input where the width or stride
    changes."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.equal = cin == cout and stride == 1
        self.shortcut = None if self.equal else nn.Conv2d(cin, cout, 1, stride, 0, bias=False)

    def forward(self, x):
        a = self.relu1(self.bn1(x))
        out = self.conv2(self.relu2(self.bn2(self.conv1(a))))
        return (x if self.equal else self.shortcut(a)) + out


class WideResNet(nn.Module):
    """WRN-depth-widen for 32x32 inputs: conv3x3 16, three groups of
    (depth - 4) / 6 blocks at 16k, 32k, 64k channels (strides 1, 2, 2), BN-ReLU,
    8x8 average pool, linear."""

    def __init__(self, depth, widen, num_classes):
        super().__init__()
        n = (depth - 4) // 6
        widths = [16, 16 * widen, 32 * widen, 64 * widen]
        self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        blocks, cin = [], widths[0]
        for g, stride in zip(range(3), (1, 2, 2)):
            for i in range(n):
                blocks.append(WideBasic(cin, widths[g + 1], stride if i == 0 else 1))
                cin = widths[g + 1]
        self.blocks = nn.Sequential(*blocks)
        self.bn = nn.BatchNorm2d(cin)
        self.relu = nn.ReLU(inplace=True)
        self.fc = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        out = self.relu(self.bn(self.blocks(self.conv1(x))))
        return self.fc(F.avg_pool2d(out, 8).flatten(1))


def build_wide_resnet():
    # WRN-10-1 (one block per group; WRN-28-10 has 4 at 10x the width) at
    # CIFAR-10's 32x32.
    return WideResNet(10, 1, NUM_CLASSES)


# name -> (builder, input [C,H,W], description of the structure)
# Input sizes: every stride-2 stage keeps >= 2 pixels, odd sizes occur, and
# some inputs are not square (catches H/W mix-ups).
FAMILIES = {
    "resnet_basic": (build_resnet_basic, [3, 36, 52],
                     "torchvision ResNet(BasicBlock, [1,1,1,1]) with stage widths 8/16/32/64 "
                     "(resnet18 structure, 1 block per stage); spatial 36x52 -> 18x26 -> 9x13 -> 9x13 "
                     "-> 5x7 -> 3x4 -> 2x2"),
    "resnet_bottleneck": (build_resnet_bottleneck, [3, 40, 40],
                          "torchvision ResNet(Bottleneck, [1,1,1,1], groups=2, width_per_group=32) "
                          "with stage widths 6/12/24/48 (expansion 4; 3x3 convs grouped, ResNeXt "
                          "style); spatial 40 -> 20 -> 10 -> 10 -> 5 -> 3 -> 2"),
    "mobilenet_v2": (build_mobilenet_v2, [3, 40, 56],
                     "torchvision MobileNetV2(width_mult=0.2, inverted_residual_setting with repeats "
                     "1,2,2,2,1,2,1), last 1x1 conv 256 channels (torchvision: 1280); "
                     "spatial 40x56 -> 20x28 -> 10x14 -> 5x7 -> 3x4 -> 2x2"),
    "mobilenet_v3_small": (build_mobilenet_v3_small, [3, 48, 48],
                           "torchvision MobileNetV3 with _mobilenet_v3_conf('mobilenet_v3_small', "
                           "width_mult=0.25), full depth, last_channel 64; BN eps 1e-3; spatial 48 -> 24 -> 12 -> 6 "
                           "-> 3 -> 2"),
    "efficientnet_b0": (build_efficientnet_b0, [3, 44, 44],
                        "torchvision EfficientNet with _efficientnet_conf('efficientnet_b0', "
                        "width_mult=0.15, depth_mult=0.5); spatial 44 -> 22 -> 11 -> 6 -> 3 -> 2"),
    "vgg11_bn": (build_vgg11_bn, [3, 56, 56],
                 "Normalize(ImageNet mean/std) followed by torchvision VGG(make_layers(cfg A at "
                 "1/32 width, batch_norm=True)) with a 784-32-32-10 classifier; spatial 56 -> 28 "
                 "-> 14 -> 7 -> 3 -> 1, then AdaptiveAvgPool2d((7,7)) upsamples 1x1 -> 7x7"),
    "squeezenet1_1": (build_squeezenet1_1, [3, 50, 66],
                      "torchvision SqueezeNet('1_1') with all widths / 4 (Fire modules, "
                      "MaxPool2d(3, 2, ceil_mode=True) x3); spatial 50x66 -> 24x32 -> 12x16 -> "
                      "6x8 -> 3x4 (every pool rounds up)"),
    "wide_resnet": (build_wide_resnet, [3, 32, 32],
                    "WideResNet-10-1 in the CIFAR-10 robustness definition (pre-activation "
                    "BN-ReLU-conv blocks, 1x1 shortcut convs on the activated input, final BN-ReLU, "
                    "8x8 average pool, linear): WRN-28-10's structure with 1 block per group at "
                    "widths 16/32/64; spatial 32 -> 32 -> 16 -> 8 -> 1"),
    "convnext": (build_convnext, [3, 64, 72],
                 "torchvision ConvNeXt(CNBlockConfig 16->32 x1, 32->64 x1, 64->128 x2, 128 x1), "
                 "convnext_tiny's blocks at 1/6 width and reduced depth; layer norm eps 1e-6; "
                 "random LayerNorm weights and layer scales; spatial 64x72 -> 16x18 -> 8x9 -> 4x4 -> 2x2"),
}


# --------------------------------------------------------------------------
# Weights
# --------------------------------------------------------------------------


def final_layer(model):
    """The module that produces the logits (last Linear or SqueezeNet's conv)."""
    if isinstance(model, SqueezeNet):
        return model.classifier[1]
    last = None
    for m in model.modules():
        if isinstance(m, nn.Linear):
            last = m
    return last


@torch.no_grad()
def randomise(model, calib, gen):
    """Random biases, BN affine params and non-trivial BN running statistics,
    then rescale/centre the logit layer. All draws come from `gen`."""
    head = final_layer(model)
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)) and m.bias is not None and m is not head:
            m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.05)
    for m in model.modules():
        # LayerNorm (ConvNeXt's LayerNorm2d is one) and layer scale: not the
        # identity (torchvision's layer scale starts at 1e-6, which would hide
        # every block)
        if isinstance(m, nn.LayerNorm):
            m.weight.copy_(torch.rand(m.weight.shape, generator=gen) * 0.8 + 0.6)
            m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.2)
        if isinstance(getattr(m, "layer_scale", None), nn.Parameter):
            m.layer_scale.copy_(torch.rand(m.layer_scale.shape, generator=gen) * 0.5 + 0.25)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for bn in bns:
        bn.weight.copy_(torch.rand(bn.weight.shape, generator=gen) * 0.8 + 0.6)
        bn.bias.copy_(torch.randn(bn.bias.shape, generator=gen) * 0.2)
    # Calibrate the running statistics on random images (BN layers in training
    # mode only: dropout and stochastic depth stay off), so that activations are
    # of unit scale throughout, then perturb them so they are not exact.
    if bns:
        model.eval()
        for bn in bns:
            bn.reset_running_stats()
            bn.momentum = None  # cumulative average
            bn.train()
        model(calib)
        model.eval()
        for bn in bns:
            sd = bn.running_var.sqrt()
            bn.running_mean.add_(torch.randn(sd.shape, generator=gen) * 0.2 * sd)
            bn.running_var.mul_(torch.rand(sd.shape, generator=gen) * 0.8 + 0.7)
            bn.momentum = 0.1
    model.eval()
    # Logit layer: centre the logits over the calibration images (so the
    # prediction depends on the input, not on a constant bias) and scale them
    # to a standard deviation of about 2.
    if isinstance(model, SqueezeNet):
        # final conv -> ReLU -> global average: make most pre-ReLU values
        # positive (otherwise many logits are exactly 0 and tie).
        pre = {}
        h = head.register_forward_hook(lambda mod, i, o: pre.__setitem__("o", o.clone()))  # ReLU after it is in-place
        model(calib)
        h.remove()
        o = pre["o"]
        mean = o.mean(dim=(0, 2, 3))
        std = o.std(dim=(0, 2, 3))
        head.weight.div_(std.view(-1, 1, 1, 1))
        head.bias.copy_((head.bias - mean) / std + 0.8 + 0.4 * torch.rand(mean.shape, generator=gen))
        out = model(calib)
        s = 2.0 / out.std(dim=0).mean()
        head.weight.mul_(s)
        head.bias.mul_(s)
    else:
        head.bias.zero_()
        out = model(calib)
        s = 2.0 / out.std(dim=0).mean()
        head.weight.mul_(s)
        head.bias.copy_(-s * out.mean(dim=0) + 0.3 * torch.randn(out.shape[1], generator=gen))


# --------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------


def smooth_image(shape, gen):
    """Low-frequency colour blobs plus a little noise."""
    c, h, w = shape
    lo = torch.rand((1, c, 4, 5), generator=gen)
    img = F.interpolate(lo, size=(h, w), mode="bicubic", align_corners=False)[0]
    img = img + 0.03 * torch.randn((c, h, w), generator=gen)
    return (img.clamp(0, 1) * 255).round().to(torch.uint8)


def noise_image(shape, gen):
    """Uniform 8-bit noise."""
    return torch.randint(0, 256, shape, generator=gen, dtype=torch.uint8)


def saturated_image(shape, gen):
    """Random stripes and blocks with many pixels at exactly 0 and 255 (so the
    clamp in FGSM matters), over a diagonal ramp."""
    c, h, w = shape
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    img = torch.empty((c, h, w))
    for ch in range(c):
        period = int(torch.randint(3, 9, (1,), generator=gen))
        phase = float(torch.rand(1, generator=gen)) * period
        ramp = (xx + yy).float() / float(h + w)
        stripes = (((xx + 2 * yy * (ch + 1)).float() + phase) % period) < period / 2
        img[ch] = torch.where(stripes, torch.ones(()), ramp)
        y0 = int(torch.randint(0, h // 2, (1,), generator=gen))
        x0 = int(torch.randint(0, w // 2, (1,), generator=gen))
        img[ch, y0:y0 + h // 3, x0:x0 + w // 3] = 0.0
    return (img * 255).round().to(torch.uint8)


IMAGE_KINDS = [("smooth", smooth_image), ("noise", noise_image), ("saturated", saturated_image)]


# --------------------------------------------------------------------------
# Reference computations
# --------------------------------------------------------------------------


def eps_value(s):
    return float(Fraction(s))


def margin(logits_row):
    top2 = torch.topk(logits_row, 2).values
    return float(top2[0] - top2[1])


def reference(model, u8, dtype=torch.float32):
    """Logits, labels, input gradient and FGSM results for a batch of u8 images."""
    m = model.to(dtype)
    x = (u8.to(dtype) / 255.0).requires_grad_(True)
    logits = m(x)
    labels = logits.argmax(dim=1)
    loss = F.cross_entropy(logits, labels, reduction="sum")
    (g,) = torch.autograd.grad(loss, x)
    out = {"x": x.detach(), "logits": logits.detach(), "labels": labels, "grad": g, "fgsm": []}
    with torch.no_grad():
        for e in EPSILONS:
            xa = torch.clamp(x + eps_value(e) * torch.sign(g), 0.0, 1.0)
            xa = torch.round(xa * 255.0) / 255.0
            la = m(xa)
            out["fgsm"].append({"eps": e, "x": xa, "logits": la})
    model.to(torch.float32)
    return out


def sign_string(g):
    s = torch.sign(g).flatten().to(torch.int8).tolist()
    return "".join("+" if v > 0 else "-" if v < 0 else "0" for v in s)


def f32list(t):
    # float(np.float32) -> the double equal to the f32 value; repr round-trips
    return [float(v) for v in t.detach().to(torch.float32).flatten().numpy()]


MIN_MARGIN = 0.05  # logits have a spread of about 2
MAX_CLEAN_MARGIN = 6.0


def choose_images(model, shape, gen, candidates=12):
    """For each image kind take the first candidate whose clean and adversarial
    top-1 are clear (top-2 logit margin >= MIN_MARGIN), so that small numerical
    differences cannot flip a reference label, and whose clean margin is at
    most MAX_CLEAN_MARGIN, so the softmax is not saturated and the gradient is
    well above f32 rounding noise."""
    chosen = []
    for kind, make in IMAGE_KINDS:
        best = None
        for i in range(candidates):
            u8 = make(tuple(shape), gen)
            r = reference(model, u8.unsqueeze(0))
            clean = margin(r["logits"][0])
            score = min([clean] + [margin(f["logits"][0]) for f in r["fgsm"]])
            key = (clean <= MAX_CLEAN_MARGIN, score)
            if best is None or key > best[0]:
                best = (key, i, u8)
            if key[0] and score >= MIN_MARGIN:
                break
        chosen.append((kind, best[1], best[2]))
    return chosen


# --------------------------------------------------------------------------
# ONNX export and description
# --------------------------------------------------------------------------


def export_default(model, x, path):
    """The call a user makes. Returns a note on what it did."""
    for p in (path, Path(str(path) + ".data")):
        if p.exists():
            p.unlink()
    torch.onnx.export(model, (x,), str(path))
    return "torch.onnx.export(model, (x,), path)  [dynamo=True is the default since torch 2.9]"


# Families whose legacy copy is written at an older opset, as files from older
# torch releases are: convnext at 17 (the first with LayerNormalization), where
# GELU is the Div / Erf / Add / Mul / Mul chain, not the Gelu op of opset 20.
LEGACY_OPSET = {"convnext": 17}


def export_legacy(model, x, path, opset=None):
    if path.exists():
        path.unlink()
    kw = {} if opset is None else {"opset_version": opset}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), str(path), dynamo=False, **kw)
    extra = "" if opset is None else f", opset_version={opset}"
    return f"torch.onnx.export(model, (x,), path, dynamo=False{extra})  [TorchScript exporter]"


def _attr_value(a):
    v = onnx.helper.get_attribute_value(a)
    if isinstance(v, bytes):
        return v.decode()
    if isinstance(v, onnx.TensorProto):
        arr = numpy_helper.to_array(v)
        return {"tensor": arr.tolist() if arr.size <= 16 else f"{arr.dtype}{list(arr.shape)}"}
    if isinstance(v, (list, tuple)):
        return [x.decode() if isinstance(x, bytes) else x for x in v]
    return v


def describe_onnx(path):
    """Op types, opset, I/O, and per op type the distinct attribute sets and
    kinds of non-activation inputs, so the importer author sees what to
    support."""
    m = onnx.load(str(path), load_external_data=False)
    g = m.graph
    inits = {t.name: t for t in g.initializer}
    external = [t.name for t in g.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    consts = {}
    for n in g.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    consts[n.output[0]] = numpy_helper.to_array(a.t)
                elif a.name in ("value_ints", "value_floats", "value_int", "value_float"):
                    consts[n.output[0]] = np.array(onnx.helper.get_attribute_value(a))

    def input_kind(name):
        if name == "":
            return "absent"
        if name in inits:
            t = inits[name]
            dims = list(t.dims)
            kind = "initializer" + ("(external)" if t.data_location == onnx.TensorProto.EXTERNAL else "")
            if int(np.prod(dims)) <= 8 and t.data_location != onnx.TensorProto.EXTERNAL:
                return f"{kind}={numpy_helper.to_array(t).tolist()}"
            return f"{kind}{dims}:{onnx.helper.tensor_dtype_to_np_dtype(t.data_type)}"
        if name in consts:
            arr = consts[name]
            if arr.size <= 8:
                return f"Constant={arr.tolist()}"
            return f"Constant{list(arr.shape)}"
        return "tensor"

    # Static shapes of every value (for the broadcast patterns below).
    inferred = onnx.shape_inference.infer_shapes(m)
    shapes = {t.name: list(t.dims) for t in g.initializer}
    for vi in list(inferred.graph.input) + list(inferred.graph.value_info) + list(inferred.graph.output):
        if vi.type.tensor_type.HasField("shape"):
            shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else d.dim_param
                               for d in vi.type.tensor_type.shape.dim]
    for name, arr in consts.items():
        shapes[name] = list(arr.shape)

    def broadcast_pattern(node):
        # each input's shape relative to the output: "=" where the dim equals
        # the output's, the number where it differs (e.g. ["=","=",1,1] is a
        # per-channel [1,C,1,1] operand)
        out = shapes.get(node.output[0])
        pats = []
        for i in node.input:
            sh = shapes.get(i)
            if sh is None or out is None:
                pats.append("?")
                continue
            pad = [None] * (len(out) - len(sh)) + sh
            pats.append(["-" if d is None else "=" if d == o else d for d, o in zip(pad, out)])
        return pats

    details = collections.defaultdict(set)
    counts = collections.Counter()
    for n in g.node:
        counts[n.op_type] += 1
        attrs = {a.name: _attr_value(a) for a in n.attribute}
        ins = [input_kind(i) for i in n.input]
        if n.op_type in ("Conv", "Gemm", "MatMul"):
            ins = [i.split("[")[0] if i.startswith("initializer") else i for i in ins]
        entry = {"attrs": attrs, "inputs": ins}
        if n.op_type in ("Add", "Sub", "Mul", "Div", "Concat", "Where"):
            entry["broadcast"] = broadcast_pattern(n)
        details[n.op_type].add(json.dumps(entry, sort_keys=True))

    def shape_of(vi):
        dims = []
        for d in vi.type.tensor_type.shape.dim:
            dims.append(d.dim_value if d.HasField("dim_value") else d.dim_param)
        return dims

    opsets = {(o.domain or "ai.onnx"): o.version for o in m.opset_import}
    return {
        "opset": opsets.get("ai.onnx"),
        "opset_imports": opsets,
        "ir_version": m.ir_version,
        "producer": f"{m.producer_name} {m.producer_version}".strip(),
        "inputs": [{"name": i.name, "shape": shape_of(i)} for i in g.input],
        "outputs": [{"name": o.name, "shape": shape_of(o)} for o in g.output],
        "op_types": sorted(counts),
        "op_counts": dict(sorted(counts.items())),
        "n_initializers": len(g.initializer),
        "n_external_initializers": len(external),
        "op_variants": {k: [json.loads(s) for s in sorted(v)] for k, v in sorted(details.items())},
    }


def check_onnx(path):
    onnx.checker.check_model(str(path), full_check=True)


def ort_logits(path, x):
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    # Keep the graph as exported (no ORT fusions) so we test what is in the file.
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    rows = [sess.run(None, {name: x[i:i + 1].numpy()})[0] for i in range(x.shape[0])]
    return torch.from_numpy(np.concatenate(rows, axis=0))


# --------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------


def make_family(name, out_dir, legacy):
    builder, shape, desc = FAMILIES[name]
    seed = MASTER_SEED + sum(ord(c) * (i + 1) for i, c in enumerate(name))
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = builder()
    calib = torch.stack([k(tuple(shape), gen) for _ in range(6) for _, k in IMAGE_KINDS]).float() / 255.0
    randomise(model, calib, gen)
    model.eval()
    n_params = sum(p.numel() for p in model.parameters())

    chosen = choose_images(model, shape, gen)
    u8 = torch.stack([c[2] for c in chosen])
    r32 = reference(model, u8, torch.float32)
    r64 = reference(model, u8, torch.float64)

    onnx_path = out_dir / f"{name}.onnx"
    x1 = (u8[:1].float() / 255.0)
    how = export_default(model, x1, onnx_path)
    check_onnx(onnx_path)
    files = [onnx_path] + ([Path(str(onnx_path) + ".data")] if Path(str(onnx_path) + ".data").exists() else [])
    onnx_info = {"file": onnx_path.name,
                 "external_data_file": files[1].name if len(files) > 1 else None,
                 "export_call": how}
    onnx_info.update(describe_onnx(onnx_path))

    legacy_info = None
    lpath = out_dir / f"{name}.legacy.onnx"
    if lpath.exists():
        lpath.unlink()
    if legacy:
        try:
            lhow = export_legacy(model, x1, lpath, LEGACY_OPSET.get(name))
        except Exception as e:  # e.g. vgg's adaptive pool 1x1 -> 7x7
            msg = str(e).strip().splitlines()[0][:300]
            legacy_info = {"file": None, "export_call": "torch.onnx.export(model, (x,), path, dynamo=False)",
                           "error": f"{type(e).__name__}: {msg}"}
            if lpath.exists():
                lpath.unlink()
        else:
            check_onnx(lpath)
            files.append(lpath)
            legacy_info = {"file": lpath.name, "external_data_file": None, "export_call": lhow}
            legacy_info.update(describe_onnx(lpath))

    checks = {
        "max_abs_logit_diff_f32_vs_f64": float((r32["logits"].double() - r64["logits"]).abs().max()),
        "labels_equal_f32_f64": bool((r32["labels"] == r64["labels"]).all()),
    }
    for key, path in (("onnxruntime_default", onnx_path),
                      ("onnxruntime_legacy", lpath if lpath.exists() else None)):
        if path is None:
            continue
        lo = ort_logits(path, r32["x"])
        if lo is None:
            checks[key] = "skipped (onnxruntime not installed)"
            continue
        adv = [ort_logits(path, f["x"].float()) for f in r32["fgsm"]]
        checks[key] = {
            "max_abs_logit_diff_clean": float((lo - r32["logits"]).abs().max()),
            "max_abs_logit_diff_fgsm": max(float((a - f["logits"]).abs().max()) for a, f in zip(adv, r32["fgsm"])),
            "top1_agree": bool((lo.argmax(1) == r32["labels"]).all())
            and all(bool((a.argmax(1) == f["logits"].argmax(1)).all()) for a, f in zip(adv, r32["fgsm"])),
        }

    images = []
    for i, (kind, cand, img) in enumerate(chosen):
        g32 = r32["grad"][i]
        g64 = r64["grad"][i]
        s32 = torch.sign(g32)
        s64 = torch.sign(g64)
        mismatch = torch.nonzero((s32.double() != s64).flatten()).flatten().tolist()
        fg = []
        for f in r32["fgsm"]:
            la = f["logits"][i]
            delta = (f["x"][i] * 255).round() - img.float()
            fg.append({
                "eps": f["eps"],
                "eps_value": eps_value(f["eps"]),
                "top1": int(la.argmax()),
                "top2_margin": margin(la),
                "logits": f32list(la),
                "changed_pixels": int((delta != 0).sum()),
            })
        images.append({
            "kind": kind,
            "candidate_index": cand,
            "u8": img.flatten().tolist(),
            "logits": f32list(r32["logits"][i]),
            "label": int(r32["labels"][i]),
            "top2_margin": margin(r32["logits"][i]),
            "grad": {
                "sign": sign_string(g32),
                "l1": float(g32.abs().sum()),
                "max_abs": float(g32.abs().max()),
                "n_zero": int((g32 == 0).sum()),
                "n_positive": int((g32 > 0).sum()),
                "n_negative": int((g32 < 0).sum()),
                "l1_f64": float(g64.abs().sum()),
                "sign_mismatch_vs_f64": mismatch,
                "abs_quantiles": {q: float(torch.quantile(g32.abs().flatten(), float(q)))
                                  for q in ("0.001", "0.01", "0.5")},
            },
            "fgsm": fg,
        })

    doc = {
        "schema_version": SCHEMA_VERSION,
        "family": name,
        "structure": desc,
        "seed": seed,
        "num_params": n_params,
        "input_shape": shape,
        "num_classes": NUM_CLASSES,
        "input": "x = u8 / 255 (float32, [0,1]) with shape [1,C,H,W]; pixels CHW row-major",
        "preprocess_in_graph": ({"mean": Normalize.MEAN, "std": Normalize.STD,
                                 "note": "graph computes (x - mean) / std itself"}
                                if isinstance(model, WithNormalize) else None),
        "loss": "sum over images of cross_entropy(logits, label), label = clean argmax",
        "fgsm_rule": "x_adv = round(clamp(x + eps*sign(g), 0, 1) * 255) / 255 (torch.round, half to even)",
        "onnx": onnx_info,
        "onnx_legacy": legacy_info,
        "checks": checks,
        "images": images,
    }
    jpath = out_dir / f"{name}.json"
    with open(jpath, "w") as fh:
        json.dump(doc, fh, separators=(",", ":"))
        fh.write("\n")
    files.append(jpath)
    return doc, files


def verify_dir(out_dir):
    """Re-check committed fixtures from the files alone: onnx.checker, and with
    onnxruntime the stored logits, labels and FGSM top-1, rebuilding every
    adversarial image in integer arithmetic as clamp(u8 + k*sign, 0, 255) with
    k = eps*255. Returns False on any mismatch."""
    ok = True
    for jpath in sorted(out_dir.glob("*.json")):
        if jpath.name == "versions.json":
            continue
        doc = json.loads(jpath.read_text())
        shape = doc["input_shape"]
        n = int(np.prod(shape))
        paths = [out_dir / doc["onnx"]["file"]]
        if doc.get("onnx_legacy") and doc["onnx_legacy"].get("file"):
            paths.append(out_dir / doc["onnx_legacy"]["file"])
        for path in paths:
            check_onnx(path)
            worst_clean = worst_adv = 0.0
            bad = []
            for i, im in enumerate(doc["images"]):
                u8 = np.array(im["u8"], dtype=np.int64)
                sign = np.array([{"+": 1, "-": -1, "0": 0}[c] for c in im["grad"]["sign"]], dtype=np.int64)
                assert u8.size == n and sign.size == n, f"{jpath.name}: wrong lengths"
                xs = [u8] + [np.clip(u8 + round(f["eps_value"] * 255) * sign, 0, 255) for f in im["fgsm"]]
                xs = torch.from_numpy(np.stack(xs).astype(np.float32) / np.float32(255.0)).view(-1, *shape)
                lo = ort_logits(path, xs)
                if lo is None:
                    print("verify: onnxruntime not installed, logits not checked", file=sys.stderr)
                    return ok
                ref = [im["logits"]] + [f["logits"] for f in im["fgsm"]]
                tops = [im["label"]] + [f["top1"] for f in im["fgsm"]]
                d = (lo - torch.tensor(ref)).abs().max(dim=1).values
                worst_clean = max(worst_clean, float(d[0]))
                worst_adv = max(worst_adv, float(d[1:].max()))
                if lo.argmax(1).tolist() != tops:
                    bad.append((i, lo.argmax(1).tolist(), tops))
            status = "ok" if not bad and worst_clean < 1e-3 and worst_adv < 1e-3 else "MISMATCH"
            ok &= status == "ok"
            print(f"verify {path.name}: {status}; max |logit diff| clean {worst_clean:.2e}, "
                  f"fgsm {worst_adv:.2e}{'; top-1 ' + str(bad) if bad else ''}", file=sys.stderr)
    return ok


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent.parent / "tests/fixtures/onnx"))
    ap.add_argument("--only", nargs="*", choices=sorted(FAMILIES), help="families to build (default all)")
    ap.add_argument("--legacy", nargs="*", default=LEGACY_DEFAULT, metavar="FAMILY",
                    help="families that also get a dynamo=False copy (default: %(default)s; "
                         "'all' for every family; none given: no copies)")
    ap.add_argument("--verify", action="store_true",
                    help="only re-check the fixtures already in --out (checker + onnxruntime)")
    args = ap.parse_args()
    if args.verify:
        sys.exit(0 if verify_dir(Path(args.out)) else 1)

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)

    versions = {"python": platform.python_version(), "torch": torch.__version__,
                "torchvision": torchvision.__version__, "onnx": onnx.__version__,
                "numpy": np.__version__}
    try:
        import onnxscript
        versions["onnxscript"] = onnxscript.__version__
    except ImportError:
        pass
    try:
        import onnxruntime
        versions["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    print("versions:", json.dumps(versions), file=sys.stderr)

    summary = {}
    for name in args.only or FAMILIES:
        print(f"== {name}", file=sys.stderr)
        doc, files = make_family(name, out_dir, legacy=("all" in args.legacy or name in args.legacy))
        summary[name] = {
            "files": {f.name: f.stat().st_size for f in files},
            "opset": doc["onnx"]["opset"],
            "op_types": doc["onnx"]["op_types"],
            "legacy": ({k: doc["onnx_legacy"].get(k) for k in ("opset", "op_types", "error")}
                       if doc["onnx_legacy"] else None),
            "labels": [im["label"] for im in doc["images"]],
            "fgsm_top1": [[f["top1"] for f in im["fgsm"]] for im in doc["images"]],
            "checks": doc["checks"],
            "sign_mismatch_vs_f64": [len(im["grad"]["sign_mismatch_vs_f64"]) for im in doc["images"]],
            "n_zero_grad": [im["grad"]["n_zero"] for im in doc["images"]],
        }
        print(json.dumps(summary[name], indent=1), file=sys.stderr)
    with open(out_dir / "versions.json", "w") as fh:
        json.dump(versions, fh, indent=1)
        fh.write("\n")
    total = sum(p.stat().st_size for p in out_dir.iterdir() if p.is_file())
    print(f"total size of {out_dir}: {total} bytes", file=sys.stderr)


if __name__ == "__main__":
    main()
