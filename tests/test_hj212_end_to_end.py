"""End to end: HJ 212 logger simulator → the real agent process (hj212 bridge) → a real Mosquitto →
the reference consumer, which checks every message against the contract's JSON Schemas."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from tests.agent_proc import AgentProcess, agent_config
from tests.fakes import connected
from tests.hardware_sim.hj212_logger import Hj212Logger, ThreadedLogger, frame

pytestmark = pytest.mark.timeout(60)

GW = "gw-hj212"
MN = "010000A8900016F000169DC0"
DEVICE = "aq-station-01"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def connect(logger: Hj212Logger, port: int, timeout: float = 15.0) -> None:
    """The agent binds its listener a moment after it starts: retry until it does."""
    await connected(lambda: logger.connect("127.0.0.1", port), timeout)


def test_station_readings_arrive_named_with_units_and_valid(tmp_path: Path, broker, consumer_factory):
    port = free_port()
    consumer = consumer_factory(gateway=GW)
    station = {"id": DEVICE, "driver": "hj212", "mn": MN, "st": 22, "stale_after": "1m",
               "listen": {"host": "127.0.0.1", "port": port},
               "points": {"PM25X": {"name": "pm25_vendor", "unit": "ug/m3"}}}
    config = agent_config(tmp_path, broker_port=broker.port, gateway=GW, devices=[station],
                          agent={"metrics_interval": "1s"})
    values = {"a34004": 35.2, "a34002": 61.0, "a21026": 12.5, "a21005": 0.8, "a05024": 80.4,
              "a01001": -3.5, "PM25X": 33.0}
    with AgentProcess(config, tmp_path / "agent.log").start() as agent, \
            ThreadedLogger(Hj212Logger(MN, values=values, flags={"a34002": "D"}, timeout=3.0)) as sim:
        sim.call(connect(sim.logger, port))
        answer = sim.call(sim.logger.send_realtime())
        assert answer is not None and answer["CN"] == "9014" and answer["MN"] == MN
        assert sim.call(sim.logger.send_hour(values={"a34004": 40.0})) is not None
        # a frame with a bad CRC and one from a stranger change nothing the centre sees
        sim.call(sim.logger.send_raw(sim.logger.bad_crc_frame(ack=False)))
        stranger = "QN=20240101120000000;ST=22;CN=2011;PW=123456;MN=STRANGER01;Flag=4;CP=&&a34004-Rtd=999&&"
        sim.call(sim.logger.send_raw(frame(stranger)))
        consumer.wait_for(lambda c: c.readings(DEVICE, "pm25") and c.readings(DEVICE, "pm25.hour.avg")
                          and c.counts["metrics"] >= 1, 20, "pm25 and pm25.hour.avg")

        def latest(point: str):
            return consumer.readings(DEVICE, point)[-1]
        assert (latest("pm25").v, latest("pm25").u, latest("pm25").q) == (35.2, "ug/m3", "good")
        assert (latest("so2").v, latest("so2").u) == (12.5, "ug/m3")
        assert (latest("co").v, latest("co").u) == (0.8, "mg/m3")
        assert (latest("o3").v, latest("temperature").v) == (80.4, -3.5)
        assert (latest("pm10").v, latest("pm10").q) == (61.0, "bad")       # data flag D: analyser fault
        assert (latest("pm25_vendor").v, latest("pm25_vendor").u) == (33.0, "ug/m3")
        assert latest("pm25.hour.avg").v == 40.0 and latest("pm25.hour.max").v == 44.0
        assert latest("pm25.hour.avg").t % 3_600_000 == 0
        birth = consumer.last("birth").body
        [entry] = [d for d in birth["devices"] if d["id"] == DEVICE]
        assert entry["kind"] == "air_monitor" and entry["driver"] == "hj212"
        units = {p["name"]: p["unit"] for p in entry["points"]}
        assert units["pm25"] == "ug/m3" and units["pm25.hour.avg"] == "ug/m3" and units["pm25_vendor"] == "ug/m3"
        assert all(r.v != 999 for r in consumer.readings(DEVICE, "pm25"))
        def counted(snapshot: dict) -> bool:
            driver_stats = snapshot["devices"][DEVICE].get("driver_stats", {})
            return driver_stats.get("bad_frames") == 1 and driver_stats["listener"]["unknown_mn_frames"] == 1
        snapshot = agent.wait_status(counted)
        stats = snapshot["devices"][DEVICE]
        assert stats["online"] is True and stats["driver_stats"]["frames"] == 2
        assert stats["driver_stats"]["listener"]["unknown_mn_frames"] == 1
        assert consumer.last("metrics").body["devices"][DEVICE]["online"] is True
    assert consumer.invalid == [], consumer.invalid
    assert consumer.duplicate_keys == []
