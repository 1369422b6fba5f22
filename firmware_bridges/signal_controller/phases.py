"""The phase model: what each vehicle phase and pedestrian head shows, and when that changes.

Both protocols end here. NTCIP gives bitmasks per group of 8 phases (:func:`decode_groups`); a
Modbus I/O module gives one bool per lamp (:class:`LampDecoder`). Either way the result is a
:class:`ControllerStatus`, which :class:`PhaseTracker` compares with the previous one.

Colours on the wire (reading values): vehicle ``red`` / ``yellow`` / ``green`` / ``dark`` (no lamp
lit: flash-off half, signals off, or a failed lamp); pedestrian ``walk`` / ``flashing`` (pedestrian
clearance, the flashing hand) / ``dont_walk`` / ``dark``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

Colour = Literal["red", "yellow", "green", "dark"]
PedSignal = Literal["walk", "flashing", "dont_walk", "dark"]

# NTCIP 1202 groups hold 8 phases: bit 0 is phase 8g-7, bit 7 is phase 8g (see ntcip.py for the source).
GROUP_SIZE = 8


def group_of(phase: int) -> int:
    """The phase status group (1-based) that carries ``phase``."""
    return (phase - 1) // GROUP_SIZE + 1


def bit_of(phase: int) -> int:
    return (phase - 1) % GROUP_SIZE


@dataclass(frozen=True, slots=True)
class Lamp:
    """One signal head's state and whether it is trustworthy."""

    value: str
    conflict: bool = False   # more than one lamp of the head lit: a sensor/wiring fault or a real conflict


@dataclass(slots=True)
class ControllerStatus:
    """One poll's worth of what the controller shows."""

    vehicles: dict[int, Lamp]
    peds: dict[int, Lamp]
    preempt: bool | None = None          # a preempt is active (None: the controller does not say)
    preempt_state: str | None = None     # NTCIP preemptState name (dwell, entryStarted ...), when read
    t: int = 0                           # UTC epoch ms of the answer
    extra: dict[str, str | int | float | bool] = field(default_factory=dict)   # a protocol's own points (GB/T 20999: stage, run_mode ...)


def vehicle_colour(red: bool, yellow: bool, green: bool) -> Lamp:
    """Precedence green > yellow > red: a head never legitimately shows two, so two lit is flagged."""
    lit = red + yellow + green
    colour: Colour = "green" if green else "yellow" if yellow else "red" if red else "dark"
    return Lamp(colour, conflict=lit > 1)


def ped_signal(walk: bool, clear: bool, dont_walk: bool) -> Lamp:
    """NTCIP's three ped outputs: walk, pedestrian clearance (flashing hand), steady don't walk."""
    signal: PedSignal = "walk" if walk else "flashing" if clear else "dont_walk" if dont_walk else "dark"
    return Lamp(signal, conflict=walk and (clear or dont_walk))


def decode_groups(phases: Iterable[int], peds: Iterable[int], masks: Mapping[str, Mapping[int, int]]) -> tuple[dict[int, Lamp], dict[int, Lamp]]:
    """Phase and ped states from NTCIP phase status group bitmasks.

    ``masks[name][group]`` is the integer value of phaseStatusGroup<name>.<group>, name one of
    reds, yellows, greens, walks, ped_clears, dont_walks.
    """
    def on(name: str, phase: int) -> bool:
        return bool(masks[name].get(group_of(phase), 0) >> bit_of(phase) & 1)

    vehicles = {p: vehicle_colour(on("reds", p), on("yellows", p), on("greens", p)) for p in phases}
    walkers = {p: ped_signal(on("walks", p), on("ped_clears", p), on("dont_walks", p)) for p in peds}
    return vehicles, walkers


@dataclass(slots=True)
class _FlashDetector:
    """Tells a flashing don't-walk lamp from a steady one by its recent toggles.

    Lamp sensors see the flashing hand as the lamp going on and off (about 1 Hz). Two changes
    within ``window`` seconds mean flashing; one change is just the lamp coming on or going off.
    Changes while the walk lamp is lit do not count: walk ending and the hand coming on is one
    change, not a flash. So a clearance is seen about half a second after it starts and for up to
    ``window`` after it ends. Needs a poll of 250 ms or faster for a 1 Hz flash.
    """

    window: float
    last: bool | None = None
    changes: deque[float] = field(default_factory=lambda: deque(maxlen=2))

    def update(self, lit: bool, walk: bool, now: float) -> bool:
        if walk:
            self.changes.clear()
        elif self.last is not None and lit != self.last:
            self.changes.append(now)
        self.last = lit
        return not walk and len(self.changes) == 2 and now - self.changes[0] <= self.window


class LampDecoder:
    """Phase and ped states from lamp-sensor inputs (one bool per lamp, by profile point name)."""

    def __init__(self, phases: Iterable[int], peds: Iterable[int], flash_window: float = 1.2):
        self.phases = tuple(phases)
        self.peds = tuple(peds)
        self._flash = {p: _FlashDetector(flash_window) for p in self.peds}

    @staticmethod
    def point_names(phases: Iterable[int], peds: Iterable[int]) -> list[str]:
        """The profile points the decoder needs."""
        names = [f"phase{p}_{c}" for p in phases for c in ("red", "yellow", "green")]
        return names + [f"ped{p}_{lamp}" for p in peds for lamp in ("walk", "dont_walk")]

    def decode(self, lamps: Mapping[str, object], now: float) -> tuple[dict[int, Lamp], dict[int, Lamp]]:
        """``lamps``: point name -> bool (missing or None counts as off); ``now``: monotonic seconds."""
        def lit(name: str) -> bool:
            return bool(lamps.get(name))

        vehicles = {p: vehicle_colour(lit(f"phase{p}_red"), lit(f"phase{p}_yellow"), lit(f"phase{p}_green"))
                    for p in self.phases}
        walkers = {}
        for p in self.peds:
            walk, dont_walk = lit(f"ped{p}_walk"), lit(f"ped{p}_dont_walk")
            flashing = self._flash[p].update(dont_walk, walk, now)
            walkers[p] = ped_signal(walk, flashing, dont_walk)
        return vehicles, walkers


@dataclass(frozen=True, slots=True)
class Change:
    point: str
    old: str | bool | None
    new: str | bool | None


class PhaseTracker:
    """Remembers the last status and names what changed (for logs, counters and the priority
    manager, which wants to know when the requested phase actually went green)."""

    def __init__(self) -> None:
        self.last: dict[str, str | bool | None] = {}
        self.changes = 0

    @staticmethod
    def values(status: ControllerStatus) -> dict[str, str | bool | None]:
        out: dict[str, str | bool | None] = {f"phase{p}": lamp.value for p, lamp in status.vehicles.items()}
        out.update({f"ped{p}": lamp.value for p, lamp in status.peds.items()})
        out["preempt"] = status.preempt
        return out

    def update(self, status: ControllerStatus) -> list[Change]:
        current = self.values(status)
        changes = [Change(k, self.last.get(k), v) for k, v in current.items() if self.last.get(k) != v]
        if self.last:
            self.changes += len(changes)
        self.last = current
        return changes

    def forget(self) -> None:
        """After the controller was offline, the first status is not a change of anything."""
        self.last = {}
