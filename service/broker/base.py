"""The broker contract: the API submits pose requests and awaits their results; workers batch them.

Two implementations share it: :class:`~service.broker.local.LocalBroker` (in-process, the default)
and the Redis Streams broker (scale-out)."""
from __future__ import annotations

import abc
import time
import uuid
from dataclasses import dataclass, field

import numpy as np

from ..images import decode_upload
from ..pipeline import ImageResult, ImageTask
from ..settings import ImageLimits


@dataclass
class Admitted:
    """An upload made ready to submit: decoded pixels (and the budget they hold until the request is
    answered), or the checked bytes a worker elsewhere decodes."""
    image: np.ndarray | None
    scale: float
    data: bytes | None
    size: tuple[int, int] | None
    held: int = 0


@dataclass
class PoseRequest:
    """One API request: images that share a pose model and a detector (exact ``name:version``)."""
    pose_ref: str
    detector_ref: str | None
    tasks: list[ImageTask]
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    enqueued_at: float = field(default_factory=time.perf_counter)
    cancelled: bool = False

    @property
    def size(self) -> int:
        return len(self.tasks)


@dataclass
class PoseAnswer:
    results: list[ImageResult]
    queue_s: float  # time from enqueue to the start of the batch that ran it
    batch_images: int  # images in that batch, all requests together


class Broker(abc.ABC):
    """What the API needs from the queue in either mode. The defaults describe the embedded broker;
    the Redis broker overrides them."""
    name = "broker"

    @property
    def wants_pixels(self) -> bool:
        """True when uploads must be decoded before ``submit`` (in-process, or Redis with raw payload)."""
        return True

    @property
    def runs_models(self) -> bool:
        """True when this process runs the models itself (embedded mode)."""
        return True

    @property
    def workers(self) -> int | None:
        """Workers ready to serve (inference threads here; live worker processes in Redis mode)."""
        return None

    async def workers_now(self) -> int | None:
        """Workers counted now rather than at the last poll (Redis mode); None where not applicable."""
        return self.workers

    async def require_a_worker(self) -> None:
        """Raise Overloaded (503 ``no_workers``) when no worker would run queued work; no-op here."""
        return None

    def admit(self, data: bytes, limits: ImageLimits) -> Admitted:
        """An upload made ready for :meth:`submit` (called in a thread): decoded here, under the
        process's pixel budget (the caller releases ``held`` once the request is answered)."""
        d = decode_upload(data, limits)
        return Admitted(d.image, d.scale, None, d.size, d.held)

    def picture(self, task: ImageTask, data: bytes, limits: ImageLimits) -> tuple[np.ndarray, float]:
        """The pixels of an admitted upload and their scale, to draw on (decoded already here)."""
        if task.image is None:
            raise ValueError("this broker decodes every upload it admits")
        return task.image, task.scale

    async def readiness(self, require_workers: bool) -> tuple[bool, dict]:
        """Whether there are workers to run what is queued, and what to say about them in /readyz (the
        in-process threads are counted by :meth:`ready`)."""
        return True, {}

    @abc.abstractmethod
    async def start(self) -> None: ...

    @abc.abstractmethod
    async def stop(self) -> None:
        """Stop taking work and finish what was accepted."""

    @abc.abstractmethod
    async def submit(self, request: PoseRequest, timeout: float) -> PoseAnswer:
        """Queue a request and wait for its result. Raises Overloaded when the queue is full or the
        broker is stopping, Timeout when no result came within ``timeout`` seconds."""

    @abc.abstractmethod
    def depth(self) -> int:
        """Images waiting in the queue."""

    @abc.abstractmethod
    async def ready(self) -> bool: ...
