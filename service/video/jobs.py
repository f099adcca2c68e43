"""Video jobs: their state, inputs and outputs, in one of two stores behind one interface.

- :class:`LocalJobStore` (embedded mode): a directory per job (``job.json``, the clip, ``result.json``,
  ``overlay.mp4``) under ``POSEKD_VIDEO_DIR``; jobs a restart interrupted are marked failed.
- :class:`RedisJobStore` (Redis mode): a hash per job plus keys for the clip, the result and the
  overlay, all expiring, so state and results survive an API restart. Queueing is not the store's:
  :class:`~service.broker.videos.RedisVideoQueue` puts the job id on a stream that workers read as a
  consumer group (a job whose worker died is taken over).

Both are synchronous (workers call them from their processing thread; the API from its thread pool)."""
from __future__ import annotations

import abc
import json
import shutil
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .. import scratch
from ..errors import PoseKDError
from ..names import is_job_id
from ..settings import RedisConfig

FINAL = ("succeeded", "failed", "cancelled")


class JobNotFound(PoseKDError):
    code, status = "job_not_found", 404


@dataclass
class Job:
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    status: str = "queued"
    progress: float = 0.0
    frames_done: int = 0
    frames_total: int = 0
    error: str | None = None
    created: float = field(default_factory=time.time)
    finished: float | None = None
    render: bool = False
    options: dict = field(default_factory=dict)  # model, detector (exact name:version), keyframe_interval, smoothing
    video: dict | None = None  # the clip as the API probed it (VideoInfo fields): workers need not probe again
    cancel_requested: bool = False
    owner: str | None = None  # with API keys on: a digest of the key that created it (only it, or an admin, sees it)

    def public(self) -> dict:
        return {"job_id": self.id, "status": self.status, "progress": round(self.progress, 4),
                "frames_done": self.frames_done, "frames_total": self.frames_total, "error": self.error,
                "render": self.render, "created": self.created, "finished": self.finished}


@dataclass(frozen=True)
class Blob:
    """A stored file as a route sends it: its size and its bytes in chunks (read as they are sent)."""
    size: int
    chunks: Iterable[bytes]

    @classmethod
    def of_file(cls, path: Path, chunk: int = 1 << 20) -> Blob:
        def read() -> Iterator[bytes]:
            with open(path, "rb") as f:
                while block := f.read(chunk):
                    yield block
        return cls(path.stat().st_size, read())


class JobStore(abc.ABC):
    ttl_s: float

    @abc.abstractmethod
    def create(self, job: Job, clip: Path) -> None:
        """Register a queued job and take the clip (the file is moved or copied in)."""

    @abc.abstractmethod
    def get(self, job_id: str) -> Job:
        """The job; JobNotFound when unknown or expired."""

    @abc.abstractmethod
    def update(self, job_id: str, **fields) -> None: ...

    @abc.abstractmethod
    def clip(self, job_id: str, into: Path) -> Path:
        """The uploaded clip as a local file (a copy under ``into`` when it lives elsewhere)."""

    @abc.abstractmethod
    def save_outputs(self, job_id: str, result: dict, overlay: Path | None) -> None: ...

    @abc.abstractmethod
    def result(self, job_id: str) -> bytes: ...

    @abc.abstractmethod
    def overlay(self, job_id: str) -> Blob | None:
        """The overlay MP4, to stream; None when the job has none (or it expired)."""

    @abc.abstractmethod
    def delete(self, job_id: str) -> None: ...

    def finish(self, job_id: str, status: str, error: str | None = None) -> None:
        self.update(job_id, status=status, error=error, finished=time.time())

    def checkpoint(self, job_id: str, frames: list[dict], state: bytes, done_before: int) -> None:
        """Add the results of ``frames`` (those after the first ``done_before``) and replace the run's
        state. The embedded service never hands a job to another process, so it keeps none."""
        return None

    def resume_point(self, job_id: str) -> tuple[list[dict], bytes] | None:
        """The frames and state of the last checkpoint; None when there is none."""
        return None


class HandedOver(PoseKDError):
    """Another worker has taken the job over and checkpoints it now: this one must stop."""


def _checked(job_id: str) -> str:
    """A job id as the service makes them (32 hex digits); anything else is a job that does not
    exist, never a path or a Redis key of another kind (``<id>:result``)."""
    if not is_job_id(job_id):
        raise JobNotFound(f"unknown job {str(job_id)[:80]!r} (job ids are 32 hexadecimal digits)")
    return job_id


# ---- embedded ----------------------------------------------------------------------------------
class LocalJobStore(JobStore):
    def __init__(self, root: Path | None, ttl_s: float = 3600.0):
        # unset: a directory of this process's own (two services must not share one: each marks the
        # other's running jobs as interrupted when it starts)
        self.owns_root = not root  # a directory of its own is removed by close()
        self.root = Path(root) if root else scratch.mkdtemp("posekd-videos-")
        self.root.mkdir(parents=True, exist_ok=True)
        self.ttl_s = ttl_s
        self._interrupted()

    def close(self) -> None:
        """At shutdown: a temporary directory this store made goes with it (its jobs cannot outlive
        the process anyway: a restart marks them interrupted)."""
        if self.owns_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def _dir(self, job_id: str) -> Path:
        return self.root / _checked(job_id)

    def _write(self, job: Job) -> None:
        path = self._dir(job.id) / "job.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(job)))
        tmp.replace(path)

    def _jobs(self):
        for path in self.root.glob("*/job.json"):
            try:
                yield Job(**json.loads(path.read_text()))
            except (OSError, ValueError, TypeError):
                continue

    def fail_unfinished(self, message: str) -> None:
        """Every queued or running job in this directory fails with ``message``: never left stuck."""
        for job in self._jobs():
            if job.status not in FINAL:
                job.status, job.error, job.finished = "failed", message, time.time()
                self._write(job)

    def _interrupted(self) -> None:
        self.fail_unfinished("interrupted by a service restart")

    def sweep(self) -> None:
        now = time.time()
        for job in self._jobs():
            if job.finished and now - job.finished > self.ttl_s:
                shutil.rmtree(self._dir(job.id), ignore_errors=True)

    def create(self, job: Job, clip: Path) -> None:
        self.sweep()
        folder = self._dir(job.id)
        folder.mkdir(parents=True)
        shutil.move(str(clip), folder / "clip")
        self._write(job)

    def get(self, job_id: str) -> Job:
        try:
            return Job(**json.loads((self._dir(job_id) / "job.json").read_text()))
        except (OSError, ValueError, TypeError):
            raise JobNotFound(f"unknown job {job_id!r}") from None

    def update(self, job_id: str, **fields) -> None:
        job = self.get(job_id)
        for key, value in fields.items():
            setattr(job, key, value)
        self._write(job)

    def clip(self, job_id: str, into: Path) -> Path:
        return self._dir(job_id) / "clip"

    def save_outputs(self, job_id: str, result: dict, overlay: Path | None) -> None:
        folder = self._dir(job_id)
        (folder / "result.json").write_text(json.dumps(result, separators=(",", ":")))
        if overlay is not None and overlay != folder / "overlay.mp4":
            shutil.move(str(overlay), folder / "overlay.mp4")
        (folder / "clip").unlink(missing_ok=True)

    def result(self, job_id: str) -> bytes:
        return (self._dir(job_id) / "result.json").read_bytes()

    def overlay(self, job_id: str) -> Blob | None:
        path = self._dir(job_id) / "overlay.mp4"
        return Blob.of_file(path) if path.exists() else None


    def delete(self, job_id: str) -> None:
        shutil.rmtree(self._dir(job_id), ignore_errors=True)


# ---- Redis mode --------------------------------------------------------------------------------
class RedisJobStore(JobStore):
    """Keys (prefix ``POSEKD_REDIS_PREFIX``): ``job:{id}`` hash, ``job:{id}:clip``, ``job:{id}:result``,
    ``job:{id}:overlay``, and while a job runs its checkpoint, ``job:{id}:frames`` (a list of finished
    frames' results) and ``job:{id}:state`` — state and results only; queueing is
    :class:`~service.broker.videos.RedisVideoQueue`'s."""

    PARTS = ("", "clip", "result", "overlay", "frames", "state")

    def __init__(self, config: RedisConfig, ttl_s: float = 3600.0):
        import redis
        # Any: redis-py types answers as bytes | str (decode_responses is a run-time choice); ours are bytes
        self.redis: Any = redis.Redis.from_url(config.url, socket_connect_timeout=config.connect_timeout_s,
                                               socket_timeout=30)
        self.prefix = config.prefix
        self.ttl_s = ttl_s

    def _key(self, job_id: str, part: str = "") -> str:
        return f"{self.prefix}:job:{_checked(job_id)}" + (f":{part}" if part else "")

    def _expire_all(self, pipe, job_id: str, seconds: float) -> None:
        for part in self.PARTS:
            pipe.expire(self._key(job_id, part), int(seconds))

    def create(self, job: Job, clip: Path) -> None:
        fields = {k: json.dumps(v) for k, v in asdict(job).items()}
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(self._key(job.id), mapping=fields)
            pipe.set(self._key(job.id, "clip"), clip.read_bytes())
            self._expire_all(pipe, job.id, self.ttl_s * 2)  # queued or running jobs get room
            pipe.execute()
        clip.unlink(missing_ok=True)

    def get(self, job_id: str) -> Job:
        raw = self.redis.hgetall(self._key(job_id))
        if not raw:
            raise JobNotFound(f"unknown job {job_id!r}")
        return Job(**{k.decode(): json.loads(v) for k, v in raw.items()})

    def update(self, job_id: str, **fields) -> None:
        if not self.redis.exists(self._key(job_id)):
            raise JobNotFound(f"unknown job {job_id!r}")
        self.redis.hset(self._key(job_id), mapping={k: json.dumps(v) for k, v in fields.items()})

    def finish(self, job_id: str, status: str, error: str | None = None) -> None:
        super().finish(job_id, status, error)
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.delete(self._key(job_id, "clip"), self._key(job_id, "frames"), self._key(job_id, "state"))
            self._expire_all(pipe, job_id, self.ttl_s)
            pipe.execute()

    def checkpoint(self, job_id: str, frames: list[dict], state: bytes, done_before: int) -> None:
        """Appended and replaced in one transaction, and only while the list still holds ``done_before``
        frames: a worker that was taken for dead but was only slow finds the heir's frames there and
        stops (:class:`HandedOver`) instead of mixing its own in."""
        import redis

        frames_key, state_key = self._key(job_id, "frames"), self._key(job_id, "state")
        with self.redis.pipeline(transaction=True) as pipe:
            try:
                pipe.watch(frames_key)
                if pipe.llen(frames_key) != done_before:
                    raise HandedOver(f"job {job_id} is checkpointed by another worker now")
                pipe.multi()
                pipe.rpush(frames_key, *(json.dumps(f, separators=(",", ":")) for f in frames))
                pipe.set(state_key, state)
                pipe.expire(frames_key, int(self.ttl_s * 2))
                pipe.expire(state_key, int(self.ttl_s * 2))
                pipe.execute()
            except redis.WatchError:
                raise HandedOver(f"job {job_id} is checkpointed by another worker now") from None

    def resume_point(self, job_id: str) -> tuple[list[dict], bytes] | None:
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.lrange(self._key(job_id, "frames"), 0, -1)
            pipe.get(self._key(job_id, "state"))
            frames, state = pipe.execute()
        if not frames or state is None:
            return None
        return [json.loads(f) for f in frames], state

    def clip(self, job_id: str, into: Path) -> Path:
        data = self.redis.get(self._key(job_id, "clip"))
        if data is None:
            raise JobNotFound(f"the clip of job {job_id} is gone (expired)")
        path = into / f"{job_id}.clip"
        path.write_bytes(data)
        return path

    def save_outputs(self, job_id: str, result: dict, overlay: Path | None) -> None:
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(self._key(job_id, "result"), json.dumps(result, separators=(",", ":")))
            if overlay is not None:
                pipe.set(self._key(job_id, "overlay"), overlay.read_bytes())
            pipe.execute()

    def result(self, job_id: str) -> bytes:
        data = self.redis.get(self._key(job_id, "result"))
        if data is None:
            raise JobNotFound(f"job {job_id} has no result (expired)")
        return data

    def overlay(self, job_id: str) -> Blob | None:
        data = self.redis.get(self._key(job_id, "overlay"))
        return Blob(len(data), [data]) if data is not None else None

    def delete(self, job_id: str) -> None:
        self.redis.delete(*(self._key(job_id, p) for p in self.PARTS))
