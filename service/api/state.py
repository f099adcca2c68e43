"""What the API holds while it runs: settings, store, registry, pipeline and broker."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

from .. import metrics
from ..broker import Broker, LocalBroker
from ..broker.redis import RedisBroker
from ..errors import PoseKDError
from ..pipeline import PosePipeline
from ..pipeline.runtime import OnnxModel
from ..settings import Settings
from ..store import ModelRegistry, ModelSpec, ModelStore
from ..video.jobs import JobStore, LocalJobStore, RedisJobStore
from ..video.runner import LocalRunner

log = logging.getLogger("posekd.api")


@dataclass
class ServiceState:
    settings: Settings
    store: ModelStore
    registry: ModelRegistry
    pipeline: PosePipeline
    broker: Broker
    preload_errors: dict[str, str]
    jobs: JobStore | None = None
    video_runner: LocalRunner | None = None  # embedded mode; in Redis mode the workers run the jobs
    warmed: list[str] = field(default_factory=list)  # name:version of the models run once at start

    @classmethod
    def build(cls, settings: Settings) -> ServiceState:
        store = ModelStore(settings.model_store)
        # In Redis mode the workers run the models; the API only verifies them (sha256) and resolves names.
        loader = (lambda m, data: None) if settings.redis_url else (
            lambda m, data: OnnxModel.from_settings(m, data, settings))
        registry = ModelRegistry(store, loader, default_alias=settings.default_alias)
        registry.on_change(lambda: metrics.publish_models(registry))
        pipeline = PosePipeline.from_settings(settings)
        broker: Broker
        if settings.redis_url:
            broker = RedisBroker(settings.redis_url, prefix=settings.redis_prefix, queue_max=settings.queue_max,
                                 payload=settings.redis_payload, connect_timeout_s=settings.redis_connect_timeout_s,
                                 op_timeout_s=settings.redis_op_timeout_s, reply_ttl_s=settings.reply_ttl_s,
                                 worker_stale_s=settings.worker_stale_s, require_workers=settings.require_workers,
                                 max_connections=settings.redis_max_connections)
        else:
            broker = LocalBroker(pipeline, registry, max_batch=settings.max_batch,
                                 max_delay_ms=settings.max_delay_ms, queue_max=settings.queue_max,
                                 workers=settings.workers)
        if settings.redis_url:
            jobs: JobStore = RedisJobStore(settings.redis_url, settings.redis_prefix, settings.job_ttl_s,
                                           settings.redis_connect_timeout_s)
            runner = None
        else:
            jobs = LocalJobStore(settings.video_dir, settings.job_ttl_s)
            runner = LocalRunner(jobs, settings, registry, pipeline, settings.video_workers)
        return cls(settings, store, registry, pipeline, broker, {}, jobs, runner)

    @property
    def runs_models(self) -> bool:
        """False in Redis mode: the workers load and run the models; the API only resolves names."""
        return isinstance(self.broker, LocalBroker)

    def default_specs(self) -> list[str]:
        return [self.settings.default_pose_model, self.settings.default_detector]

    def preload(self) -> None:
        mode = self.settings.warm_up
        specs = self.default_specs()
        if mode == "all":  # every model's default alias, so no first request pays for loading
            specs += [n for n in self.store.names() if n not in specs and self._has_default_alias(n)]
        self.preload_errors = self.registry.preload(specs)
        if self.runs_models and mode != "none":
            self.warm_up(specs if mode == "all" else self.default_specs())
        for spec, err in self.preload_errors.items():
            log.error("model %s is not served: %s", spec, err)
        if not self.store.names():
            log.error("the model store %s is empty: run `posekd models import --teachers DIR` (or `make run`, "
                      "which does it when ../shared/teachers is there) or import your own ONNX model",
                      self.settings.model_store)

    def _has_default_alias(self, name: str) -> bool:
        try:
            return self.settings.default_alias in self.store.aliases(name)
        except PoseKDError:
            return False

    def warm_up(self, specs: list[str]) -> list[str]:
        """One inference through each loaded model of ``specs`` (ONNX Runtime initialises lazily);
        returns the ``name:version`` of those warmed."""
        import numpy as np

        image = np.full((256, 256, 3), 127, np.uint8)
        box = np.array([[64, 32, 192, 240]], np.float32)
        warmed = []
        for spec in specs:
            if spec in self.preload_errors:
                continue
            try:
                served = self.registry.get(spec)
                if served.manifest.task == "pose":
                    self.pipeline.pose(served, [image], [box])
                else:
                    self.pipeline.detect(served, [image])
                warmed.append(f"{served.name}:{served.version}")
            except Exception as exc:  # a model that cannot run is reported, not fatal for the others
                log.error("warm-up of %s failed: %s", spec, exc)
        self.warmed = warmed
        log.info("warmed up %s", ", ".join(warmed) or "nothing")
        return warmed

    def models_ready(self) -> bool:
        loaded = {s.name for s in self.registry.loaded()}
        return all(ModelSpec.parse(spec).name in loaded for spec in self.default_specs())
