"""``posekd distill quantize``: a registered student → an int8 version of the same weights.

ONNX Runtime static quantization in QDQ form: weights int8 per output channel, activations uint8 with
ranges calibrated (percentile clipping by default) on views of the *training* split, prepared exactly
as the served pipeline prepares them (pose: crops around labelled people; detectors: letterboxed whole
images). The heads' last
convolutions and everything after them stay float, so the maps the decoders read keep their precision.
Size-agnostic graphs can be re-shaped to another input size first (same weights, e.g. a 256 px student
served at 192 px). The result is evaluated, gated against the public floor and registered like an
export (:mod:`distill.publish`); its lineage names the source version, its sha256 and the calibration data.
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path

import numpy as np

KEEP_FLOAT_SUFFIX = "/out/Conv"  # the heads' output convolutions (pose and detector students alike)


def with_input_size(data: bytes, height: int, width: int) -> bytes:
    """The same graph with its image input declared ``height``×``width`` (fully convolutional
    students compute every later shape from the input)."""
    import onnx

    m = onnx.load_from_string(data)
    dims = m.graph.input[0].type.tensor_type.shape.dim
    if len(dims) != 4:
        raise ValueError("expected a 4-d image input")
    h_axis, w_axis = (2, 3) if dims[1].dim_value == 3 else (1, 2)
    for axis, value in ((h_axis, height), (w_axis, width)):
        dims[axis].Clear()
        dims[axis].dim_value = value
    del m.graph.value_info[:]  # intermediate shapes recorded for the old size
    for out in m.graph.output:  # spatial output sizes follow the input
        for k, d in enumerate(out.type.tensor_type.shape.dim):
            if k > 0 and d.HasField("dim_value"):
                d.Clear()
                d.dim_param = f"{out.name}_{k}"
    return m.SerializeToString()


def calibration_batches(manifest, records, views: int, seed: int = 0, batch: int = 8) -> list[np.ndarray]:
    """Input tensors for calibration: ``views`` crops of labelled people (pose) or letterboxed images
    (detectors), drawn at random from ``records``, normalised by the manifest's input spec."""
    from service.pipeline import preprocess as pp

    spec = manifest.input.model_copy(update={"size_multiple": 0})  # full-size views, so that they stack
    rng = np.random.default_rng(seed)
    if manifest.task == "pose":
        pool = [(r, p.box) for r in records for p in r.people]
        if not pool:
            raise ValueError("pose calibration needs records with person boxes (e.g. lspet:DIR[:3600])")
    else:
        pool = [(r, None) for r in records]
    picks = rng.choice(len(pool), min(views, len(pool)), replace=False)
    images = []
    for i in picks:
        record, box = pool[int(i)]
        image = record.load()
        if box is None:
            images.append(pp.resize_for_detector(image, spec)[0])
        else:
            m = pp.crop_matrix(np.asarray(box, np.float32), manifest.crop.margin, spec.width, spec.height)
            images.append(pp.warp_crop(image, m, spec.width, spec.height))
    return [pp.to_tensor(images[k:k + batch], spec) for k in range(0, len(images), batch)]


@contextlib.contextmanager
def _inside(folder: str):
    here = os.getcwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(here)


def quantize(data: bytes, batches: list[np.ndarray], input_name: str, method: str = "percentile",
             percentile: float = 99.99) -> bytes:
    """Static int8 quantization (QDQ, per-channel weights) with activation ranges calibrated on
    ``batches``: ``percentile`` (clip each range at that percentile of the observed values; the
    default, measured best on held-out PCK), ``minmax`` or ``entropy``."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter(batches)

        def get_next(self):
            x = next(self.items, None)
            return None if x is None else {input_name: x}

    with tempfile.TemporaryDirectory(prefix="posekd-quant-") as tmp, _inside(tmp):
        # (inside: shape inference of large graphs leaves external-data files in the working directory)
        src, pre, out = Path(tmp, "fp32.onnx"), Path(tmp, "pre.onnx"), Path(tmp, "int8.onnx")
        src.write_bytes(data)
        try:
            quant_pre_process(str(src), str(pre), skip_symbolic_shape=False)
        except Exception:  # graphs symbolic inference cannot follow (e.g. imported TF ones): ONNX's own only
            quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        graph = onnx.load(str(pre)).graph
        keep = [n.name for n in graph.node if n.op_type == "Conv" and n.name.endswith(KEEP_FLOAT_SUFFIX)]
        quantize_static(str(pre), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method={"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                                          "percentile": CalibrationMethod.Percentile}[method],
                        nodes_to_exclude=keep,
                        extra_options={"WeightSymmetric": True, "ActivationSymmetric": False,
                                       # every method keeps each view's activations until the end (ONNX
                                       # Runtime 1.32's chunked min-max, CalibMaxIntermediateOutputs, drops
                                       # the chunks it folds: tests/test_quantize.py): --views bounds memory
                                       "CalibPercentile": percentile})
        return out.read_bytes()


def fidelity(reference, quantized, batches: list[np.ndarray]) -> dict:
    """How far the int8 graph's decoded output moves from the float graph's on the same inputs:
    pose — mean and 95th percentile keypoint displacement in input pixels (keypoints the float model
    scores > 0.3) and mean |score change|; detectors — mean |box score change| of the float model's
    boxes above 0.3."""
    from service.geometry import iou
    from service.pipeline.decoders import DETECTION_DECODERS, POSE_DECODERS

    m = reference.manifest
    if m.task == "pose":
        decode = POSE_DECODERS[m.output.decoder]
        dist, dscore = [], []
        for x in batches:
            a = decode(m, reference.session.run(x))
            b = decode(quantized.manifest, quantized.session.run(x))
            sure = a[..., 2] > 0.3
            dist.append(np.linalg.norm(a[..., :2] - b[..., :2], axis=-1)[sure])
            dscore.append(np.abs(a[..., 2] - b[..., 2]).ravel())
        d = np.concatenate(dist) if dist else np.zeros(0)
        return {"mean_px": round(float(d.mean()), 3) if d.size else None,
                "p95_px": round(float(np.percentile(d, 95)), 3) if d.size else None,
                "mean_abs_score": round(float(np.concatenate(dscore).mean()), 4), "input_px": m.input.width}
    find = DETECTION_DECODERS[m.output.decoder]
    changes = []
    for x in batches:
        for ba, bb in zip(find(m, reference.session.run(x)), find(quantized.manifest, quantized.session.run(x))):
            for box in ba[ba[:, 4] > 0.3]:
                if len(bb) == 0:
                    changes.append(box[4])
                    continue
                best = int(np.argmax(iou(box[None, :4], bb[:, :4])[0]))
                changes.append(abs(box[4] - bb[best, 4]))
    return {"mean_abs_box_score": round(float(np.mean(changes)), 4) if changes else None}


def cmd_quantize(args) -> int:
    """Load → (re-shape) → calibrate → quantize → evaluate against the floor → register, gated."""
    from service.settings import get_settings
    from service.store import ModelStore
    from service.store.store import ModelSpec

    from .commands import evaluation_of, gates_of, refused_as_dirty
    from .data import read_source
    from .export import git_commit
    from .publish import _served, command_line, data_relative, evaluate_candidate, register_and_promote

    store = ModelStore(args.store or get_settings().model_store)
    if refused_as_dirty(args.to_store or store.root, args.allow_dirty):
        return 2
    ref = ModelSpec.parse(args.model)
    version = store.resolve(ref)
    spec = ModelSpec(ref.name, version)
    source, data = store.read_verified(spec.name, version)
    fields = json.loads(source.model_dump_json())
    for k in ("version", "sha256", "created_at", "metrics", "file"):
        fields.pop(k, None)
    size = args.size or source.input.height
    if args.size:
        data = with_input_size(data, args.size, args.size)
        fields["input"].update(height=args.size, width=args.size)
    float_model = _served(fields, data)
    records = [r for s in args.calib for r in read_source(s)]
    views = args.views or (48 if source.task == "person_detection" else 256)
    batches = calibration_batches(float_model.manifest, records, views, args.seed)
    print(f"calibrating {spec.name}:{spec.version} at {size} px on {sum(len(b) for b in batches)} views")
    q = quantize(data, batches, source.input.name, args.calibration, args.percentile)
    name = args.name or f"{spec.name}-int8"
    source_lineage = fields.get("lineage") or {}
    fields.update(name=name, description=args.description or
                  f"{source.description} — int8 (static, per-channel), {size}px")
    check = calibration_batches(float_model.manifest, records, 64, args.seed + 1)  # other draws than calibration
    fields["lineage"] = data_relative({
        "source": f"posekd distill quantize of {spec.name}:{spec.version}",
        "quantized_from": {"model": f"{spec.name}:{spec.version}", "sha256": source.sha256,
                           "input_px": size, "lineage": source_lineage},
        "teacher": source_lineage.get("teacher"),
        "recipe": "ONNX Runtime static quantization, QDQ: int8 per-channel weights, uint8 activations "
                  f"(ranges: {args.calibration}" + (f" {args.percentile}" if args.calibration == "percentile" else "")
                  + " on the calibration views); heads' output convolutions kept float",
        "data": list(args.calib), "calibration_views": sum(len(b) for b in batches),
        "command": command_line(args), "git_commit": git_commit(),
        "license": source_lineage.get("license"),
        "fidelity": fidelity(float_model, _served(fields, q), check),
    })
    out = Path(tempfile.mkdtemp(prefix="posekd-int8-")) / "model.onnx"
    out.write_bytes(q)
    kind = "detector" if source.task == "person_detection" else "pose"
    gates = gates_of(args, kind)
    target = ModelStore(args.to_store) if args.to_store else store  # e.g. from a run's store to the served one
    metrics, floor = evaluate_candidate(kind, q, fields, target, evaluation_of(args), gates)
    print(json.dumps({**metrics, "fidelity": fields["lineage"]["fidelity"]}, indent=2))
    fields.update(metrics=metrics, params=metrics.get("params"), gflops=metrics.get("gflops"))
    return register_and_promote(target, out, fields, gates, floor, promote=not args.no_promote)
