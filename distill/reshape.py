"""``posekd distill reshape``: a registered detector's weights, unchanged, in a graph that takes any input
size that is a multiple of N, so that a letterboxed view is padded only to the next multiple instead of
to the full square (a 640×480 photo runs at 256×192 for a 256×256 detector).

Fully convolutional detectors compute every later shape from the input, so the only change is the
graph's declared input height and width. The command checks that the new graph gives the same outputs
as the source on full-size input, measures how far the boxes move on real pictures when the padding goes
(the source's boxes found again, at IoU ≥ 0.5, and the other way round), evaluates it like any candidate
(end-to-end AP and time per image), registers it and moves ``production`` only through the gates."""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np


def free_spatial_dims(data: bytes) -> bytes:
    """The same graph with the image input's height and width left free (``height``, ``width``)."""
    import onnx

    m = onnx.load_from_string(data)
    dims = m.graph.input[0].type.tensor_type.shape.dim
    if len(dims) != 4:
        raise ValueError("expected a 4-d image input")
    axes = (2, 3) if dims[1].dim_value == 3 else (1, 2)
    for axis, label in zip(axes, ("height", "width")):
        dims[axis].Clear()
        dims[axis].dim_param = label
    del m.graph.value_info[:]  # shapes inferred for the old size; ONNX Runtime infers them again
    for out in m.graph.output:  # an output's spatial size may follow the input's: one free name per axis
        for axis, d in enumerate(out.type.tensor_type.shape.dim):
            if axis and d.dim_value:
                d.Clear()
                d.dim_param = f"{out.name}_dim{axis}"
    return m.SerializeToString()


def box_agreement(source, candidate, images: list[np.ndarray], pipeline) -> dict:
    """How the boxes move from ``source`` to ``candidate`` (served detectors) on ``images``: the share of the
    source's boxes the candidate finds again at IoU ≥ 0.5, the share of the candidate's that the source
    had, and the mean IoU of the matched pairs."""
    from service.geometry import iou

    found = kept = n_src = n_new = 0
    ious: list[float] = []
    for image in images:
        a = pipeline.detect(source, [image])[0]
        b = pipeline.detect(candidate, [image])[0]
        n_src, n_new = n_src + len(a), n_new + len(b)
        if len(a) and len(b):
            m = iou(a[:, :4], b[:, :4])
            found += int((m.max(1) >= 0.5).sum())
            kept += int((m.max(0) >= 0.5).sum())
            ious.extend(float(v) for v in m.max(1) if v >= 0.5)
    return {"images": len(images), "source_boxes": n_src, "boxes": n_new,
            "source_boxes_found": round(found / n_src, 4) if n_src else None,
            "boxes_the_source_had": round(kept / n_new, 4) if n_new else None,
            "mean_iou_matched": round(float(np.mean(ious)), 4) if ious else None}


def cmd_reshape(args) -> int:
    """Load → free the input size → check parity → compare boxes → evaluate → register, gated."""
    from service.engine import pipeline_for
    from service.settings import Settings, get_settings
    from service.store import ModelStore
    from service.store.store import ModelSpec

    from .commands import evaluation_of, gates_of, refused_as_dirty
    from .data import read_source
    from .export import git_commit
    from .publish import _served, command_line, data_relative, evaluate_candidate, register_and_promote

    store = ModelStore(args.store or get_settings().model_store)
    if refused_as_dirty(store.root, args.allow_dirty):
        return 2
    ref = ModelSpec.parse(args.model)
    version = store.resolve(ref)
    source, data = store.read_verified(ref.name, version)
    if source.task != "person_detection" or source.input.resize != "letterbox":
        print(f"{ref.name}:{version} is not a letterboxed person detector: nothing to gain")
        return 2
    src_model = _served(json.loads(source.model_dump_json()), data)
    fields = json.loads(source.model_dump_json(exclude={"version", "sha256", "created_at", "metrics", "file"}))
    fields["input"]["size_multiple"] = args.multiple
    free = free_spatial_dims(data)
    new_model = _served(fields, free)
    x = np.random.default_rng(0).normal(size=(2, 3, source.input.height, source.input.width)).astype(np.float32)
    if source.input.layout == "NHWC":
        x = x.transpose(0, 2, 3, 1).copy()
    diff = max(float(np.abs(a - b).max()) for a, b in zip(src_model.session.run(x).values(),
                                                          new_model.session.run(x).values()))
    if diff > 1e-4:
        print(f"the re-shaped graph disagrees with the source on full-size input (max abs diff {diff:g})")
        return 1
    pipeline = pipeline_for(Settings())
    images = [r.load() for spec in args.check for r in read_source(spec)][: args.check_images]
    agreement = box_agreement(src_model, new_model, images, pipeline)
    print(json.dumps({"parity_max_abs_diff": diff, "boxes_vs_source": agreement}, indent=2))
    source_lineage = fields.get("lineage") or {}
    fields.update(name=args.name or ref.name, description=args.description or
                  f"{source.description} — any input size that is a multiple of {args.multiple} px")
    fields["lineage"] = data_relative({
        **source_lineage,
        "source": f"posekd distill reshape of {ref.name}:{version}",
        "reshaped_from": {"model": f"{ref.name}:{version}", "sha256": source.sha256,
                          "parity_max_abs_diff": diff, "boxes_vs_source": agreement,
                          "checked_on": list(args.check), "lineage": source_lineage},
        "command": command_line(args), "git_commit": git_commit(),
    })
    out = Path(tempfile.mkdtemp(prefix="posekd-reshape-")) / "model.onnx"
    out.write_bytes(free)
    gates = gates_of(args, "detector")
    metrics, floor = evaluate_candidate("detector", free, fields, store, evaluation_of(args), gates)
    print(json.dumps(metrics, indent=2))
    fields.update(metrics=metrics, params=metrics.get("params"), gflops=metrics.get("gflops"))
    return register_and_promote(store, out, fields, gates, floor, promote=not args.no_promote)
