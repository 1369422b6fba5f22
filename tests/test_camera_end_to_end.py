"""End to end: the simulated junction over RTSP + the signal controller over SNMP → the real agent
process (camera driver, signal-controller bridge) → a real Mosquitto → the reference consumer.

A red-light runner staged by the traffic simulator arrives at the centre as a
``violation.red_light`` event whose evidence files (three stills, crop, then the clip) arrive
with the sha256 the event lists; the plate text is the simulated car's.
"""

from __future__ import annotations

import hashlib
import time

import pytest

from tests.agent_proc import AgentProcess, agent_config
from tests.hardware_sim.camera_sim import CameraSim, junction_camera
from tests.hardware_sim.signal_controller import FAST_PLAN, SignalControllerSim
from tests.test_signal_controller import ntcip_entry

pytestmark = pytest.mark.timeout(150)

GW = "gw-cam"


@pytest.fixture
def junction():
    with SignalControllerSim(FAST_PLAN, snmp=("127.0.0.1", 0)).run_in_thread() as controller:
        with CameraSim(plan=FAST_PLAN, plan_epoch=controller.controller.t0, seed=3, flow=2.0,
                       rates={"red_light": 8.0, "illegal_parking": 0, "wrong_way": 0, "zone_intrusion": 0}) as camera:
            yield controller, camera


def test_staged_red_light_arrives_with_evidence_whose_sha256_match(tmp_path, broker, consumer_factory, junction):
    controller, stream = junction
    consumer = consumer_factory(gateway=GW)
    signal = ntcip_entry(controller.snmp_address[1], poll="100ms")
    signal["id"] = "tsc-01"
    camera = junction_camera(url=stream.url, signal_device="tsc-01", evidence={"clip_before": "3s", "clip_after": "2s"})
    config = agent_config(tmp_path, broker_port=broker.port, gateway=GW, devices=[signal])
    text = config.read_text()
    import yaml
    settings = yaml.safe_load(text)
    settings["cameras"] = [camera]
    config.write_text(yaml.safe_dump(settings, sort_keys=False, allow_unicode=True))

    with AgentProcess(config, tmp_path / "agent.log").start() as agent:
        agent.wait_status(lambda s: s["devices"].get("cam-01", {}).get("online"), 30)
        consumer.wait_for(lambda c: c.events("cam-01", "violation.red_light"), 90)
        event = consumer.events("cam-01", "violation.red_light")[0]
        listed = {f["name"]: f for f in event["evidence"]}
        assert set(listed) == {"0.jpg", "1.jpg", "2.jpg", "crop.jpg"}
        consumer.wait_for(lambda c: set(c.evidence(event["id"])) >= set(listed), 15)
        files = consumer.evidence(event["id"])
        for name, entry in listed.items():
            assert hashlib.sha256(files[name]).hexdigest() == entry["sha256"], name
            assert len(files[name]) == entry["bytes"] and files[name][:2] == b"\xff\xd8"   # JPEG
        data = event["data"]
        assert data["signal"] == "red" and data["class"] in ("car", "bus", "truck")
        truth = [r for r in stream.ground_truth() if r["type"] == "red_light"]
        assert truth, "the simulator staged no red-light runner"
        nearest = min(truth, key=lambda r: abs(r["ts_violation"] - data["t_violation"]))
        assert abs(nearest["ts_violation"] - data["t_violation"]) < 1500
        assert data["plate"] == nearest["plate"]
        # the clip follows as its own event naming the violation
        consumer.wait_for(lambda c: any(e["data"].get("event") == event["id"]
                                        for e in c.events("cam-01", "evidence.clip")), 20)
        clip_event = next(e for e in consumer.events("cam-01", "evidence.clip") if e["data"]["event"] == event["id"])
        (clip,) = clip_event["evidence"]
        consumer.wait_for(lambda c: c.evidence_file(clip_event["id"], clip) is not None, 15,
                          what=f"every part of {clip['name']}")
        body = consumer.evidence_file(clip_event["id"], clip)
        assert hashlib.sha256(body).hexdigest() == clip["sha256"]
        status = agent.status()["devices"]["cam-01"]["driver_stats"]
        assert status["commit_ms_p95"] is not None and status["commit_ms_p95"] < 1000
        # the contract's inference latency, on the metrics topic (every 5 s here)
        consumer.wait_for(lambda c: c.last("metrics") and c.last("metrics").body.get("inference", {})
                          .get("cam-01", {}).get("commit_ms_p95") is not None, 10)
        inference = consumer.last("metrics").body["inference"]["cam-01"]
        assert 0 < inference["infer_ms_p50"] <= inference["infer_ms_p95"] and inference["fps"] > 1
    assert consumer.invalid == [], consumer.invalid
