"""The signal-controller bridge's GB/T 20999 path against the GB/T 20999 simulator over real UDP and
TCP sockets: phase colours as the plan shows them, the NTCIP path's point names, seq + 1 answers,
faults (no answer, error replies, garbage, bad CRC), traps and heartbeats, and a held stage with
the controller's run mode and plan put back (at expiry, on release, centre silence, shutdown, and
when a link lost during the hold comes back)."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Iterator
from typing import Any

import pytest

from agent.core.config import DeviceConfig
from firmware_bridges.signal_controller.errors import ControllerOffline, Refused
from firmware_bridges.signal_controller.runner import SignalRunner
from tests.fakes import until
from tests.hardware_sim.gbt20999_controller import Gbt20999Sim
from tests.hardware_sim.pty import PtyPair
from tests.hardware_sim.signal_controller import FAST_PLAN, ThreadedSignalSim
from tests.test_signal_controller import PHASES, ReportingSink, expected_colours, running

pytestmark = pytest.mark.timeout(60)

DEVICE = "tsc-gb"
LOCAL_FIXED_TIME = 0x21


def sync(test: Any) -> Any:
    """Run an async test body with asyncio.run (as the other signal-controller tests do)."""
    @functools.wraps(test)
    def run(*args: Any, **kwargs: Any) -> None:
        asyncio.run(test(*args, **kwargs))
    return run


def gb_device(sim: ThreadedSignalSim, transport: str = "udp", *, poll: str = "100ms", preempts: Any = None,
              connection: dict[str, Any] | None = None, **priority: Any) -> DeviceConfig:
    if transport == "serial":
        where: dict[str, Any] = {"serial": {"port": sim.agent_port, "baudrate": 115200}}
    else:
        where = {"host": "127.0.0.1", "port": sim.udp_address[1] if transport == "udp" else sim.tcp_address[1],
                 "local_port": 0}
    return DeviceConfig.model_validate({
        "id": DEVICE, "driver": "signal_controller", "protocol": "gbt20999", "poll": poll,
        "connection": {"transport": transport, **where, "timeout": "200ms", "heartbeat": 0, **(connection or {})},
        "phases": PHASES, "offline_after": 2, "backoff": {"initial": "100ms", "max": "300ms"}, "detectors": [2, 4],
        "priority": {"preempt": preempts or {2: 1, 4: 2}, "min_duration": "1s", "max_duration": "5s", **priority}})


@pytest.fixture
def gbsim() -> Iterator[ThreadedSignalSim]:
    with PtyPair() as pty, Gbt20999Sim(FAST_PLAN, udp=("127.0.0.1", 0), tcp=("127.0.0.1", 0),
                                       serial=pty.sim_port).run_in_thread() as s:
        s.agent_port = pty.agent_port   # the agent's end of the serial line
        yield s


def latest(sink: ReportingSink, point: str) -> Any:
    reading = sink.latest(DEVICE, point)
    return None if reading is None else reading.value


def events(sink: ReportingSink, kind: str) -> list[dict[str, Any]]:
    return [d.event.data for d in sink.event_log if d.event.type == kind]


def held_phase(sim: ThreadedSignalSim) -> int:
    """A phase with a stage (2 or 4) that is not green now."""
    return 4 if sim.view().vehicles[2] == "green" else 2


@pytest.mark.parametrize("transport", ["udp", "tcp", "serial"])
@pytest.mark.parametrize("echo_seq", [False, True], ids=["seq+1", "echo"])
@sync
async def test_phases_and_stage_follow_the_plan_with_the_ntcip_point_names(gbsim, transport, echo_seq):
    gbsim.sim.echo_seq = echo_seq
    sink = ReportingSink()
    async with running(gb_device(gbsim, transport), sink) as runner:
        await until(lambda: len(sink.batches) >= 60, 15, "60 polls (6 s of the 9 s cycle)")
        checked = 0
        for batch in sink.batches[5:]:
            values = {r.point: r.value for r in batch.readings}
            t = batch.readings[0].t
            assert {p: values[f"phase{p}"] for p in (2, 4, 6, 8)} in expected_colours(gbsim, t), t
            assert values["run_mode"] == "local_fixed_time" and values["plan"] == 1
            assert values["stage"] in (1, 2) and values["stage_state"] in ("running", "transition")
            assert values["ped2"] in ("walk", "flashing", "dont_walk") and values["preempt"] is False
            checked += 1
        assert checked >= 50
        seen = {(r.point, r.value) for b in sink.batches for r in b.readings}
        assert {("phase2", "green"), ("phase2", "yellow"), ("phase2", "red"), ("ped2", "walk"),
                ("ped2", "flashing"), ("det4", True)} <= seen
        stats = runner.stats()[DEVICE]["protocol"]
        assert stats["unmatched"] == 0 and stats["bad_frames"] == 0 and stats["answers"] == stats["requests"]
        assert sink.states[-1][1] is True


@pytest.mark.parametrize("fault", ["silent", "garbage", "bad_crc", "error"])
@sync
async def test_a_faulty_controller_goes_offline_with_the_reason_and_comes_back(gbsim, fault):
    sink = ReportingSink()
    async with running(gb_device(gbsim), sink) as runner:
        await until(lambda: sink.states and sink.states[-1][1], 5, "online")
        gbsim.sim.fault = fault
        await until(lambda: sink.states[-1][1] is False, 5, "offline")
        reason = sink.states[-1][2]
        expected = {"silent": "no answer", "garbage": "no answer", "bad_crc": "no answer", "error": "general error"}
        assert expected[fault] in reason, reason
        with pytest.raises(ControllerOffline):
            await runner.request_priority(DEVICE, 2, duration_s=2)
        protocol = runner.stats()[DEVICE]["protocol"]
        if fault in ("garbage", "bad_crc"):
            assert protocol["bad_frames"] >= 1
        if fault == "error":
            assert protocol["error_replies"] >= 1
        polls = runner.stats()[DEVICE]["polls"]
        gbsim.sim.fault = None
        await until(lambda: sink.states[-1][1] is True and runner.stats()[DEVICE]["polls"] > polls + 3, 5, "back")


@sync
async def test_a_refused_hold_is_a_device_error_and_changes_nothing(gbsim):
    sink = ReportingSink()
    async with running(gb_device(gbsim, preempts={2: 1, 4: 9}), sink) as runner:   # the plan has 2 stages
        await until(lambda: sink.states and sink.states[-1][1], 5, "online")
        with pytest.raises(Refused, match="bad value"):
            await runner.request_priority(DEVICE, 4, duration_s=2)
        assert gbsim.run_mode == LOCAL_FIXED_TIME and gbsim.held_stage is None and runner.priority.active is None
    from firmware_bridges.signal_controller.gbt20999.client import DeviceRefused
    assert issubclass(DeviceRefused, Refused) and not issubclass(DeviceRefused, (ValueError, ConnectionError))


@pytest.mark.parametrize("transport", ["udp", "tcp", "serial"])
@sync
async def test_a_held_stage_shows_and_the_mode_and_plan_come_back_at_expiry(gbsim, transport):
    sink = ReportingSink()
    async with running(gb_device(gbsim, transport), sink) as runner:
        await until(lambda: latest(sink, "phase2") is not None, 5, "first poll")
        phase = held_phase(gbsim)
        asked = time.monotonic()
        grant = await runner.request_priority(DEVICE, phase, duration_s=2, source="req-1")
        assert grant.preempt == {2: 1, 4: 2}[phase] and gbsim.run_mode == 0x15
        await until(lambda: gbsim.view().mode == "dwell" and latest(sink, f"phase{phase}") == "green", 4, "green")
        await until(lambda: latest(sink, "preempt") is True and latest(sink, "run_mode") == "centre_manual", 2)
        partner = {2: 6, 4: 8}[phase]          # the held stage's other phase is green with it
        assert gbsim.view().vehicles == {p: "green" if p in (phase, partner) else "red" for p in (2, 4, 6, 8)}
        await until(lambda: latest(sink, f"phase{partner}") == "green", 2, "the stage's partner green")
        gbsim.sim.plan_number = 2            # someone changed the plan during the hold: it is put back too
        await until(lambda: gbsim.run_mode == LOCAL_FIXED_TIME, 4, "restore")
        assert 1.8 < time.monotonic() - asked < 3.0
        assert gbsim.plan_number == 1 and gbsim.held_stage is None
        steps = [(what, value) for _, what, value in gbsim.log]
        assert steps[0] == ("stage", grant.preempt) and steps[-2:] == [("plan", 1), ("run_mode", LOCAL_FIXED_TIME)]
        await until(lambda: events(sink, "signal.priority_ended"), 2)
        audit = [e["step"] for e in events(sink, "signal.control")]
        assert audit == ["saved", "hold", "restored"]
        assert events(sink, "signal.control")[0] | {"plan": 1} == {"step": "saved", "run_mode": "local_fixed_time",
                                                                     "run_mode_code": LOCAL_FIXED_TIME, "plan": 1}
        ended = events(sink, "signal.priority_ended")[0]
        assert ended["reason"] == "expired" and ended["release_confirmed"] is True


@sync
async def test_hold_mode_is_set_before_the_stage_where_the_controller_needs_it(gbsim):
    sink = ReportingSink()
    async with running(gb_device(gbsim, connection={"hold_mode": 0x15}), sink) as runner:
        await until(lambda: latest(sink, "phase2") is not None, 5)
        await runner.request_priority(DEVICE, held_phase(gbsim), duration_s=5)
        await runner.release_priority(DEVICE)
        steps = [(what, value) for _, what, value in gbsim.log]
        assert steps[:2] == [("run_mode", 0x15), ("stage", steps[1][1])]
        assert steps[-1] == ("run_mode", LOCAL_FIXED_TIME) and gbsim.held_stage is None


@pytest.mark.parametrize("how", ["release", "centre_silent", "shutdown"])
@sync
async def test_the_mode_comes_back_on_release_centre_silence_and_shutdown(gbsim, how):
    sink = ReportingSink()
    async with running(gb_device(gbsim), sink) as runner:
        await until(lambda: latest(sink, "phase2") is not None, 5)
        await runner.request_priority(DEVICE, held_phase(gbsim), duration_s=5)
        assert gbsim.held_stage is not None
        if how == "release":
            await runner.release_priority(DEVICE)
        elif how == "centre_silent":
            runner.centre_lost()
            await until(lambda: gbsim.run_mode == LOCAL_FIXED_TIME, 2)
    # shutdown: leaving ``running`` closes the runner, which releases first
    assert gbsim.run_mode == LOCAL_FIXED_TIME and gbsim.held_stage is None
    reason = events(sink, "signal.priority_ended")[0]["reason"]
    assert reason == {"release": "released", "centre_silent": "centre_silent", "shutdown": "shutdown"}[how]


@pytest.mark.parametrize("transport", ["udp", "tcp", "serial"])
@sync
async def test_a_link_lost_during_the_hold_gets_its_plan_back_as_soon_as_it_returns(gbsim, transport):
    sink = ReportingSink()
    async with running(gb_device(gbsim, transport), sink) as runner:
        await until(lambda: latest(sink, "phase2") is not None, 5)
        await runner.request_priority(DEVICE, held_phase(gbsim), duration_s=1)
        gbsim.cut()
        await until(lambda: events(sink, "signal.priority_ended"), 4, "expiry")
        ended = events(sink, "signal.priority_ended")[0]
        assert ended["release_confirmed"] is False and ended["reason"] == "expired"
        assert gbsim.held_stage is not None                # the controller still holds it: the link is down
        await until(lambda: sink.states[-1][1] is False, 4, "offline")
        await asyncio.sleep(2.5)                           # a few release retries fail meanwhile
        assert gbsim.held_stage is not None
        back = time.monotonic()
        gbsim.restore()
        await until(lambda: gbsim.run_mode == LOCAL_FIXED_TIME and gbsim.held_stage is None, 3, "restored")
        took = time.monotonic() - back
        assert took < 1.0, took          # at the first answer, not at the next retry
        await until(lambda: events(sink, "signal.priority_release_confirmed"), 2)
        assert [e["step"] for e in events(sink, "signal.control")][-1] == "restored"
        steps = [e["step"] for e in events(sink, "signal.control")]
        assert steps.count("restore_failed") == 1            # the first of the series, not every retry
        assert events(sink, "signal.control")[-1]["attempts"] > 1
        assert runner.priority.stats.pending_release == []


@sync
async def test_traps_become_events_and_heartbeats_are_sent(gbsim):
    sink = ReportingSink()
    async with running(gb_device(gbsim, connection={"heartbeat": "1s"}), sink) as runner:
        await until(lambda: latest(sink, "phase2") is not None, 5)
        assert gbsim.send_trap([(bytes((15, 2, 2, 1)), b"\x10")]) == 2     # an alarm (class 15): our UDP port, and the serial line
        assert gbsim.send_trap([(bytes((13, 2, 4, 1)), b"\x02")]) == 2     # a stage report: counted only
        await until(lambda: runner.stats()[DEVICE]["protocol"]["traps"] == 2, 2)
        alarm = events(sink, "signal.controller_alarm")
        assert len(alarm) == 1 and alarm[0]["values"][0]["class"] == 15 and alarm[0]["values"][0]["raw"] == "10"
        await until(lambda: gbsim.kinds.get(0x70, 0) >= 1, 3, "a heartbeat")
        assert runner.link.heartbeat_failures == 0


def test_config_names_the_key_to_fix():
    from agent.core.config import ConfigError
    from agent.core.registry import get_driver
    driver = get_driver("signal_controller")
    base = {"id": DEVICE, "driver": "signal_controller", "protocol": "gbt20999", "phases": {2: {}},
            "connection": {"host": "192.0.2.30"}}
    options = driver.options(DeviceConfig.model_validate(base))
    assert options.connection.port == 4050 and options.connection.local_port == 5051
    for bad, words in [({"connection": {"host": "h", "hold_mode": 0x99}}, "unknown run mode"),
                       ({"unit": 1}, "'unit' is for protocol modbus_io"),
                       ({"priority": {"preempt": {2: 300}}}, "stage numbers are 1..255")]:
        with pytest.raises(Exception, match=words):
            driver.options(DeviceConfig.model_validate(base | bad))
    second = DeviceConfig.model_validate(base | {"id": "tsc-2", "connection": {"host": "192.0.2.31"}})
    problems = driver.validate_devices([DeviceConfig.model_validate(base), second])
    assert problems and "both listen on UDP port 5051" in problems[0]
    assert ConfigError


def test_lamp_group_states_become_the_ntcip_colours():
    from firmware_bridges.signal_controller.gbt20999.link import _PED, _VEHICLE, lamp_of
    assert lamp_of([0x21], _VEHICLE).value == "green"          # green flashing (before yellow) is still green
    assert lamp_of([0x40], _VEHICLE).value == "red"            # red + yellow
    assert lamp_of([0x31], _VEHICLE).value == "yellow"         # yellow flash (flash mode)
    assert lamp_of([0x01], _VEHICLE) == lamp_of([], _VEHICLE)  # off, or no lamp group: dark
    assert lamp_of([], _VEHICLE).value == "dark" and not lamp_of([], _VEHICLE).conflict
    odd = lamp_of([0x99], _VEHICLE)
    assert odd.value == "dark" and odd.conflict                # a state the standard does not list: flagged
    two = lamp_of([0x20, 0x10], _VEHICLE)
    assert two.value == "green" and two.conflict               # two groups of one phase disagree: flagged
    assert [lamp_of([s], _PED).value for s in (0x20, 0x21, 0x10, 0x01)] == ["walk", "flashing", "dont_walk", "dark"]


@sync
async def test_an_answer_of_an_impossible_size_fails_the_poll_as_the_controllers_fault(gbsim):
    from firmware_bridges.signal_controller.errors import BadAnswer
    from firmware_bridges.signal_controller.gbt20999 import objects as o
    from agent.core.registry import get_driver

    device = gb_device(gbsim)
    runner = SignalRunner(device, get_driver("signal_controller").options(device), ReportingSink())
    link = runner.link
    answers = {o.run_mode(1): b"\x21\x00\x00"}

    async def query(ids):
        return {tuple(i): answers.get(tuple(i), bytes(8) if i[:3] == (4, 2, 2) else b"\x01") for i in ids}

    link.client.query = query
    with pytest.raises(BadAnswer, match="0D.02.02.01 came as 3 bytes"):
        await link.read_status()
    answers[o.run_mode(1)] = b"\x21"
    answers[o.DETECTOR_PRESENCE] = bytes(8)
    answers.update({o.stage_remaining(1): b"\x00\x05"})
    status = await link.read_status()
    assert status.extra["run_mode"] == "local_fixed_time" and status.extra["stage_remaining_s"] == 5


@sync
async def test_a_stage_that_does_not_serve_the_phase_is_refused_before_anything_is_set(gbsim):
    sink = ReportingSink()
    # the simulator's stage 1 is phases 2 and 6, stage 2 phases 4 and 8: phase 4 -> stage 1 is wrong
    async with running(gb_device(gbsim, preempts={2: 1, 4: 1}), sink) as runner:
        await until(lambda: latest(sink, "phase2") is not None, 5)
        assert runner.link.layout.stages == {1: (2, 6)}
        with pytest.raises(Refused, match=r"stage 1 serves phase\(s\) 2, 6, not 4 as"):
            await runner.request_priority(DEVICE, 4, duration_s=2)
        assert gbsim.log == [] and gbsim.held_stage is None
        grant = await runner.request_priority(DEVICE, 2, duration_s=2)   # the right one is held
        assert grant.preempt == 1 and gbsim.held_stage == 1
