"""The rule editor's server side (agent/web/editor.py) on real config files and the camera
family's figures (drivers/camera/drawing.py): edits become a minimal diff that keeps comments,
are checked exactly as check-config checks, and bad figures are refused with a clear message."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from agent.core.registry import get_driver
from agent.web import editor
from tests.hardware_sim.camera_sim import junction_camera

CAMERA = get_driver("camera")
FRAME = (1280, 720)
HEADER = "# the gateway by the school: hand-edited, keep these comments\n"


@pytest.fixture
def config(tmp_path) -> Path:
    settings = {"gateway": {"id": "gw-1", "site": "lab"},
                "buffer": {"path": str(tmp_path / "outbox.db")}, "agent": {"state_dir": str(tmp_path / "state")},
                "cameras": [junction_camera(url="rtsp://127.0.0.1:8554/cam1")]}
    path = tmp_path / "gateway.yaml"
    text = yaml.safe_dump(settings, sort_keys=False)
    text = HEADER + text.replace("cameras:\n", "cameras:   # the junction camera\n", 1)
    path.write_text(text)
    return path


def doc(config: Path) -> editor.Document:
    return editor.Document(config.read_text(), "cam-01", "cameras")


def edit(*ops: dict, base: str | None = None) -> editor.Edit:
    return editor.parse_edit({"ops": list(ops), **({"base": base} if base else {})})


def test_the_camera_lists_its_lines_zones_lanes_and_ignore_areas(config):
    shapes = {s.label: s for s in CAMERA.shapes(doc(config).entry)}
    assert shapes["nb-stop"].kind == "line" and shapes["nb-stop direction"].kind == "arrow"
    assert shapes["carriageway"].kind == "polygon" and shapes["carriageway"].path == ("rules", 2, "zone")
    assert shapes["ww-nb_through"].kind == "path"
    assert shapes["ignore 0"].path == ("detect", "ignore", 0) and shapes["motion ignore 1"].kind == "polygon"
    # the word direction is drawn from the line's middle, pointing up the picture
    (x1, y1), (x2, y2) = shapes["nb-stop direction"].points
    assert x1 == x2 and y2 < y1


def test_no_edit_no_diff_and_an_edit_changes_only_its_figures(config):
    before = config.read_text()
    untouched = doc(config)
    editor.apply_ops(untouched, CAMERA, edit(), FRAME)
    assert untouched.dump() == before

    d = doc(config)
    zone = [[500, 400], [700, 400], [700, 600], [500, 600]]
    shapes = editor.apply_ops(d, CAMERA, edit({"op": "move", "path": ["rules", 2, "zone"], "points": zone},
                                             {"op": "add", "kind": "zone_intrusion",
                                              "points": [[100, 100], [300, 100], [300, 300]]}), FRAME)
    after = d.dump()
    assert HEADER.strip() in after and "# the junction camera" in after   # comments kept
    old, new = yaml.safe_load(before), yaml.safe_load(after)
    rules = new["cameras"][0]["rules"]
    assert rules[2]["zone"] == zone and rules[-1] == {"type": "zone_intrusion",
                                                      "zone": [[100, 100], [300, 100], [300, 300]]}
    old["cameras"][0]["rules"][2]["zone"] = zone
    old["cameras"][0]["rules"].append(rules[-1])
    assert new == old   # nothing else changed
    added = [s for s in shapes if s.path == ("rules", 6, "zone")]
    assert added and added[0].points == ((100, 100), (300, 100), (300, 300))
    assert editor.check(after, config) == []


def test_a_hand_written_file_keeps_its_layout_the_diff_shows_the_figure_only(tmp_path):
    path = tmp_path / "gateway.yaml"
    path.write_text(f"""# hand-written
gateway: {{id: gw-1, site: lab}}
buffer: {{path: {tmp_path}/outbox.db}}
agent: {{state_dir: {tmp_path}/state}}
cameras:
  - id: cam-01
    url: rtsp://127.0.0.1:8554/cam1   # the pole camera
    rules:
      - {{type: zone_intrusion, name: kerb, zone: [[10, 10], [200, 10], [200, 200]]}}
      - type: illegal_parking
        zone: [[300, 300], [600, 300], [600, 500]]   # the bus stop
        dwell: 2m
""")
    before = path.read_text()
    d = editor.Document(before, "cam-01", "cameras")
    editor.apply_ops(d, CAMERA, edit({"op": "move", "path": ["rules", 1, "zone"],
                                      "points": [[300, 300], [640, 300], [600, 500]]}), FRAME)
    changed = [line for line in editor.diff(before, d.dump(), "gateway.yaml").splitlines()
               if line[:1] in "+-" and not line.startswith(("+++", "---"))]
    assert [" ".join(line.split()) for line in changed] == [
        "- zone: [[300, 300], [600, 300], [600, 500]] # the bus stop",
        "+ zone: [[300, 300], [640, 300], [600, 500]] # the bus stop"]   # its comment kept
    assert editor.check(d.dump(), path) == []


def test_removing_a_figure_removes_its_rule_or_area(config):
    d = doc(config)
    editor.apply_ops(d, CAMERA, edit({"op": "remove", "path": ["rules", 2]},
                                     {"op": "remove", "path": ["detect", "ignore", 0]}), FRAME)
    settings = yaml.safe_load(d.dump())["cameras"][0]
    assert "carriageway" not in [r.get("name") for r in settings["rules"]]
    assert len(settings["detect"]["ignore"]) == 1


@pytest.mark.parametrize("op, message", [
    ({"op": "add", "kind": "zone_intrusion", "points": [[100, 100], [1400, 100], [300, 300]]}, "outside the 1280x720"),
    ({"op": "move", "path": ["rules", 0, "line"], "points": [[-5, 10], [300, 10]]}, "outside the 1280x720"),
    ({"op": "move", "path": ["url"], "points": [[1, 1], [2, 2]]}, "no figure at url"),
    ({"op": "move", "path": ["rules", 0, "severity"], "points": [[1, 1], [2, 2]]}, "no figure at rules.0.severity"),
    ({"op": "remove", "path": ["signal"]}, "no rule or area at signal"),
    ({"op": "add", "kind": "password", "points": [[1, 1], [2, 2]]}, "no figure of kind 'password'"),
    ({"op": "move", "path": ["rules", 0, "line"], "points": [[1, 1], [2, 2], [3, 3]]}, "exactly two points"),
    ({"op": "add", "kind": "ignore", "points": [[1, 1], [2, 2]]}, "at least 3 points"),
])
def test_bad_figures_are_refused_and_change_nothing(config, op, message):
    before = config.read_text()
    d = doc(config)
    with pytest.raises(editor.Refusal, match=message):
        editor.apply_ops(d, CAMERA, edit(op), FRAME)
    assert config.read_text() == before


def test_a_zone_with_crossing_edges_is_refused_by_the_same_checks_as_check_config(config):
    d = doc(config)
    bow_tie = [[100, 100], [400, 400], [400, 100], [100, 400]]
    editor.apply_ops(d, CAMERA, edit({"op": "move", "path": ["rules", 2, "zone"], "points": bow_tie}), FRAME)
    problems = editor.check(d.dump(), config)
    assert len(problems) == 1 and "cameras[0].rules[2]" in problems[0] and "edges cross" in problems[0]
    assert problems[0].startswith("gateway.yaml:")   # named as the technician's file, not a scratch copy
    from agent.cli import main
    scratch = config.with_name("edited.yaml")
    scratch.write_text(d.dump())
    assert main(["check-config", str(scratch)]) == 2   # check-config refuses the same file


def test_a_stop_line_needs_a_signal_as_check_config_says(config):
    text = config.read_text()
    settings = yaml.safe_load(text)
    del settings["cameras"][0]["signal"]
    settings["cameras"][0]["rules"] = []
    config.write_text(yaml.safe_dump(settings, sort_keys=False))
    d = doc(config)
    editor.apply_ops(d, CAMERA, edit({"op": "add", "kind": "stop_line", "points": [[100, 500], [600, 500]]}), FRAME)
    problems = editor.check(d.dump(), config)
    assert problems and "needs a signal" in problems[0]


def test_an_edit_drawn_on_an_older_file_is_refused(config):
    d = doc(config)
    with pytest.raises(editor.Refusal, match="changed since"):
        editor.apply_ops(d, CAMERA, edit(base="0" * 64), FRAME)


def test_no_picture_no_figures(config):
    with pytest.raises(editor.Refusal, match="no picture yet"):
        editor.apply_ops(doc(config), CAMERA, edit({"op": "add", "kind": "ignore",
                                                    "points": [[1, 1], [9, 1], [9, 9]]}), None)


@pytest.mark.parametrize("body", [
    [], {"ops": "x"}, {"ops": [{"op": "move"}]}, {"ops": [{"op": "move", "path": ["a"], "points": [[1e400, 1], [2, 2]]}]},
    {"ops": [{"op": "add", "kind": "ignore", "points": [[0, 0]] * 65}]}, {"ops": [], "extra": 1},
    {"ops": [{"op": "remove", "path": [{"a": 1}]}]},
])
def test_malformed_edits_are_refused_with_where(body):
    with pytest.raises(editor.Refusal, match="malformed"):
        editor.parse_edit(body)


def test_a_file_of_two_layouts_keeps_both_only_the_edit_shows(tmp_path):
    """The demo writes its lists at two indents and lets PyYAML wrap long flow lists: the diff of
    an edit is still the edit alone."""
    from agent.demo import Endpoints, demo_config
    path = demo_config(tmp_path, Endpoints(1883, 502, 503, 504, camera=junction_camera(
        url="rtsp://127.0.0.1:8554/cam1")))
    before = path.read_text()
    d = editor.Document(before, "cam-01", "cameras")
    editor.apply_ops(d, CAMERA, edit({"op": "add", "kind": "ignore", "points": [[1, 1], [60, 1], [60, 40]]},
                                     {"op": "move", "path": ["rules", 0, "direction"], "points": [[700, 300], [700, 250]]}),
                     FRAME)
    changed = [line for line in editor.diff(before, d.dump(), path.name).splitlines()
               if line[:1] in "+-" and not line.startswith(("+++", "---"))]
    assert sorted(changed) == sorted(["-      direction: up", "+      direction: [[700, 300], [700, 250]]",
                                      "+      - [[1, 1], [60, 1], [60, 40]]"]), changed
    assert editor.check(d.dump(), path) == []


def test_drafts_are_checked_outside_a_read_only_config_directory(config, tmp_path):
    """Under the service /etc/edge-agent is read-only: the check writes its draft elsewhere and
    still resolves relative paths beside the real file (a profile next to it)."""
    profiles = config.parent / "profiles"
    profiles.mkdir()
    from pathlib import Path as P
    shipped = P(__file__).resolve().parents[1] / "config" / "profiles" / "air_monitor_rs485.yaml"
    (profiles / "my_monitor.yaml").write_text(shipped.read_text())
    settings = yaml.safe_load(config.read_text())
    settings["devices"] = [{"id": "aq-01", "driver": "modbus", "unit": 1, "profile": "my_monitor",
                            "connection": {"type": "tcp", "host": "192.0.2.1", "port": 502}}]
    config.write_text(yaml.safe_dump(settings, sort_keys=False))
    config.parent.chmod(0o555)
    present = set(config.parent.iterdir())
    try:
        assert editor.check(config.read_text(), config) == []
        assert set(config.parent.iterdir()) == present   # nothing written beside it (root ignores 0555)
        broken = config.read_text().replace("profile: my_monitor", "profile: nobodys_monitor")
        problems = editor.check(broken, config)
        assert problems and "nobodys_monitor" in problems[0] and problems[0].startswith("gateway.yaml")
    finally:
        config.parent.chmod(0o755)
