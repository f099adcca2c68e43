"""Dynamic batching shared by every worker: gather requests until ``max_batch`` images or
``max_delay`` seconds, then run each group of requests that share models through the pipeline once."""
from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable

from .. import metrics
from ..errors import PoseKDError
from ..pipeline import ImageResult, ImageTask, PosePipeline
from ..store import ModelRegistry
from ..store.registry import ServedModel
from .base import PoseAnswer, PoseRequest

log = logging.getLogger("posekd.broker")

# told about every answered group of images after the fact (the shadow teacher's sampler); must not block
Observer = Callable[[ServedModel, list[ImageTask], list[ImageResult]], None]


def gather(first: PoseRequest, take: Callable[[float], PoseRequest | None], max_batch: int,
           max_delay: float) -> list[PoseRequest]:
    """``first`` plus whatever ``take(timeout)`` yields until the batch holds ``max_batch`` images or
    ``max_delay`` seconds passed since ``first`` was taken; ``take`` returns None when nothing came."""
    batch, images = [first], first.size
    deadline = time.perf_counter() + max_delay
    while images < max_batch:
        request = take(max(deadline - time.perf_counter(), 0.0))
        if request is None:  # the wait ran out (or the worker is stopping)
            break
        batch.append(request)
        images += request.size
    return batch


def execute(pipeline: PosePipeline, registry: ModelRegistry, requests: list[PoseRequest],
            clock: Callable[[], float] = time.perf_counter,
            observe: Observer | None = None) -> list[PoseAnswer | Exception]:
    """Run a batch; one outcome per request, in order. A request whose models fail gets its exception,
    the rest of the batch still runs. ``clock`` is the one ``request.enqueued_at`` was read from
    (``time.time`` when the request crossed machines); ``observe`` sees each group's images and results
    (its failure is logged, never the batch's)."""
    start = clock()
    outcomes: list[PoseAnswer | Exception | None] = [None] * len(requests)
    groups: dict[tuple[str, str | None], list[int]] = defaultdict(list)
    for i, request in enumerate(requests):
        groups[(request.pose_ref, request.detector_ref)].append(i)
    total = sum(j.size for j in requests)
    for (pose_ref, det_ref), members in groups.items():
        try:
            pose = registry.get(pose_ref, task="pose")
            det = registry.get(det_ref, task="person_detection") if det_ref else None
            tasks = [t for i in members for t in requests[i].tasks]
            results = pipeline.run(pose, det, tasks)
        except PoseKDError as exc:
            for i in members:
                outcomes[i] = exc
            continue
        except Exception as exc:  # never lose the batch silently
            for i in members:
                outcomes[i] = PoseKDError(f"inference failed: {exc}")
            continue
        k = 0
        for i in members:
            n = requests[i].size
            queue_s = start - requests[i].enqueued_at
            metrics.QUEUE_WAIT.labels(pose.name).observe(queue_s)
            outcomes[i] = PoseAnswer(results[k:k + n], queue_s, total)
            k += n
        if observe is not None:
            try:
                observe(pose, tasks, results)
            except Exception:
                log.exception("batch observer failed")
    return [o if o is not None else RuntimeError("the batch gave this request no result") for o in outcomes]
