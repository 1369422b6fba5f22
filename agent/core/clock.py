"""Time as the agent's code reads it, injected, so that scheduling, backoff, timeouts and holds can
be tested on virtual time instead of waiting for the wall clock.

Runtime code takes a :class:`Clock` (default :data:`SYSTEM`) and asks it for ``monotonic()``
(intervals, deadlines), ``time()`` (wall-clock seconds for timestamps) and ``sleep()``. A test gives
a :class:`VirtualClock` and moves it on with ``await clock.advance(seconds)``: every sleeper whose
time has come wakes, in order, and the loop runs what they started before time moves on.
Sockets and threads still run on real time: virtual time is for the logic between them.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time


class Clock:
    """The real clocks."""

    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()

    def now_ms(self) -> int:
        """Wall-clock UTC epoch milliseconds, the contract's timestamps."""
        return int(self.time() * 1000)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


SYSTEM = Clock()


class VirtualClock(Clock):
    """Time that moves only when told to. ``time()`` starts at ``start`` (epoch seconds) and moves
    with ``monotonic()``."""

    def __init__(self, start: float = 1_796_400_000.0):
        self._now = 0.0
        self._epoch = start
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    def monotonic(self) -> float:
        return self._now

    def time(self) -> float:
        return self._epoch + self._now

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        future = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._now + seconds, next(self._order), future))
        await future

    async def advance(self, seconds: float) -> None:
        """Move time on by ``seconds``, waking each sleeper at its time (and letting what it
        starts run) before moving further."""
        target = self._now + seconds
        await _settle()
        while self._sleepers and self._sleepers[0][0] <= target:
            due, _, future = heapq.heappop(self._sleepers)
            self._now = max(self._now, due)
            if not future.done():
                future.set_result(None)
            await _settle()
        self._now = target
        await _settle()

    @property
    def sleepers(self) -> int:
        """Sleeps waiting to be woken (cancelled ones included until their time)."""
        return sum(1 for _, _, future in self._sleepers if not future.done())


async def _settle(turns: int = 20) -> None:
    """A few turns of the loop: what woke up runs until it waits again."""
    for _ in range(turns):
        await asyncio.sleep(0)
