"""A registered model's weights back in a torch student: what ``--init`` continues from in a later
session, without the run's checkpoint (int8 versions dequantized)."""
from __future__ import annotations

import numpy as np
import torch


def exported_weights(graph, numpy_helper) -> dict[str, np.ndarray]:
    """The float weights of an exported graph by their original names: its float initializers, and for
    an int8 (QDQ) graph each ``<name>_quantized`` initializer dequantized through its
    DequantizeLinear node, ``(q - zero_point) * scale``, per channel along the node's axis."""
    init = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    out = {name: a for name, a in init.items() if a.dtype.kind == "f"}
    for node in graph.node:
        if node.op_type != "DequantizeLinear" or node.input[0] not in init:
            continue
        q, scale = init[node.input[0]].astype(np.float32), init[node.input[1]].astype(np.float32)
        zero = init[node.input[2]].astype(np.float32) if len(node.input) > 2 and node.input[2] else 0.0
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        if np.ndim(scale) == 1 and q.ndim > 1:  # per channel
            shape = [1] * q.ndim
            shape[axis] = -1
            scale = scale.reshape(shape)
            zero = np.reshape(zero, shape) if np.ndim(zero) == 1 else zero
        out[node.input[0].removesuffix("_quantized")] = (q - zero) * scale
    return out


def load_exported(model: torch.nn.Module, onnx_bytes: bytes) -> list[str]:
    """Start from a registered student: copy the weights its ONNX graph kept (initializers named
    ``student.<parameter>``: the exported branch, trunk and decoder; other branches stay fresh), int8
    versions dequantized. Lets a later session continue a committed model without a checkpoint.
    Returns the loaded names."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load_from_string(onnx_bytes).graph
    own = model.state_dict()
    found = {}
    for full, array in exported_weights(graph, numpy_helper).items():
        name = full.removeprefix("student.")
        if name in own and tuple(own[name].shape) == array.shape:
            found[name] = torch.from_numpy(np.array(array, np.float32))
    if not found:
        raise ValueError("the ONNX graph has no initializers that match this student")
    model.load_state_dict(found, strict=False)
    return sorted(found)
