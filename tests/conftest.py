from __future__ import annotations

import os
from pathlib import Path

import pytest

from service.settings import Settings
from service.shared import data_dir, shared_dir, teachers_dir

from .helpers import make_store

ROOT = Path(__file__).resolve().parent.parent
SHARED = shared_dir()
DATA = data_dir()
TEACHERS = teachers_dir()


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


REDIS_URL = os.environ.get("POSEKD_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def _redis_up(url: str) -> str | None:
    import redis
    try:
        redis.Redis.from_url(url, socket_connect_timeout=1).ping()
        return None
    except redis.RedisError as exc:
        return str(exc)


@pytest.fixture(scope="session")
def redis_url() -> str:
    """A real Redis server (POSEKD_TEST_REDIS_URL, default 127.0.0.1:6379; .ci/run starts one)."""
    problem = _redis_up(REDIS_URL)
    if problem:
        pytest.skip(f"no Redis at {REDIS_URL} ({problem}); set POSEKD_TEST_REDIS_URL or start redis-server")
    return REDIS_URL


@pytest.fixture
def redis_prefix(redis_url):
    """A key prefix of this test's own; every key under it is deleted afterwards."""
    import uuid

    import redis
    prefix = f"posekd-test-{uuid.uuid4().hex[:10]}"
    yield prefix
    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
    if keys:
        client.delete(*keys)
