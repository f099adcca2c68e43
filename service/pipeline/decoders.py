"""Output decoders named by manifests.

Pose decoders turn a batch of outputs into keypoints ``(N, 17, 3)`` as (x, y, score) in pixels of
the model input. Detection decoders give, per image, boxes ``(M, 5)`` as (x1, y1, x2, y2, score)
in pixels of the detector input."""
from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np

from ..geometry import sigmoid
from ..store.manifest import Manifest

PoseDecoder = Callable[[Manifest, dict[str, np.ndarray]], np.ndarray]
DetDecoder = Callable[[Manifest, dict[str, np.ndarray]], list[np.ndarray]]


def _outputs(manifest: Manifest, outs: dict[str, np.ndarray]) -> list[np.ndarray]:
    names = manifest.output.names or list(outs)
    return [outs[n] for n in names]


# ---------------------------------------------------------------------------------------------
# pose
# ---------------------------------------------------------------------------------------------
def _subpixel(logs: np.ndarray, iy: np.ndarray, ix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Parabola through the peak and its neighbours in log space (exact for a Gaussian peak),
    one axis at a time; the shift is kept within half a cell."""
    n, k, h, w = logs.shape
    bi, ki = np.meshgrid(np.arange(n), np.arange(k), indexing="ij")

    def shift(prev, cur, nxt, valid):
        denom = prev - 2 * cur + nxt
        with np.errstate(divide="ignore", invalid="ignore"):
            d = np.where(valid & (denom < -1e-6), 0.5 * (prev - nxt) / denom, 0.0)
        return np.clip(np.nan_to_num(d), -0.5, 0.5)

    vx = (ix > 0) & (ix < w - 1)
    xl, xr = np.clip(ix - 1, 0, w - 1), np.clip(ix + 1, 0, w - 1)
    dx = shift(logs[bi, ki, iy, xl], logs[bi, ki, iy, ix], logs[bi, ki, iy, xr], vx)
    vy = (iy > 0) & (iy < h - 1)
    yu, yd = np.clip(iy - 1, 0, h - 1), np.clip(iy + 1, 0, h - 1)
    dy = shift(logs[bi, ki, yu, ix], logs[bi, ki, iy, ix], logs[bi, ki, yd, ix], vy)
    return dx, dy


def decode_heatmap(manifest: Manifest, outs: dict[str, np.ndarray]) -> np.ndarray:
    """Per-keypoint heatmaps ``(N, K, h, w)``: argmax, sub-pixel refinement, score = peak value.
    params: ``activation`` (none | sigmoid) applied before decoding. Heatmap cell centres map to
    input pixels as ``x_in = (x_hm + 0.5) * stride - 0.5``."""
    hm = _outputs(manifest, outs)[0].astype(np.float32, copy=False)
    if manifest.output.params.get("activation", "none") == "sigmoid":
        hm = sigmoid(hm).astype(np.float32)
    n, k, h, w = hm.shape
    flat = hm.reshape(n, k, -1)
    idx = flat.argmax(-1)
    score = np.take_along_axis(flat, idx[..., None], -1)[..., 0]
    iy, ix = np.divmod(idx, w)
    dx, dy = _subpixel(np.log(np.maximum(hm, 1e-10)), iy, ix)
    sx, sy = manifest.input.width / w, manifest.input.height / h
    x = (ix + dx + 0.5) * sx - 0.5
    y = (iy + dy + 0.5) * sy - 0.5
    return np.stack([x, y, score], -1).astype(np.float32)


@functools.lru_cache(maxsize=8)
def _centre_weight(h: int, w: int) -> np.ndarray:
    """MoveNet's preference for the person nearest the crop's middle, per heatmap cell."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    weight = 1.0 / (np.sqrt((yy - (h - 1) / 2) ** 2 + (xx - (w - 1) / 2) ** 2) + 1.8)
    weight.flags.writeable = False
    return weight


def _keypoints_from_centre(manifest: Manifest, kpt: np.ndarray, regress: np.ndarray, offset: np.ndarray,
                           cy: np.ndarray, cx: np.ndarray) -> np.ndarray:
    """MoveNet's keypoints of the person whose centre is at cell (cy, cx) of each crop: each keypoint is
    regressed from the centre, and the keypoint heatmap is weighted by closeness to that regressed point."""
    n, k, h, w = kpt.shape
    b = np.arange(n)
    reg = regress[b, :, cy, cx].reshape(n, k, 2)  # (dy, dx) per keypoint, heatmap cells
    ry = cy[:, None] + reg[..., 0]
    rx = cx[:, None] + reg[..., 1]
    # squared distances per row and per column, added by broadcasting: one (n, k, h, w) pass, not four
    dy2 = (np.arange(h, dtype=np.float32)[None, None, :, None] - ry[..., None, None]) ** 2
    dx2 = (np.arange(w, dtype=np.float32)[None, None, None, :] - rx[..., None, None]) ** 2
    dist = np.sqrt(dy2 + dx2)
    dist += 1.8
    kidx = (kpt / dist).reshape(n, k, -1).argmax(-1)
    ky, kx = np.divmod(kidx, w)
    bi, ki = np.meshgrid(b, np.arange(k), indexing="ij")
    score = kpt[bi, ki, ky, kx]
    oy = offset[bi, 2 * ki, ky, kx]
    ox = offset[bi, 2 * ki + 1, ky, kx]
    y = (ky + oy) / h * manifest.input.height
    x = (kx + ox) / w * manifest.input.width
    return np.stack([x, y, score], -1).astype(np.float32)


def decode_movenet_heads(manifest: Manifest, outs: dict[str, np.ndarray]) -> np.ndarray:
    """MoveNet's single-person decoder over its raw heads (kpt_heatmap, center_heatmap, kpt_regress,
    kpt_offset): the centre nearest the crop's middle picks the person (:func:`_keypoints_from_centre`)."""
    kpt, center, regress, offset = _outputs(manifest, outs)
    n, k, h, w = kpt.shape
    cy, cx = np.divmod((center[:, 0] * _centre_weight(h, w)).reshape(n, -1).argmax(-1), w)
    return _keypoints_from_centre(manifest, kpt, regress, offset, cy, cx)


def movenet_second_people(manifest: Manifest, outs: dict[str, np.ndarray], min_centre: float,
                          min_cells: float = 0.15) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The other person a crop holds, from MoveNet's centre heat: where a crop shows two people (one
    behind the other, a couple, a box the detector drew around both), the centre map has a second peak.
    Per crop: the strongest local maximum of the centre map at least ``min_cells`` × the map's side
    away from the centre :func:`decode_movenet_heads` chose, kept when it reaches ``min_centre``.
    Returns (crop indices, keypoints (M, 17, 3) in input pixels as the pose decoder's, centre peaks)."""
    kpt, center, regress, offset = _outputs(manifest, outs)
    n, k, h, w = kpt.shape
    heat = center[:, 0].astype(np.float32, copy=False)
    cy, cx = np.divmod((heat * _centre_weight(h, w)).reshape(n, -1).argmax(-1), w)
    padded = np.pad(heat, ((0, 0), (1, 1), (1, 1)), constant_values=-np.inf)
    peak = np.max([padded[:, dy:dy + h, dx:dx + w] for dy in range(3) for dx in range(3)], axis=0)
    yy, xx = np.mgrid[0:h, 0:w]
    far = (yy[None] - cy[:, None, None]) ** 2 + (xx[None] - cx[:, None, None]) ** 2 >= (min_cells * max(h, w)) ** 2
    candidate = np.where((heat >= peak) & far, heat, 0.0).reshape(n, -1)
    best = candidate.argmax(-1)
    value = candidate[np.arange(n), best]
    crops = np.flatnonzero(value >= min_centre)
    if not len(crops):
        return crops, np.zeros((0, k, 3), np.float32), np.zeros(0, np.float32)
    sy, sx = np.divmod(best[crops], w)
    kps = _keypoints_from_centre(manifest, kpt[crops], regress[crops], offset[crops], sy, sx)
    return crops, kps, value[crops].astype(np.float32)


def decode_keypoints(manifest: Manifest, outs: dict[str, np.ndarray]) -> np.ndarray:
    """Regressed keypoints ``(N, [1,] K, 3)``. params: ``order`` (xy | yx), ``normalized`` (bool:
    coordinates in 0..1 of the input; else input pixels)."""
    out = _outputs(manifest, outs)[0].astype(np.float32, copy=False)
    out = out.reshape(out.shape[0], -1, 3)
    p = manifest.output.params
    first, second, score = out[..., 0], out[..., 1], out[..., 2]
    x, y = (second, first) if p.get("order", "xy") == "yx" else (first, second)
    if p.get("normalized", True):
        x, y = x * manifest.input.width, y * manifest.input.height
    return np.stack([x, y, score], -1).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# person detection
# ---------------------------------------------------------------------------------------------
def decode_multipose(manifest: Manifest, outs: dict[str, np.ndarray]) -> list[np.ndarray]:
    """MoveNet MultiPose ``(N, 6, 56)``: 17×(y, x, s), then ymin, xmin, ymax, xmax, score (0..1)."""
    out = _outputs(manifest, outs)[0]
    h, w = manifest.input.height, manifest.input.width
    res = []
    for rows in out:
        ymin, xmin, ymax, xmax, s = (rows[:, 51 + i] for i in range(5))
        res.append(np.stack([xmin * w, ymin * h, xmax * w, ymax * h, s], -1).astype(np.float32))
    return res


def decode_centernet(manifest: Manifest, outs: dict[str, np.ndarray]) -> list[np.ndarray]:
    """CenterNet ``(N, M, 6)`` rows (x1, y1, x2, y2, score, class) in input pixels; keeps
    ``params.person_class`` (0)."""
    out = _outputs(manifest, outs)[0]
    cls = manifest.output.params.get("person_class", 0)
    return [rows[np.round(rows[:, 5]) == cls, :5].astype(np.float32) for rows in out]


def decode_boxes(manifest: Manifest, outs: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Plain boxes ``(N, M, 5)`` (x1, y1, x2, y2, score); params ``normalized`` (bool)."""
    out = _outputs(manifest, outs)[0].astype(np.float32)
    if manifest.output.params.get("normalized", False):
        out = out * np.array([manifest.input.width, manifest.input.height] * 2 + [1], np.float32)
    return [rows[:, :5] for rows in out]


POSE_DECODERS: dict[str, PoseDecoder] = {
    "heatmap": decode_heatmap,
    "movenet_heads": decode_movenet_heads,
    "keypoints": decode_keypoints,
}
DETECTION_DECODERS: dict[str, DetDecoder] = {
    "multipose": decode_multipose,
    "centernet": decode_centernet,
    "boxes": decode_boxes,
}
