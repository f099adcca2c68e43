"""Shared benchmark plumbing: machine description, result recording, a store with the default models."""
from __future__ import annotations

import datetime as dt
import os
import platform
import subprocess
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "RESULTS.md"
# the photos of unlabeled/multi no training cache holds (the detectors and `pose-s` v5 learnt from the rest):
# `bench people`'s held-out set and the drift reference of `bench shadow`
HELD_OUT_MULTI = "[5::10]"


def held_out_multi_spec(data: Path | str) -> str:
    """The held-out photos as a data source (``folder:DIR[5::10]``)."""
    return f"folder:{Path(data) / 'unlabeled' / 'multi'}{HELD_OUT_MULTI}"


def held_out_multi(data: Path) -> list[Path]:
    from distill.data import read_source

    return [Path(r.path) for r in read_source(held_out_multi_spec(data))]


def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import onnxruntime as ort
    return (f"{cpu}, {os.cpu_count()} logical CPUs, Python {platform.python_version()}, "
            f"onnxruntime {ort.__version__} ({', '.join(ort.get_available_providers())})")


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def record(title: str, command: str, body: str) -> None:
    stamp = dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    text = (f"\n## {title} — {stamp}\n\n- machine: {machine()}\n- commit: {git_commit()}\n"
            f"- command: `{command}`\n\n{body.rstrip()}\n")
    if not RESULTS.exists():
        RESULTS.write_text("# Benchmark results\n\nAppended by the `posekd bench …` commands; newest last.\n")
    with open(RESULTS, "a") as f:
        f.write(text)


def store_with_defaults(store_root: Path, pose: str, detector: str, teachers: Path) -> Path:
    """The store to benchmark: the given one when it has both default models, else a temporary
    store with the teachers registered."""
    from service.store import ModelSpec, ModelStore
    from service.store.importer import import_teachers

    store = ModelStore(store_root)
    names = set(store.names())
    if ModelSpec.parse(pose).name in names and ModelSpec.parse(detector).name in names:
        return store_root
    tmp = Path(tempfile.mkdtemp(prefix="posekd-bench-")) / "store"
    import_teachers(ModelStore(tmp), teachers)
    return tmp
