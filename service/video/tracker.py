"""Multi-person tracking by detection: each frame's people are matched to the tracks with the
Hungarian method (scipy) on a similarity that is OKS between keypoints where both sides have them,
else box IoU, against each track's position predicted with its velocity. Unmatched tracks are kept
``max_lost`` frames, so a person briefly occluded gets the same id back; new tracks start only from
confident people.

Two additions for people who cross:

* an appearance cue: each person carries a colour signature of their torso and thighs (a normalised
  hue-saturation histogram, :func:`appearance`); a track keeps a running mean of it, and where two
  people are both close enough to a track, the one who looks like it wins (the similarity is blended
  with the histograms' Bhattacharyya similarity, never raised above zero by colour alone);
* a second pass for unsure people, as ByteTrack does: people below ``high_score`` (half hidden behind
  someone, blurred) are matched only to the tracks the sure people left unmatched, never start a
  track, and are dropped when they match none (``None`` id);
* observation-centric recovery, as OC-SORT does (``recovery``): a track lost for a few frames is
  predicted along a velocity it can no longer check, and drifts off the person it follows. So the sure
  people no track took are matched once more against where each lost track was last *seen*, and a track
  found again takes its velocity from its two observations across the gap instead of the stale one."""
from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from ..geometry import iou, oks_matrix

__all__ = ["Track", "Tracker", "appearance", "iou", "oks_matrix"]


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
    look: np.ndarray | None = None  # running mean of the appearance signature

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


# torso and thighs: shoulders (5, 6) and hips (11, 12), knees (13, 14)
_TORSO = (5, 6, 12, 11)
_THIGHS = ((11, 13), (12, 14))


def appearance(image: np.ndarray, kps: np.ndarray, min_score: float = 0.2, bins: tuple[int, int] = (12, 4)) -> \
        np.ndarray | None:
    """A person's colour signature: the hue-saturation histogram (L1-normalised, square-rooted for the
    Bhattacharyya similarity) of the torso quadrilateral and thigh strips; None when the shoulders and
    hips are not confident."""
    if (kps[list(_TORSO), 2] < min_score).any():
        return None
    h, w = image.shape[:2]
    pts = kps[list(_TORSO), :2]
    x1, y1 = np.floor(pts.min(0)).astype(int)
    x2, y2 = np.ceil(pts.max(0)).astype(int)
    for _, b in _THIGHS:
        if kps[b, 2] >= min_score:
            x1, y1 = min(x1, int(kps[b, 0])), min(y1, int(kps[b, 1]))
            x2, y2 = max(x2, int(kps[b, 0]) + 1), max(y2, int(kps[b, 1]) + 1)
    x1, y1, x2, y2 = max(x1, 0), max(y1, 0), min(x2, w), min(y2, h)
    if x2 - x1 < 4 or y2 - y1 < 4:
        return None
    patch = image[y1:y2, x1:x2]
    mask = np.zeros(patch.shape[:2], np.uint8)
    shift = np.array([x1, y1], np.float32)
    cv2.fillConvexPoly(mask, np.round(pts - shift).astype(np.int32), 1)
    width = max(2, int(0.15 * np.linalg.norm(pts[0] - pts[1])))
    for a, b in _THIGHS:
        if kps[b, 2] >= min_score:
            cv2.line(mask, tuple(np.round(kps[a, :2] - shift).astype(int)),
                     tuple(np.round(kps[b, :2] - shift).astype(int)), 1, width)
    if mask.sum() < 16:
        return None
    hsv = cv2.cvtColor(patch, cv2.COLOR_BGR2HSV)
    hist = cv2.calcHist([hsv], [0, 1], mask, list(bins), [0, 180, 0, 256]).reshape(-1)
    total = hist.sum()
    return np.sqrt(hist / total).astype(np.float32) if total > 0 else None


class Tracker:
    """``appearance_weight``: share of the match similarity given to the colour signature (0: off);
    ``high_score``: people below it go to the second, low-score pass (0: one pass), which continues only
    tracks seen on the previous frame at similarity ≥ ``low_match_threshold``; ``recovery``: OC-SORT's
    observation-centric recovery of lost tracks (module docstring)."""

    recovery = False  # what a tracker pickled in a job checkpoint before the option existed did

    def __init__(self, *, match_threshold: float = 0.2, max_lost: int = 30, start_score: float = 0.4,  # noqa: PLR0913
                 velocity_momentum: float = 0.6, appearance_weight: float = 0.3, high_score: float = 0.0,
                 look_momentum: float = 0.8, low_match_threshold: float = 0.5, recovery: bool = True):
        self.match_threshold = match_threshold
        self.max_lost = max_lost
        self.start_score = start_score
        self.momentum = velocity_momentum
        self.appearance_weight = appearance_weight
        self.high_score = high_score
        self.look_momentum = look_momentum
        self.low_match_threshold = low_match_threshold
        self.recovery = recovery
        self.tracks: list[Track] = []
        self.finished: list[Track] = []
        self._next_id = 1

    @property
    def active(self) -> list[Track]:
        return [t for t in self.tracks if t.lost == 0]

    def similarity(self, frame: int, boxes: np.ndarray, kps: np.ndarray, looks: list | None = None,
                   tracks: list[Track] | None = None, *, last_seen: bool = False) -> np.ndarray:
        """Tracks × people; each track where its velocity puts it at ``frame``, or with ``last_seen``
        where it was last observed."""
        tracks = self.tracks if tracks is None else tracks
        if not tracks or not len(boxes):
            return np.zeros((len(tracks), len(boxes)))
        pred = [(t.box, t.keypoints) if last_seen else t.predicted(frame) for t in tracks]
        t_boxes = np.stack([p[0] for p in pred])
        t_kps = np.stack([p[1] for p in pred])
        areas = np.maximum((t_boxes[:, 2] - t_boxes[:, 0]) * (t_boxes[:, 3] - t_boxes[:, 1]), 32.0 ** 2)
        by_box = iou(t_boxes, boxes)
        by_kps = oks_matrix(t_kps, kps, areas)
        sim = np.where(by_kps >= 0, np.maximum(by_kps, by_box), by_box)
        if self.appearance_weight > 0 and looks is not None:
            w = self.appearance_weight
            for r, t in enumerate(tracks):
                if t.look is None:
                    continue
                for c, look in enumerate(looks):
                    if look is not None and sim[r, c] > 0:  # Bhattacharyya coefficient of the two histograms
                        sim[r, c] = (1 - w) * sim[r, c] + w * float(np.dot(t.look, look)) * min(1.0, 2 * sim[r, c])
        return sim

    def _assign(self, frame: int, people: list[int], tracks: list[int], boxes, kps, looks, ids,  # noqa: PLR0913
                threshold: float, last_seen: bool = False) -> set[int]:
        """Hungarian matching of ``people`` to ``tracks`` (indices) at similarity ≥ ``threshold``; returns
        the matched track indices."""
        from scipy.optimize import linear_sum_assignment

        if not people or not tracks:
            return set()
        sim = self.similarity(frame, boxes[people], kps[people], [looks[i] for i in people],
                              [self.tracks[t] for t in tracks], last_seen=last_seen)
        matched = set()
        rows, cols = linear_sum_assignment(-sim)
        for r, c in zip(rows, cols):
            if sim[r, c] >= threshold:
                track = self.tracks[tracks[r]]
                self._extend(track, frame, boxes[people[c]], kps[people[c]], looks[people[c]])
                ids[people[c]] = track.id
                matched.add(tracks[r])
        return matched

    def update(self, frame: int, boxes: np.ndarray, kps: np.ndarray, scores: np.ndarray,
               looks: list | None = None) -> list[int | None]:
        """Match this frame's people to tracks; returns a track id per person (None: not tracked, a
        person too unsure to start a track or an unsure one no track wanted). ``looks``: each person's
        :func:`appearance` signature (or None)."""
        boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
        kps = np.asarray(kps, np.float32).reshape(-1, 17, 3)
        scores = np.asarray(scores, np.float32).reshape(-1)
        looks = list(looks) if looks is not None else [None] * len(boxes)
        ids: list[int | None] = [None] * len(boxes)
        sure = [i for i in range(len(boxes)) if scores[i] >= self.high_score]
        unsure = [i for i in range(len(boxes)) if scores[i] < self.high_score]
        matched_tracks = self._assign(frame, sure, list(range(len(self.tracks))), boxes, kps, looks, ids,
                                      self.match_threshold)
        if self.recovery:  # lost tracks at their last observation, for the sure people no track took
            lost = [t for t in range(len(self.tracks)) if t not in matched_tracks and self.tracks[t].lost > 0]
            matched_tracks |= self._assign(frame, [i for i in sure if ids[i] is None], lost, boxes, kps, looks, ids,
                                           self.match_threshold, last_seen=True)
        # the second pass: only tracks seen on the previous frame, and a close match (an unsure person
        # half hidden behind another must not pull a track onto the one in front)
        left = [t for t in range(len(self.tracks)) if t not in matched_tracks and self.tracks[t].lost == 0]
        matched_tracks |= self._assign(frame, unsure, left, boxes, kps, looks, ids, self.low_match_threshold)
        for i in sure:
            if ids[i] is None and scores[i] >= self.start_score:
                track = Track(self._next_id, boxes[i].copy(), kps[i].copy(), frame, frame, look=looks[i])
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

    def _extend(self, track: Track, frame: int, box: np.ndarray, kps: np.ndarray, look: np.ndarray | None = None) \
            -> None:
        gap = max(frame - track.last_frame, 1)
        step = (_centre(kps, box) - _centre(track.keypoints, track.box)) / gap
        if self.recovery and track.lost > 0:  # found again: the velocity across the gap, from what was seen
            track.velocity = step.astype(np.float32)
        else:
            track.velocity = self.momentum * track.velocity + (1 - self.momentum) * step
        track.box, track.keypoints = box.copy(), kps.copy()
        track.last_frame, track.lost = frame, 0
        track.frames += 1
        if look is not None:
            if track.look is None:
                track.look = look
            else:
                mixed = self.look_momentum * track.look + (1 - self.look_momentum) * look
                track.look = (mixed / max(float(np.linalg.norm(mixed)), 1e-9)).astype(np.float32)

    def all_tracks(self) -> list[Track]:
        return sorted(self.finished + self.tracks, key=lambda t: t.id)
