"""Emergency-vehicle priority on a GB/T 20999 controller, end to end: a signed signal.priority from a
test acting as the centre (through a real Mosquitto) reaches the agent, which holds the stage at
the simulated controller (UDP); the controller goes back to its own run mode and plan at expiry,
and, with the link cut mid-hold, as soon as the link is back. The centre sees the NTCIP path's
points and events."""

from __future__ import annotations

import time

import orjson
import pytest

from tests.agent_proc import AgentProcess
from tests.priority_e2e import request_priority, start_agent
from tests.fakes import eventually
from tests.hardware_sim.gbt20999_controller import Gbt20999Sim
from tests.hardware_sim.signal_controller import FAST_PLAN
from tests.test_signal_controller import PHASES

pytestmark = pytest.mark.timeout(90)

GW, SITE, DEVICE = "gw-gb", "lab", "tsc-gb"
KEY = b"gb-prio-key-0123456789abcdef0123"
LOCAL_FIXED_TIME = 0x21


@pytest.fixture
def gbsim():
    with Gbt20999Sim(FAST_PLAN, udp=("127.0.0.1", 0)).run_in_thread() as s:
        yield s


def start(tmp_path, broker, sim, preempts=None):
    device = {"id": DEVICE, "driver": "signal_controller", "protocol": "gbt20999", "poll": "200ms",
              "connection": {"transport": "udp", "host": "127.0.0.1", "port": sim.udp_address[1], "local_port": 0,
                             "timeout": "300ms"},
              "phases": PHASES, "offline_after": 2, "backoff": {"initial": "200ms", "max": "500ms"},
              "report": {"mode": "on_change", "max_silence": "10s"},
              "priority": {"preempt": preempts or {2: 1, 4: 2}, "min_duration": "1s", "max_duration": "20s"}}
    return start_agent(tmp_path, broker, device, KEY, gateway=GW, site=SITE)


def request(centre, phase, duration_s):
    return request_priority(centre, DEVICE, KEY, phase, duration_s)


def not_green(sim) -> int:
    return 4 if sim.view().vehicles[2] == "green" else 2


def test_signed_priority_holds_the_stage_and_the_plan_comes_back_at_expiry(tmp_path, broker, consumer_factory, gbsim):
    centre = consumer_factory(gateway=GW, site=SITE)
    with start(tmp_path, broker, gbsim):
        centre.wait_for(lambda c: c.readings(DEVICE, "phase2") and c.readings(DEVICE, "run_mode"), 10)
        phase = not_green(gbsim)
        asked = time.monotonic()
        granted = request(centre, phase, 3)
        assert granted["ok"] is True and granted["result"]["granted_s"] == 3 and granted["result"]["phase"] == phase
        assert gbsim.held_stage == {2: 1, 4: 2}[phase]
        eventually(lambda: gbsim.view().mode == "dwell" and gbsim.view().vehicles[phase] == "green", 4)
        restored = eventually(lambda: gbsim.held_stage is None and gbsim.run_mode == LOCAL_FIXED_TIME, 6) and \
            time.monotonic()
        assert 2.8 <= restored - asked <= 4.5
        centre.wait_for(lambda c: c.events(DEVICE, "signal.priority_ended"), 5)
        assert centre.events(DEVICE, "signal.priority_ended")[0]["data"]["reason"] == "expired"
        steps = [e["data"]["step"] for e in centre.events(DEVICE, "signal.control")]
        assert steps == ["saved", "hold", "restored"]
        centre.wait_for(lambda c: any(r.v == "centre_manual" for r in c.readings(DEVICE, "run_mode")), 5)
        centre.wait_for(lambda c: c.readings(DEVICE, "run_mode")[-1].v == "local_fixed_time", 5)
        assert {r.v for r in centre.readings(DEVICE, f"phase{phase}")} >= {"green", "red"}
    assert centre.invalid == []


def test_a_link_cut_mid_hold_gets_the_plan_back_when_it_returns(tmp_path, broker, consumer_factory, gbsim):
    centre = consumer_factory(gateway=GW, site=SITE)
    with start(tmp_path, broker, gbsim):
        centre.wait_for(lambda c: c.readings(DEVICE, "phase2"), 10)
        granted = request(centre, not_green(gbsim), 2)
        assert granted["ok"] is True and gbsim.held_stage is not None
        gbsim.cut()
        centre.wait_for(lambda c: c.events(DEVICE, "signal.priority_ended"), 6)
        assert centre.events(DEVICE, "signal.priority_ended")[0]["data"]["release_confirmed"] is False
        centre.wait_for(lambda c: c.events(DEVICE, "device.offline"), 6)
        assert gbsim.held_stage is not None              # nothing reached the controller
        time.sleep(1.0)
        back = time.monotonic()
        gbsim.restore()
        eventually(lambda: gbsim.held_stage is None and gbsim.run_mode == LOCAL_FIXED_TIME, 5)
        took = time.monotonic() - back
        assert took < 2.0, took
        centre.wait_for(lambda c: c.events(DEVICE, "signal.priority_release_confirmed"), 5)
        assert [e["data"]["step"] for e in centre.events(DEVICE, "signal.control")][-1] == "restored"
    assert centre.invalid == []


def test_a_hold_the_controller_refuses_is_a_device_error_at_the_centre(tmp_path, broker, consumer_factory, gbsim):
    centre = consumer_factory(gateway=GW, site=SITE)
    with start(tmp_path, broker, gbsim, preempts={2: 1, 4: 9}):   # the controller has no stage 9
        centre.wait_for(lambda c: c.readings(DEVICE, "phase2"), 10)
        refused = request(centre, 4, 5)
        assert refused["ok"] is False and refused["error"]["code"] == "device_error", refused
        assert "bad value" in refused["error"]["message"] and "11.01.02.01" in refused["error"]["message"]
        assert gbsim.held_stage is None and gbsim.run_mode == LOCAL_FIXED_TIME
    assert centre.invalid == []


def test_an_agent_killed_during_a_hold_restores_the_plan_when_it_starts_again(tmp_path, broker, consumer_factory,
                                                                              gbsim):
    """kill -9 mid-hold leaves the controller on the held stage (GB/T 20999 holds have no
    duration); the next run, from the same state directory, finds the hold's record and puts the
    controller's own run mode and plan back as soon as it answers."""
    centre = consumer_factory(gateway=GW, site=SITE)
    gbsim.sim.plan_number = 2                 # not the simulator's first plan: the record must carry it
    record = tmp_path / "state" / "families" / "signal_controller" / f"{DEVICE}.json"
    first = start(tmp_path, broker, gbsim)
    try:
        centre.wait_for(lambda c: c.readings(DEVICE, "phase2"), 10)
        phase = not_green(gbsim)
        granted = request(centre, phase, 15)
        assert granted["ok"] is True and gbsim.held_stage == {2: 1, 4: 2}[phase]
        kept = orjson.loads(record.read_bytes())
        assert (kept["run_mode"], kept["plan"], kept["stage"]) == (LOCAL_FIXED_TIME, 2, gbsim.held_stage)
        # written just before the hold was sent; the grant is stamped once the controller confirmed it
        assert 0 <= granted["result"]["expires_ms"] - kept["expires_ms"] < 1000
    finally:
        first.kill()
        first.stop()
    time.sleep(1.0)                           # the controller keeps the stage: nobody lets it go
    assert gbsim.held_stage is not None and gbsim.run_mode == 0x15
    gbsim.sim.plan_number = 1                 # changed while nobody watched: the record's plan is put back
    started = time.monotonic()
    with AgentProcess(first.config, tmp_path / "agent2.log").start():
        eventually(lambda: gbsim.held_stage is None and gbsim.run_mode == LOCAL_FIXED_TIME, 15)
        took = time.monotonic() - started
        assert gbsim.plan_number == 2
        assert took < 10.0, took               # a Python start, a bind and one answered poll
        eventually(lambda: not record.exists(), 5)
        centre.wait_for(lambda c: [e for e in c.events(DEVICE, "signal.control")
                                   if e["data"]["step"] == "restored" and e["data"].get("reason")], 10)
        steps = [e["data"] for e in centre.events(DEVICE, "signal.control")]
        found = [d for d in steps if d["step"] == "restart_found_hold"]
        assert found and found[0]["stage"] == kept["stage"] and found[0]["plan"] == 2
        restored = [d for d in steps if d["step"] == "restored"][-1]
        assert restored["reason"] == "agent restarted during a hold" and restored["plan"] == 2
        assert restored["run_mode_code"] == LOCAL_FIXED_TIME
    print(f"agent restart to restored plan: {took:.2f}s")
    assert centre.invalid == []
