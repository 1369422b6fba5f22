"""The fakes the tests share: a sink that records what a driver hands to the agent, an actuator
that records what a priority manager asks of a controller, a runner that does nothing, and the
helpers that wait for a condition instead of for a stretch of the wall clock.

Waiting: on virtual time, move a :class:`~agent.core.clock.VirtualClock` on (``advance``,
``run_for``, ``run_until``); where something really happens in another process, a thread or over a
socket, wait for the condition (``until`` on a loop, ``eventually`` off it), never for a fixed
stretch of time.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

from agent.core.clock import SYSTEM, Clock
from agent.core.driver import HoldsForCentre, Runner
from agent.core.model import Event, EvidenceFile, Reading
from agent.core.state import StateStore

T = TypeVar("T")


# -- waiting for a condition -------------------------------------------------------------------------

class NotInTime(AssertionError):
    """The condition did not come true in time (as against an assertion the predicate made)."""


async def until(predicate: Callable[[], T], timeout: float = 5.0, what: str = "the condition", *,
                every: float = 0.01) -> T:
    """Wait on the running loop (it keeps serving sockets and tasks) until ``predicate()`` is true;
    returns its value. AssertionError after ``timeout`` real seconds. ``every``: how often to look."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise NotInTime(f"timed out after {timeout:g}s waiting for {what}")
        await asyncio.sleep(every)   # a poll interval, not a wait for something to happen


async def connected(connect: Callable[[], Awaitable[T]], timeout: float = 5.0, what: str = "a listener") -> T:
    """``await connect()`` until it stops failing with OSError (a server that binds its port a
    moment after it starts); the last OSError after ``timeout`` real seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await connect()
        except OSError:
            if time.monotonic() > deadline:
                raise
        await asyncio.sleep(0.05)   # a retry interval, not a wait for something to happen


async def next_turn() -> None:
    """One turn of the running loop: what was scheduled with ``call_soon`` before this has run."""
    loop = asyncio.get_running_loop()
    turned = loop.create_future()
    loop.call_soon(turned.set_result, None)
    await turned


def eventually(predicate: Callable[[], T], timeout: float = 5.0, what: str = "the condition", *,
               every: float = 0.01) -> T:
    """``until`` for code outside an event loop (a process, a thread, a broker)."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise NotInTime(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(every)   # a poll interval, not a wait for something to happen


# -- a sink that records ------------------------------------------------------------------------------

class Batch(NamedTuple):
    """One ``readings`` call: when (on the sink's clock), for which device, what."""

    t: float
    device: str
    readings: list[Reading]


class Delivered(NamedTuple):
    """One ``event`` or ``evidence`` call; ``files`` lists evidence as the agent would (name,
    sha256, bytes, type) and ``data`` holds their bytes by name (both empty for a plain event)."""

    device: str
    event: Event
    files: list[dict[str, Any]]
    data: dict[str, bytes]


class RecordingSink:
    """The agent's side of the DeviceSink contract, recording everything a runner hands over.
    Subclass it to refuse (a full disk) or to add what one test needs."""

    def __init__(self, clock: Clock = SYSTEM, state_dir: Path | None = None) -> None:
        self.clock = clock
        self.state_dir = state_dir   # DeviceSink.store: None keeps a family's state in memory only
        self.batches: list[Batch] = []
        self.event_log: list[Delivered] = []
        self.states: list[tuple[str, bool, str | None]] = []

    # -- DeviceSink --

    def readings(self, device_id: str, readings: list[Reading]) -> None:
        self.batches.append(Batch(self.clock.monotonic(), device_id, list(readings)))

    def event(self, device_id: str, event: Event) -> None:
        self.event_log.append(Delivered(device_id, event, [], {}))

    def evidence(self, device_id: str, event: Event, files: list[EvidenceFile]) -> str:
        listed = [{"name": f.name, "sha256": hashlib.sha256(f.data).hexdigest(), "bytes": len(f.data),
                   "type": f.type} for f in files]
        self.event_log.append(Delivered(device_id, event, listed, {f.name: f.data for f in files}))
        return f"gw-{len(self.event_log)}"

    def device_state(self, device_id: str, online: bool, error: str | None = None) -> None:
        self.states.append((device_id, online, error))

    def store(self, family: str) -> StateStore | None:
        return None if self.state_dir is None else StateStore.of_family(self.state_dir, family)

    def latest(self, device_id: str, point: str) -> Reading | None:
        for batch in reversed(self.batches):
            if batch.device == device_id:
                for reading in reversed(batch.readings):
                    if reading.point == point:
                        return reading
        return None

    # -- what was recorded --

    def all_readings(self, device: str | None = None) -> list[Reading]:
        return [r for b in self.batches if device is None or b.device == device for r in b.readings]

    def readings_of(self, device: str, since: float = float("-inf")) -> list[list[Reading]]:
        """The batches of one device delivered at or after ``since`` (the sink's clock)."""
        return [b.readings for b in self.batches if b.device == device and b.t >= since]

    def last(self, device: str) -> dict[str, Reading]:
        """The last batch of a device, by point."""
        return {r.point: r for r in self.readings_of(device)[-1]}

    def points(self, device: str) -> dict[str, Reading]:
        """The latest reading of each point of a device, whichever batch it came in."""
        return {r.point: r for r in self.all_readings(device)}

    def value_of(self, point: str, device: str | None = None) -> Any:
        """The value of the latest reading of ``point`` (any device unless named), None if none."""
        found = [r for r in self.all_readings(device) if r.point == point]
        return found[-1].value if found else None

    def events(self, kind: str | None = None, device: str | None = None) -> list[Event]:
        return [d.event for d in self.event_log
                if (kind is None or d.event.type == kind) and (device is None or d.device == device)]

    def event_types(self) -> list[str]:
        return [d.event.type for d in self.event_log]


# -- a controller's preempt input, for the priority manager ---------------------------------------------

class FakeActuator:
    """What a priority manager drives (``online``, ``set_preempt``): records each write with the
    time it was made on ``clock``; ``answering = False`` makes writes fail as a controller that
    does not answer, ``refusing = True`` as one that says no."""

    def __init__(self, clock: Clock = SYSTEM, online: bool | None = True) -> None:
        self.clock = clock
        self.online = online
        self.answering = True
        self.refusing = False
        self.writes: list[tuple[float, int, bool]] = []   # (clock time, preempt, on) of each write tried
        self.asserted: dict[int, bool] = {}               # what the controller holds now

    async def set_preempt(self, number: int, on: bool) -> None:
        from firmware_bridges.signal_controller.errors import NoAnswer, Refused

        self.writes.append((self.clock.monotonic(), number, on))
        if not self.answering:
            raise NoAnswer(f"no SNMP response received before the timeout (preempt {number})")
        if self.refusing:
            raise Refused(f"notWritable at preempt {number}")
        self.asserted[number] = on

    def writes_of(self, number: int, on: bool) -> list[float]:
        """When writes of ``on`` to preempt ``number`` were tried."""
        return [t for t, n, value in self.writes if n == number and value == on]


# -- runners ---------------------------------------------------------------------------------------------

class IdleRunner(Runner, HoldsForCentre):
    """A runner that serves nothing and waits to be cancelled; it notes what the agent tells it
    about the centre, with the time on ``clock``."""

    def __init__(self, name: str = "idle", clock: Clock = SYSTEM) -> None:
        self.name = name
        self.clock = clock
        self.heard: list[float] = []
        self.lost: list[float] = []

    async def run(self) -> None:
        await asyncio.Event().wait()

    def centre_heard(self) -> None:
        self.heard.append(self.clock.monotonic())

    def centre_lost(self) -> None:
        self.lost.append(self.clock.monotonic())


class CrashingTask:
    """A supervised ``run`` that raises ``crashes`` times, then runs until cancelled; notes the
    clock's time of every start and close."""

    def __init__(self, clock: Clock, crashes: int) -> None:
        self.clock = clock
        self.crashes = crashes
        self.starts: list[float] = []
        self.closes: list[float] = []

    async def run(self) -> None:
        self.starts.append(self.clock.monotonic())
        if len(self.starts) <= self.crashes:
            raise RuntimeError(f"crash {len(self.starts)}")
        await asyncio.Event().wait()

    async def close(self) -> None:
        self.closes.append(self.clock.monotonic())
