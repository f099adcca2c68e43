"""Redis Streams broker, worker side: read the request stream as a member of the consumer group,
batch across requests (``max_batch`` images or ``max_delay_ms``, whichever comes first), run the
pipeline, then — in one MULTI — write every reply, acknowledge and delete the entries. An entry is
acknowledged only once its reply is written.

Entries whose worker died stay pending in the group; a live worker takes them over (XCLAIM) as soon
as the holder's heartbeat is older than ``stale_s`` (see :mod:`.liveness`), so a crash costs the callers
seconds. A live worker's entries are taken only when it has held one for ``visibility_timeout_s`` (a
hung worker; 0: never). A worker restarted under the same name first serves what its predecessor held.
An entry delivered ``max_deliveries`` times is answered
with an error instead of being tried again (it may be what kills workers). Entries of a cancelled request
or past their deadline are acknowledged without running."""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .. import metrics
from ..errors import PoseKDError
from ..pipeline import PosePipeline
from ..settings import Batching, Delivery, ImageLimits, RedisConfig
from ..store import ModelRegistry
from . import codec, groups
from .backoff import Backoff, retrying
from .base import PoseRequest
from .batching import Observer, execute
from .keys import GROUP, RedisKeys
from .liveness import dead, holders

log = logging.getLogger("posekd.worker")


class StreamConsumer:
    def __init__(self, redis: RedisConfig, name: str, pipeline: PosePipeline, registry: ModelRegistry, *,
                 batching: Batching = Batching(), delivery: Delivery = Delivery(), images: ImageLimits = ImageLimits(),
                 block_ms: int = 1000, observe: Observer | None = None):
        self.url = redis.url
        self.observe = observe  # the shadow teacher's sampler, when one is on
        self.name = name
        self.pipeline = pipeline
        self.registry = registry
        self.images = images  # limits for decoding uploads
        self.keys = RedisKeys(redis.prefix)
        self.max_batch = batching.max_batch
        self.max_delay = batching.max_delay_ms / 1000.0
        self.visibility_ms = int(delivery.visibility_timeout_s * 1000)
        self.max_deliveries = delivery.max_deliveries
        self.reply_ttl = int(delivery.reply_ttl_s)
        self.heartbeat_s = delivery.heartbeat_s
        self.stale_s = delivery.stale_s
        self.connect_timeout_s = redis.connect_timeout_s
        self.block_ms = block_ms  # longest wait for new entries: how soon a stop is noticed
        self.batches = 0
        self._decoder = ThreadPoolExecutor(max(2, min(8, os.cpu_count() or 2)), thread_name_prefix="posekd-decode")
        self._next_reclaim = 0.0
        self._backlog = True  # first read: entries this name held before a restart
        self._redis: Any = None  # an asyncio Redis client once run() connects
        self._replies_retry = retrying(attempts=4)

    # ---- main loop ---------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        """Serve until ``stop`` is set; then finish and acknowledge the batch in hand and return."""
        from redis.exceptions import RedisError

        from .redis import connect
        self._redis = connect(self.url, self.connect_timeout_s, self.block_ms / 1000.0 + 5.0)
        loop = asyncio.get_running_loop()
        with contextlib.suppress(RedisError):  # alive before the first entry is read
            await self._redis.zadd(self.keys.workers, {self.name: time.time()})
        beat = loop.create_task(self._heartbeat(stop))
        backoff, grouped = Backoff(), False
        running: asyncio.Task | None = None  # the batch on the models now; the next one is read meanwhile
        try:
            while not stop.is_set():
                try:
                    if not grouped:
                        await self._ensure_group()
                        grouped = True
                    entries = await self._reclaim() or await self._read(stop)
                    if not entries:
                        continue
                    live, done = await self._prepare(entries)
                    if running is not None:
                        await running  # one batch on the models at a time
                        live, skipped = await self._unwanted(live)  # given up on while we waited
                        done += skipped
                        if live and len(live) < self.max_batch and not stop.is_set():
                            more = await self._xread(self.max_batch - len(live), None)  # arrived meanwhile
                            if more:
                                extra_live, extra_done = await self._prepare(more)
                                live, done = live + extra_live, done + extra_done
                    running = loop.create_task(self._complete(live, done))
                    backoff.reset()
                except RedisError as exc:
                    if groups.lost(exc):  # Redis restarted empty: make the group again
                        grouped = False
                        continue
                    metrics.BROKER_ERRORS.labels("worker").inc()
                    wait = backoff.next()
                    log.warning("Redis error (%s); retrying in %.1f s", exc, wait)
                    await asyncio.sleep(wait)
        finally:
            if running is not None:  # SIGTERM: the batch in hand is finished and acknowledged
                with contextlib.suppress(Exception):
                    await running
            beat.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await beat
            with contextlib.suppress(Exception):
                await self._redis.zrem(self.keys.workers, self.name)
            with contextlib.suppress(Exception):
                await self._redis.aclose()
            log.info("worker %s stopped after %d batches", self.name, self.batches)

    async def _ensure_group(self) -> None:
        if await groups.ensure_async(self._redis, self.keys.requests, GROUP):
            log.info("created consumer group %s on %s", GROUP, self.keys.requests)

    async def _heartbeat(self, stop: asyncio.Event) -> None:
        from redis.exceptions import RedisError
        while not stop.is_set():
            try:
                async with self._redis.pipeline(transaction=False) as pipe:
                    pipe.zadd(self.keys.workers, {self.name: time.time()})
                    pipe.xlen(self.keys.requests)
                    _, depth = await pipe.execute()
                metrics.QUEUE_DEPTH.labels(self.keys.requests).set(depth)
            except RedisError as exc:
                log.debug("heartbeat failed: %s", exc)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), self.heartbeat_s)

    # ---- reading -----------------------------------------------------------------------------
    async def _read(self, stop: asyncio.Event) -> list:
        """Up to ``max_batch`` new entries: block (at most ``block_ms``, to notice ``stop``) for the
        first, then gather company for at most ``max_delay``. The short wait polls without BLOCK: Redis
        expires blocked reads on its timer tick (hz 10: up to 100 ms late), not on time."""
        got = await self._xread(self.max_batch, self.block_ms)
        if not got:
            return []
        deadline = time.perf_counter() + self.max_delay
        while len(got) < self.max_batch and not stop.is_set():
            more = await self._xread(self.max_batch - len(got), None)
            got += more
            left = deadline - time.perf_counter()
            if left <= 0:
                break
            if not more:
                await asyncio.sleep(min(left, 0.001))
        return got

    async def _xread(self, count: int, block_ms: int | None) -> list:
        if self._backlog:  # a worker restarted under the same name: what it held is not anyone else's
            streams = await self._redis.xreadgroup(GROUP, self.name, {self.keys.requests: "0"}, count=count)
            got = [e for _, entries in streams or [] for e in entries if e[1]]
            if got:
                log.warning("serving %d entries this worker's name held before a restart", len(got))
                return got
            self._backlog = False
        streams = await self._redis.xreadgroup(GROUP, self.name, {self.keys.requests: ">"}, count=count,
                                               block=block_ms)
        return [e for _, entries in streams or [] for e in entries]

    async def _reclaim(self) -> list:
        """Entries held by dead workers (stale heartbeat) and, past ``visibility_timeout_s``, by hung
        ones, now in ours. Checked every heartbeat period."""
        now = time.monotonic()
        if now < self._next_reclaim:
            return []
        self._next_reclaim = now + min(self.heartbeat_s, 1.0)
        others = [n for n in holders(await self._redis.xpending(self.keys.requests, GROUP)) if n != self.name]
        if not others:
            return []
        departed = dead(others, await self._redis.zmscore(self.keys.workers, others), time.time(), self.stale_s)
        pending: list = []
        for consumer in departed:  # idle at least stale_s: delivered before the holder died, not claimed since
            pending += await self._redis.xpending_range(self.keys.requests, GROUP, min="-", max="+",
                                                        count=self.max_batch - len(pending),
                                                        consumername=consumer, idle=int(self.stale_s * 1000))
            if len(pending) >= self.max_batch:
                break
        min_idle = int(self.stale_s * 1000)
        if not pending and self.visibility_ms:
            pending = await self._redis.xpending_range(self.keys.requests, GROUP, min="-", max="+",
                                                       count=self.max_batch, idle=self.visibility_ms)
            min_idle = self.visibility_ms
        if not pending:
            return []
        ids = [p["message_id"] for p in pending]
        tries = {p["message_id"]: p["times_delivered"] for p in pending}
        # min idle: a worker that claimed them a moment ago (another reclaimer) keeps them
        claimed = await self._redis.xclaim(self.keys.requests, GROUP, self.name, min_idle, ids)
        live, failed, deleted = [], [], []
        for entry_id, fields in claimed:
            if not fields:  # deleted meanwhile (cancelled): just forget it
                deleted.append(entry_id)
            elif tries.get(entry_id, 0) >= self.max_deliveries:
                failed.append((entry_id, fields))
            else:
                live.append((entry_id, fields))
        if deleted:
            await self._redis.xack(self.keys.requests, GROUP, *deleted)
        if live:
            metrics.RECLAIMED.inc(len(live))
            log.warning("took over %d entries from %s", len(live),
                        ", ".join(departed) if min_idle != self.visibility_ms else "a hung worker")
        if failed:
            await self._dead_letter(failed)
        return live

    async def _dead_letter(self, entries: list) -> None:
        replies: list[tuple[Any, Any]] = []
        for entry_id, fields in entries:
            try:
                req = codec.Request.parse(entry_id, fields)
            except (KeyError, ValueError):
                replies.append((entry_id, None))
                continue
            log.error("entry %s of request %s failed on %d deliveries; answering with an error", req.entry_id,
                      req.request_id, self.max_deliveries)
            exc = PoseKDError(f"the request failed on {self.max_deliveries} workers and was given up",
                              code="worker_failed", status=500)
            replies.append((entry_id, (req.reply, codec.reply_error(req, exc, self.name))))
        await self._finish(replies)
        metrics.WORKER_ENTRIES.labels("dead_letter").inc(len(entries))

    # ---- processing --------------------------------------------------------------------------
    async def _prepare(self, entries: list) -> tuple[list[codec.Request], list]:
        """Parse, drop what nobody waits for (cancelled requests, passed deadlines) and decode the uploads
        (in parallel threads, while the previous batch is on the models). Returns the requests ready to
        run and the entries already finished, with their replies where one is owed."""
        requests: list[codec.Request] = []
        finished: list[tuple[Any, Any]] = []
        for entry_id, fields in entries:
            try:
                requests.append(codec.Request.parse(entry_id, fields))
            except (KeyError, ValueError, TypeError) as exc:
                log.error("dropping malformed entry %s: %s", entry_id, exc)
                finished.append((entry_id, None))
        wanted, skipped = await self._unwanted(requests)
        finished += skipped
        loop = asyncio.get_running_loop()
        errors = await asyncio.gather(*(loop.run_in_executor(self._decoder, self._decode, r) for r in wanted))
        live = []
        for req, failure in zip(wanted, errors):
            if failure is None:
                live.append(req)
            else:
                finished.append((req.entry_id, (req.reply, codec.reply_error(req, failure, self.name))))
                metrics.WORKER_ENTRIES.labels("error").inc()
        return live, finished

    async def _unwanted(self, requests: list[codec.Request]) -> tuple[list[codec.Request], list]:
        """Split off what nobody waits for any more: cancelled requests and passed deadlines."""
        now = time.time()
        ids = sorted({r.request_id for r in requests})
        flags = dict(zip(ids, await self._redis.mget([self.keys.cancelled(j) for j in ids]))) if ids else {}
        wanted, skipped = [], []
        for req in requests:
            if flags.get(req.request_id) or req.deadline < now:
                skipped.append((req.entry_id, None))
                metrics.WORKER_ENTRIES.labels("skipped").inc()
            else:
                wanted.append(req)
        return wanted, skipped

    async def _complete(self, live: list[codec.Request], finished: list) -> None:
        """Run a prepared batch and write its replies. A Redis failure leaves the entries pending
        (another worker, or this one, reclaims them after the visibility timeout)."""
        from redis.exceptions import RedisError
        if live:
            finished = finished + await asyncio.to_thread(self._run, live)
            self.batches += 1
        async def failed(exc: Exception) -> None:
            metrics.BROKER_ERRORS.labels("worker").inc()

        try:  # a short Redis blip should not cost the clients a visibility timeout
            await self._replies_retry.call_with_retry(lambda: self._finish(finished), failed)
        except RedisError as exc:
            log.warning("could not write %d replies (%s); their entries stay pending", len(finished), exc)

    def _decode(self, req: codec.Request) -> Exception | None:
        try:
            req.decode(self.images)
        except Exception as exc:  # a bad upload fails alone
            return exc
        return None

    def _run(self, requests: list[codec.Request]) -> list:
        """Run one decoded batch (in a thread: ONNX Runtime releases the GIL); a reply per request."""
        out = []
        pose_requests = [PoseRequest(r.pose_ref, r.detector_ref, [r.task], id=r.entry_id, enqueued_at=r.enqueued)
                for r in requests]
        try:
            outcomes = execute(self.pipeline, self.registry, pose_requests, clock=time.time, observe=self.observe)
        except Exception as exc:  # never lose the batch: answer every request with the error
            log.exception("batch failed")
            outcomes = [exc] * len(pose_requests)
        for req, outcome in zip(requests, outcomes):
            if isinstance(outcome, BaseException):
                reply = codec.reply_error(req, outcome, self.name)
                metrics.WORKER_ENTRIES.labels("error").inc()
            else:
                reply = codec.reply_ok(req, outcome.results[0], outcome.queue_s, outcome.batch_images, self.name)
                metrics.WORKER_ENTRIES.labels("ok").inc()
            out.append((req.entry_id, (req.reply, reply)))
        return out

    async def _finish(self, finished: list) -> None:
        """Write the replies, then acknowledge and delete the entries, all in one MULTI/EXEC: an entry is
        never acknowledged without its reply. On failure the entries stay pending and are reclaimed."""
        if not finished:
            return
        by_stream = defaultdict(list)
        for _, reply in finished:
            if reply is not None:
                by_stream[reply[0]].append(reply[1])
        ids = [entry_id for entry_id, _ in finished]
        async with self._redis.pipeline(transaction=True) as pipe:
            for stream, replies in by_stream.items():
                for fields in replies:
                    pipe.xadd(stream, fields, maxlen=10_000, approximate=True)
                pipe.expire(stream, self.reply_ttl)
            pipe.xack(self.keys.requests, GROUP, *ids)
            pipe.xdel(self.keys.requests, *ids)
            await pipe.execute()
