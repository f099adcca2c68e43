"""The running record of shadow agreement, per student model: the last ``window`` image agreements and
the count of samples taken and dropped. In memory for the embedded service; in Redis (a capped list and
two counters per model) when workers elsewhere do the shadowing and the API answers for them."""
from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Protocol

import numpy as np

log = logging.getLogger("posekd.shadow")


@dataclass(frozen=True)
class Entry:
    version: int
    shadow: str  # the teacher, name:version
    agreement: float
    at: float  # unix time


class AgreementLog(Protocol):
    def record(self, name: str, version: int, shadow: str, agreement: float) -> None: ...
    def dropped(self, name: str) -> None: ...
    def entries(self, name: str) -> list[Entry]: ...
    def counts(self, name: str) -> dict[str, int]: ...


class MemoryLog:
    def __init__(self, window: int = 1000):
        self.window = window
        self._entries: dict[str, deque[Entry]] = {}
        self._counts: dict[str, dict[str, int]] = {}
        self._lock = threading.Lock()

    def _count(self, name: str, what: str) -> None:
        c = self._counts.setdefault(name, {"samples": 0, "dropped": 0})
        c[what] += 1

    def record(self, name: str, version: int, shadow: str, agreement: float) -> None:
        with self._lock:
            self._entries.setdefault(name, deque(maxlen=self.window)).append(
                Entry(version, shadow, agreement, time.time()))
            self._count(name, "samples")

    def dropped(self, name: str) -> None:
        with self._lock:
            self._count(name, "dropped")

    def entries(self, name: str) -> list[Entry]:
        with self._lock:
            return list(self._entries.get(name, ()))

    def counts(self, name: str) -> dict[str, int]:
        with self._lock:
            return dict(self._counts.get(name, {"samples": 0, "dropped": 0}))


class RedisLog:
    """Keys ``<prefix>:shadow:<model>`` (a list, newest first, capped at ``window``) and
    ``<prefix>:shadow:<model>:samples`` / ``:dropped`` (counters). Writes that fail are logged and
    forgotten: the shadow's record is never worth a request."""

    def __init__(self, url: str, prefix: str = "posekd", window: int = 1000, timeout_s: float = 2.0):
        import redis

        self.client = redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
        self.prefix = prefix
        self.window = window

    def _key(self, name: str) -> str:
        return f"{self.prefix}:shadow:{name}"

    def record(self, name: str, version: int, shadow: str, agreement: float) -> None:
        from redis.exceptions import RedisError

        entry = json.dumps({"v": version, "s": shadow, "a": round(agreement, 5), "t": round(time.time(), 3)})
        try:
            with self.client.pipeline(transaction=True) as pipe:
                pipe.lpush(self._key(name), entry)
                pipe.ltrim(self._key(name), 0, self.window - 1)
                pipe.incr(self._key(name) + ":samples")
                pipe.execute()
        except RedisError as exc:
            log.debug("shadow record not written: %s", exc)

    def dropped(self, name: str) -> None:
        from redis.exceptions import RedisError
        try:
            self.client.incr(self._key(name) + ":dropped")
        except RedisError as exc:
            log.debug("shadow drop not counted: %s", exc)

    def _read(self, call, *args):
        """A read for the agreement route: Redis unreachable is a 503, never a 500."""
        from redis.exceptions import RedisError

        from ..errors import Overloaded
        try:
            return call(*args)
        except RedisError as exc:
            raise Overloaded(f"the shadow's record is unavailable (Redis: {exc})", retry_after=2,
                             code="broker_unavailable") from None

    def entries(self, name: str) -> list[Entry]:
        raw = self._read(self.client.lrange, self._key(name), 0, self.window - 1)
        out = []
        for item in reversed(raw):  # oldest first, as the memory log keeps them
            d = json.loads(item)
            out.append(Entry(int(d["v"]), str(d["s"]), float(d["a"]), float(d["t"])))
        return out

    def counts(self, name: str) -> dict[str, int]:
        samples, dropped = self._read(self.client.mget, [self._key(name) + ":samples", self._key(name) + ":dropped"])
        return {"samples": int(samples or 0), "dropped": int(dropped or 0)}


def _stats(values: list[float]) -> dict:
    if not values:
        return {"count": 0, "mean": None, "median": None, "p10": None}
    a = np.asarray(values)
    return {"count": len(values), "mean": round(float(a.mean()), 4), "median": round(float(np.median(a)), 4),
            "p10": round(float(np.percentile(a, 10)), 4)}


def summarize(entries: list[Entry], counts: dict[str, int], expected: dict[int, float | None],
              margin: float) -> dict:
    """The running summary the agreement route returns: the window's statistics, overall and per
    served version, each version's held-out agreement from its manifest (``expected``) and whether
    the window's median is more than ``margin`` below it (drift)."""
    out: dict = {**_stats([e.agreement for e in entries]), "samples_total": counts.get("samples", 0),
                 "dropped_total": counts.get("dropped", 0),
                 "since": round(entries[0].at, 3) if entries else None,
                 "teachers": sorted({e.shadow for e in entries}), "versions": []}
    for version in sorted({e.version for e in entries} | set(expected)):
        stats = _stats([e.agreement for e in entries if e.version == version])
        held_out = expected.get(version)
        threshold = round(held_out - margin, 4) if held_out is not None else None
        median = stats["median"]
        out["versions"].append({"version": version, **stats, "held_out": held_out, "threshold": threshold,
                                "drift": bool(median is not None and threshold is not None and median < threshold)})
    return out
