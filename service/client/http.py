"""The Python client of the HTTP API, synchronous (:class:`Client`) and asynchronous
(:class:`AsyncClient`), with the same methods and typed results. A 503 with ``Retry-After`` (queue
full, no worker yet, Redis restarting) is retried after the time the service asks for, up to
``retries`` times; every other error raises :class:`APIError` with the service's code, message and
request id."""
from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from ..mediatypes import sniff
from .types import PoseResult, VideoResult

ImageInput = str | Path | bytes | np.ndarray
FINAL = ("succeeded", "failed", "cancelled")


class APIError(Exception):
    """An error answer: ``status`` (HTTP), ``code`` (stable, see the README), ``message`` and the
    ``request_id`` to look for in the service log."""

    def __init__(self, status: int, code: str, message: str, request_id: str | None = None):
        super().__init__(f"{status} {code}: {message}" + (f" (request {request_id})" if request_id else ""))
        self.status, self.code, self.message, self.request_id = status, code, message, request_id


def image_bytes(image: ImageInput) -> tuple[bytes, str]:
    """(bytes, content type) of an image given as a path, encoded bytes or a BGR array."""
    if isinstance(image, np.ndarray):
        import cv2
        ok, buf = cv2.imencode(".png", image)
        if not ok:
            raise ValueError("the array could not be encoded as PNG (expected H×W×3 uint8 BGR)")
        return buf.tobytes(), "image/png"
    data = Path(image).read_bytes() if isinstance(image, (str, Path)) else bytes(image)
    kind = sniff(data)
    return data, f"image/{kind}" if kind in ("jpeg", "png", "webp", "bmp") else "application/octet-stream"


def _params(model, detector, min_score, max_people, boxes) -> dict[str, Any]:
    params: dict[str, Any] = {"model": model, "detector": detector, "min_score": min_score,
                              "max_people": max_people}
    if boxes is not None:
        params["boxes"] = json.dumps(np.asarray(boxes, np.float64).reshape(-1, 4).tolist())
    return {k: v for k, v in params.items() if v is not None}


def _raise_for(r: httpx.Response) -> None:
    if r.status_code < 400:
        return
    try:
        err = r.json()["error"]
        raise APIError(r.status_code, err["code"], err["message"], err.get("request_id"))
    except (ValueError, KeyError, TypeError):
        raise APIError(r.status_code, "http_error", r.text[:200], r.headers.get("x-request-id")) from None


def _retry_after(r: httpx.Response, cap: float) -> float | None:
    """Seconds to wait before retrying, or None when this answer is not worth retrying."""
    if r.status_code != 503:
        return None
    try:
        return min(max(float(r.headers.get("retry-after", "1")), 0.0), cap)
    except ValueError:
        return min(1.0, cap)


def _settled(status: dict, job_id: str, end: float | None, timeout: float | None,
             progress: Callable[[dict], None] | None) -> bool:
    """One poll of ``wait``: report progress; True once the job is final; TimeoutError past ``end``."""
    if progress is not None:
        progress(status)
    if status["status"] in FINAL:
        return True
    if end is not None and time.monotonic() > end:
        raise TimeoutError(f"job {job_id} still {status['status']} after {timeout} s")
    return False


class _Base:
    def __init__(self, url: str, api_key: str | None, timeout: float, retries: int, max_retry_wait: float):
        self.url = url.rstrip("/")
        api_key = api_key if api_key is not None else os.environ.get("POSEKD_API_KEY")  # the CLI's default too
        self.headers = {"X-API-Key": api_key} if api_key else {}
        self.timeout, self.retries, self.max_retry_wait = timeout, retries, max_retry_wait

    def _after(self, r: httpx.Response, attempt: int) -> float | None:
        """The retry policy of both clients: seconds to wait before sending again (a 503 with retries
        left), or None when ``r`` is the answer — returned, or raised as an :class:`APIError`."""
        wait = _retry_after(r, self.max_retry_wait)
        if wait is None or attempt >= self.retries:
            _raise_for(r)
            return None
        return wait


class Client(_Base):
    """``Client("http://127.0.0.1:8000")``; ``http`` takes an existing ``httpx.Client`` (for example
    Starlette's ``TestClient``) instead of opening one."""

    def __init__(self, url: str = "http://127.0.0.1:8000", *, api_key: str | None = None, timeout: float = 60.0,
                 retries: int = 3, max_retry_wait: float = 30.0, http: httpx.Client | None = None):
        super().__init__(url, api_key, timeout, retries, max_retry_wait)
        self._own = http is None
        self.http = http or httpx.Client(base_url=self.url, timeout=timeout)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._own:
            self.http.close()

    def _send(self, method: str, path: str, headers: dict | None = None, **kw) -> httpx.Response:
        attempt = 0
        while True:
            r = self.http.request(method, path, headers={**self.headers, **(headers or {})}, **kw)
            wait = self._after(r, attempt)
            if wait is None:
                return r
            time.sleep(wait)
            attempt += 1

    def pose(self, image: ImageInput, *, model: str | None = None, detector: str | None = None,
             min_score: float | None = None, max_people: int | None = None, boxes=None) -> PoseResult:
        """The people in one image (a path, encoded bytes or a BGR array)."""
        data, ctype = image_bytes(image)
        r = self._send("POST", "/v1/pose", headers={"content-type": ctype}, content=data,
                       params=_params(model, detector, min_score, max_people, boxes))
        return PoseResult.from_json(r.json())

    def pose_batch(self, images: Sequence[ImageInput], *, model: str | None = None, detector: str | None = None,
                   min_score: float | None = None, max_people: int | None = None, boxes=None) -> list[PoseResult]:
        """Several images in one request (at most the service's ``POSEKD_MAX_BATCH_IMAGES``)."""
        files = [("images", (f"{i}", *image_bytes(im))) for i, im in enumerate(images)]
        r = self._send("POST", "/v1/pose/batch", files=files,
                       params=_params(model, detector, min_score, max_people, boxes))
        return [PoseResult.from_json(res) for res in r.json()["results"]]

    def render(self, image: ImageInput, *, type: str = "jpeg", model: str | None = None,
               detector: str | None = None, min_score: float | None = None, max_people: int | None = None,
               boxes=None) -> bytes:
        """The image with the skeletons drawn, as JPEG (or PNG) bytes."""
        data, ctype = image_bytes(image)
        r = self._send("POST", "/v1/pose/render", headers={"content-type": ctype}, content=data,
                       params={**_params(model, detector, min_score, max_people, boxes), "type": type})
        return r.content

    def models(self) -> dict[str, Any]:
        return self._send("GET", "/v1/models").json()

    def submit_video(self, clip: str | Path | bytes, *, render: bool = False, model: str | None = None,
                     detector: str | None = None, keyframe_interval: int | None = None,
                     smoothing: bool | None = None) -> str:
        """Upload a clip; returns the job id."""
        data = Path(clip).read_bytes() if isinstance(clip, (str, Path)) else clip
        params = {k: v for k, v in {"render": render, "model": model, "detector": detector,
                                    "keyframe_interval": keyframe_interval, "smoothing": smoothing}.items()
                  if v is not None}
        r = self._send("POST", "/v1/videos", files={"video": ("clip", data, "application/octet-stream")},
                       params=params)
        return r.json()["job_id"]

    def job(self, job_id: str) -> dict[str, Any]:
        return self._send("GET", f"/v1/jobs/{job_id}").json()

    def wait(self, job_id: str, *, poll: float = 0.5, timeout: float | None = None,
             progress: Callable[[dict], None] | None = None) -> VideoResult:
        """Poll a job until it is final; its result when it succeeded, APIError otherwise."""
        end = None if timeout is None else time.monotonic() + timeout
        while not _settled(self.job(job_id), job_id, end, timeout, progress):
            time.sleep(poll)
        return VideoResult.from_json(self._send("GET", f"/v1/jobs/{job_id}/result").json(), job_id)

    def video(self, clip: str | Path | bytes, **kw) -> VideoResult:
        """Upload a clip and wait for its tracked poses (``wait`` options: poll, timeout, progress)."""
        wait_kw = {k: kw.pop(k) for k in ("poll", "timeout", "progress") if k in kw}
        return self.wait(self.submit_video(clip, **kw), **wait_kw)

    def overlay(self, job_id: str) -> bytes:
        """The overlay MP4 of a job submitted with ``render=True``."""
        return self._send("GET", f"/v1/jobs/{job_id}/video").content


class AsyncClient(_Base):
    """The same API for asyncio: ``async with AsyncClient(url) as c: result = await c.pose(path)``."""

    def __init__(self, url: str = "http://127.0.0.1:8000", *, api_key: str | None = None, timeout: float = 60.0,
                 retries: int = 3, max_retry_wait: float = 30.0, http: httpx.AsyncClient | None = None):
        super().__init__(url, api_key, timeout, retries, max_retry_wait)
        self._own = http is None
        self.http = http or httpx.AsyncClient(base_url=self.url, timeout=timeout)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._own:
            await self.http.aclose()

    async def _send(self, method: str, path: str, headers: dict | None = None, **kw) -> httpx.Response:
        attempt = 0
        while True:
            r = await self.http.request(method, path, headers={**self.headers, **(headers or {})}, **kw)
            wait = self._after(r, attempt)
            if wait is None:
                return r
            await asyncio.sleep(wait)
            attempt += 1

    async def pose(self, image: ImageInput, *, model: str | None = None, detector: str | None = None,
                   min_score: float | None = None, max_people: int | None = None, boxes=None) -> PoseResult:
        data, ctype = image_bytes(image)
        r = await self._send("POST", "/v1/pose", headers={"content-type": ctype}, content=data,
                             params=_params(model, detector, min_score, max_people, boxes))
        return PoseResult.from_json(r.json())

    async def pose_batch(self, images: Sequence[ImageInput], *, model: str | None = None,
                         detector: str | None = None, min_score: float | None = None,
                         max_people: int | None = None, boxes=None) -> list[PoseResult]:
        files = [("images", (f"{i}", *image_bytes(im))) for i, im in enumerate(images)]
        r = await self._send("POST", "/v1/pose/batch", files=files,
                             params=_params(model, detector, min_score, max_people, boxes))
        return [PoseResult.from_json(res) for res in r.json()["results"]]

    async def render(self, image: ImageInput, *, type: str = "jpeg", **kw) -> bytes:
        data, ctype = image_bytes(image)
        r = await self._send("POST", "/v1/pose/render", headers={"content-type": ctype}, content=data,
                             params={**_params(kw.get("model"), kw.get("detector"), kw.get("min_score"),
                                               kw.get("max_people"), kw.get("boxes")), "type": type})
        return r.content

    async def models(self) -> dict[str, Any]:
        return (await self._send("GET", "/v1/models")).json()

    async def submit_video(self, clip: str | Path | bytes, *, render: bool = False, **kw) -> str:
        data = Path(clip).read_bytes() if isinstance(clip, (str, Path)) else clip
        params = {k: v for k, v in {"render": render, **kw}.items() if v is not None}
        r = await self._send("POST", "/v1/videos", files={"video": ("clip", data, "application/octet-stream")},
                             params=params)
        return r.json()["job_id"]

    async def job(self, job_id: str) -> dict[str, Any]:
        return (await self._send("GET", f"/v1/jobs/{job_id}")).json()

    async def wait(self, job_id: str, *, poll: float = 0.5, timeout: float | None = None,
                   progress: Callable[[dict], None] | None = None) -> VideoResult:
        end = None if timeout is None else time.monotonic() + timeout
        while not _settled(await self.job(job_id), job_id, end, timeout, progress):
            await asyncio.sleep(poll)
        return VideoResult.from_json((await self._send("GET", f"/v1/jobs/{job_id}/result")).json(), job_id)

    async def video(self, clip: str | Path | bytes, **kw) -> VideoResult:
        wait_kw = {k: kw.pop(k) for k in ("poll", "timeout", "progress") if k in kw}
        return await self.wait(await self.submit_video(clip, **kw), **wait_kw)

    async def overlay(self, job_id: str) -> bytes:
        return (await self._send("GET", f"/v1/jobs/{job_id}/video")).content
