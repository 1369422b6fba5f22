"""`edge-agent demo` end to end, in this process: every simulator the demo starts → the real agent
→ the demo's Mosquitto → the demo's reference consumer, which checks each message against the
contract. One run of 25 s serves every test here."""

from __future__ import annotations

import contextlib
import logging
import shlex
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

import pytest

from agent.demo import CAMERA_ID, GB_SIGNAL_ID, SIGNAL_ID, DemoReport, run_demo
from tests.agent_proc import REPO
from tests.fakes import eventually

pytestmark = pytest.mark.timeout(90)

DURATION = 25.0


def gstreamer_available() -> bool:
    """What the camera simulator's RTSP server needs: Debian's python3 with GStreamer's RTSP server."""
    probe = ("import gi; gi.require_version('Gst', '1.0'); gi.require_version('GstRtspServer', '1.0'); "
             "from gi.repository import Gst, GstRtspServer")
    try:
        return subprocess.run(["/usr/bin/python3", "-c", probe], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def run_the_hint(report: DemoReport, results: list[subprocess.CompletedProcess[str]]) -> None:
    """Once the centre hears the agent, send the command the demo's hint line shows, as a user would."""
    with contextlib.suppress(AssertionError):   # never heard: the command below fails, and says so
        eventually(lambda: report.command_hint and report.readings, DURATION, "the centre hearing the agent",
                   every=0.2)
    results.append(subprocess.run(shlex.split(report.command_hint or "false"), cwd=REPO, capture_output=True,
                                  text=True, timeout=30))
    if report.console:   # the console the demo printed, with the password it printed
        import requests
        http = requests.Session()
        login = http.post(report.console + "api/login", json={"name": "admin", "password": report.console_password},
                          timeout=10)
        devices = http.get(report.console + "api/devices", timeout=10)
        CONSOLE.update(login=login.status_code, devices=[d["id"] for d in devices.json().get("devices", [])]
                       if devices.ok else devices.status_code)


CONSOLE: dict[str, object] = {}


@dataclass
class Run:
    report: DemoReport
    hint_result: subprocess.CompletedProcess[str] | None   # the hint line's command, run mid-demo


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Run:
    report = DemoReport()
    hinted: list[subprocess.CompletedProcess[str]] = []
    user = threading.Thread(target=run_the_hint, args=(report, hinted), daemon=True)
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level   # run_demo sets up the agent's logging
    started = time.monotonic()
    user.start()
    try:
        code = run_demo(state_dir=tmp_path_factory.mktemp("demo"), duration=DURATION, live=False, report=report)
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        user.join(30)
    print(f"demo ran {time.monotonic() - started:.1f}s; skipped {report.skipped}; {report.summary}")
    assert code == 0
    return Run(report, hinted[0] if hinted else None)


def test_telemetry_from_modbus_hj212_and_the_signal_controller_arrives_valid(demo: Run):
    centre = demo.report
    assert centre.readings["aq-01"] > 0 and centre.latest["aq-01"]["pm25"][1] == "good"
    assert centre.readings["lamp-07"] > 0
    station = centre.latest["aq-station-01"]
    assert station["pm25"][1] == "good" and 25 < station["pm25"][0] < 45   # the logger's 35.2 ± 3 %
    assert centre.latest[SIGNAL_ID]["phase2"][0] in ("green", "yellow", "red")
    assert centre.latest[GB_SIGNAL_ID]["phase2"][0] in ("green", "yellow", "red")   # over GB/T 20999
    assert centre.latest[GB_SIGNAL_ID]["run_mode"][0] == "local_fixed_time"
    assert centre.invalid == [], centre.invalid
    assert "invalid 0" in centre.summary and "duplicates 0" in centre.summary


def test_the_fire_alarm_arrives_as_a_critical_event_then_the_reset(demo: Run):
    fire = [(kind, severity) for device, kind, severity in demo.report.events if device == "fire-bldg-12"]
    assert ("fire.alarm", "critical") in fire, demo.report.events
    assert ("fire.reset", "major") in fire[fire.index(("fire.alarm", "critical")):], demo.report.events


def test_the_written_config_passes_check_config(demo: Run):
    config = demo.report.config_path
    assert config is not None
    key = config.parent / "command.key"
    assert key.stat().st_mode & 0o777 == 0o600
    checked = subprocess.run([sys.executable, "-m", "agent", "check-config", str(config)],
                             cwd=REPO, capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stderr
    assert ": OK" in checked.stdout and "aq-station-01: driver hj212" in checked.stdout
    assert demo.report.command_hint and f"--command-key {key}" in demo.report.command_hint


def test_the_signed_command_of_the_hint_line_is_executed(demo: Run):
    result = demo.hint_result
    assert result is not None, "the centre never heard the agent"
    assert result.returncode == 0, result.stdout + result.stderr
    assert "cmd_result" in result.stdout and ": ok " in result.stdout
    assert demo.report.latest["lamp-07"]["dimming"] == (40, "good")   # the write, as the next poll read it


def test_the_junction_camera_comes_online(demo: Run):
    if not gstreamer_available():
        pytest.skip("no GStreamer RTSP server under /usr/bin/python3 (python3-gi, gir1.2-gst-rtsp-server-1.0): "
                    "the demo runs without its camera")
    assert "camera" not in demo.report.skipped, demo.report.skipped
    fps = demo.report.latest.get(CAMERA_ID, {}).get("fps")   # the camera's own figures, every 10 s
    online = demo.report.online.get(CAMERA_ID)                # as the metrics said, every 10 s
    assert online is True or (fps is not None and fps[1] == "good"), (online, fps)
    if fps is not None and fps[1] == "good":
        assert fps[0] > 0


def test_the_demo_turns_the_web_console_on_with_a_one_time_password(demo: Run):
    assert demo.report.console and demo.report.console.startswith("http://127.0.0.1:")
    assert CONSOLE.get("login") == 200, CONSOLE
    assert "aq-01" in CONSOLE["devices"] and "lamp-07" in CONSOLE["devices"]
    text = demo.report.config_path.read_text()
    assert "web:" in text and demo.report.console_password not in text   # only its hash is written
