"""Prometheus metrics (prefix ``posekd_``, seconds). Names and labels follow DESIGN.md; the README's
metrics table describes each."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

_LATENCY = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

REQUESTS = Counter("posekd_requests_total", "HTTP requests answered, by route template and status code",
                   ["route", "code"], registry=REGISTRY)
REQUEST_DURATION = Histogram("posekd_request_duration_seconds",
                             "Time from request received to response sent, by route template",
                             ["route"], buckets=_LATENCY, registry=REGISTRY)
QUEUE_WAIT = Histogram("posekd_queue_wait_seconds",
                       "Time an image waited in the broker before a worker started its batch",
                       ["model"], buckets=_LATENCY, registry=REGISTRY)
INFERENCE = Histogram("posekd_inference_duration_seconds",
                      "Wall time of one pipeline stage over one batch (pre-processing, ONNX Runtime, decoding)",
                      ["model", "version", "stage"], buckets=_LATENCY, registry=REGISTRY)
BATCH_SIZE = Histogram("posekd_batch_size",
                       "Items per stage call: images for detect, person crops for pose",
                       ["model", "stage"], buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 128),
                       registry=REGISTRY)
QUEUE_DEPTH = Gauge("posekd_queue_depth", "Images waiting in a broker queue", ["queue"], registry=REGISTRY)
PEOPLE = Histogram("posekd_people_per_image", "People returned per image",
                   buckets=(0, 1, 2, 3, 4, 5, 6, 8, 10, 15, 20, 50), registry=REGISTRY)
VIDEO_FRAMES = Counter("posekd_video_frames_total", "Video frames processed", registry=REGISTRY)
MODEL_INFO = Gauge("posekd_model_info", "1 for each served model version and alias (alias '' = loaded, no alias)",
                   ["name", "version", "alias"], registry=REGISTRY)


def observe_stage(model: str, version: int, stage: str, seconds: float, items: int) -> None:
    INFERENCE.labels(model, str(version), stage).observe(seconds)
    BATCH_SIZE.labels(model, stage).observe(items)


def publish_models(registry) -> None:
    """Rebuild ``posekd_model_info`` from what the model registry serves."""
    MODEL_INFO.clear()
    for served in registry.loaded():
        aliases = [a for a, v in registry.served_aliases(served.name).items() if v == served.version]
        for alias in aliases or [""]:
            MODEL_INFO.labels(served.name, str(served.version), alias).set(1)

# ---- Redis mode (scale-out) -------------------------------------------------------------------
WORKERS = Gauge("posekd_workers_ready", "Workers ready to serve: Redis mode, worker processes whose heartbeat "
                "is fresh as this API replica sees them; embedded mode, the in-process inference threads",
                registry=REGISTRY)
BROKER_ERRORS = Counter("posekd_broker_errors_total", "Failed Redis operations, by side (api or worker)",
                        ["side"], registry=REGISTRY)
WORKER_ENTRIES = Counter("posekd_worker_entries_total",
                         "Request-stream entries a worker finished, by outcome: ok, error (answered with an "
                         "error), skipped (cancelled or past its deadline), dead_letter (failed too often)",
                         ["outcome"], registry=REGISTRY)
RECLAIMED = Counter("posekd_reclaimed_total", "Entries taken over from a worker that stopped answering",
                    registry=REGISTRY)

# ---- video jobs ---------------------------------------------------------------------------------
VIDEO_FRAME_SECONDS = Histogram("posekd_video_frame_seconds",
                                "Processing time per video frame (detect + pose on keyframes, a share of the "
                                "batched pose call in between)", buckets=_LATENCY, registry=REGISTRY)
VIDEO_KEYFRAMES = Counter("posekd_video_keyframes_total",
                          "Video frames the person detector ran on (keyframe ratio = this / posekd_video_frames_total)",
                          registry=REGISTRY)
VIDEO_ACTIVE_TRACKS = Gauge("posekd_video_active_tracks", "Tracks seen on the last processed video frame",
                            registry=REGISTRY)
VIDEO_JOBS = Counter("posekd_video_jobs_total", "Video jobs finished, by status", ["status"], registry=REGISTRY)

# ---- shadow teacher (service/shadow) ----------------------------------------------------------
SHADOW_AGREEMENT = Histogram("posekd_shadow_agreement",
                             "Agreement of the served student with its shadow teacher on one sampled image: the "
                             "mean over its people of OKS(student keypoints, teacher keypoints) on the same boxes",
                             ["model", "version", "shadow"],
                             buckets=(0.1, 0.2, 0.3, 0.4, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 1.0),
                             registry=REGISTRY)
SHADOW_SAMPLES = Counter("posekd_shadow_samples_total", "Images the shadow teacher ran on, by student and teacher",
                         ["model", "shadow"], registry=REGISTRY)
SHADOW_DROPPED = Counter("posekd_shadow_dropped_total",
                         "Sampled images not shadowed: queue_full (the teacher is behind) or failed (it raised)",
                         ["model", "reason"], registry=REGISTRY)
SHADOW_THRESHOLD = Gauge("posekd_shadow_agreement_threshold",
                         "Median agreement below which the drift alert fires: the held-out agreement in the "
                         "student's manifest minus POSEKD_SHADOW_DRIFT_MARGIN", ["model", "version"], registry=REGISTRY)
