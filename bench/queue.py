"""``posekd bench queue``: throughput and p50/p99 latency through Redis with 1 and 2 workers vs the
embedded service vs the raw pipeline, at several concurrencies, side by side in one run; then each
mode under an open-loop load at half its saturated throughput (p99 vs the single-request latency), and
the two Redis payload formats (uploaded bytes vs decoded pixels) at saturation."""
from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

from service.shared import data_dir

from .common import ROOT, record, store_with_defaults
from .images import _free_port, bench_raw, load_images

CTYPES = {".png": "image/png", ".bmp": "image/bmp", ".webp": "image/webp"}


class Stack:
    """`posekd serve` (embedded, or Redis mode with N `posekd worker` processes), stopped on exit."""

    def __init__(self, store: Path, redis_url: str | None, workers: int, env: dict):
        self.procs: list[subprocess.Popen] = []
        self.port = _free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, "POSEKD_MODEL_STORE": str(store), "POSEKD_STORE_POLL_S": "0", **env}
        self.env.pop("POSEKD_REDIS_URL", None)
        if redis_url:
            self.env.update({"POSEKD_REDIS_URL": redis_url, "POSEKD_REDIS_PREFIX": f"bench-{uuid.uuid4().hex[:8]}"})
        self.workers = workers

    def _spawn(self, *args: str, env: dict) -> None:
        self.procs.append(subprocess.Popen([sys.executable, "-m", "service.cli", *args], env=env, cwd=ROOT,
                                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

    def __enter__(self) -> Stack:
        import httpx
        for i in range(self.workers):
            env = dict(self.env)
            if self.workers > 1:  # one core each: two workers on two cores
                env["POSEKD_ORT_INTRA_THREADS"] = "1"
            self._spawn("worker", "--metrics-port", "0", "--name", f"bench-{i}", env=env)
        self._spawn("serve", "--port", str(self.port), env=self.env)
        for _ in range(600):
            try:
                r = httpx.get(self.base + "/readyz", timeout=2)
                if r.status_code == 200 and r.json().get("workers", self.workers) >= self.workers:
                    return self
            except httpx.HTTPError:
                pass
            if any(p.poll() is not None for p in self.procs):
                break
            time.sleep(0.1)
        self.__exit__()
        raise SystemExit("the service did not become ready")

    def __exit__(self, *exc) -> None:
        for p in reversed(self.procs):
            p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()


async def _send(client, name: str, data: bytes) -> tuple[float, int]:
    t = time.perf_counter()
    r = await client.post("/v1/pose", content=data,
                          headers={"content-type": CTYPES.get(Path(name).suffix.lower(), "image/jpeg")})
    return time.perf_counter() - t, r.status_code


async def closed_loop(base: str, images, requests: int, concurrency: int) -> dict:
    """``concurrency`` clients, each sending its next request as soon as the last one is answered."""
    import httpx
    lat, errors = [], 0
    async with httpx.AsyncClient(base_url=base, timeout=120,
                                 limits=httpx.Limits(max_connections=concurrency)) as client:
        await asyncio.gather(*(_send(client, n, d) for n, d in images[:max(concurrency, 2)]))  # warm up
        todo = list(range(requests))

        async def one_client():
            nonlocal errors
            while todo:
                name, data = images[todo.pop() % len(images)]
                seconds, status = await _send(client, name, data)
                lat.append(seconds)
                errors += status != 200

        t0 = time.perf_counter()
        await asyncio.gather(*(one_client() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    return {"rps": len(lat) / wall, "lat": lat, "errors": errors}


async def open_loop(base: str, images, rate: float, requests: int) -> dict:
    """Requests sent at a fixed rate whatever the answers do (how real traffic arrives)."""
    import httpx
    lat, errors = [], 0
    async with httpx.AsyncClient(base_url=base, timeout=120, limits=httpx.Limits(max_connections=256)) as client:
        await asyncio.gather(*(_send(client, n, d) for n, d in images[:2]))

        async def one(i):
            nonlocal errors
            name, data = images[i % len(images)]
            seconds, status = await _send(client, name, data)
            lat.append(seconds)
            errors += status != 200

        t0 = time.perf_counter()
        tasks = []
        for i in range(requests):
            delay = t0 + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.ensure_future(one(i)))
        await asyncio.gather(*tasks)
        wall = time.perf_counter() - t0
    return {"rps": len(lat) / wall, "lat": lat, "errors": errors}


def pct(lat: list[float], q: float) -> float:
    s = sorted(lat)
    return s[min(len(s) - 1, int(q * len(s)))] * 1000


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="posekd bench queue", description=__doc__)
    ap.add_argument("--data", type=Path, default=data_dir())
    ap.add_argument("--images", type=int, default=24)
    ap.add_argument("--requests", type=int, default=240, help="requests per closed-loop measurement")
    ap.add_argument("--concurrency", default="1,4,16", help="closed-loop client counts")
    ap.add_argument("--redis", default=os.environ.get("POSEKD_TEST_REDIS_URL", "redis://127.0.0.1:6379/0"))
    ap.add_argument("--no-record", action="store_true")
    return ap


def _mode_points(mode: str, stack, images, args, levels: list[int]) -> tuple[dict, list[str]]:
    """One mode: closed-loop points at each concurrency, then an open loop at half the saturation."""
    points = {c: asyncio.run(closed_loop(stack.base, images, args.requests, c)) for c in levels}
    for c, r in points.items():
        print(f"{mode}, {c} clients: {r['rps']:.2f} img/s p50 {pct(r['lat'], .5):.1f} "
              f"p99 {pct(r['lat'], .99):.1f} ms errors {r['errors']}", flush=True)
    saturation = max(r["rps"] for r in points.values())
    single = statistics.median(points[min(levels)]["lat"]) * 1000
    half = asyncio.run(open_loop(stack.base, images, saturation / 2, args.requests // 2))
    print(f"{mode}, open loop at {saturation / 2:.1f}/s: p99 {pct(half['lat'], .99):.1f} ms "
          f"(single {single:.1f} ms)", flush=True)
    summary = {"saturation": saturation, "single": single, "single_p99": pct(points[min(levels)]["lat"], .99),
               "half_p99": pct(half["lat"], .99), "half_rate": saturation / 2}
    rows = [f"| {mode} | {c} | {r['rps']:.2f} | {pct(r['lat'], .5):.1f} | {pct(r['lat'], .99):.1f} | {r['errors']} |"
            for c, r in points.items()]
    rows.append(f"| {mode} | open loop {saturation / 2:.1f}/s | {half['rps']:.2f} | {pct(half['lat'], .5):.1f} "
                f"| {pct(half['lat'], .99):.1f} | {half['errors']} |")
    return summary, rows


def main(argv: list[str] | None = None) -> int:
    from service.settings import get_settings

    s = get_settings()
    args = _parser().parse_args(argv)
    import logging
    logging.getLogger("httpx").setLevel(logging.WARNING)

    images = load_images(args.data, args.images)
    store = store_with_defaults(s.model_store, s.default_pose_model, s.default_detector, s.teachers)
    levels = [int(c) for c in args.concurrency.split(",")]
    env = {"POSEKD_MAX_BATCH": str(s.max_batch), "POSEKD_MAX_DELAY_MS": str(s.max_delay_ms)}
    print(f"{len(images)} images, {args.requests} requests per point; pose {s.default_pose_model}, detector "
          f"{s.default_detector}; concurrency {levels}", flush=True)

    raw = bench_raw(images, store, s.default_pose_model, s.default_detector, max(1, args.requests // len(images)))
    print(f"raw pipeline: {raw['rps']:.2f} img/s, p50 {pct(raw['lat'], 0.5):.1f} ms", flush=True)
    modes: dict[str, tuple[str | None, int]] = {"embedded": (None, 0), "redis, 1 worker": (args.redis, 1),
                                                "redis, 2 workers": (args.redis, 2)}
    rows, summary = [], {}
    for mode, (url, workers) in modes.items():
        with Stack(store, url, workers, env) as stack:
            summary[mode], mode_rows = _mode_points(mode, stack, images, args, levels)
        rows += mode_rows
    return _report(args, argv, s, store, env, images, levels, raw, rows, summary)


def _report(args, argv, s, store, env, images, levels, raw, rows, summary) -> int:  # noqa: PLR0913
    payload = {}
    top = max(levels)
    for fmt in ("encoded", "raw"):
        with Stack(store, args.redis, 1, {**env, "POSEKD_REDIS_PAYLOAD": fmt}) as stack:
            payload[fmt] = asyncio.run(closed_loop(stack.base, images, args.requests, top))
        print(f"payload {fmt}: {payload[fmt]['rps']:.2f} img/s", flush=True)

    emb = summary["embedded"]["saturation"]
    lines = [
        "| mode | clients | images/s | p50 ms | p99 ms | errors |", "|---|---|---|---|---|---|",
        f"| raw pipeline, in-process, one at a time | 1 | {raw['rps']:.2f} | {pct(raw['lat'], .5):.1f} | "
        f"{pct(raw['lat'], .99):.1f} | 0 |",
        *rows, "",
        "| mode | saturated images/s | vs embedded | vs raw pipeline | single request p50 / p99 ms "
        "| p99 at half saturation ms | ÷ single p99 | ÷ single p50 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for mode, m in summary.items():
        lines.append(f"| {mode} | {m['saturation']:.2f} | {m['saturation'] / emb:.2f} "
                     f"| {m['saturation'] / raw['rps']:.2f} "
                     f"| {m['single']:.1f} / {m['single_p99']:.1f} | {m['half_p99']:.1f} "
                     f"| {m['half_p99'] / m['single_p99']:.2f} | {m['half_p99'] / m['single']:.2f} |")
    lines += ["", f"Redis payload at {top} clients, 1 worker: uploaded bytes (`encoded`, the worker decodes) "
                  f"{payload['encoded']['rps']:.2f} images/s, p50 {pct(payload['encoded']['lat'], .5):.1f} ms; "
                  f"decoded pixels (`raw`, the API decodes) {payload['raw']['rps']:.2f} images/s, p50 "
                  f"{pct(payload['raw']['lat'], .5):.1f} ms.",
              "", f"Goals: Redis throughput at saturation ≥ 0.8 × embedded (1 worker "
                  f"{summary['redis, 1 worker']['saturation'] / emb:.2f}, 2 workers "
                  f"{summary['redis, 2 workers']['saturation'] / emb:.2f}); p99 at half saturation < 2 × the "
                  f"single-request p99 (" + ", ".join(f"{k} {v['half_p99'] / v['single_p99']:.2f}"
                                                       for k, v in summary.items()) + "). "
                  f"The images differ a lot in cost (a 3.6 MP JPEG beside 0.3 MP PNGs), so the single-request "
                  f"latency is a distribution: the same percentile is compared. max_batch {s.max_batch}, "
                  f"max_delay_ms {s.max_delay_ms:g}; the load generator runs on the same 2 cores."]
    table = "\n".join(lines)
    print("\n" + table)
    if not args.no_record:
        record("Queue: Redis (1 and 2 workers) vs embedded vs raw pipeline",
               ("posekd bench queue " + " ".join(argv or [])).strip(), table)
    return 0
