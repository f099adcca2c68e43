"""Typed results shared by the HTTP client and the in-process API: the same objects whichever way
the keypoints were computed."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..formats import coco_results
from ..keypoints import COCO17
from ..person import Person

__all__ = ["Person", "PoseResult", "VideoResult"]


@dataclass
class PoseResult:
    """The people found in one image."""
    people: list[Person]
    width: int
    height: int
    model: str | None = None  # name:version
    detector: str | None = None  # name:version, None when boxes were given
    timing_ms: dict[str, float] = field(default_factory=dict)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> PoseResult:
        def ref(m):  # the API's {"name", "version"}, or the "name:version" this class writes
            return f"{m['name']}:{m['version']}" if isinstance(m, dict) else m
        return cls([Person.from_dict(p) for p in d["people"]], int(d["image"]["width"]),
                   int(d["image"]["height"]), ref(d.get("model")), ref(d.get("detector")),
                   dict(d.get("timing_ms") or {}))

    def to_dict(self) -> dict[str, Any]:
        return {"image": {"width": self.width, "height": self.height}, "model": self.model,
                "detector": self.detector, "keypoint_names": list(COCO17),
                "people": [p.to_dict() for p in self.people], "timing_ms": self.timing_ms}

    def to_coco(self, image_id: int) -> list[dict[str, Any]]:
        """COCO keypoint results (pycocotools ``loadRes``)."""
        return coco_results((p.to_dict() for p in self.people), image_id)

    def draw(self, image: np.ndarray, min_score: float = 0.2) -> np.ndarray:
        """A copy of ``image`` (BGR, the original size) with boxes, skeletons and scores drawn."""
        from ..drawing import draw
        return draw(image, [p.to_dict() for p in self.people], min_score=min_score)


@dataclass
class VideoResult:
    """A finished video job: per-frame tracked people, the tracks, and the raw JSON."""
    frames: list[list[Person]]
    times: list[float]
    tracks: list[dict[str, Any]]
    video: dict[str, Any]
    raw: dict[str, Any]
    job_id: str | None = None  # the service's job (its overlay: Client.overlay(job_id)); None offline

    @classmethod
    def from_json(cls, d: dict[str, Any], job_id: str | None = None) -> VideoResult:
        return cls([[Person.from_dict(p) for p in f["people"]] for f in d["frames"]],
                   [float(f["time"]) for f in d["frames"]], list(d["tracks"]), dict(d["video"]), d, job_id)

    def to_posetrack(self, video_id: int = 1, name: str = "video") -> dict[str, Any]:
        from ..formats import posetrack
        return posetrack(self.raw, video_id=video_id, name=name)
