"""The video job queue contract, beside the image brokers: the API creates a job in its
:class:`~service.video.jobs.JobStore` (state and files) and hands the id to a ``VideoQueue``, which
gets it run — on threads of the API process (:class:`~service.video.local.LocalRunner`, embedded
mode) or by `posekd worker`s reading the ``videos`` stream (:class:`RedisVideoQueue`)."""
from __future__ import annotations

import abc
import time

from ..errors import Overloaded
from ..settings import Delivery, RedisConfig
from .keys import RedisKeys


class VideoQueue(abc.ABC):
    @abc.abstractmethod
    def submit(self, job_id: str) -> None:
        """Queue a job already created in the job store."""

    @abc.abstractmethod
    def stop(self) -> None:
        """Stop taking jobs; what happens to queued ones is the implementation's (documented) choice."""

    def require_a_worker(self) -> None:
        """Raise Overloaded (503 ``no_workers``) when no worker would run a queued job; the embedded
        service's own threads always do."""
        return None


class RedisVideoQueue(VideoQueue):
    """One entry per job on ``<prefix>:videos``; workers read it as the ``video-workers`` group and a
    job whose worker died is taken over (see :mod:`service.video.consumer`)."""

    GROUP = "video-workers"

    def __init__(self, config: RedisConfig, delivery: Delivery = Delivery()):
        import redis
        self.redis = redis.Redis.from_url(config.url, socket_connect_timeout=config.connect_timeout_s,
                                          socket_timeout=30)
        self.stream = RedisKeys(config.prefix).videos
        self.workers_key = RedisKeys(config.prefix).workers
        self.delivery = delivery

    def require_a_worker(self) -> None:
        """A job queued with no live worker would wait for nobody (unless workers may scale to zero)."""
        import redis
        if not self.delivery.require_workers:
            return
        try:
            alive = self.redis.zcount(self.workers_key, time.time() - self.delivery.stale_s, "+inf")
        except redis.RedisError as exc:
            raise Overloaded(f"the queue is unavailable (Redis: {exc})", retry_after=2,
                             code="broker_unavailable") from None
        if not alive:
            raise Overloaded("no worker is serving the queue", retry_after=5, code="no_workers")

    def submit(self, job_id: str) -> None:
        self.redis.xadd(self.stream, {"job": job_id})

    def stop(self) -> None:
        """Queued jobs stay in the stream for the workers; only the connection closes."""
        self.redis.close()
