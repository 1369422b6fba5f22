"""The clocks runtime code reads time from (agent/core/clock.py): the virtual one wakes sleepers in
order, times out waits, and, for code that does real I/O between its sleeps, waits for it to be
asleep again before moving time on."""

from __future__ import annotations

import asyncio
import time

import pytest

from agent.core.clock import SYSTEM, VirtualClock
from tests.fakes import next_turn


def test_sleepers_wake_in_time_order_and_see_their_own_time():
    async def scenario() -> None:
        clock = VirtualClock()
        woke: list[tuple[str, float]] = []

        async def sleeper(name: str, seconds: float) -> None:
            await clock.sleep(seconds)
            woke.append((name, clock.monotonic()))

        tasks = [asyncio.create_task(sleeper(n, s)) for n, s in (("c", 3.0), ("a", 1.0), ("b", 2.0))]
        await clock.advance(1.5)
        assert woke == [("a", 1.0)] and clock.monotonic() == 1.5
        await clock.advance(10)
        assert woke == [("a", 1.0), ("b", 2.0), ("c", 3.0)] and clock.monotonic() == 11.5
        assert clock.time() == 1_796_400_000.0 + 11.5 and clock.now_ms() == 1_796_400_011_500
        await asyncio.gather(*tasks)

    asyncio.run(scenario())


def test_wait_for_on_virtual_time_times_out_or_returns_the_result():
    async def scenario() -> None:
        clock = VirtualClock()
        event = asyncio.Event()
        waiting = asyncio.create_task(clock.wait_for(event.wait(), 5.0))
        await clock.advance(4.9)
        assert not waiting.done()
        await clock.advance(0.2)
        with pytest.raises(TimeoutError):
            await waiting
        assert clock.sleepers == 0

        waiting = asyncio.create_task(clock.wait_for(event.wait(), 5.0))
        await clock.advance(1.0)
        event.set()
        assert await waiting is True
        assert clock.sleepers == 0, "the deadline of a wait that ended is not left pending"

        event.clear()
        with pytest.raises(TimeoutError):
            await clock.wait_for(event.wait(), 0)   # as asyncio.wait_for: not done at once

        waiting = asyncio.create_task(clock.wait_for(event.wait(), 5.0))
        await next_turn()
        waiting.cancel()   # the caller cancelled: CancelledError, not TimeoutError
        with pytest.raises(asyncio.CancelledError):
            await waiting

    asyncio.run(scenario())


def test_system_clock_wait_for_is_asyncio_wait_for():
    async def scenario() -> None:
        with pytest.raises(TimeoutError):
            await SYSTEM.wait_for(asyncio.Event().wait(), 0.01)
        async def answer() -> str:
            return "done"
        assert await SYSTEM.wait_for(answer(), 1) == "done"

    asyncio.run(scenario())


def test_run_for_waits_for_real_io_between_wakes():
    """A loop that sleeps on the clock and does 30 ms of work in a thread after each wake: run_for
    wakes it at every tick, not only at those that fall between two 20-turn settles."""

    async def scenario() -> None:
        clock = VirtualClock()
        ticks: list[float] = []

        async def poller() -> None:
            while True:
                await clock.sleep(1.0)
                await asyncio.get_running_loop().run_in_executor(None, time.sleep, 0.03)
                ticks.append(clock.monotonic())

        task = asyncio.create_task(poller())
        await clock.run_for(5.0)
        assert ticks == [1.0, 2.0, 3.0, 4.0, 5.0] and clock.monotonic() == 5.0
        took = await clock.run_until(lambda: len(ticks) == 8, 10.0)
        assert took == 3.0 and clock.monotonic() == 8.0
        with pytest.raises(AssertionError, match="never: not met within 2s"):
            await clock.run_until(lambda: False, 2.0, what="never")
        task.cancel()
        # a task that ended is never asleep again: said so instead of waiting forever
        with pytest.raises(TimeoutError, match="busy or stuck"):
            await clock.run_for(1.0, within=0.2)

    asyncio.run(scenario())


def test_system_wait_for_never_swallows_a_cancellation():
    """asyncio.wait_for on Python 3.11 returns the awaitable's result when it finished in the same
    step the caller was cancelled (CPython gh-86296): a loop around it (the signal priority
    watchdog, poked just before its runner was cancelled) then never ended. Clock.wait_for must
    let the cancellation through."""
    async def scenario() -> str:
        event = asyncio.Event()

        async def watchdog() -> None:
            while True:
                try:
                    await SYSTEM.wait_for(event.wait(), 1.0)
                except TimeoutError:
                    pass
                event.clear()

        task = asyncio.create_task(watchdog())
        await asyncio.sleep(0.01)
        event.set()                 # poked ...
        await asyncio.sleep(0)      # ... the event's waiter is done ...
        task.cancel()               # ... when the cancellation lands
        try:
            await asyncio.wait_for(task, 2)
        except asyncio.CancelledError:
            return "cancelled"
        except TimeoutError:
            return "the cancellation was swallowed"
        return "ended"

    assert asyncio.run(scenario()) == "cancelled"
