"""What only the Redis broker has: reclaiming a dead worker's entries, giving up on an entry that keeps
failing, duplicate replies, cancelled jobs leaving the stream, both payload formats, and a fast 503
when Redis cannot be reached. Real Redis (POSEKD_TEST_REDIS_URL or 127.0.0.1:6379)."""
from __future__ import annotations

import asyncio

import numpy as np
import pytest
import redis

from service.broker import PoseRequest, codec
from service.broker.consumer import StreamConsumer
from service.broker.keys import GROUP, RedisKeys
from service.broker.redis import RedisBroker, _Waiter
from service.errors import Overloaded, PoseKDError
from service.pipeline import ImageResult, ImageTask, PosePipeline
from service.pipeline.runtime import OnnxModel
from service.settings import Delivery, RedisConfig
from service.store import ModelRegistry

from .helpers import blob_image, encode
from .procs import free_port

pytestmark = pytest.mark.redis


def consumer(store, url, prefix, name="w", **delivery) -> StreamConsumer:
    reg = ModelRegistry(store, lambda m, d: OnnxModel(m, d, device="cpu", intra_threads=1))
    return StreamConsumer(RedisConfig(url, prefix), name, PosePipeline(detector_threshold=0.1), reg,
                          delivery=Delivery(**delivery), block_ms=100)


def pixel_job(x=60, y=80) -> PoseRequest:
    return PoseRequest("tiny-pose:1", "tiny-det:1", [ImageTask(blob_image(at=(x, y)), min_score=0.0)])


def encoded_job(data: bytes) -> PoseRequest:
    return PoseRequest("tiny-pose:1", "tiny-det:1", [ImageTask(None, min_score=0.0, data=data)])


async def broker_with_group(url: str, prefix: str) -> RedisBroker:
    """An API-side broker on a stream whose consumer group exists, with no worker running yet."""
    broker = RedisBroker(RedisConfig(url, prefix), Delivery(require_workers=False), payload="raw")
    await broker.start()
    redis.Redis.from_url(url).xgroup_create(RedisKeys(prefix).requests, GROUP, id="0", mkstream=True)
    return broker


async def serve(cons: StreamConsumer):
    stop = asyncio.Event()
    return stop, asyncio.get_running_loop().create_task(cons.run(stop))


def test_entries_of_a_dead_worker_are_reclaimed_and_answered(store, redis_url, redis_prefix):
    keys = RedisKeys(redis_prefix)
    raw = redis.Redis.from_url(redis_url)

    async def main():
        broker = await broker_with_group(redis_url, redis_prefix)
        answer = asyncio.ensure_future(broker.submit(pixel_job(70, 90), 20))
        await asyncio.sleep(0.2)
        # a worker takes the entry and dies before answering
        taken = raw.xreadgroup(GROUP, "dead-worker", {keys.requests: ">"}, count=10)
        assert len(taken[0][1]) == 1
        stop, task = await serve(consumer(store, redis_url, redis_prefix, visibility_timeout_s=0.5))
        result = await answer
        stop.set()
        await task
        await broker.stop()
        return result

    result = asyncio.run(main())
    kp = result.results[0].people[0].keypoints
    assert abs(kp[0, 0] - 70) < 4 and abs(kp[0, 1] - 90) < 4
    assert raw.xlen(keys.requests) == 0  # acknowledged and deleted
    assert raw.xpending(keys.requests, GROUP)["pending"] == 0


def test_an_entry_that_keeps_failing_is_answered_with_an_error(store, redis_url, redis_prefix):
    keys = RedisKeys(redis_prefix)
    raw = redis.Redis.from_url(redis_url)

    async def main():
        broker = await broker_with_group(redis_url, redis_prefix)
        answer = asyncio.ensure_future(broker.submit(pixel_job(), 20))
        await asyncio.sleep(0.2)
        raw.xreadgroup(GROUP, "crashy-1", {keys.requests: ">"}, count=10)
        entry = raw.xpending_range(keys.requests, GROUP, "-", "+", 10)[0]["message_id"]
        raw.xclaim(keys.requests, GROUP, "crashy-2", 0, [entry])  # delivered twice, both workers died
        stop, task = await serve(consumer(store, redis_url, redis_prefix, visibility_timeout_s=0.3,
                                          max_deliveries=2))
        try:
            with pytest.raises(PoseKDError) as err:
                await answer
        finally:
            stop.set()
            await task
            await broker.stop()
        return err.value

    err = asyncio.run(main())
    assert err.code == "worker_failed" and err.status == 500
    assert raw.xlen(keys.requests) == 0


def test_duplicate_and_foreign_replies_are_ignored():
    async def main():
        waiter = _Waiter(2, asyncio.get_running_loop().create_future())
        good = ImageResult([], {"inference": 1.0}, (10, 10))
        req = codec.Request("1-0", "job", 0, 2, "p:1", None, "r", 0, 0, "raw", ImageTask(None))
        first = codec.Reply.parse(codec.reply_ok(req, good, 0.1, 2, "w"))
        waiter.add(first)
        waiter.add(first)  # the same image answered again (a reclaimed entry run twice)
        waiter.add(codec.Reply("job", 7, first.body))  # an index the job does not have
        assert not waiter.future.done()
        req.index = 1
        waiter.add(codec.Reply.parse(codec.reply_ok(req, good, 0.2, 2, "w")))
        return await waiter.future

    result = asyncio.run(main())
    assert len(result.results) == 2 and result.queue_s == 0.2


def test_a_cancelled_wait_takes_its_entries_out_of_the_stream(redis_url, redis_prefix):
    keys = RedisKeys(redis_prefix)
    raw = redis.Redis.from_url(redis_url)

    async def main():
        broker = RedisBroker(RedisConfig(redis_url, redis_prefix), Delivery(require_workers=False), payload="raw")
        await broker.start()
        job = pixel_job()
        waiting = asyncio.ensure_future(broker.submit(job, 20))
        await asyncio.sleep(0.2)
        assert raw.xlen(keys.requests) == 1
        waiting.cancel()  # what the API does when the client disconnects
        with pytest.raises(asyncio.CancelledError):
            await waiting
        await asyncio.sleep(0.2)
        await broker.stop()
        return job.id

    job_id = asyncio.run(main())
    assert raw.xlen(keys.requests) == 0
    assert raw.exists(keys.cancelled(job_id))


def test_both_payload_formats_give_the_same_answer_and_bad_bytes_a_400(store, redis_url, redis_prefix):
    png = encode(blob_image(at=(80, 70)))

    async def main():
        out = {}
        stop, task = await serve(consumer(store, redis_url, redis_prefix))
        for fmt in ("raw", "encoded"):
            broker = RedisBroker(RedisConfig(redis_url, redis_prefix), payload=fmt)
            await broker.start()
            job = pixel_job(80, 70) if fmt == "raw" else encoded_job(png)
            out[fmt] = await broker.submit(job, 20)
            if fmt == "encoded":  # a valid header on a corrupt body: only the decoder finds out
                with pytest.raises(PoseKDError) as err:
                    await broker.submit(encoded_job(png[:60] + b"\0" * 200), 20)
                out["bad"] = err.value
            await broker.stop()
        stop.set()
        await task
        return out

    out = asyncio.run(main())
    a, b = (out[f].results[0] for f in ("raw", "encoded"))
    assert a.size == b.size == (300, 200)
    np.testing.assert_allclose(a.people[0].keypoints, b.people[0].keypoints, atol=1e-3)
    assert out["bad"].status == 400 and out["bad"].code == "invalid_image"


def test_unreachable_redis_answers_503_at_once_and_is_not_ready():
    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there

    async def main():
        broker = RedisBroker(RedisConfig(url, connect_timeout_s=0.5))
        await broker.start()
        try:
            with pytest.raises(Overloaded) as err:
                # far less than the request timeout: a hang would fail here, not after 30 s
                await asyncio.wait_for(broker.submit(pixel_job(), 30), 10)
            ready = await broker.ready()
        finally:
            await broker.stop()
        return err.value, ready

    err, ready = asyncio.run(main())
    assert err.status == 503 and err.retry_after and not ready


def test_redis_mode_job_routes_refuse_ids_that_are_not_job_ids(store, redis_url, redis_prefix):
    """A job id with a suffix named another key (``<id>:result``, a string): WRONGTYPE, a 500. Ids are
    checked against the one job-id pattern before any key is built."""
    from fastapi.testclient import TestClient

    from service.api import create_app
    from service.settings import Settings

    raw = redis.Redis.from_url(redis_url)
    job_id = "ab" * 16
    raw.set(f"{redis_prefix}:job:{job_id}:result", b"{}", ex=60)
    settings = Settings(model_store=store.root, default_pose_model="tiny-pose", default_detector="tiny-det",
                        redis_url=redis_url, redis_prefix=redis_prefix, require_workers=False, store_poll_s=0)
    with TestClient(create_app(settings)) as client:
        for path in (f"/v1/jobs/{job_id}:result", f"/v1/jobs/{job_id}:clip/result", "/v1/jobs/x..y",
                     f"/v1/jobs/{'a' * 300}"):
            r = client.get(path)
            assert r.status_code == 404 and r.json()["error"]["code"] == "job_not_found", (path, r.text)
        assert client.get(f"/v1/jobs/{job_id}").status_code == 404  # well-formed, unknown


def test_a_video_checkpoint_is_refused_to_a_worker_whose_job_was_handed_over(redis_url, redis_prefix, tmp_path):
    from service.video.jobs import HandedOver, Job, RedisJobStore

    jobs = RedisJobStore(RedisConfig(redis_url, redis_prefix))
    clip = tmp_path / "c.mp4"
    clip.write_bytes(b"clip")
    job = Job(id="a" * 32, status="running")
    jobs.create(job, clip)
    assert jobs.resume_point(job.id) is None
    jobs.checkpoint(job.id, [{"frame": 0}, {"frame": 1}], b"state-1", 0)
    jobs.checkpoint(job.id, [{"frame": 2}], b"state-2", 2)  # the heir continues from 3 frames
    with pytest.raises(HandedOver):  # the first worker, only slow, still thinks it saved 2
        jobs.checkpoint(job.id, [{"frame": 2}], b"state-x", 2)
    assert jobs.resume_point(job.id) == ([{"frame": 0}, {"frame": 1}, {"frame": 2}], b"state-2")
    jobs.finish(job.id, "succeeded")
    assert jobs.resume_point(job.id) is None
