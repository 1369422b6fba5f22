"""What drivers hand to the agent: readings, events and device state changes.

Drivers never touch MQTT or SQLite; they call a :class:`DeviceSink` and the agent does the rest
(report policy, outbox, uplink).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from enum import IntEnum
from typing import TYPE_CHECKING, Any, Awaitable, Literal, Protocol, Union

if TYPE_CHECKING:
    from agent.core.state import StateStore

Value = Union[float, int, bool, str, None]
Quality = Literal["good", "bad", "stale"]
Severity = Literal["critical", "major", "minor", "info"]


class Priority(IntEnum):
    """Outbox priority classes (CONTRACT.md, DESIGN.md). Lower number leaves first."""

    LIFE_SAFETY = 0  # fire alarms: overtake everything, never evicted
    ALARM = 1        # violations, alarms, faults, command results
    TELEMETRY = 2    # readings, metrics
    BULK = 3         # evidence images


SEVERITY_PRIORITY: dict[str, Priority] = {
    "critical": Priority.LIFE_SAFETY,
    "major": Priority.ALARM,
    "minor": Priority.ALARM,
    "info": Priority.ALARM,
}


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(slots=True)
class Reading:
    """One value of one point of one device, as read."""

    point: str
    value: Value
    unit: str | None
    t: int                      # UTC epoch ms when it was read
    q: Quality = "good"

    def to_wire(self) -> dict[str, Any]:
        wire: dict[str, Any] = {"p": self.point, "v": self.value, "t": self.t, "q": self.q}
        if self.unit:
            wire["u"] = self.unit
        return wire


@dataclass(slots=True)
class Event:
    """Something that happened at a device: a fire alarm, a fault, a threshold crossing."""

    type: str                   # dotted name, e.g. "fire.alarm", "device.offline"
    severity: Severity
    data: dict[str, Any] = field(default_factory=dict)
    t: int = field(default_factory=now_ms)


@dataclass(frozen=True, slots=True)
class EvidenceFile:
    name: str                    # a topic level: [A-Za-z0-9_.-]{1,64}, e.g. "0.jpg", "clip.mp4"
    data: bytes
    type: str = "image/jpeg"


class DeviceSink(Protocol):
    """Where a driver delivers what it read. Implemented by the agent; safe to call from the event loop."""

    def readings(self, device_id: str, readings: list[Reading]) -> None: ...

    def event(self, device_id: str, event: Event) -> None:
        """Queue an event. For a ``critical`` one this returns only once it is committed to disk,
        and raises OSError when it could not be (it stays queued in memory and is written when
        the disk recovers): a bridge that confirms frames to its device must confirm only after
        a normal return."""

    def evidence(self, device_id: str, event: Event, files: list["EvidenceFile"]) -> str:
        """An event with its evidence files (images, a clip): the event goes out at its severity's
        priority listing each file's sha256 and size, the files as bulk data after it (split in
        chunks when larger than the broker allows). Returns the event id."""
        ...

    def device_state(self, device_id: str, online: bool, error: str | None = None) -> None: ...

    def committed(self) -> "Awaitable[None]":
        """Resolves once everything handed over so far is on disk (the next group commit, within
        ``buffer.commit_interval``): await it before acknowledging data to a device."""
        ...

    def latest(self, device_id: str, point: str) -> Reading | None:
        """The latest value read of any device's point (e.g. a signal controller's ``phase2``
        for a camera's red-light rule), or None when it has not been read yet."""
        ...

    def store(self, family: str) -> "StateStore | None":
        """The family's own small durable state (:mod:`agent.core.state`), for what it must still
        know after the agent was killed (a signal controller's mode saved before a held stage).
        Pass the driver's ``name``. None where the agent has no state directory (then the family
        keeps that state in memory only)."""
        ...
