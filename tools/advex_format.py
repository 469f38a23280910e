"""Shared helpers for advex model files (dev tools only).

An advex model file is a ``.safetensors`` file whose header ``__metadata__``
holds the key ``"advex"`` with a JSON *spec* as a string. Tensors keep their
PyTorch state_dict names; graph nodes refer to them by name. The spec::

    {
      "format": 1,
      "name": "efficientnet_lite0",
      "input": [C, H, W],
      "preprocess": {"resize": 256, "crop": 224, "interpolation": "bilinear",
                     "mean": [...], "std": [...]},          # all keys optional
      "classes": ["tench", ...],                            # optional
      "nodes": [{"name": ..., "op": ..., "inputs": [...], <attributes>}, ...],
      "output": "fc"
    }

The graph input value is called ``"input"``. It holds pixels in [0, 1]
(NCHW); the preprocess mean/std (when present) is applied by the engine as its
very first step, before the first node.

This module offers:

* :class:`GraphBuilder` -- build a spec node by node and collect the tensors.
* :func:`tf_same_padding` -- TensorFlow "SAME" padding for a static size.
* :func:`save_model` / :func:`load_model` -- write / read a model file
  (``load_model`` also accepts a plain safetensors file with a sidecar
  ``NAME.json`` holding the spec).
* :func:`validate_spec` -- structural checks shared by save and load.
* :class:`TorchExecutor` -- a PyTorch reference executor for any spec: eval
  semantics, differentiable w.r.t. the [0, 1] input, so tools can compute
  reference logits and input gradients for any advex model file.
* :func:`executor_on` -- a TorchExecutor with its tensors on a device.
* :func:`load_image` -- decode an image file into the model's input tensor the
  way the contract says (pixel-exact when already at the input size).
"""

from __future__ import annotations

import json
import math
import os
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file

FORMAT_VERSION = 1
METADATA_KEY = "advex"
INPUT_NAME = "input"

# Attribute names that hold tensor names, per op.
TENSOR_ATTRS = {
    "conv2d": ("weight", "bias"),
    "batch_norm": ("weight", "bias", "running_mean", "running_var"),
    "layer_norm": ("weight", "bias"),
    "linear": ("weight", "bias"),
}
# Number of graph inputs per op (None = any number >= 1).
ARITY = {
    "conv2d": 1, "batch_norm": 1, "linear": 1, "layer_norm": 1,
    "relu": 1, "relu6": 1, "leaky_relu": 1, "sigmoid": 1, "silu": 1,
    "hardswish": 1, "hardsigmoid": 1, "gelu": 1,
    "max_pool": 1, "avg_pool": 1, "global_avg_pool": 1,
    "add": 2, "mul": 2, "concat": None,
    "flatten": 1, "dropout": 1, "normalize": 1, "softmax": 1,
}
OPS = frozenset(ARITY)

Pair = Tuple[int, int]
IntOrPair = Union[int, Sequence[int]]


# ---------------------------------------------------------------------------
# Attribute helpers
# ---------------------------------------------------------------------------

def pair(v: IntOrPair) -> Pair:
    """A number or ``[h, w]`` -> ``(h, w)``."""
    if isinstance(v, (int, np.integer)):
        return int(v), int(v)
    v = list(v)
    if len(v) != 2:
        raise ValueError(f"expected a number or [h, w], got {v!r}")
    return int(v[0]), int(v[1])


def padding4(v: Union[int, Sequence[int]]) -> Tuple[int, int, int, int]:
    """A padding attribute -> ``(top, left, bottom, right)``.

    Accepts a number (all sides), ``[ph, pw]`` (symmetric) or
    ``[top, left, bottom, right]``.
    """
    if isinstance(v, (int, np.integer)):
        return (int(v),) * 4
    v = [int(x) for x in v]
    if len(v) == 2:
        return v[0], v[1], v[0], v[1]
    if len(v) == 4:
        return v[0], v[1], v[2], v[3]
    raise ValueError(f"padding must be a number, [ph, pw] or [t, l, b, r], got {v!r}")


def tf_same_padding(in_size: int, kernel: int, stride: int, dilation: int = 1) -> Tuple[int, int]:
    """TensorFlow "SAME" padding for one spatial axis of a static size.

    Returns ``(before, after)``; when the total is odd the extra row/column
    goes after (bottom/right), as TensorFlow does.
    """
    out = math.ceil(in_size / stride)
    total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - in_size, 0)
    return total // 2, total - total // 2


def conv_out_size(in_size: int, kernel: int, stride: int, pad_before: int, pad_after: int,
                  dilation: int = 1, ceil_mode: bool = False) -> int:
    """Output size of a convolution / pooling window along one axis."""
    span = in_size + pad_before + pad_after - dilation * (kernel - 1) - 1
    if ceil_mode:
        out = -(-span // stride) + 1
        # PyTorch rule: the last window must start inside the input or left padding.
        if (out - 1) * stride >= in_size + pad_before:
            out -= 1
        return out
    return span // stride + 1


# ---------------------------------------------------------------------------
# Building a spec
# ---------------------------------------------------------------------------

class GraphBuilder:
    """Collects nodes and tensors for an advex model.

    Each op method appends a node and returns its name, so graphs read like
    code::

        g = GraphBuilder()
        x = g.conv2d("stem", "input", weight="conv.weight", stride=2, padding=[0, 0, 1, 1])
        x = g.relu6("stem_act", x)

    Tensors referenced by name must be added with :meth:`add_tensor` (or
    passed to :func:`save_model`) before saving.
    """

    def __init__(self) -> None:
        self.nodes: List[dict] = []
        self.tensors: Dict[str, torch.Tensor] = {}
        self._names = {INPUT_NAME}

    def add_tensor(self, name: str, value: torch.Tensor) -> str:
        self.tensors[name] = value.detach().to(torch.float32).contiguous().clone()
        return name

    def node(self, name: str, op: str, inputs: Sequence[str], **attrs) -> str:
        if op not in OPS:
            raise ValueError(f"unknown op {op!r}")
        if name in self._names:
            raise ValueError(f"duplicate value name {name!r}")
        for i in inputs:
            if i not in self._names:
                raise ValueError(f"node {name!r}: input {i!r} is not defined yet")
        node = {"name": name, "op": op, "inputs": list(inputs)}
        node.update({k: v for k, v in attrs.items() if v is not None})
        self.nodes.append(node)
        self._names.add(name)
        return name

    # Ops with tensors -------------------------------------------------------
    def conv2d(self, name, x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
        return self.node(name, "conv2d", [x], weight=weight, bias=bias, stride=stride,
                         padding=padding, dilation=dilation, groups=groups)

    def batch_norm(self, name, x, prefix=None, weight=None, bias=None, running_mean=None,
                   running_var=None, eps=1e-5):
        """``prefix="_bn0"`` is shorthand for the four ``_bn0.*`` tensor names."""
        if prefix is not None:
            weight, bias = f"{prefix}.weight", f"{prefix}.bias"
            running_mean, running_var = f"{prefix}.running_mean", f"{prefix}.running_var"
        return self.node(name, "batch_norm", [x], weight=weight, bias=bias,
                         running_mean=running_mean, running_var=running_var, eps=eps)

    def linear(self, name, x, weight, bias=None):
        return self.node(name, "linear", [x], weight=weight, bias=bias)

    # Elementwise ------------------------------------------------------------
    def relu(self, name, x): return self.node(name, "relu", [x])
    def relu6(self, name, x): return self.node(name, "relu6", [x])
    def sigmoid(self, name, x): return self.node(name, "sigmoid", [x])
    def silu(self, name, x): return self.node(name, "silu", [x])
    def hardswish(self, name, x): return self.node(name, "hardswish", [x])
    def hardsigmoid(self, name, x): return self.node(name, "hardsigmoid", [x])

    def gelu(self, name, x, approximate="none"):
        if approximate == "none":
            return self.node(name, "gelu", [x])
        return self.node(name, "gelu", [x], approximate=approximate)

    def leaky_relu(self, name, x, negative_slope=0.01):
        return self.node(name, "leaky_relu", [x], negative_slope=negative_slope)

    def add(self, name, a, b): return self.node(name, "add", [a, b])
    def mul(self, name, a, b): return self.node(name, "mul", [a, b])
    def concat(self, name, xs): return self.node(name, "concat", list(xs), axis=1)

    # Pooling and shape ------------------------------------------------------
    def max_pool(self, name, x, kernel, stride=None, padding=0, dilation=1, ceil_mode=False):
        return self.node(name, "max_pool", [x], kernel=kernel,
                         stride=kernel if stride is None else stride,
                         padding=padding, dilation=dilation, ceil_mode=ceil_mode)

    def avg_pool(self, name, x, kernel, stride=None, padding=0, ceil_mode=False,
                 count_include_pad=True):
        return self.node(name, "avg_pool", [x], kernel=kernel,
                         stride=kernel if stride is None else stride, padding=padding,
                         ceil_mode=ceil_mode, count_include_pad=count_include_pad)

    def global_avg_pool(self, name, x): return self.node(name, "global_avg_pool", [x])
    def flatten(self, name, x): return self.node(name, "flatten", [x])
    def dropout(self, name, x, p=None): return self.node(name, "dropout", [x], p=p)
    def softmax(self, name, x): return self.node(name, "softmax", [x])

    def normalize(self, name, x, mean, std):
        return self.node(name, "normalize", [x], mean=list(mean), std=list(std))


def make_spec(name: str, input_shape: Sequence[int], nodes: List[dict], output: str,
              classes: Optional[Sequence[str]] = None,
              preprocess: Optional[dict] = None) -> dict:
    """Assemble a spec dict (keys in a stable, readable order)."""
    spec = {"format": FORMAT_VERSION, "name": name, "input": [int(v) for v in input_shape]}
    if preprocess:
        spec["preprocess"] = dict(preprocess)
    if classes is not None:
        spec["classes"] = [str(c) for c in classes]
    spec["nodes"] = nodes
    spec["output"] = output
    return spec


# ---------------------------------------------------------------------------
# Validation, saving and loading
# ---------------------------------------------------------------------------

class SpecError(ValueError):
    pass


def validate_spec(spec: dict, tensors: Optional[Dict[str, torch.Tensor]] = None) -> None:
    """Structural checks: version, ops, arity, names, tensor references.

    With ``tensors`` given, also checks that each referenced tensor exists and
    that every tensor in the file is used by some node.
    """
    if spec.get("format") != FORMAT_VERSION:
        raise SpecError(f"unsupported format {spec.get('format')!r}")
    shape = spec.get("input")
    if not (isinstance(shape, list) and len(shape) == 3 and all(int(v) > 0 for v in shape)):
        raise SpecError(f"input must be [C, H, W], got {shape!r}")
    pre = spec.get("preprocess", {}) or {}
    for key in ("mean", "std"):
        if key in pre and len(pre[key]) != shape[0]:
            raise SpecError(f"preprocess.{key} needs {shape[0]} values")
    if "std" in pre and any(float(s) == 0.0 for s in pre["std"]):
        raise SpecError("preprocess.std must not contain 0")
    defined = {INPUT_NAME}
    used_tensors = set()
    for i, node in enumerate(spec.get("nodes", [])):
        name, op = node.get("name"), node.get("op")
        where = f"node {i} ({name!r})"
        if not isinstance(name, str) or name in defined:
            raise SpecError(f"{where}: missing or duplicate name")
        if op not in OPS:
            raise SpecError(f"{where}: unknown op {op!r}")
        inputs = node.get("inputs", [])
        if ARITY[op] is not None and len(inputs) != ARITY[op]:
            raise SpecError(f"{where}: {op} takes {ARITY[op]} input(s), got {len(inputs)}")
        if not inputs:
            raise SpecError(f"{where}: no inputs")
        for v in inputs:
            if v not in defined:
                raise SpecError(f"{where}: input {v!r} is not defined before this node")
        for attr in TENSOR_ATTRS.get(op, ()):
            tname = node.get(attr)
            if tname is None:
                if attr == "bias" and op in ("conv2d", "linear"):
                    continue
                raise SpecError(f"{where}: missing tensor attribute {attr!r}")
            used_tensors.add(tname)
            if tensors is not None and tname not in tensors:
                raise SpecError(f"{where}: tensor {tname!r} is not in the file")
        defined.add(name)
    if spec.get("output") not in defined:
        raise SpecError(f"output {spec.get('output')!r} is not a defined value")
    if tensors is not None:
        unused = sorted(set(tensors) - used_tensors)
        if unused:
            raise SpecError(f"tensors not used by any node: {unused[:5]}")


def save_model(path: str, spec: dict, tensors: Dict[str, torch.Tensor]) -> None:
    """Validate and write an advex model file (tensors as contiguous f32/f16/bf16)."""
    validate_spec(spec, tensors)
    out = {k: v.detach().contiguous() for k, v in tensors.items()}
    for k, v in out.items():
        if v.dtype not in (torch.float32, torch.float16, torch.bfloat16):
            raise SpecError(f"tensor {k!r} has dtype {v.dtype}; only f32/f16/bf16 are allowed")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    save_file(out, tmp, metadata={METADATA_KEY: json.dumps(spec, separators=(",", ":"))})
    os.replace(tmp, path)


def load_model(path: str) -> Tuple[dict, Dict[str, torch.Tensor]]:
    """Read an advex model file -> ``(spec, tensors)`` (tensors as stored)."""
    tensors: Dict[str, torch.Tensor] = {}
    with safe_open(path, framework="pt") as f:
        meta = f.metadata() or {}
        for k in f.keys():
            tensors[k] = f.get_tensor(k)
    if METADATA_KEY in meta:
        spec = json.loads(meta[METADATA_KEY])
    else:
        sidecar = os.path.splitext(path)[0] + ".json"
        if not os.path.exists(sidecar):
            raise SpecError(f"{path}: no '{METADATA_KEY}' metadata and no sidecar {sidecar}")
        with open(sidecar) as fh:
            spec = json.load(fh)
    validate_spec(spec, tensors)
    return spec, tensors


# ---------------------------------------------------------------------------
# PyTorch reference executor
# ---------------------------------------------------------------------------

def _broadcast_nchw(a: torch.Tensor, b: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """NCHW broadcasting: a lower-rank operand is aligned on the leading
    (N, C) axes, e.g. ``[N, C]`` against ``[N, C, H, W]`` acts as ``[N, C, 1, 1]``."""
    while a.dim() < b.dim():
        a = a.unsqueeze(-1)
    while b.dim() < a.dim():
        b = b.unsqueeze(-1)
    return a, b


def _pool_padded(x: torch.Tensor, pad: Tuple[int, int, int, int], value: float) -> torch.Tensor:
    t, l, b, r = pad
    return F.pad(x, (l, r, t, b), value=value) if any(pad) else x


class TorchExecutor(torch.nn.Module):
    """Runs an advex spec in PyTorch with eval semantics.

    ``forward(x)`` takes pixels in [0, 1] as NCHW float32, applies the
    preprocess mean/std (unless ``apply_preprocess=False``), runs the nodes
    in order and returns the output value. It is differentiable with respect
    to ``x``, so ``torch.autograd.grad`` gives the gradient w.r.t. the
    un-normalised pixels. Asymmetric (TF-SAME) padding is done with
    ``F.pad`` before the convolution / pooling.
    """

    def __init__(self, spec: dict, tensors: Dict[str, torch.Tensor],
                 apply_preprocess: bool = True, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        validate_spec(spec, tensors)
        self.spec = spec
        self.t = {k: v.to(dtype) for k, v in tensors.items()}
        self.apply_preprocess = apply_preprocess
        pre = spec.get("preprocess", {}) or {}
        c = spec["input"][0]
        self.mean = torch.tensor(pre.get("mean", [0.0] * c), dtype=dtype).view(1, c, 1, 1)
        self.std = torch.tensor(pre.get("std", [1.0] * c), dtype=dtype).view(1, c, 1, 1)

    def _tensor(self, node: dict, attr: str) -> Optional[torch.Tensor]:
        name = node.get(attr)
        return None if name is None else self.t[name]

    def run_node(self, node: dict, xs: List[torch.Tensor]) -> torch.Tensor:
        op = node["op"]
        x = xs[0]
        if op == "conv2d":
            t, l, b, r = padding4(node.get("padding", 0))
            if t == b and l == r:
                pad_arg = (t, l)
            else:
                x = F.pad(x, (l, r, t, b))
                pad_arg = (0, 0)
            return F.conv2d(x, self._tensor(node, "weight"), self._tensor(node, "bias"),
                            stride=pair(node.get("stride", 1)), padding=pad_arg,
                            dilation=pair(node.get("dilation", 1)),
                            groups=int(node.get("groups", 1)))
        if op == "batch_norm":
            return F.batch_norm(x, self._tensor(node, "running_mean"),
                                self._tensor(node, "running_var"),
                                self._tensor(node, "weight"), self._tensor(node, "bias"),
                                training=False, eps=float(node.get("eps", 1e-5)))
        if op == "layer_norm":  # over channels at each position
            y = F.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1],), self._tensor(node, "weight"),
                             self._tensor(node, "bias"), float(node.get("eps", 1e-5)))
            return y.permute(0, 3, 1, 2)
        if op == "linear":
            return F.linear(x, self._tensor(node, "weight"), self._tensor(node, "bias"))
        if op == "relu":
            return F.relu(x)
        if op == "relu6":
            return F.relu6(x)
        if op == "leaky_relu":
            return F.leaky_relu(x, float(node.get("negative_slope", 0.01)))
        if op == "sigmoid":
            return torch.sigmoid(x)
        if op == "silu":
            return F.silu(x)
        if op == "hardswish":
            return F.hardswish(x)
        if op == "hardsigmoid":
            return F.hardsigmoid(x)
        if op == "gelu":
            return F.gelu(x, approximate=node.get("approximate", "none"))
        if op == "max_pool":
            k, s = pair(node["kernel"]), pair(node.get("stride", node["kernel"]))
            pad = padding4(node.get("padding", 0))
            d, ceil = pair(node.get("dilation", 1)), bool(node.get("ceil_mode", False))
            if pad[0] == pad[2] and pad[1] == pad[3]:
                return F.max_pool2d(x, k, s, (pad[0], pad[1]), d, ceil_mode=ceil)
            return F.max_pool2d(_pool_padded(x, pad, float("-inf")), k, s, 0, d, ceil_mode=ceil)
        if op == "avg_pool":
            k, s = pair(node["kernel"]), pair(node.get("stride", node["kernel"]))
            pad = padding4(node.get("padding", 0))
            ceil = bool(node.get("ceil_mode", False))
            incl = bool(node.get("count_include_pad", True))
            if pad[0] == pad[2] and pad[1] == pad[3]:
                return F.avg_pool2d(x, k, s, (pad[0], pad[1]), ceil_mode=ceil,
                                    count_include_pad=incl)
            # Asymmetric: sum over the window / number of counted elements.
            # (Windows running past the padding under ceil_mode never count
            # those positions, matching PyTorch.)
            xp = _pool_padded(x, pad, 0.0)
            sums = F.avg_pool2d(xp, k, s, 0, ceil_mode=ceil, count_include_pad=False,
                                divisor_override=1)
            ones = torch.ones_like(x[:1, :1]) if not incl else torch.ones_like(xp[:1, :1])
            ones = _pool_padded(ones, pad, 0.0) if not incl else ones
            counts = F.avg_pool2d(ones, k, s, 0, ceil_mode=ceil, count_include_pad=False,
                                  divisor_override=1)
            return sums / counts
        if op == "global_avg_pool":
            return x.mean(dim=(2, 3), keepdim=True)
        if op == "add":
            a, b = _broadcast_nchw(xs[0], xs[1])
            return a + b
        if op == "mul":
            a, b = _broadcast_nchw(xs[0], xs[1])
            return a * b
        if op == "concat":
            return torch.cat(xs, dim=int(node.get("axis", 1)))
        if op == "flatten":
            return torch.flatten(x, 1)
        if op == "dropout":
            return x
        if op == "normalize":
            c = x.shape[1]
            mean = torch.tensor(node["mean"], dtype=x.dtype).view(1, c, *([1] * (x.dim() - 2)))
            std = torch.tensor(node["std"], dtype=x.dtype).view(1, c, *([1] * (x.dim() - 2)))
            return (x - mean) / std
        if op == "softmax":
            return torch.softmax(x, dim=1)
        raise SpecError(f"op {op!r} has no executor")

    def forward(self, x: torch.Tensor, return_all: bool = False):
        if self.apply_preprocess:
            x = (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        values = {INPUT_NAME: x}
        for node in self.spec["nodes"]:
            values[node["name"]] = self.run_node(node, [values[i] for i in node["inputs"]])
        out = values[self.spec["output"]]
        return (out, values) if return_all else out


def executor_on(spec: dict, tensors: Dict[str, torch.Tensor], device: Union[str, torch.device],
                apply_preprocess: bool = True) -> TorchExecutor:
    """A :class:`TorchExecutor` whose tensors and preprocess mean/std live on
    ``device`` (the executor keeps them in plain attributes, so ``.to()`` does
    not move them). Eval mode."""
    ex = TorchExecutor(spec, tensors, apply_preprocess=apply_preprocess)
    ex.t = {k: v.to(device) for k, v in ex.t.items()}
    ex.mean, ex.std = ex.mean.to(device), ex.std.to(device)
    return ex.eval()


# ---------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------

def load_image(path: str, spec: dict) -> torch.Tensor:
    """Decode an image file into a ``[C, H, W]`` float32 tensor in [0, 1].

    An image already at the model's input size is taken pixel-exact (u8/255).
    Otherwise the shorter side is resized to ``preprocess.resize`` (PIL,
    bilinear with antialias) and the centre ``preprocess.crop`` square is cut
    (offsets rounded like torchvision). 1-channel models get PIL's "L"
    conversion (ITU-R 601-2 luma) for colour files.
    """
    from PIL import Image

    c, h, w = spec["input"]
    img = Image.open(path)
    img = img.convert("L" if c == 1 else "RGB")
    if img.size != (w, h):
        pre = spec.get("preprocess", {}) or {}
        img = resize_center_crop(img, int(pre.get("resize", max(h, w))), (h, w),
                                 pre.get("interpolation", "bilinear"))
    arr = np.asarray(img, dtype=np.uint8)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).to(torch.float32) / 255.0


def resize_center_crop(img, resize: int, crop_hw: Tuple[int, int], interpolation: str = "bilinear"):
    """PIL: shorter side to ``resize`` (longer side truncated like torchvision),
    then the centre ``crop_hw`` window."""
    from PIL import Image

    filters = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC,
               "nearest": Image.NEAREST, "area": Image.BOX}
    w, h = img.size
    if w <= h:
        nw, nh = resize, int(resize * h / w)
    else:
        nw, nh = int(resize * w / h), resize
    img = img.resize((nw, nh), filters[interpolation])
    ch, cw = crop_hw
    top = int(round((nh - ch) / 2.0))
    left = int(round((nw - cw) / 2.0))
    return img.crop((left, top, left + cw, top + ch))


def param_count(tensors: Dict[str, torch.Tensor]) -> int:
    return sum(int(v.numel()) for v in tensors.values())
