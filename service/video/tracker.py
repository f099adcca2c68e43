"""Multi-person tracking by detection: each frame's people are matched to the tracks with the
Hungarian method (scipy) on a similarity that is OKS between keypoints where both sides have them,
else box IoU, against each track's position predicted with its velocity. Unmatched tracks are kept
``max_lost`` frames, so a person briefly occluded gets the same id back; new tracks start only from
confident people."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..geometry import iou, oks_matrix

__all__ = ["Track", "Tracker", "iou", "oks_matrix"]


@dataclass
class Track:
    id: int
    box: np.ndarray  # (4,) x1 y1 x2 y2, last seen
    keypoints: np.ndarray  # (17, 3), last seen
    first_frame: int
    last_frame: int
    velocity: np.ndarray = field(default_factory=lambda: np.zeros(2, np.float32))  # px per frame
    frames: int = 1
    lost: int = 0

    def predicted(self, frame: int) -> tuple[np.ndarray, np.ndarray]:
        """Box and keypoints moved along the velocity to ``frame``."""
        shift = self.velocity * (frame - self.last_frame)
        kps = self.keypoints.copy()
        kps[:, :2] += shift
        return self.box + np.tile(shift, 2), kps


def _centre(kps: np.ndarray, box: np.ndarray, min_score: float = 0.2) -> np.ndarray:
    """Where a person is: the mean of the confident keypoints (the same on keyframes, whose boxes come
    from the detector, and between them, whose boxes come from the keypoints), else the box centre."""
    good = kps[kps[:, 2] >= min_score, :2]
    return good.mean(0) if len(good) >= 3 else (box[:2] + box[2:]) / 2


class Tracker:
    def __init__(self, *, match_threshold: float = 0.2, max_lost: int = 30, start_score: float = 0.4,
                 velocity_momentum: float = 0.6):
        self.match_threshold = match_threshold
        self.max_lost = max_lost
        self.start_score = start_score
        self.momentum = velocity_momentum
        self.tracks: list[Track] = []
        self.finished: list[Track] = []
        self._next_id = 1

    @property
    def active(self) -> list[Track]:
        return [t for t in self.tracks if t.lost == 0]

    def similarity(self, frame: int, boxes: np.ndarray, kps: np.ndarray) -> np.ndarray:
        if not self.tracks or not len(boxes):
            return np.zeros((len(self.tracks), len(boxes)))
        pred = [t.predicted(frame) for t in self.tracks]
        t_boxes = np.stack([p[0] for p in pred])
        t_kps = np.stack([p[1] for p in pred])
        areas = np.maximum((t_boxes[:, 2] - t_boxes[:, 0]) * (t_boxes[:, 3] - t_boxes[:, 1]), 32.0 ** 2)
        by_box = iou(t_boxes, boxes)
        by_kps = oks_matrix(t_kps, kps, areas)
        return np.where(by_kps >= 0, np.maximum(by_kps, by_box), by_box)

    def update(self, frame: int, boxes: np.ndarray, kps: np.ndarray, scores: np.ndarray) -> list[int | None]:
        """Match this frame's people to tracks; returns a track id per person (None: not tracked, a
        person too unsure to start a track)."""
        from scipy.optimize import linear_sum_assignment

        boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
        kps = np.asarray(kps, np.float32).reshape(-1, 17, 3)
        ids: list[int | None] = [None] * len(boxes)
        sim = self.similarity(frame, boxes, kps)
        matched_tracks = set()
        if sim.size:
            rows, cols = linear_sum_assignment(-sim)
            for r, c in zip(rows, cols):
                if sim[r, c] >= self.match_threshold:
                    self._extend(self.tracks[r], frame, boxes[c], kps[c])
                    ids[c] = self.tracks[r].id
                    matched_tracks.add(r)
        for i, (box, kp, score) in enumerate(zip(boxes, kps, scores)):
            if ids[i] is None and score >= self.start_score:
                track = Track(self._next_id, box.copy(), kp.copy(), frame, frame)
                self._next_id += 1
                self.tracks.append(track)
                matched_tracks.add(len(self.tracks) - 1)
                ids[i] = track.id
        keep = []
        for idx, track in enumerate(self.tracks):
            if idx not in matched_tracks:
                track.lost += 1
            if track.lost > self.max_lost:
                self.finished.append(track)
            else:
                keep.append(track)
        self.tracks = keep
        return ids

    def _extend(self, track: Track, frame: int, box: np.ndarray, kps: np.ndarray) -> None:
        gap = max(frame - track.last_frame, 1)
        step = (_centre(kps, box) - _centre(track.keypoints, track.box)) / gap
        track.velocity = self.momentum * track.velocity + (1 - self.momentum) * step
        track.box, track.keypoints = box.copy(), kps.copy()
        track.last_frame, track.lost = frame, 0
        track.frames += 1

    def all_tracks(self) -> list[Track]:
        return sorted(self.finished + self.tracks, key=lambda t: t.id)
