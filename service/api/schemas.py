"""Response shapes, for the OpenAPI document (handlers return plain JSON of the same shape)."""
from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, Field

from ..names import MAX_VERSION

Responses = dict[int | str, dict[str, Any]]  # the type of a route's ``responses=`` table


class ModelRef(BaseModel):
    name: str
    version: int


class ImageSize(BaseModel):
    width: int
    height: int


class PersonOut(BaseModel):
    bbox: list[float] = Field(description="x1, y1, x2, y2 in image pixels")
    score: float = Field(description="mean keypoint score")
    keypoints: list[list[float]] = Field(description="17 × [x, y, score], COCO-17 order, image pixels")


class PoseResponse(BaseModel):
    id: str
    model: ModelRef
    detector: ModelRef | None
    image: ImageSize
    keypoint_names: list[str]
    people: list[PersonOut]
    timing_ms: dict[str, float]


class CocoResult(BaseModel):
    """One person as a COCO keypoint result (``format=coco``)."""
    image_id: int
    category_id: int = Field(description="1: person")
    keypoints: list[float] = Field(description="51 numbers: x, y, score per COCO-17 keypoint")
    bbox: list[float] = Field(description="x, y, width, height")
    score: float
    track_id: int | None = Field(None, description="video results only")


class BatchResponse(BaseModel):
    results: list[PoseResponse]
    timing_ms: dict[str, float]


class ErrorBody(BaseModel):
    code: str = Field(description="stable, machine-readable (see the README's error table)")
    message: str = Field(description="for people")
    request_id: str = Field(description="the request's X-Request-ID, also in the service log")


class ErrorResponse(BaseModel):
    error: ErrorBody


def _json_integer(value):
    """A JSON Schema integer: a number with no fraction (3 or 3.0), never a string or a boolean."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError("must be a whole number, not a string or a boolean")
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError("must be a whole number")
        return int(value)
    return value


class AliasUpdate(BaseModel):
    # true and "3" are not versions (3.0 is: JSON Schema's integer); capped like every version in a path
    version: Annotated[int, BeforeValidator(_json_integer)] = Field(ge=1, le=MAX_VERSION)


# ---- health and the Open Inference Protocol (V2) ---------------------------------------------------
class Health(BaseModel):
    status: str = Field(examples=["ok"])


class Readiness(BaseModel):
    status: str = Field(description="ready | not_ready")
    broker: bool
    models: bool = Field(description="the default models are loaded")
    default_models: list[str]
    workers: int | None = Field(None, description="Redis mode: workers with a fresh heartbeat")
    errors: dict[str, str] | None = Field(None, description="default models that failed to load, and why")


class V2Server(BaseModel):
    name: str
    version: str
    extensions: list[str]


class V2Live(BaseModel):
    live: bool


class V2Ready(BaseModel):
    ready: bool


class V2Tensor(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class V2ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[V2Tensor]
    outputs: list[V2Tensor]
    parameters: dict[str, Any]


class V2ModelReady(BaseModel):
    name: str
    version: str
    ready: bool


# ---- models -----------------------------------------------------------------------------------------
class ModelVersion(BaseModel):
    version: int
    loaded: bool
    error: str | None
    task: str | None = None
    sha256: str | None = None
    created_at: str | None = None
    params: int | None = None
    gflops: float | None = None
    manifest: dict[str, Any] | None = Field(None, description="the whole manifest (GET /v1/models/{name} only)")


class ModelInfo(BaseModel):
    name: str
    task: str | None
    aliases: dict[str, int] = Field(description="aliases as served now")
    aliases_on_disk: dict[str, Any] = Field(description="aliases as the store holds them (an error when unreadable)")
    versions: list[ModelVersion]


class ModelsList(BaseModel):
    default_pose_model: str
    default_detector: str
    models: list[ModelInfo]


class AliasTable(BaseModel):
    name: str
    aliases: dict[str, int]


class AgreementStats(BaseModel):
    count: int
    mean: float | None
    median: float | None
    p10: float | None


class VersionAgreement(AgreementStats):
    version: int
    held_out: float | None = Field(description="teacher agreement recorded in this version's manifest")
    threshold: float | None = Field(description="held_out minus POSEKD_SHADOW_DRIFT_MARGIN")
    drift: bool = Field(description="the window's median is below the threshold")


class ShadowInfo(BaseModel):
    model: str | None
    rate: float
    keeps_samples: bool


class KeptSamples(BaseModel):
    count: int
    bytes: int
    max_count: int
    max_bytes: int


class AgreementSummary(AgreementStats):
    """The running record of the shadow teacher for one student model (the last POSEKD_SHADOW_WINDOW
    images): statistics of the per-image agreement, overall and per version."""
    name: str
    shadow: ShadowInfo
    teachers: list[str] = Field(description="the shadow teachers seen in the window, name:version")
    samples_total: int
    dropped_total: int
    since: float | None = Field(description="unix time of the oldest image in the window")
    versions: list[VersionAgreement]
    kept: KeptSamples | None = Field(description="the kept samples, when POSEKD_SHADOW_DIR is set and readable here")


class ReloadReport(BaseModel):
    changed: list[str]
    errors: dict[str, str]


# ---- video jobs ---------------------------------------------------------------------------------------
class VideoInfo(BaseModel):
    width: int
    height: int
    fps: float
    frames: int
    duration_s: float | None = None
    codec: str | None = None
    rotation: int | None = None
    sample_aspect_ratio: list[int] | None = Field(None, description="[pixel width, pixel height] when the "
                                                  "clip's pixels are not square; coordinates stay in coded pixels")


class JobCreated(BaseModel):
    job_id: str
    status: str
    status_url: str
    result_url: str
    video: dict[str, Any] = Field(description="what the clip's container says: width, height, fps, frames, …")


class JobStatus(BaseModel):
    job_id: str
    status: str = Field(description="queued | running | succeeded | failed | cancelled")
    progress: float = Field(ge=0, le=1)
    frames_done: int
    frames_total: int
    error: str | None
    render: bool
    created: float = Field(description="Unix seconds")
    finished: float | None


class JobDeleted(BaseModel):
    job_id: str
    status: str
    deleted: bool


class TrackedPerson(BaseModel):
    track_id: int
    bbox: list[float] = Field(description="x1, y1, x2, y2")
    score: float
    keypoints: list[list[float]] = Field(description="17 × [x, y, score]")


class VideoFrame(BaseModel):
    frame: int
    time: float = Field(description="seconds from the start of the clip")
    people: list[TrackedPerson]


class Track(BaseModel):
    track_id: int
    first_frame: int
    last_frame: int
    frames: int


class VideoResult(BaseModel):
    video: dict[str, Any]
    model: ModelRef
    detector: ModelRef
    keypoint_names: list[str]
    tracks: list[Track]
    frames: list[VideoFrame]
    stats: dict[str, Any]


class PoseTrackDocument(BaseModel):
    """``GET /v1/jobs/{id}/result?format=posetrack``: COCO layout, one image per frame."""
    images: list[dict[str, Any]]
    annotations: list[dict[str, Any]] = Field(description="COCO keypoint annotations plus track_id")
    categories: list[dict[str, Any]]
