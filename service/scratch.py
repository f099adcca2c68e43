"""Temporary files, one folder per process: ``<base>/posekd-<pid>-<start>/`` (``base``:
``POSEKD_SCRATCH_DIR``, else the system's temporary folder). Uploads being checked, a worker's copy of
the clip it tracks and an embedded server's video jobs live there.

A process killed with SIGKILL cannot clean up after itself, so every serving process, when it starts,
removes the folders of processes that are no longer running (:func:`sweep`). ``<start>`` is the
process's start time as the kernel counts it, so a new process that reuses a dead one's pid does not
keep the dead one's files alive."""
from __future__ import annotations

import atexit
import logging
import os
import re
import shutil
import tempfile
import threading
from pathlib import Path

log = logging.getLogger("posekd.scratch")

_PATTERN = re.compile(r"^posekd-(\d+)-(\d+)$")
_lock = threading.Lock()
_base: Path | None = None
_mine: Path | None = None


def _start_time(pid: int) -> int:
    """The kernel's start time of ``pid`` (clock ticks since boot; 0 where /proc is not there)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    return int(stat.rsplit(")", 1)[1].split()[19])


def _alive(pid: int, start: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return start == 0 or _start_time(pid) in (0, start)


def base() -> Path:
    return _base or Path(tempfile.gettempdir())


def configure(folder: Path | str | None) -> None:
    """Where the per-process folders go (``POSEKD_SCRATCH_DIR``; None: the system's temp folder)."""
    global _base, _mine
    with _lock:
        _base = Path(folder) if folder else None
        _mine = None


def process_dir() -> Path:
    """This process's folder (made on first use, removed at a clean exit)."""
    global _mine
    with _lock:
        if _mine is None or not _mine.is_dir():
            root = base()
            root.mkdir(parents=True, exist_ok=True)
            _mine = root / f"posekd-{os.getpid()}-{_start_time(os.getpid())}"
            _mine.mkdir(exist_ok=True)
            atexit.register(shutil.rmtree, _mine, True)
        return _mine


def remove_mine() -> None:
    """Remove this process's folder now (at shutdown: uvicorn re-raises SIGTERM after a graceful stop,
    so exit handlers do not run)."""
    global _mine
    with _lock:
        if _mine is not None:
            shutil.rmtree(_mine, ignore_errors=True)
            _mine = None


def mkdtemp(prefix: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=prefix, dir=process_dir()))


def temporary_directory(prefix: str) -> tempfile.TemporaryDirectory:
    return tempfile.TemporaryDirectory(prefix=prefix, dir=process_dir())


def sweep() -> list[Path]:
    """Remove the folders of processes that have exited; returns what was removed."""
    root = base()
    removed: list[Path] = []
    try:
        entries = list(root.iterdir())
    except OSError:
        return removed
    for entry in entries:
        m = _PATTERN.match(entry.name)
        if not m or not entry.is_dir() or _alive(int(m.group(1)), int(m.group(2))):
            continue
        shutil.rmtree(entry, ignore_errors=True)
        if not entry.exists():
            removed.append(entry)
    if removed:
        log.info("removed %d folder(s) of temporary files left by processes that are gone", len(removed))
    return removed


__all__ = ["base", "configure", "mkdtemp", "process_dir", "remove_mine", "sweep", "temporary_directory"]
