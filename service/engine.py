"""The engine: what runs models, with no server around it — the model store, the registry that loads
its versions as ONNX Runtime sessions, and the pose pipeline, configured from ``Settings``. The service
(:mod:`service.composition`), `posekd video` and the in-process estimator (``posekd.load()``) all start
from it; the pipeline and the store themselves never read settings."""
from __future__ import annotations

from dataclasses import dataclass

from . import scratch
from .pipeline import PosePipeline
from .pipeline.people import PersonScoring
from .settings import Settings
from .store import ModelRegistry, ModelStore
from .store.manifest import Manifest


@dataclass
class Engine:
    settings: Settings
    store: ModelStore
    registry: ModelRegistry
    pipeline: PosePipeline


def pipeline_for(settings: Settings) -> PosePipeline:
    """The pipeline as the settings configure it."""
    return PosePipeline(detector_threshold=settings.detector_threshold, max_boxes=settings.max_people,
                        pose_chunk=settings.pose_max_batch, detector_size=settings.detector_size,
                        pose_nms=settings.pose_nms_oks, second_centre=settings.pose_second_centre,
                        scoring=PersonScoring(legacy=settings.person_score == "keypoints"))


def sessions_for(settings: Settings):
    """What the registry loads a model with: an ONNX Runtime session on the configured device and threads."""
    from .pipeline.runtime import OnnxModel

    def load(manifest: Manifest, data: bytes) -> OnnxModel:
        return OnnxModel(manifest, data, device=settings.device, cuda_device_id=settings.cuda_device_id,
                         intra_threads=settings.ort_intra_threads, inter_threads=settings.ort_inter_threads,
                         spinning=settings.ort_spinning)

    return load


def build_engine(settings: Settings, *, runs_models: bool = True) -> Engine:
    """Store, registry and pipeline. ``runs_models`` false: the registry resolves names and checks
    sha256 but loads no session (an API whose workers run the models)."""
    store = ModelStore(settings.model_store)
    registry = ModelRegistry(store, sessions_for(settings) if runs_models else (lambda m, data: None),
                             default_alias=settings.default_alias)
    scratch.configure(settings.scratch_dir)
    return Engine(settings, store, registry, pipeline_for(settings))
