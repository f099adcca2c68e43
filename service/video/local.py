"""Embedded mode: the video queue is threads of the API process."""
from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor

from ..broker.videos import VideoQueue
from .job import Stopping, VideoConfig, process
from .jobs import LocalJobStore

log = logging.getLogger("posekd.video")


class LocalRunner(VideoQueue):
    """Embedded mode: the video queue is ``workers`` threads in the API process."""

    def __init__(self, store: LocalJobStore, config: VideoConfig, registry, pipeline, workers: int = 1):
        self.store, self.config, self.registry, self.pipeline = store, config, registry, pipeline
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="posekd-video")
        self._stopping = False

    def submit(self, job_id: str) -> None:
        self._pool.submit(self._run, job_id)

    def _run(self, job_id: str) -> None:
        try:
            process(self.store, job_id, self.config, self.registry, self.pipeline, stopping=lambda: self._stopping)
        except Stopping:
            self.store.finish(job_id, "failed", "the service shut down while the job ran; submit it again")
        except Exception:
            log.exception("video job %s could not be finished", job_id)

    def stop(self) -> None:
        """Queued jobs fail with a clear error; a running one stops at its next frame."""
        self._stopping = True
        self._pool.shutdown(wait=True, cancel_futures=True)
        self.store.fail_unfinished("the service shut down before the job ran; submit it again")
        self.store.close()
