"""Commands from a test acting as the centre, through a real broker, to the real agent process and
the Modbus simulator: signed requests executed, every kind of junk refused with a reason and never
reaching a device, replay protection across restarts, and the audit chain."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from agent.commands import AuditLog
from tests.agent_proc import AgentProcess, agent_config
from tests.hardware_sim.modbus_sim import ModbusSim

pytestmark = pytest.mark.timeout(90)

GW, SITE = "gw-cmd", "lab"
KEY = b"0123456789abcdef0123456789abcdef"


@pytest.fixture
def setup(tmp_path, broker, consumer_factory):
    key_file = tmp_path / "command.key"
    key_file.write_bytes(KEY)
    key_file.chmod(0o600)
    with ModbusSim("air_monitor_rs485", units=[1, 2], tcp=("127.0.0.1", 0)).run_in_thread() as sim:
        port = sim.tcp_address[1]
        devices = [{"id": f"aq-0{u}", "driver": "modbus", "unit": u, "profile": "air_monitor_rs485", "poll": "1s",
                    "connection": {"type": "tcp", "host": "127.0.0.1", "port": port, "timeout": "300ms"}}
                   for u in (1, 2)]
        config = agent_config(tmp_path, broker_port=broker.port, gateway=GW, site=SITE, devices=devices,
                              commands={"key": {"file": str(key_file)}, "answers_per_second": 50,
                                        "allow": ["device.read", "buffer.stats",
                                                  {"command": "device.write", "devices": ["aq-01"]}]})
        centre = consumer_factory(gateway=GW, site=SITE)
        agent = AgentProcess(config, tmp_path / "agent.log").start()
        try:
            agent.wait_status(lambda s: s["uplink"]["state"] == "connected", 15)
            centre.wait_for(lambda c: c.last("birth"), 5)
            yield sim, centre, agent, config
        finally:
            agent.stop()


def result_of(centre, request, timeout=5.0):
    centre.wait_for(lambda c: c.last("cmd_result", request["id"]), timeout)
    return centre.last("cmd_result", request["id"]).body


def test_signed_read_and_write_reach_the_device(setup):
    sim, centre, agent, _ = setup
    sim.set_value(1, "pm25", 61.5)
    read = result_of(centre, centre.send_command("device.read", {"device": "aq-01", "point": "pm25"}, key=KEY))
    assert read["ok"] is True and read["result"]["v"] == 61.5 and read["result"]["u"] == "ug/m3"

    assert sim.values(1)["fan_on"] is True
    write = result_of(centre, centre.send_command(
        "device.write", {"device": "aq-01", "point": "fan_on", "value": False}, key=KEY))
    assert write["ok"] is True
    assert sim.values(1)["fan_on"] is False

    stats = result_of(centre, centre.send_command("buffer.stats", {}, key=KEY))
    assert stats["ok"] and "depth" in stats["result"]
    assert centre.invalid == []


@pytest.mark.parametrize("name, args, code", [
    ("device.write", {"device": "aq-01", "point": "pm25", "value": 1.0}, "not_writable"),   # a measured value
    ("device.write", {"device": "aq-02", "point": "fan_on", "value": False}, "not_allowed"),  # not in the rule
    ("device.write", {"device": "aq-01", "point": "fan_on"}, "bad_args"),                    # no value
    ("device.write", {"device": "aq-01", "point": "report_interval", "value": 70000}, "bad_value"),  # > uint16
    ("device.read", {"device": "aq-09", "point": "pm25"}, "unknown_device"),
    ("device.read", {"device": "aq-01", "point": "pm2.5"}, "unknown_point"),
])
def test_requests_refused_with_a_reason(setup, name, args, code):
    sim, centre, _, _ = setup
    before = sim.values(1)["fan_on"], sim.values(2)["fan_on"]
    result = result_of(centre, centre.send_command(name, args, key=KEY))
    assert result["ok"] is False and result["error"]["code"] == code, result
    assert (sim.values(1)["fan_on"], sim.values(2)["fan_on"]) == before


def test_a_device_answering_with_an_exception_or_not_at_all_is_a_device_error(setup):
    """Whatever the driver's own exception for it, the centre gets ``device_error`` and the reason."""
    sim, centre, _, _ = setup
    sim.set_fault(2, "exception", code=2)           # illegal data address
    refused = result_of(centre, centre.send_command("device.read", {"device": "aq-02", "point": "pm25"}, key=KEY))
    assert refused["ok"] is False and refused["error"]["code"] == "device_error", refused
    assert "illegal data address" in refused["error"]["message"].lower(), refused
    sim.set_fault(2, "no_answer")
    silent = result_of(centre, centre.send_command("device.read", {"device": "aq-02", "point": "pm25"}, key=KEY))
    assert silent["ok"] is False and silent["error"]["code"] == "device_error", silent
    assert centre.invalid == []


def test_junk_is_refused_and_never_reaches_a_device(setup):
    sim, centre, agent, _ = setup
    write = {"device": "aq-01", "point": "fan_on", "value": False}
    cases = {
        "unsigned": centre.send_command("device.write", write, key=None),
        "bad_signature": centre.send_command("device.write", write, key=b"not the key"),
        "expired": centre.send_command("device.write", write, key=KEY, ts=int(time.time() * 1000) - 120_000, ttl_s=60),
        "unknown_command": centre.send_command("device.reboot", {"device": "aq-01"}, key=KEY),
        "not_allowed": centre.send_command("camera.snapshot", {"camera": "cam-01"}, key=KEY),
        "clock": centre.send_command("device.write", write, key=KEY, ts=int(time.time() * 1000) + 3_600_000),
    }
    for code, request in cases.items():
        result = result_of(centre, request)
        assert result["ok"] is False and result["error"]["code"] == code, (code, result)
    # replay: the same signed request twice; the first runs, the second is refused
    read = centre.send_command("device.read", {"device": "aq-01", "point": "pm25"}, key=KEY)
    assert result_of(centre, read)["ok"] is True
    centre.publish(f"citybrain/v1/{SITE}/{GW}/cmd/device.read", {k: v for k, v in read.items()})
    centre.wait_for(lambda c: agent.status()["commands"]["refused"].get("replayed") == 1, 5)
    # garbage without a usable id: counted, nowhere to answer
    centre.publish(f"citybrain/v1/{SITE}/{GW}/cmd/device.write", b"\x00\xff not json")
    centre.publish(f"citybrain/v1/{SITE}/{GW}/cmd/device.write", b"{" + b" " * 20000 + b"}")
    snap = agent.wait_status(lambda s: s["commands"]["refused"].get("malformed", 0) >= 1
                             and s["commands"]["refused"].get("oversize", 0) >= 1, 5)
    assert sim.values(1)["fan_on"] is True, "no refused request may reach the device"
    assert snap["commands"]["executed"] == 1
    assert centre.invalid == []


def test_replay_cache_survives_a_restart_and_audit_chain_holds(setup, tmp_path):
    sim, centre, agent, config = setup
    request = centre.send_command("device.read", {"device": "aq-01", "point": "pm25"}, key=KEY)
    assert result_of(centre, request)["ok"] is True
    agent.stop()
    restarted = AgentProcess(config, tmp_path / "agent2.log").start()
    try:
        restarted.wait_status(lambda s: s["uplink"]["state"] == "connected", 15)
        centre.clear()
        centre.publish(f"citybrain/v1/{SITE}/{GW}/cmd/device.read", request)
        result = result_of(centre, request)
        assert result["ok"] is False and result["error"]["code"] == "replayed"
    finally:
        restarted.stop()
    audit = Path(tmp_path / "state" / "audit.log")
    assert AuditLog.verify(audit) == []
    text = audit.read_text()
    assert '"event":"execute"' in text and '"code":"replayed"' in text
    # rewriting history breaks the chain
    lines = audit.read_text().splitlines()
    lines[0] = lines[0].replace("device.read", "device.write")
    audit.write_text("\n".join(lines) + "\n")
    assert AuditLog.verify(audit)
