"""Clients that hang up or trickle, against a real `posekd serve` (uvicorn, embedded mode) over raw
sockets: a hang-up is a 499 ``client_closed``, never a 5xx or a traceback; a 408 closes its connection."""
from __future__ import annotations

import os
import socket
import sys
import time

import httpx
import pytest

from .procs import Proc, free_port, metric, wait_until

pytestmark = pytest.mark.slow


@pytest.fixture
def api(store, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("POSEKD_")}
    env.update({"POSEKD_MODEL_STORE": str(store.root), "POSEKD_DEFAULT_POSE_MODEL": "tiny-pose",
                "POSEKD_DEFAULT_DETECTOR": "tiny-det", "POSEKD_STORE_POLL_S": "0", "POSEKD_BODY_TIMEOUT_S": "1",
                "POSEKD_ORT_INTRA_THREADS": "1"})
    port = free_port()
    proc = Proc([sys.executable, "-m", "service.cli", "serve", "--port", str(port)], env, tmp_path / "api.log")
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: httpx.get(base + "/readyz", timeout=1).status_code == 200, 30, "API ready", proc)
        yield proc, port, base
    finally:
        proc.stop()


def _head(port: int, length: int, body: bytes, content_type: str = "image/png") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.sendall(f"POST /v1/pose HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\n"
                 f"Content-Length: {length}\r\n\r\n".encode() + body)
    return sock


def test_a_client_that_hangs_up_mid_body_is_not_a_server_error(api):
    proc, port, base = api
    for content_type in ("image/png", "multipart/form-data; boundary=zz"):
        sock = _head(port, 200_000, b"\x89PNG" + b"\0" * 5000 if content_type == "image/png" else
                     b"--zz\r\nContent-Disposition: form-data; name=\"image\"; filename=\"x\"\r\n\r\n" + b"\0" * 5000,
                     content_type)
        time.sleep(0.2)
        sock.close()  # gone before the body is all there
    wait_until(lambda: metric(base, "posekd_requests_total", 'code="499"') >= 2, 10, "two 499s counted", proc)
    assert metric(base, "posekd_requests_total", 'code="500"') == 0
    assert httpx.get(base + "/healthz").status_code == 200
    log = proc.log.read_text(errors="replace")
    assert "Traceback" not in log and "unhandled error" not in log
    assert "client closed the connection" in log


def test_the_408_closes_the_connection(api):
    proc, port, base = api
    sock = _head(port, 1000, b"\x89PNG" + b"\0" * 10)
    sock.settimeout(5)
    answer = b""
    deadline = time.monotonic() + 5
    while b"\r\n\r\n" not in answer and time.monotonic() < deadline:
        answer += sock.recv(4096)
    head = answer.split(b"\r\n\r\n", 1)[0].decode().lower()
    assert head.startswith("http/1.1 408"), head
    assert "connection: close" in head
    # still trickling after the 408: the server has closed its side
    closed = False
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            sock.sendall(b"\0")
            chunk = sock.recv(4096)
            if chunk == b"":
                closed = True
                break
        except OSError:
            closed = True
            break
        time.sleep(0.2)
    sock.close()
    assert closed


def test_a_killed_server_leaves_nothing_the_next_one_keeps(store, tmp_path):
    """SIGKILL mid-job: the killed server's temporary folder (its clip, its job folder) is removed by the
    next server that starts on the same scratch folder."""
    import signal

    from .helpers import add_slow_pose, blob_clip

    add_slow_pose(store)
    scratch_dir = tmp_path / "scratch"
    env = {k: v for k, v in os.environ.items() if not k.startswith("POSEKD_")}
    env.update({"POSEKD_MODEL_STORE": str(store.root), "POSEKD_DEFAULT_POSE_MODEL": "slow-pose",
                "POSEKD_DEFAULT_DETECTOR": "tiny-det", "POSEKD_STORE_POLL_S": "0",
                "POSEKD_SCRATCH_DIR": str(scratch_dir), "POSEKD_ORT_INTRA_THREADS": "1",
                "POSEKD_VIDEO_MIN_SCORE": "0"})

    def start(log):
        port = free_port()
        proc = Proc([sys.executable, "-m", "service.cli", "serve", "--port", str(port)], env, tmp_path / log)
        base = f"http://127.0.0.1:{port}"
        wait_until(lambda: httpx.get(base + "/readyz", timeout=1).status_code == 200, 30, "API ready", proc)
        return proc, base

    first, base = start("first.log")
    clip = blob_clip(tmp_path / "c.mp4", frames=60).read_bytes()
    job = httpx.post(base + "/v1/videos", files={"video": ("c.mp4", clip, "video/mp4")}, timeout=30).json()["job_id"]
    wait_until(lambda: httpx.get(f"{base}/v1/jobs/{job}").json()["status"] == "running", 30, "job running", first)
    left = [p for p in scratch_dir.iterdir() if p.name.startswith(f"posekd-{first.popen.pid}-")]
    assert left and any(left[0].rglob("*")), "the running server keeps its files in its own folder"
    first.signal(signal.SIGKILL)
    first.popen.wait(10)
    first.stop()
    assert left[0].exists()  # nothing could clean up after a SIGKILL
    second, _ = start("second.log")
    try:
        assert not left[0].exists()
        assert all(p.name.startswith(f"posekd-{second.popen.pid}-") for p in scratch_dir.iterdir())
    finally:
        second.stop()
    assert not any(scratch_dir.iterdir())  # a clean exit removes its own folder


@pytest.mark.redis
def test_a_killed_worker_leaves_nothing_the_next_one_keeps(store, tmp_path, redis_url, redis_prefix):
    """Redis mode: a worker SIGKILLed while it tracks a clip leaves its copy of the clip; the next worker
    that starts removes it, and takes the job over."""
    import signal

    from .helpers import add_slow_pose, blob_clip
    from .procs import service_env, start_api, start_worker

    add_slow_pose(store)
    scratch_dir = tmp_path / "scratch"
    env = service_env(store.root, redis_url, redis_prefix, POSEKD_DEFAULT_POSE_MODEL="slow-pose",
                      POSEKD_SCRATCH_DIR=scratch_dir, POSEKD_VIDEO_MIN_SCORE=0, POSEKD_VIDEO_VISIBILITY_S=3)
    worker, _ = start_worker(env, "w1", tmp_path)
    api_proc, base = start_api(env, tmp_path)
    try:
        clip = blob_clip(tmp_path / "c.mp4", frames=60).read_bytes()
        job = httpx.post(base + "/v1/videos", files={"video": ("c.mp4", clip, "video/mp4")}, timeout=30).json()
        job_id = job["job_id"]
        wait_until(lambda: httpx.get(f"{base}/v1/jobs/{job_id}").json()["status"] == "running", 30, "running", worker)
        mine = [p for p in scratch_dir.iterdir() if p.name.startswith(f"posekd-{worker.popen.pid}-")]
        assert mine and any(p.name.startswith("posekd-job-") for p in mine[0].iterdir())
        worker.signal(signal.SIGKILL)
        worker.popen.wait(10)
        worker.stop()
        second, _ = start_worker(env, "w2", tmp_path)
        try:
            assert not mine[0].exists()
            wait_until(lambda: httpx.get(f"{base}/v1/jobs/{job_id}").json()["status"] == "succeeded", 90,
                       "the job taken over and finished", second)
        finally:
            second.stop()
    finally:
        api_proc.stop()
    assert not any(p.name.startswith("posekd-") and any(p.rglob("*")) for p in scratch_dir.iterdir())


def test_silent_and_trickling_connections_are_closed_and_others_served(store, tmp_path):
    """Connections that send nothing, or their head a byte at a time, are closed after
    POSEKD_HEADER_TIMEOUT_S; a real client is served all along, even with the connection limit small."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("POSEKD_")}
    env.update({"POSEKD_MODEL_STORE": str(store.root), "POSEKD_DEFAULT_POSE_MODEL": "tiny-pose",
                "POSEKD_DEFAULT_DETECTOR": "tiny-det", "POSEKD_STORE_POLL_S": "0", "POSEKD_HEADER_TIMEOUT_S": "1",
                "POSEKD_MAX_CONNECTIONS": "12", "POSEKD_ORT_INTRA_THREADS": "1"})
    port = free_port()
    proc = Proc([sys.executable, "-m", "service.cli", "serve", "--port", str(port)], env, tmp_path / "api.log")
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: httpx.get(base + "/readyz", timeout=1).status_code == 200, 30, "API ready", proc)
        silent = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(20)]
        trickler = socket.create_connection(("127.0.0.1", port), timeout=5)
        started = time.monotonic()
        head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 50
        sent = 0
        served = []
        while time.monotonic() - started < 3.5:
            try:
                trickler.sendall(head[sent:sent + 1])
                sent += 1
            except OSError:
                break
            if len(served) < 3 and time.monotonic() - started > 1.5 * (len(served) + 1) / 2:
                served.append(httpx.get(base + "/healthz", timeout=3).status_code)
            time.sleep(0.1)
        assert served and set(served) == {200}, served
        for sock in [*silent, trickler]:
            sock.settimeout(3)
            try:
                assert sock.recv(100) == b""  # closed by the server, nothing sent
            except ConnectionResetError:
                pass
            sock.close()
        # twelve clients whose requests are under way fill the limit: the next gets the JSON 503
        busy = [_head(port, 1000, b"\x89PNG") for _ in range(12)]
        time.sleep(0.3)
        r = httpx.get(base + "/healthz", timeout=3)
        assert r.status_code == 503 and r.headers["retry-after"] == "1", r.text
        assert r.json()["error"]["code"] == "overloaded"
        for sock in busy:
            sock.close()
    finally:
        proc.stop()
