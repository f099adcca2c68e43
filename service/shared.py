"""Where the data and teachers that sit beside a checkout are: ``../shared`` (``POSEKD_SHARED``), its
``data/`` (``POSEKD_DATA``) and ``teachers/`` (``POSEKD_TEACHERS``). One place for the rule the
benchmarks, the distillation tools and the tests all follow."""
from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def shared_dir() -> Path:
    return Path(os.environ.get("POSEKD_SHARED", REPO.parent / "shared"))


def data_dir() -> Path:
    return Path(os.environ.get("POSEKD_DATA", shared_dir() / "data"))


def teachers_dir() -> Path:
    return Path(os.environ.get("POSEKD_TEACHERS", shared_dir() / "teachers"))


__all__ = ["data_dir", "shared_dir", "teachers_dir"]
