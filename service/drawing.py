"""Drawing people on a picture: boxes, skeletons and labels. Shared by the overlay MP4, the rendered
image route and the client (``PoseResult.draw``); it needs OpenCV and nothing of the server."""
from __future__ import annotations

import numpy as np

from .keypoints import SKELETON


def _color(track_id: int) -> tuple[int, int, int]:
    """A stable, distinct BGR colour per track (golden-ratio hue steps)."""
    import colorsys
    r, g, b = colorsys.hsv_to_rgb((track_id * 0.618034) % 1.0, 0.85, 1.0)
    return int(b * 255), int(g * 255), int(r * 255)


def draw(image: np.ndarray, people: list[dict], min_score: float = 0.2, scale: float = 1.0) -> np.ndarray:
    """Boxes, skeletons and labels (``#track`` for tracked people, the score otherwise) over a copy of
    ``image``; coordinates are divided by ``scale`` (an image decoded reduced)."""
    import cv2
    out = image.copy()
    thick = max(1, round(max(image.shape[:2]) / 800))
    for i, person in enumerate(people):
        color = _color(person.get("track_id", i))
        x1, y1, x2, y2 = (int(round(v / scale)) for v in person["bbox"])
        cv2.rectangle(out, (x1, y1), (x2, y2), color, thick, cv2.LINE_AA)
        label = f"#{person['track_id']}" if "track_id" in person else f"{person['score']:.2f}"
        (tw, th), _ = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, 0.5 * thick, thick)
        # above the box, or inside it where the box touches the top edge; never past the right edge
        ty = y1 - 4 if y1 - 4 - th >= 0 else y1 + th + 4
        tx = min(max(x1, 0), max(out.shape[1] - tw, 0))
        cv2.putText(out, label, (tx, ty), cv2.FONT_HERSHEY_SIMPLEX, 0.5 * thick, color, thick, cv2.LINE_AA)
        kps = [(x / scale, y / scale, s) for x, y, s in person["keypoints"]]
        for a, b in SKELETON:
            if kps[a][2] >= min_score and kps[b][2] >= min_score:
                cv2.line(out, (int(kps[a][0]), int(kps[a][1])), (int(kps[b][0]), int(kps[b][1])), color, 2 * thick,
                         cv2.LINE_AA)
        for x, y, s in kps:
            if s >= min_score:
                cv2.circle(out, (int(x), int(y)), 3 * thick, color, -1, cv2.LINE_AA)
    return out
