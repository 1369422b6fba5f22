"""camera.snapshot from the centre: a signed request, the camera's newest frame back through the
evidence path, its sha256 as listed; and `edge-agent snapshot` for a technician on the same camera."""

from __future__ import annotations

import hashlib
import subprocess
import sys

import pytest
import yaml

from tests.agent_proc import REPO, AgentProcess, agent_config
from tests.hardware_sim.camera_sim import CameraSim, junction_camera
from tests.hardware_sim.signal_controller import FAST_PLAN

pytestmark = pytest.mark.timeout(90)

GW, SITE = "gw-snap", "lab"
KEY = b"snap-key-0123456789abcdef0123456"


@pytest.fixture
def stream():
    with CameraSim(plan=FAST_PLAN, seed=5, rates=0, flow=0.5) as camera:
        yield camera


def test_camera_snapshot_through_the_evidence_path(tmp_path, broker, consumer_factory, stream):
    key_file = tmp_path / "command.key"
    key_file.write_bytes(KEY)
    key_file.chmod(0o600)
    config = agent_config(tmp_path, broker_port=broker.port, gateway=GW, site=SITE, devices=[],
                          commands={"key": {"file": str(key_file)}, "allow": [{"command": "camera.snapshot", "devices": ["cam-01"]}]})
    settings = yaml.safe_load(config.read_text())
    camera = junction_camera(url=stream.url, signal_device="tsc-01")
    camera.pop("signal")   # no signal controller here: the snapshot needs only the stream
    camera["rules"] = [r for r in camera["rules"] if r["type"] != "red_light"]
    settings["cameras"] = [camera]
    config.write_text(yaml.safe_dump(settings, sort_keys=False, allow_unicode=True))
    centre = consumer_factory(gateway=GW, site=SITE)
    with AgentProcess(config, tmp_path / "agent.log").start() as agent:
        agent.wait_status(lambda s: s["devices"].get("cam-01", {}).get("online"), 30)
        request = centre.send_command("camera.snapshot", {"camera": "cam-01", "overlay": True}, key=KEY)
        centre.wait_for(lambda c: c.last("cmd_result", request["id"]), 10)
        result = centre.last("cmd_result", request["id"]).body
        assert result["ok"] is True, result
        event_id = result["result"]["event"]
        centre.wait_for(lambda c: "snapshot.jpg" in c.evidence(event_id), 10)
        image = centre.evidence(event_id)["snapshot.jpg"]
        assert image[:2] == b"\xff\xd8" and hashlib.sha256(image).hexdigest() == result["result"]["sha256"]
        [event] = [e for e in centre.events("cam-01", "camera.snapshot") if e["id"] == event_id]
        other = centre.send_command("camera.snapshot", {"camera": "cam-02"}, key=KEY)   # not in the rule
        centre.wait_for(lambda c: c.last("cmd_result", other["id"]), 10)
        assert centre.last("cmd_result", other["id"]).body["error"]["code"] == "not_allowed"
        assert event["evidence"][0]["sha256"] == result["result"]["sha256"]
    # the technician's tool on the same config, the agent stopped
    out = tmp_path / "cam.jpg"
    done = subprocess.run([sys.executable, "-m", "agent", "snapshot", "cam-01", "-c", str(config), "-o", str(out)],
                          capture_output=True, text=True, cwd=REPO, timeout=60)
    assert done.returncode == 0, done.stderr
    assert out.read_bytes()[:2] == b"\xff\xd8"
    assert centre.invalid == []
