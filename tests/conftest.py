from __future__ import annotations

import os
from pathlib import Path

import pytest

from service.settings import Settings

from .helpers import make_store

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
DATA = Path(os.environ.get("POSEKD_DATA", SHARED / "data"))
TEACHERS = Path(os.environ.get("POSEKD_TEACHERS", SHARED / "teachers"))


def pytest_collection_modifyitems(config, items):
    have_data = DATA.is_dir() and TEACHERS.is_dir()
    skip = pytest.mark.skip(reason=f"needs ../shared data and teachers ({DATA}, {TEACHERS}); not present")
    for item in items:
        if "data" in item.keywords and not have_data:
            item.add_marker(skip)


@pytest.fixture
def store(tmp_path):
    return make_store(tmp_path / "store")


@pytest.fixture
def settings(store) -> Settings:
    return Settings(model_store=store.root, default_pose_model="tiny-pose", default_detector="tiny-det",
                    store_poll_s=0, max_delay_ms=2, api_keys=[], admin_api_keys=[], ort_intra_threads=1,
                    min_score=0.0)
