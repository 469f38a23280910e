#!/usr/bin/env python3
"""Export the bundled EfficientNet-Lite0 (weights/efficientnet_lite0.safetensors)
to ONNX through PyTorch, for tests/onnx_effnet.rs.

The advex graph is run by ``advex_format.TorchExecutor`` (with the model's
preprocess, ``(x - mean) / std``, applied inside forward), so the exported
graph takes [0, 1] pixels like the bundled file. Exported with the default
``torch.onnx.export(module, (x,), path)`` (dynamo exporter) at input
[1, 3, 224, 224]; the per-node metadata and doc strings the exporter writes are
then stripped and the model saved again with its weights in ONE external data
file next to it:

    tests/fixtures/onnx/efficientnet_lite0.onnx
    tests/fixtures/onnx/efficientnet_lite0.onnx.data

Run from the repository root:  python tools/export_effnet_onnx.py

Made with: python 3.11.7, torch 2.15.0 (CPU), onnx 1.23.2, onnxscript 0.7.2
(the versions are printed on each run).
"""
import os
import sys

import onnx
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from advex_format import TorchExecutor, load_model  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SRC = os.path.join(ROOT, "weights", "efficientnet_lite0.safetensors")
OUT = os.path.join(ROOT, "tests", "fixtures", "onnx", "efficientnet_lite0.onnx")


class Wrapped(torch.nn.Module):
    """nn.Module around the executor whose weights are registered as
    buffers (TorchExecutor keeps them in a plain dict)."""

    def __init__(self, ex: TorchExecutor) -> None:
        super().__init__()
        # Held in a tuple, not as a submodule: forward rebinds its tensor dict
        # to the buffers (traced as graph inputs, not baked-in constants).
        self.ex = (ex,)
        self.names = {}
        for i, (k, v) in enumerate(ex.t.items()):
            buf = "w%d" % i
            self.register_buffer(buf, v.clone())
            self.names[k] = buf

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ex = self.ex[0]
        ex.t = {k: getattr(self, b) for k, b in self.names.items()}
        return ex(x)


def strip(model: onnx.ModelProto) -> None:
    def graph(g: onnx.GraphProto) -> None:
        g.doc_string = ""
        for n in g.node:
            n.doc_string = ""
            del n.metadata_props[:]
            for a in n.attribute:
                if a.type == onnx.AttributeProto.GRAPH:
                    graph(a.g)
                for sub in a.graphs:
                    graph(sub)
        for vi in list(g.value_info) + list(g.input) + list(g.output):
            del vi.metadata_props[:]
        for t in g.initializer:
            del t.metadata_props[:]

    model.doc_string = ""
    graph(model.graph)


def main() -> None:
    print("python", sys.version.split()[0], "torch", torch.__version__, "onnx",
          onnx.__version__, end="")
    try:
        import onnxscript
        print(" onnxscript", onnxscript.__version__)
    except ImportError:
        print()
    spec, tensors = load_model(SRC)
    ex = TorchExecutor(spec, tensors, apply_preprocess=True).eval()
    module = Wrapped(ex).eval()
    x = torch.rand(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = ex(x)
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    torch.onnx.export(module, (x,), OUT)

    model = onnx.load(OUT)  # pulls in the external data
    strip(model)
    for p in (OUT, OUT + ".data"):
        if os.path.exists(p):
            os.remove(p)
    onnx.save(model, OUT, save_as_external_data=True, all_tensors_to_one_file=True,
              location=os.path.basename(OUT) + ".data", size_threshold=1024)
    onnx.checker.check_model(OUT, full_check=True)
    print("ops:", sorted({n.op_type for n in onnx.load(OUT, load_external_data=False).graph.node}))
    try:
        import onnxruntime as ort
        sess = ort.InferenceSession(OUT)
        got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
        print("onnxruntime max |diff| vs torch:", float(abs(torch.from_numpy(got) - want).max()))
    except ImportError:
        pass
    for p in (OUT, OUT + ".data"):
        print(p, os.path.getsize(p), "bytes")


if __name__ == "__main__":
    main()
