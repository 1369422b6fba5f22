"""One Modbus device on a bus: its planned requests, its schedule, its backoff, its counters.

No I/O here: :mod:`drivers.modbus.bus` does the talking and tells the device what happened.

Schedule: fixed rate. Poll n is due at ``start + n * poll``; when the bus was too busy to make a
tick the missed ticks are skipped (and counted), never bunched into a burst.

Failures: a poll fails when the unit does not answer (timeout), answers garbage (bad CRC, wrong
length) or a gateway in front of it says it did not answer (exception 0x0A/0x0B). A failing unit
is retried with the agent's one backoff (:mod:`agent.core.backoff`: exponential with jitter), so one
dead unit costs the bus one timeout per backoff step instead of one per poll and its neighbours
keep their rate. After ``offline_after`` consecutive failures the device is reported offline;
the first good answer reports it online and puts it back on its normal schedule.
A dropped link fails the device's polls too (they count towards offline) but does not back the
device off: the link has its own backoff, and on reconnect every device is polled at once.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from agent.core.backoff import Retry
from agent.core.model import DeviceSink, Reading, Value
from drivers.modbus import plan as planner
from drivers.modbus.codec import FLOAT_TYPES, NUMERIC_TYPES
from drivers.modbus.options import Options
from drivers.modbus.profile import Point

log = logging.getLogger("drivers.modbus")


@dataclass(slots=True)
class DeviceStats:
    """Counters for `edge-agent status` and health metrics (``BusRunner.stats()``)."""

    online: bool | None = None        # None until the first poll decided it
    last_read_ms: int | None = None   # time of the last good answer
    polls: int = 0                    # polls that got every answer
    failed_polls: int = 0
    requests: int = 0
    bytes: int = 0                    # on the wire, both directions, computed from frame sizes
    errors: int = 0                   # timeouts + garbage + exception responses + link errors
    timeouts: int = 0
    garbage: int = 0
    exceptions: int = 0               # Modbus exception responses (the unit answered "no")
    consecutive_failures: int = 0
    skipped: int = 0                  # poll ticks missed because the bus was busy
    backoff_s: float = 0.0            # current retry delay while failing
    last_error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        # every field is a scalar: a shallow copy, not dataclasses.asdict's deep copy (this runs
        # for every device at every status write)
        return {name: getattr(self, name) for name in self.__slots__}


@dataclass(slots=True)
class _Check:
    index: int
    low: float
    high: float


class RequestReadings:
    """Turns one request's decoded values into readings with quality, precomputed per request."""

    __slots__ = ("request", "names", "units", "checks", "floats")

    def __init__(self, request: planner.Request):
        self.request = request
        self.names = [p.name for p in request.points]
        self.units = [p.unit for p in request.points]
        self.checks = [_Check(i, -math.inf if p.min is None else p.min, math.inf if p.max is None else p.max)
                       for i, p in enumerate(request.points)
                       if p.type in NUMERIC_TYPES and (p.min is not None or p.max is not None)]
        self.floats = [i for i, p in enumerate(request.points) if p.type in FLOAT_TYPES]

    def good(self, values: Sequence[Value], t: int) -> list[Reading]:
        readings = [Reading(name, value, unit, t) for name, value, unit in zip(self.names, values, self.units)]
        # NaN/inf cannot travel as JSON and mean "no measurement" on most devices
        for i in self.floats:
            value = values[i]
            if value != value or value in (math.inf, -math.inf):   # noqa: PLR0124 - NaN test
                readings[i].value = None
                readings[i].q = "bad"
        for check in self.checks:
            value = values[check.index]
            if value is not None and not check.low <= value <= check.high:   # type: ignore[operator]
                readings[check.index].q = "bad"   # out of the valid range: keep the value, flag it
        return readings

    def bad(self, t: int) -> list[Reading]:
        return [Reading(name, None, unit, t, "bad") for name, unit in zip(self.names, self.units)]


class Device:
    """A device's polling state on its bus."""

    def __init__(self, device_id: str, options: Options, poll: float, sink: DeviceSink):
        self.id = device_id
        self.unit = options.unit
        self.options = options
        self.period = poll
        self.sink = sink
        self.points: dict[str, Point] = {p.name: p for p in options.selected_points()}
        self.requests = [RequestReadings(r)
                         for r in planner.plan(self.points.values(), options.profile.max_gap)]
        self.stats = DeviceStats()
        self.next_due = 0.0
        # the delays only: a unit's retry is its next poll, other units are polled in between
        self._backoff = Retry(options.backoff)
        self._single: dict[str, RequestReadings] = {}

    # -- schedule ---------------------------------------------------------------------------

    def start(self, now: float) -> None:
        self.next_due = now

    def begin_poll(self, now: float) -> None:
        """Move the schedule one tick on; skip (and count) ticks the bus was too busy to make."""
        self.next_due += self.period
        if self.next_due <= now:
            missed = math.floor((now - self.next_due) / self.period) + 1
            self.stats.skipped += missed
            self.next_due += missed * self.period

    def poll_now(self, now: float) -> None:
        """Be due at once (after a reconnect); the fixed-rate grid restarts from now."""
        self.next_due = now

    # -- outcomes -------------------------------------------------------------------------------

    def succeeded(self, t_ms: int, now: float) -> None:
        stats = self.stats
        stats.polls += 1
        stats.last_read_ms = t_ms
        if stats.consecutive_failures:
            if stats.backoff_s:
                self.next_due = now + self.period   # back on the normal grid after a backoff
            stats.consecutive_failures = 0
            stats.backoff_s = 0.0
        if stats.online is not True:
            if stats.online is False:
                log.info("modbus device %s (unit %d) answers again", self.id, self.unit)
            stats.online = True
            self._state(True, None)

    def failed(self, error: str, now: float, *, backoff: bool) -> None:
        """A poll failed. ``backoff``: the unit itself is silent (not the link): retry it later."""
        stats = self.stats
        stats.failed_polls += 1
        stats.consecutive_failures += 1
        stats.last_error = error
        if backoff:
            stats.backoff_s = self._backoff.delay(stats.consecutive_failures)
            self.next_due = max(self.next_due, now + stats.backoff_s)
        if stats.consecutive_failures >= self.options.offline_after and stats.online is not False:
            log.warning("modbus device %s (unit %d) is offline after %d failed polls: %s",
                        self.id, self.unit, stats.consecutive_failures, error)
            stats.online = False
            self._state(False, error)

    def deliver(self, readings: list[Reading]) -> None:
        if not readings:
            return
        try:
            self.sink.readings(self.id, readings)
        except Exception:   # the agent's problem must not stop this bus
            log.exception("sink rejected readings of %s", self.id)

    def _state(self, online: bool, error: str | None) -> None:
        try:
            self.sink.device_state(self.id, online=online, error=error)
        except Exception:
            log.exception("sink rejected the state of %s", self.id)

    # -- single points (commands) -----------------------------------------------------------------

    def point(self, name: str) -> Point:
        try:
            return self.points[name]
        except KeyError:
            raise KeyError(f"device {self.id} has no point {name!r}; it has: "
                           f"{', '.join(self.points)}") from None

    def single_request(self, name: str) -> RequestReadings:
        """A request that reads just one point, planned once."""
        reader = self._single.get(name)
        if reader is None:
            point = self.point(name)
            reader = self._single[name] = RequestReadings(planner.make_request(point.table, [point]))  # type: ignore[arg-type]
        return reader

    def split_request(self, index: int) -> bool:
        """Replace a merged request the unit refused with one request per point (see plan.split).

        False when there is nothing to split (one point, or bits of one register).
        """
        old = self.requests[index].request
        parts = planner.split(old)
        if len(parts) == 1:
            return False
        log.warning("modbus device %s refused %s %d..%d; reading its %d points one by one from now on",
                    self.id, old.table, old.address, old.address + old.count - 1, len(old.points))
        self.requests[index:index + 1] = [RequestReadings(r) for r in parts]
        return True
