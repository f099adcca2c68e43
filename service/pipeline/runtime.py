"""ONNX Runtime sessions: provider choice (CUDA when present, else CPU), thread settings, and
batched calls that respect a graph's fixed batch size."""
from __future__ import annotations

import logging

import numpy as np

from ..store.manifest import Manifest, graph_outputs

log = logging.getLogger("posekd.runtime")


def choose_providers(device: str = "auto", cuda_device_id: int = 0) -> list:
    import onnxruntime as ort

    available = ort.get_available_providers()
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" in available:
        return [("CUDAExecutionProvider", {"device_id": cuda_device_id}), "CPUExecutionProvider"]
    if device == "cuda":
        log.warning("POSEKD_DEVICE=cuda but ONNX Runtime has no CUDA provider here; using the CPU")
    return ["CPUExecutionProvider"]


class OnnxModel:
    """One model's session plus what the pipeline needs to feed it."""

    def __init__(self, manifest: Manifest, data: bytes, *, device: str = "auto", cuda_device_id: int = 0,
                 intra_threads: int = 0, inter_threads: int = 1, spinning: bool = False):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = intra_threads
        opts.inter_op_num_threads = inter_threads
        # ONNX Runtime's pool threads busy-wait after each parallel section by default. The pipeline runs
        # two sessions in turn (detector, then pose) with a pool each, so one session's spinning threads
        # take the cores from the other (`posekd bench runtime` measures both; bench/RESULTS.md).
        spin = "1" if spinning else "0"
        opts.add_session_config_entry("session.intra_op.allow_spinning", spin)
        opts.add_session_config_entry("session.inter_op.allow_spinning", spin)
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        self.ort = ort.InferenceSession(data, opts, providers=choose_providers(device, cuda_device_id))
        self.manifest = manifest
        self.provider = self.ort.get_providers()[0]
        self.output_names = graph_outputs(manifest, self.ort)
        inputs = {i.name: i for i in self.ort.get_inputs()}
        shape = inputs[manifest.input.name].shape
        spatial = shape[2:4] if manifest.input.layout == "NCHW" else shape[1:3]
        if manifest.input.size_multiple and any(isinstance(d, int) for d in spatial):
            raise ValueError(f"the manifest says the graph takes any multiple of {manifest.input.size_multiple} "
                             f"px, but its input is fixed at {spatial}")
        batch_dim = shape[0]
        fixed = batch_dim if isinstance(batch_dim, int) and batch_dim > 0 else 0
        self.max_batch = manifest.input.max_batch or fixed  # 0: any

    def outputs(self) -> list[tuple[str, str, list[int]]]:
        """(name, ONNX type such as ``tensor(float)``, shape with -1 for dynamic axes) of each served output."""
        return [(o.name, o.type, [d if isinstance(d, int) else -1 for d in o.shape])
                for o in self.ort.get_outputs() if o.name in self.output_names]


    def run(self, batch: np.ndarray, chunk: int = 0) -> dict[str, np.ndarray]:
        """Run a batch of any size: split into calls of at most ``max_batch`` (and ``chunk``) items."""
        limit = min(x for x in (self.max_batch, chunk, len(batch)) if x > 0)
        name = self.manifest.input.name
        if limit >= len(batch):
            outs = self.ort.run(self.output_names, {name: batch})
            return dict(zip(self.output_names, outs))
        parts = [self.ort.run(self.output_names, {name: batch[i:i + limit]})
                 for i in range(0, len(batch), limit)]
        return {n: np.concatenate([p[k] for p in parts]) for k, n in enumerate(self.output_names)}
