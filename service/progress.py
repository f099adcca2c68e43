"""A one-line progress bar on stderr, for the offline commands (`posekd video`, `posekd pose`)."""
from __future__ import annotations

import sys
import time


class Progress:
    """``bar(done, total, label)`` redraws the line (at most every 0.2 s, and always at the end) with
    the count, the rate in ``unit``s per second and an optional label; ``close()`` ends the line."""

    def __init__(self, unit: str = "frames", rate: str = "fps", stream=sys.stderr):
        self.unit, self.rate, self.stream = unit, rate, stream
        self.t0, self.last = time.perf_counter(), 0.0

    def __call__(self, done: int, total: int, label: str = "") -> None:
        now = time.perf_counter()
        if now - self.last < 0.2 and done < total:
            return
        self.last = now
        speed = done / max(now - self.t0, 1e-9)
        width = 30
        filled = int(width * done / max(total, 1))
        self.stream.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} {self.unit}  "
                          f"{speed:.1f} {self.rate}" + (f"  {label[:40]:<40}" if label else ""))
        self.stream.flush()

    def close(self) -> None:
        self.stream.write("\n")
