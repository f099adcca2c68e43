"""``posekd eval``: accuracy, agreement with a teacher, size and speed of any model the store can run.

* OKS AP/AR with pycocotools on a COCO keypoint set, top-down with the ground-truth person boxes (the
  people with labelled keypoints, as in the teachers README) and end to end with a detector;
  person score = the pipeline's (box score, confident keypoints and their spread; see
  ``service.pipeline.people``).
* PCK (PCK@0.2 of the torso: distance between a shoulder and the opposite hip) for LSPET-style labels.
* Agreement with a teacher: mean OKS between the model's and the teacher's keypoints on the same boxes.
* Parameters (ONNX initializers), GFLOPs (2 × multiply-adds of Conv/Gemm/MatMul at batch 1) and ONNX
  Runtime latency per image at batch 1 and 8 (CPU, ``threads`` intra-op threads, median of runs)."""
from __future__ import annotations

import contextlib
import io
import json
import time
from pathlib import Path

import numpy as np

from service.geometry import oks_to_reference
from service.pipeline.pipeline import ImageTask, PosePipeline
from service.store.registry import ServedModel

from .data import Record, read_coco


def served_pipeline() -> PosePipeline:
    """The pipeline as the service runs it by default (its detector threshold and people ceiling); the
    person score threshold is left to the callers, which keep every person (AP ranks them by score)."""
    from service.engine import pipeline_for
    from service.settings import Settings

    return pipeline_for(Settings())


def predict(model: ServedModel, records: list[Record], detector: ServedModel | None = None,
            pipeline: PosePipeline | None = None) -> tuple[list, float]:
    """COCO-format results for every record, scored by the pipeline's person score; boxes from the
    labels or, with ``detector``, found. Returns (results, mean ms per image)."""
    pipe = pipeline or served_pipeline()
    results, elapsed = [], 0.0
    for r in records:
        image = r.load()
        boxes = None if detector is not None else np.stack([p.box for p in r.people])
        t0 = time.perf_counter()
        res = pipe.run(model, detector, [ImageTask(image=image, boxes=boxes, min_score=0.0, max_people=20)])[0]
        elapsed += time.perf_counter() - t0
        for person in res.people:
            kp = np.asarray(person.keypoints, np.float32)
            results.append({"image_id": r.image_id, "category_id": 1,
                            "keypoints": [float(v) for v in kp.reshape(-1)], "score": float(person.score),
                            "box_xyxy": [float(v) for v in person.bbox]})
    return results, elapsed / max(1, len(records)) * 1000


def coco_ap(annotations: str | Path, results: list, image_ids: list[int]) -> dict[str, float]:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if not results:
        return {"AP": 0.0, "AP50": 0.0, "AP75": 0.0, "APm": 0.0, "AR": 0.0}
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(annotations))
        dt = gt.loadRes(results)
        ev = COCOeval(gt, dt, "keypoints")
        ev.params.imgIds = image_ids
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    s = ev.stats
    return {"AP": round(float(s[0]), 4), "AP50": round(float(s[1]), 4), "AP75": round(float(s[2]), 4),
            "APm": round(float(s[3]), 4), "AR": round(float(s[5]), 4)}


def agreement(model: ServedModel, teacher: ServedModel, records: list[Record]) -> float:
    pipe = served_pipeline()
    scores = []
    for r in records:
        image = r.load()
        boxes = np.stack([p.box for p in r.people])
        a = pipe.run(model, None, [ImageTask(image=image, boxes=boxes, min_score=0.0, max_people=50)])[0]
        b = pipe.run(teacher, None, [ImageTask(image=image, boxes=boxes, min_score=0.0, max_people=50)])[0]
        # results are sorted by score; match them back to boxes
        ka = {tuple(np.round(p.bbox, 2)): np.asarray(p.keypoints) for p in a.people}
        for p in b.people:
            key = tuple(np.round(p.bbox, 2))
            if key in ka:
                w, h = p.bbox[2] - p.bbox[0], p.bbox[3] - p.bbox[1]
                v = oks_to_reference(ka[key], np.asarray(p.keypoints), w * h * 0.53)
                if v is not None:
                    scores.append(v)
    return round(float(np.mean(scores)), 4) if scores else 0.0


def torso_size(g: np.ndarray) -> float:
    """The longer labelled shoulder-to-opposite-hip diagonal of COCO-17 keypoints (0 when neither is)."""
    return float(max(np.linalg.norm(g[6, :2] - g[11, :2]) if g[6, 2] > 0 and g[11, 2] > 0 else 0,
                     np.linalg.norm(g[5, :2] - g[12, :2]) if g[5, 2] > 0 and g[12, 2] > 0 else 0))


def scorable(people) -> list[tuple]:
    """(person, labels, torso size) of each person PCK can score: labelled, with a torso diagonal."""
    out = []
    for p in people:
        if p.keypoints is not None and (torso := torso_size(p.keypoints)) > 0:
            out.append((p, p.keypoints, torso))
    return out


def pck(model: ServedModel, records: list[Record], threshold: float = 0.2) -> float:
    """PCK@threshold of the torso size over labelled joints (LSPET-style labels)."""
    pipe = served_pipeline()
    hit = total = 0
    for r in records:
        people = scorable(r.people)
        if not people:
            continue
        boxes = np.stack([p.box for p, _, _ in people])
        res = pipe.run(model, None, [ImageTask(image=r.load(), boxes=boxes, min_score=0.0, max_people=50)])[0]
        if not res.people:
            continue
        # each answer belongs to the given box it echoes (nearest; float32 boxes come back as float64)
        answered = np.array([p.bbox for p in res.people], np.float64)
        for p, g, torso in people:
            near = np.abs(answered - np.asarray(p.box[:4], np.float64)).max(-1)
            if near.min() > 0.5:
                continue
            k = np.asarray(res.people[int(near.argmin())].keypoints)
            vis = g[:, 2] > 0
            d = np.linalg.norm(k[:, :2] - g[:, :2], axis=-1)
            hit += int((d[vis] <= threshold * torso).sum())
            total += int(vis.sum())
    return round(hit / max(total, 1), 4)


# ---- size and speed --------------------------------------------------------------------------
def gflops(onnx_bytes: bytes, input_name: str, shape: tuple[int, ...], dtype: str = "float32") -> float | None:
    """2 × multiply-adds of Conv, Gemm and MatMul for one input of ``shape``. Output shapes come from
    running the graph once in ONNX Runtime with every such node's output exposed (symbolic shape
    inference cannot see through exporters' computed paddings)."""
    try:
        import onnx
        import onnxruntime as ort
        from onnx import helper, numpy_helper
    except ImportError:
        return None
    m = onnx.load_from_string(onnx_bytes)
    weights = _weight_shapes(m, numpy_helper)
    nodes = [n for n in m.graph.node if n.op_type in ("Conv", "Gemm", "MatMul")]
    existing = {o.name for o in m.graph.output}
    for n in nodes:
        for t in (n.output[0], n.input[0]):
            if t not in existing and t not in weights:
                m.graph.output.append(helper.make_empty_tensor_value_info(t))
                existing.add(t)
    try:
        sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
        x = np.zeros(shape, dtype=np.dtype(dtype))
        names = [o.name for o in sess.get_outputs()]
        shapes = {k: v.shape for k, v in zip(names, sess.run(names, {input_name: x}))}
    except Exception:
        return None
    return round(2 * sum(_macs(n, shapes, weights) for n in nodes) / 1e9, 3)


def weight_count(m, numpy_helper) -> int:
    """Learned values in a graph: float initializers, and the integer weights and biases of a quantized
    graph (what DequantizeLinear reads as data; its scales and zero points are not counted)."""
    qdq = [n for n in m.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    dequantized = {n.input[0] for n in qdq if n.op_type == "DequantizeLinear"}
    qparams = {i for n in qdq for i in n.input[1:]}
    return int(sum(numpy_helper.to_array(t).size for t in m.graph.initializer if t.name not in qparams
                   and (t.data_type in (1, 10) or t.name in dequantized)))  # float32, float16


def _weight_shapes(m, numpy_helper) -> dict[str, list[int]]:
    """Shapes of the initializers, and of what Identity, Constant or DequantizeLinear (quantized graphs)
    nodes route them through."""
    weights = {t.name: list(t.dims) for t in m.graph.initializer}
    for n in m.graph.node:
        if n.op_type in ("Identity", "DequantizeLinear") and n.input[0] in weights:
            weights[n.output[0]] = weights[n.input[0]]
        elif n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    weights[n.output[0]] = list(numpy_helper.to_array(a.t).shape)
    return weights


def _macs(n, shapes: dict, weights: dict) -> int:
    """Multiply-adds of one Conv, Gemm or MatMul node, from its output shape and its weight shape."""
    out = shapes.get(n.output[0])
    if out is None:
        return 0
    if n.op_type == "Conv":
        w = weights.get(n.input[1])
        return 0 if w is None else int(np.prod(w)) * int(np.prod(out[2:])) * int(out[0])
    a = shapes.get(n.input[0]) or weights.get(n.input[0])
    return 0 if a is None else int(np.prod(out)) * int(a[-1])


def latency(model: ServedModel, batch: int, runs: int = 30, seed: int = 0) -> float:
    """Median ms per image for a batch of ``batch`` random inputs (chunked where the graph's batch is
    fixed), after warm-up."""
    from service.pipeline import preprocess as pp

    spec = model.manifest.input
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (batch, spec.height, spec.width, 3), dtype=np.uint8)
    x = pp.to_tensor(images, spec)
    for _ in range(5):
        model.session.run(x)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        model.session.run(x)
        times.append(time.perf_counter() - t0)
    return round(float(np.median(times)) * 1000 / batch, 3)


def evaluate(model: ServedModel, onnx_bytes: bytes, *, annotations: str | Path | None,
             detector: ServedModel | None = None, teacher: ServedModel | None = None,
             pck_records: list[Record] | None = None, speed: bool = True, speed_runs: int = 30) -> dict:
    """Every metric that applies to ``model`` (a pose or detection model)."""
    m = model.manifest
    out: dict = {"model": f"{m.name}:{m.version}"}
    params = None
    try:
        import onnx
        from onnx import numpy_helper
        params = weight_count(onnx.load_from_string(onnx_bytes), numpy_helper)
    except ImportError:
        pass
    out["params"] = params
    shape = (1, 3, m.input.height, m.input.width) if m.input.layout == "NCHW" else (1, m.input.height, m.input.width, 3)
    out["gflops"] = gflops(onnx_bytes, m.input.name, shape, m.input.dtype)
    if speed:
        out["ms_b1"] = latency(model, 1, speed_runs)
        out["ms_b8"] = latency(model, 8, max(5, speed_runs // 3))
    if annotations:
        records = read_coco(annotations)
        ids = [int(r.image_id or 0) for r in records]
        out["eval_set"] = str(annotations)
        out["images"] = len(records)
        out["people"] = sum(len(r.people) for r in records)
        if m.task == "pose":
            res, ms = predict(model, records)
            out["gt_boxes"] = {**coco_ap(annotations, res, ids), "ms_per_image": round(ms, 2)}
            if teacher is not None:
                out["teacher_agreement_oks"] = agreement(model, teacher, records)
                out["teacher"] = f"{teacher.name}:{teacher.version}"
        if detector is not None or m.task == "person_detection":
            pose = model if m.task == "pose" else teacher
            det = detector if m.task == "pose" else model
            if pose is not None and det is not None:
                res, ms = predict(pose, records, det)
                out["end_to_end"] = {**coco_ap(annotations, res, ids), "ms_per_image": round(ms, 2),
                                     "detector": f"{det.name}:{det.version}", "pose": f"{pose.name}:{pose.version}"}
    if pck_records and m.task == "pose":
        out["pck@0.2"] = pck(model, pck_records)
        out["pck_images"] = len(pck_records)
    return out


def write_json(path: str | Path, data: dict) -> None:
    Path(path).write_text(json.dumps(data, indent=2))
