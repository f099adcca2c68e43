"""``POST /v1/pose`` and ``POST /v1/pose/batch``."""
from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from typing import Literal

import numpy as np
from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from ..broker import PoseAnswer, PoseRequest
from ..broker.base import Admitted
from ..errors import PoseKDError
from ..formats import coco_results
from ..images import budget_for, check_declared_type
from ..keypoints import COCO17
from ..names import MODEL_REF
from ..pipeline import ImageTask
from ..store import ModelSpec
from .bodies import form_files, is_multipart, read_body
from .schemas import BatchResponse, CocoResult, ErrorResponse, PoseResponse, Responses
from .security import RequireKey
from .state import service_of

router = APIRouter(prefix="/v1", tags=["pose"], dependencies=[RequireKey])

_ERRORS: Responses = {c: {"model": ErrorResponse} for c in (400, 401, 403, 404, 408, 409, 413, 415, 422, 503, 504)}
_IMAGE_BODY = {"requestBody": {"required": True, "content": {
    "multipart/form-data": {"schema": {"type": "object", "required": ["image"],
                                       "properties": {"image": {"type": "string", "format": "binary"}}}},
    "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
    "image/png": {"schema": {"type": "string", "format": "binary"}},
    "image/webp": {"schema": {"type": "string", "format": "binary"}},
    "image/bmp": {"schema": {"type": "string", "format": "binary"}},
}}}
_BATCH_BODY = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["images"],
    "properties": {"images": {"type": "array", "minItems": 1, "items": {"type": "string", "format": "binary"}}}}}}}}

ModelQ = Query(None, description="pose model: name, name:version or name@alias (default: the default "
                                 "pose model's production alias)", max_length=140, pattern=MODEL_REF)
DetectorQ = Query(None, description="person detector, same forms as model", max_length=140, pattern=MODEL_REF)
MinScoreQ = Query(None, ge=0.0, le=1.0, description="drop people whose person score is lower")
MaxPeopleQ = Query(None, ge=1, le=1000, description="at most this many people per image (values above "
                                                    "POSEKD_MAX_PEOPLE are capped to it)")
FormatQ = Query("posekd", description="`posekd` (this API's shape) or `coco`: a JSON array of COCO keypoint "
                                       "results (image_id, category_id, flat keypoints, xywh bbox, score) that "
                                       "pycocotools reads as is")
# The boxes parameter's exact grammar, so that the schema admits only what the service accepts: a JSON
# list of boxes of four plain numbers (at most 7 integer digits: within ±1e7 pixels, far past any image
# the pixel limit admits and exact in float32), corners in either order. The 4,000-character cap (far
# below any server's URL limit) bounds the count: the shortest box with its comma takes 10 characters.
# FastAPI checks both before a route runs, so nothing that reaches _parse_boxes can nest, overflow or
# hold anything but numbers.
_NUMBER = r"-?(0|[1-9]\d{0,6})(\.\d{1,6})?"  # JSON: no leading zeros
_BOX = rf"\[ ?{_NUMBER} ?, ?{_NUMBER} ?, ?{_NUMBER} ?, ?{_NUMBER} ?\]"
BOXES_PATTERN = rf"^\[ ?({_BOX}( ?, ?{_BOX})*)? ?\]$"
BOXES_MAX_LENGTH = 4000
BoxesQ = Query(None, max_length=BOXES_MAX_LENGTH, pattern=BOXES_PATTERN,
               description="person boxes to use instead of the detector: JSON [[x1,y1,x2,y2],...] in image pixels "
                           "(plain numbers, corners in either order); the people returned are still capped by "
                           "max_people, best first")


def _parse_boxes(text: str | None) -> np.ndarray | None:
    """The ``boxes`` query (already checked against its grammar) as (N, 4) float32, corners sorted."""
    if text is None:
        return None
    boxes = np.asarray(json.loads(text), dtype=np.float64).reshape(-1, 4)
    # corners in either order: (x1, y1) the smaller, (x2, y2) the larger
    boxes = np.concatenate([np.minimum(boxes[:, :2], boxes[:, 2:]), np.maximum(boxes[:, :2], boxes[:, 2:])], 1)
    return boxes.astype(np.float32)


async def _resolve(state, spec: str, task: str) -> tuple[str, dict]:
    served = await run_in_threadpool(state.registry.get, ModelSpec.parse(spec), task)
    return f"{served.name}:{served.version}", {"name": served.name, "version": served.version}


async def _read_images(state, images: list[bytes], held: list[int]) -> list[Admitted]:
    """Each upload admitted by the broker (decoded here, or checked for a worker that decodes it), one
    after the other: a batch holds at most one full-size image at a time."""
    limits = state.settings.image_limits
    out = []
    for i, data in enumerate(images):
        try:
            admitted = await run_in_threadpool(state.broker.admit, data, limits)
        except PoseKDError as exc:
            if len(images) > 1:
                exc.message = f"image {i}: {exc.message}"
            raise
        held.append(admitted.held)
        out.append(admitted)
    return out


async def _until_disconnect(request: Request) -> None:
    """Returns when the client goes away (the body is already read, so only a disconnect can come)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def _submit(request: Request, pose_request: PoseRequest, timeout: float) -> PoseAnswer:
    """The broker's answer, unless the client disconnects first: then the wait is cancelled and the
    broker drops the request (workers skip it), so no work is done for nobody."""
    broker = service_of(request).broker
    answer = asyncio.ensure_future(broker.submit(pose_request, timeout))
    gone = asyncio.ensure_future(_until_disconnect(request))
    try:
        await asyncio.wait({answer, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
    if answer.done():
        return answer.result()
    answer.cancel()
    with contextlib.suppress(asyncio.CancelledError, PoseKDError):
        await answer
    raise PoseKDError("the client closed the connection before the answer", code="client_closed", status=499)


async def _run(request: Request, images: list[bytes], model, detector, min_score, max_people, boxes,
               draw_on: list | None = None) -> tuple[dict, dict | None, PoseAnswer]:
    state = service_of(request)
    s = state.settings
    max_people = min(max_people or s.max_people, s.max_people)
    min_score = s.min_score if min_score is None else min_score
    parsed_boxes = _parse_boxes(boxes)
    pose_ref, pose_info = await _resolve(state, model or s.default_pose_model, "pose")
    det_ref, det_info = None, None
    if parsed_boxes is None:
        det_ref, det_info = await _resolve(state, detector or s.default_detector, "person_detection")
    held: list[int] = []  # decoded pixels this request keeps in flight (the budget) until it is answered
    try:
        admitted = await _read_images(state, images, held)
        tasks = [ImageTask(a.image, parsed_boxes, min_score, max_people, a.scale, a.data, a.size) for a in admitted]
        result = await _submit(request, PoseRequest(pose_ref, det_ref, tasks), s.request_timeout_s)
        if draw_on is not None:  # the annotated picture, drawn while the pixels are still admitted
            draw_on.append(await run_in_threadpool(_draw, state, tasks[0], images[0], result.results[0]))
    finally:
        budget_for(s.image_limits).release(sum(held))
    return pose_info, det_info, result


def _draw(state, task: ImageTask, data: bytes, res) -> np.ndarray:
    """The picture with the people drawn, reduced like the pipeline saw it."""
    from ..drawing import draw
    image, scale = state.broker.picture(task, data, state.settings.image_limits)
    return draw(image, [p.to_dict() for p in res.people], min_score=0.2, scale=scale)


async def _one_image(request: Request) -> bytes:
    """The single image of a request: multipart field ``image`` or the raw body."""
    s = service_of(request).settings
    if is_multipart(request):
        return (await form_files(request, await read_body(request, s.max_image_bytes + 64 * 1024), "image", 1))[0]
    check_declared_type(request.headers.get("content-type"))
    return await read_body(request, s.max_image_bytes)


def _image_response(res, pose_info, det_info, queue_s, t0) -> dict:
    return {
        "id": uuid.uuid4().hex,
        "model": pose_info,
        "detector": det_info,
        "image": {"width": res.size[0], "height": res.size[1]},
        "keypoint_names": list(COCO17),
        "people": [p.to_dict() for p in res.people],
        "timing_ms": {"queue": round(queue_s * 1000, 2), "inference": round(res.timing_ms["inference"], 2),
                      "total": round((time.perf_counter() - t0) * 1000, 2)},
    }


@router.post("/pose", response_model=PoseResponse | list[CocoResult], responses=_ERRORS, openapi_extra=_IMAGE_BODY,
             summary="Keypoints of every person in one image")
async def pose(request: Request, model: str | None = ModelQ, detector: str | None = DetectorQ,
               min_score: float | None = MinScoreQ, max_people: int | None = MaxPeopleQ,
               boxes: str | None = BoxesQ, format: Literal["posekd", "coco"] = FormatQ,
               image_id: int = Query(0, ge=0, le=2**53, description="the image_id of `format=coco` results")):
    """Send the image as multipart field `image`, or as the raw body with an `image/*` content type."""
    t0 = time.perf_counter()
    data = await _one_image(request)
    pose_info, det_info, result = await _run(request, [data], model, detector, min_score, max_people, boxes)
    if format == "coco":
        return JSONResponse(coco_results((p.to_dict() for p in result.results[0].people), image_id))
    return JSONResponse(_image_response(result.results[0], pose_info, det_info, result.queue_s, t0))


_RENDERED: Responses = {200: {"description": "the image with boxes, skeletons and scores drawn (JPEG or PNG); the "
                                  "people's JSON is in the `X-PoseKD-People` header count and `/v1/pose`",
                   "content": {"image/jpeg": {"schema": {"type": "string", "format": "binary"}},
                               "image/png": {"schema": {"type": "string", "format": "binary"}}}}}


@router.post("/pose/render", response_class=Response, responses={**_ERRORS, **_RENDERED},
             openapi_extra=_IMAGE_BODY, summary="The same request as /v1/pose, answered with the skeletons drawn")
async def pose_render(request: Request, model: str | None = ModelQ, detector: str | None = DetectorQ,
                      min_score: float | None = MinScoreQ, max_people: int | None = MaxPeopleQ,
                      boxes: str | None = BoxesQ,
                      image_type: Literal["jpeg", "png"] = Query("jpeg", alias="type",
                                                                 description="`jpeg` (default) or `png`")):
    """An annotated picture for people rather than programs: large images come back reduced to about
    `POSEKD_DECODE_MAX_SIDE` on the long side."""
    import cv2
    t0 = time.perf_counter()
    data = await _one_image(request)
    drawn: list = []
    _, _, result = await _run(request, [data], model, detector, min_score, max_people, boxes, draw_on=drawn)
    ok, buf = cv2.imencode(".png" if image_type == "png" else ".jpg", drawn[0])
    if not ok:
        raise PoseKDError("the annotated image could not be encoded", code="internal_error", status=500)
    return Response(buf.tobytes(), media_type=f"image/{image_type}",
                    headers={"X-PoseKD-People": str(len(result.results[0].people)),
                             "X-PoseKD-Time-Ms": f"{(time.perf_counter() - t0) * 1000:.1f}"})


@router.post("/pose/batch", response_model=BatchResponse | list[CocoResult], responses=_ERRORS,
             openapi_extra=_BATCH_BODY, summary="Keypoints for several images in one request")
async def pose_batch(request: Request, model: str | None = ModelQ, detector: str | None = DetectorQ,
                     min_score: float | None = MinScoreQ, max_people: int | None = MaxPeopleQ,
                     boxes: str | None = BoxesQ, format: Literal["posekd", "coco"] = FormatQ,
                     image_ids: str | None = Query(None, max_length=4000, pattern=r"^\d{1,16}(,\d{1,16})*$",
                                                   description="`format=coco`: comma-separated image_id per "
                                                               "image, in order (default 0, 1, 2, …)")):
    """Send the images as repeated multipart fields `images`; `boxes`, when given, apply to every image."""
    t0 = time.perf_counter()
    s = service_of(request).settings
    if not is_multipart(request):
        raise PoseKDError("send the images as multipart/form-data, field 'images' (repeated)",
                          code="unsupported_media_type", status=415)
    # the body is parsed and dropped at once: only the files stay while the images are decoded
    files = await form_files(request, await read_body(request, s.max_batch_bytes), "images", s.max_batch_images)
    ids = [int(v) for v in image_ids.split(",")] if image_ids else list(range(len(files)))
    if len(ids) != len(files):
        # each value is valid alone (a 422 would say otherwise): the request's parts disagree
        raise PoseKDError(f"{len(ids)} image_ids for {len(files)} images: give one per image, in order",
                          code="invalid_request", status=400)
    pose_info, det_info, result = await _run(request, files, model, detector, min_score, max_people, boxes)
    if format == "coco":
        return JSONResponse([r for res, i in zip(result.results, ids)
                             for r in coco_results((p.to_dict() for p in res.people), i)])
    results = [_image_response(res, pose_info, det_info, result.queue_s, t0) for res in result.results]
    return JSONResponse({"results": results,
                         "timing_ms": {"total": round((time.perf_counter() - t0) * 1000, 2)}})
