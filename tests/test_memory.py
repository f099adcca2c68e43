"""Memory under hostile-but-legal input, measured on a real `posekd serve` process (its peak RSS,
VmHWM, read from /proc before and after): a batch of 16 PNGs of 6300×6300 — 40 M pixels each, a few
hundred KB on the wire, within every limit — three times in a row, then four batches of progressive
JPEGs of that size at once. Each decode is admitted by the process's pixel budget at its measured peak
cost and each image is reduced right after decoding, so the peak stays under the documented bound
(3 bytes × POSEKD_MAX_DECODE_PIXELS + 2.5 × the bodies in flight + 64 MiB), far below the 16 × 119 MB a batch
would cost decoded whole."""
from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest

from service.settings import Settings

from .procs import Proc, free_port, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not Path("/proc/self/status").exists(),
                                                    reason="reads peak RSS from /proc")]
SIDE = 6300


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


@pytest.fixture(scope="module")
def big_png() -> bytes:
    image = np.zeros((SIDE, SIDE, 3), np.uint8)
    cv2.circle(image, (SIDE // 3, SIDE // 2), 300, (255, 255, 255), -1)
    ok, buf = cv2.imencode(".png", image, [cv2.IMWRITE_PNG_COMPRESSION, 9])
    assert ok
    return buf.tobytes()


@pytest.fixture(scope="module")
def big_progressive_jpeg() -> bytes:
    """A progressive JPEG of 6300² with detail (5 MB): libjpeg keeps its full coefficient buffer while it
    decodes, however much it reduces the output."""
    rng = np.random.default_rng(0)
    image = cv2.resize(rng.integers(0, 255, (SIDE // 8, SIDE // 8, 3), dtype=np.uint8), (SIDE, SIDE))
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1, cv2.IMWRITE_JPEG_QUALITY, 80])
    assert ok
    return buf.tobytes()


@pytest.fixture
def server(store, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("POSEKD_")}
    env.update(POSEKD_MODEL_STORE=str(store.root), POSEKD_DEFAULT_POSE_MODEL="tiny-pose",
               POSEKD_DEFAULT_DETECTOR="tiny-det", POSEKD_STORE_POLL_S="0", POSEKD_ORT_INTRA_THREADS="1",
               POSEKD_REQUEST_TIMEOUT_S="120")
    port = free_port()
    proc = Proc([sys.executable, "-m", "service.cli", "serve", "--port", str(port)], env, tmp_path / "api.log")
    base = f"http://127.0.0.1:{port}"
    wait_until(lambda: httpx.get(base + "/readyz", timeout=1).status_code == 200, 30, "API ready", proc)
    yield proc, base
    proc.stop()


def bound_mb(bodies_mb: float = 0.0) -> float:
    """The documented bound (docs/api.md) on the rise of a serving process's peak RSS: 3 bytes × the pixel
    budget, plus 2.5 × the request bodies in flight (received, then parsed into files), plus 64 MiB for the
    allocator and Python."""
    return 3 * Settings().max_decode_pixels / 2**20 + 2.5 * bodies_mb + 64


def test_batches_one_repeated_and_concurrent_stay_within_the_documented_bound(server, big_png, big_progressive_jpeg):
    proc, base = server
    small = cv2.imencode(".png", np.zeros((200, 300, 3), np.uint8))[1].tobytes()
    assert httpx.post(base + "/v1/pose", content=small, headers={"content-type": "image/png"}).status_code == 200
    before = peak_rss_mb(proc.popen.pid)
    files = [("images", (f"{i}.png", big_png, "image/png")) for i in range(16)]
    for round_ in range(3):  # one batch, then the same again: the peak must not creep up batch after batch
        r = httpx.post(base + "/v1/pose/batch", files=files, timeout=300)
        assert r.status_code == 200, r.text
        results = r.json()["results"]
        assert len(results) == 16 and all(res["image"] == {"width": SIDE, "height": SIDE} for res in results)
        rise = peak_rss_mb(proc.popen.pid) - before
        print(f"16 x {SIDE}² PNG batch, round {round_ + 1}: peak RSS +{rise:.0f} MB")
        assert rise < bound_mb(), (round_, rise)  # decoded whole one batch would be 16 x 119 MB = 1.9 GB

    async def four_batches_at_once():
        data = [("images", (f"{i}.jpg", big_progressive_jpeg, "image/jpeg")) for i in range(4)]
        async with httpx.AsyncClient(base_url=base, timeout=300) as client:
            return await asyncio.gather(*(client.post("/v1/pose/batch", files=data) for _ in range(4)))

    answers = asyncio.run(four_batches_at_once())
    assert [a.status_code for a in answers] == [200] * 4
    rise = peak_rss_mb(proc.popen.pid) - before
    bodies = 16 * len(big_progressive_jpeg) / 2**20
    print(f"4 concurrent batches of 4 progressive {SIDE}² JPEGs ({bodies:.0f} MB of bodies): peak RSS +{rise:.0f} MB")
    assert rise < bound_mb(bodies), rise  # libjpeg holds a progressive picture's coefficients whole: 4 x 4 x 134 MB
