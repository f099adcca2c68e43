"""Image → model input: letterbox/stretch for detectors, affine square crops for top-down pose,
normalisation and layout from the manifest, and the inverse maps back to image pixels."""
from __future__ import annotations

import cv2
import numpy as np

from ..store.manifest import InputSpec


def to_tensor(images: list[np.ndarray] | np.ndarray, spec: InputSpec) -> np.ndarray:
    """Stack same-sized BGR uint8 images into the model's input tensor.

    Channel order, normalisation and layout are applied in one pass per channel, written straight into
    the output array, instead of a chain of whole-batch temporaries (flip, cast, scale, shift, transpose,
    copy); `posekd bench preprocess` measures both side by side (bench/RESULTS.md)."""
    batch = np.stack(images) if isinstance(images, list) else np.asarray(images)
    n, h, w, channels = batch.shape
    order = range(channels - 1, -1, -1) if spec.color == "RGB" else range(channels)
    dtype = np.dtype(spec.dtype)
    nchw = spec.layout == "NCHW"
    x = np.empty((n, channels, h, w) if nchw else (n, h, w, channels), dtype)
    raw = spec.scale == 1.0 and not any(spec.mean) and all(s == 1.0 for s in spec.std)
    for c, src in enumerate(order):
        out = x[:, c] if nchw else x[..., c]
        if raw:
            out[...] = batch[..., src]
            continue
        # (v * scale - mean) / std  ==  v * (scale / std) - mean / std, computed in float32
        gain = np.float32(spec.scale / spec.std[c])
        shift = np.float32(spec.mean[c] / spec.std[c])
        if dtype == np.float32:
            np.multiply(batch[..., src], gain, out=out, casting="unsafe")
            out -= shift
        else:
            out[...] = batch[..., src] * gain - shift
    return x


def resize_for_detector(image: np.ndarray, spec: InputSpec) -> tuple[np.ndarray, tuple[float, float]]:
    """The detector's view of an image and the (sx, sy) factors from image to detector pixels. The view is
    ``spec.height``×``spec.width``, or smaller where the graph takes any multiple of ``spec.size_multiple``."""
    h, w = image.shape[:2]
    if spec.resize == "stretch":
        sx, sy = spec.width / w, spec.height / h
        return cv2.resize(image, (spec.width, spec.height), interpolation=cv2.INTER_LINEAR), (sx, sy)
    s = min(spec.width / w, spec.height / h)
    nw, nh = max(1, round(w * s)), max(1, round(h * s))
    out_w, out_h = spec.width, spec.height
    if spec.size_multiple:  # a graph that takes any multiple: pad only up to the next one
        k = spec.size_multiple
        out_w, out_h = min(out_w, -(-nw // k) * k), min(out_h, -(-nh // k) * k)
    canvas = np.zeros((out_h, out_w, 3), np.uint8)
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
