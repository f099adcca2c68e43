"""Wire format between the API and the workers: one request-stream entry per image and one reply
entry per image. Images travel either as the uploaded bytes (``encoded``: the worker decodes them) or
as decoded BGR pixels (``raw``); ``bench queue`` measures which is cheaper end to end."""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ..errors import PoseKDError
from ..pipeline import ImageResult, ImageTask, Person
from . import keys as k

if TYPE_CHECKING:
    from ..settings import ImageLimits
    from .base import PoseRequest

FORMATS = ("encoded", "raw")


def _s(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _pair(values) -> tuple[int, int]:
    a, b = (int(v) for v in values)
    return a, b


def request_fields(request: PoseRequest, index: int, reply: str, deadline: float, enqueued: float,
                   fmt: str) -> dict[str, bytes | str]:
    """The stream entry of image ``index`` of ``request``; its answer goes to the ``reply`` stream."""
    task = request.tasks[index]
    if task.data is None:  # only pixels at hand (a caller that decoded itself): send those
        fmt = "raw"
    params = {"min_score": task.min_score, "max_people": task.max_people, "scale": task.scale,
              "size": list(task.size) if task.size else None,
              "boxes": None if task.boxes is None else np.asarray(task.boxes, np.float32).tolist()}
    fields: dict[str, bytes | str] = {
        k.F_REQUEST: request.id, k.F_INDEX: str(index), k.F_COUNT: str(request.size), k.F_POSE: request.pose_ref,
        k.F_DETECTOR: request.detector_ref or "", k.F_REPLY: reply, k.F_DEADLINE: repr(deadline),
        k.F_ENQUEUED: repr(enqueued), k.F_PARAMS: json.dumps(params, separators=(",", ":")), k.F_FORMAT: fmt,
    }
    if fmt == "raw":
        image = np.ascontiguousarray(task.image, np.uint8)
        fields[k.F_SHAPE] = f"{image.shape[0]},{image.shape[1]}"
        fields[k.F_IMAGE] = image.tobytes()
    else:
        fields[k.F_IMAGE] = task.data or b""
    return fields


@dataclass
class Request:
    """A request entry as a worker reads it; ``task.image`` is filled by :meth:`decode`."""
    entry_id: str
    request_id: str
    index: int
    count: int
    pose_ref: str
    detector_ref: str | None
    reply: str
    deadline: float
    enqueued: float
    fmt: str
    task: ImageTask
    shape: tuple[int, int] | None = None

    @classmethod
    def parse(cls, entry_id, fields: dict) -> Request:
        f = {_s(key): value for key, value in fields.items()}
        params = json.loads(_s(f[k.F_PARAMS]))
        boxes = None if params["boxes"] is None else np.asarray(params["boxes"], np.float32).reshape(-1, 4)
        fmt = _s(f[k.F_FORMAT])
        task = ImageTask(None, boxes, float(params["min_score"]), int(params["max_people"]),
                         float(params["scale"]), data=f[k.F_IMAGE],
                         size=_pair(params["size"]) if params.get("size") else None)
        shape = _pair(_s(f[k.F_SHAPE]).split(",")) if fmt == "raw" else None
        return cls(_s(entry_id), _s(f[k.F_REQUEST]), int(_s(f[k.F_INDEX])), int(_s(f[k.F_COUNT])), _s(f[k.F_POSE]),
                   _s(f[k.F_DETECTOR]) or None, _s(f[k.F_REPLY]), float(_s(f[k.F_DEADLINE])),
                   float(_s(f[k.F_ENQUEUED])), fmt, task, shape)

    def decode(self, limits: ImageLimits) -> None:
        """Turn the payload into pixels; raises InvalidImage and friends for a bad upload."""
        if self.task.data is None:
            raise ValueError("the request carries no image")
        if self.fmt == "raw":
            if self.shape is None:
                raise ValueError("a raw image needs its shape")
            h, w = self.shape
            self.task.image = np.frombuffer(self.task.data, np.uint8).reshape(h, w, 3)
        else:
            from ..images import budget_for, decode_upload
            decoded = decode_upload(self.task.data, limits)
            budget_for(limits).release(decoded.held)  # a worker holds at most two batches of reduced images
            self.task.image, self.task.scale, self.task.size = decoded.image, decoded.scale, decoded.size
        self.task.data = None


def reply_ok(req: Request, result: ImageResult, queue_s: float, batch: int, worker: str) -> dict[str, str]:
    body = {"ok": True, "people": [p.to_dict() for p in result.people], "timing": result.timing_ms,
            "size": list(result.size), "queue_s": queue_s, "batch": batch, "worker": worker}
    return {k.F_REQUEST: req.request_id, k.F_INDEX: str(req.index), k.F_BODY: json.dumps(body, separators=(",", ":"))}


def reply_error(req: Request, exc: BaseException, worker: str) -> dict[str, str]:
    if isinstance(exc, PoseKDError):
        err = {"code": exc.code, "status": exc.status, "message": exc.message, "retry_after": exc.retry_after}
    else:
        err = {"code": "internal_error", "status": 500, "message": f"inference failed: {exc}", "retry_after": None}
    body = {"ok": False, "error": err, "worker": worker}
    return {k.F_REQUEST: req.request_id, k.F_INDEX: str(req.index), k.F_BODY: json.dumps(body, separators=(",", ":"))}


@dataclass
class Reply:
    request_id: str
    index: int
    body: dict

    @classmethod
    def parse(cls, fields: dict) -> Reply:
        f = {_s(key): value for key, value in fields.items()}
        return cls(_s(f[k.F_REQUEST]), int(_s(f[k.F_INDEX])), json.loads(_s(f[k.F_BODY])))

    def outcome(self) -> ImageResult | PoseKDError:
        b = self.body
        if not b["ok"]:
            e = b["error"]
            return PoseKDError(e["message"], code=e["code"], status=int(e["status"]), retry_after=e["retry_after"])
        people = [Person.from_dict(p) for p in b["people"]]
        return ImageResult(people, b["timing"], tuple(b["size"]))
