"""Shadow teacher: on a sampled share of live image requests, after the student has answered, a teacher
from the store runs on the same people (the same boxes) and the two are compared. The agreement (COCO's
OKS of the student's keypoints against the teacher's confident ones, per person, and the mean per image)
goes to Prometheus and to a running summary; the images the student agrees with least are kept, with the
teacher's answer as their pseudo-label, for the next distillation round (:mod:`.keeper`).

The teacher never sits on a request's path: :meth:`Shadow.offer` is a coin toss and a non-blocking put
into a small queue of its own; one thread drains it. A full queue (a slow or hung teacher) drops the
sample and counts it; a teacher that fails is counted the same way. In Redis mode the workers shadow the
requests they serve and write the running summary to Redis, where the API reads it."""
from __future__ import annotations

import logging
import queue
import random
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import metrics
from ..geometry import oks_to_reference
from ..pipeline import ImageResult, ImageTask, PosePipeline
from ..store import ModelRegistry
from ..store.registry import ServedModel
from .keeper import SampleKeeper
from .log import AgreementLog, MemoryLog, RedisLog, summarize

__all__ = ["AgreementLog", "MemoryLog", "RedisLog", "SampleKeeper", "Shadow", "ShadowConfig", "held_out_agreement",
           "image_agreement", "sample_of", "summarize"]

log = logging.getLogger("posekd.shadow")
_STOP = object()


@dataclass(frozen=True)
class ShadowConfig:
    """``model``: the teacher (a store reference); ``rate``: share of images shadowed (0: off); ``dir``:
    where the kept samples go (None: none kept); ``queue_max``: images waiting for the teacher before new
    samples are dropped; ``keep_max`` / ``keep_max_bytes``: the bound on the kept samples."""
    model: str | None = None
    rate: float = 0.0
    dir: Path | None = None
    queue_max: int = 16
    keep_max: int = 500
    keep_max_bytes: int = 256 * 1024 * 1024
    drift_margin: float = 0.1

    @property
    def enabled(self) -> bool:
        return bool(self.model) and self.rate > 0

    @classmethod
    def from_settings(cls, settings) -> ShadowConfig:
        return cls(settings.shadow_model, settings.shadow_rate, settings.shadow_dir, settings.shadow_queue_max,
                   settings.shadow_keep_max, settings.shadow_keep_max_bytes, settings.shadow_drift_margin)


def held_out_agreement(manifest) -> float | None:
    """The reference the live agreement is compared with: the median per-image agreement the student's
    manifest records on held-out photos through this very comparison (``shadow_agreement``, written by
    ``posekd bench shadow --write-reference``), else its evaluation's teacher agreement on the dev set's
    labelled people (``teacher_agreement_oks``: every labelled person, hard ones included, so lower than
    what live traffic shows)."""
    live = manifest.metrics.get("shadow_agreement")
    if isinstance(live, dict) and isinstance(live.get("median"), (int, float)):
        return float(live["median"])
    value = manifest.metrics.get("teacher_agreement_oks")
    return float(value) if isinstance(value, (int, float)) else None


@dataclass
class _Sample:
    student: ServedModel
    image: np.ndarray  # BGR, as the pipeline saw it
    boxes: np.ndarray  # (M, 5) in the pixels of ``image``
    keypoints: np.ndarray  # (M, 17, 3) the student's answer, in the pixels of ``image``


def sample_of(student: ServedModel, task: ImageTask, result: ImageResult) -> _Sample:
    """An answered image as the teacher sees it: the student's people in the pixels of the decoded image."""
    inv = 1.0 / task.scale
    boxes = np.array([[*p.bbox, p.score] for p in result.people], np.float32)
    boxes[:, :4] *= inv
    kps = np.stack([p.keypoints for p in result.people]).astype(np.float32)
    kps[..., :2] *= inv
    if task.image is None:
        raise ValueError("only a decoded image can be shadowed")
    return _Sample(student, task.image, boxes, kps)


def image_agreement(student: np.ndarray, teacher: np.ndarray, boxes: np.ndarray) -> list[float | None]:
    """OKS of each person's student keypoints against the teacher's on the same box, over the teacher's
    confident points (the box area × 0.53 standing in for the segment area, as the manifests' held-out
    agreement does); None for a person the teacher sees no confident point of."""
    return [oks_to_reference(s, t, float((b[2] - b[0]) * (b[3] - b[1])) * 0.53)
            for s, t, b in zip(student, teacher, boxes)]


class Shadow:
    def __init__(self, config: ShadowConfig, registry: ModelRegistry, pipeline: PosePipeline, *,
                 log_to: AgreementLog | None = None, seed: int | None = None):
        if not config.model:
            raise ValueError("a shadow needs a teacher model (POSEKD_SHADOW_MODEL)")
        self.config = config
        self.registry = registry
        self.pipeline = pipeline
        self.log = log_to or MemoryLog()
        self.keeper = SampleKeeper(config.dir, config.keep_max, config.keep_max_bytes) if config.dir else None
        self._queue: queue.Queue = queue.Queue(maxsize=config.queue_max)
        self._random = random.Random(seed)
        self._thread: threading.Thread | None = None
        self._last_warning = 0.0
        self._thresholds: set[tuple[str, int]] = set()

    # ---- request side (must never block or raise) ----------------------------------------------
    def offer(self, student: ServedModel, tasks: list[ImageTask], results: list[ImageResult]) -> None:
        """Called after a batch has been answered: each image is shadowed with probability ``rate``."""
        for task, result in zip(tasks, results):
            if not result.people or task.image is None or self._random.random() >= self.config.rate:
                continue
            try:
                self._queue.put_nowait(sample_of(student, task, result))
            except queue.Full:
                metrics.SHADOW_DROPPED.labels(student.name, "queue_full").inc()
                self.log.dropped(student.name)

    # ---- the teacher's thread ----------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._work, name="posekd-shadow", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """End the thread after what is queued; a teacher stuck on a sample is left behind (daemon)."""
        if self._thread is None:
            return
        try:
            self._queue.put(_STOP, timeout=timeout)
        except queue.Full:
            return
        self._thread.join(timeout)
        self._thread = None

    def pending(self) -> int:
        return self._queue.qsize()

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            try:
                self.compare(item)
            except Exception as exc:  # the teacher failed: counted, logged at most once a minute
                metrics.SHADOW_DROPPED.labels(item.student.name, "failed").inc()
                self.log.dropped(item.student.name)
                now = time.monotonic()
                if now - self._last_warning > 60:
                    self._last_warning = now
                    log.warning("shadow teacher %s failed: %s", self.config.model, exc)

    def compare(self, sample: _Sample) -> float | None:
        """Run the teacher on the sample's boxes; record and maybe keep it. The image's agreement."""
        teacher = self.registry.get(self.config.model or "", task="pose")
        taught = self.pipeline.pose(teacher, [sample.image], [sample.boxes])[0]
        per_person = image_agreement(sample.keypoints, taught, sample.boxes)
        scored = [v for v in per_person if v is not None]
        student, shadow = sample.student, f"{teacher.name}:{teacher.version}"
        metrics.SHADOW_SAMPLES.labels(student.name, shadow).inc()
        if not scored:
            return None
        agreement = float(np.mean(scored))
        if (student.name, student.version) not in self._thresholds:
            self._thresholds.add((student.name, student.version))
            held_out = held_out_agreement(student.manifest)
            if held_out is not None:
                metrics.SHADOW_THRESHOLD.labels(student.name, str(student.version)).set(
                    held_out - self.config.drift_margin)
        metrics.SHADOW_AGREEMENT.labels(student.name, str(student.version), shadow).observe(agreement)
        self.log.record(student.name, student.version, shadow, agreement)
        if self.keeper is not None:
            self.keeper.consider(sample.image, sample.boxes, taught, sample.keypoints, agreement, per_person,
                                 student_name=f"{student.name}:{student.version}", teacher_name=shadow)
        return agreement
