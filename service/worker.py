"""``posekd worker``: one process per GPU (or CPU socket) that serves the Redis request stream and,
on a thread of its own, the video job stream.

It loads the default models (and any other on first use) from the model store, batches across
requests, answers on each API replica's reply stream, exports Prometheus metrics on its own port
and, on SIGTERM or SIGINT, stops reading, finishes and acknowledges the batch in hand, and exits."""
from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import threading

from . import composition, metrics, scratch
from .composition import WorkerRuntime
from .settings import Settings
from .store import ModelRegistry

log = logging.getLogger("posekd.worker")


def report_device(settings: Settings, registry: ModelRegistry) -> None:
    """Say which execution provider the loaded models really run on; a CUDA request that ended on the
    CPU is a warning, not a silent slowdown."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    for served in registry.loaded():
        provider = served.session.provider
        log.info("%s:%d runs on %s", served.name, served.version, provider)
        if settings.device != "cpu" and provider != "CUDAExecutionProvider":
            why = ("onnxruntime has no CUDA provider here (install onnxruntime-gpu)"
                   if "CUDAExecutionProvider" not in available else
                   f"CUDA device {settings.cuda_device_id} could not be used")
            level = logging.WARNING if settings.device == "cuda" else logging.INFO
            log.log(level, "falling back to the CPU for %s:%d: %s", served.name, served.version, why)


def build(settings: Settings) -> WorkerRuntime:
    """The worker's runtime, its default models loaded and its shadow teacher (if any) started."""
    name = settings.worker_name or f"{socket.gethostname()}-{os.getpid()}"
    rt = composition.build_worker(settings, name)
    errors = rt.registry.preload([settings.default_pose_model, settings.default_detector])
    for spec, err in errors.items():
        log.error("default model %s is not loaded: %s (requests for it will fail)", spec, err)
    metrics.publish_models(rt.registry)
    report_device(settings, rt.registry)
    if rt.shadow is not None:
        rt.shadow.start()
        log.info("shadowing %.0f%% of images with %s", rt.shadow.config.rate * 100, rt.shadow.config.model)
    return rt


def serve(settings: Settings, metrics_port: int | None = None) -> int:
    if not settings.redis_url:
        log.error("posekd worker needs POSEKD_REDIS_URL (the embedded service runs its own workers)")
        return 2
    from prometheus_client import start_http_server

    # built first (what dead workers left swept, the default models loaded), so that metrics answering
    # means the worker is up
    rt = build(settings)
    consumer, videos = rt.consumer, rt.videos
    port = settings.metrics_port if metrics_port is None else metrics_port
    if port:
        start_http_server(port, addr="0.0.0.0", registry=metrics.REGISTRY)
        log.info("metrics on :%d/metrics", port)
    video_thread = threading.Thread(target=videos.run, name="posekd-video", daemon=True)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()

        def on_signal(sig: signal.Signals) -> None:
            if not stop.is_set():
                log.info("%s: finishing the batch in hand, then exiting", sig.name)
            stop.set()
            videos.stop_event.set()  # a running video job goes back to the queue for another worker

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_signal, sig)
        log.info("worker %s serving %s (max_batch %d, max_delay_ms %g)", consumer.name, consumer.keys.requests,
                 consumer.max_batch, consumer.max_delay * 1000)
        video_thread.start()
        await consumer.run(stop)
        await asyncio.to_thread(video_thread.join, 30)

    try:
        asyncio.run(main())
    finally:
        scratch.remove_mine()
    return 0
