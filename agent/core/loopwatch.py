"""How long each callback holds the event loop: the 50 ms budget of DESIGN.md, watched.

Everything of the agent runs on one asyncio loop, so a handler that computes for 200 ms delays a
fire alarm by 200 ms. asyncio's own slow-callback detection (debug mode) does this check, but
debug mode also records a stack for every scheduled callback, which costs more than the agent's
whole work; this does only the timing, the same way: around ``Handle._run``, the one place every
callback and every task step of every loop passes through.

The production agent measures wall-clock time (what a fire alarm waits for); the test suite sets
``EDGE_AGENT_LOOP_CLOCK=cpu`` and measures the loop thread's CPU time, so that two shared cores
busy with brokers and simulators do not turn a preempted 5 ms callback into a failure. Either way
a callback over budget is counted, the worst are kept with what ran, and one warning a minute
says so. ``edge-agent status`` and the ``metrics`` topic show the figures. The agent watches its
own loop only (a simulator's loop beside it in the demo's process is not its budget); the test
suite watches every loop of its process but those left out with :func:`exempt`, a worker loop on
a thread of its own (the SNMP client's), for whose callbacks nothing on the agent's loop waits,
only for the GIL.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from agent.core.ratelimit import Throttle

log = logging.getLogger("agent.loop")

BUDGET_S = 0.050
CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.thread_time}
_ORIGINAL_RUN = asyncio.events.Handle._run


class LoopWatch:
    """``loops``: the loops watched; None for every loop of the process but the exempt ones (the
    test suite's choice). The agent watches its own loop only, so that simulators running in its
    process (the demo's) do not count against it."""

    def __init__(self, budget_s: float = BUDGET_S, clock: str = "wall", *, every_loop: bool = False):
        if clock not in CLOCKS:
            raise ValueError(f"loop watch clock {clock!r}: expected one of {', '.join(CLOCKS)}")
        self.loops: set[asyncio.AbstractEventLoop] | None = None if every_loop else set()
        self.budget_s = budget_s
        self.clock_name = clock
        self.clock = CLOCKS[clock]
        self.callbacks = 0
        self.over_budget = 0
        self.max_s = 0.0
        self.max_what: str | None = None   # the longest callback so far, in words
        self.worst: deque[dict[str, Any]] = deque(maxlen=8)   # the latest callbacks over budget
        self._throttle = Throttle()

    def include(self, loop: asyncio.AbstractEventLoop) -> None:
        """Watch ``loop`` (nothing to do when every loop is watched)."""
        if self.loops is not None:
            self.loops.add(loop)

    def over(self, handle: asyncio.Handle, seconds: float) -> None:
        self.over_budget += 1
        what = describe(handle)
        self.worst.append({"ms": round(seconds * 1000, 1), "callback": what,
                           "thread": threading.current_thread().name, "ts": time.time_ns() // 1_000_000})
        self._throttle.warn(log, "over", "a callback held the event loop for %.0f ms (%s time; budget %.0f ms): %s",
                            seconds * 1000, self.clock_name, self.budget_s * 1000, what)

    def as_dict(self) -> dict[str, Any]:
        return {"clock": self.clock_name, "budget_ms": round(self.budget_s * 1000), "callbacks": self.callbacks,
                "over_budget": self.over_budget, "max_callback_ms": round(self.max_s * 1000, 1),
                "max_callback": self.max_what, "worst": list(self.worst)}

    def reset(self) -> None:
        self.callbacks = self.over_budget = 0
        self.max_s = 0.0
        self.max_what = None
        self.worst.clear()


_watch: LoopWatch | None = None
# Loops of the process that are not the agent's and carry no budget: a worker loop on a thread of its
# own, where a library computes for a while (the SNMP client's) and nothing waits on it but its callers.
# (A plain set, checked for every callback: loops exempted live as long as the process.)
_exempt: set[asyncio.AbstractEventLoop] = set()


def exempt(loop: asyncio.AbstractEventLoop) -> None:
    """Leave ``loop`` out of the watch (see ``_exempt``)."""
    _exempt.add(loop)


def _timed_run(handle: asyncio.Handle) -> None:
    watch = _watch
    loop = handle._loop   # type: ignore[attr-defined]
    if watch is None or loop in _exempt or (watch.loops is not None and loop not in watch.loops):
        return _ORIGINAL_RUN(handle)
    clock = watch.clock
    started = clock()
    try:
        _ORIGINAL_RUN(handle)
    finally:
        took = clock() - started
        watch.callbacks += 1
        if took > watch.max_s:   # rare once warm: describing the handle costs only then
            watch.max_s = took
            watch.max_what = describe(handle)
        if took > watch.budget_s:
            watch.over(handle, took)


def install(budget_s: float = BUDGET_S, clock: str | None = None, *, every_loop: bool = False) -> LoopWatch:
    """Time callbacks from now on: of the loops the watch includes, or of every loop of the process
    (``every_loop``, the test suite's). Idempotent: returns the watch installed first."""
    global _watch
    if _watch is None:
        _watch = LoopWatch(budget_s, clock or os.environ.get("EDGE_AGENT_LOOP_CLOCK", "wall"), every_loop=every_loop)
        asyncio.events.Handle._run = _timed_run   # type: ignore[method-assign]
    return _watch


def current() -> LoopWatch | None:
    return _watch


def uninstall() -> None:
    global _watch
    _watch = None
    asyncio.events.Handle._run = _ORIGINAL_RUN   # type: ignore[method-assign]


def describe(handle: asyncio.Handle) -> str:
    """What a callback was, in words: the task and where it now waits, or the function."""
    callback = getattr(handle, "_callback", None)
    owner = getattr(callback, "__self__", None)
    if isinstance(owner, asyncio.Task):
        coro = owner.get_coro()
        frame = getattr(coro, "cr_frame", None)
        where = f" (now at {frame.f_code.co_filename.rsplit('/', 2)[-2:][-1]}:{frame.f_lineno})" if frame else ""
        return f"task {owner.get_name()} {getattr(coro, '__qualname__', coro)!s}{where}"
    name = getattr(callback, "__qualname__", None) or repr(callback)
    module = getattr(callback, "__module__", None)
    return f"{module}.{name}" if module else str(name)[:200]
