"""``posekd video CLIP -o result.json [--render out.mp4]``: the job's code, run offline."""
from __future__ import annotations

import json
from pathlib import Path

from ..engine import build_engine
from ..progress import Progress
from ..settings import Settings
from .job import VideoConfig
from .processor import VideoProcessor


def load(settings: Settings, model: str | None, detector: str | None):
    rt = build_engine(settings)
    pose = rt.registry.get(model or settings.default_pose_model, task="pose")
    det = rt.registry.get(detector or settings.default_detector, task="person_detection")
    return rt.pipeline, pose, det


def run(settings: Settings, clip: Path, out: Path | None, render: Path | None, *, model=None, detector=None,
        keyframe_interval=None, smoothing=None, quiet=False) -> dict:
    config = VideoConfig.from_settings(settings)
    info = config.probe(clip)
    pipeline, pose, det = load(settings, model, detector)
    opts = config.options.with_overrides(keyframe_interval=keyframe_interval, smoothing=smoothing)
    bar = None if quiet else Progress()
    try:
        result = VideoProcessor(pipeline, pose, det, opts).run(clip, info, bar, render)
    finally:
        if bar:
            bar.close()
    if out is not None:
        out.write_text(json.dumps(result, separators=(",", ":")))
    return result
