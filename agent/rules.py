"""Edge rules: threshold alarms on readings, configured per device (``alarms:``).

A rule raises an event when its condition has held continuously for ``for`` (e.g. PM2.5 above
75 ug/m3 for an hour), and a ``.cleared`` event when the value comes back past ``clear``
(hysteresis, so a value hovering at the limit does not flood the centre). Readings of bad or
stale quality neither start nor end an alarm: a failing sensor is reported as a device fault,
not as clean air.
"""

from __future__ import annotations

from dataclasses import dataclass

from agent.core.config import AlarmRule
from agent.core.model import Event, Reading


@dataclass(slots=True)
class _State:
    rule: AlarmRule
    type: str
    since: int | None = None     # when the condition started to hold
    active: bool = False


class AlarmRules:
    """The rules of one device; ``apply`` returns the events the readings caused."""

    def __init__(self, rules: list[AlarmRule]):
        self._by_point: dict[str, list[_State]] = {}
        for rule in rules:
            state = _State(rule, rule.type or f"threshold.{rule.point}")
            self._by_point.setdefault(rule.point, []).append(state)

    def __bool__(self) -> bool:
        return bool(self._by_point)

    def apply(self, readings: list[Reading]) -> list[Event]:
        events: list[Event] = []
        for reading in readings:
            states = self._by_point.get(reading.point)
            if states is None or reading.q != "good" or reading.value is None:
                continue
            for state in states:
                event = self._step(state, reading)
                if event is not None:
                    events.append(event)
        return events

    def _step(self, state: _State, reading: Reading) -> Event | None:
        rule = state.rule
        holding = _holds(rule, reading.value, state.active)
        if holding:
            if state.since is None:
                state.since = reading.t
            if not state.active and reading.t - state.since >= rule.for_ * 1000:
                state.active = True
                return Event(state.type, rule.severity, _data(rule, reading, state.since), reading.t)
            return None
        state.since = None
        if state.active:
            state.active = False
            return Event(f"{state.type}.cleared", "info", _data(rule, reading, None), reading.t)
        return None


def _holds(rule: AlarmRule, value: object, active: bool) -> bool:
    """Whether the alarm condition holds; while active, the ``clear`` value is the limit."""
    if rule.equals is not None:
        return value == rule.equals
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    hysteresis = rule.clear if active and rule.clear is not None else None
    if rule.above is not None:
        return value > (rule.above if hysteresis is None else hysteresis)
    return value < (rule.below if hysteresis is None else hysteresis)  # type: ignore[operator]


def _data(rule: AlarmRule, reading: Reading, since: int | None) -> dict[str, object]:
    data: dict[str, object] = {"point": reading.point, "value": reading.value}
    if reading.unit:
        data["unit"] = reading.unit
    for name in ("above", "below", "equals", "clear"):
        value = getattr(rule, name)
        if value is not None:
            data[name] = value
    if since is not None:
        data["since"] = since
        data["for_s"] = rule.for_
    return data
