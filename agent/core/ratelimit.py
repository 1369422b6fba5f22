"""Rate limits the whole agent shares: a token bucket, and a throttle for repeated log lines."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

LOG_EVERY_S = 60.0   # the same complaint at most this often, by default


class Throttle:
    """``ready(key)`` is True at most once every ``every`` seconds per key; the calls it turned
    down meanwhile are counted, so the next message can say how many were left out."""

    __slots__ = ("every", "_clock", "_last", "_held")

    def __init__(self, every: float = LOG_EVERY_S, clock: Callable[[], float] = time.monotonic):
        self.every = every
        self._clock = clock
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def ready(self, key: str = "") -> bool:
        now = self._clock()
        last = self._last.get(key)
        if last is not None and now - last < self.every:
            self._held[key] = self._held.get(key, 0) + 1
            return False
        if len(self._last) > 1024:   # keys made from input must not grow this without bound
            self._last.clear()
        self._last[key] = now
        return True

    def held(self, key: str = "") -> int:
        """How many calls were turned down since the last one let through (and reset the count)."""
        return self._held.pop(key, 0)

    def warn(self, logger: logging.Logger, key: str, message: str, *args: object) -> None:
        """``logger.warning`` at most once every ``every`` seconds per key, saying how many were held."""
        if self.ready(key):
            held = self.held(key)
            if held:
                message += " (and %d more like it since the last report)"
                args = (*args, held)
            logger.warning(message, *args, stacklevel=2)


class TokenBucket:
    """``take()`` is True at most ``rate`` times a second on average, ``burst`` (default: one
    second's worth, at least 1) at once."""

    __slots__ = ("rate", "capacity", "tokens", "at", "_clock")

    def __init__(self, rate: float, burst: float | None = None, clock: Callable[[], float] = time.monotonic):
        self.rate = rate
        self.capacity = burst if burst is not None else max(1.0, rate)
        self.tokens = self.capacity
        self._clock = clock
        self.at = clock()

    def take(self) -> bool:
        now = self._clock()
        self.tokens = min(self.capacity, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False
