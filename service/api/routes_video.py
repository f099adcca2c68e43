"""Video jobs: ``POST /v1/videos``, ``GET /v1/jobs/{id}`` (+ ``/result``, ``/video``), ``DELETE``."""
from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from .. import scratch
from ..errors import InvalidParameter, Overloaded, PayloadTooLarge, PoseKDError
from ..formats import posetrack
from ..names import MODEL_REF
from ..store import ModelSpec
from ..video import decode
from ..video.jobs import FINAL, Job, JobNotFound
from .bodies import parse_form
from .schemas import ErrorResponse, JobCreated, JobDeleted, JobStatus, PoseTrackDocument, Responses, VideoResult
from .security import RequireKey, may_see, owner_of
from .state import service_of

router = APIRouter(prefix="/v1", tags=["video"], dependencies=[RequireKey])
_ERRORS: Responses = {c: {"model": ErrorResponse} for c in (400, 401, 403, 404, 408, 413, 415, 422, 503)}
# 422 too: FastAPI would declare its own HTTPValidationError, but every error answers in the project's shape
_JOB_ERRORS: Responses = {c: {"model": ErrorResponse} for c in (401, 403, 404, 422)}
_OUTPUT_ERRORS: Responses = {c: {"model": ErrorResponse} for c in (401, 403, 404, 409, 422)}
_VIDEO_BODY = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["video"], "properties": {"video": {"type": "string", "format": "binary"}}}}}}}


async def _save_upload(request: Request, limit: int, into: Path, timeout_s: float) -> Path:
    """The multipart ``video`` field written to ``into`` (spooled by the parser, never whole in memory)."""
    if not request.headers.get("content-type", "").lower().startswith("multipart/form-data"):
        raise PoseKDError("send the clip as multipart/form-data, field 'video'", code="unsupported_media_type",
                          status=415)
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit + 64 * 1024:
        raise PayloadTooLarge(f"the request body has {declared} bytes; the limit is {limit}")
    # counted as it streams in: a chunked body stops at the limit, not after the parser spooled it all
    form = await parse_form(request, max_files=2, max_fields=20, limit=limit + 64 * 1024, timeout_s=timeout_s)
    try:
        uploads = form.getlist("video")
        if len(uploads) > 1:  # as /v1/pose answers two images: one clip per job, never one silently dropped
            raise PayloadTooLarge(f"{len(uploads)} files in 'video'; send one clip per job")
        upload = uploads[0] if uploads else None
        if not isinstance(upload, UploadFile):
            raise InvalidParameter("the multipart body needs a file field 'video'")
        path = into / "clip"
        with open(path, "wb") as out:
            size = 0
            while chunk := await upload.read(1 << 20):
                size += len(chunk)
                if size > limit:
                    raise PayloadTooLarge(f"the clip passes the limit of {limit} bytes")
                out.write(chunk)
        if size == 0:
            raise decode.InvalidVideo("the clip is empty")
        return path
    finally:
        await form.close()


@router.post("/videos", status_code=202, response_model=JobCreated, responses=_ERRORS, openapi_extra=_VIDEO_BODY,
             summary="Upload a clip; its people are tracked in the background")
async def create_video_job(request: Request,
                           model: str | None = Query(None, max_length=140, pattern=MODEL_REF, description="pose model"),
                           detector: str | None = Query(None, max_length=140, pattern=MODEL_REF,
                                                        description="person detector"),
                           render: bool = Query(False, description="also render the overlay MP4"),
                           keyframe_interval: int | None = Query(None, ge=1, le=300,
                                                                 description="detect every K frames (1: every frame)"),
                           smoothing: bool | None = Query(None, description="One-Euro smoothing of keypoints")):
    state = service_of(request)
    s = state.settings
    await run_in_threadpool(state.videos.require_a_worker)  # never queue a job nobody runs
    refs = []  # exact name:version, resolved once here (404 before the upload is kept): the job runs these
    for spec, task in ((model or s.default_pose_model, "pose"), (detector or s.default_detector, "person_detection")):
        served = await run_in_threadpool(state.registry.get, ModelSpec.parse(spec), task)
        refs.append(f"{served.name}:{served.version}")
    limits = s.video_limits
    tmp = scratch.mkdtemp("posekd-upload-")
    try:
        clip = await _save_upload(request, s.max_video_bytes, tmp, s.body_timeout_s)
        info = await run_in_threadpool(decode.probe, clip, max_seconds=limits.max_seconds,
                                       max_frames=limits.max_frames, max_pixels=limits.max_pixels)
        job = Job(render=render, frames_total=info.frames, video=asdict(info), owner=owner_of(request),
                  options={"model": refs[0], "detector": refs[1], "keyframe_interval": keyframe_interval,
                           "smoothing": smoothing})
        await run_in_threadpool(state.jobs.create, job, clip)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    try:
        await run_in_threadpool(state.videos.submit, job.id)
    except Exception as exc:  # never a job that stays queued for nobody: say so, and fail it
        await run_in_threadpool(state.jobs.finish, job.id, "failed", f"could not be queued: {exc}")
        raise Overloaded("the video queue is unavailable; submit the clip again", retry_after=2,
                         code="broker_unavailable") from None
    url = f"/v1/jobs/{job.id}"
    return JSONResponse({"job_id": job.id, "status": job.status, "status_url": url,
                         "result_url": url + "/result", "video": info.as_dict()},
                        status_code=202, headers={"Location": url})


async def _job(request: Request, job_id: str) -> Job:
    """The job, for its owner (or an admin) only: another key gets the same 404 as an unknown id."""
    job = await run_in_threadpool(service_of(request).jobs.get, job_id)
    if not may_see(request, job.owner):
        raise JobNotFound(f"unknown job {job_id!r}")
    return job


@router.get("/jobs/{job_id}", response_model=JobStatus, responses=_JOB_ERRORS, summary="A job's status and progress")
async def job_status(request: Request, job_id: str):
    return (await _job(request, job_id)).public()


def _not_finished(job: Job) -> PoseKDError:
    if job.status == "failed":
        return PoseKDError(f"the job failed: {job.error}", code="job_failed", status=409)
    if job.status == "cancelled":
        return PoseKDError("the job was cancelled", code="job_cancelled", status=409)
    return PoseKDError(f"the job is {job.status} ({job.progress:.0%}); try again later", code="job_not_finished",
                       status=409)


@router.get("/jobs/{job_id}/result", response_model=VideoResult | PoseTrackDocument, responses=_OUTPUT_ERRORS,
            summary="Tracked poses (409 until the job succeeded)")
async def job_result(request: Request, job_id: str,
                     format: Literal["posekd", "posetrack"] = Query(
                         "posekd", description="`posekd` (frames and tracks) or `posetrack`: a PoseTrack/COCO "
                                               "document (images per frame, annotations with track_id) that "
                                               "pycocotools and tracking evaluators read as is"),
                     video_id: int = Query(1, ge=1, le=10**9, description="`posetrack`: the video's id")):
    job = await _job(request, job_id)
    if job.status != "succeeded":
        raise _not_finished(job)
    data = await run_in_threadpool(service_of(request).jobs.result, job_id)
    if format == "posetrack":
        return JSONResponse(posetrack(json.loads(data), video_id=video_id, name=job_id))
    return Response(data, media_type="application/json")


_MP4: Responses = {200: {"description": "the overlay MP4",
             "content": {"video/mp4": {"schema": {"type": "string", "format": "binary"}}}}}


@router.get("/jobs/{job_id}/video", response_class=Response, responses={**_OUTPUT_ERRORS, **_MP4},
            summary="The overlay MP4 (jobs with render=true)")
async def job_video(request: Request, job_id: str):
    job = await _job(request, job_id)
    if not job.render:
        raise PoseKDError("the job was submitted without render=true", code="no_overlay", status=404)
    if job.status != "succeeded":
        raise _not_finished(job)
    overlay = await run_in_threadpool(service_of(request).jobs.overlay, job_id)
    if overlay is None:
        raise PoseKDError("the overlay has expired", code="no_overlay", status=404)
    return StreamingResponse(iter(overlay.chunks), media_type="video/mp4",
                             headers={"Content-Length": str(overlay.size),
                                      "Content-Disposition": f'attachment; filename="{job_id}.mp4"'})


@router.delete("/jobs/{job_id}", response_model=JobDeleted, responses={**_JOB_ERRORS, 202: {
    "model": JobDeleted, "description": "cancellation requested; the job stops at its next frame"}},
               summary="Cancel a job, or delete a finished one")
async def job_delete(request: Request, job_id: str):
    jobs = service_of(request).jobs
    job = await _job(request, job_id)
    if job.status in FINAL:
        await run_in_threadpool(jobs.delete, job_id)
        return {"job_id": job_id, "status": job.status, "deleted": True}
    await run_in_threadpool(lambda: jobs.update(job_id, cancel_requested=True))
    if job.status == "queued":
        await run_in_threadpool(jobs.finish, job_id, "cancelled")
        return {"job_id": job_id, "status": "cancelled", "deleted": False}
    return JSONResponse({"job_id": job_id, "status": "cancelling", "deleted": False}, status_code=202)
