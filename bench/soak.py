"""``posekd bench soak``: a long run of mixed traffic against a real `posekd serve` (embedded mode, the
default models) while the server's resident memory is sampled from /proc — the check that nothing
leaks: RSS after the warm-up vs at the end, the peak, and every answer by status. The traffic is what a
service meets: real photos, batches, client boxes, and one request in five malformed (corrupt or
truncated images, bad parameters, unknown models, an oversized body), from several clients at once."""
from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import time
from collections import Counter
from pathlib import Path

from service.shared import data_dir

from .common import record, store_with_defaults
from .images import load_images
from .queue import Stack

BAD = [
    ("truncated", lambda img: dict(content=img[: len(img) // 3], headers={"content-type": "image/jpeg"})),
    ("text", lambda img: dict(content=b"not an image at all", headers={"content-type": "image/png"})),
    ("bad boxes", lambda img: dict(content=img, headers={"content-type": "image/jpeg"},
                                   params={"boxes": "[[0,0,1e300,1e300]]"})),
    ("unknown model", lambda img: dict(content=img, headers={"content-type": "image/jpeg"},
                                       params={"model": "ghost"})),
    ("oversized", lambda img: dict(content=b"\xff\xd8\xff" + b"\0" * (21 * 1024 * 1024),
                                   headers={"content-type": "image/jpeg"})),
]


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def traffic(base: str, images, seconds: float, clients: int, rng: random.Random, tally: Counter,
                  lat: list[float]) -> None:
    import httpx

    end = time.monotonic() + seconds
    async with httpx.AsyncClient(base_url=base, timeout=120) as client:
        async def one_client():
            while time.monotonic() < end:
                name, data = rng.choice(images)
                roll = rng.random()
                t = time.perf_counter()
                if roll < 0.2:
                    kind, build = rng.choice(BAD)
                    r = await client.post("/v1/pose", **build(data))
                elif roll < 0.3:
                    picks = [rng.choice(images) for _ in range(3)]
                    kind = "batch"
                    r = await client.post("/v1/pose/batch", files=[("images", (n, d, "image/jpeg")) for n, d in picks])
                elif roll < 0.4:
                    kind = "boxes"
                    r = await client.post("/v1/pose", content=data, headers={"content-type": "image/jpeg"},
                                          params={"boxes": json.dumps([[10, 10, 200, 300]])})
                else:
                    kind = "image"
                    r = await client.post("/v1/pose", content=data, headers={"content-type": "image/jpeg"})
                tally[(kind, r.status_code)] += 1
                if kind == "image" and r.status_code == 200:
                    lat.append((time.perf_counter() - t) * 1000)

        await asyncio.gather(*(one_client() for _ in range(clients)))


def main(argv: list[str] | None = None) -> int:
    from service.settings import get_settings

    s = get_settings()
    ap = argparse.ArgumentParser(prog="posekd bench soak", description=__doc__)
    ap.add_argument("--data", type=Path, default=data_dir())
    ap.add_argument("--minutes", type=float, default=10.0, help="measured duration, after the warm-up")
    ap.add_argument("--warmup", type=float, default=60.0, help="seconds of the same traffic before the baseline")
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--sample-s", type=float, default=15.0, help="RSS sampling period")
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args(argv)
    import logging
    logging.getLogger("httpx").setLevel(logging.WARNING)

    images = load_images(args.data, 24)
    store = store_with_defaults(s.model_store, s.default_pose_model, s.default_detector, s.teachers)
    rng = random.Random(0)
    tally: Counter = Counter()
    lat: list[float] = []
    samples: list[tuple[float, float]] = []
    with Stack(store, None, 0, {}) as stack:
        pid = stack.procs[-1].pid
        asyncio.run(traffic(stack.base, images, args.warmup, args.clients, rng, Counter(), []))
        base_rss = rss_mb(pid)
        print(f"after {args.warmup:g} s of warm-up: RSS {base_rss:.0f} MB", flush=True)
        t0 = time.monotonic()
        while time.monotonic() - t0 < args.minutes * 60:
            asyncio.run(traffic(stack.base, images, args.sample_s, args.clients, rng, tally, lat))
            samples.append((time.monotonic() - t0, rss_mb(pid)))
            print(f"{samples[-1][0]:6.0f} s  RSS {samples[-1][1]:.0f} MB  answers {sum(tally.values())}", flush=True)
        peak = rss_mb(pid, "VmHWM")
        alive = stack.procs[-1].poll() is None
    end_rss = samples[-1][1]
    growth = (end_rss - base_rss) / base_rss * 100
    statuses: Counter[int] = Counter()
    for (_, code), n in tally.items():
        statuses[code] += n
    kinds = sorted({k for k, _ in tally})
    rows = "\n".join(f"| {k} | " + ", ".join(f"{c}: {n}" for (kk, c), n in sorted(tally.items()) if kk == k) + " |"
                     for k in kinds)
    lat.sort()
    body = (f"{args.minutes:g} minutes of mixed traffic from {args.clients} clients after {args.warmup:g} s of "
            f"warm-up, embedded mode, default models (`{s.default_pose_model}`, `{s.default_detector}`), "
            f"{len(images)} real photos; one request in five malformed.\n\n"
            f"| RSS after warm-up | RSS at the end | growth | peak RSS (VmHWM) | answers | 5xx | server alive |\n"
            f"|---|---|---|---|---|---|---|\n"
            f"| {base_rss:.0f} MB | {end_rss:.0f} MB | {growth:+.1f} % | {peak:.0f} MB | {sum(tally.values())} | "
            f"{sum(n for c, n in statuses.items() if c >= 500)} | {'yes' if alive else 'NO'} |\n\n"
            f"RSS every {args.sample_s:g} s (MB): {', '.join(f'{r:.0f}' for _, r in samples)}\n\n"
            f"Good single images: p50 {statistics.median(lat):.0f} ms, p99 {lat[int(0.99 * (len(lat) - 1))]:.0f} ms "
            f"({len(lat)} requests).\n\n| request kind | answers by status |\n|---|---|\n{rows}\n")
    print(body)
    if not args.no_record:
        record("Soak: memory over a long mixed run", "posekd bench soak " + " ".join(argv or []), body)
    return 0 if alive and not any(c >= 500 for c in statuses) else 1
