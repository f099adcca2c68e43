"""How long the long-running Redis loops (the API's reply reader, a worker's stream reader, its video
consumer) wait after a failure before trying again: redis-py's own exponential backoff with jitter, from
0.1 s up to 2 s, back to the start after a success. One command that must not be lost to a short blip (a
worker's replies) is retried with redis-py's ``Retry`` instead (:func:`retrying`)."""
from __future__ import annotations

from redis.backoff import EqualJitterBackoff


class Backoff:
    def __init__(self, base: float = 0.1, cap: float = 2.0):
        self._policy = EqualJitterBackoff(cap=cap, base=base)
        self.failures = 0

    def next(self) -> float:
        """The wait after one more failure in a row."""
        self.failures += 1
        return self._policy.compute(self.failures)

    def reset(self) -> None:
        self.failures = 0


def retrying(attempts: int = 4, base: float = 0.2, cap: float = 1.6):
    """redis-py's asyncio ``Retry``: ``attempts`` tries in all, on any Redis error, with exponential waits."""
    from redis.asyncio.retry import Retry
    from redis.backoff import ExponentialBackoff
    from redis.exceptions import RedisError

    return Retry(ExponentialBackoff(cap=cap, base=base), attempts - 1, supported_errors=(RedisError,))
