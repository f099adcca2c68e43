"""The one place where the service's parts are wired: :func:`build_api` and :func:`build_worker` turn
``Settings`` into a typed runtime — the engine (store, registry, pipeline; :mod:`service.engine`) and,
by role and mode, the broker, the video queue, the job store and the shadow teacher. Every "embedded or
Redis?" decision of the service is made here; nothing downstream asks which mode it is in.

| role | registry loads models | broker | video queue | job store |
|---|---|---|---|---|
| :func:`build_api`, embedded | yes | LocalBroker (inference threads) | LocalRunner (threads) | LocalJobStore |
| :func:`build_api`, Redis | no (names and sha256 only) | RedisBroker | RedisVideoQueue | RedisJobStore |
| :func:`build_worker` (Redis) | yes | StreamConsumer (it *is* the consumer) | VideoConsumer | RedisJobStore |
| offline (:func:`service.engine.build_engine`) | yes | — | — | — |

The shadow teacher (:mod:`service.shadow`), when ``POSEKD_SHADOW_RATE`` > 0, runs where the models run:
beside the inference threads in the embedded API, in each worker in Redis mode. Its running record is
in memory (embedded) or in Redis, where the API reads it (``ApiRuntime.agreements``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from . import metrics, scratch
from .broker import Broker, LocalBroker
from .broker.videos import VideoQueue
from .engine import Engine, build_engine
from .settings import Settings
from .shadow import AgreementLog, MemoryLog, Shadow, ShadowConfig
from .video.jobs import JobStore

if TYPE_CHECKING:
    from .broker.consumer import StreamConsumer
    from .video.consumer import VideoConsumer
    from .video.jobs import RedisJobStore


@dataclass
class ApiRuntime(Engine):
    """``posekd serve``: the engine plus the queue it feeds, the video queue and the job store."""
    broker: Broker
    videos: VideoQueue
    jobs: JobStore
    agreements: AgreementLog  # the shadow's running record (read by the agreement route)
    shadow: Shadow | None = None  # the teacher on sampled traffic, when this process runs the models


@dataclass
class WorkerRuntime(Engine):
    """``posekd worker`` (Redis mode): the engine plus its two consumers, of images and of video jobs."""
    name: str
    consumer: StreamConsumer
    videos: VideoConsumer
    jobs: RedisJobStore
    shadow: Shadow | None = None


def _serving(settings: Settings, runs_models: bool) -> Engine:
    """The engine of a serving process, which also cleans up after dead ones and publishes its models."""
    engine = build_engine(settings, runs_models=runs_models)
    scratch.sweep()  # what killed processes left behind
    engine.registry.on_change(lambda: metrics.publish_models(engine.registry))
    return engine


def _shadow(settings: Settings, engine: Engine, log_to: AgreementLog) -> Shadow | None:
    config = ShadowConfig.from_settings(settings)
    return Shadow(config, engine.registry, engine.pipeline, log_to=log_to) if config.enabled else None


def build_api(settings: Settings) -> ApiRuntime:
    """Embedded mode (no ``POSEKD_REDIS_URL``): inference threads, video threads and the shadow in this
    process. Redis mode: the queues and the job store in Redis; the workers run the models."""
    parts = _serving(settings, runs_models=not settings.redis_url)
    common = (parts.settings, parts.store, parts.registry, parts.pipeline)
    if settings.redis_url:
        from .broker.redis import RedisBroker
        from .broker.videos import RedisVideoQueue
        from .shadow import RedisLog
        from .video.jobs import RedisJobStore
        queue = RedisBroker(settings.redis, settings.delivery, queue_max=settings.queue_max,
                            payload=settings.redis_payload)
        shared = RedisLog(settings.redis_url, settings.redis_prefix, settings.shadow_window,
                          settings.redis_op_timeout_s)
        return ApiRuntime(*common, broker=queue, videos=RedisVideoQueue(settings.redis, settings.delivery),
                          jobs=RedisJobStore(settings.redis, settings.job_ttl_s), agreements=shared)
    from .video.job import VideoConfig
    from .video.jobs import LocalJobStore
    from .video.local import LocalRunner
    record = MemoryLog(settings.shadow_window)
    shadow = _shadow(settings, parts, record)
    jobs = LocalJobStore(settings.video_dir, settings.job_ttl_s)
    broker = LocalBroker(parts.pipeline, parts.registry, settings.batching, threads=settings.inference_threads,
                         observe=shadow.offer if shadow is not None else None)
    videos = LocalRunner(jobs, VideoConfig.from_settings(settings), parts.registry, parts.pipeline,
                         settings.video_workers)
    return ApiRuntime(*common, broker=broker, videos=videos, jobs=jobs, agreements=record, shadow=shadow)


def build_worker(settings: Settings, name: str) -> WorkerRuntime:
    """A worker named ``name`` in the consumer groups, with its image and video consumers."""
    if not settings.redis_url:
        raise ValueError("a worker needs POSEKD_REDIS_URL (the embedded service runs its own inference threads)")
    from .broker.consumer import StreamConsumer
    from .shadow import RedisLog
    from .video.consumer import VideoConsumer
    from .video.job import VideoConfig
    from .video.jobs import RedisJobStore
    parts = _serving(settings, runs_models=True)
    shadow = _shadow(settings, parts, RedisLog(settings.redis_url, settings.redis_prefix, settings.shadow_window,
                                               settings.redis_op_timeout_s))
    jobs = RedisJobStore(settings.redis, settings.job_ttl_s)
    consumer = StreamConsumer(settings.redis, name, parts.pipeline, parts.registry, batching=settings.batching,
                              delivery=settings.delivery, images=settings.image_limits,
                              observe=shadow.offer if shadow is not None else None)
    videos = VideoConsumer(jobs, name, VideoConfig.from_settings(settings), parts.registry, parts.pipeline,
                           settings.delivery)
    return WorkerRuntime(parts.settings, parts.store, parts.registry, parts.pipeline, name=name, consumer=consumer,
                         videos=videos, jobs=jobs, shadow=shadow)
