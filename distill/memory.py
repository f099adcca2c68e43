"""Keep freed memory for the next training step.

glibc serves every allocation above its mmap threshold (at most 32 MB) with a fresh ``mmap`` and gives it
back to the kernel on ``free``, so a training step whose activations are hundreds of MB faults all of them
in again, zero-filled, every step (two thirds of a step's CPU time went to the kernel; docs/distill.md
has the measurement). With :func:`reuse_freed_memory` large blocks come from the heap and what a step
frees stays there."""
from __future__ import annotations

import ctypes
import logging

log = logging.getLogger("posekd.distill")

_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_MAX = -1, -2, -4  # glibc <malloc.h>


def reuse_freed_memory() -> bool:
    """Tell glibc's allocator not to use ``mmap`` for large blocks and not to trim the heap; True when it
    took effect (False off glibc, e.g. musl or macOS, where nothing changes)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    ok = all(mallopt(param, value) == 1 for param, value in ((_M_MMAP_MAX, 0),
                                                           (_M_TRIM_THRESHOLD, 2**31 - 1),
                                                           (_M_TOP_PAD, 256 << 20)))
    log.debug("glibc keeps freed memory for reuse: %s", ok)
    return ok
