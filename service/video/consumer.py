"""Redis mode, in `posekd worker`: video jobs from the ``videos`` stream, as a consumer group. A job whose
worker died — its heartbeat is stale, see :mod:`service.broker.liveness` — is taken over by a live worker
within seconds and continues from its last checkpoint; a live worker's job is taken only when it sent no
progress for ``visibility_s``, i.e. it hung."""
from __future__ import annotations

import logging
import threading
import time

from ..broker import groups
from ..broker.backoff import Backoff
from ..broker.keys import RedisKeys
from ..broker.liveness import dead, holders
from ..broker.videos import RedisVideoQueue
from ..errors import PoseKDError
from ..settings import Delivery
from .job import Stopping, VideoConfig, process
from .jobs import HandedOver, RedisJobStore

log = logging.getLogger("posekd.video")


class VideoConsumer:
    """Redis mode, in `posekd worker`: one job at a time from the ``videos`` stream."""

    def __init__(self, store: RedisJobStore, name: str, config: VideoConfig, registry, pipeline,
                 delivery: Delivery = Delivery()):
        self.store, self.name, self.config = store, name, config
        self.registry, self.pipeline = registry, pipeline
        self.visibility_ms = int(delivery.video_visibility_s * 1000)
        self.stale_ms = int(delivery.stale_s * 1000)
        self.workers_key = RedisKeys(store.prefix).workers  # heartbeats: the image consumer writes them
        self.stream = RedisKeys(store.prefix).videos
        self.stop_event = threading.Event()

    def _ensure_group(self) -> None:
        groups.ensure(self.store.redis, self.stream, RedisVideoQueue.GROUP)

    def _take_over(self):
        """One job entry held by a dead worker (or, past ``visibility_s``, by a hung one), now ours."""
        r, stream, group = self.store.redis, self.stream, RedisVideoQueue.GROUP
        others = [n for n in holders(r.xpending(stream, group)) if n != self.name]
        beats = r.zmscore(self.workers_key, others) if others else []
        departed = dead(others, beats, time.time(), self.stale_ms / 1000)
        for consumer in departed:
            for p in r.xpending_range(stream, group, "-", "+", 4, consumername=consumer, idle=self.stale_ms):
                claimed = r.xclaim(stream, group, self.name, self.stale_ms, [p["message_id"]])
                if claimed and claimed[0][1]:
                    log.warning("taking over video job entry %s from %s, whose heartbeat stopped",
                                claimed[0][0], consumer)
                    return claimed[0]
                if claimed:  # the job entry was deleted meanwhile
                    r.xack(stream, group, p["message_id"])
        if self.visibility_ms:
            _, claimed, _ = r.xautoclaim(stream, group, self.name, self.visibility_ms, "0-0", count=1)
            if claimed:
                log.warning("taking over video job entry %s from a worker that sent no progress", claimed[0][0])
                return claimed[0]
        return None

    def _next(self):
        r, stream, group = self.store.redis, self.stream, RedisVideoQueue.GROUP
        taken = self._take_over()
        if taken is not None:
            return taken
        got = r.xreadgroup(group, self.name, {stream: ">"}, count=1, block=1000)
        return got[0][1][0] if got else None

    def _handle(self, entry_id, fields) -> bool:
        """Process one job entry and acknowledge it; False when the worker is stopping (the entry is left
        for another worker)."""
        job_id = (fields or {}).get(b"job", b"").decode()
        r, stream, group = self.store.redis, self.stream, RedisVideoQueue.GROUP

        def keep_alive():  # reset the entry's idle time: this worker is alive and on it
            r.xclaim(stream, group, self.name, 0, [entry_id], justid=True)

        try:
            if job_id:
                process(self.store, job_id, self.config, self.registry, self.pipeline,
                        stopping=self.stop_event.is_set, heartbeat=keep_alive)
        except Stopping:
            self.store.update(job_id, status="queued")  # another worker takes the entry over
            return False
        except HandedOver as exc:  # this worker was taken for dead; the heir owns the job and its entry
            log.warning("%s; leaving it", exc.message)
            return True
        except PoseKDError as exc:  # the job expired or vanished
            log.warning("video job %s: %s", job_id, exc.message)
        r.xack(stream, group, entry_id)
        r.xdel(stream, entry_id)
        return True

    def run(self) -> None:
        import redis
        grouped, backoff = False, Backoff()
        while not self.stop_event.is_set():
            try:
                if not grouped:
                    self._ensure_group()
                    grouped = True
                entry = self._next()
                backoff.reset()
                if entry is None:
                    continue
                if not self._handle(*entry):
                    return
            except redis.RedisError as exc:
                if groups.lost(exc):
                    grouped = False
                    continue
                wait = backoff.next()
                log.warning("video consumer: Redis error (%s); retrying in %.1f s", exc, wait)
                time.sleep(wait)
