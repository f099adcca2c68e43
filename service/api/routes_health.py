"""Liveness, readiness and the Open Inference Protocol (KServe V2) health and metadata routes."""
from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from .. import __version__
from ..errors import ModelNotFound
from ..store import ModelSpec
from .params import NamePath, VersionPath
from .schemas import (
    ErrorResponse,
    Health,
    Readiness,
    Responses,
    V2Live,
    V2ModelMetadata,
    V2ModelReady,
    V2Ready,
    V2Server,
)
from .state import service_of

router = APIRouter()  # tags per route: the V2 routes are listed once, under "v2"
_V2_ERRORS: Responses = {c: {"model": ErrorResponse} for c in (404, 422)}
_V2_READY: Responses = {**_V2_ERRORS, 503: {"description": "the model is not loaded or failed to load "
                                                      "(same body, `ready: false`)"}}

_DTYPES = {"float32": "FP32", "float16": "FP16", "uint8": "UINT8", "int32": "INT32"}
_ORT_DTYPES = {"tensor(float)": "FP32", "tensor(float16)": "FP16", "tensor(int32)": "INT32",
               "tensor(int64)": "INT64", "tensor(uint8)": "UINT8"}


async def _readiness(request: Request) -> tuple[bool, dict]:
    state = service_of(request)
    broker_ok = await state.broker.ready()
    models_ok = state.models_ready()
    detail = {"broker": broker_ok, "models": models_ok, "default_models": state.default_specs()}
    workers_ok, about_workers = await state.broker.readiness(state.settings.require_workers)
    detail.update(about_workers)
    if state.preload_errors:
        detail["errors"] = state.preload_errors
    return broker_ok and models_ok and workers_ok, detail


@router.head("/healthz", include_in_schema=False)  # load balancers and uptime checks send HEAD
@router.get("/healthz", tags=["health"], response_model=Health, summary="Liveness")
async def healthz():
    return {"status": "ok"}


@router.head("/readyz", include_in_schema=False)
@router.get("/readyz", tags=["health"], response_model=Readiness,
            responses={503: {"model": Readiness, "description": "not ready (same body, with the reasons)"}},
            summary="Readiness: default models loaded and broker reachable (503 otherwise)")
async def readyz(request: Request):
    ok, detail = await _readiness(request)
    return JSONResponse({"status": "ready" if ok else "not_ready", **detail}, status_code=200 if ok else 503)


@router.get("/v2", tags=["v2"], response_model=V2Server, summary="Server metadata (Open Inference Protocol)")
async def v2_server():
    return {"name": "posekd", "version": __version__, "extensions": []}


@router.get("/v2/health/live", tags=["v2"], response_model=V2Live)
async def v2_live():
    return {"live": True}


@router.get("/v2/health/ready", tags=["v2"], response_model=V2Ready, responses={503: {"description": "not ready"}})
async def v2_ready(request: Request):
    ok, _ = await _readiness(request)
    return JSONResponse({"ready": ok}, status_code=200 if ok else 503)


def _metadata(state, name: str, version: int | None) -> dict:
    versions = state.store.versions(name)
    if not versions:
        raise ModelNotFound(f"unknown model {name!r}")
    if version is None:
        version = state.store.resolve(ModelSpec(name), state.settings.default_alias,
                                      state.registry.served_aliases(name))
    elif version not in versions:
        raise ModelNotFound(f"model {name!r} has no version {version}")
    m = state.store.manifest(name, version)
    served = next((s for s in state.registry.loaded() if s.name == name and s.version == version), None)
    spec = m.input
    shape = [-1, 3, spec.height, spec.width] if spec.layout == "NCHW" else [-1, spec.height, spec.width, 3]
    if served is not None and served.session is not None:
        outputs = [{"name": n, "datatype": _ORT_DTYPES.get(t, t), "shape": shape}
                   for n, t, shape in served.session.outputs()]
    else:
        outputs = [{"name": n, "datatype": "FP32", "shape": [-1]} for n in m.output.names]
    return {"name": name, "versions": [str(v) for v in versions], "platform": "onnxruntime_onnx",
            "inputs": [{"name": spec.name, "datatype": _DTYPES[spec.dtype], "shape": shape}],
            "outputs": outputs,
            "parameters": {"version": str(version), "task": m.task, "decoder": m.output.decoder,
                           "loaded": served is not None}}


def _ready(state, name: str, version: int | None) -> JSONResponse:
    meta = _metadata(state, name, version)
    v = int(meta["parameters"]["version"])
    ok = meta["parameters"]["loaded"] and state.registry.error(name, v) is None
    return JSONResponse({"name": name, "version": str(v), "ready": ok}, status_code=200 if ok else 503)


@router.get("/v2/models/{name}", tags=["v2"], response_model=V2ModelMetadata, responses=_V2_ERRORS,
            summary="Model metadata (default version)")
async def v2_model(request: Request, name: str = NamePath):
    return await run_in_threadpool(_metadata, service_of(request), name, None)


@router.get("/v2/models/{name}/versions/{version}", tags=["v2"], response_model=V2ModelMetadata,
            responses=_V2_ERRORS, summary="Model metadata")
async def v2_model_version(request: Request, name: str = NamePath, version: int = VersionPath):
    return await run_in_threadpool(_metadata, service_of(request), name, version)


@router.get("/v2/models/{name}/ready", tags=["v2"], response_model=V2ModelReady, responses=_V2_READY,
            summary="Model readiness (default version)")
async def v2_model_ready(request: Request, name: str = NamePath):
    return await run_in_threadpool(_ready, service_of(request), name, None)


@router.get("/v2/models/{name}/versions/{version}/ready", tags=["v2"], response_model=V2ModelReady,
            responses=_V2_READY, summary="Model readiness")
async def v2_model_version_ready(request: Request, name: str = NamePath,
                                 version: int = VersionPath):
    return await run_in_threadpool(_ready, service_of(request), name, version)
