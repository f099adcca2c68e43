"""The FastAPI application: lifespan (models, broker, reload on SIGHUP and on store changes),
error mapping, request metrics and ``/metrics``."""
from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import signal
import time

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.middleware.gzip import GZipMiddleware
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.routing import Match, Mount

from .. import __version__, metrics, scratch
from ..errors import PoseKDError
from ..logs import REQUEST_ID
from ..settings import Settings, get_settings
from . import demo, docs, routes_health, routes_models, routes_pose, routes_video
from .context import RequestContextMiddleware
from .state import ServiceState

log = logging.getLogger("posekd.api")


def error_response(status: int, code: str, message: str, retry_after: float | None = None) -> JSONResponse:
    headers = {"Retry-After": str(max(1, round(retry_after)))} if retry_after is not None else None
    return JSONResponse({"error": {"code": code, "message": message, "request_id": REQUEST_ID.get()}},
                        status_code=status, headers=headers)


def allowed_methods(app, path: str) -> list[str]:
    """The methods the app answers on ``path`` (for ``Allow`` on a 405), read from its OpenAPI paths:
    several routes may share a path (GET and DELETE on a job), and a 405 from one of them names only
    its own."""
    table = getattr(app.state, "allow_table", None)
    if table is None:
        table = [(re.compile("^" + re.sub(r"\{[^/}]+\}", "[^/]+", template) + "$"),
                  {m.upper() for m in ops if m in ("get", "put", "post", "delete", "patch")})
                 for template, ops in app.openapi().get("paths", {}).items()]
        app.state.allow_table = table
    methods: set[str] = set()
    for pattern, ops in table:
        if pattern.match(path):
            methods |= ops
    return sorted(methods)


class MetricsMiddleware:
    """Counts and times every HTTP request by route template (``unmatched`` for unknown paths)."""

    def __init__(self, app):
        self.app = app

    @staticmethod
    def route_label(scope, original) -> str:
        """The route template (``/v1/jobs/{job_id}``); the OpenAPI document and mounted files (``/static/…``)
        are found by matching the app's routes against the scope as it came in (a mount rewrites it),
        since only API routes leave their route in the scope."""
        route = scope.get("route")
        if getattr(route, "path", None):
            return route.path
        app = original.get("app")
        for candidate in getattr(app, "routes", ()):
            match, _ = candidate.matches(original)
            if match != Match.NONE:
                path = getattr(candidate, "path", "")
                return path + "/{path}" if isinstance(candidate, Mount) else path or "unmatched"
        return "unmatched"

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()
        status = {"code": 500}

        async def send_wrapper(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        original = dict(scope)
        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            label = self.route_label(scope, original)
            metrics.REQUESTS.labels(label, str(status["code"])).inc()
            metrics.REQUEST_DURATION.labels(label).observe(time.perf_counter() - t0)


async def _watch_store(state: ServiceState, every: float) -> None:
    seen = await run_in_threadpool(state.store.fingerprint)
    while True:
        await asyncio.sleep(every)
        now = await run_in_threadpool(state.store.fingerprint)
        if now != seen:
            seen = now
            report = await run_in_threadpool(state.registry.reload)
            log.info("model store changed; reloaded: %s", report.as_dict())


def _lifespan(settings: Settings, state: ServiceState | None, handle_signals: bool):
    """Start: build (or take) the state, load and warm the models, start the broker, watch the store
    and SIGHUP. Stop: finish the accepted work, stop the video queue."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        svc = state or ServiceState.build(settings)
        app.state.service = svc
        await run_in_threadpool(svc.preload)
        await svc.broker.start()
        if svc.runtime.shadow is not None:
            svc.runtime.shadow.start()
        metrics.publish_models(svc.registry)
        loop = asyncio.get_running_loop()
        reloads: set[asyncio.Task] = set()
        if handle_signals:
            def on_hup():
                log.info("SIGHUP: reloading the model store")
                task = loop.create_task(run_in_threadpool(svc.registry.reload))
                reloads.add(task)
                task.add_done_callback(reloads.discard)
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(signal.SIGHUP, on_hup)
        watcher = loop.create_task(_watch_store(svc, settings.store_poll_s)) if settings.store_poll_s > 0 else None
        try:
            yield
        finally:
            if watcher:
                watcher.cancel()
            if handle_signals:
                with contextlib.suppress(Exception):
                    loop.remove_signal_handler(signal.SIGHUP)
            await svc.broker.stop()
            if svc.runtime.shadow is not None:
                await run_in_threadpool(svc.runtime.shadow.stop)
            await run_in_threadpool(svc.videos.stop)
            scratch.remove_mine()

    return lifespan


def _add_middleware(app: FastAPI, settings: Settings) -> None:
    # outermost last: request id (and access log) around everything, then CORS, compression, metrics
    app.add_middleware(MetricsMiddleware)
    app.add_middleware(GZipMiddleware, minimum_size=settings.gzip_min_bytes, compresslevel=5)
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["*"],
                           allow_headers=["*"], expose_headers=["X-Request-ID", "Retry-After", "Location"],
                           max_age=600)
    app.add_middleware(RequestContextMiddleware, access_log=settings.access_log)


def _add_error_handlers(app: FastAPI) -> None:
    """Every error answers ``{"error": {"code", "message", "request_id"}}``, whoever raised it."""

    @app.exception_handler(PoseKDError)
    async def _domain_error(request: Request, exc: PoseKDError):
        if exc.status >= 500 and exc.status not in (503, 504):
            log.error("%s: %s", exc.code, exc.message)
        response = error_response(exc.status, exc.code, exc.message, exc.retry_after)
        if exc.status == 408:  # a client still trickling its body after the 408 must not keep the connection
            response.headers["Connection"] = "close"
        return response

    @app.exception_handler(ClientDisconnect)
    async def _client_closed(request: Request, exc: ClientDisconnect):
        """The client hung up before its request was read (mid-body, a broken chunk): not a server error.
        Counted as 499 ``client_closed`` (nginx's code for it), logged as one line."""
        log.info("client closed the connection before its request was read (%s %s)", request.method,
                 request.url.path)
        return error_response(499, "client_closed", "the client closed the connection before the request was read")

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        parts = []
        for err in exc.errors():
            loc = ".".join(str(p) for p in err.get("loc", ()) if p not in ("query", "body", "path"))
            parts.append(f"{loc or 'request'}: {err.get('msg')}")
        return error_response(422, "invalid_parameter", "; ".join(parts))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        codes = {400: "invalid_request", 404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}
        response = error_response(exc.status_code, codes.get(exc.status_code, "http_error"), str(exc.detail))
        for key, value in (exc.headers or {}).items():
            response.headers[key] = value
        if exc.status_code == 405:  # Allow lists every method of every route on this path, not just one
            response.headers["Allow"] = ", ".join(allowed_methods(request.app, request.url.path))
        return response

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        log.exception("unhandled error on %s", request.url.path)
        return error_response(500, "internal_error", "internal error; see the service log")


def create_app(settings: Settings | None = None, *, state: ServiceState | None = None,
               handle_signals: bool = False) -> FastAPI:
    settings = settings or get_settings()
    app = FastAPI(title="PoseKD", version=__version__, lifespan=_lifespan(settings, state, handle_signals),
                  docs_url=None, redoc_url=None,
                  description="Human keypoints (COCO-17) from distilled student models. "
                              "Errors are `{\"error\": {\"code\", \"message\", \"request_id\"}}`.")
    _add_middleware(app, settings)
    _add_error_handlers(app)
    docs.mount(app)
    demo.mount(app)

    @app.get("/metrics", include_in_schema=True, tags=["health"], summary="Prometheus metrics (text format)",
             response_class=PlainTextResponse)
    async def prometheus():
        return Response(generate_latest(metrics.REGISTRY), media_type=CONTENT_TYPE_LATEST)

    app.include_router(routes_health.router)
    app.include_router(routes_pose.router)
    app.include_router(routes_models.router)
    app.include_router(routes_video.router)
    return app
