"""Running video jobs: :func:`process` does one job whatever the store; :class:`LocalRunner` runs them
on threads inside the embedded service; :class:`VideoConsumer` is the `posekd worker` side in Redis
mode (a consumer group on the ``videos`` stream; a job whose worker died — its heartbeat is stale, see
:mod:`service.broker.liveness` — is taken over by a live worker within seconds; a live worker's job is
taken only when it sent no progress for ``visibility_s``, i.e. it hung)."""
from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from .. import metrics, scratch
from ..broker import groups
from ..broker.keys import RedisKeys
from ..broker.liveness import dead, holders
from ..broker.videos import RedisVideoQueue, VideoQueue
from ..errors import PoseKDError
from ..settings import Delivery, Settings, VideoLimits
from . import decode
from .jobs import FINAL, HandedOver, JobStore, LocalJobStore, RedisJobStore
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


def process(store: JobStore, job_id: str, config: VideoConfig, registry, pipeline, *, stopping=None,
            heartbeat=None) -> str:
    """Run one job to a final status (returned). ``stopping()`` true makes it give the job up;
    ``heartbeat()`` is called with each progress update."""
    job = store.get(job_id)
    if job.status in FINAL:
        return job.status
    if job.cancel_requested:
        store.finish(job_id, "cancelled")
        return "cancelled"
    store.update(job_id, status="running", error=None)
    with scratch.temporary_directory("posekd-job-") as tmp:
        work = Path(tmp)
        status, error = "failed", None
        try:
            clip = store.clip(job_id, work)
            info = decode.VideoInfo(**job.video) if job.video else config.probe(clip)  # the API probed it
            o = job.options
            pose = registry.get(o.get("model") or config.pose_model, task="pose")
            det = registry.get(o.get("detector") or config.detector, task="person_detection")
            opts = config.options.with_overrides(keyframe_interval=o.get("keyframe_interval"),
                                                 smoothing=o.get("smoothing"))
            overlay = work / "overlay.mp4" if job.render else None
            last = [0.0]

            def progress(done: int, total: int) -> None:
                if stopping is not None and stopping():
                    raise Stopping()
                now = time.monotonic()
                if now - last[0] < 0.5:
                    return
                last[0] = now
                now_job = store.get(job_id)
                if now_job.cancel_requested:
                    raise Cancelled()
                # a job taken over redoes the frames after its last checkpoint: the progress shown holds
                share = max(min(done / max(total, 1), 0.999), now_job.progress or 0.0)
                store.update(job_id, frames_done=max(done, now_job.frames_done or 0), frames_total=total,
                             progress=share)
                if heartbeat is not None:
                    heartbeat()

            point = store.resume_point(job_id)
            resume = Resume(*point) if point is not None else None
            if resume is not None:
                log.info("video job %s resumes after frame %d", job_id, len(resume.frames) - 1)
            saved = [len(resume.frames) if resume else 0]

            def checkpoint(frames: list[dict], state: bytes) -> None:
                store.checkpoint(job_id, frames, state, saved[0])
                saved[0] += len(frames)

            result = VideoProcessor(pipeline, pose, det, opts).run(clip, info, progress, overlay, checkpoint=checkpoint,
                                                                   every_s=config.checkpoint_s, resume=resume)
            store.save_outputs(job_id, result, overlay)
            n = result["video"]["frames"]
            store.update(job_id, frames_done=n, frames_total=n, progress=1.0)
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


class LocalRunner(VideoQueue):
    """Embedded mode: the video queue is ``workers`` threads in the API process."""

    def __init__(self, store: LocalJobStore, config: VideoConfig, registry, pipeline, workers: int = 1):
        self.store, self.config, self.registry, self.pipeline = store, config, registry, pipeline
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="posekd-video")
        self._stopping = False

    def submit(self, job_id: str) -> None:
        self._pool.submit(self._run, job_id)

    def _run(self, job_id: str) -> None:
        try:
            process(self.store, job_id, self.config, self.registry, self.pipeline, stopping=lambda: self._stopping)
        except Stopping:
            self.store.finish(job_id, "failed", "the service shut down while the job ran; submit it again")
        except Exception:
            log.exception("video job %s could not be finished", job_id)

    def stop(self) -> None:
        """Queued jobs fail with a clear error; a running one stops at its next frame."""
        self._stopping = True
        self._pool.shutdown(wait=True, cancel_futures=True)
        self.store.fail_unfinished("the service shut down before the job ran; submit it again")
        self.store.close()


class VideoConsumer:
    """Redis mode, in `posekd worker`: one job at a time from the ``videos`` stream."""

    def __init__(self, store: RedisJobStore, name: str, config: VideoConfig, registry, pipeline,
                 delivery: Delivery = Delivery()):
        self.store, self.name, self.config = store, name, config
        self.registry, self.pipeline = registry, pipeline
        self.visibility_ms = int(delivery.video_visibility_s * 1000)
        self.stale_ms = int(delivery.stale_s * 1000)
        self.workers_key = RedisKeys(store.prefix).workers  # heartbeats: the image consumer writes them
        self.stream = RedisKeys(store.prefix).videos
        self.stop_event = threading.Event()

    def _ensure_group(self) -> None:
        groups.ensure(self.store.redis, self.stream, RedisVideoQueue.GROUP)

    def _take_over(self):
        """One job entry held by a dead worker (or, past ``visibility_s``, by a hung one), now ours."""
        r, stream, group = self.store.redis, self.stream, RedisVideoQueue.GROUP
        others = [n for n in holders(r.xpending(stream, group)) if n != self.name]
        beats = r.zmscore(self.workers_key, others) if others else []
        departed = dead(others, beats, time.time(), self.stale_ms / 1000)
        for consumer in departed:
            for p in r.xpending_range(stream, group, "-", "+", 4, consumername=consumer, idle=self.stale_ms):
                claimed = r.xclaim(stream, group, self.name, self.stale_ms, [p["message_id"]])
                if claimed and claimed[0][1]:
                    log.warning("taking over video job entry %s from %s, whose heartbeat stopped",
                                claimed[0][0], consumer)
                    return claimed[0]
                if claimed:  # the job entry was deleted meanwhile
                    r.xack(stream, group, p["message_id"])
        if self.visibility_ms:
            _, claimed, _ = r.xautoclaim(stream, group, self.name, self.visibility_ms, "0-0", count=1)
            if claimed:
                log.warning("taking over video job entry %s from a worker that sent no progress", claimed[0][0])
                return claimed[0]
        return None

    def _next(self):
        r, stream, group = self.store.redis, self.stream, RedisVideoQueue.GROUP
        taken = self._take_over()
        if taken is not None:
            return taken
        got = r.xreadgroup(group, self.name, {stream: ">"}, count=1, block=1000)
        return got[0][1][0] if got else None

    def _handle(self, entry_id, fields) -> bool:
        """Process one job entry and acknowledge it; False when the worker is stopping (the entry is left
        for another worker)."""
        job_id = (fields or {}).get(b"job", b"").decode()
        r, stream, group = self.store.redis, self.stream, RedisVideoQueue.GROUP

        def keep_alive():  # reset the entry's idle time: this worker is alive and on it
            r.xclaim(stream, group, self.name, 0, [entry_id], justid=True)

        try:
            if job_id:
                process(self.store, job_id, self.config, self.registry, self.pipeline,
                        stopping=self.stop_event.is_set, heartbeat=keep_alive)
        except Stopping:
            self.store.update(job_id, status="queued")  # another worker takes the entry over
            return False
        except HandedOver as exc:  # this worker was taken for dead; the heir owns the job and its entry
            log.warning("%s; leaving it", exc.message)
            return True
        except PoseKDError as exc:  # the job expired or vanished
            log.warning("video job %s: %s", job_id, exc.message)
        r.xack(stream, group, entry_id)
        r.xdel(stream, entry_id)
        return True

    def run(self) -> None:
        import redis
        grouped = False
        while not self.stop_event.is_set():
            try:
                if not grouped:
                    self._ensure_group()
                    grouped = True
                entry = self._next()
                if entry is None:
                    continue
                if not self._handle(*entry):
                    return
            except redis.RedisError as exc:
                if groups.lost(exc):
                    grouped = False
                    continue
                log.warning("video consumer: Redis error (%s); retrying", exc)
                time.sleep(1.0)
