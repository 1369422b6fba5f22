"""Report policy: which of the values read at each poll are sent.

``every_poll`` sends everything. ``on_change`` sends a point when it moved by more than its
deadband since the value last sent, when its quality changed, or when it has been silent for
``max_silence``. The decision is the agent's, so every driver gets it for free.
"""

from __future__ import annotations

from dataclasses import dataclass

from agent.core.config import ReportPolicy
from agent.core.model import Reading


@dataclass(slots=True)
class _PointRule:
    on_change: bool
    deadband: float
    max_silence_ms: int | None


class ReportFilter:
    """Per-device filter; keeps the last value sent of each point."""

    def __init__(self, policy: ReportPolicy):
        self._default = _PointRule(policy.mode == "on_change", policy.deadband,
                                   _ms(policy.max_silence))
        self._rules: dict[str, _PointRule] = {}
        for name, override in policy.points.items():
            mode = override.mode or policy.mode
            self._rules[name] = _PointRule(
                mode == "on_change",
                policy.deadband if override.deadband is None else override.deadband,
                _ms(policy.max_silence if override.max_silence is None else override.max_silence))
        # Fast path: a device that reports every poll with no overrides needs no bookkeeping.
        self.passthrough = not self._default.on_change and not any(r.on_change for r in self._rules.values())
        self._last: dict[str, tuple[object, str, int]] = {}   # point -> (value, quality, t) last sent

    def apply(self, readings: list[Reading]) -> list[Reading]:
        if self.passthrough:
            return readings
        sent = []
        for reading in readings:
            rule = self._rules.get(reading.point, self._default)
            if not rule.on_change or self._changed(reading, rule):
                self._last[reading.point] = (reading.value, reading.q, reading.t)
                sent.append(reading)
        return sent

    def _changed(self, reading: Reading, rule: _PointRule) -> bool:
        last = self._last.get(reading.point)
        if last is None:
            return True
        value, quality, t = last
        if reading.q != quality:
            return True
        if rule.max_silence_ms is not None and reading.t - t >= rule.max_silence_ms:
            return True
        current = reading.value
        if (isinstance(current, (int, float)) and not isinstance(current, bool)
                and isinstance(value, (int, float)) and not isinstance(value, bool)):
            return abs(current - value) > rule.deadband
        return current != value


def _ms(seconds: float | None) -> int | None:
    return None if seconds is None else int(seconds * 1000)
