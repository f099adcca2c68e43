"""The HTTP protocol `posekd serve` runs: uvicorn's httptools protocol with a deadline on the request head,
a connection limit that counts only clients that sent a request, and a well-formed 503 past it.

uvicorn closes idle keep-alive connections, but a connection that never sends a request (or sends its
head a few bytes a second) is held forever: enough of them fill ``POSEKD_MAX_CONNECTIONS`` and every
new client gets 503 (a probe held 520 silent connections for 150 s). This subclass gives every
request head ``POSEKD_HEADER_TIMEOUT_S`` from the connection's opening (or, on a keep-alive
connection, from the request's first byte) to arrive whole, and closes the connection otherwise.
While a silent connection is held it does not count against ``POSEKD_MAX_CONNECTIONS``: the limit
counts connections that have sent a request head, so real clients go on being served. Past the limit,
the answer is the project's JSON 503 ``overloaded`` with ``Retry-After`` (uvicorn's own is plain text).
uvicorn has no setting for either; a small subclass was chosen over a reverse proxy in front so that
the embedded default (``make run``) is protected too."""
from __future__ import annotations

import asyncio
import json
import logging

log = logging.getLogger("posekd.api")

_OVERLOADED = json.dumps({"error": {"code": "overloaded", "message": "too many connections; try again shortly",
                                    "request_id": "-"}}).encode()


async def _overloaded(scope, receive, send) -> None:
    """Past the connection limit: the project's error shape, with Retry-After, and the connection closed."""
    await send({"type": "http.response.start", "status": 503,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(_OVERLOADED)).encode()),
                            (b"retry-after", b"1"), (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": _OVERLOADED, "more_body": False})


class _RequestingConnections:
    """The server's connection set as the limit check sees it: only connections that have sent a request
    head count (adds and removes go to the real set, which shutdown uses)."""

    def __init__(self, real: set):
        self.real = real

    def add(self, conn) -> None:
        self.real.add(conn)

    def discard(self, conn) -> None:
        self.real.discard(conn)

    def __len__(self) -> int:
        return sum(1 for c in list(self.real) if getattr(c, "_head_seen", False))

    def __iter__(self):
        return iter(list(self.real))


def protocol_with_head_timeout(timeout_s: float) -> type[asyncio.Protocol] | str:
    """A uvicorn ``http=`` protocol class closing connections whose request head is late; "auto" (uvicorn's
    own choice) when httptools is missing or the timeout is off."""
    try:
        from uvicorn.protocols.http import httptools_impl
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:  # uvicorn without httptools: its h11 protocol, with no head deadline
        return "auto"
    if timeout_s <= 0:
        return "auto"
    httptools_impl.service_unavailable = _overloaded  # the module's answer past the limit

    class HeadDeadlineProtocol(HttpToolsProtocol):
        _head_timer: asyncio.TimerHandle | None = None
        _head_seen = False

        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            self.connections = _RequestingConnections(self.server_state.connections)  # type: ignore[assignment]

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._arm()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            if self._head_timer is None:  # the next request on a keep-alive connection
                self._arm()

        def on_headers_complete(self) -> None:
            self._disarm()
            self._head_seen = True
            super().on_headers_complete()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            self._head_timer = self.loop.call_later(timeout_s, self._late)

        def _disarm(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _late(self) -> None:
            self._head_timer = None
            if not self.transport.is_closing():
                log.info("closed a connection whose request head did not arrive within %g s", timeout_s)
                self.transport.close()

    return HeadDeadlineProtocol


__all__ = ["protocol_with_head_timeout"]
