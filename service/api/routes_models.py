"""Model listing and administration: ``/v1/models``, aliases, reload."""
from __future__ import annotations

from fastapi import APIRouter, Request
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from ..errors import InvalidParameter, ManifestError, ModelNotFound
from .bodies import read_body
from .params import AliasPath, NamePath
from .schemas import (
    AgreementSummary,
    AliasTable,
    AliasUpdate,
    ErrorResponse,
    ModelInfo,
    ModelsList,
    ReloadReport,
    Responses,
)
from .security import RequireAdmin, RequireKey
from .state import service_of

router = APIRouter(prefix="/v1", tags=["models"])
_ERRORS: Responses = {c: {"model": ErrorResponse} for c in (401, 403, 404, 409, 422)}


def describe(state, name: str, full: bool) -> dict:
    store, registry = state.store, state.registry
    versions = store.versions(name)
    if not versions:
        raise ModelNotFound(f"unknown model {name!r}")
    loaded = {s.version for s in registry.loaded() if s.name == name}
    out = []
    task = None
    for v in versions:
        entry: dict = {"version": v, "loaded": v in loaded, "error": registry.error(name, v)}
        try:
            m = store.manifest(name, v)
            task = task or m.task
            entry.update(task=m.task, sha256=m.sha256, created_at=m.created_at, params=m.params, gflops=m.gflops)
            if full:
                entry["manifest"] = m.model_dump(mode="json")
        except ManifestError as exc:
            entry["error"] = exc.message
        out.append(entry)
    try:
        on_disk = store.aliases(name)
    except ManifestError as exc:
        on_disk = {"error": exc.message}
    return {"name": name, "task": task, "aliases": registry.served_aliases(name), "aliases_on_disk": on_disk,
            "versions": out}


@router.get("/models", dependencies=[RequireKey], response_model=ModelsList, response_model_exclude_unset=True,
            summary="Models in the store, their versions and aliases")
async def list_models(request: Request):
    state = service_of(request)
    names = await run_in_threadpool(state.store.names)
    models = [await run_in_threadpool(describe, state, n, False) for n in names]
    return {"default_pose_model": state.settings.default_pose_model,
            "default_detector": state.settings.default_detector, "models": models}


@router.get("/models/{name}", dependencies=[RequireKey], responses=_ERRORS, response_model=ModelInfo,
            response_model_exclude_unset=True,
            summary="One model: versions, aliases and manifests")
async def get_model(request: Request, name: str = NamePath):
    return await run_in_threadpool(describe, service_of(request), name, True)


_ALIAS_BODY = {"requestBody": {"required": True, "content": {"application/json": {
    "schema": AliasUpdate.model_json_schema()}}}}


@router.put("/models/{name}/aliases/{alias}", dependencies=[RequireAdmin], responses=_ERRORS, response_model=AliasTable,
            openapi_extra=_ALIAS_BODY, summary="Point an alias at a version (admin)")
async def put_alias(request: Request, name: str = NamePath, alias: str = AliasPath):
    """The version is verified and loaded before the alias moves; on failure the alias stays put (409).
    The body (`{"version": N}`) is read only after the admin key was checked: 401 before 422."""
    body = await read_body(request, 4096)
    try:
        update = AliasUpdate.model_validate_json(body)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err.get("loc", ())) or "body"
        raise InvalidParameter(f"{where}: {err.get('msg')} (send {{\"version\": N}})") from None
    state = service_of(request)
    table = await run_in_threadpool(state.registry.set_alias, name, alias, update.version)
    return {"name": name, "aliases": table}


def agreement_summary(state, name: str) -> dict:
    from ..shadow import SampleKeeper, held_out_agreement, summarize

    store, settings = state.store, state.settings
    versions = store.versions(name)
    if not versions:
        raise ModelNotFound(f"unknown model {name!r}")
    expected: dict[int, float | None] = {}
    for v in versions:
        try:
            expected[v] = held_out_agreement(store.manifest(name, v))
        except ManifestError:
            expected[v] = None
    record = state.runtime.agreements
    summary = summarize(record.entries(name), record.counts(name), expected, settings.shadow_drift_margin)
    kept = None
    if settings.shadow_dir is not None and settings.shadow_dir.is_dir():
        kept = SampleKeeper(settings.shadow_dir, settings.shadow_keep_max, settings.shadow_keep_max_bytes).usage()
    return {"name": name, "shadow": {"model": settings.shadow_model, "rate": settings.shadow_rate,
                                     "keeps_samples": settings.shadow_dir is not None},
            **summary, "kept": kept}


@router.get("/models/{name}/agreement", dependencies=[RequireAdmin], responses=_ERRORS, response_model=AgreementSummary,
            summary="The shadow teacher's running agreement with this student (admin)")
async def get_agreement(request: Request, name: str = NamePath):
    """How well the served student agrees with its shadow teacher (`POSEKD_SHADOW_MODEL`) on the
    sampled live images, beside the held-out agreement recorded in each version's manifest. Empty until
    `POSEKD_SHADOW_RATE` > 0 and traffic arrives."""
    return await run_in_threadpool(agreement_summary, service_of(request), name)


@router.post("/admin/reload", dependencies=[RequireAdmin], responses=_ERRORS, tags=["admin"],
             response_model=ReloadReport,
             summary="Re-read the model store (as SIGHUP does)")
async def reload(request: Request):
    report = await run_in_threadpool(service_of(request).registry.reload)
    return report.as_dict()
