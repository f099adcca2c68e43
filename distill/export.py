"""Export a trained student to ONNX (dynamic batch), check it against torch, describe it with a
manifest (lineage + measured metrics) and register it; promote it to ``production`` only when it
passes the gates against the current production version."""
from __future__ import annotations

import io
import logging
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from .students import DetectorExport, MoveNetExport, PoseExport, RegressionExport, StudentConfig

log = logging.getLogger("posekd.distill")
REPO = Path(__file__).resolve().parents[1]

# the students' input: float NCHW RGB, value = pixel / 127.5 - 1 (as the MoveNet graphs they came from)
STUDENT_INPUT = {"name": "image", "layout": "NCHW", "dtype": "float32", "color": "RGB", "scale": 1.0,
                 "mean": (127.5, 127.5, 127.5), "std": (127.5, 127.5, 127.5)}


def export_module(model: Any, cfg: StudentConfig) -> torch.nn.Module:
    """The export wrapper of a trained student (``model``: the student class its ``cfg.kind`` names)."""
    model = model.eval()
    if cfg.kind == "pose":
        return PoseExport(model).eval()
    if cfg.kind == "movenet":
        return MoveNetExport(model).eval()
    if cfg.kind == "regress":
        return RegressionExport(model).eval()
    return DetectorExport(model).eval()


def output_spec(cfg: StudentConfig) -> dict:
    if cfg.kind == "pose":
        return {"decoder": "heatmap", "names": ["heatmaps"]}
    if cfg.kind == "movenet":  # the order decode_movenet_heads reads them in
        return {"decoder": "movenet_heads", "names": list(MoveNetExport.OUTPUTS)}
    if cfg.kind == "regress":
        return {"decoder": "keypoints", "names": ["keypoints"], "params": {"order": "xy", "normalized": True}}
    return {"decoder": "boxes", "names": ["boxes"], "params": {"normalized": True}}


def to_onnx(module: torch.nn.Module, cfg: StudentConfig, opset: int = 17) -> bytes:
    names = output_spec(cfg)["names"]
    x = torch.zeros(2, 3, cfg.size, cfg.size)
    f = io.BytesIO()
    with torch.no_grad():
        torch.onnx.export(module, (x,), cast(Any, f), input_names=["image"], output_names=names,  # a file works
                          dynamic_axes={"image": {0: "batch"}, **{n: {0: "batch"} for n in names}},
                          opset_version=opset, do_constant_folding=True, dynamo=False)
    return fold_pads(f.getvalue())


def fold_pads(onnx_bytes: bytes) -> bytes:
    """Fold zero ``Pad`` nodes (TensorFlow's SAME padding of the stride-2 convolutions, which torch can
    only express as an explicit pad) into the following ``Conv``'s own ``pads`` attribute, which ONNX
    allows to be asymmetric. The explicit pads cost CPU time, mostly in layout reorders around
    them; folded, the graph computes the same numbers (``parity`` checks it)."""
    import onnx
    import onnxruntime as ort
    from onnx import helper

    model = onnx.load_from_string(onnx_bytes)
    graph = model.graph
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    candidates = []
    for node in graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        uses = consumers.get(node.output[0], [])
        if node.op_type == "Pad" and attrs.get("mode", b"constant") == b"constant" and \
                (len(node.input) < 3 or not node.input[2]) and len(uses) == 1 and uses[0].op_type == "Conv" \
                and uses[0].input[0] == node.output[0]:
            candidates.append((node, uses[0]))
    if not candidates:
        return onnx_bytes
    # the pad amounts are constants computed inside the graph: read them by running it once
    probe = onnx.load_from_string(onnx_bytes)
    for pad, _ in candidates:
        probe.graph.output.append(helper.make_tensor_value_info(pad.input[1], onnx.TensorProto.INT64, None))
    sess = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    shape = [1 if not isinstance(d, int) else d for d in inp.shape]
    values = sess.run([pad.input[1] for pad, _ in candidates], {inp.name: np.zeros(shape, np.float32)})
    for (pad, conv), amounts in zip(candidates, values):
        amounts = [int(v) for v in amounts]
        if len(amounts) != 8 or any(amounts[i] for i in (0, 1, 4, 5)) or min(amounts) < 0:
            continue  # only spatial, non-negative padding of an NCHW tensor folds
        old = next((a for a in conv.attribute if a.name == "pads"), None)
        base = list(helper.get_attribute_value(old)) if old is not None else [0, 0, 0, 0]
        merged = [base[0] + amounts[2], base[1] + amounts[3], base[2] + amounts[6], base[3] + amounts[7]]
        if old is not None:
            conv.attribute.remove(old)
        conv.attribute.append(helper.make_attribute("pads", merged))
        conv.input[0] = pad.input[0]
        graph.node.remove(pad)
    _prune(graph)
    return model.SerializeToString()


def _prune(graph) -> None:
    """Drop nodes whose outputs nothing reads any more (the folded pads' constant chains)."""
    while True:
        needed = {o.name for o in graph.output} | {i for n in graph.node for i in n.input}
        dead = [n for n in graph.node if not any(o in needed for o in n.output)]
        if not dead:
            return
        for n in dead:
            graph.node.remove(n)


def parity(module: torch.nn.Module, onnx_bytes: bytes, cfg: StudentConfig, *, batches=(1, 3), seed: int = 0,
           atol: float = 1e-3) -> float:
    """Max |torch - ONNX Runtime| over random inputs at several batch sizes; raises above ``atol``."""
    import onnxruntime as ort

    sess = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    g = torch.Generator().manual_seed(seed)
    worst = 0.0
    for n in batches:
        x = torch.rand(n, 3, cfg.size, cfg.size, generator=g) * 2 - 1
        with torch.no_grad():
            refs = module(x)
        refs = [r.numpy() for r in (refs if isinstance(refs, tuple) else (refs,))]
        for ref, got in zip(refs, sess.run(None, {"image": x.numpy()})):
            if got.shape != ref.shape:
                raise AssertionError(f"ONNX output shape {got.shape} != torch {ref.shape}")
            if cfg.kind == "detector":
                worst = max(worst, _box_rows_diff(ref, got))
                continue
            worst = max(worst, float(np.abs(got - ref).max()))
    if worst > atol:
        raise AssertionError(f"ONNX differs from torch by {worst:.2e} (> {atol:.0e})")
    return worst


def _box_rows_diff(ref: np.ndarray, got: np.ndarray, min_score: float = 0.05) -> float:
    """Detector outputs compared as sets of boxes: peaks with (nearly) equal scores may come out of
    top-k in either order, and padding rows (no peak) carry no meaning. Every box scoring above
    ``min_score`` in one output must have a twin in the other."""
    worst = 0.0
    for a, b in ((ref, got), (got, ref)):
        for rows_a, rows_b in zip(a, b):
            for row in rows_a[rows_a[:, 4] > min_score]:
                worst = max(worst, float(np.abs(rows_b - row).max(-1).min()))
    return worst


def manifest_fields(name: str, cfg: StudentConfig, *, description: str, lineage: dict) -> dict:
    fields = {"name": name, "task": "person_detection" if cfg.kind == "detector" else "pose",
              "description": description,
              "input": {**STUDENT_INPUT, "height": cfg.size, "width": cfg.size,
                        # a detector's graph takes any multiple of 32 px: the letterbox pads only that far
                        **({"resize": "letterbox", "size_multiple": 32} if cfg.kind == "detector" else {})},
              "output": output_spec(cfg), "lineage": lineage}
    if cfg.kind != "detector":
        fields["crop"] = {"margin": 1.25}
    return fields


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return out.stdout.strip() + ("+dirty" if dirty else "") if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def library_versions() -> dict[str, str]:
    """The versions of what made and checked the weights (recorded in every lineage)."""
    import importlib.metadata as md
    import platform

    out = {"python": platform.python_version()}
    for dist in ("torch", "onnx", "onnxruntime", "numpy", "opencv-python-headless", "opencv-python"):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            continue
    return out


def dirty_refusal(store_root, allow: bool) -> str | None:
    """Why a version may not be registered in ``store_root`` now, or None. The committed store
    (``model_store/`` of this checkout) takes only versions made from a clean tree, so that the
    lineage's commit rebuilds them; ``allow`` (``--allow-dirty``) overrides, scratch stores never ask."""
    from pathlib import Path

    if allow or Path(store_root).resolve() != (REPO / "model_store").resolve():
        return None
    commit = git_commit()
    if commit is not None and commit.endswith("+dirty"):
        return (f"the work tree has uncommitted changes ({commit}): commit them first, so that the lineage's "
                "commit rebuilds this version (or pass --allow-dirty)")
    return None


# ---- gates -------------------------------------------------------------------------------------------
@dataclass
class Gates:
    """A new version may become ``production`` only if it is at most ``max_ap_drop`` AP below the
    current production, no more than ``max_latency_ratio`` times its batch-1 latency, and at least
    ``min_ap`` (absolute). Without a current production only ``min_ap`` applies.

    With a ``floor`` (the metrics of a public model measured in the same run, e.g. MoveNet Lightning
    for a pose student) the new version must also be at least as accurate as the floor and at most
    ``floor_latency_ratio`` times its latency: a student that loses to the model it could be replaced
    by is never promoted, whatever production is today. ``floor_accuracy`` says how accuracy is compared
    with the floor: ``ap`` (the dev-set AP, default), ``pck`` (held-out PCK@0.2, which needs both
    measured) or ``both``."""
    min_ap: float = 0.0
    max_ap_drop: float = 0.01
    max_latency_ratio: float = 1.10
    metric: str = "gt_boxes"  # which AP: gt_boxes (pose) or end_to_end (detectors)
    floor_latency_ratio: float = 1.10
    floor_accuracy: str = "ap"

    def check(self, new: dict, current: dict | None, floor: dict | None = None) -> tuple[bool, list[str]]:
        why = []
        ap = (new.get(self.metric) or {}).get("AP")
        if ap is None:
            return False, [f"no {self.metric} AP measured"]
        if ap < self.min_ap:
            why.append(f"AP {ap:.3f} < minimum {self.min_ap:.3f}")
        if floor:
            name = floor.get("model", "the floor")
            why.extend(self._floor_accuracy(new, floor, name))
            f_ms, ms = floor.get("ms_b1"), new.get("ms_b1")
            if f_ms and ms and ms > f_ms * self.floor_latency_ratio:
                why.append(f"batch-1 latency {ms:.2f} ms > {self.floor_latency_ratio}× {name}'s {f_ms:.2f} ms")
        if current:
            cur_ap = (current.get(self.metric) or {}).get("AP")
            if cur_ap is not None and ap < cur_ap - self.max_ap_drop:
                why.append(f"AP {ap:.3f} is more than {self.max_ap_drop} below production's {cur_ap:.3f}")
            cur_ms, ms = current.get("ms_b1"), new.get("ms_b1")
            if cur_ms and ms and ms > cur_ms * self.max_latency_ratio:
                why.append(f"batch-1 latency {ms:.2f} ms > {self.max_latency_ratio}× production's {cur_ms:.2f} ms")
        return not why, why

    def _floor_accuracy(self, new: dict, floor: dict, name: str) -> list[str]:
        why = []
        if self.floor_accuracy in ("ap", "both"):
            ap, floor_ap = (new.get(self.metric) or {}).get("AP"), (floor.get(self.metric) or {}).get("AP")
            if floor_ap is None:
                why.append(f"no {self.metric} AP measured for {name}")
            elif ap is not None and ap < floor_ap:
                why.append(f"AP {ap:.3f} is below {name}'s {floor_ap:.3f}")
        if self.floor_accuracy in ("pck", "both"):
            pck, floor_pck = new.get("pck@0.2"), floor.get("pck@0.2")
            if pck is None or floor_pck is None:
                why.append(f"held-out PCK@0.2 not measured for both this version and {name}")
            elif pck < floor_pck:
                why.append(f"held-out PCK@0.2 {pck:.3f} is below {name}'s {floor_pck:.3f}")
        return why
