"""Logging for every PoseKD process: one line format that carries the id of the HTTP request being
served (``-`` outside a request), set by the API's request-context middleware."""
from __future__ import annotations

import contextvars
import logging

REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("posekd_request_id", default="-")


class RequestIdFilter(logging.Filter):
    """Gives every log record a ``request_id`` attribute (``-`` outside a request), for formats that
    print it (``%(request_id)s``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = REQUEST_ID.get()
        return True


def install_log_format(level: int = logging.INFO) -> None:
    """The service's log lines: time, level, logger, request id, message."""
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s")
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, RequestIdFilter) for f in handler.filters):
            handler.addFilter(RequestIdFilter())
