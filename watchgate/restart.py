"""The restart policy shared by upstreams, workers and the audit writer."""

from __future__ import annotations

import collections
import random
import time
from collections.abc import Callable

from watchgate.config.model import RestartPolicyConfig

JITTER_FRACTION = 0.2


class RestartPolicy:
    """Exponential backoff with jitter, reset after a healthy run, and a give-up limit.

    More than `max_restarts` failures within `restart_window` seconds means the
    process is given up (FATAL) until `reset()`. A commanded stop is not a
    failure and must not be reported here.
    """

    def __init__(
        self,
        config: RestartPolicyConfig,
        clock: Callable[[], float] = time.monotonic,
        uniform: Callable[[float, float], float] = random.uniform,
    ):
        self._config = config
        self._clock = clock
        self._uniform = uniform
        self._failures: collections.deque[float] = collections.deque()
        self._started_at: float | None = None

    @property
    def failure_count(self) -> int:
        return len(self._failures)

    def started(self) -> None:
        self._started_at = self._clock()

    def failed(self) -> float | None:
        """Record a crash or a failed start; return the delay before the next start, or None to give up."""
        now = self._clock()
        if self._started_at is not None and now - self._started_at >= self._config.healthy_after:
            self._failures.clear()
        self._started_at = None
        self._failures.append(now)
        while self._failures and now - self._failures[0] > self._config.restart_window:
            self._failures.popleft()
        if len(self._failures) > self._config.max_restarts:
            return None
        delay = min(self._config.backoff_max, self._config.backoff_initial * 2 ** (len(self._failures) - 1))
        return delay * self._uniform(1 - JITTER_FRACTION, 1 + JITTER_FRACTION)

    def reset(self) -> None:
        self._failures.clear()
        self._started_at = None
