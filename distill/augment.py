"""Augmented views of a person for consistent teaching: the teacher labels exactly the view the
student will see. A view is an affine crop (random scale, rotation, shift, horizontal flip, half-body)
plus photometric changes (colour, blur) and a random occluder, applied to the crop itself."""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from service.keypoints import FLIP_PAIRS

UPPER = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10]
LOWER = [11, 12, 13, 14, 15, 16]
FLIP_INDEX = np.arange(17)
for _a, _b in FLIP_PAIRS:
    FLIP_INDEX[_a], FLIP_INDEX[_b] = _b, _a


@dataclass
class AugmentConfig:
    margin: float = 1.25          # the serving crop: box squared and enlarged by this much
    scale: tuple[float, float] = (0.75, 1.3)
    rotate: float = 30.0          # degrees, applied with probability p_rotate
    p_rotate: float = 0.5
    shift: float = 0.08           # of the crop size
    p_flip: float = 0.5
    p_half_body: float = 0.15
    p_color: float = 0.8
    p_blur: float = 0.1
    p_occlude: float = 0.3
    p_identity: float = 0.1       # some views exactly as served (no geometric change)


def view_matrix(box: np.ndarray, size: int, rng: np.random.Generator, cfg: AugmentConfig,
                keypoints: np.ndarray | None = None, identity: bool = False) -> tuple[np.ndarray, bool]:
    """2×3 map from image pixels to a ``size``×``size`` view around ``box``; returns (matrix, flipped)."""
    x1, y1, x2, y2 = (float(v) for v in box[:4])
    if not identity and keypoints is not None and rng.random() < cfg.p_half_body:
        part = UPPER if rng.random() < 0.6 else LOWER
        pts = keypoints[part]
        pts = pts[pts[:, 2] > 0]
        if len(pts) >= 3:
            x1, y1 = pts[:, :2].min(0)
            x2, y2 = pts[:, :2].max(0)
            w, h = x2 - x1, y2 - y1
            x1, x2, y1, y2 = x1 - 0.15 * w, x2 + 0.15 * w, y1 - 0.15 * h, y2 + 0.15 * h
    elif not identity and keypoints is None and rng.random() < cfg.p_half_body:
        h = y2 - y1
        y1, y2 = (y1, y1 + 0.55 * h) if rng.random() < 0.6 else (y1 + 0.45 * h, y2)
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    side = max(x2 - x1, y2 - y1, 2.0) * cfg.margin
    angle, flip = 0.0, False
    if not identity:
        side *= rng.uniform(*cfg.scale)
        cx += rng.uniform(-cfg.shift, cfg.shift) * side
        cy += rng.uniform(-cfg.shift, cfg.shift) * side
        if rng.random() < cfg.p_rotate:
            angle = float(np.clip(rng.normal(0, cfg.rotate / 2), -cfg.rotate, cfg.rotate))
        flip = rng.random() < cfg.p_flip
    s = size / side
    a = np.deg2rad(angle)
    ca, sa = np.cos(a) * s, np.sin(a) * s
    m = np.array([[ca, sa, 0.0], [-sa, ca, 0.0]], np.float64)
    m[:, 2] = np.array([size / 2, size / 2]) - m[:, :2] @ np.array([cx, cy])
    if flip:
        m = np.array([[-1.0, 0.0, size - 1.0], [0.0, 1.0, 0.0]]) @ np.vstack([m, [0, 0, 1]])
    return m.astype(np.float32), flip


def scale_matrix(m: np.ndarray, factor: float) -> np.ndarray:
    """The same view at another resolution (pixel centres kept aligned)."""
    s = np.array([[factor, 0, 0.5 * factor - 0.5], [0, factor, 0.5 * factor - 0.5], [0, 0, 1]], np.float64)
    return (s @ np.vstack([m, [0, 0, 1]]))[:2].astype(np.float32)


def warp(image: np.ndarray, m: np.ndarray, size: int) -> np.ndarray:
    return cv2.warpAffine(image, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                          borderValue=(0, 0, 0))


def transform_keypoints(kps: np.ndarray, m: np.ndarray, size: int, flipped: bool) -> np.ndarray:
    """Human labels into the view: (17, 3) with v kept, zero where the point leaves the view."""
    out = kps.copy()
    out[:, :2] = kps[:, :2] @ m[:, :2].T + m[:, 2]
    if flipped:
        out = out[FLIP_INDEX]
    inside = (out[:, 0] >= 0) & (out[:, 0] <= size - 1) & (out[:, 1] >= 0) & (out[:, 1] <= size - 1)
    out[~inside | (kps[FLIP_INDEX if flipped else slice(None), 2] <= 0), 2] = 0
    return out


def photometric(views: list[np.ndarray], rng: np.random.Generator, cfg: AugmentConfig) -> None:
    """Same colour change, blur and occluder on every resolution of one view (in place)."""
    if rng.random() < cfg.p_color:
        alpha = rng.uniform(0.65, 1.35)       # contrast
        beta = rng.uniform(-30, 30)           # brightness
        sat = rng.uniform(0.6, 1.4)
        for v in views:
            f = v.astype(np.float32)
            grey = f.mean(-1, keepdims=True)
            f = grey + (f - grey) * sat
            v[:] = np.clip(f * alpha + beta, 0, 255).astype(np.uint8)
    if rng.random() < cfg.p_blur:
        strength = rng.uniform(0.3, 1.0)
        for v in views:
            v[:] = cv2.GaussianBlur(v, (0, 0), strength * v.shape[0] / 192)
    if rng.random() < cfg.p_occlude:
        fw, fh = rng.uniform(0.1, 0.35, 2)
        fx, fy = rng.uniform(0.05, 0.95 - fw), rng.uniform(0.05, 0.95 - fh)
        colour = rng.integers(0, 256, 3)
        for v in views:
            n = v.shape[0]
            v[int(fy * n):int((fy + fh) * n), int(fx * n):int((fx + fw) * n)] = colour


def dim_light(images: np.ndarray, rng: np.random.Generator, p: float) -> np.ndarray:
    """Letterboxed views (N, S, S, 3) uint8 with ``p`` of them made to look shot in dim light: a gamma
    curve that sinks the mid-tones, a lower exposure, a slight colour cast and sensor noise. Only the
    picture is changed, not the black letterbox padding beside it. The teacher's boxes stay those it
    gave on the well-lit view, so the student learns to find in the dark the people the teacher found
    in the light (the wedding in a dim room that the detector missed)."""
    out = images
    for i in np.flatnonzero(rng.random(len(images)) < p):
        if out is images:
            out = images.copy()
        img = out[i]
        rows, cols = np.flatnonzero(img.any((1, 2))), np.flatnonzero(img.any((0, 2)))
        if not len(rows):
            continue
        area = img[:rows[-1] + 1, :cols[-1] + 1].astype(np.float32) / 255.0
        gamma, gain, noise = rng.uniform(1.3, 2.5), rng.uniform(0.3, 0.8), rng.uniform(0.0, 5.0)
        cast = rng.uniform(0.85, 1.15, 3).astype(np.float32)
        area = gain * area ** gamma * cast * 255.0
        area += rng.normal(0.0, noise, area.shape).astype(np.float32)
        img[:rows[-1] + 1, :cols[-1] + 1] = np.clip(area, 0, 255).astype(np.uint8)
    return out
