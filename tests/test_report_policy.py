"""Report policy: every poll, on change beyond a deadband, maximum silence, per-point overrides."""

from agent.core.config import ReportPolicy
from agent.core.model import Reading
from agent.report import ReportFilter


def reading(value, t, point="pm25", q="good"):
    return Reading(point, value, "ug/m3", t, q)


def sent_values(flt, series, point="pm25"):
    out = []
    for t, value in series:
        out += [r.value for r in flt.apply([reading(value, t, point)])]
    return out


def test_every_poll_passes_everything_untouched():
    flt = ReportFilter(ReportPolicy())
    batch = [reading(1.0, 0), reading(1.0, 1000, "pm10")]
    assert flt.passthrough and flt.apply(batch) is batch


def test_on_change_with_deadband():
    flt = ReportFilter(ReportPolicy(mode="on_change", deadband=0.5))
    series = [(0, 10.0), (1000, 10.3), (2000, 10.6), (3000, 10.2), (4000, 11.0)]
    # 10.3 is within 0.5 of 10.0; 10.6 is not; 10.2 is within 0.5 of 10.6; 11.0 is 0.4 from 10.6
    assert sent_values(flt, series) == [10.0, 10.6]


def test_max_silence_sends_an_unchanged_value():
    flt = ReportFilter(ReportPolicy(mode="on_change", deadband=1.0, max_silence=5))
    series = [(t * 1000, 20.0) for t in range(0, 12)]
    assert sent_values(flt, series) == [20.0, 20.0, 20.0]   # t=0, 5s, 10s


def test_quality_change_is_always_sent():
    flt = ReportFilter(ReportPolicy(mode="on_change", deadband=100))
    assert len(flt.apply([reading(5.0, 0)])) == 1
    assert flt.apply([reading(5.0, 1000)]) == []
    assert [r.q for r in flt.apply([reading(None, 2000, q="bad")])] == ["bad"]


def test_non_numeric_values_compare_by_equality():
    flt = ReportFilter(ReportPolicy(mode="on_change"))
    series = [(0, True), (1000, True), (2000, False), (3000, False)]
    assert sent_values(flt, series, "door") == [True, False]


def test_point_override():
    policy = ReportPolicy.model_validate(
        {"mode": "every_poll", "points": {"pm25": {"mode": "on_change", "deadband": 2}}})
    flt = ReportFilter(policy)
    assert not flt.passthrough
    assert sent_values(flt, [(0, 1.0), (1000, 2.0), (2000, 4.0)]) == [1.0, 4.0]
    assert sent_values(flt, [(0, 1.0), (1000, 1.0)], "pm10") == [1.0, 1.0]
