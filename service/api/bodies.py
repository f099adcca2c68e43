"""Reading request bodies within limits: raw image bodies and multipart forms."""
from __future__ import annotations

import asyncio

from fastapi import Request
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException

from ..errors import InvalidParameter, PayloadTooLarge, PoseKDError
from .state import service_of


class BodyTimeout(PoseKDError):
    code, status = "body_timeout", 408


class BodyTooLarge(MultiPartException):
    """Raised from inside the multipart parser when the body passes its limit; a MultiPartException so
    that the parser closes (and deletes) the files it spooled so far."""


def limited(request: Request, limit: int) -> Request:
    """The same request whose body stream raises :class:`BodyTooLarge` once more than ``limit`` bytes
    came in, whatever Content-Length said (chunked uploads have none)."""
    seen = 0

    async def receive():
        nonlocal seen
        message = await request.receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise BodyTooLarge(f"the request body passes the limit of {limit} bytes")
        return message

    return Request(request.scope, receive=receive)


async def read_body(request: Request, limit: int, timeout_s: float | None = None) -> bytes:
    """The whole body, refused with 413 as soon as it passes ``limit`` bytes (declared or streamed), and
    with 408 when it has not all arrived after ``timeout_s`` (a slow or stalled client holds a
    connection and memory; default ``POSEKD_BODY_TIMEOUT_S``)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"the request body has {declared} bytes; the limit is {limit}")
    if timeout_s is None:
        timeout_s = service_of(request).settings.body_timeout_s
    body = bytearray()  # grown in place: the body is never held twice while it arrives
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in request.stream():
                if len(body) + len(chunk) > limit:
                    raise PayloadTooLarge(f"the request body passes the limit of {limit} bytes")
                body += chunk
    except TimeoutError:
        raise BodyTimeout(f"the request body did not arrive within {timeout_s:g} s") from None
    return bytes(body)


def is_multipart(request: Request) -> bool:
    return request.headers.get("content-type", "").lower().startswith("multipart/form-data")


async def parse_form(request: Request, *, max_files: int, max_fields: int = 100, limit: int | None = None,
                     timeout_s: float | None = None):
    """The multipart form, parsed as it streams in (files spool to disk past 1 MB), with the body
    stopped at ``limit`` bytes (413), ``max_files`` files (413) and ``timeout_s`` seconds (408);
    anything the parser rejects is a 400 ``invalid_request``."""
    if timeout_s is None:
        timeout_s = service_of(request).settings.body_timeout_s
    source = limited(request, limit) if limit is not None else request
    try:
        async with asyncio.timeout(timeout_s):
            return await source.form(max_files=max_files, max_fields=max_fields)
    except TimeoutError:
        raise BodyTimeout(f"the request body did not arrive within {timeout_s:g} s") from None
    except (StarletteHTTPException, MultiPartException) as exc:
        # Starlette turns the parser's MultiPartException into a 400 HTTPException; the cause says why
        cause = exc if isinstance(exc, MultiPartException) else exc.__context__
        if isinstance(cause, BodyTooLarge):
            raise PayloadTooLarge(cause.message) from None
        message = getattr(cause, "message", None) or str(getattr(exc, "detail", exc))
        if "too many files" in message.lower():
            raise PayloadTooLarge(f"more than {max_files - 1} files in one request; the limit is "
                                  f"{max_files - 1}") from None
        raise PoseKDError(f"malformed multipart body: {message}", code="invalid_request", status=400) from None


async def form_files(request: Request, body: bytes, field: str, max_files: int) -> list[bytes]:
    """The files sent under ``field`` in a multipart body already read (and size-checked)."""
    async def replay():
        return {"type": "http.request", "body": body, "more_body": False}

    form = await parse_form(Request(request.scope, receive=replay), max_files=max_files + 1)
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
