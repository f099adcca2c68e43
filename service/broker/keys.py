"""Every Redis key, stream, group and field name PoseKD uses, in one place. All keys share a prefix
(``POSEKD_REDIS_PREFIX``, default ``posekd``) so several deployments can share one Redis."""
from __future__ import annotations

from dataclasses import dataclass

GROUP = "workers"  # the consumer group every worker joins


@dataclass(frozen=True)
class RedisKeys:
    prefix: str = "posekd"

    @property
    def requests(self) -> str:
        """The request stream: one entry per image. Finished entries are acknowledged and deleted,
        so its length is the work not yet answered (waiting + in a worker's hands)."""
        return f"{self.prefix}:requests"

    def replies(self, replica: str) -> str:
        """One reply stream per API replica; it expires when the replica is gone."""
        return f"{self.prefix}:replies:{replica}"

    def cancelled(self, request_id: str) -> str:
        """Set (with expiry) when the API stopped waiting for a request: workers skip its entries."""
        return f"{self.prefix}:cancelled:{request_id}"

    @property
    def videos(self) -> str:
        """The video job stream: one entry (``job``: id) per queued job."""
        return f"{self.prefix}:videos"

    @property
    def workers(self) -> str:
        """Sorted set of worker names scored by their last heartbeat (Unix seconds)."""
        return f"{self.prefix}:workers"


# fields of a request entry
F_REQUEST, F_INDEX, F_COUNT = "request", "i", "n"
F_POSE, F_DETECTOR = "pose", "det"
F_REPLY, F_DEADLINE, F_ENQUEUED = "reply", "deadline", "enq"
F_PARAMS, F_FORMAT, F_SHAPE, F_IMAGE = "params", "fmt", "shape", "img"
# fields of a reply entry
F_BODY = "body"
