"""Redis Streams broker, API side: each image of a request becomes an entry of the request stream (added
atomically with a length check, so the queue is bounded), workers in a consumer group answer on this
replica's reply stream, and a reader task hands each reply to the request waiting for it.

Failure handling: a Redis that does not answer makes ``submit`` fail fast with ``Overloaded`` (503,
``Retry-After``); the client reconnects by itself when Redis is back. Requests waiting when the
connection to Redis is lost are answered 503 at once rather than left to time out. A request that
times out or whose client went away marks its request cancelled and deletes its entries, so workers do not
compute answers for nobody. Replies that arrive twice (an entry reclaimed from a slow worker) are
dropped."""
from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from typing import Any

import numpy as np

from .. import metrics
from ..errors import Overloaded, PoseKDError, Timeout
from ..images import budget_for, decode_upload, inspect_image
from ..pipeline import ImageResult, ImageTask
from ..settings import Delivery, ImageLimits, RedisConfig
from . import codec
from .backoff import Backoff
from .base import Admitted, Broker, PoseAnswer, PoseRequest
from .keys import RedisKeys

log = logging.getLogger("posekd.broker.redis")

# KEYS[1] request stream; ARGV: max length, entry count, then per entry its field count and fields.
# Adds every entry or none: the request is refused when it would push the stream past the limit.
_ADD = """
local len = redis.call('XLEN', KEYS[1])
local n = tonumber(ARGV[2])
if len + n > tonumber(ARGV[1]) then return {-1, len} end
local out = {len + n}
local pos = 3
for e = 1, n do
  local count = tonumber(ARGV[pos])
  out[#out + 1] = redis.call('XADD', KEYS[1], '*', unpack(ARGV, pos + 1, pos + count))
  pos = pos + count + 1
end
return out
"""


def connect(url: str, connect_timeout_s: float, socket_timeout_s: float, max_connections: int = 256):
    """An asyncio Redis client that retries a command once on a fresh connection: pooled connections die
    when Redis restarts, and a command (or MULTI/EXEC) sent on one of those never ran; a Redis that is
    really down costs one more refused connect. At most ``max_connections`` connections: past that a
    command waits (up to its socket timeout) for a free one instead of failing — redis-py's plain pool
    raises "Too many connections" at its cap, which would turn a burst of requests into 503s."""
    from redis import asyncio as aioredis
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff
    from redis.exceptions import ConnectionError as RedisConnectionError

    pool = aioredis.BlockingConnectionPool.from_url(
        url, max_connections=max_connections, timeout=socket_timeout_s, socket_connect_timeout=connect_timeout_s,
        socket_timeout=socket_timeout_s, health_check_interval=15, retry=Retry(NoBackoff(), 1),
        retry_on_error=[RedisConnectionError])
    return aioredis.Redis.from_pool(pool)


class _Waiter:
    """Collects the per-image replies of one request."""

    def __init__(self, size: int, future: asyncio.Future):
        self.results: list[ImageResult | None] = [None] * size
        self.queue_s = 0.0
        self.batch = 0
        self.future = future

    def add(self, reply: codec.Reply) -> None:
        if self.future.done() or not 0 <= reply.index < len(self.results) or self.results[reply.index]:
            return  # late, duplicate (reclaimed entry answered twice) or foreign
        outcome = reply.outcome()
        if isinstance(outcome, PoseKDError):
            self.future.set_exception(outcome)
            return
        self.results[reply.index] = outcome
        self.queue_s = max(self.queue_s, reply.body["queue_s"])
        self.batch = max(self.batch, reply.body["batch"])
        if all(r is not None for r in self.results):
            self.future.set_result(PoseAnswer([r for r in self.results if r is not None], self.queue_s, self.batch))


class RedisBroker(Broker):
    name = "redis"

    def __init__(self, redis: RedisConfig, delivery: Delivery = Delivery(), *, queue_max: int = 256,
                 payload: str = "encoded", poll_s: float = 1.0):
        if payload not in codec.FORMATS:
            raise ValueError(f"payload must be one of {codec.FORMATS}")
        self.conn, self.delivery = redis, delivery
        self.keys = RedisKeys(redis.prefix)
        self.queue_max = queue_max
        self.payload = payload
        self.poll_s = poll_s
        self.replica = uuid.uuid4().hex[:16]
        self.reply_key = self.keys.replies(self.replica)
        self._waiting: dict[str, _Waiter] = {}
        self._tasks: set[asyncio.Task] = set()
        self._accepting = False
        self._closing = False
        self._connected = False
        self._depth = 0
        self._workers: int | None = None  # live workers at the last poll; None: not known yet
        self._last_read = "0-0"
        self._redis: Any = None  # asyncio Redis clients once start() connects
        self._reader_redis: Any = None

    @property
    def wants_pixels(self) -> bool:
        return self.payload == "raw"

    @property
    def runs_models(self) -> bool:
        return False  # workers do; this process only resolves names and checks files

    # ---- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        c = self.conn
        self._redis = connect(c.url, c.connect_timeout_s, c.op_timeout_s, c.max_connections)
        # the reader blocks for up to a second per call; its socket timeout must outlast that
        self._reader_redis = connect(c.url, c.connect_timeout_s, c.op_timeout_s + 1.0)
        self._add = self._redis.register_script(_ADD)
        self._accepting = True
        self._spawn(self._read_replies())
        self._spawn(self._poll())
        log.info("Redis broker: stream %s, replies on %s, payload %s", self.keys.requests, self.reply_key,
                 self.payload)

    async def stop(self) -> None:
        """Refuse new requests, wait (up to the request timeouts) for the accepted ones, then disconnect."""
        self._accepting = False
        pending = [w.future for w in self._waiting.values()]
        if pending:
            await asyncio.wait(pending)
        self._closing = True  # redis-py may turn a cancelled read into a connection error: loops check this
        for task in list(self._tasks):
            task.cancel()
        await asyncio.wait(list(self._tasks), timeout=self.conn.op_timeout_s + 2)
        with contextlib.suppress(Exception):
            await self._redis.delete(self.reply_key)
        for client in (self._redis, self._reader_redis):
            with contextlib.suppress(Exception):
                await client.aclose()

    def _spawn(self, coro) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def depth(self) -> int:
        return self._depth

    @property
    def workers(self) -> int | None:
        return self._workers

    async def ready(self) -> bool:
        return self._accepting and await self._reachable()

    def admit(self, data: bytes, limits: ImageLimits) -> Admitted:
        """``encoded`` payload: only the header is read here (every limit checked); the worker decodes,
        under its own process's budget, and knows the size then."""
        if self.wants_pixels:
            return super().admit(data, limits)
        inspect_image(data, max_bytes=limits.max_bytes, max_pixels=limits.max_pixels)
        return Admitted(None, 1.0, data, None)

    def picture(self, task: ImageTask, data: bytes, limits: ImageLimits) -> tuple[np.ndarray, float]:
        """An upload the workers decoded is decoded here too when it is to be drawn on (the budget is
        held only while decoding: the caller's request holds none for it)."""
        if task.image is not None:
            return task.image, task.scale
        d = decode_upload(data, limits)
        budget_for(limits).release(d.held)
        return d.image, d.scale

    async def readiness(self, require_workers: bool) -> tuple[bool, dict]:
        """The live worker processes, asked of Redis now when none is known yet; none means every request
        would get 503 ``no_workers``: not ready, unless workers may scale to zero."""
        workers = self._workers
        if not workers and await self._reachable():
            with contextlib.suppress(Exception):
                workers = await self.workers_now()
        return bool(workers) or not require_workers, {"workers": workers or 0}

    async def _reachable(self) -> bool:
        try:
            await asyncio.wait_for(self._redis.ping(), self.conn.op_timeout_s)
        except Exception:
            return False
        return True

    # ---- API side ----------------------------------------------------------------------------
    async def submit(self, request: PoseRequest, timeout: float) -> PoseAnswer:
        from redis.exceptions import RedisError

        if not self._accepting:
            raise Overloaded("the service is shutting down", retry_after=5)
        await self.require_a_worker()
        loop = asyncio.get_running_loop()
        waiter = _Waiter(request.size, loop.create_future())
        now = time.time()
        args: list = [self.queue_max, request.size]
        for i in range(request.size):
            fields = codec.request_fields(request, i, self.reply_key, now + timeout, now, self.payload)
            args.append(2 * len(fields))
            for key, value in fields.items():
                args += [key, value]
        self._waiting[request.id] = waiter
        entry_ids: list = []
        try:
            try:
                added = await self._add(keys=[self.keys.requests], args=args)
            except RedisError as exc:
                self._lost(exc)
                raise Overloaded(f"the queue is unavailable (Redis: {exc})", retry_after=2,
                                 code="broker_unavailable") from None
            self._connected = True
            if int(added[0]) < 0:
                self._set_depth(int(added[1]))
                raise Overloaded(f"queue full ({int(added[1])} images waiting)", retry_after=1)
            self._set_depth(int(added[0]))
            entry_ids = list(added[1:])
            try:
                return await asyncio.wait_for(asyncio.shield(waiter.future), timeout)
            except asyncio.TimeoutError:
                raise Timeout(f"no result within {timeout:g} s") from None
        finally:
            self._waiting.pop(request.id, None)
            if waiter.future.done() and not waiter.future.cancelled():
                # failed by the reply reader (Redis lost) while this request was still failing on its own:
                # the outcome is already answered, so mark it read ("Future exception was never retrieved")
                waiter.future.exception()
            if not waiter.future.done():  # settled either way: stop() may be waiting on it
                waiter.future.cancel()
                if entry_ids:  # timed out or the client went away: nobody will read this answer
                    self._spawn(self._abandon(request.id, entry_ids, timeout))

    async def require_a_worker(self) -> None:
        """503 ``no_workers`` when workers are required and none has a fresh heartbeat: work queued now
        would wait for nobody."""
        if self.delivery.require_workers and self._workers == 0 and not await self.workers_now():
            raise Overloaded("no worker is serving the queue", retry_after=5, code="no_workers")

    async def workers_now(self) -> int:
        """Live workers asked of Redis now (the poll's count may predate a worker's first heartbeat)."""
        from redis.exceptions import RedisError
        try:
            alive_since = time.time() - self.delivery.stale_s
            self._workers = int(await self._redis.zcount(self.keys.workers, alive_since, "+inf"))
        except RedisError as exc:
            self._lost(exc)
            raise Overloaded(f"the queue is unavailable (Redis: {exc})", retry_after=2,
                             code="broker_unavailable") from None
        return self._workers

    async def _abandon(self, request_id: str, entry_ids: list, ttl: float) -> None:
        from redis.exceptions import RedisError
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.set(self.keys.cancelled(request_id), 1, ex=max(int(ttl) + 60, 60))
                pipe.xdel(self.keys.requests, *entry_ids)
                await pipe.execute()
        except RedisError as exc:  # the deadline in each entry still stops workers from running it
            log.debug("could not cancel request %s: %s", request_id, exc)

    def _set_depth(self, depth: int) -> None:
        self._depth = depth
        metrics.QUEUE_DEPTH.labels(self.keys.requests).set(depth)

    def _lost(self, exc: Exception, fail_waiting: bool = False) -> None:
        """Redis stopped answering. With ``fail_waiting`` (the reply reader lost Redis for good), every
        request still waiting gets 503 now, not a timeout later."""
        if self._connected:
            log.warning("lost the connection to Redis (%s); answering 503 until it is back", exc)
        self._connected = False
        metrics.BROKER_ERRORS.labels("api").inc()
        if not fail_waiting:
            return
        for waiter in list(self._waiting.values()):
            if not waiter.future.done():
                waiter.future.set_exception(Overloaded("lost the connection to the queue (Redis)", retry_after=2,
                                                       code="broker_unavailable"))

    async def _read_replies(self) -> None:
        from redis.exceptions import RedisError
        backoff = Backoff()
        while not self._closing:
            try:
                streams = await self._reader_redis.xread({self.reply_key: self._last_read}, count=512, block=1000)
            except RedisError as exc:
                if self._closing:
                    return
                self._lost(exc, fail_waiting=not await self._reachable())
                await asyncio.sleep(backoff.next())
                continue
            if not self._connected:
                log.info("connected to Redis again")
            self._connected = True
            backoff.reset()
            for _, entries in streams or []:
                for entry_id, fields in entries:
                    self._last_read = entry_id
                    try:
                        reply = codec.Reply.parse(fields)
                    except (KeyError, ValueError) as exc:
                        log.warning("dropping a malformed reply: %s", exc)
                        continue
                    waiter = self._waiting.get(reply.request_id)
                    if waiter is not None:
                        waiter.add(reply)

    async def _poll(self) -> None:
        """Queue depth and live workers for metrics and admission; trims replies already read."""
        from redis.exceptions import RedisError
        while not self._closing:
            try:
                now = time.time()
                async with self._redis.pipeline(transaction=False) as pipe:
                    pipe.xlen(self.keys.requests)
                    pipe.zremrangebyscore(self.keys.workers, "-inf", now - self.delivery.stale_s)
                    pipe.zcard(self.keys.workers)
                    pipe.xtrim(self.reply_key, minid=self._last_read, approximate=False)
                    depth, _, workers, _ = await pipe.execute()
                self._set_depth(int(depth))
                self._workers = int(workers)
                metrics.WORKERS.set(self._workers)
            except RedisError as exc:
                self._lost(exc)
            await asyncio.sleep(self.poll_s)
