"""Which workers are alive, from the heartbeats they write to Redis, and which of them hold work.

Every worker process writes ``time.time()`` under its consumer name into the ``workers`` sorted set
every ``POSEKD_WORKER_HEARTBEAT_S`` seconds (clocks are assumed NTP-synchronised across hosts). A
consumer that holds pending entries (images or video jobs) and whose heartbeat is missing or older than
``POSEKD_WORKER_STALE_S`` is dead: the image consumer and the video consumer of any live worker take its
entries over. Liveness, not idle time, decides, so a live worker's long batch is never taken from it."""
from __future__ import annotations

from collections.abc import Iterable


def holders(summary: dict) -> list[str]:
    """Consumer names holding at least one pending entry, from an ``XPENDING key group`` summary."""
    out = []
    for c in summary.get("consumers") or []:
        name = c["name"].decode() if isinstance(c["name"], bytes) else str(c["name"])
        if int(c["pending"]) > 0:
            out.append(name)
    return out


def dead(names: Iterable[str], heartbeats: Iterable[float | None], now: float, stale_s: float) -> list[str]:
    """The names whose last heartbeat (seconds, same clock as ``now``; None: never seen or forgotten) is
    older than ``stale_s``."""
    return [n for n, beat in zip(names, heartbeats) if beat is None or now - float(beat) > stale_s]
