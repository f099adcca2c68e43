"""Scale-out through a real Redis with real processes: `posekd serve` in Redis mode and `posekd worker`s.
Hundreds of concurrent requests each answered to its own caller; a worker killed with SIGKILL mid-batch
whose entries another worker answers; a worker stopped with SIGTERM that finishes what it holds; Redis
stopped and restarted under load (503s, never 500s or hangs, and recovery without restarting anything)."""
from __future__ import annotations

import asyncio
import shutil
import signal
import sys
import time

import httpx
import pytest
import redis

from service.broker.keys import GROUP, RedisKeys
from service.settings import Settings

from .helpers import add_slow_pose, blob_clip, blob_image, encode
from .procs import RedisServer, metric, service_env, start_api, start_worker, wait_until

pytestmark = [pytest.mark.redis, pytest.mark.slow]


def spot(i: int) -> tuple[int, int]:
    return 40 + (i * 37) % 130, 40 + (i * 53) % 120  # inside the box tiny-det always finds


async def post_many(base: str, indices, concurrency: int, timeout: float, params=None) -> dict:
    """POST one blob image per index; {index: (status, json or None, seconds)}."""
    out = {}
    sem = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=base, timeout=timeout,
                                 limits=httpx.Limits(max_connections=concurrency)) as client:
        async def one(i):
            x, y = spot(i)
            async with sem:
                t = time.perf_counter()
                r = await client.post("/v1/pose", params=params, content=encode(blob_image(at=(x, y))),
                                      headers={"content-type": "image/png"})
                out[i] = (r.status_code, r.json(), time.perf_counter() - t)

        await asyncio.gather(*(one(i) for i in indices))
    return out


def assert_answers_are_their_own(results: dict) -> None:
    for i, (status, body, _) in results.items():
        assert status == 200, (i, status, body)
        nose = body["people"][0]["keypoints"][0]
        x, y = spot(i)
        assert abs(nose[0] - x) < 4 and abs(nose[1] - y) < 4, (i, nose, (x, y))


@pytest.fixture
def cluster(tmp_path, store, redis_url, redis_prefix):
    """Start processes on demand; every one is stopped at the end and its log shown on failure."""
    procs = []
    logs = tmp_path / "logs"
    logs.mkdir()

    class Cluster:
        def env(self, url=redis_url, **extra):
            return service_env(store.root, url, redis_prefix, **extra)

        def worker(self, name, **extra):
            proc, port = start_worker(self.env(**extra), name, logs)
            procs.append(proc)
            return proc, port

        def api(self, **extra):
            proc, base = start_api(self.env(**extra), logs)
            procs.append(proc)
            return proc, base

    yield Cluster()
    for proc in procs:
        proc.stop()


def test_two_workers_and_the_api_answer_hundreds_of_concurrent_requests(cluster):
    (_, port_a), (_, port_b) = cluster.worker("w-a", POSEKD_MAX_BATCH=8), cluster.worker("w-b", POSEKD_MAX_BATCH=8)
    _, base = cluster.api()
    results = asyncio.run(post_many(base, range(300), concurrency=48, timeout=60))
    assert len(results) == 300
    assert_answers_are_their_own(results)
    served_a = metric(port_a, "posekd_worker_entries_total", 'outcome="ok"')
    served_b = metric(port_b, "posekd_worker_entries_total", 'outcome="ok"')
    assert served_a + served_b >= 300 and served_a > 0 and served_b > 0
    assert metric(port_a, "posekd_batch_size_count") > 0  # the worker's own metrics port
    assert "posekd_queue_depth" in httpx.get(f"http://127.0.0.1:{port_a}/metrics").text
    assert metric(base, "posekd_workers_ready") == 2


def _pending_of(client: redis.Redis, prefix: str, consumer: str) -> int:
    summary = client.xpending(RedisKeys(prefix).requests, GROUP)
    return sum(c["pending"] for c in summary.get("consumers", []) if c["name"].decode() == consumer)


def test_a_worker_killed_mid_batch_has_its_requests_answered_by_another(cluster, store, redis_url, redis_prefix):
    """Default settings (no timeout tuned for the test): the survivor sees the victim's heartbeat go
    stale and takes its entries over within seconds, long before the callers' 30 s timeout."""
    # a third of the usual slowness: the kill still lands mid-batch, and after it the survivor's own
    # throughput (15 batches of 8) does not swamp the take-over time this test is about
    add_slow_pose(store, steps=12)
    defaults = {f"POSEKD_{k.upper()}": Settings.model_fields[k].default
                for k in ("worker_heartbeat_s", "worker_stale_s", "visibility_timeout_s", "request_timeout_s")}
    victim, _ = cluster.worker("victim", POSEKD_DEFAULT_POSE_MODEL="slow-pose", **defaults)
    _, port_b = cluster.worker("survivor", POSEKD_DEFAULT_POSE_MODEL="slow-pose", **defaults)
    _, base = cluster.api(POSEKD_DEFAULT_POSE_MODEL="slow-pose", **defaults)
    client = redis.Redis.from_url(redis_url)

    async def scenario():
        load = asyncio.ensure_future(post_many(base, range(120), concurrency=120, timeout=60))
        while _pending_of(client, redis_prefix, "victim") == 0:
            await asyncio.sleep(0.02)
        held = _pending_of(client, redis_prefix, "victim")
        victim.signal(signal.SIGKILL)
        return held, await load

    held, results = asyncio.run(scenario())
    assert held > 0
    assert_answers_are_their_own(results)  # 120 x 200: not one 504
    slowest = max(seconds for _, _, seconds in results.values())
    assert slowest < 20, slowest  # the reclaim bound is stale 5 s + heartbeat 1 s; the timeout is 30 s
    assert metric(port_b, "posekd_reclaimed_total") >= held
    assert client.xpending(RedisKeys(redis_prefix).requests, GROUP)["pending"] == 0  # nothing left behind


def test_sigterm_finishes_the_batch_in_hand_then_exits(cluster, store, redis_url, redis_prefix):
    """The stopping worker answers what it holds and reads nothing more; what it never read waits in
    the stream for the next worker, so no accepted request is lost."""
    add_slow_pose(store)
    common = dict(POSEKD_MAX_BATCH=4, POSEKD_MAX_DELAY_MS=20, POSEKD_DEFAULT_POSE_MODEL="slow-pose")
    leaving, _ = cluster.worker("leaving", **common)
    _, base = cluster.api(POSEKD_DEFAULT_POSE_MODEL="slow-pose")
    client = redis.Redis.from_url(redis_url)

    async def scenario():
        load = asyncio.ensure_future(post_many(base, range(6), concurrency=6, timeout=60))
        while _pending_of(client, redis_prefix, "leaving") == 0:
            await asyncio.sleep(0.02)
        leaving.signal(signal.SIGTERM)
        code = await asyncio.to_thread(leaving.popen.wait, 20)
        cluster.worker("next", **common)  # serves whatever the leaving worker never read
        return code, await load

    code, results = asyncio.run(scenario())
    assert code == 0
    assert_answers_are_their_own(results)
    assert _pending_of(client, redis_prefix, "leaving") == 0


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs the redis-server binary")
def test_redis_down_then_back_503s_then_recovers_without_restarts(cluster, tmp_path):
    server = RedisServer(tmp_path)
    server.start()
    try:
        worker, _ = cluster.worker("w", url=server.url)
        api, base = cluster.api(url=server.url, POSEKD_REQUEST_TIMEOUT_S=5)
        timeout = 5 + 3  # the request timeout plus slack: nothing may hang past it
        statuses: list[tuple[str, int, float]] = []

        async def load(phase: str, seconds: float):
            async with httpx.AsyncClient(base_url=base, timeout=timeout + 5) as client:
                end = time.monotonic() + seconds

                async def loop(k):
                    i = k
                    while time.monotonic() < end:
                        x, y = spot(i)
                        t = time.perf_counter()
                        r = await client.post("/v1/pose", content=encode(blob_image(at=(x, y))),
                                              headers={"content-type": "image/png"})
                        statuses.append((phase, r.status_code, time.perf_counter() - t))
                        if r.status_code == 503:
                            assert r.headers.get("retry-after")
                            assert r.json()["error"]["code"] in ("broker_unavailable", "no_workers", "overloaded")
                            await asyncio.sleep(0.05)
                        i += 8

                await asyncio.gather(*(loop(k) for k in range(8)))

        asyncio.run(load("before", 1.5))
        server.stop()
        asyncio.run(load("down", 2.5))
        assert httpx.get(base + "/readyz", timeout=timeout).status_code == 503
        server.start()  # empty: no persistence in this server, so the group and heartbeats come back by themselves

        def recovered():
            r = httpx.post(base + "/v1/pose", content=encode(blob_image(at=(90, 100))),
                           headers={"content-type": "image/png"}, timeout=timeout)
            statuses.append(("after", r.status_code, 0.0))
            return r.status_code == 200

        wait_until(recovered, 30, "a request to succeed after Redis came back", every=0.3)
        asyncio.run(load("after-ok", 1.0))
        assert api.alive() and worker.alive()
    finally:
        server.stop()

    codes = {phase: {s for p, s, _ in statuses if p == phase} for phase in ("before", "down", "after", "after-ok")}
    assert codes["before"] == {200}
    assert codes["down"] and codes["down"] <= {503}, codes  # never 500, never a timeout (504)
    assert codes["after"] <= {200, 503} and codes["after-ok"] == {200}, (codes, worker.tail(), api.tail())
    assert max(sec for _, _, sec in statuses) < timeout
    log = api.log.read_text(errors="replace")  # an outage is one warning, not asyncio noise
    assert "never retrieved" not in log and "Traceback" not in log, api.tail(60)


def test_a_client_that_disconnects_leaves_no_work_behind(cluster, store, redis_url, redis_prefix):
    add_slow_pose(store)
    common = dict(POSEKD_MAX_BATCH=1, POSEKD_MAX_DELAY_MS=0, POSEKD_DEFAULT_POSE_MODEL="slow-pose")
    _, port = cluster.worker("only", **common)
    _, base = cluster.api(POSEKD_DEFAULT_POSE_MODEL="slow-pose")
    client = redis.Redis.from_url(redis_url)
    host, http_port = base.removeprefix("http://").split(":")
    body = encode(blob_image(at=(60, 60)))

    async def scenario():
        held = asyncio.ensure_future(post_many(base, [0], concurrency=1, timeout=60))  # keeps the worker busy
        while _pending_of(client, redis_prefix, "only") == 0:
            await asyncio.sleep(0.01)
        reader, writer = await asyncio.open_connection(host, int(http_port))
        writer.write(b"POST /v1/pose HTTP/1.1\r\nhost: x\r\ncontent-type: image/png\r\n"
                     b"content-length: %d\r\n\r\n" % len(body) + body)
        await writer.drain()
        while client.xlen(RedisKeys(redis_prefix).requests) < 2:  # queued behind the held one
            await asyncio.sleep(0.01)
        writer.close()  # the client gives up
        await writer.wait_closed()
        return await held

    assert_answers_are_their_own(asyncio.run(scenario()))
    keys = RedisKeys(redis_prefix)
    wait_until(lambda: client.xlen(keys.requests) == 0, 10, "the abandoned entry to leave the stream")
    assert list(client.scan_iter(match=keys.cancelled("*")))
    time.sleep(1.0)  # the worker would have taken it by now
    assert metric(port, "posekd_worker_entries_total", 'outcome="ok"') == 1  # only the held request ran
    assert metric(base, "posekd_requests_total", 'code="499"') == 1


def test_a_video_job_in_redis_mode_survives_an_api_restart(cluster, tmp_path):
    cluster.worker("video-worker", POSEKD_VIDEO_MIN_SCORE=0.1, POSEKD_TRACK_START_SCORE=0.2)
    api, base = cluster.api()
    clip = blob_clip(tmp_path / "c.mp4", frames=15).read_bytes()
    r = httpx.post(base + "/v1/videos", params={"render": "true"}, files={"video": ("c.mp4", clip, "video/mp4")},
                   timeout=30)
    assert r.status_code == 202, r.text
    job_id = r.json()["job_id"]

    def done():
        body = httpx.get(f"{base}/v1/jobs/{job_id}", timeout=5).json()
        return body if body["status"] in ("succeeded", "failed", "cancelled") else None

    assert wait_until(done, 60, "the video job", api)["status"] == "succeeded"
    api.stop()
    _, base = cluster.api()  # a new API process: state and results live in Redis
    assert httpx.get(f"{base}/v1/jobs/{job_id}", timeout=5).json()["status"] == "succeeded"
    result = httpx.get(f"{base}/v1/jobs/{job_id}/result", timeout=5).json()
    assert result["video"]["frames"] == 15 and len(result["tracks"]) == 1
    video = httpx.get(f"{base}/v1/jobs/{job_id}/video", timeout=5)
    assert video.status_code == 200 and video.content[4:8] == b"ftyp"


def test_a_video_job_whose_worker_died_is_taken_over_by_heartbeat(cluster, tmp_path, redis_url, redis_prefix):
    """A job entry held by a consumer with no heartbeat goes to a live worker within seconds, not after
    the (600 s) visibility timeout meant for hung workers."""
    _, base = cluster.api(POSEKD_REQUIRE_WORKERS="false")
    clip = blob_clip(tmp_path / "c.mp4", frames=10).read_bytes()
    r = httpx.post(base + "/v1/videos", files={"video": ("c.mp4", clip, "video/mp4")}, timeout=30)
    assert r.status_code == 202, r.text
    job_id = r.json()["job_id"]
    raw = redis.Redis.from_url(redis_url)
    stream = f"{redis_prefix}:videos"
    try:
        raw.xgroup_create(stream, "video-workers", id="0", mkstream=True)
    except redis.ResponseError:
        pass
    taken = raw.xreadgroup("video-workers", "crashed-worker", {stream: ">"}, count=1)  # ... and it died
    assert taken and taken[0][1][0][1][b"job"].decode() == job_id
    started = time.monotonic()
    cluster.worker("heir", POSEKD_VIDEO_MIN_SCORE=0.1, POSEKD_TRACK_START_SCORE=0.2)

    def done():
        body = httpx.get(f"{base}/v1/jobs/{job_id}", timeout=5).json()
        return body if body["status"] in ("succeeded", "failed", "cancelled") else None

    assert wait_until(done, 60, "the video job")["status"] == "succeeded"
    assert time.monotonic() - started < 60
    assert raw.xpending(stream, "video-workers")["pending"] == 0


def test_a_video_job_taken_over_continues_from_its_last_checkpoint(cluster, store, tmp_path, redis_url,
                                                                   redis_prefix):
    """A worker killed mid-clip: the heir continues after the last checkpointed window, so the progress
    shown never goes back, the one person keeps one track, and every frame is in the result once."""
    add_slow_pose(store, steps=12)
    first, _ = cluster.worker("first", POSEKD_VIDEO_MIN_SCORE=0.1, POSEKD_TRACK_START_SCORE=0.2,
                              POSEKD_VIDEO_CHECKPOINT_S="0.2")
    _, base = cluster.api(POSEKD_REQUIRE_WORKERS="false")
    clip = blob_clip(tmp_path / "c.mp4", frames=60, path_xy=lambda i: (60 + 2 * i, 100)).read_bytes()
    r = httpx.post(base + "/v1/videos", params={"model": "slow-pose", "render": "true"},
                   files={"video": ("c.mp4", clip, "video/mp4")}, timeout=30)
    assert r.status_code == 202, r.text
    job_id = r.json()["job_id"]
    raw = redis.Redis.from_url(redis_url)
    frames_key = f"{redis_prefix}:job:{job_id}:frames"
    wait_until(lambda: raw.llen(frames_key) >= 15, 60, "a checkpoint of 15 frames", first)
    first.signal(signal.SIGKILL)
    saved = raw.llen(frames_key)
    shown = [httpx.get(f"{base}/v1/jobs/{job_id}", timeout=5).json()["progress"]]
    assert 0 < saved < 60 and 0 < shown[0] < 1
    heir, _ = cluster.worker("heir", POSEKD_VIDEO_MIN_SCORE=0.1, POSEKD_TRACK_START_SCORE=0.2)

    def done():
        body = httpx.get(f"{base}/v1/jobs/{job_id}", timeout=5).json()
        shown.append(body["progress"])
        return body if body["status"] in ("succeeded", "failed", "cancelled") else None

    assert wait_until(done, 90, "the video job", heir, every=0.05)["status"] == "succeeded"
    assert shown == sorted(shown), shown  # never back
    assert "resumes after frame" in heir.tail(200)
    result = httpx.get(f"{base}/v1/jobs/{job_id}/result", timeout=5).json()
    assert [f["frame"] for f in result["frames"]] == list(range(60))
    assert len(result["tracks"]) == 1 and result["tracks"][0]["frames"] >= 55  # the tracker's state came along
    video = httpx.get(f"{base}/v1/jobs/{job_id}/video", timeout=5)
    assert video.status_code == 200 and video.content[4:8] == b"ftyp"
    assert not raw.exists(frames_key)  # the checkpoint goes with the finished job


def test_an_api_with_no_worker_is_not_ready_until_one_starts(cluster, tmp_path, store, redis_url, redis_prefix):
    """Right after start, an API replica whose queue nobody serves says not ready (workers 0), so a load
    balancer sends it nothing that would only get 503; a worker's first heartbeat makes it ready."""
    from .procs import Proc, free_port

    port = free_port()
    api = Proc([sys.executable, "-m", "service.cli", "serve", "--port", str(port)], cluster.env(),
               tmp_path / "lonely-api.log")
    base = f"http://127.0.0.1:{port}"
    try:
        r = wait_until(lambda: httpx.get(base + "/readyz", timeout=1), 30, "the API answers", api)
        assert r.status_code == 503 and r.json()["workers"] == 0 and r.json()["status"] == "not_ready"
        cluster.worker("first")
        wait_until(lambda: httpx.get(base + "/readyz", timeout=1).status_code == 200, 15, "ready with a worker", api)
        assert httpx.get(base + "/readyz").json()["workers"] >= 1
    finally:
        api.stop()
