"""Time as the agent's code reads it, injected, so that scheduling, backoff, timeouts and holds can
be tested on virtual time instead of waiting for the wall clock.

Runtime code takes a :class:`Clock` (default :data:`SYSTEM`) and asks it for ``monotonic()``
(intervals, deadlines), ``time()`` (wall-clock seconds for timestamps) and ``sleep()``. A test gives
a :class:`VirtualClock` and moves it on with ``await clock.advance(seconds)``: every sleeper whose
time has come wakes, in order, and the loop runs what they started before time moves on.
Sockets and threads still run on real time: virtual time is for the logic between them. For
code whose wake-ups do real I/O before it sleeps again (a poll over a socket), a test moves time
with ``run_for``/``run_until`` instead: after each wake they wait, in real time, until that code is
asleep on the clock again, so no wake-up is skipped while a request is still on the wire.

What stays on real time on purpose: timeouts guarding I/O (a socket that does not answer, a
library call that hangs). Virtual time does not pass while a request is on the wire, so a virtual
timeout there would never fire.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


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

    async def wait_for(self, awaitable: Awaitable[T], timeout: float) -> T:
        """``asyncio.wait_for`` on this clock's time: the awaitable's result, or TimeoutError (and
        the awaitable cancelled) when ``timeout`` seconds pass first.

        Not ``asyncio.wait_for`` itself: on Python 3.11 it swallows the caller's cancellation when
        the awaitable finishes at the same moment (CPython gh-86296), and a loop around it (the
        signal priority watchdog, poked just before the runner was cancelled) then never ends."""
        task = asyncio.ensure_future(awaitable)
        try:
            if timeout <= 0:
                await asyncio.sleep(0)   # as asyncio.wait_for: done at once, or timed out
            else:
                await asyncio.wait({task}, timeout=timeout)
        finally:
            if not task.done():
                task.cancel()            # timed out, or the caller was cancelled
        if not task.done() or task.cancelled():
            await asyncio.gather(task, return_exceptions=True)
            raise TimeoutError
        return task.result()


SYSTEM = Clock()


class VirtualClock(Clock):
    """Time that moves only when told to. ``time()`` starts at ``start`` (epoch seconds) and moves
    with ``monotonic()``."""

    def __init__(self, start: float = 1_796_400_000.0):
        self._now = 0.0
        self._epoch = start
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()
        self._slept_event: tuple[asyncio.AbstractEventLoop, asyncio.Event] | None = None

    def monotonic(self) -> float:
        return self._now

    def time(self) -> float:
        return self._epoch + self._now

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        await self._wake_at(self._now + seconds)

    async def wait_for(self, awaitable: Awaitable[T], timeout: float) -> T:
        task = asyncio.ensure_future(awaitable)
        if timeout <= 0:
            await asyncio.sleep(0)   # as asyncio.wait_for: done at once, or timed out
        else:
            deadline = self._wake_at(self._now + timeout)
            try:
                await asyncio.wait({task, deadline}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                deadline.cancel()
                if not task.done():
                    task.cancel()   # timed out, or the caller was cancelled
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            raise TimeoutError
        return task.result()

    def _wake_at(self, due: float) -> asyncio.Future[None]:
        future = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (due, next(self._order), future))
        self._slept().set()
        return future

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

    async def run_for(self, seconds: float, *, sleepers: int = 1, within: float = 10.0) -> None:
        """Move time on by ``seconds`` as :meth:`advance` does, for code whose wake-ups do real I/O
        (a request over a socket, work in a thread) before it sleeps again: first, and after each
        wake, wait in real time until ``sleepers`` sleeps are pending again (every task of the code
        under test is back asleep on the clock). TimeoutError when that takes more than ``within``
        real seconds: the code is stuck on something, or a task ended."""
        await self._run(seconds, None, sleepers, within)

    async def run_until(self, condition: Callable[[], object], limit: float, *, sleepers: int = 1,
                        within: float = 10.0, what: str = "the condition") -> float:
        """Run on as :meth:`run_for` does until ``condition()`` holds (checked whenever the code
        under test is asleep); returns the virtual seconds it took. AssertionError when ``limit``
        virtual seconds pass first."""
        started = self._now
        if not await self._run(limit, condition, sleepers, within):
            raise AssertionError(f"{what}: not met within {limit:g}s of virtual time")
        return self._now - started

    async def _run(self, seconds: float, condition: Callable[[], object] | None, sleepers: int,
                   within: float) -> bool:
        target = self._now + seconds
        await self._quiet(sleepers, within)
        while condition is None or not condition():
            if not self._sleepers or self._sleepers[0][0] > target:
                if condition is None:
                    self._now = target
                    await _settle()
                return condition is None
            due, _, future = heapq.heappop(self._sleepers)
            if future.done():   # cancelled while it slept
                continue
            self._now = max(self._now, due)
            future.set_result(None)
            await self._quiet(sleepers, within)
        return True

    async def _quiet(self, sleepers: int, within: float) -> None:
        """Wait (real time, at most ``within`` s) until ``sleepers`` sleeps are pending."""
        await _settle()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while self.sleepers < sleepers:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError(f"at {self._now:g}s of virtual time, {self.sleepers} of {sleepers} expected "
                                   f"sleeps pending after {within:g}s of real time: the code under test is busy "
                                   "or stuck (a task ended, or real I/O did not finish)")
            slept = self._slept()
            slept.clear()
            try:
                await asyncio.wait_for(slept.wait(), remaining)
            except TimeoutError:
                pass
            await _settle()

    def _slept(self) -> asyncio.Event:
        """Set whenever a sleep begins (one event per loop: a clock may outlive one asyncio.run)."""
        loop = asyncio.get_running_loop()
        if self._slept_event is None or self._slept_event[0] is not loop:
            self._slept_event = (loop, asyncio.Event())
        return self._slept_event[1]

    @property
    def sleepers(self) -> int:
        """Sleeps waiting to be woken (cancelled ones included until their time)."""
        return sum(1 for _, _, future in self._sleepers if not future.done())


async def _settle(turns: int = 20) -> None:
    """A few turns of the loop: what woke up runs until it waits again."""
    for _ in range(turns):
        await asyncio.sleep(0)
