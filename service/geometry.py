"""Boxes and keypoints, shared by the pipeline, the tracker and the distillation tools: IoU, greedy
NMS, OKS (COCO's object keypoint similarity) in its two uses, and the logistic function the decoders
apply to logits."""
from __future__ import annotations

import numpy as np

from .keypoints import OKS_SIGMAS

SIGMAS = np.asarray(OKS_SIGMAS, np.float64)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU between (N, 4) and (M, 4) boxes (x1, y1, x2, y2) → (N, M)."""
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


def nms(boxes: np.ndarray, threshold: float) -> np.ndarray:
    """Greedy non-maximum suppression over (M, 5) boxes (x1, y1, x2, y2, score); the kept rows, best
    first."""
    if len(boxes) == 0:
        return boxes
    boxes = boxes[np.argsort(-boxes[:, 4])]
    return boxes[greedy_keep(iou(boxes[:, :4], boxes[:, :4]), threshold)]


def greedy_keep(similarity: np.ndarray, threshold: float) -> list[int]:
    """Greedy suppression over items sorted best first: an item is kept unless its ``similarity`` (N, N)
    with an item kept before it passes ``threshold``; the kept indices, in order."""
    keep: list[int] = []
    suppressed = np.zeros(len(similarity), bool)
    for i in range(len(similarity)):
        if suppressed[i]:
            continue
        keep.append(i)
        suppressed |= similarity[i] > threshold
    return keep


def oks_matrix(a: np.ndarray, b: np.ndarray, areas: np.ndarray, min_score: float = 0.2, *,  # noqa: PLR0913
               inclusive: bool = False, min_shared: int = 3, missing: float = -1.0) -> np.ndarray:
    """Similarity between (N, 17, 3) and (M, 17, 3) keypoints over the keypoints confident on both
    sides (score > ``min_score``, or ≥ with ``inclusive``), scaled by ``areas`` (N,) → (N, M);
    ``missing`` where fewer than ``min_shared`` keypoints are shared (tracking: -1 below 3)."""
    d2 = ((a[:, None, :, :2] - b[None, :, :, :2]) ** 2).sum(-1)  # (N, M, 17)
    var = (2 * SIGMAS) ** 2
    e = d2 / (var[None, None, :] * np.maximum(areas, 1.0)[:, None, None] * 2)
    sa, sb = a[:, None, :, 2], b[None, :, :, 2]
    visible = (sa >= min_score) & (sb >= min_score) if inclusive else (sa > min_score) & (sb > min_score)
    count = visible.sum(-1)
    score = (np.exp(-e) * visible).sum(-1) / np.maximum(count, 1)
    return np.where(count >= min_shared, score, missing)


def oks_to_reference(a: np.ndarray, ref: np.ndarray, area: float, min_score: float = 0.3) -> float | None:
    """COCO's OKS of keypoints ``a`` against a reference ``ref`` (both (17, 3)) over the reference's
    confident points (evaluation against a teacher); None when it has none."""
    vis = ref[:, 2] > min_score
    if not vis.any():
        return None
    d2 = ((a[:, :2] - ref[:, :2]) ** 2).sum(-1)
    e = d2 / ((2 * SIGMAS) ** 2 * max(area, 1.0) * 2)
    return float(np.exp(-e[vis]).mean())
