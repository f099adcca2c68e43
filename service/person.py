"""One person, the one type every layer uses: the pipeline's result, the wire form between worker and
API, the client's result, a tracked person in a video frame. Its JSON form (:meth:`Person.to_dict`) is
written in one place, with one rounding."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .keypoints import COCO17


@dataclass
class Person:
    """``bbox`` (x1, y1, x2, y2), ``score`` (the person score) and ``keypoints``, a (17, 3) array of x, y,
    score in COCO-17 order, in the image's pixels; ``track_id`` for a person tracked through a video."""
    bbox: tuple[float, float, float, float]
    score: float
    keypoints: np.ndarray
    track_id: int | None = None

    @classmethod
    def of(cls, bbox: Sequence[float] | np.ndarray, score: float, keypoints: np.ndarray,
           track_id: int | None = None) -> Person:
        x1, y1, x2, y2 = (float(v) for v in bbox[:4])
        return cls((x1, y1, x2, y2), float(score), np.asarray(keypoints, np.float32).reshape(17, 3), track_id)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Person:
        """Back from :meth:`to_dict` (the API's JSON, a worker's reply)."""
        return cls.of(d["bbox"], d["score"], np.asarray(d["keypoints"], np.float32), d.get("track_id"))

    def to_dict(self) -> dict[str, Any]:
        """The public JSON form: pixels to 0.01, scores to 0.0001 (rounding twice changes nothing)."""
        out: dict[str, Any] = {"bbox": [round(float(v), 2) for v in self.bbox], "score": round(float(self.score), 4),
                               "keypoints": [[round(float(x), 2), round(float(y), 2), round(float(s), 4)]
                                             for x, y, s in self.keypoints]}
        if self.track_id is not None:
            out["track_id"] = int(self.track_id)
        return out

    def keypoint(self, name: str) -> tuple[float, float, float]:
        """(x, y, score) of a keypoint by its COCO name, e.g. ``"left_wrist"``."""
        x, y, s = self.keypoints[COCO17.index(name)]
        return float(x), float(y), float(s)

    def scaled(self, factor: float) -> Person:
        """The same person in pixels ``factor`` times larger (an image decoded reduced → the original)."""
        if factor == 1.0:
            return self
        kps = self.keypoints * np.array([factor, factor, 1.0], np.float32)
        return Person(tuple(v * factor for v in self.bbox), self.score, kps, self.track_id)  # type: ignore[arg-type]
