"""Reading request bodies within limits: raw image bodies and multipart forms."""
from __future__ import annotations

from fastapi import Request
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException

from ..errors import InvalidParameter, PayloadTooLarge, PoseKDError


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, refused with 413 as soon as it passes ``limit`` bytes (declared or streamed)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"the request body has {declared} bytes; the limit is {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"the request body passes the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def is_multipart(request: Request) -> bool:
    return request.headers.get("content-type", "").lower().startswith("multipart/form-data")


async def form_files(request: Request, body: bytes, field: str, max_files: int) -> list[bytes]:
    """The files sent under ``field`` in a multipart body already read (and size-checked)."""
    async def replay():
        return {"type": "http.request", "body": body, "more_body": False}

    replayed = Request(request.scope, receive=replay)
    try:
        form = await replayed.form(max_files=max_files + 1, max_fields=100)
    except MultiPartException as exc:
        raise PoseKDError(f"malformed multipart body: {exc.message}", code="invalid_request", status=400) from exc
    try:
        values = form.getlist(field)
        if not values:
            raise InvalidParameter(f"the multipart body has no {field!r} file field "
                                   f"(fields present: {sorted(set(form.keys())) or 'none'})")
        if len(values) > max_files:
            raise PayloadTooLarge(f"{len(values)} files in {field!r}; the limit is {max_files}")
        files = []
        for v in values:
            if not isinstance(v, UploadFile):
                raise InvalidParameter(f"the {field!r} field must be a file, not a text value")
            files.append(await v.read())
        return files
    finally:
        await form.close()
