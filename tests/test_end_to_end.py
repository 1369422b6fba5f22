"""End to end: Modbus simulator → the real agent process → a real Mosquitto → the reference consumer.

Every message the consumer accepts has passed the contract's JSON Schemas; every test also checks
that nothing invalid arrived.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tests.agent_proc import AgentProcess, agent_config
from tests.hardware_sim.broker import MosquittoBroker
from tests.hardware_sim.consumer import Consumer
from tests.hardware_sim.modbus_sim import ModbusSim

pytestmark = pytest.mark.timeout(90)

GW = "gw-e2e"


def air_devices(port: int, units, poll: str = "500ms", **extra) -> list[dict]:
    return [{"id": f"aq-{u:02d}", "driver": "modbus", "unit": u, "profile": "air_monitor_rs485", "poll": poll,
             "connection": {"type": "tcp", "host": "127.0.0.1", "port": port, "timeout": "300ms"}, **extra}
            for u in units]


@pytest.fixture
def air_sim():
    with ModbusSim("air_monitor_rs485", units=[1, 2, 3], tcp=("127.0.0.1", 0)).run_in_thread() as sim:
        yield sim


def drained(snapshot: dict) -> bool:
    """No backlog left: live traffic keeps a few fresh messages in flight, so depth is rarely 0."""
    oldest = snapshot["buffer"]["oldest_age_s"]
    return oldest is None or oldest < 1.0


def start_agent(tmp_path: Path, config: Path) -> AgentProcess:
    return AgentProcess(config, tmp_path / "agent.log").start()


def test_values_from_simulator_arrive_decoded_and_valid(tmp_path, broker, consumer_factory, air_sim):
    air_sim.set_value(1, "pm25", 42.5)          # float32 ABCD
    air_sim.set_value(1, "temperature", -8.1)   # int16, scale 0.1: a negative value
    air_sim.set_value(1, "so2", 12.25)          # float32 word-swapped (CDAB)
    air_sim.set_value(2, "humidity", 55.3)      # uint16, scale 0.1
    consumer = consumer_factory(gateway=GW)
    devices = air_devices(air_sim.tcp_address[1], [1, 2])
    devices[0]["alarms"] = [{"point": "pm25", "above": 40, "severity": "major"}]
    config = agent_config(tmp_path, broker_port=broker.port, gateway=GW, devices=devices,
                          agent={"metrics_interval": "1s"})
    with start_agent(tmp_path, config) as agent:
        consumer.wait_for(lambda c: c.readings("aq-02", "humidity") and c.counts["metrics"] >= 1, 15)

        def latest(device, point):
            return consumer.readings(device, point)[-1]
        assert latest("aq-01", "pm25").v == 42.5 and latest("aq-01", "pm25").u == "ug/m3"
        assert latest("aq-01", "temperature").v == -8.1
        assert latest("aq-01", "so2").v == 12.25
        assert latest("aq-02", "humidity").v == 55.3
        assert all(r.q == "good" for r in consumer.readings("aq-01", "pm25"))

        assert consumer.last("state").body["online"] is True
        # state and birth are retained: a consumer that subscribes later still gets both at once
        late = consumer_factory(gateway=GW)
        late.wait_for(lambda c: c.last("state") and c.last("birth"), 5)
        assert late.last("state").retain and late.last("birth").retain
        birth = consumer.last("birth").body
        assert [d["id"] for d in birth["devices"]] == ["aq-01", "aq-02"]
        points = {p["name"]: p for p in birth["devices"][0]["points"]}
        assert points["pm25"]["unit"] == "ug/m3" and points["fan_on"]["writable"] is True
        # the agent listens on no port its config does not ask for (Modbus and MQTT are outbound)
        listening = [c for c in psutil.Process(agent.pid).net_connections(kind="inet")
                     if c.status == psutil.CONN_LISTEN]
        assert listening == []
        # the edge rule saw pm25 = 42.5 above 40
        consumer.wait_for(lambda c: c.events("aq-01", "threshold.pm25"), 5)
        alarm = consumer.events("aq-01", "threshold.pm25")[0]
        assert alarm["severity"] == "major" and alarm["data"]["value"] == 42.5
        metrics = consumer.last("metrics").body
        assert metrics["devices"]["aq-01"]["online"] is True
        # QoS 0 metrics leave the outbox too: nothing lingers behind live traffic (one more went out)
        sent = consumer.counts["metrics"]
        consumer.wait_for(lambda c: c.counts["metrics"] > sent, 5)
        agent.wait_status(drained, 5)
    # a clean stop leaves the retained state saying offline
    consumer.wait_for(lambda c: c.last("state").body["online"] is False, 5)
    assert consumer.invalid == [], consumer.invalid


def test_broker_outage_loses_nothing_and_backlog_is_hist(tmp_path, consumer_factory, air_sim):
    # A broker that keeps sessions across a restart, like a production one, so the consumer's own
    # reconnect cannot miss messages: whatever is missing was lost by the agent.
    broker = MosquittoBroker(workdir=tmp_path / "mosquitto", persistent=True).start()
    try:
        consumer = consumer_factory(host=broker.host, port=broker.port, gateway=GW,
                                    client_id="centre", session_expiry=600)
        config = agent_config(tmp_path, broker_port=broker.port, gateway=GW,
                              devices=air_devices(air_sim.tcp_address[1], [1, 2], poll="250ms"))
        with start_agent(tmp_path, config) as agent:
            consumer.wait_for(lambda c: len(c.readings("aq-01", "pm25")) >= 4, 15)
            broker.stop()
            down_ms = int(time.time() * 1000)
            snap = agent.wait_status(lambda s: s["uplink"]["state"] != "connected", 10)
            # real time on purpose: the agent is another process, and the outage must last long
            # enough for 12 polls of each device to be buffered (checked below)
            time.sleep(4)
            buffered = agent.wait_status(lambda s: s["buffer"]["depth"] >= 20)["buffer"]["depth"]
            up_ms = int(time.time() * 1000)
            broker.start()
            agent.wait_status(lambda s: s["uplink"]["state"] == "connected" and drained(s), 15)
            consumer.wait_for(lambda c: any(r.t > up_ms + 1000 for r in c.readings("aq-02", "pm25")), 15)
        for device in ("aq-01", "aq-02"):
            readings = sorted(consumer.readings(device, "pm25"), key=lambda r: r.t)
            gaps = [b.t - a.t for a, b in zip(readings, readings[1:])]
            # polled every 250 ms: no reading missing across the outage (slack for scheduling)
            assert max(gaps) < 700, (device, max(gaps))
            during = [r for r in readings if down_ms + 300 < r.t < up_ms - 300]
            assert len(during) >= 12, len(during)
            assert all(r.hist for r in during), "readings buffered during the outage must be hist"
            after = [r for r in readings if r.t > up_ms + 1000]
            assert after and not any(r.hist for r in after), "live data after the outage is not hist"
        assert snap["uplink"]["last_error"]
        assert buffered >= 20
        assert consumer.invalid == []
    finally:
        broker.close()


def test_sigkill_mid_stream_loses_nothing_committed(tmp_path, broker, consumer_factory, air_sim):
    consumer = consumer_factory(gateway=GW)
    config = agent_config(tmp_path, broker_port=broker.port, gateway=GW,
                          devices=air_devices(air_sim.tcp_address[1], [1, 2, 3], poll="200ms"))
    agent = start_agent(tmp_path, config)
    try:
        consumer.wait_for(lambda c: len(c.readings("aq-01", "pm25")) >= 5, 15)
        # take the uplink away so the outbox holds a backlog at the moment of the kill
        broker.stop()
        agent.wait_status(lambda s: s["buffer"]["depth"] >= 10, 10)
        agent.kill()
        db = sqlite3.connect(tmp_path / "outbox.db")
        unsent = {seq for (seq,) in db.execute("SELECT id FROM messages")}
        last_seq_before = max(unsent)
        db.close()
        assert len(unsent) >= 10
        broker.start()
        consumer.wait_for(lambda c: c.connected, 10)
        agent = start_agent(tmp_path, config)
        agent.wait_status(lambda s: s["uplink"]["state"] == "connected" and drained(s), 20)
        consumer.wait_for(lambda c: unsent <= set(c.seqs(GW)), 10)
        # new seqs continue above everything of the killed run
        after = [r.seq for r in consumer.readings("aq-01", "pm25") if r.seq not in unsent and r.seq > last_seq_before]
        assert after, "the restarted agent sends new readings with higher seqs"
        assert consumer.invalid == []
    finally:
        agent.stop()


def test_dead_unit_does_not_slow_the_others(tmp_path, broker, consumer_factory, air_sim):
    air_sim.set_fault(3, "no_answer")
    consumer = consumer_factory(gateway=GW)
    config = agent_config(tmp_path, broker_port=broker.port, gateway=GW,
                          devices=air_devices(air_sim.tcp_address[1], [1, 2, 3], poll="250ms"))
    with start_agent(tmp_path, config) as agent:
        consumer.wait_for(lambda c: c.events("aq-03", "device.offline"), 15)
        start = time.monotonic()
        counts = {d: len(consumer.readings(d, "pm25")) for d in ("aq-01", "aq-02")}
        # real time on purpose: a rate measured on the agent's process, over the wire (the
        # schedule itself is tested on virtual time in test_modbus_bus.py)
        time.sleep(4)
        elapsed = time.monotonic() - start
        for device, before in counts.items():
            rate = (len(consumer.readings(device, "pm25")) - before) / elapsed
            assert rate >= 3.3, f"{device} polled at {rate:.2f}/s instead of 4/s beside a dead unit"
        snapshot = agent.status()
        shown = subprocess.run([sys.executable, "-m", "agent", "status", "--state-dir", str(agent.state_dir)],
                               capture_output=True, text=True, env={**os.environ, "COLUMNS": "200"})
        assert shown.returncode == 0, shown.stderr
        assert "uplink connected" in shown.stdout and "OFFLINE" in shown.stdout
        assert "aq-03" in shown.stdout and "no answer" in shown.stdout
        assert snapshot["devices"]["aq-03"]["online"] is False
        assert snapshot["devices"]["aq-03"]["errors"] >= 3
        assert snapshot["devices"]["aq-01"]["online"] is True
        event = consumer.events("aq-03", "device.offline")[0]
        assert event["severity"] == "major" and "no answer" in event["data"]["error"]
        # the unit comes back: it is polled again and reported online
        air_sim.set_fault(3, "none")
        consumer.wait_for(lambda c: c.events("aq-03", "device.online") and c.readings("aq-03", "pm25"), 60)
    stopped = subprocess.run([sys.executable, "-m", "agent", "status", "--state-dir", str(agent.state_dir)],
                             capture_output=True, text=True)
    assert stopped.returncode == 1 and "stopped" in stopped.stderr
    assert consumer.invalid == []


def test_broker_refusing_credentials_is_reported_and_nothing_is_lost(tmp_path, consumer_factory, air_sim):
    broker = MosquittoBroker(workdir=tmp_path / "mosquitto", users={"gw": "right", "centre": "c"}).start()
    try:
        password = tmp_path / "mqtt-password"
        password.write_text("wrong\n")
        password.chmod(0o600)
        config = agent_config(tmp_path, broker_port=broker.port, gateway=GW,
                              devices=air_devices(air_sim.tcp_address[1], [1], poll="250ms"),
                              mqtt={"username": "gw", "password": {"file": str(password)}})
        with start_agent(tmp_path, config) as agent:
            snap = agent.wait_status(lambda s: s["uplink"]["state"] == "refused", 15)
            assert "refused the credentials" in snap["uplink"]["last_error"]
            assert "wrong" not in agent.log() and "wrong" not in str(snap)   # the secret never shows
            buffered = agent.wait_status(lambda s: s["buffer"]["depth"] >= 5)["buffer"]["depth"]
        assert buffered >= 5
        # with the right password the restarted agent delivers the backlog
        password.write_text("right\n")
        consumer = consumer_factory(host=broker.host, port=broker.port, gateway=GW,
                                    username="centre", password="c")
        with start_agent(tmp_path, config) as agent:
            agent.wait_status(lambda s: s["uplink"]["state"] == "connected" and drained(s), 20)
            consumer.wait_for(lambda c: sum(r.hist for r in c.readings("aq-01", "pm25")) >= 5, 10)
        assert consumer.invalid == []
    finally:
        broker.close()


def test_unreachable_device_and_garbage_keep_the_agent_up(tmp_path, broker, consumer_factory, air_sim):
    air_sim.set_fault(2, "corrupt")
    consumer = consumer_factory(gateway=GW)
    devices = air_devices(air_sim.tcp_address[1], [1, 2]) + [
        {"id": "aq-nowhere", "driver": "modbus", "unit": 1, "profile": "air_monitor_rs485", "poll": "500ms",
         "connection": {"type": "tcp", "host": "127.0.0.1", "port": 1, "timeout": "200ms"}}]
    config = agent_config(tmp_path, broker_port=broker.port, gateway=GW, devices=devices)
    with start_agent(tmp_path, config) as agent:
        consumer.wait_for(lambda c: c.events("aq-nowhere", "device.offline") and c.events("aq-02", "device.offline"), 20)
        before = len(consumer.readings("aq-01", "pm25"))
        consumer.wait_for(lambda c: len(c.readings("aq-01", "pm25")) >= before + 2, 1.5)   # still polled
        snap = agent.status()
        assert snap["devices"]["aq-02"]["errors"] >= 3
        assert snap["devices"]["aq-nowhere"]["online"] is False
    assert consumer.invalid == []
