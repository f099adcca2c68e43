"""One-Euro filter (Casiez, Roussel and Vogel, CHI 2012) over every keypoint coordinate of a track:
a low-pass filter whose cut-off rises with speed, so slow jitter is smoothed and fast motion is
followed with little lag. Works on arrays, with the real time between frames (variable frame rate)."""
from __future__ import annotations

import math

import numpy as np


def _alpha(cutoff: np.ndarray | float, dt: float) -> np.ndarray | float:
    tau = 1.0 / (2 * math.pi * cutoff)
    return 1.0 / (1.0 + tau / dt)


class OneEuro:
    """``min_cutoff`` (Hz): smoothing at rest — lower is smoother; ``beta``: how fast the cut-off
    rises with speed (per pixel/s) — higher follows fast motion better; ``d_cutoff`` (Hz) for the
    speed estimate."""

    def __init__(self, min_cutoff: float = 1.0, beta: float = 0.02, d_cutoff: float = 1.0):
        self.min_cutoff, self.beta, self.d_cutoff = min_cutoff, beta, d_cutoff
        self._x: np.ndarray | None = None
        self._dx: np.ndarray | None = None
        self._t: float | None = None

    def __call__(self, x: np.ndarray, t: float) -> np.ndarray:
        x = np.asarray(x, np.float64)
        if self._x is None or self._dx is None or self._t is None or t <= self._t:
            self._x, self._dx, self._t = x.copy(), np.zeros_like(x), t
            return x.copy()
        dt = t - self._t
        dx = (x - self._x) / dt
        a_d = _alpha(self.d_cutoff, dt)
        self._dx = a_d * dx + (1 - a_d) * self._dx
        cutoff = self.min_cutoff + self.beta * np.abs(self._dx)
        a = _alpha(cutoff, dt)
        self._x = a * x + (1 - a) * self._x
        self._t = t
        return self._x.copy()


class TrackSmoother:
    """One filter per track over its (17, 2) coordinates; scores pass through untouched (raw)."""

    def __init__(self, min_cutoff: float = 1.0, beta: float = 0.02, d_cutoff: float = 1.0):
        self.params = (min_cutoff, beta, d_cutoff)
        self._filters: dict[int, OneEuro] = {}

    def __call__(self, track_id: int, keypoints: np.ndarray, t: float) -> np.ndarray:
        f = self._filters.setdefault(track_id, OneEuro(*self.params))
        out = np.asarray(keypoints, np.float64).copy()
        out[:, :2] = f(out[:, :2], t)
        return out
