"""From the pose stage's raw answers to people: one score per person, one answer per person.

* :func:`person_scores`: how sure we are that a box holds a whole-enough person. The detector's box
  score alone cannot tell a head, a dog or a poster from a person, and the keypoints' mean score alone
  cannot tell a crop that holds half of someone from one that holds all of them. The score combines
  the box score, the confident keypoints (their summed score over all 17, so five sure face points
  count less than a sure body) and their spread over the box (a skeleton squeezed into a corner of its
  box is a blob, not a person).
* :func:`oks_nms`: duplicate suppression after the pose stage, as top-down pipelines do before they
  score: two boxes on one person give two near-identical skeletons that box NMS keeps (their boxes
  differ) but whose keypoints agree; the better-scored one stays.
* :func:`stacked_pairs`: the duplicates that remain, counted the way a user sees them (the benchmark's
  and the data tests' measure).

Hand-written because no maintained package does this on plain arrays without pulling a framework in
(mmpose's versions need torch and mmcv); the formulas are COCO's OKS (``service.geometry``)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..geometry import greedy_keep, oks_matrix


@dataclass(frozen=True)
class PersonScoring:
    """How a person's score is made from the box score and the keypoints (see the module docstring).

    score = box_score ** box_weight × quality ** (1 - box_weight) × min(1, spread / full_spread)
    where quality = Σ_k s_k·[s_k ≥ min_keypoint] / 17 and spread = √(area of the confident keypoints'
    bounding box / area of the person's box). ``box_weight`` 0 and ``full_spread`` 0 leave the
    keypoints alone in charge (``legacy``: the mean keypoint score, what the service returned before).
    With ``inside_margin`` > 0 the score is also multiplied by the share of the confident keypoints that
    lie inside the box grown by that fraction each side: a crop whose skeleton went to a neighbour scores
    low."""

    box_weight: float = 0.5
    min_keypoint: float = 0.2
    full_spread: float = 0.45
    inside_margin: float = 0.15  # > 0: × the share of confident keypoints inside the box grown by this
    legacy: bool = False


def keypoint_quality(kps: np.ndarray, min_keypoint: float = 0.2) -> np.ndarray:
    """(M, 17, 3) → (M,): the confident keypoints' summed score over all 17 keypoints."""
    s = kps[..., 2]
    return np.where(s >= min_keypoint, s, 0.0).sum(-1) / kps.shape[1]


def keypoint_spread(kps: np.ndarray, boxes: np.ndarray, min_keypoint: float = 0.2) -> np.ndarray:
    """(M,): √(area spanned by the confident keypoints / box area); 0 with fewer than two of them."""
    out = np.zeros(len(kps), np.float64)
    for i, (kp, box) in enumerate(zip(kps, boxes)):
        good = kp[kp[:, 2] >= min_keypoint, :2]
        if len(good) < 2:
            continue
        span = np.maximum(good.max(0) - good.min(0), 1.0)
        area = max(float(box[2] - box[0]) * float(box[3] - box[1]), 1.0)
        out[i] = np.sqrt(span[0] * span[1] / area)
    return out


def inside_grown_box(kps: np.ndarray, boxes: np.ndarray, margin: float) -> np.ndarray:
    """(M, 17) bool: whether each keypoint lies inside its person's box grown by ``margin`` × its size
    per side."""
    w = (boxes[:, 2] - boxes[:, 0])[:, None]
    h = (boxes[:, 3] - boxes[:, 1])[:, None]
    x, y = kps[..., 0], kps[..., 1]
    return ((x >= boxes[:, :1] - margin * w) & (x <= boxes[:, 2:3] + margin * w)
            & (y >= boxes[:, 1:2] - margin * h) & (y <= boxes[:, 3:4] + margin * h))


def keypoints_inside(kps: np.ndarray, boxes: np.ndarray, margin: float, min_keypoint: float = 0.2) -> np.ndarray:
    """(M,): share of the confident keypoints inside each box grown by ``margin`` × its size per side."""
    inside = inside_grown_box(kps, boxes, margin)
    good = kps[..., 2] >= min_keypoint
    return np.where(good.sum(1) > 0, (inside & good).sum(1) / np.maximum(good.sum(1), 1), 0.0)


def person_scores(box_scores: np.ndarray, kps: np.ndarray, boxes: np.ndarray,
                  scoring: PersonScoring = PersonScoring()) -> np.ndarray:
    """(M,) person scores in 0..1 for the people of one image."""
    kps = np.asarray(kps, np.float32).reshape(-1, 17, 3)
    if scoring.legacy or not len(kps):
        return kps[..., 2].mean(-1).astype(np.float64)
    quality = keypoint_quality(kps, scoring.min_keypoint)
    box = np.clip(np.asarray(box_scores, np.float64), 0.0, 1.0)
    score = box ** scoring.box_weight * quality ** (1.0 - scoring.box_weight)
    if scoring.full_spread > 0:
        spread = keypoint_spread(kps, boxes, scoring.min_keypoint)
        score *= np.minimum(1.0, spread / scoring.full_spread)
    if scoring.inside_margin > 0:
        score *= keypoints_inside(kps, np.asarray(boxes, np.float64), scoring.inside_margin, scoring.min_keypoint)
    return score


def keypoint_boxes(kps: np.ndarray, scores: np.ndarray, min_keypoint: float = 0.2, min_count: int = 4,
                   grow: float = 0.1) -> np.ndarray:
    """Boxes (M, 5) around people given only by keypoints (M, 17, 3): the confident keypoints' bounding
    box grown by ``grow`` of its size each side, with ``scores``; NaN rows for people with fewer than
    ``min_count`` confident keypoints (no box can be told for them)."""
    kps = np.asarray(kps, np.float32).reshape(-1, 17, 3)
    out = np.full((len(kps), 5), np.nan, np.float32)
    for i, person in enumerate(kps):
        sure = person[person[:, 2] >= min_keypoint, :2]
        if len(sure) < min_count:
            continue
        lo, hi = sure.min(0), sure.max(0)
        pad = (hi - lo) * grow
        out[i] = [*(lo - pad), *(hi + pad), scores[i]]
    return out


def oks_similarity(kps: np.ndarray, areas: np.ndarray, min_keypoint: float = 0.2) -> np.ndarray:
    """(M, M) COCO OKS of each person's keypoints against every other's, over the keypoints confident
    in both, scaled by row ``areas``; 0 where fewer than two keypoints are shared."""
    return oks_matrix(kps, kps, areas, min_keypoint, inclusive=True, min_shared=2, missing=0.0)


def oks_nms(kps: np.ndarray, boxes: np.ndarray, scores: np.ndarray, threshold: float = 0.9) -> np.ndarray:
    """Indices of the people kept, best first: greedily, a person whose OKS with a kept, better-scored
    person passes ``threshold`` is a duplicate of them. The OKS of a pair is taken at the larger of their
    two boxes: a wide crop that decoded the same person as a tight one is a duplicate at either scale,
    and at the tight box's scale alone the same skeleton looked like someone else (seen: OKS 0.59 at the
    small box, 0.87 at the large one, for one person drawn twice)."""
    if len(kps) == 0:
        return np.zeros(0, np.int64)
    order = np.argsort(-np.asarray(scores), kind="stable")
    kps, boxes = np.asarray(kps, np.float64)[order], np.asarray(boxes, np.float64)[order]
    areas = np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)
    sim = oks_similarity(kps, areas)  # row i at person i's area; OKS grows with the area, so the larger
    return order[greedy_keep(np.maximum(sim, sim.T), threshold)]  # of the two is the pair's at the larger


def stacked_pairs(kps: np.ndarray, boxes: np.ndarray, min_keypoint: float = 0.3, min_shared: int = 6,
                  max_distance: float = 0.05) -> list[tuple[int, int]]:
    """Pairs of answers that are one person drawn twice: at least ``min_shared`` keypoints confident in
    both, whose mean distance is under ``max_distance`` × the box size (√ of the larger box's area)."""
    kps = np.asarray(kps, np.float64).reshape(-1, 17, 3)
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    pairs = []
    for i in range(len(kps)):
        for j in range(i + 1, len(kps)):
            both = (kps[i, :, 2] >= min_keypoint) & (kps[j, :, 2] >= min_keypoint)
            if both.sum() < min_shared:
                continue
            dist = np.linalg.norm(kps[i, both, :2] - kps[j, both, :2], axis=-1).mean()
            size = max(np.sqrt(max((b[2] - b[0]) * (b[3] - b[1]), 1.0)) for b in (boxes[i], boxes[j]))
            if dist < max_distance * size:
                pairs.append((i, j))
    return pairs


__all__ = ["PersonScoring", "inside_grown_box", "keypoint_boxes", "keypoint_quality", "keypoint_spread",
           "keypoints_inside", "oks_nms", "oks_similarity", "person_scores", "stacked_pairs"]
