"""Memory under hostile-but-legal input, measured on a real `posekd serve` process (its peak RSS,
VmHWM, read from /proc before and after): a batch of 16 PNGs of 6300×6300 — 40 M pixels each, a few
hundred KB on the wire, within every limit — and four such PNGs at once. Decoding is admitted by the
pixel budget and each image is reduced right after decoding, so the peak stays far below the 16 ×
119 MB the batch would cost decoded whole."""
from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest

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


def test_a_batch_of_sixteen_6300_pngs_stays_within_the_memory_budget(server, big_png):
    proc, base = server
    small = cv2.imencode(".png", np.zeros((200, 300, 3), np.uint8))[1].tobytes()
    assert httpx.post(base + "/v1/pose", content=small, headers={"content-type": "image/png"}).status_code == 200
    before = peak_rss_mb(proc.popen.pid)
    files = [("images", (f"{i}.png", big_png, "image/png")) for i in range(16)]
    r = httpx.post(base + "/v1/pose/batch", files=files, timeout=300)
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert len(results) == 16 and all(res["image"] == {"width": SIDE, "height": SIDE} for res in results)
    rise = peak_rss_mb(proc.popen.pid) - before
    print(f"16 x {SIDE}² PNG batch ({len(big_png) * 16 / 1e6:.1f} MB on the wire): peak RSS +{rise:.0f} MB")
    assert rise < 800, rise  # decoded whole it would be 16 x 119 MB = 1.9 GB

    async def four_at_once():
        async with httpx.AsyncClient(base_url=base, timeout=300) as client:
            return await asyncio.gather(*(client.post("/v1/pose", content=big_png,
                                                      headers={"content-type": "image/png"}) for _ in range(4)))

    before = peak_rss_mb(proc.popen.pid)
    answers = asyncio.run(four_at_once())
    assert [a.status_code for a in answers] == [200] * 4
    rise = peak_rss_mb(proc.popen.pid) - before
    print(f"4 concurrent {SIDE}² PNGs: peak RSS +{rise:.0f} MB")
    assert rise < 400, rise  # the budget (80 M pixels) lets two decode at once, not four
