"""The one place where the parts are wired: :func:`build` turns ``Settings`` and a role into a
:class:`Runtime` — store, registry, pipeline and, by role and mode, the broker, the video queue and the
job store. Every "embedded or Redis?" decision of the service is made here; the API, `posekd worker`
and the offline commands (`posekd video`, the in-process estimator) all start from it.

| role | registry loads models | broker | video queue | job store |
|---|---|---|---|---|
| ``api``, embedded | yes | LocalBroker (inference threads) | LocalRunner (threads) | LocalJobStore |
| ``api``, Redis | no (names and sha256 only) | RedisBroker | RedisVideoQueue | RedisJobStore |
| ``worker`` (Redis) | yes | — (it *is* the consumer) | — (VideoConsumer) | RedisJobStore |
| ``offline`` | yes | — | — | — |

The shadow teacher (:mod:`service.shadow`), when ``POSEKD_SHADOW_RATE`` > 0, runs where the models run:
beside the inference threads in the embedded API, in each worker in Redis mode. Its running record is
in memory (embedded) or in Redis, where the API reads it (``Runtime.agreements``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from . import metrics, scratch
from .broker import Broker, LocalBroker
from .broker.videos import VideoQueue
from .pipeline import PosePipeline
from .settings import Settings
from .shadow import AgreementLog, MemoryLog, Shadow, ShadowConfig
from .store import ModelRegistry, ModelStore
from .video.jobs import JobStore

Role = Literal["api", "worker", "offline"]


@dataclass
class Runtime:
    settings: Settings
    role: Role
    store: ModelStore
    registry: ModelRegistry
    pipeline: PosePipeline
    broker: Broker | None = None
    videos: VideoQueue | None = None
    jobs: JobStore | None = None
    shadow: Shadow | None = None  # the teacher on sampled traffic, where this process runs the models
    agreements: AgreementLog | None = None  # the shadow's running record (read by the agreement route)


def _shadow(settings: Settings, rt: Runtime) -> None:
    """The shadow's record (always, for the API to answer from) and, where models run, the shadow."""
    if settings.redis_url:
        from .shadow import RedisLog
        rt.agreements = RedisLog(settings.redis_url, settings.redis_prefix, settings.shadow_window,
                                 settings.redis_op_timeout_s)
    else:
        rt.agreements = MemoryLog(settings.shadow_window)
    config = ShadowConfig.from_settings(settings)
    if config.enabled and (rt.role == "worker" or not settings.redis_url):
        rt.shadow = Shadow(config, rt.registry, rt.pipeline, log_to=rt.agreements)


def build(settings: Settings, role: Role) -> Runtime:
    from .pipeline.runtime import OnnxModel

    if role == "worker" and not settings.redis_url:
        raise ValueError("a worker needs POSEKD_REDIS_URL (the embedded service runs its own inference threads)")
    runs_models = role != "api" or not settings.redis_url
    store = ModelStore(settings.model_store)
    registry = ModelRegistry(store, (lambda m, data: OnnxModel.from_settings(m, data, settings)) if runs_models
                             else (lambda m, data: None), default_alias=settings.default_alias)
    pipeline = PosePipeline.from_settings(settings)
    rt = Runtime(settings, role, store, registry, pipeline)
    scratch.configure(settings.scratch_dir)
    if role == "offline":
        return rt
    scratch.sweep()  # what killed processes left behind
    registry.on_change(lambda: metrics.publish_models(registry))
    _shadow(settings, rt)
    observe = rt.shadow.offer if rt.shadow is not None else None
    if settings.redis_url:
        from .video.jobs import RedisJobStore
        rt.jobs = RedisJobStore(settings.redis, settings.job_ttl_s)
    if role == "worker":
        return rt
    if settings.redis_url:
        from .broker.redis import RedisBroker
        from .broker.videos import RedisVideoQueue
        rt.broker = RedisBroker(settings.redis, settings.delivery, queue_max=settings.queue_max,
                                payload=settings.redis_payload)
        rt.videos = RedisVideoQueue(settings.redis)
    else:
        from .video.jobs import LocalJobStore
        from .video.runner import LocalRunner, VideoConfig
        rt.broker = LocalBroker(pipeline, registry, settings.batching, workers=settings.workers, observe=observe)
        local_jobs = LocalJobStore(settings.video_dir, settings.job_ttl_s)
        rt.jobs = local_jobs
        rt.videos = LocalRunner(local_jobs, VideoConfig.from_settings(settings), registry, pipeline,
                                settings.video_workers)
    return rt
