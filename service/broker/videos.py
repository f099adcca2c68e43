"""The video job queue contract, beside the image brokers: the API creates a job in its
:class:`~service.video.jobs.JobStore` (state and files) and hands the id to a ``VideoQueue``, which
gets it run — on threads of the API process (:class:`~service.video.runner.LocalRunner`, embedded
mode) or by `posekd worker`s reading the ``videos`` stream (:class:`RedisVideoQueue`)."""
from __future__ import annotations

import abc

from ..settings import RedisConfig
from .keys import RedisKeys


class VideoQueue(abc.ABC):
    @abc.abstractmethod
    def submit(self, job_id: str) -> None:
        """Queue a job already created in the job store."""

    @abc.abstractmethod
    def stop(self) -> None:
        """Stop taking jobs; what happens to queued ones is the implementation's (documented) choice."""


class RedisVideoQueue(VideoQueue):
    """One entry per job on ``<prefix>:videos``; workers read it as the ``video-workers`` group and a
    job whose worker died is taken over (see :mod:`service.video.runner`)."""

    GROUP = "video-workers"

    def __init__(self, config: RedisConfig):
        import redis
        self.redis = redis.Redis.from_url(config.url, socket_connect_timeout=config.connect_timeout_s,
                                          socket_timeout=30)
        self.stream = RedisKeys(config.prefix).videos

    def submit(self, job_id: str) -> None:
        self.redis.xadd(self.stream, {"job": job_id})

    def stop(self) -> None:
        """Queued jobs stay in the stream for the workers; only the connection closes."""
        self.redis.close()
