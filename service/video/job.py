"""Running one video job, whatever runs it: :func:`process` takes a job from its store to a final status
(progress, cancellation, checkpoints of finished frames so another worker can continue it);
:class:`VideoConfig` is what any job needs besides itself. The embedded service runs jobs on threads
(:mod:`.local`), `posekd worker` from the Redis stream (:mod:`.consumer`)."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from .. import metrics, scratch
from ..errors import PoseKDError
from ..settings import Settings, VideoLimits
from . import decode
from .jobs import FINAL, HandedOver, Job, JobStore
from .processor import Cancelled, Resume, VideoOptions, VideoProcessor

log = logging.getLogger("posekd.video")


class Stopping(Exception):
    """The process is shutting down: leave the job for another worker (Redis) or fail it clearly."""


@dataclass(frozen=True)
class VideoConfig:
    """What running any job needs besides the job itself: the clip limits, the option defaults a job
    may override, and the models of a job that names none (jobs the API created carry exact versions)."""
    limits: VideoLimits
    options: VideoOptions
    pose_model: str
    detector: str
    checkpoint_s: float = 1.0  # Redis mode: how often a running job saves its finished frames

    @classmethod
    def from_settings(cls, s: Settings) -> VideoConfig:
        return cls(s.video_limits, VideoOptions.from_settings(s), s.default_pose_model, s.default_detector,
                   s.video_checkpoint_s)

    def probe(self, clip: Path) -> decode.VideoInfo:
        return decode.probe(clip, max_seconds=self.limits.max_seconds, max_frames=self.limits.max_frames,
                            max_pixels=self.limits.max_pixels)


class _Reporter:
    """What a running job tells its store: progress (at most every 0.5 s; never lower than what the job
    already showed, since a job taken over redoes the frames after its last checkpoint), cancellation,
    the worker's liveness, and the checkpoints of its finished frames."""

    def __init__(self, store: JobStore, job_id: str, stopping=None, heartbeat=None, saved: int = 0):
        self.store, self.job_id, self.stopping, self.heartbeat = store, job_id, stopping, heartbeat
        self.saved = saved  # frames in the store's checkpoint
        self._last = 0.0

    def progress(self, done: int, total: int) -> None:
        if self.stopping is not None and self.stopping():
            raise Stopping()
        now = time.monotonic()
        if now - self._last < 0.5:
            return
        self._last = now
        job = self.store.get(self.job_id)
        if job.cancel_requested:
            raise Cancelled()
        share = max(min(done / max(total, 1), 0.999), job.progress or 0.0)
        self.store.update(self.job_id, frames_done=max(done, job.frames_done or 0), frames_total=total,
                          progress=share)
        if self.heartbeat is not None:
            self.heartbeat()

    def checkpoint(self, frames: list[dict], state: bytes) -> None:
        self.store.checkpoint(self.job_id, frames, state, self.saved)
        self.saved += len(frames)


def _run_job(store: JobStore, job: Job, work: Path, config: VideoConfig, registry, pipeline,  # noqa: PLR0913
             reporter: _Reporter) -> None:
    """Process the clip of ``job`` and save its outputs (raises what stops it)."""
    clip = store.clip(job.id, work)
    info = decode.VideoInfo(**job.video) if job.video else config.probe(clip)  # the API probed it
    o = job.options
    pose = registry.get(o.get("model") or config.pose_model, task="pose")
    det = registry.get(o.get("detector") or config.detector, task="person_detection")
    opts = config.options.with_overrides(keyframe_interval=o.get("keyframe_interval"), smoothing=o.get("smoothing"))
    overlay = work / "overlay.mp4" if job.render else None
    point = store.resume_point(job.id)
    resume = Resume(*point) if point is not None else None
    if resume is not None:
        log.info("video job %s resumes after frame %d", job.id, len(resume.frames) - 1)
        reporter.saved = len(resume.frames)
    result = VideoProcessor(pipeline, pose, det, opts).run(clip, info, reporter.progress, overlay,
                                                           checkpoint=reporter.checkpoint,
                                                           every_s=config.checkpoint_s, resume=resume)
    store.save_outputs(job.id, result, overlay)
    n = result["video"]["frames"]
    store.update(job.id, frames_done=n, frames_total=n, progress=1.0)


def process(store: JobStore, job_id: str, config: VideoConfig, registry, pipeline, *, stopping=None,
            heartbeat=None) -> str:
    """Run one job to a final status (returned). ``stopping()`` true makes it give the job up
    (:class:`Stopping`); ``heartbeat()`` is called with each progress update."""
    job = store.get(job_id)
    if job.status in FINAL:
        return job.status
    if job.cancel_requested:
        store.finish(job_id, "cancelled")
        return "cancelled"
    store.update(job_id, status="running", error=None)
    with scratch.temporary_directory("posekd-job-") as tmp:
        status, error = "failed", None
        try:
            _run_job(store, job, Path(tmp), config, registry, pipeline, _Reporter(store, job_id, stopping, heartbeat))
            status = "succeeded"
        except Cancelled:
            status = "cancelled"
        except (Stopping, HandedOver):
            raise
        except PoseKDError as exc:
            error = exc.message
        except Exception as exc:  # never a stuck job: say what happened
            log.exception("video job %s failed", job_id)
            error = f"internal error: {exc}"
        store.finish(job_id, status, error)
        metrics.VIDEO_JOBS.labels(status).inc()
        log.info("video job %s %s%s", job_id, status, f": {error}" if error else "")
        return status
