"""Camera rules on synthetic tracks: each rule fires when it should, once, and not otherwise.

The cases are data: one folder per case in drivers/camera/testcases/, named after what it pins,
holding what the detector saw frame by frame (tracks.csv), the signal's colours over time
(signal.yaml), the rules (rule.yaml) and what they must report (expected.yaml); README.md there
describes the files. ``test_rule_case`` runs every folder through the real tracker and rules.
What stays in code below cannot be data: two cases hand the rules tracks made by hand (tracks the
tracker itself would never make, so no detections can stand for them), and the signal board is not
a rule.
"""

from __future__ import annotations

import csv
import itertools
import math
import operator
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import TypeAdapter

from drivers.camera.options import IllegalParkingRule, Rule, SignalSource, ZoneIntrusionRule
from drivers.camera.rules import Frame, RuleSet, SignalBoard, SignalFn, SignalState, Violation
from drivers.camera.tracker import Tracker

SIGNAL = SignalSource(device="tsc-01", point="phase2")   # the source of rules that name none
PARKING_ZONE = [[200, 200], [500, 200], [500, 400], [200, 400]]


# -- rule cases as data (drivers/camera/testcases/<what it pins>/) ---------------------------------

CASES = Path(__file__).resolve().parents[1] / "drivers" / "camera" / "testcases"
T0 = 1000.0                   # the clip's first frame, in seconds: the files count from 0
MIN_HITS = 2                  # detections before a track counts, as the camera's default
RULES = TypeAdapter(list[Rule])


@dataclass(frozen=True, slots=True)
class Det:
    """One line of tracks.csv: what the detector reported."""

    label: str
    score: float
    box: tuple[float, float, float, float]


def load_frames(path: Path) -> list[tuple[float, list[Det]]]:
    """The frames of tracks.csv in order: (t, detections); a line without an object is a frame in
    which the detector saw nothing."""
    frames: list[tuple[float, list[Det]]] = []
    with path.open(newline="") as lines:
        for row in csv.DictReader(lines):
            t = float(row["t"])
            if not frames or frames[-1][0] != t:
                assert not frames or t > frames[-1][0], f"{path}: t goes back at {row}"
                frames.append((t, []))
            if row["object"]:
                box = (float(row["x1"]), float(row["y1"]), float(row["x2"]), float(row["y2"]))
                frames[-1][1].append(Det(row["label"], float(row["score"]), box))
    return frames


def load_signal(case: Path) -> SignalFn:
    """signal.yaml: the colour from each time on (``null``: unknown). No file: never known."""
    path = case / "signal.yaml"
    changes = yaml.safe_load(path.read_text()) if path.exists() else []

    def signal(source: SignalSource, t: float) -> SignalState | None:
        assert source == SIGNAL
        now = None
        for change in changes:
            if T0 + change["from"] <= t:
                now = change
        if now is None or now["colour"] is None:
            return None
        return SignalState(now["colour"], T0 + now["from"], t)
    return signal


def view(v: Violation) -> dict[str, Any]:
    """A violation as expected.yaml names its parts (times from the clip's start)."""
    return {"type": v.type, "rule": v.rule, "track": v.track, "label": v.label, "score": v.score,
            "t": v.t - T0, "decided": v.decided - T0, "decided_after": v.decided - v.t, "data": v.data,
            "shot_times": [s.frame.t - T0 for s in v.shots], "shot_bottoms": [s.box[3] for s in v.shots]}


def run_case(case: Path) -> list[dict[str, Any]]:
    """What the rules of rule.yaml report on the frames of tracks.csv, under signal.yaml."""
    rules = RULES.validate_python(yaml.safe_load((case / "rule.yaml").read_text()))
    tracker = Tracker(max_gap=1.0)
    ruleset = RuleSet(rules, load_signal(case), SIGNAL)
    found: list[Violation] = []
    for seq, (t, detections) in enumerate(load_frames(case / "tracks.csv")):
        tracks = tracker.update(detections, T0 + t)
        found += ruleset.update(Frame(seq, T0 + t, None), tracks, tracker.ended, min_hits=MIN_HITS)
    return [view(v) for v in found]


_COMPARE = {"lt": operator.lt, "le": operator.le, "gt": operator.gt, "ge": operator.ge, "ne": operator.ne}
_MATCHERS = {*_COMPARE, "approx", "abs", "increasing", "decreasing"}


def mismatches(expected: Any, got: Any, where: str = "") -> list[str]:
    """What in ``got`` does not meet ``expected`` (see README.md beside the cases): a value is
    equal; a mapping of matchers (approx/abs, lt/le/gt/ge/ne, increasing/decreasing) holds; another
    mapping holds key by key (keys left out are not checked); a list holds item by item."""
    if isinstance(expected, dict) and expected and set(expected) <= _MATCHERS:
        return _matched(expected, got, where)
    if isinstance(expected, dict):
        if not isinstance(got, dict):
            return [f"{where}: expected a mapping, got {got!r}"]
        found: list[str] = []
        for key, value in expected.items():
            if key not in got:
                found.append(f"{where}.{key}: missing (it has {', '.join(sorted(got))})")
            else:
                found += mismatches(value, got[key], f"{where}.{key}")
        return found
    if isinstance(expected, list):
        if not isinstance(got, (list, tuple)) or len(got) != len(expected):
            return [f"{where}: expected {len(expected)} items, got {got!r}"]
        return [m for i, (e, g) in enumerate(zip(expected, got)) for m in mismatches(e, g, f"{where}[{i}]")]
    same = got == expected and isinstance(got, bool) == isinstance(expected, bool)   # True is not 1 here
    return [] if same else [f"{where}: expected {expected!r}, got {got!r}"]


def _matched(matcher: dict[str, Any], got: Any, where: str) -> list[str]:
    if "abs" in matcher and "approx" not in matcher:
        raise ValueError(f"{where}: 'abs' goes with 'approx'")
    found = []
    if "approx" in matcher and not math.isclose(got, matcher["approx"], rel_tol=0, abs_tol=matcher.get("abs", 1e-9)):
        found.append(f"{where}: expected {matcher['approx']} +- {matcher.get('abs', 1e-9)}, got {got!r}")
    for name, compare in _COMPARE.items():
        if name in matcher and not compare(got, matcher[name]):
            found.append(f"{where}: expected {name} {matcher[name]!r}, got {got!r}")
    if matcher.get("increasing") and not all(a < b for a, b in zip(got, got[1:])):
        found.append(f"{where}: expected increasing, got {got!r}")
    if matcher.get("decreasing") and not all(a > b for a, b in zip(got, got[1:])):
        found.append(f"{where}: expected decreasing, got {got!r}")
    return found


def case_problems(expected: dict[str, Any], found: list[dict[str, Any]]) -> list[str]:
    """Every way the violations found differ from expected.yaml's (``order: any``: in any order)."""
    wanted = expected.get("violations") or []
    if len(found) != len(wanted):
        return [f"{len(found)} violation(s), expected {len(wanted)}: "
                f"{[(v['type'], v['track'], round(v['t'], 2)) for v in found]}"]
    orders = itertools.permutations(found) if expected.get("order") == "any" else [found]
    first: list[str] | None = None
    for order in orders:
        problems = [m for i, (e, v) in enumerate(zip(wanted, order)) for m in mismatches(e, v, f"violations[{i}]")]
        if not problems:
            return []
        first = first if first is not None else problems
    return first or []


@pytest.mark.parametrize("case", sorted(p.name for p in CASES.iterdir() if p.is_dir()))
def test_rule_case(case: str):
    expected = yaml.safe_load((CASES / case / "expected.yaml").read_text())
    problems = case_problems(expected, run_case(CASES / case))
    assert not problems, "\n".join(problems)


def test_the_case_matchers_fail_on_what_they_check():
    """The checks of expected.yaml can fail: each kind of matcher, on a value that misses it."""
    got = {"type": "red_light", "track": 2, "t": 1.46, "data": {"signal": "red", "red_for": 1.4},
           "shot_times": [1.3, 1.4, 1.8], "shot_bottoms": [290.0, 300.0, 330.0]}
    assert case_problems({"violations": [{"type": "red_light", "t": {"approx": 1.4, "abs": 0.1},
                                          "data": {"signal": "red"}, "shot_times": {"increasing": True}}]},
                         [got]) == []
    for wrong in ({"type": "stop_line"}, {"track": {"ne": 2}}, {"t": {"approx": 1.4, "abs": 0.01}},
                  {"t": {"lt": 1.0}}, {"t": {"ge": 1.5}}, {"data": {"signal": "green"}}, {"data": {"plate": "x"}},
                  {"shot_times": {"decreasing": True}}, {"shot_bottoms": [{"lt": 300}, {"ge": 300}, {"ge": 340}]},
                  {"shot_bottoms": [290.0, 300.0]}, {"track": True}):
        assert case_problems({"violations": [wrong]}, [got]), wrong
    assert case_problems({"violations": []}, [got])
    assert case_problems({"violations": [{"track": 1}, {"track": 2}]}, [{"track": 2}, {"track": 1}])
    assert case_problems({"violations": [{"track": 1}, {"track": 2}], "order": "any"}, [{"track": 2}, {"track": 1}]) == []
    with pytest.raises(ValueError, match="'abs' goes with 'approx'"):
        case_problems({"violations": [{"t": {"abs": 0.1}}]}, [got])


# -- what cannot be data ------------------------------------------------------------------------------

def test_illegal_parking_a_second_track_on_a_reported_car_is_not_a_second_violation():
    """A track born on a reported parked car while its own track was briefly unmatched (so it
    found no ghost to take over): one car, one violation. Tracks made by hand."""
    from drivers.camera.rules import IllegalParking
    from drivers.camera.tracker import Track

    rule = IllegalParking("np", IllegalParkingRule.model_validate(
        {"type": "illegal_parking", "zone": PARKING_ZONE, "dwell": "4s", "still_px": 20}))
    first = Track(1, "car", (300, 250, 380, 330), 0.9, 1000.0, 1000.0, hits=5, best_score=0.9)
    second = Track(2, "car", (304, 252, 382, 333), 0.8, 1006.0, 1006.0, hits=5, best_score=0.8)
    found = []
    for i in range(120):
        t = 1000.0 + i / 10
        live = [first] if t < 1006.0 else [first, second]
        for track in live:
            track.last_t = t if track is not first or not 1005.5 < t < 1006.5 else track.last_t
            track.history.append((t, None, track.box))
        found += rule.update(Frame(i, t, None), live)
    assert [v.track for v in found] == [1]


def test_zone_intrusion_a_second_track_on_a_reported_person_is_not_a_second_intrusion():
    """Two tracks on one person (a box the tracker took for someone else): the person is reported
    once. Tracks made by hand: the tracker itself would not start the second one."""
    from drivers.camera.rules import ZoneIntrusion
    from drivers.camera.tracker import Track

    rule = ZoneIntrusion("road", ZoneIntrusionRule.model_validate(
        {"type": "zone_intrusion", "zone": [[0, 200], [640, 200], [640, 480], [0, 480]], "min_time": "300ms"}))
    one = Track(1, "person", (300, 100, 316, 160), 0.9, 1000.0, 1000.0, hits=5, best_score=0.9)
    two = Track(2, "person", (306, 101, 320, 159), 0.8, 1000.0, 1000.0, hits=5, best_score=0.8)
    found = []
    for i in range(20):
        t = 1000.0 + i / 10
        y = 4.0 * i
        one.box, two.box = (300, 100 + y, 316, 160 + y), (306, 101 + y, 320, 159 + y)
        one.last_t = two.last_t = t
        one.history.append((t, None, one.box))
        two.history.append((t, None, two.box))
        found += rule.update(Frame(i, t, None), [one, two])
    assert [v.track for v in found] == [1]


def test_signal_board_history_gives_the_state_at_a_time_and_when_it_began():
    board = SignalBoard()
    for i, colour in enumerate(["green"] * 5 + ["yellow"] * 3 + ["red"] * 10):
        board.feed("tsc-01", "phase2", colour, 100.0 + i * 0.2)
    state = board(SIGNAL, 102.05)
    assert state.colour == "red" and state.since == pytest.approx(101.6)
    assert board(SIGNAL, 101.5).colour == "yellow"
    assert board(SIGNAL, 99.0) is None                       # before anything was read
    assert board(SIGNAL, 110.0) is None                      # the newest reading is too old (max_age 2 s)
    board.feed("tsc-01", "phase2", "red", 110.0, "stale")
    assert board(SIGNAL, 110.1) is None                      # the controller is offline: unknown


def _readable(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 6)
    if isinstance(value, dict):
        return {k: _readable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_readable(v) for v in value]
    return value


if __name__ == "__main__":   # what the rules report on a case, to write its expected.yaml: python tests/test_camera_rules.py NAME...
    for name in sys.argv[1:]:
        print(f"{name}:")
        print(yaml.safe_dump({"violations": _readable(run_case(CASES / name))}, sort_keys=False, allow_unicode=True))
