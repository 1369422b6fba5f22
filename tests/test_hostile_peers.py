"""Peers that mean harm, against the real agent: an attacker on the broker publishes without a key
on the command topic. Each request is refused once, acknowledged (never delivered again), and the
uplink keeps carrying telemetry. The cases are data: tests/cases/commands/<what it pins>/.

Seen on the code before the fix: a ``sig`` with a non-ASCII character (``hmac.compare_digest``
raised TypeError) or JSON nested 300 levels (the canonical form hit orjson's recursion limit) left
paho's on_message before the PUBACK; the same packet was handled again on every read, 34 000
tracebacks in 13 s, telemetry upstream at 0.
"""

from __future__ import annotations

import time
from pathlib import Path

import orjson
import pytest

from tests.agent_proc import AgentProcess, agent_config
from tests.hardware_sim.broker import MosquittoBroker
from tests.hardware_sim.consumer import Consumer
from tests.hardware_sim.modbus_sim import ModbusSim

pytestmark = pytest.mark.timeout(120)

GW, SITE = "gw-hostile", "lab"
KEY = b"0123456789abcdef0123456789abcdef"
CASES = Path(__file__).parent / "cases" / "commands"


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    """One agent with commands enabled, polling a Modbus unit every 200 ms, for every case."""
    tmp = tmp_path_factory.mktemp("hostile")
    key_file = tmp / "command.key"
    key_file.write_bytes(KEY)
    key_file.chmod(0o600)
    # max_queued 0: the broker keeps every message of a burst for the agent (its default of 1000
    # would drop the rest of a 2000-message flood when the agent is slower than the publisher)
    with MosquittoBroker(workdir=tmp / "mosquitto", max_queued=0) as broker, \
            ModbusSim("air_monitor_rs485", units=[1], tcp=("127.0.0.1", 0)).run_in_thread() as sim:
        devices = [{"id": "aq-01", "driver": "modbus", "unit": 1, "profile": "air_monitor_rs485", "poll": "200ms",
                    "connection": {"type": "tcp", "host": "127.0.0.1", "port": sim.tcp_address[1]}}]
        config = agent_config(tmp, broker_port=broker.port, gateway=GW, site=SITE, devices=devices,
                              commands={"key": {"file": str(key_file)}, "allow": ["buffer.stats"]})
        centre = Consumer(host=broker.host, port=broker.port, gateway=GW, site=SITE).start()
        agent = AgentProcess(config, tmp / "agent.log").start()
        try:
            agent.wait_status(lambda s: s["uplink"]["state"] == "connected", 15)
            centre.wait_for(lambda c: c.last("birth"), 5)
            yield centre, agent
        finally:
            agent.stop()
            centre.stop()


def telemetry_count(centre: Consumer) -> int:
    return len(centre.messages("telemetry", "aq-01"))


@pytest.mark.parametrize("case", sorted(p.name for p in CASES.iterdir() if p.is_dir()))
def test_command_case(gateway, case):
    centre, agent = gateway
    expected = orjson.loads((CASES / case / "expected.json").read_bytes())
    payload = (CASES / case / "payload").read_bytes()
    before = agent.wait_status(lambda s: "commands" in s)
    received, refused = before["commands"]["received"], before["commands"]["refused"].get(expected["code"], 0)

    centre.publish(f"citybrain/v1/{SITE}/{GW}/cmd/buffer.stats", payload)   # returns once the broker has it
    if expected["answered_id"] is not None:
        centre.wait_for(lambda c: c.last("cmd_result", expected["answered_id"]), 5, what="the refusal")
        result = centre.last("cmd_result", expected["answered_id"]).body
        assert result["ok"] is False and result["error"]["code"] == expected["code"], result
    agent.wait_status(lambda s: s["commands"]["refused"].get(expected["code"], 0) == refused + 1, 5)

    # handled once and acknowledged: a redelivered packet would be counted again within this second
    flowing = telemetry_count(centre)
    time.sleep(1.0)
    after = agent.status()
    assert after["commands"]["received"] == received + 1, after["commands"]
    assert after["commands"]["refused"].get(expected["code"], 0) == refused + 1, after["commands"]
    assert not any(b["failures"] for b in after["boundaries"].values()), after["boundaries"]
    assert telemetry_count(centre) >= flowing + 3, "telemetry stopped flowing upstream"
    assert centre.invalid == []


def test_a_flood_of_junk_is_counted_not_answered_and_telemetry_keeps_flowing(gateway):
    """2 000 unsigned requests in a burst: a few answered (answers_per_second), all counted, the audit
    log summarises the rest, and the uplink keeps sending readings while they arrive."""
    centre, agent = gateway
    before = agent.wait_status(lambda s: "commands" in s)["commands"]
    flowing = telemetry_count(centre)
    topic = f"citybrain/v1/{SITE}/{GW}/cmd/buffer.stats"
    for i in range(2000):
        centre.publish(topic, {"id": f"junk-{i}", "ts": 1, "expires": 2, "args": {}}, timeout=10)
    agent.wait_status(lambda s: s["commands"]["received"] >= before["received"] + 2000, 20)
    after = agent.status()["commands"]
    unsigned = after["refused"].get("unsigned", 0) - before["refused"].get("unsigned", 0)
    answered = after["answered_refusals"] - before["answered_refusals"]
    assert unsigned == 2000
    assert answered < 200, f"{answered} refusals answered: a flood must not fill the outbox"
    assert telemetry_count(centre) > flowing, "telemetry stopped while the junk arrived"
    audit = (agent.state_dir / "audit.log").read_bytes().splitlines()
    summaries = [orjson.loads(line) for line in audit if b"refused_unrecorded" in line]
    recorded = sum(1 for line in audit if b'"event":"refused"' in line)
    assert recorded < 400 and summaries, (recorded, len(summaries))
