"""Typed results shared by the HTTP client and the in-process API: the same objects whichever way
the keypoints were computed."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..formats import coco_results
from ..keypoints import COCO17


@dataclass(frozen=True)
class Person:
    """One person: ``bbox`` (x1, y1, x2, y2), ``score`` (mean keypoint score) and ``keypoints``, a
    (17, 3) array of x, y, score in COCO-17 order, in the original image's pixels."""
    bbox: tuple[float, float, float, float]
    score: float
    keypoints: np.ndarray
    track_id: int | None = None

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Person:
        return cls(tuple(float(v) for v in d["bbox"]), float(d["score"]),  # type: ignore[arg-type]
                   np.asarray(d["keypoints"], np.float32).reshape(17, 3), d.get("track_id"))

    def keypoint(self, name: str) -> tuple[float, float, float]:
        """(x, y, score) of a keypoint by its COCO name, e.g. ``"left_wrist"``."""
        x, y, s = self.keypoints[COCO17.index(name)]
        return float(x), float(y), float(s)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"bbox": [round(v, 2) for v in self.bbox], "score": round(self.score, 4),
                               "keypoints": [[round(float(x), 2), round(float(y), 2), round(float(s), 4)]
                                             for x, y, s in self.keypoints]}
        if self.track_id is not None:
            out["track_id"] = self.track_id
        return out


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
