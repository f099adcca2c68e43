"""Per-request context: the request id (``X-Request-ID``, accepted from the client or generated, echoed
on every response, carried by every log line written while the request runs and by every error body)
and the optional access log, one line per request, as text or JSON."""
from __future__ import annotations

import json
import logging
import re
import time
import uuid

from ..logs import REQUEST_ID

_ACCEPTED = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")  # a client's id is echoed only when it is this tame
access = logging.getLogger("posekd.access")


class RequestContextMiddleware:
    """Pure ASGI middleware (so it sees every response, errors included): sets the request id, adds
    ``X-Request-ID`` to the response and writes the access log line when ``access_log`` is ``text`` or
    ``json``."""

    def __init__(self, app, access_log: str = "off"):
        self.app = app
        self.access_log = access_log

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        given = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"x-request-id"), "")
        request_id = given if _ACCEPTED.match(given) else uuid.uuid4().hex
        token = REQUEST_ID.set(request_id)
        t0 = time.perf_counter()
        seen = {"status": 500, "bytes": 0}

        async def send_with_id(message):
            if message["type"] == "http.response.start":
                seen["status"] = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", request_id.encode())]
            elif message["type"] == "http.response.body":
                seen["bytes"] += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            if self.access_log != "off":
                self._log(scope, seen, time.perf_counter() - t0, request_id)
            REQUEST_ID.reset(token)

    def _log(self, scope, seen: dict, seconds: float, request_id: str) -> None:
        client = scope.get("client") or ("-", 0)
        query = scope.get("query_string", b"").decode("latin-1")
        path = scope.get("path", "") + (f"?{query}" if query else "")
        if self.access_log == "json":
            access.info(json.dumps({"ts": round(time.time(), 3), "request_id": request_id, "client": client[0],
                                    "method": scope.get("method"), "path": path, "status": seen["status"],
                                    "bytes": seen["bytes"], "ms": round(seconds * 1000, 2)},
                                   separators=(",", ":")))
        else:
            access.info('%s "%s %s" %d %d %.1fms', client[0], scope.get("method"), path, seen["status"],
                        seen["bytes"], seconds * 1000)
