"""In-process broker: a bounded queue and worker threads that batch across concurrent requests.
ONNX Runtime releases the GIL, so inference threads run beside the event loop."""
from __future__ import annotations

import asyncio
import logging
import queue
import threading

from .. import metrics
from ..errors import Overloaded, Timeout
from ..pipeline import PosePipeline
from ..settings import Batching
from ..store import ModelRegistry
from .base import Broker, PoseAnswer, PoseRequest
from .batching import Observer, execute, gather

log = logging.getLogger("posekd.broker")
_STOP = object()


class LocalBroker(Broker):
    name = "local"

    def __init__(self, pipeline: PosePipeline, registry: ModelRegistry, batching: Batching = Batching(), *,
                 threads: int = 1, observe: Observer | None = None):
        self.pipeline = pipeline
        self.observe = observe  # the shadow teacher's sampler, when one is on
        self.registry = registry
        self.max_batch = batching.max_batch
        self.max_delay = batching.max_delay_ms / 1000.0
        self.queue_max = batching.queue_max
        self.n_threads = threads
        self._queue: queue.Queue = queue.Queue()
        self._waiting: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Future]] = {}
        self._depth = 0  # images queued, not yet taken by a worker
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._accepting = False

    async def start(self) -> None:
        self._accepting = True
        for i in range(self.n_threads):
            t = threading.Thread(target=self._work, name=f"posekd-infer-{i}", daemon=True)
            t.start()
            self._threads.append(t)
        metrics.WORKERS.set(self.n_threads)  # the in-process inference threads: ready as they start

    async def stop(self) -> None:
        """Refuse new requests, let the workers finish every accepted one, then end the threads."""
        self._accepting = False
        for _ in self._threads:
            self._queue.put(_STOP)
        await asyncio.get_running_loop().run_in_executor(None, self._join)
        self._threads.clear()
        metrics.WORKERS.set(0)

    def _join(self) -> None:
        for t in self._threads:
            t.join()

    def depth(self) -> int:
        return self._depth

    @property
    def workers(self) -> int | None:
        return sum(1 for t in self._threads if t.is_alive())

    async def ready(self) -> bool:
        return self._accepting and any(t.is_alive() for t in self._threads)

    async def submit(self, request: PoseRequest, timeout: float) -> PoseAnswer:
        if not self._accepting:
            raise Overloaded("the service is shutting down", retry_after=5)
        with self._lock:
            if self._depth + request.size > self.queue_max:
                raise Overloaded(f"queue full ({self._depth} images waiting)", retry_after=1)
            self._depth += request.size
            metrics.QUEUE_DEPTH.labels(self.name).set(self._depth)
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self._waiting[request.id] = (loop, fut)
        self._queue.put(request)
        try:
            return await asyncio.wait_for(fut, timeout)
        except asyncio.TimeoutError:
            raise Timeout(f"no result within {timeout:g} s") from None
        finally:
            # a caller that stopped waiting (timeout, client gone) leaves no work behind
            request.cancelled = True
            self._waiting.pop(request.id, None)

    # ---- worker threads ---------------------------------------------------------------------
    def _take(self, timeout: float) -> PoseRequest | None:
        try:
            item = self._queue.get(timeout=timeout) if timeout > 0 else self._queue.get_nowait()
        except queue.Empty:
            return None
        if item is _STOP:
            self._queue.put(_STOP)  # leave it for the outer loop; finish this batch first
            return None
        return self._taken(item)

    def _taken(self, request: PoseRequest) -> PoseRequest:
        with self._lock:
            self._depth -= request.size
            metrics.QUEUE_DEPTH.labels(self.name).set(self._depth)
        return request

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            batch = gather(self._taken(item), self._take, self.max_batch, self.max_delay)
            live = [j for j in batch if not j.cancelled]
            if not live:
                continue
            try:
                outcomes = execute(self.pipeline, self.registry, live, observe=self.observe)
            except Exception as exc:  # keep the worker alive whatever happens
                log.exception("batch failed")
                outcomes = [exc] * len(live)
            for request, outcome in zip(live, outcomes):
                self._deliver(request, outcome)

    def _deliver(self, request: PoseRequest, outcome) -> None:
        waiting = self._waiting.get(request.id)
        if waiting is None:
            return
        loop, fut = waiting

        def settle():
            if fut.done():
                return
            if isinstance(outcome, BaseException):
                fut.set_exception(outcome)
            else:
                fut.set_result(outcome)

        try:
            loop.call_soon_threadsafe(settle)
        except RuntimeError:  # the loop closed meanwhile
            pass
