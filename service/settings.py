"""Service settings (environment prefix ``POSEKD_``), read once through :func:`get_settings`."""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from .shared import teachers_dir

_REPO_ROOT = Path(__file__).resolve().parent.parent


def default_model_store() -> Path:
    """Where the models are when ``POSEKD_MODEL_STORE`` is not set: the checkout's ``model_store/``
    (a clone, an editable install), else the default models the wheel carries (``service/_models``).
    Never relative to the current folder: the same store from wherever ``posekd`` runs."""
    checkout = _REPO_ROOT / "model_store"
    if checkout.is_dir():
        return checkout
    return Path(__file__).resolve().parent / "_models"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="POSEKD_", env_file=None, extra="ignore")

    # --- model store -------------------------------------------------------------------------
    model_store: Path = Field(default_factory=default_model_store)
    default_pose_model: str = "pose-s"       # our distilled students, committed in model_store/
    default_detector: str = "detector-s"
    default_alias: str = "production"
    store_poll_s: float = 10.0  # re-scan the store for changes this often; 0 turns polling off
    teachers: Path = Field(default_factory=teachers_dir)  # ../shared/teachers beside the checkout

    # --- inference runtime -------------------------------------------------------------------
    device: str = "auto"  # auto | cpu | cuda
    cuda_device_id: int = 0
    ort_intra_threads: int = 0  # 0: ONNX Runtime's choice (one per physical core)
    ort_inter_threads: int = 1
    ort_spinning: bool = False  # let idle pool threads busy-wait (off: the detector and pose sessions share cores)
    pose_max_batch: int = 32  # crops per pose-model call

    # --- broker / dynamic batching -----------------------------------------------------------
    redis_url: str | None = None  # unset: embedded mode (in-process broker)
    max_batch: int = 8  # requests (images) batched together per stage
    max_delay_ms: float = 5.0  # how long the first request of a batch waits for company
    queue_max: int = 256  # images waiting in the queue before new work gets 503
    request_timeout_s: float = 30.0
    inference_threads: int = 1  # embedded mode: threads that take batches from the queue and run the models

    # --- Redis mode (POSEKD_REDIS_URL set): API replicas and `posekd worker` processes ---------------
    redis_prefix: str = "posekd"  # every key starts with it (service/broker/keys.py)
    redis_payload: Literal["encoded", "raw"] = "encoded"  # uploaded bytes, or decoded pixels (bench queue)
    redis_connect_timeout_s: float = 1.0  # a Redis that does not answer in time means 503, not a hang
    redis_op_timeout_s: float = 2.0
    redis_max_connections: int = 256  # per process; past it a command waits for a free connection
    # A worker whose heartbeat is older than worker_stale_s is dead: any live worker takes over the
    # entries it held (within worker_stale_s + worker_heartbeat_s of the crash). A live worker's entries
    # are never taken, however long its batch runs, unless visibility_timeout_s > 0 says a worker
    # holding an entry that long is hung (a safety net; 0 turns it off).
    visibility_timeout_s: float = 300.0
    max_deliveries: int = 3  # an entry delivered this often is answered with an error, not retried
    reply_ttl_s: float = 300.0  # reply streams of vanished API replicas expire after this
    require_workers: bool = True  # 503 at once when no worker heartbeat is fresh (false for scale-to-zero)
    worker_heartbeat_s: float = 1.0
    worker_stale_s: float = 5.0  # a worker whose heartbeat is older counts as gone; its work is taken over
    worker_name: str | None = None  # consumer name in the group; default host-pid
    metrics_port: int = 9100  # `posekd worker` serves Prometheus metrics here

    # --- request limits ----------------------------------------------------------------------
    max_image_bytes: int = 20 * 1024 * 1024
    max_image_pixels: int = 40_000_000
    # JPEGs much larger than this (long side, pixels) are decoded at 1/2, 1/4 or 1/8 scale by libjpeg,
    # keeping the long side at least this long; results stay in original pixels. 0 turns it off.
    decode_max_side: int = 1280
    # Other formats whose long side passes 1.25 × decode_max_side are reduced right after decoding.
    # The memory budget of decoding, in pixels of 3 bytes, across all concurrent decodes of this process:
    # each decode is charged its measured peak (a PNG 2.2× its pixels, service/images.py DECODE_PEAK), then
    # the reduced image until its request is answered. A decode that would pass it waits up to
    # decode_wait_s, then gets 503. It must hold the largest image allowed (2.5 × max_image_pixels) beside
    # a full batch of reduced images (max_batch_images × (1.25 × decode_max_side)²). 0: off.
    max_decode_pixels: int = 150_000_000
    decode_wait_s: float = 10.0
    max_batch_images: int = 16
    max_batch_bytes: int = 64 * 1024 * 1024  # a whole /v1/pose/batch body, checked while it streams in
    body_timeout_s: float = 120.0  # a request body (image, batch, clip) not all arrived by then: 408
    max_people: int = 20  # default and ceiling of the max_people query parameter
    min_score: float = 0.2  # default person score threshold
    detector_threshold: float = 0.15  # boxes the detector must reach before the pose stage sees them
    # the detector's input long side, for detectors whose graph takes any multiple of 32 px (0: the
    # manifest's size); larger finds smaller people and costs time (bench/RESULTS.md: the size sweep)
    detector_size: int = 0
    # a detected person whose keypoints match a better one's above this OKS is dropped (0: off); chosen
    # by `posekd bench people` on held-out photos (bench/RESULTS.md)
    pose_nms_oks: float = 0.7
    # a second person is read from a pose crop whose centre heat has a second peak this high (0: off): the
    # person the detector merged with, or lost behind, another (bench/RESULTS.md, people)
    pose_second_centre: float = 0.0
    # person score: "combined" = box score, confident keypoints and their spread; "keypoints" = the
    # mean keypoint score (before 0.2 of the package)
    person_score: Literal["combined", "keypoints"] = "combined"

    # --- video jobs --------------------------------------------------------------------------
    max_video_bytes: int = 200 * 1024 * 1024
    max_video_seconds: float = 600.0
    max_video_frames: int = 20_000
    max_video_pixels: int = 3840 * 2160  # per frame
    video_dir: Path | None = None  # uploads, results and overlays (embedded mode); default: a temp dir
    # temporary files go to <scratch_dir>/posekd-<pid>-<start>/ (default: the system's temp folder); a
    # serving process removes, when it starts, the folders of processes that are gone (service/scratch.py)
    scratch_dir: Path | None = None
    job_ttl_s: float = 3600.0  # finished jobs (state, result, overlay) are deleted after this
    video_workers: int = 1  # clips processed at the same time per process (embedded mode)
    video_visibility_s: float = 600.0  # Redis mode: a job a live worker held this long with no progress is taken
    # Redis mode: a running job's finished frames and tracker state are saved this often (at the end of a
    # window), so a worker that takes the job over continues from there
    video_checkpoint_s: float = 1.0
    video_keyframe_interval: int = 5  # run the detector every K frames (1: every frame)
    video_window: int = 4  # propagated frames whose pose crops are batched together
    video_smoothing: bool = True
    video_min_score: float = 0.25
    one_euro_min_cutoff: float = 1.0  # Hz: lower = smoother at rest
    one_euro_beta: float = 0.02  # per px/s: higher = less lag on fast motion
    one_euro_d_cutoff: float = 1.0
    track_match_threshold: float = 0.2  # OKS/IoU similarity needed to continue a track
    track_max_lost: int = 30  # frames a lost track is remembered (occlusion, re-entry)
    track_start_score: float = 0.4  # score a person needs to start a new track
    # people between this and video_min_score only continue tracks the sure people left (ByteTrack's
    # second pass); below it they are dropped. Off by default (= video_min_score): on vtest it pulled a
    # track onto the person in front during a crossing (bench/RESULTS.md, tracking)
    track_low_score: float = 0.25
    track_appearance_weight: float = 0.3  # share of the torso colour signature in the match (0: geometry only)
    # OC-SORT's observation-centric recovery: lost tracks matched again at where they were last seen, and
    # given their velocity across the gap (service/video/tracker.py); on vtest 31 -> 27 tracks, the same
    # people per frame and identities (bench/RESULTS.md, tracking)
    track_recovery: bool = True

    # --- shadow teacher (service/shadow): the student checked against a teacher on sampled traffic ----
    shadow_model: str | None = None  # a store reference, e.g. movenet-thunder; unset: off
    shadow_rate: Annotated[float, Field(ge=0.0, le=1.0)] = 0.0  # share of answered images the teacher also runs on
    # the images agreed with least are kept here with the teacher's answer (users' pictures: off unless set)
    shadow_dir: Path | None = None
    shadow_queue_max: int = 16  # images waiting for the teacher; past it a sample is dropped (and counted)
    shadow_keep_max: int = 500  # kept samples, at most this many ...
    shadow_keep_max_bytes: int = 256 * 1024 * 1024  # ... and this many bytes of images
    shadow_window: int = 1000  # image agreements in the running summary (GET /v1/models/{name}/agreement)
    # drift: the running median more than this below the held-out agreement in the student's manifest
    shadow_drift_margin: float = 0.1

    # --- security ----------------------------------------------------------------------------
    # Comma-separated. With any key set, /v1 routes need a key and admin routes an admin key
    # (when no admin key is set, every API key is an admin key).
    api_keys: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # with no key set, admin routes answer only a service bound to a loopback address; true opens them
    # on any address (behind a proxy that guards them, say)
    open_admin: bool = False
    admin_api_keys: Annotated[list[str], NoDecode] = Field(default_factory=list)

    # --- server ------------------------------------------------------------------------------
    host: str = "127.0.0.1"
    port: int = 8000
    log_level: str = "info"
    access_log: Literal["off", "text", "json"] = "off"  # one line per request (with its request id)
    # browser origins allowed to call the API (CORS), comma-separated; "*" for any; empty: no CORS headers
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # connections and requests uvicorn serves at once (beyond: 503), so slow or idle clients cannot hold
    # every slot; idle keep-alive connections are closed after keepalive_timeout_s
    max_connections: int = 512
    keepalive_timeout_s: int = 5
    # a connection whose request head has not all arrived this long after it opened (or after the
    # request's first byte) is closed: silent or trickling clients cannot hold the connection slots
    header_timeout_s: float = 5.0
    gzip_min_bytes: int = 4096  # responses larger than this are gzip-compressed for clients that accept it
    # models run once at start so the first request does not pay for loading: the two defaults, every
    # model's production version in the store, or none
    warm_up: Literal["none", "defaults", "all"] = "defaults"

    @field_validator("api_keys", "admin_api_keys", "cors_origins", mode="before")
    @classmethod
    def _split_keys(cls, value):
        if isinstance(value, str):
            return [k.strip() for k in value.split(",") if k.strip()]
        return value

    @field_validator("max_batch", "queue_max", "max_batch_images", "pose_max_batch", "inference_threads",
                     "max_deliveries", "video_workers", "video_keyframe_interval", "video_window", "shadow_queue_max",
                     "shadow_keep_max", "shadow_window")
    @classmethod
    def _positive(cls, value: int) -> int:
        if value < 1:
            raise ValueError("must be at least 1")
        return value

    @model_validator(mode="after")
    def _compatible(self) -> Settings:
        """Refuse settings that cannot work together, at start and with the reason."""
        if self.worker_heartbeat_s <= 0 or self.worker_stale_s < 2 * self.worker_heartbeat_s:
            raise ValueError(f"POSEKD_WORKER_STALE_S ({self.worker_stale_s:g}) must be at least twice "
                             f"POSEKD_WORKER_HEARTBEAT_S ({self.worker_heartbeat_s:g}), which must be positive: "
                             "one late heartbeat must not make a live worker look dead")
        reclaim = self.worker_stale_s + self.worker_heartbeat_s
        if self.redis_url and reclaim >= self.request_timeout_s:
            raise ValueError(f"a crashed worker's requests are taken over up to POSEKD_WORKER_STALE_S + "
                             f"POSEKD_WORKER_HEARTBEAT_S = {reclaim:g} s after the crash, which is not before "
                             f"POSEKD_REQUEST_TIMEOUT_S ({self.request_timeout_s:g} s): their callers would "
                             "get 504s; lower the first two or raise the timeout")
        kept = self.max_batch_images * (1.25 * self.decode_max_side) ** 2 if self.decode_max_side > 0 else 0
        if 0 < self.max_decode_pixels < 2.5 * self.max_image_pixels + kept:
            raise ValueError(f"POSEKD_MAX_DECODE_PIXELS ({self.max_decode_pixels}) must be at least 2.5 × "
                             f"POSEKD_MAX_IMAGE_PIXELS + POSEKD_MAX_BATCH_IMAGES × (1.25 × POSEKD_DECODE_MAX_SIDE)² "
                             f"= {2.5 * self.max_image_pixels + kept:.0f}: decoding the largest image allowed "
                             "costs 2.5 × its pixels at the peak, beside the reduced images a batch already "
                             "holds, and such a request would be refused")
        if self.shadow_rate > 0 and not self.shadow_model:
            raise ValueError("POSEKD_SHADOW_RATE is set but POSEKD_SHADOW_MODEL is not: name the teacher to shadow "
                             "with (a model in the store, e.g. movenet-thunder)")
        if self.visibility_timeout_s < 0 or self.video_visibility_s < 0:
            raise ValueError("POSEKD_VISIBILITY_TIMEOUT_S and POSEKD_VIDEO_VISIBILITY_S must be 0 (off) or positive")
        return self

    @property
    def auth_enabled(self) -> bool:
        return bool(self.api_keys or self.admin_api_keys)

    # --- one config object per component (built from the flat POSEKD_ variables above) ----------
    @property
    def redis(self) -> RedisConfig:
        if not self.redis_url:
            raise ValueError("POSEKD_REDIS_URL is not set (embedded mode has no Redis)")
        return RedisConfig(self.redis_url, self.redis_prefix, self.redis_connect_timeout_s, self.redis_op_timeout_s,
                           self.redis_max_connections)

    @property
    def batching(self) -> Batching:
        return Batching(self.max_batch, self.max_delay_ms, self.queue_max)

    @property
    def delivery(self) -> Delivery:
        return Delivery(self.worker_heartbeat_s, self.worker_stale_s, self.visibility_timeout_s, self.max_deliveries,
                        self.reply_ttl_s, self.require_workers, self.video_visibility_s)

    @property
    def image_limits(self) -> ImageLimits:
        return ImageLimits(self.max_image_bytes, self.max_image_pixels, self.decode_max_side, self.max_decode_pixels,
                           self.decode_wait_s)

    @property
    def video_limits(self) -> VideoLimits:
        return VideoLimits(self.max_video_seconds, self.max_video_frames, self.max_video_pixels)


def _default(name: str):
    """The default of a ``Settings`` field: the component configs below take theirs from there, so each
    default is written once."""
    return Settings.model_fields[name].default


@dataclass(frozen=True)
class RedisConfig:
    """Where Redis is and how long to wait for it (Redis mode)."""
    url: str
    prefix: str = _default("redis_prefix")  # every key starts with it (service/broker/keys.py)
    connect_timeout_s: float = _default("redis_connect_timeout_s")
    op_timeout_s: float = _default("redis_op_timeout_s")
    max_connections: int = _default("redis_max_connections")  # per pool; past it a command waits for one


@dataclass(frozen=True)
class Batching:
    """Dynamic batching: a batch closes at ``max_batch`` images or ``max_delay_ms`` after its first one;
    more than ``queue_max`` images waiting means 503."""
    max_batch: int = _default("max_batch")
    max_delay_ms: float = _default("max_delay_ms")
    queue_max: int = _default("queue_max")


@dataclass(frozen=True)
class Delivery:
    """The rules of the Redis streams: worker liveness, taking over a dead or hung worker's entries,
    retries and reply lifetime (see service/broker/liveness.py)."""
    heartbeat_s: float = _default("worker_heartbeat_s")
    stale_s: float = _default("worker_stale_s")  # a heartbeat older than this: the worker is gone, its work taken
    visibility_timeout_s: float = _default("visibility_timeout_s")  # a live worker holding an entry this long is hung
    max_deliveries: int = _default("max_deliveries")  # a request delivered this often is answered with an error
    reply_ttl_s: float = _default("reply_ttl_s")  # reply streams of vanished API replicas expire
    require_workers: bool = _default("require_workers")  # the API answers 503 at once when no worker is alive
    video_visibility_s: float = _default("video_visibility_s")  # a live worker's video job with no progress


@dataclass(frozen=True)
class ImageLimits:
    """What one uploaded image may cost: bytes, pixels, the decoded size kept, and the process-wide
    budget of decoded pixels in flight (``max_decode_pixels``, waited for up to ``decode_wait_s``)."""
    max_bytes: int = _default("max_image_bytes")
    max_pixels: int = _default("max_image_pixels")
    decode_max_side: int = _default("decode_max_side")
    max_decode_pixels: int = _default("max_decode_pixels")
    decode_wait_s: float = _default("decode_wait_s")


@dataclass(frozen=True)
class VideoLimits:
    """What one clip may be, checked from the container before any frame is decoded."""
    max_seconds: float = _default("max_video_seconds")
    max_frames: int = _default("max_video_frames")
    max_pixels: int = _default("max_video_pixels")  # per frame


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
