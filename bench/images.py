"""``posekd bench images``: image throughput of the raw pipeline in-process vs the HTTP service at
saturating concurrency, and the service with dynamic batching on vs off — side by side in one run."""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

from service.shared import data_dir

from .common import ROOT, record, store_with_defaults


def load_images(data: Path, n: int) -> list[tuple[str, bytes]]:
    folders = [data / "opencv_samples", data / "unlabeled" / "images"]
    files = []
    for folder in folders:
        files += sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not files:
        raise SystemExit(f"no images under {data}; set POSEKD_DATA")
    files = files[:n]
    return [(p.name, p.read_bytes()) for p in files]


def bench_raw(images, store: Path, pose: str, det: str, rounds: int) -> dict:
    from service.engine import pipeline_for, sessions_for
    from service.images import decode_image
    from service.pipeline import ImageTask
    from service.settings import get_settings
    from service.store import ModelRegistry, ModelStore

    s = get_settings()
    reg = ModelRegistry(ModelStore(store), sessions_for(s))
    pipe = pipeline_for(s)
    pm, dm = reg.get(pose), reg.get(det)

    def one(data):
        im, scale, size, _ = decode_image(data, max_bytes=s.max_image_bytes, max_pixels=s.max_image_pixels,
                                       max_side=s.decode_max_side)
        return pipe.run(pm, dm, [ImageTask(im, min_score=s.min_score, max_people=s.max_people, scale=scale,
                                           size=size)])

    for _, data in images[:4]:
        one(data)
    lat = []
    t0 = time.perf_counter()
    for _ in range(rounds):
        for _, data in images:
            t = time.perf_counter()
            one(data)
            lat.append(time.perf_counter() - t)
    wall = time.perf_counter() - t0
    return {"rps": len(lat) / wall, "lat": lat}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def _load(base: str, images, rounds: int, concurrency: int) -> dict:
    import httpx

    ctype = {".png": "image/png"}
    work = [(n, d) for _ in range(rounds) for n, d in images]
    lat, errors = [], 0
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=concurrency)) as client:
        async def send(name, data):
            nonlocal errors
            t = time.perf_counter()
            r = await client.post(base + "/v1/pose", content=data,
                                  headers={"content-type": ctype.get(Path(name).suffix, "image/jpeg")})
            if r.status_code != 200:
                errors += 1
            return time.perf_counter() - t

        await asyncio.gather(*(send(n, d) for n, d in images[:concurrency]))  # warm up
        queue = list(work)

        async def worker():
            while queue:
                n, d = queue.pop()
                lat.append(await send(n, d))

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    return {"rps": len(lat) / wall, "lat": lat, "errors": errors}


@contextlib.contextmanager
def serving(env: dict[str, str]):
    """A `posekd serve` process with ``env`` on a free port, once it is ready: its base URL. Stopped
    (SIGTERM) on the way out."""
    import httpx

    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "service.cli", "serve", "--port", str(port)], env=env, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                if httpx.get(base + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        else:
            raise SystemExit("the service did not become ready")
        yield base
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)


def bench_service(images, store: Path, max_batch: int, rounds: int, concurrency: int) -> dict:
    env = {**os.environ, "POSEKD_MODEL_STORE": str(store), "POSEKD_MAX_BATCH": str(max_batch),
           "POSEKD_STORE_POLL_S": "0"}
    with serving(env) as base:
        return asyncio.run(_load(base, images, rounds, concurrency))


def _row(name: str, r: dict) -> str:
    lat = sorted(r["lat"])
    p50 = statistics.median(lat) * 1000
    p99 = lat[min(len(lat) - 1, int(0.99 * len(lat)))] * 1000
    return f"| {name} | {r['rps']:.2f} | {p50:.1f} | {p99:.1f} | {r.get('errors', 0)} |"


def main(argv: list[str] | None = None) -> int:
    from service.settings import get_settings

    s = get_settings()
    ap = argparse.ArgumentParser(prog="posekd bench images", description=__doc__)
    ap.add_argument("--data", type=Path, default=data_dir())
    ap.add_argument("--images", type=int, default=24, help="distinct images (opencv samples, then unlabeled photos)")
    ap.add_argument("--rounds", type=int, default=3, help="passes over the images per configuration")
    ap.add_argument("--concurrency", type=int, default=8, help="clients in flight against the service")
    ap.add_argument("--batch", type=int, default=8, help="max_batch for the batching-on run")
    ap.add_argument("--no-record", action="store_true", help="print only; do not append to bench/RESULTS.md")
    args = ap.parse_args(argv)

    import logging
    logging.getLogger("httpx").setLevel(logging.WARNING)
    images = load_images(args.data, args.images)
    store = store_with_defaults(s.model_store, s.default_pose_model, s.default_detector, s.teachers)
    print(f"{len(images)} images × {args.rounds} rounds; pose {s.default_pose_model}, detector "
          f"{s.default_detector}; store {store}", flush=True)
    raw = bench_raw(images, store, s.default_pose_model, s.default_detector, args.rounds)
    print(f"raw pipeline: {raw['rps']:.2f} img/s", flush=True)
    on = bench_service(images, store, args.batch, args.rounds, args.concurrency)
    print(f"service, batching on (max_batch={args.batch}): {on['rps']:.2f} img/s", flush=True)
    off = bench_service(images, store, 1, args.rounds, args.concurrency)
    print(f"service, batching off (max_batch=1): {off['rps']:.2f} img/s", flush=True)

    ratio, gain = on["rps"] / raw["rps"], on["rps"] / off["rps"]
    table = "\n".join([
        "| configuration | images/s | p50 ms | p99 ms | errors |", "|---|---|---|---|---|",
        _row("raw pipeline, in-process, one image at a time", raw),
        _row(f"HTTP service, {args.concurrency} clients, batching on (max_batch={args.batch}, "
             f"max_delay_ms={s.max_delay_ms:g})", on),
        _row(f"HTTP service, {args.concurrency} clients, batching off (max_batch=1)", off),
    ])
    summary = (f"{table}\n\n**service / raw = {ratio:.2f}** (goal ≥ 0.85); **batching gain = {gain:.2f}×** "
               f"(on / off). Models: pose `{s.default_pose_model}`, detector `{s.default_detector}`; "
               f"{len(images)} images × {args.rounds} rounds; ORT intra-op threads "
               f"{s.ort_intra_threads or 'default'}.")
    print("\n" + summary)
    if not args.no_record:
        cmd = "posekd bench images " + " ".join(argv or [])
        record("Images: service vs raw pipeline, batching on vs off", cmd.strip(), summary)
    return 0
