"""End to end: fire-panel simulator -> the real agent process (gb26875 bridge) -> Mosquitto -> the
reference consumer; and `python -m agent decode gb26875 HEX` as a technician runs it.

The consumer checks every message against the contract's schemas; the test checks that a fire
raised at the panel arrives as one event of severity critical (life safety), that the panel got
its confirm (GB/T 26875.3-2011, 6.3) and that the status readings made it too.
"""

from __future__ import annotations

import subprocess
import sys

import orjson
import pytest

from tests.agent_proc import REPO, AgentProcess, agent_config
from tests.hardware_sim.broker import free_port
from tests.hardware_sim.fire_panel import FirePanel
from tests.test_gb26875_frame import FIRE_FRAME

pytestmark = pytest.mark.timeout(60)

GW = "gw-fire"


def test_fire_at_the_panel_arrives_as_a_critical_event(tmp_path, broker, consumer_factory):
    port = free_port()
    consumer = consumer_factory(gateway=GW)
    device = {"id": "fire-bldg-12", "driver": "gb26875", "listen": {"host": "127.0.0.1", "port": port},
              "address": 889, "systems": {1: "fire alarm system, building 12"}}
    config = agent_config(tmp_path, broker_port=broker.port, gateway=GW, devices=[device])
    with AgentProcess(config, tmp_path / "agent.log").start() as agent, \
            FirePanel(address=889, confirm_timeout=2.0).connect("127.0.0.1", port) as panel:
        assert panel.wait_confirmed(panel.system_status(), 15), agent.log()
        serial = panel.fire(0x0002000A, "3楼东侧走廊烟感")
        assert panel.wait_confirmed(serial, 10)
        consumer.wait_for(lambda c: c.events("fire-bldg-12", "fire.alarm"), 10, "the fire event")
        (event,) = consumer.events("fire-bldg-12", "fire.alarm")
        assert event["severity"] == "critical"
        assert event["data"]["description"] == "3楼东侧走廊烟感"
        assert event["data"]["component"] == "c0002000a"
        assert event["data"]["system_name"] == "fire alarm system, building 12"
        consumer.wait_for(lambda c: c.readings("fire-bldg-12", "sys1-1.c0002000a.status"), 10, "status reading")
        assert consumer.readings("fire-bldg-12", "sys1-1.c0002000a.status")[-1].v == 3
        birth = consumer.last("birth").body
        (entry,) = [d for d in birth["devices"] if d["id"] == "fire-bldg-12"]
        assert entry["kind"] == "fire_panel" and any(p["name"] == "sys1-1.fire" for p in entry["points"])
        status = agent.wait_status(lambda s: s["devices"]["fire-bldg-12"].get("driver_stats", {})
                                   .get("confirms_sent", 0) >= 2)
        assert status["devices"]["fire-bldg-12"]["online"] is True
    assert consumer.invalid == [], consumer.invalid


def decode(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent", "decode", "gb26875", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=30)


def test_decode_cli_exit_codes():
    good = decode(" ".join(f"{b:02x}" for b in FIRE_FRAME))
    assert good.returncode == 0, good.stderr
    decoded = orjson.loads(good.stdout)
    assert decoded["command_name"] == "send_data" and decoded["app_data"]["objects"][0]["status_bits"] == ["fire"]

    bad = bytearray(FIRE_FRAME)
    bad[-3] ^= 1
    result = decode(bytes(bad).hex())
    assert result.returncode == 1
    assert f"at byte {len(FIRE_FRAME) - 3}: bad checksum: expected 0x46" in result.stderr
    assert "found 0x47" in result.stderr

    result = decode(FIRE_FRAME[:-2].hex())
    assert result.returncode == 1 and "bad length" in result.stderr and "missing '##'" in result.stderr
