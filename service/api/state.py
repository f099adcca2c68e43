"""What the API holds while it runs: the runtime built for the ``api`` role (store, registry,
pipeline, broker, video queue, job store — see :mod:`service.composition`) and what start-up found."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

from fastapi import Request

from ..broker import Broker
from ..broker.videos import VideoQueue
from ..composition import ApiRuntime, build_api
from ..errors import PoseKDError
from ..pipeline import PosePipeline
from ..settings import Settings
from ..store import ModelRegistry, ModelSpec, ModelStore
from ..video.jobs import JobStore

log = logging.getLogger("posekd.api")


def service_of(request: Request) -> ServiceState:
    """The running service's state, typed (what routes and dependencies use instead of the untyped
    ``request.app.state.service``)."""
    return request.app.state.service


@dataclass
class ServiceState:
    runtime: ApiRuntime
    preload_errors: dict[str, str] = field(default_factory=dict)
    warmed: list[str] = field(default_factory=list)  # name:version of the models run once at start

    @classmethod
    def build(cls, settings: Settings) -> ServiceState:
        return cls(build_api(settings))

    # the parts, typed, for the routes
    @property
    def settings(self) -> Settings:
        return self.runtime.settings

    @property
    def store(self) -> ModelStore:
        return self.runtime.store

    @property
    def registry(self) -> ModelRegistry:
        return self.runtime.registry

    @property
    def pipeline(self) -> PosePipeline:
        return self.runtime.pipeline

    @property
    def broker(self) -> Broker:
        return self.runtime.broker

    @property
    def videos(self) -> VideoQueue:
        return self.runtime.videos

    @property
    def jobs(self) -> JobStore:
        return self.runtime.jobs

    @property
    def runs_models(self) -> bool:
        """False in Redis mode: the workers load and run the models; the API only resolves names."""
        return self.broker.runs_models

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
