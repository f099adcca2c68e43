"""Image → model input: letterbox/stretch for detectors, affine square crops for top-down pose,
normalisation and layout from the manifest, and the inverse maps back to image pixels."""
from __future__ import annotations

import cv2
import numpy as np

from ..store.manifest import InputSpec


def to_tensor(images: list[np.ndarray] | np.ndarray, spec: InputSpec) -> np.ndarray:
    """Stack same-sized BGR uint8 images into the model's input tensor."""
    batch = np.ascontiguousarray(np.stack(images) if isinstance(images, list) else images)
    if spec.color == "RGB":
        batch = batch[..., ::-1]
    raw = spec.scale == 1.0 and not any(spec.mean) and all(s == 1.0 for s in spec.std)
    if raw:
        x = batch.astype(spec.dtype)
    else:
        mean = np.asarray(spec.mean, np.float32)
        inv_std = 1.0 / np.asarray(spec.std, np.float32)
        x = ((batch.astype(np.float32) * spec.scale - mean) * inv_std).astype(spec.dtype, copy=False)
    if spec.layout == "NCHW":
        x = x.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(x)


def resize_for_detector(image: np.ndarray, spec: InputSpec) -> tuple[np.ndarray, tuple[float, float]]:
    """The detector's view of an image and the (sx, sy) factors from image to detector pixels."""
    h, w = image.shape[:2]
    if spec.resize == "stretch":
        sx, sy = spec.width / w, spec.height / h
        return cv2.resize(image, (spec.width, spec.height), interpolation=cv2.INTER_LINEAR), (sx, sy)
    s = min(spec.width / w, spec.height / h)
    nw, nh = max(1, round(w * s)), max(1, round(h * s))
    canvas = np.zeros((spec.height, spec.width, 3), np.uint8)
    interp = cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR
    canvas[:nh, :nw] = cv2.resize(image, (nw, nh), interpolation=interp)
    return canvas, (s, s)


def crop_matrix(box: np.ndarray, margin: float, out_w: int, out_h: int) -> np.ndarray:
    """2×3 affine map from image pixels to a crop of ``out_w``×``out_h`` around ``box`` (x1,y1,x2,y2):
    centred on the box, its aspect widened to the output's, enlarged by ``margin``."""
    x1, y1, x2, y2 = (float(v) for v in box[:4])
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    bw, bh = max(x2 - x1, 1.0), max(y2 - y1, 1.0)
    aspect = out_w / out_h
    if bw / bh > aspect:
        bh = bw / aspect
    else:
        bw = bh * aspect
    s = out_w / (bw * margin)  # image pixel -> crop pixel
    return np.array([[s, 0.0, out_w / 2 - s * cx], [0.0, s, out_h / 2 - s * cy]], np.float32)


def invert(m: np.ndarray) -> np.ndarray:
    return cv2.invertAffineTransform(m)


def warp_crop(image: np.ndarray, m: np.ndarray, out_w: int, out_h: int) -> np.ndarray:
    return cv2.warpAffine(image, m, (out_w, out_h), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))


def apply_affine(points_xy: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Map (..., 2) points through a 2×3 affine matrix."""
    return points_xy @ m[:, :2].T + m[:, 2]
