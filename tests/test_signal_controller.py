"""Signal-controller bridge against the controller simulator: NTCIP 1202 over real UDP SNMP (v2c and
v3), and the Modbus I/O path over Modbus TCP; plus one run through the real agent to the consumer.

The simulator runs the 9 s FAST_PLAN in its own thread; the runner under test runs in the test's
event loop, as in the agent. Times are the simulator's wall clock, so a reading's ``t`` can be
compared with the plan directly: the tests that watch the plan or the controller's own sequence
(yellow, all-red, dwell) keep the real clock. The tests of the agent's own timers (centre silence,
refreshes, release retries) run the runner on a virtual clock over the same real SNMP; its timers
are also tested to the millisecond against a fake controller in tests/test_signal_priority.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.core.clock import SYSTEM, Clock, VirtualClock
from agent.core.config import ConfigError, DeviceConfig, ReportPolicy
from agent.config import load_config
from agent.core.model import Reading
from agent.report import ReportFilter
from agent.core.registry import get_driver
from firmware_bridges.signal_controller.errors import ControllerOffline, PriorityRefused, Refused
from firmware_bridges.signal_controller.phases import LampDecoder, decode_groups
from firmware_bridges.signal_controller.runner import SignalRunner
from tests.agent_proc import AgentProcess, agent_config
from tests.fakes import RecordingSink, eventually, until
from tests.hardware_sim.signal_controller import (
    DEFAULT_PLAN, FAST_PLAN, SignalControllerSim, ThreadedSignalSim, ped_state_at, signal_state_at,
)

pytestmark = pytest.mark.timeout(60)

DEVICE = "tsc-01"
V3 = ("ntcip-op", "authpass-123")
PHASES = {2: {"name": "north-south through", "approach": "N", "ped": True},
          4: {"name": "east-west through", "approach": "E", "ped": True},
          6: {"name": "south-north through", "approach": "S"},
          8: {"name": "west-east through", "approach": "W"}}
# what the simulator's controller does when entering a preempt, plus polling slack
ENTRY_BOUND_S = FAST_PLAN.stages[0].yellow + FAST_PLAN.stages[0].all_red + 1.0


# -- helpers ---------------------------------------------------------------------------------------

class ReportingSink(RecordingSink):
    """Records what a runner hands to the agent, and (``sent``) what the report policy a technician
    would set lets through."""

    def __init__(self, clock: Clock = SYSTEM) -> None:
        super().__init__(clock)
        self.sent: list[Reading] = []      # after report: {mode: on_change, max_silence: 10s}
        self._filter = ReportFilter(ReportPolicy(mode="on_change", max_silence=10))

    def readings(self, device_id: str, readings: list[Reading]) -> None:
        super().readings(device_id, readings)
        self.sent += self._filter.apply(readings)


def ntcip_entry(port: int, *, poll: str = "100ms", v3: tuple[str, str] | None = None, **priority: Any) -> dict[str, Any]:
    """A device entry as it stands in a gateway config."""
    connection: dict[str, Any] = {"host": "127.0.0.1", "port": port, "timeout": "200ms"}
    if v3:
        connection.update(version=3, user=v3[0], auth_key={"env": "TSC_TEST_AUTH_KEY"})
    return _entry("ntcip", connection, {2: 1, 4: 2}, poll, priority)


def ntcip_device(port: int, **kwargs: Any) -> DeviceConfig:
    return DeviceConfig.model_validate(ntcip_entry(port, **kwargs))


def modbus_device(port: int, *, poll: str = "100ms", **priority: Any) -> DeviceConfig:
    connection = {"type": "tcp", "host": "127.0.0.1", "port": port, "timeout": "200ms"}
    return DeviceConfig.model_validate(_entry("modbus_io", connection, {2: 0, 4: 1}, poll, priority))


def _entry(protocol: str, connection: dict[str, Any], preempts: dict[int, int], poll: str,
           priority: dict[str, Any]) -> dict[str, Any]:
    return {"id": DEVICE, "driver": "signal_controller", "protocol": protocol, "poll": poll, "connection": connection,
            "phases": PHASES, "offline_after": 2, "backoff": {"initial": "100ms", "max": "300ms"},
            "priority": {"preempt": preempts, "min_duration": "1s", "max_duration": "5s", **priority}}


@contextlib.asynccontextmanager
async def running(device: DeviceConfig, sink: RecordingSink, clock: Clock = SYSTEM) -> AsyncIterator[SignalRunner]:
    """A runner of the real driver on ``clock``, run like the agent does: run() as a task, close()
    after cancel."""
    driver = get_driver("signal_controller")
    assert driver.validate_devices([device]) == []
    runner = SignalRunner(device, driver.options(device), sink, clock=clock)
    task = asyncio.create_task(runner.run())
    try:
        yield runner
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await runner.close()


# a runner's tasks asleep on its clock when it is idle: the link's poll loop and the priority watchdog
RUNNER_SLEEPERS = 2


def expected_colours(sim: ThreadedSignalSim, t_ms: int) -> list[dict[int, str]]:
    """The plan's colours at a reading's time and just before it (the controller answered a few ms
    earlier than the reading was stamped; a boundary can fall in between)."""
    controller = sim.controller
    return [signal_state_at(controller.plan_time(t_ms / 1000 - d), controller.plan) for d in (0.0, 0.05, 0.12)]


def not_green_phase(sim: ThreadedSignalSim) -> int:
    """A phase with a preempt (2 or 4) that is not green now: its preemption must go through yellow/all-red."""
    return 4 if sim.view().vehicles[2] == "green" else 2


@pytest.fixture
def sim(monkeypatch: pytest.MonkeyPatch) -> Iterator[ThreadedSignalSim]:
    monkeypatch.setenv("TSC_TEST_AUTH_KEY", V3[1])
    with SignalControllerSim(FAST_PLAN, snmp=("127.0.0.1", 0), modbus=("127.0.0.1", 0), v3_user=V3).run_in_thread() as s:
        yield s


# -- the plan and the decoders, without I/O -----------------------------------------------------------

@pytest.mark.parametrize("plan", [FAST_PLAN, DEFAULT_PLAN], ids=["fast", "default"])
def test_plan_never_shows_conflicting_greens_and_clears_through_yellow_and_all_red(plan):
    stages = [set(s.phases) for s in plan.stages]
    previous = signal_state_at(0, plan)
    t = 0.0
    while t < 2 * plan.cycle:
        colours = signal_state_at(t, plan)
        moving = {p for p, c in colours.items() if c != "red"}
        assert any(moving <= stage for stage in stages), (t, colours)   # only one stage's phases move
        for p, c in colours.items():
            assert (previous[p], c) in {("green", "green"), ("green", "yellow"), ("yellow", "yellow"),
                                        ("yellow", "red"), ("red", "red"), ("red", "green")}, (t, p)
        peds = ped_state_at(t, plan)
        for p, s in peds.items():
            if s != "dont_walk":
                assert colours[p] == "green", (t, p, s)   # peds cross only with their own green
        previous = colours
        t += 0.05
    assert signal_state_at(1.0, plan) == signal_state_at(1.0 + plan.cycle, plan)


def test_ntcip_group_bits_follow_the_mib_numbering():
    # group 1 bit 0 = phase 1, bit 7 = phase 8; group 2 bit 0 = phase 9
    masks = {"reds": {1: 0b0111_1110}, "yellows": {1: 0}, "greens": {1: 0b1000_0001, 2: 0b1},
             "walks": {1: 0b1}, "ped_clears": {1: 0b10}, "dont_walks": {1: 0b1111_1100}}
    vehicles, peds = decode_groups([1, 2, 8, 9, 10], [1, 2, 3, 4], masks)
    assert {p: lamp.value for p, lamp in vehicles.items()} == {1: "green", 2: "red", 8: "green", 9: "green", 10: "dark"}
    assert {p: lamp.value for p, lamp in peds.items()} == {1: "walk", 2: "flashing", 3: "dont_walk", 4: "dont_walk"}
    masks["reds"][1] |= 0b1   # phase 1 red and green at once: reported, flagged
    vehicles, _ = decode_groups([1], [], masks)
    assert vehicles[1].value == "green" and vehicles[1].conflict


def test_ntcip_answers_of_a_type_the_mib_does_not_have_fail_the_poll_as_the_controllers_fault():
    """Found by bench/fuzz.py: an OBJECT IDENTIFIER answered for a phase group (arcs above 255)
    raised ValueError in _value, and every poll failed as an internal error of the agent."""
    from pysnmp.proto import rfc1902, rfc1905

    from firmware_bridges.signal_controller.errors import BadAnswer, Refused
    from firmware_bridges.signal_controller.ntcip import _value

    assert _value(rfc1902.Integer32(0x55)) == 0x55 and _value(rfc1902.Counter64(2**64 - 1)) == 2**64 - 1
    assert _value(rfc1902.OctetString(b"\x05")) == b"\x05" and _value(rfc1905.NoSuchInstance("")) is None
    for wrong in (rfc1902.ObjectIdentifier((1, 3, 6, 1418228434)), rfc1902.Null("")):
        with pytest.raises(BadAnswer, match="where NTCIP 1202 has an INTEGER"):
            _value(wrong)
    assert issubclass(BadAnswer, Refused)   # the poll loop's own failure path, not the ntcip boundary


def test_lamp_decoder_tells_a_flashing_hand_from_a_steady_one():
    decoder = LampDecoder([2], [2])
    seen = []
    # walk for 1 s, then the hand flashes at 1 Hz for 2 s, then steady; sampled every 0.2 s
    for i in range(45):
        t = i * 0.1
        walk = t < 1.0
        dont_walk = not walk and (t >= 3.0 or (t - 1.0) % 1.0 < 0.5)
        if i % 2 == 0:
            _, peds = decoder.decode({"ped2_walk": walk, "ped2_dont_walk": dont_walk, "phase2_green": True}, t)
            seen.append((round(t, 1), peds[2].value))
    states = dict(seen)
    assert states[0.0] == states[0.8] == "walk"
    assert states[1.0] == "dont_walk"                       # one change: not yet a flash
    assert states[1.6] == states[2.4] == "flashing"
    assert all(s == "dont_walk" for t, s in seen if t >= 3.0 + 1.2)   # steady again within the window


def test_config_mistakes_are_reported_at_their_keys(tmp_path: Path):
    config = tmp_path / "gw.yaml"
    config.write_text("""
gateway: {id: gw-1, site: lab}
devices:
  - id: tsc-01
    driver: signal_controller
    protocol: ntcip
    connection: {host: 192.0.2.20}
    phases: {2: {}, 4: {}}
    priority: {preempt: 1}
  - id: tsc-02
    driver: signal_controller
    protocol: modbus_io
    connection: {type: tcp, host: 192.0.2.21}
    phases: {2: {ped: true}}
    priority: {preempt: {2: 9}}
  - id: tsc-03
    driver: signal_controller
    protocol: ntcip
    connection: {host: 192.0.2.22, version: 3}
    unit: 1
    phases: {2: {}}
""")
    with pytest.raises(ConfigError) as caught:
        load_config(config)
    text = str(caught.value)
    assert "devices[0].priority: which phase does preempt 1 serve?" in text
    assert "devices[1].priority.preempt: coil 9 (phase 2) is not a writable coil" in text
    assert "devices[2].connection: SNMPv3 needs 'user'" in text
    assert "devices[2].unit: 'unit' is for protocol modbus_io" in text


def test_sample_config_is_valid():
    sample = Path(__file__).resolve().parents[1] / "firmware_bridges" / "signal_controller" / "sample.yaml"
    config = load_config(sample)
    assert {d.options.protocol for d in config.devices} == {"ntcip", "modbus_io", "gbt20999"}


# -- NTCIP over real UDP SNMP ---------------------------------------------------------------------------

def test_ntcip_phase_states_match_the_plan_and_changes_are_published(sim):
    sink = ReportingSink()

    async def scenario() -> None:
        async with running(ntcip_device(sim.snmp_address[1]), sink):
            # a wall-clock window on purpose: the simulator's plan runs on real time, and the
            # readings must follow it through at least one whole stage
            await asyncio.sleep(FAST_PLAN.stages[0].duration + 0.3)

    asyncio.run(scenario())
    phase_readings = [r for r in sink.all_readings() if r.point.startswith("phase")]
    assert len(phase_readings) >= 4 * 30
    mismatches = [(r.point, r.value, r.t) for r in phase_readings
                  if not any(e[int(r.point[5:])] == r.value for e in expected_colours(sim, r.t))]
    assert not mismatches, mismatches[:5]
    for r in (r for r in sink.all_readings() if r.point.startswith("ped")):
        at = sim.controller.plan_time(r.t / 1000)
        assert r.value in {ped_state_at(at - d, FAST_PLAN)[int(r.point[3:])] for d in (0.0, 0.05, 0.12)}
    assert {r.value for r in sink.all_readings() if r.point == "ped2"} | {r.value for r in sink.all_readings() if r.point == "ped4"} \
        >= {"walk", "flashing", "dont_walk"}
    assert sink.value_of("preempt") is False and sink.value_of("preempt_state") == "notActive"
    assert sink.states == [(DEVICE, True, None)]
    # on_change: exactly one reading per point per change (the first of each point, then each change)
    for point in ("phase2", "phase4"):
        values = [r.value for r in sink.all_readings() if r.point == point]
        changes = [v for i, v in enumerate(values) if i == 0 or v != values[i - 1]]
        assert [r.value for r in sink.sent if r.point == point] == changes
    seen = [r.value for r in sink.sent if r.point in ("phase2", "phase4")]
    assert {"green", "yellow", "red"} <= set(seen)


def test_ntcip_priority_turns_the_phase_green_and_is_released_at_expiry(sim):
    # real time: the green comes after the simulated controller's own yellow and all-red, which run
    # on the wall clock (the expiry itself is timed on virtual time in test_signal_priority.py)
    sink = ReportingSink()

    async def scenario() -> None:
        async with running(ntcip_device(sim.snmp_address[1]), sink) as runner:
            await until(lambda: sink.value_of("phase2") is not None, 3, "first poll")
            phase = not_green_phase(sim)
            grant = await runner.request_priority(DEVICE, phase, duration_s=2, source="cmd-17")
            assert grant.phase == phase and grant.granted_s == 2 and not grant.clamped
            assert sim.preempt_asserted({2: 1, 4: 2}[phase])
            asked = time.monotonic()
            await until(lambda: sink.value_of(f"phase{phase}") == "green", ENTRY_BOUND_S, "the preempted green")
            took = time.monotonic() - asked
            assert sim.view().mode == "dwell" and sim.view().dwell_phase == phase
            assert sink.value_of("preempt") is True and sink.value_of("preempt_state") == "dwell"
            # the agent's timer ends it, and the controller goes back to its plan
            await until(lambda: "signal.priority_ended" in sink.event_types(), 2 + 0.5 - took, "expiry")
            assert not sim.preempt_asserted(1) and not sim.preempt_asserted(2)
            await until(lambda: sim.view().mode == "plan", 3, "the controller back on its plan")
            await until(lambda: sink.value_of("preempt") is False, 1, "preempt reading cleared")

    asyncio.run(scenario())
    started = next(e for e in sink.events() if e.type == "signal.priority_started")
    ended = next(e for e in sink.events() if e.type == "signal.priority_ended")
    assert started.severity == ended.severity == "info"
    assert started.data["source"] == "cmd-17" and started.data["granted_s"] == 2
    assert ended.data["reason"] == "expired" and ended.data["release_confirmed"] is True
    assert 1.9 <= ended.data["held_s"] <= 2.5
    assert 0 < ended.data["green_after_s"] <= ENTRY_BOUND_S
    # the simulator saw the request as a SET of preemptControlState (NTCIP 1202 asc.6.3.1.2.n), then its release
    controls = [(oid[-1], v) for oid, v in sim.snmp.sets]
    assert controls[0][1] == 1 and controls[-1] == (controls[0][0], 0)


def test_ntcip_priority_is_released_when_the_runner_closes(sim):
    # real time: it waits for the simulated controller to reach its dwell, on the wall clock
    sink = ReportingSink()

    async def scenario() -> None:
        async with running(ntcip_device(sim.snmp_address[1], max_duration="60s"), sink) as runner:
            await until(lambda: runner.link.online, 3, "online")
            grant = await runner.request_priority(DEVICE, approach="e", duration_s=30)
            assert grant.phase == 4 and grant.approach == "E"
            await until(lambda: sim.view().mode == "dwell", ENTRY_BOUND_S, "dwell")
        # running() cancelled run() and called close(), as the agent does at shutdown
        assert not sim.preempt_asserted(2)
        # the supervisor restarts a crashed runner on the same object after close(): it polls again
        count = len(sink.all_readings())
        task = asyncio.create_task(runner.run())
        await until(lambda: len(sink.all_readings()) > count, 2, "polling after a restart")
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await runner.close()

    asyncio.run(scenario())
    ended = [e for e in sink.events() if e.type == "signal.priority_ended"]
    assert len(ended) == 1 and ended[0].data["reason"] == "shutdown" and ended[0].data["release_confirmed"]


def test_priority_bounds_refreshes_and_refusals(sim):
    clock = VirtualClock()
    sink = ReportingSink(clock)

    async def scenario() -> None:
        async with running(ntcip_device(sim.snmp_address[1], max_hold="6s"), sink, clock) as runner:
            await clock.run_until(lambda: runner.link.online, 0.5, sleepers=RUNNER_SLEEPERS, what="online")
            long = await runner.request_priority(DEVICE, 2, duration_s=300)
            assert long.granted_s == 5 and long.clamped and long.requested_s == 300   # max_duration 5s
            assert long.expires_ms - long.started_ms == 5000
            with pytest.raises(PriorityRefused, match="phase 2 holds priority"):
                await runner.request_priority(DEVICE, 4, duration_s=3)
            await clock.run_for(0.3, sleepers=RUNNER_SLEEPERS)
            again = await runner.request_priority(DEVICE, 2, duration_s=5)   # refresh from now
            assert again.refreshed and again.expires_ms > long.expires_ms
            assert again.expires_ms <= long.started_ms + 6000 + 50             # max_hold 6s caps it
            assert (await runner.release_priority(DEVICE)).phase == 2
            assert not sim.preempt_asserted(1)
            short = await runner.request_priority(DEVICE, 2, duration_s=0.2)
            assert short.granted_s == 1 and short.clamped                        # min_duration 1s
            for bad, message in (({"phase": 2, "duration_s": 0}, "positive"), ({"phase": 6, "duration_s": 3}, "no preempt"),
                                 ({"approach": "X", "duration_s": 3}, "approach 'X'"),
                                 ({"phase": 2, "duration_s": "3"}, "number of seconds")):
                with pytest.raises(PriorityRefused, match=message):
                    await runner.write_point(DEVICE, "priority", bad)
            await runner.write_point(DEVICE, "priority", None)   # the generic write path releases
            assert runner.priority.active is None and not sim.preempt_asserted(1)

    asyncio.run(scenario())
    ends = [e.data["reason"] for e in sink.events() if e.type == "signal.priority_ended"]
    assert ends == ["released", "released"]
    assert "signal.priority_extended" in sink.event_types()


def test_a_preempt_the_controller_does_not_have_is_refused_clearly(sim):
    entry = ntcip_entry(sim.snmp_address[1])
    entry["priority"]["preempt"] = {2: 3, 4: 2}   # the simulator has preempts 1 and 2 only
    sink = ReportingSink()

    async def scenario() -> None:
        async with running(DeviceConfig.model_validate(entry), sink) as runner:
            await until(lambda: runner.link.online, 3, "online")
            with pytest.raises(Refused, match=r"preempt 3 \(phase 2\) refused: .*notWritable"):
                await runner.request_priority(DEVICE, 2, duration_s=3)
            assert runner.priority.active is None

    asyncio.run(scenario())
    assert sink.events() == []


def test_priority_is_released_when_the_centre_goes_silent(sim):
    clock = VirtualClock()
    sink = ReportingSink(clock)

    async def scenario() -> None:
        async with running(ntcip_device(sim.snmp_address[1], centre_silence="1s"), sink, clock) as runner:
            await clock.run_until(lambda: runner.link.online, 0.5, sleepers=RUNNER_SLEEPERS, what="online")
            await runner.request_priority(DEVICE, 2, duration_s=5)
            asked = clock.monotonic()
            await clock.run_for(0.5, sleepers=RUNNER_SLEEPERS)
            runner.centre_heard()                                   # the centre is still there ...
            await clock.run_for(0.75, sleepers=RUNNER_SLEEPERS)
            assert runner.priority.active is not None
            await clock.run_until(lambda: runner.priority.active is None, 1.5, sleepers=RUNNER_SLEEPERS,
                                  what="silence release")          # ... then it is not: 1 s after it was heard
            assert clock.monotonic() - asked == pytest.approx(1.5)
            assert not sim.preempt_asserted(1), "the release was not seen by the controller"
            await runner.request_priority(DEVICE, 2, duration_s=5)
            runner.centre_lost()                                    # the uplink lost the centre: at once
            await clock.run_until(lambda: runner.priority.active is None, 0.1, sleepers=RUNNER_SLEEPERS,
                                  what="release on centre_lost()")
            assert not sim.preempt_asserted(1)

    asyncio.run(scenario())
    assert [e.data["reason"] for e in sink.events() if e.type == "signal.priority_ended"] == ["centre_silent"] * 2


def test_offline_controller_fails_clearly_and_a_stuck_release_is_retried(sim):
    sink = ReportingSink(VirtualClock())

    async def scenario() -> None:
        # nothing listens on the port: offline after offline_after polls; a request fails at once
        with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_DGRAM)) as unused:
            unused.bind(("127.0.0.1", 0))
            dead_port = unused.getsockname()[1]
            clock = VirtualClock()
            dead = ReportingSink(clock)
            async with running(ntcip_device(dead_port), dead, clock) as runner:
                # offline_after 2: a poll, a backoff of at most 200 ms, another (each waits for SNMP's
                # real timeout)
                await clock.run_until(lambda: dead.states, 0.5, sleepers=RUNNER_SLEEPERS, what="offline")
                assert dead.states[0][1] is False and "no snmp response" in dead.states[0][2].lower()
                started = time.monotonic()
                with pytest.raises(ControllerOffline, match="tsc-01 is offline"):
                    await runner.request_priority(DEVICE, 2, duration_s=3)
                assert time.monotonic() - started < 0.1
                assert runner.stats()[DEVICE]["online"] is False
        # a controller that stops answering while priority is held: the release is retried until it lands
        clock = sink.clock
        async with running(ntcip_device(sim.snmp_address[1]), sink, clock) as runner:
            await clock.run_until(lambda: runner.link.online, 0.5, sleepers=RUNNER_SLEEPERS, what="online")
            await runner.request_priority(DEVICE, 2, duration_s=1)
            sim.silence(True)
            await clock.run_until(lambda: "signal.priority_ended" in sink.event_types(), 1.0,
                                  sleepers=RUNNER_SLEEPERS, what="expiry")
            assert sim.preempt_asserted(1)   # the controller never heard the release
            await clock.run_until(lambda: sink.states[-1][1] is False, 1.0, sleepers=RUNNER_SLEEPERS,
                                  what="offline")
            sim.silence(False)
            # retried every reassert interval (2 s)
            await clock.run_until(lambda: not sim.preempt_asserted(1), 2.0, sleepers=RUNNER_SLEEPERS,
                                  what="the retried release")
            await clock.run_until(lambda: runner.priority.stats.pending_release == [], 0.0,
                                  sleepers=RUNNER_SLEEPERS, what="pending cleared")

    asyncio.run(scenario())
    ended = next(e for e in sink.events() if e.type == "signal.priority_ended")
    assert ended.data["release_confirmed"] is False and "no snmp response" in ended.data["error"].lower()
    assert [s[1] for s in sink.states] == [True, False, True]


def test_ntcip_over_snmpv3(sim, monkeypatch):
    sink = ReportingSink()

    async def scenario() -> None:
        async with running(ntcip_device(sim.snmp_address[1], v3=V3), sink) as runner:
            await until(lambda: sink.value_of("phase2") is not None, 3, "a v3 poll")
            await runner.request_priority(DEVICE, 2, duration_s=1)
            assert sim.preempt_asserted(1)
            await runner.release_priority(DEVICE)
        monkeypatch.setenv("TSC_TEST_AUTH_KEY", "wrong-key-456")
        bad = ReportingSink()
        async with running(ntcip_device(sim.snmp_address[1], v3=V3), bad):
            await until(lambda: bad.states, 3, "offline with a wrong key")
        assert bad.states[0][1] is False and bad.all_readings() == []

    asyncio.run(scenario())


def test_ntcip_client_against_net_snmp_snmpd(tmp_path, monkeypatch):
    """The same client against an SNMP agent nobody here wrote: Debian's snmpd serving the NTCIP
    objects as static overrides (no preemptState there: the preemptControlState fallback is used)."""
    snmpd = Path("/usr/sbin/snmpd")
    if not snmpd.exists():
        pytest.skip("snmpd (Debian package snmpd) is not installed")
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_DGRAM)) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    masks = {2: 0b1000_1000, 3: 0, 4: 0b0010_0010, 5: 0b1000, 6: 0b10, 7: 0}   # 2/6 green, ped 2 clearing
    lines = ["rwcommunity public 127.0.0.1",
             "createUser edge SHA authpass-123", "rwuser edge auth"]
    lines += [f"override 1.3.6.1.4.1.1206.4.2.1.1.4.1.{column}.1 integer {mask}" for column, mask in masks.items()]
    lines.append("override -rw 1.3.6.1.4.1.1206.4.2.1.6.3.1.2.1 integer 0")
    (tmp_path / "snmpd.conf").write_text("\n".join(lines) + "\n")
    process = subprocess.Popen([str(snmpd), "-f", "-Lf", str(tmp_path / "snmpd.log"), "-C", "-c",
                                str(tmp_path / "snmpd.conf"), f"udp:127.0.0.1:{port}"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env={**os.environ, "SNMP_PERSISTENT_DIR": str(tmp_path / "persist")})
    monkeypatch.setenv("TSC_TEST_AUTH_KEY", "authpass-123")
    try:
        for v3 in (None, ("edge", "")):
            sink = ReportingSink()

            async def scenario() -> None:
                async with running(ntcip_device(port, v3=v3), sink) as runner:
                    await until(lambda: sink.value_of("preempt") is not None, 5, "readings from snmpd")
                    assert sink.value_of("preempt") is False
                    await runner.request_priority(DEVICE, 2, duration_s=3)
                    await until(lambda: sink.value_of("preempt") is True, 2, "preemptControlState read back")
                    await runner.release_priority(DEVICE)
                    await until(lambda: sink.value_of("preempt") is False, 2, "released")

            asyncio.run(scenario())
            assert {p: sink.value_of(f"phase{p}") for p in (2, 4, 6, 8)} == {2: "green", 4: "red", 6: "green", 8: "red"}
            assert (sink.value_of("ped2"), sink.value_of("ped4")) == ("flashing", "dont_walk")
    finally:
        process.terminate()
        process.wait(5)


# -- the Modbus I/O module ------------------------------------------------------------------------------------

def test_modbus_io_lamps_match_the_plan_and_priority_drives_the_preempt_coil(sim):
    # real time: the lamps follow the simulator's plan on the wall clock (see the NTCIP test above)
    sink = ReportingSink()

    async def scenario() -> None:
        async with running(modbus_device(sim.modbus_address[1]), sink) as runner:
            await asyncio.sleep(FAST_PLAN.stages[0].duration + 0.3)   # a window of the plan: one whole stage
            phase = not_green_phase(sim)
            grant = await runner.request_priority(DEVICE, phase, duration_s=2)
            assert grant.preempt == {2: 0, 4: 1}[phase]          # coil address
            await until(lambda: sim.controller.inputs.get({2: 1, 4: 2}[phase]), 2.0, "relay seen by the controller")
            await until(lambda: sink.value_of(f"phase{phase}") == "green", ENTRY_BOUND_S, "the preempted green")
            assert sink.value_of("preempt") is True                 # the coil, read back from the module
            await until(lambda: "signal.priority_ended" in sink.event_types(), 3, "expiry")
            await until(lambda: sink.value_of("preempt") is False, 2, "coil read back off")
            await until(lambda: not sim.preempt_asserted(1) and not sim.preempt_asserted(2), 2, "relays open")
            # held again, then the agent shuts down: the coil is opened by close()
            await runner.request_priority(DEVICE, 2, duration_s=5)
            await until(lambda: sim.preempt_asserted(1), 2.0, "relay")

    asyncio.run(scenario())
    eventually(lambda: not sim.preempt_asserted(1), 2.0, "relay opened by close()")   # the cabinet scans every 20 ms
    assert [e.data["reason"] for e in sink.events() if e.type == "signal.priority_ended"] == ["expired", "shutdown"]
    plan_readings = [r for r in sink.all_readings() if r.point.startswith("phase")
                     and r.t < sink.events()[0].data["started_ms"]]
    assert len(plan_readings) >= 4 * 30
    mismatches = [(r.point, r.value) for r in plan_readings
                  if not any(e[int(r.point[5:])] == r.value for e in expected_colours(sim, r.t))]
    assert not mismatches, mismatches[:5]
    ped_values = {r.value for r in sink.all_readings() if r.point in ("ped2", "ped4")}
    assert {"walk", "flashing", "dont_walk"} <= ped_values


# -- through the real agent ------------------------------------------------------------------------------------

def test_agent_publishes_phase_telemetry_serves_signal_priority_and_reports_the_controller_offline(
        tmp_path, broker, consumer_factory, sim):
    """Through the real agent process and broker to the reference consumer (which checks every
    message against the contract): telemetry, the signal.priority command, events, offline."""
    gw, key = "gw-tsc", b"0123456789abcdef0123456789abcdef"
    key_file = tmp_path / "command.key"
    key_file.write_bytes(key)
    key_file.chmod(0o600)
    centre = consumer_factory(gateway=gw, site="lab")
    device = ntcip_entry(sim.snmp_address[1], poll="200ms")
    device["report"] = {"mode": "on_change", "max_silence": "10s"}
    config = agent_config(tmp_path, broker_port=broker.port, gateway=gw, devices=[device],
                          commands={"key": {"file": str(key_file)}, "allow": ["signal.priority"]})

    def result_of(request: dict[str, Any]) -> dict[str, Any]:
        centre.wait_for(lambda c: c.last("cmd_result", request["id"]), 5, f"result of {request['id']}")
        return centre.last("cmd_result", request["id"]).body

    with AgentProcess(config, tmp_path / "agent.log").start() as agent:
        centre.wait_for(lambda c: len({r.v for r in c.readings(DEVICE, "phase2")}) >= 2, 15, "phase2 changing")
        phase = not_green_phase(sim)
        granted = result_of(centre.send_command("signal.priority", {"device": DEVICE, "phase": phase,
                                                                    "duration_s": 30}, key=key))
        assert granted["ok"] is True, (granted, agent.log())
        assert granted["result"]["phase"] == phase and granted["result"]["granted_s"] == 5   # clamped to max_duration
        centre.wait_for(lambda c: any(r.v == "green" and r.t > granted["result"]["started_ms"]
                                      for r in c.readings(DEVICE, f"phase{phase}")), ENTRY_BOUND_S + 2, "preempted green")
        assert sim.view().mode == "dwell" and sim.view().dwell_phase == phase
        released = result_of(centre.send_command("signal.priority", {"device": DEVICE, "release": True}, key=key))
        assert released["ok"] and released["result"]["released"] is True
        assert not sim.preempt_asserted(1) and not sim.preempt_asserted(2)
        centre.wait_for(lambda c: c.events(DEVICE, "signal.priority_ended"), 5, "priority_ended")
        refused = result_of(centre.send_command("signal.priority", {"device": DEVICE, "phase": 6, "duration_s": 5},
                                                key=key))
        assert refused["ok"] is False and "no preempt" in str(refused["error"])
        sim.silence(True)
        centre.wait_for(lambda c: c.events(DEVICE, "device.offline"), 10, "device.offline")
        offline = result_of(centre.send_command("signal.priority", {"device": DEVICE, "phase": 2, "duration_s": 5},
                                                key=key))
        assert offline["ok"] is False and "offline" in str(offline["error"])
        sim.silence(False)
        centre.wait_for(lambda c: c.events(DEVICE, "device.online"), 10, "device.online")
    birth = centre.last("birth").body
    entry = next(d for d in birth["devices"] if d["id"] == DEVICE)
    assert entry["kind"] == "traffic_signal" and entry["driver"] == "signal_controller"
    assert {p["name"] for p in entry["points"]} == {"phase2", "phase4", "phase6", "phase8", "ped2", "ped4",
                                                    "preempt", "preempt_state"}
    for point in ("phase2", "phase4", "phase6", "phase8"):
        values = [r.v for r in sorted(centre.readings(DEVICE, point), key=lambda r: r.t)]
        assert values and set(values) <= {"red", "yellow", "green"}
        assert all(a != b for a, b in zip(values, values[1:]))   # on_change: one message per change
    assert [r.v for r in sorted(centre.readings(DEVICE, "preempt"), key=lambda r: r.t)][:3] == [False, True, False]
    started = centre.events(DEVICE, "signal.priority_started")[0]
    ended = centre.events(DEVICE, "signal.priority_ended")[0]
    assert started["severity"] == ended["severity"] == "info"
    assert started["data"]["phase"] == phase and ended["data"]["release_confirmed"] is True
    assert ended["data"]["reason"].startswith("released")
    offline_event = centre.events(DEVICE, "device.offline")[0]
    assert "no snmp response" in offline_event["data"]["error"].lower()
    assert centre.invalid == [], centre.invalid
