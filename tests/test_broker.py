"""The broker contract, run against both brokers: the in-process one and Redis Streams (a real Redis
server and a real stream consumer, the one `posekd worker` runs). Batching across requests, answers to
the right caller, backpressure, timeouts and abandoned work, draining on stop, a bad job failing alone."""
import asyncio
import threading

import numpy as np
import pytest

from service.broker import LocalBroker, PoseRequest
from service.broker.consumer import StreamConsumer
from service.broker.redis import RedisBroker
from service.errors import Overloaded, Timeout
from service.pipeline import ImageTask, PosePipeline
from service.pipeline.runtime import OnnxModel
from service.settings import Batching, RedisConfig
from service.store import ModelRegistry

from .helpers import blob_image


class GatedPipeline(PosePipeline):
    """Counts batches and can hold the worker until released."""

    def __init__(self):
        super().__init__(detector_threshold=0.1)
        self.gate = threading.Event()
        self.gate.set()
        self.images_run = 0

    def run(self, model, detector, tasks):
        self.gate.wait(10)
        self.images_run += len(tasks)
        return super().run(model, detector, tasks)


class RedisPair:
    """The API-side Redis broker plus one stream consumer in the same event loop, started and
    stopped together, so the contract tests drive it exactly like the in-process broker."""

    def __init__(self, broker: RedisBroker, consumer: StreamConsumer):
        self.broker, self.consumer = broker, consumer

    async def start(self):
        await self.broker.start()
        self._stop = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self.consumer.run(self._stop))

    async def stop(self):
        await self.broker.stop()
        self._stop.set()
        await self._task

    def __getattr__(self, name):
        return getattr(self.broker, name)


@pytest.fixture(params=["local", pytest.param("redis", marks=pytest.mark.redis)])
def make_broker(request, store):
    def make(max_batch=8, max_delay_ms=5.0, queue_max=256):
        reg = ModelRegistry(store, lambda m, d: OnnxModel(m, d, device="cpu", intra_threads=1))
        pipe = GatedPipeline()
        batching = Batching(max_batch, max_delay_ms, queue_max)
        if request.param == "local":
            return LocalBroker(pipe, reg, batching), pipe
        redis = RedisConfig(request.getfixturevalue("redis_url"), request.getfixturevalue("redis_prefix"))
        broker = RedisBroker(redis, queue_max=queue_max, payload="raw", poll_s=0.2)
        consumer = StreamConsumer(redis, "contract-worker", pipe, reg, batching=batching, block_ms=100)
        return RedisPair(broker, consumer), pipe
    make.kind = request.param
    return make


def job(x, y, model="tiny-pose:1"):
    return PoseRequest(model, "tiny-det:1", [ImageTask(blob_image(at=(x, y)), min_score=0.0)])


def test_concurrent_requests_are_batched_and_answered_to_their_caller(make_broker):
    async def main():
        broker, _ = make_broker(max_batch=6, max_delay_ms=300)
        await broker.start()
        spots = [(40 + 10 * i, 60 + 12 * i) for i in range(6)]
        results = await asyncio.gather(*(broker.submit(job(x, y), 10) for x, y in spots))
        await broker.stop()
        return spots, results

    spots, results = asyncio.run(main())
    for (x, y), r in zip(spots, results):
        assert r.batch_images == 6
        kp = r.results[0].people[0].keypoints
        assert abs(kp[0, 0] - x) < 4 and abs(kp[0, 1] - y) < 4


def test_max_batch_one_disables_batching(make_broker):
    async def main():
        broker, _ = make_broker(max_batch=1, max_delay_ms=50)
        await broker.start()
        results = await asyncio.gather(*(broker.submit(job(50, 50), 10) for _ in range(3)))
        await broker.stop()
        return results

    assert [r.batch_images for r in asyncio.run(main())] == [1, 1, 1]


def test_full_queue_is_refused_with_retry_after(make_broker):
    async def main():
        broker, pipe = make_broker(max_batch=1, max_delay_ms=0, queue_max=3)
        await broker.start()
        pipe.gate.clear()
        first = asyncio.create_task(broker.submit(job(50, 50), 10))  # taken by the worker, held
        await asyncio.sleep(0.3)
        accepted, refused = [first], None
        for _ in range(6):
            try:
                task = asyncio.create_task(broker.submit(job(50, 50), 10))
                await asyncio.sleep(0.05)
                if task.done():
                    task.result()
                accepted.append(task)
            except Overloaded as exc:
                refused = exc
                break
        # the in-process queue counts waiting images; Redis also counts the one in the worker's hands
        assert refused is not None and refused.retry_after and refused.status == 503
        assert len(accepted) in (3, 4)
        pipe.gate.set()
        done = await asyncio.gather(*accepted)
        await broker.stop()
        return done

    assert all(len(r.results) == 1 for r in asyncio.run(main()))


def test_timeout_and_abandoned_work_is_skipped(make_broker):
    async def main():
        broker, pipe = make_broker(max_batch=1, max_delay_ms=0)
        await broker.start()
        pipe.gate.clear()
        held = asyncio.create_task(broker.submit(job(50, 50), 10))
        await asyncio.sleep(0.2)
        with pytest.raises(Timeout):
            await broker.submit(job(60, 60), 0.1)  # queued behind the held one, gives up
        pipe.gate.set()
        await held
        await broker.stop()
        return pipe.images_run

    assert asyncio.run(main()) == 1  # the abandoned job was never run


def test_stop_finishes_accepted_work_then_refuses(make_broker):
    async def main():
        broker, pipe = make_broker(max_batch=2, max_delay_ms=0)
        await broker.start()
        pipe.gate.clear()
        pending = [asyncio.create_task(broker.submit(job(50, 50), 10)) for _ in range(5)]
        await asyncio.sleep(0.1)
        stopping = asyncio.create_task(broker.stop())
        await asyncio.sleep(0.05)
        with pytest.raises(Overloaded, match="shutting down"):
            await broker.submit(job(50, 50), 10)
        pipe.gate.set()
        await stopping
        return await asyncio.gather(*pending)

    assert len(asyncio.run(main())) == 5


def test_a_bad_job_fails_alone(make_broker):
    async def main():
        broker, _ = make_broker(max_batch=4, max_delay_ms=200)
        await broker.start()
        res = await asyncio.gather(broker.submit(job(50, 50), 10), broker.submit(job(50, 50, "ghost:1"), 10),
                                   return_exceptions=True)
        await broker.stop()
        return res

    good, bad = asyncio.run(main())
    assert bad.code == "model_not_found" and bad.status == 404
    assert len(good.results[0].people) == 1 and good.batch_images == 2
    assert np.isfinite(good.results[0].people[0].keypoints).all()


def test_a_multi_image_job_is_answered_in_order(make_broker):
    spots = [(40, 50), (90, 120), (140, 70)]

    async def main():
        broker, _ = make_broker(max_batch=2, max_delay_ms=20)
        await broker.start()
        tasks = [ImageTask(blob_image(at=xy), min_score=0.0) for xy in spots]
        result = await broker.submit(PoseRequest("tiny-pose:1", "tiny-det:1", tasks), 10)
        await broker.stop()
        return result

    result = asyncio.run(main())
    assert len(result.results) == 3
    for (x, y), res in zip(spots, result.results):
        kp = res.people[0].keypoints
        assert abs(kp[0, 0] - x) < 4 and abs(kp[0, 1] - y) < 4
