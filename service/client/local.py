"""The in-process API: the service's own pipeline on models from a store, no server, no Redis —
``Estimator()(image)`` gives the same :class:`PoseResult` as ``Client().pose(image)``."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import ModelNotFound
from .http import ImageInput
from .types import PoseResult


class Estimator:
    """Loads a pose model and a person detector (names, ``name:version`` or ``name@alias``; default:
    the service's defaults) from a model store (default ``POSEKD_MODEL_STORE``) and runs them here.
    Settings (limits, thresholds, threads) are the service's, from ``POSEKD_*`` or ``settings``."""

    def __init__(self, model: str | None = None, detector: str | None = None, *, store: str | Path | None = None,
                 settings=None):
        from ..engine import build_engine
        from ..settings import get_settings

        s = settings or get_settings()
        if store is not None:
            s = s.model_copy(update={"model_store": Path(store)})
        self.settings = s
        rt = build_engine(s)
        self.registry, self.pipeline = rt.registry, rt.pipeline
        try:
            self.pose_model = self.registry.get(model or s.default_pose_model, task="pose")
            self.detector = self.registry.get(detector or s.default_detector, task="person_detection")
        except ModelNotFound as exc:  # say where we looked: the API's 404 does not, a local user needs it
            raise ModelNotFound(f"{exc.message} (store searched: {Path(s.model_store).resolve()}; set "
                                f"POSEKD_MODEL_STORE or store= to use another)") from None

    @property
    def names(self) -> tuple[str, str]:
        """``name:version`` of the pose model and the detector."""
        return (f"{self.pose_model.name}:{self.pose_model.version}", f"{self.detector.name}:{self.detector.version}")

    def __call__(self, image: ImageInput, *, min_score: float | None = None, max_people: int | None = None,
                 boxes=None) -> PoseResult:
        """The people in one image: a path, encoded bytes (checked and decoded exactly as the service
        does) or a BGR ``uint8`` array."""
        from ..images import decode_image
        from ..pipeline import ImageTask

        s = self.settings
        if isinstance(image, np.ndarray):
            if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
                raise ValueError("expected an H×W×3 uint8 BGR array")
            pixels, scale, size = image, 1.0, (image.shape[1], image.shape[0])
        else:
            data = Path(image).read_bytes() if isinstance(image, (str, Path)) else bytes(image)
            pixels, scale, size, _ = decode_image(data, max_bytes=s.max_image_bytes, max_pixels=s.max_image_pixels,
                                                  max_side=s.decode_max_side)
        given = None if boxes is None else np.asarray(boxes, np.float32).reshape(-1, 4)
        task = ImageTask(pixels, given, s.min_score if min_score is None else min_score,
                         min(max_people or s.max_people, s.max_people), scale, size=size)
        res = self.pipeline.run(self.pose_model, None if given is not None else self.detector, [task])[0]
        pose_ref, det_ref = self.names
        return PoseResult(list(res.people), res.size[0], res.size[1],
                          pose_ref, None if given is not None else det_ref,
                          {k: round(v, 2) for k, v in res.timing_ms.items()})


def load(model: str | None = None, detector: str | None = None, **kw) -> Estimator:
    """``posekd.load()`` — an :class:`Estimator` on the default models."""
    return Estimator(model, detector, **kw)
