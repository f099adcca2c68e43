"""Consumer groups, the same way for the request stream (asyncio client) and the video stream (sync
client): made on first use from id 0, so entries added before the group existed are served too, and
made again when Redis restarted empty (a read then fails with NOGROUP)."""
from __future__ import annotations

from typing import Any


def lost(exc: Exception) -> bool:
    """The group is gone (Redis restarted without its data): make it again, then read on."""
    return "NOGROUP" in str(exc)


def _existed(exc: Exception) -> bool:
    return "BUSYGROUP" in str(exc)


def ensure(r: Any, stream: str, group: str) -> bool:
    """Create ``group`` on ``stream`` (and the stream) unless it exists; True when it was created."""
    from redis.exceptions import ResponseError
    try:
        r.xgroup_create(stream, group, id="0", mkstream=True)
        return True
    except ResponseError as exc:
        if not _existed(exc):
            raise
        return False


async def ensure_async(r: Any, stream: str, group: str) -> bool:
    """:func:`ensure` with an asyncio client."""
    from redis.exceptions import ResponseError
    try:
        await r.xgroup_create(stream, group, id="0", mkstream=True)
        return True
    except ResponseError as exc:
        if not _existed(exc):
            raise
        return False
