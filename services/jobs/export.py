"""Weights in other formats, made from the stored .npz on first request and kept beside it.

- SAFETENSORS: the same tensors (W1, b1, ...); the architecture JSON in ``__metadata__``.
- ONNX: one Gemm per layer (a^{l-1} W^l + b^l) and its activation node; input ``x`` of
  shape (batch, D) with a variable batch dimension, output ``y`` of shape (batch, C).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from services.errors import FailedPreconditionError

FORMATS = ("npz", "safetensors", "onnx")
ONNX_OPSET = 20  # Gelu (tanh approximation) arrived in opset 20

# activation name -> (ONNX op, attributes); identity adds no node
_ONNX_ACTIVATIONS: dict[str, tuple[str, dict]] = {
    "relu": ("Relu", {}),
    "tanh": ("Tanh", {}),
    "sigmoid": ("Sigmoid", {}),
    "softplus": ("Softplus", {}),
    "leaky_relu": ("LeakyRelu", {"alpha": 0.01}),
    "elu": ("Elu", {"alpha": 1.0}),
    "gelu": ("Gelu", {"approximate": "tanh"}),
}


def read_npz(path: Path) -> tuple[dict, dict[str, np.ndarray]]:
    """(architecture, {"W1": (in, out), "b1": (out,), ...}) from a weights .npz."""
    with np.load(path, allow_pickle=False) as archive:
        architecture = json.loads(str(archive["architecture"]))
        tensors = {name: archive[name] for name in archive.files if name != "architecture"}
    return architecture, tensors


def exported(npz_path: Path, fmt: str) -> Path:
    """The weights as `fmt`, converting once and caching the file beside the .npz."""
    if fmt == "npz":
        return npz_path
    target = npz_path.with_suffix(f".{fmt}")
    if not target.exists():
        architecture, tensors = read_npz(npz_path)
        data = (
            _to_safetensors(architecture, tensors)
            if fmt == "safetensors"
            else _to_onnx(architecture, tensors)
        )
        temporary = target.with_suffix(target.suffix + ".tmp")
        temporary.write_bytes(data)
        os.replace(temporary, target)
    return target


def _to_safetensors(architecture: dict, tensors: dict[str, np.ndarray]) -> bytes:
    from safetensors.numpy import save

    return save(tensors, metadata={"architecture": json.dumps(architecture)})


def _to_onnx(architecture: dict, tensors: dict[str, np.ndarray]) -> bytes:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    sizes, activations = architecture["sizes"], architecture["activations"]
    nodes, initializers = [], []
    a = "x"
    for l, activation in enumerate(activations, start=1):
        if activation != "identity" and activation not in _ONNX_ACTIVATIONS:
            raise FailedPreconditionError(f"ONNX export does not support activation {activation!r}")
        initializers += [
            numpy_helper.from_array(tensors[f"W{l}"].astype(np.float32), f"W{l}"),
            numpy_helper.from_array(tensors[f"b{l}"].astype(np.float32), f"b{l}"),
        ]
        z = f"z{l}"
        nodes.append(helper.make_node("Gemm", [a, f"W{l}", f"b{l}"], [z], name=f"dense{l}"))
        a = z
        if activation != "identity":
            op, attributes = _ONNX_ACTIVATIONS[activation]
            nodes.append(
                helper.make_node(op, [z], [f"a{l}"], name=f"{activation}{l}", **attributes)
            )
            a = f"a{l}"
    nodes.append(helper.make_node("Identity", [a], ["y"], name="output"))
    graph = helper.make_graph(
        nodes,
        "bptrain_mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", sizes[0]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", sizes[-1]])],
        initializers,
    )
    model = helper.make_model(
        graph,
        producer_name="bptrain",
        opset_imports=[helper.make_opsetid("", ONNX_OPSET)],
        doc_string=json.dumps(architecture),
    )
    model.ir_version = 9
    onnx.checker.check_model(model, full_check=True)
    return model.SerializeToString()
