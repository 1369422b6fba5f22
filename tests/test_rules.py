"""Edge threshold rules: duration, hysteresis, quality, equality, config validation."""

import pytest
from pydantic import ValidationError

from agent.core.config import AlarmRule
from agent.core.model import Reading
from agent.rules import AlarmRules

MIN = 60_000


def feed(rules, series, point="pm25", q="good"):
    events = []
    for t, value in series:
        events += rules.apply([Reading(point, value, "ug/m3", t, q)])
    return events


def test_pm25_above_75_for_an_hour():
    rules = AlarmRules([AlarmRule.model_validate({"point": "pm25", "above": 75, "for": "1h", "clear": 70})])
    # 80 for 59 minutes: nothing; a dip to 74 restarts the clock only below the limit
    events = feed(rules, [(m * MIN, 80.0) for m in range(0, 60)])
    assert events == []
    [alarm] = feed(rules, [(60 * MIN, 81.0)])
    assert alarm.type == "threshold.pm25" and alarm.severity == "major"
    assert alarm.data == {"point": "pm25", "value": 81.0, "unit": "ug/m3", "above": 75.0, "clear": 70.0,
                          "since": 0, "for_s": 3600.0}
    # hysteresis: 72 is below the limit but above 'clear', so the alarm stays
    assert feed(rules, [(61 * MIN, 72.0), (62 * MIN, 74.9)]) == []
    [cleared] = feed(rules, [(63 * MIN, 69.0)])
    assert cleared.type == "threshold.pm25.cleared" and cleared.severity == "info"


def test_interrupted_condition_restarts_the_clock():
    rules = AlarmRules([AlarmRule.model_validate({"point": "pm25", "above": 75, "for": "10m"})])
    assert feed(rules, [(0, 80.0), (5 * MIN, 70.0), (6 * MIN, 80.0), (15 * MIN, 80.0)]) == []
    assert len(feed(rules, [(16 * MIN, 80.0)])) == 1


def test_bad_quality_neither_raises_nor_clears():
    rules = AlarmRules([AlarmRule(point="level", below=0.2, severity="minor")])
    assert feed(rules, [(0, 0.1)], "level", q="bad") == []
    [alarm] = feed(rules, [(1, 0.1)], "level")
    assert alarm.severity == "minor"
    assert feed(rules, [(2, None)], "level", q="stale") == []
    assert [e.type for e in feed(rules, [(3, 0.5)], "level")] == ["threshold.level.cleared"]


def test_equals_for_switches():
    rules = AlarmRules([AlarmRule(point="cover_open", equals=True, type="manhole.open", severity="major")])
    assert [e.type for e in feed(rules, [(0, False), (1, True), (2, True), (3, False)], "cover_open")] == [
        "manhole.open", "manhole.open.cleared"]


@pytest.mark.parametrize("bad", [
    {"point": "p"},
    {"point": "p", "above": 1, "below": 0},
    {"point": "p", "above": 75, "clear": 80},
    {"point": "p", "equals": True, "clear": 1},
    {"point": "p", "above": 1, "type": "Not A Type"},
])
def test_invalid_rules_are_refused(bad):
    with pytest.raises(ValidationError):
        AlarmRule.model_validate(bad)
