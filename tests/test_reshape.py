"""``posekd distill reshape``: a registered detector's weights in a graph that takes any multiple of N px,
checked for parity, compared box for box, registered with its lineage and served at the view's own size."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")

from distill.export import DetectorExport, manifest_fields, to_onnx  # noqa: E402,I001
from distill.students import StudentConfig, build_student  # noqa: E402
from service.cli import main as cli  # noqa: E402
from service.pipeline import PosePipeline  # noqa: E402
from service.pipeline import preprocess as pp  # noqa: E402
from service.pipeline.runtime import OnnxModel  # noqa: E402
from service.store import ModelRegistry, ModelStore  # noqa: E402
from service.store.importer import import_model  # noqa: E402

from .helpers import POSE_FIELDS, blob_image, tiny_pose_onnx  # noqa: E402
from .test_distill import _coco_set  # noqa: E402


def _store_with_detector(tmp_path, recorded: dict | None = None) -> ModelStore:
    """``tiny-det:1`` (a 64 px detector student, letterboxed, production; ``recorded``: the metrics its
    manifest claims) and ``tiny-pose:1``."""
    torch.manual_seed(0)
    cfg = StudentConfig("detector", 64, 1.0, 1, "none")
    data = to_onnx(DetectorExport(build_student(cfg, None)).eval(), cfg)
    path = tmp_path / "det.onnx"
    path.write_bytes(data)
    store = ModelStore(tmp_path / "store")
    fields = manifest_fields("tiny-det", cfg, description="a tiny detector",
                             lineage={"teacher": "movenet-multipose:1", "license": "test"})
    fields["input"].pop("size_multiple")  # a fixed-size graph, as detectors were exported before
    store.add_version(path, {**fields, "metrics": recorded or {}})
    store.set_alias("tiny-det", "production", 1)
    import_model(store, tiny_pose_onnx(tmp_path / "pose.onnx"), POSE_FIELDS)
    return store


def test_reshaped_detector_is_registered_and_runs_at_the_views_own_size(tmp_path):
    """Also: the gate compares with production measured again in the same run. Its manifest claims an
    end-to-end AP of 0.99 (recorded under other settings); the same weights re-shaped pass a 0.01 AP-drop
    gate only because production is re-measured beside them."""
    store = _store_with_detector(tmp_path, recorded={"end_to_end": {"AP": 0.99}})
    js = _coco_set(tmp_path / "coco")
    pictures = tmp_path / "pictures"
    pictures.mkdir()
    for i in range(3):
        cv2.imwrite(str(pictures / f"{i}.jpg"), blob_image(320, 200, at=(60 + 50 * i, 100)))
    assert cli(["distill", "reshape", "tiny-det@production", "--store", str(store.root), "--multiple", "32",
                "--check", f"folder:{pictures}", "--pose", "tiny-pose", "--eval-set", str(js),
                "--max-latency-ratio", "100", "--max-ap-drop", "0.01"]) == 0
    m = store.manifest("tiny-det", 2)
    assert store.aliases("tiny-det")["production"] == 2
    assert m.input.size_multiple == 32 and (m.input.height, m.input.width) == (64, 64)
    lineage = m.model_dump(mode="json")["lineage"]
    source = lineage["reshaped_from"]
    assert source["model"] == "tiny-det:1" and source["parity_max_abs_diff"] <= 1e-4
    assert source["boxes_vs_source"]["images"] == 3
    assert "distill reshape" in lineage["command"]
    assert m.metrics["model"] == m.metrics["end_to_end"]["detector"] == "tiny-det:2"  # its own version
    again = m.metrics["production"]
    assert again["model"] == "tiny-det:1" and again["end_to_end"]["AP"] == m.metrics["end_to_end"]["AP"] < 0.99

    det = ModelRegistry(store, lambda man, d: OnnxModel(man, d, device="cpu", intra_threads=1)).get("tiny-det")
    image = blob_image(320, 150, at=(100, 100))
    assert pp.resize_for_detector(image, det.manifest.input)[0].shape == (32, 64, 3)  # 64×30, padded to 32
    boxes = PosePipeline(detector_threshold=0.0).detect(det, [image, blob_image(150, 320), blob_image(64, 64)])
    assert all(b.ndim == 2 and b.shape[1] == 5 for b in boxes)


def test_reshape_refuses_a_pose_model(tmp_path, capsys):
    store = _store_with_detector(tmp_path)
    assert cli(["distill", "reshape", "tiny-pose:1", "--store", str(store.root), "--check",
                f"folder:{tmp_path}", "--no-promote"]) == 2
    assert "not a letterboxed person detector" in capsys.readouterr().out
    assert store.versions("tiny-pose") == [1]


def test_freed_dimensions_give_the_same_outputs_at_the_old_size(tmp_path):
    import onnxruntime as ort

    from distill.reshape import free_spatial_dims

    torch.manual_seed(0)
    cfg = StudentConfig("detector", 64, 1.0, 1, "none")
    data = to_onnx(DetectorExport(build_student(cfg, None)).eval(), cfg)
    free = free_spatial_dims(data)
    a = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    b = ort.InferenceSession(free, providers=["CPUExecutionProvider"])
    assert [d if isinstance(d, int) else "free" for d in b.get_inputs()[0].shape[2:]] == ["free", "free"]
    x = np.random.default_rng(1).normal(size=(2, 3, 64, 64)).astype(np.float32)
    assert np.allclose(a.run(None, {"image": x})[0], b.run(None, {"image": x})[0], atol=1e-5)
    out = b.run(None, {"image": np.zeros((1, 3, 32, 64), np.float32)})[0]
    assert out.shape[0] == 1 and out.shape[-1] == 5
    json.dumps(out.tolist())  # finite, serialisable
