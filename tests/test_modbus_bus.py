"""Modbus runtime against real pymodbus servers (TCP on a free port, RTU over a socat pty pair).

A server-side ``trace_packet`` hook makes chosen units misbehave the way field devices do: a dead
unit's answers are dropped (silence), a noisy one's CRC is flipped (garbage). A refusing unit
answers every read with a Modbus exception. The sink records what the runner delivers: it is our
interface.

The runner's schedule, backoff and link retries run on a virtual clock (tests/fakes.py, agent/core/
clock.py): requests still go over real sockets, but poll rates, backoff steps and windows are
counted in virtual seconds, so no test waits for the wall clock to pass a window. Two tests keep
the real clock, and say why.
"""

from __future__ import annotations

import asyncio
import math
import shutil
import socket
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from pymodbus.constants import ExcCodes
from pymodbus.framer import FramerType
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from agent.core.clock import SYSTEM, Clock, VirtualClock
from agent.core.config import ConfigError, DeviceConfig
from agent.core.model import Reading
from agent.core.registry import get_driver
from drivers.modbus.bus import BusRunner, Refused
from drivers.modbus.codec import encode
from drivers.modbus.device import Device
from drivers.modbus.profile import BUNDLED_DIR, load_profile
from tests.fakes import RecordingSink, until
from tests.hardware_sim.pty import PtyPair

AIR = load_profile("air_monitor_rs485", [BUNDLED_DIR])
VALUES: dict[str, Any] = {
    "pm25": 23.5, "pm10": 41.25, "temperature": -8.1, "humidity": 45.2, "pressure": 1013.2,
    "so2": 12.5, "no2": 33.0, "co": 0.75, "o3": 61.5, "status_word": 2, "uptime": 3 * 86400 + 5,
    "report_interval": 60,
}
EXPECTED = {**VALUES, "fan_fault": False, "sensor_fault": True, "fan_on": False}


def air_registers(values: dict[str, Any] = VALUES, size: int = 32) -> list[int]:
    registers = [0] * size
    for point in AIR.points:
        if point.table == "holding_register" and point.bit is None and point.name in values:
            registers[point.address:point.end] = encode(values[point.name], point.type, point.order,
                                                        point.scale, point.offset, point.length)
    return registers


class Sim:
    """A pymodbus server with several air-monitor units on one bus."""

    def __init__(self, units: list[int], *, dead: set[int] = frozenset(), noisy: set[int] = frozenset(),
                 refuse: set[int] = frozenset(), unreachable: set[int] = frozenset(), sparse: bool = False):
        self.units = units
        self.dead, self.noisy, self.refuse = set(dead), set(noisy), set(refuse)
        self.unreachable = set(unreachable)   # a TCP gateway in front answers 0x0B for these
        self.sparse = sparse
        self.received: Counter[int] = Counter()   # requests per unit id
        self.gate: asyncio.Event | None = None    # when set here, every request waits for it to be set
        self.server: ModbusTcpServer | ModbusSerialServer | None = None
        self.framer = FramerType.SOCKET

    def _device(self, unit: int) -> SimDevice:
        registers = air_registers()
        if self.sparse:   # only what the profile names exists; reading a gap is "illegal address"
            holding = [SimData(0, values=registers[0:16], datatype=DataType.REGISTERS),
                       SimData(20, values=registers[20:22], datatype=DataType.REGISTERS),
                       SimData(30, values=registers[30:31], datatype=DataType.REGISTERS)]
        else:
            holding = [SimData(0, values=registers, datatype=DataType.REGISTERS)]
        return SimDevice(unit, action=self._action, simdata=(
            [SimData(0, count=16, values=False, datatype=DataType.BITS)],
            [SimData(0, count=16, values=False, datatype=DataType.BITS)],
            holding,
            [SimData(0, count=8, values=0, datatype=DataType.REGISTERS)]))

    async def _action(self, function_code, start_address, address, count, registers, set_values):
        if self.gate is not None:
            await self.gate.wait()
        if self._unit_of_request in self.unreachable:
            return ExcCodes.GATEWAY_NO_RESPONSE
        return ExcCodes.DEVICE_BUSY if self._unit_of_request in self.refuse else None

    def _trace_pdu(self, sending: bool, pdu):
        if not sending:
            self._unit_of_request = pdu.dev_id
            self.received[pdu.dev_id] += 1
        return pdu

    def _trace_packet(self, sending: bool, data: bytes) -> bytes:
        if sending and data:
            unit = data[6] if self.framer == FramerType.SOCKET else data[0]
            if unit in self.dead:
                return b""                                   # silence
            if unit in self.noisy:
                return data[:-1] + bytes([data[-1] ^ 0xFF])   # a flipped CRC byte
        return data

    def registers(self, unit: int, table: str = "h") -> list[int]:
        """The live register list of a unit (the server's own storage)."""
        return self.server.context.devices[unit].block[table][2]   # type: ignore[union-attr]

    def set(self, unit: int, name: str, value: Any) -> None:
        point = AIR.point(name)
        self.registers(unit)[point.address:point.end] = encode(value, point.type, point.order,
                                                              point.scale, point.offset, point.length)

    async def start_tcp(self, port: int) -> None:
        self._unit_of_request = 0
        self.framer = FramerType.SOCKET
        self.server = ModbusTcpServer([self._device(u) for u in self.units], address=("127.0.0.1", port),
                                      trace_packet=self._trace_packet, trace_pdu=self._trace_pdu)
        await self.server.serve_forever(background=True)

    async def start_rtu(self, port: str) -> None:
        self._unit_of_request = 0
        self.framer = FramerType.RTU
        self.server = ModbusSerialServer([self._device(u) for u in self.units], framer=FramerType.RTU,
                                         port=port, baudrate=19200, trace_packet=self._trace_packet,
                                         trace_pdu=self._trace_pdu)
        await self.server.serve_forever(background=True)

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.shutdown()
            self.server = None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def device(unit: int, connection: dict[str, Any], poll: float = 0.2, **extra: Any) -> DeviceConfig:
    return DeviceConfig.model_validate({"id": f"dev-{unit}", "driver": "modbus", "poll": poll,
                                        "connection": connection, "unit": unit,
                                        "profile": "air_monitor_rs485", **extra})


def tcp(port: int, timeout: float = 0.1) -> dict[str, Any]:
    return {"type": "tcp", "host": "127.0.0.1", "port": port, "timeout": timeout}


def one_runner(devices: list[DeviceConfig], sink: RecordingSink, clock: Clock = SYSTEM) -> BusRunner:
    """The bus runner of ``devices`` as the driver groups them (one bus), on ``clock``."""
    driver = get_driver("modbus")
    (grouped,) = driver.create_runners(devices, sink)
    assert isinstance(grouped, BusRunner)
    return BusRunner(grouped.connection, [(d, driver.options(d)) for d in devices], sink, clock=clock)


async def running(runner: BusRunner) -> asyncio.Task:
    return asyncio.create_task(runner.run())


async def stop(task: asyncio.Task, runner: BusRunner) -> None:
    task.cancel()
    done, _ = await asyncio.wait([task], timeout=3)
    assert done, "the runner did not stop when cancelled"
    await runner.close()


def assert_air_values(readings: dict[str, Reading]) -> None:
    for name, value in EXPECTED.items():
        got = readings[name]
        assert got.q == "good", (name, got)
        assert got.value == (pytest.approx(value) if isinstance(value, float) else value), (name, got)
    assert readings["pm25"].unit == "ug/m3" and readings["temperature"].unit == "degC"


# -- tests ------------------------------------------------------------------------------------

@pytest.mark.timeout(20)
def test_values_decoded_end_to_end_with_quality():
    async def scenario():
        port = free_port()
        sim = Sim([1])
        await sim.start_tcp(port)
        clock = VirtualClock()
        sink = RecordingSink(clock)
        runner = one_runner([device(1, tcp(port), poll=0.1)], sink, clock)
        task = await running(runner)
        try:
            await clock.run_until(lambda: sink.readings_of("dev-1"), 0.1)
            first = {r.point: r for r in sink.readings_of("dev-1")[0]}
            assert set(first) == {p.name for p in AIR.points}
            assert_air_values(first)
            assert sink.states == [("dev-1", True, None)]

            sim.set(1, "pm25", 1500.0)           # above max 1000: value kept, quality bad
            sim.set(1, "no2", math.nan)          # NaN cannot travel: value None, quality bad
            sim.set(1, "temperature", -21.7)         # negative int16, scaled
            mark = clock.monotonic()
            await clock.run_until(lambda: sink.readings_of("dev-1", since=mark + 0.15), 0.3)
            last = sink.last("dev-1")
            assert (last["pm25"].value, last["pm25"].q) == (1500.0, "bad")
            assert (last["no2"].value, last["no2"].q) == (None, "bad")
            assert last["temperature"].value == pytest.approx(-21.7) and last["temperature"].q == "good"
            t_before = clock.now_ms()
            assert abs(last["pm25"].t - t_before) < 1000

            stats = runner.stats()["dev-1"]
            assert stats["online"] is True and stats["errors"] == 0
            assert stats["requests"] == 2 * stats["polls"]   # one coil read + one merged holding read
            assert stats["bytes"] > 0 and stats["last_read_ms"]
        finally:
            await stop(task, runner)
            await sim.stop()

    asyncio.run(scenario())


@pytest.mark.timeout(25)
def test_dead_unit_backs_off_while_the_others_keep_their_rate():
    async def scenario():
        port = free_port()
        sim = Sim([1, 2, 3], dead={3})
        await sim.start_tcp(port)
        clock = VirtualClock()
        sink = RecordingSink(clock)
        backoff = {"backoff": {"initial": "300ms", "max": "1s"}}
        poll = 0.25
        runner = one_runner([device(u, tcp(port), poll=poll, **backoff) for u in (1, 2, 3)], sink, clock)
        task = await running(runner)
        try:
            start = clock.monotonic()
            await clock.run_for(4.0)
            window = (start + 1.0, start + 4.0)   # after the dead unit's first failures
            expected = (window[1] - window[0]) / poll
            for unit in (1, 2):
                polls = [t for t, d, _ in sink.batches if d == f"dev-{unit}" and window[0] <= t < window[1]]
                assert expected - 2 <= len(polls) <= expected + 1, (unit, len(polls), expected)
                assert_air_values(sink.last(f"dev-{unit}"))
            assert ("dev-3", False, "unit 3: no answer within 100ms") in sink.states
            dead = runner.stats()["dev-3"]
            assert dead["online"] is False and dead["timeouts"] >= 3
            # backed off: far fewer attempts than the 16 poll ticks of 4 s
            assert dead["requests"] <= 9, dead
            assert not sink.readings_of("dev-3")

            sim.dead.clear()   # the unit answers again: it resumes within one backoff step (max 1 s)
            await clock.run_until(lambda: sink.readings_of("dev-3"), 1.0)
            assert sink.states[-1] == ("dev-3", True, None)
            assert_air_values(sink.last("dev-3"))
            assert runner.stats()["dev-3"]["consecutive_failures"] == 0
        finally:
            await stop(task, runner)
            await sim.stop()

    asyncio.run(scenario())


@pytest.mark.timeout(20)
def test_exception_responses_are_counted_and_reported_bad():
    async def scenario():
        port = free_port()
        sim = Sim([1, 2], refuse={2})
        await sim.start_tcp(port)
        clock = VirtualClock()
        sink = RecordingSink(clock)
        runner = one_runner([device(u, tcp(port), poll=0.1) for u in (1, 2)], sink, clock)
        task = await running(runner)
        try:
            await clock.run_until(lambda: len(sink.readings_of("dev-2")) >= 3, 0.2)
            refused = sink.last("dev-2")
            assert all(r.value is None and r.q == "bad" for r in refused.values())
            assert set(refused) == {p.name for p in AIR.points}
            stats = runner.stats()["dev-2"]
            assert stats["exceptions"] >= 6 and stats["errors"] == stats["exceptions"]
            assert "0x06 (device busy)" in stats["last_error"]
            assert stats["online"] is True    # it answered: alive, not backed off
            assert ("dev-2", False, None) not in sink.states and not any(not s[1] for s in sink.states)
            assert_air_values(sink.last("dev-1"))
            with pytest.raises(Refused) as info:
                await runner.read_point("dev-2", "pm25")
            assert info.value.code == 6
        finally:
            await stop(task, runner)
            await sim.stop()

    asyncio.run(scenario())


@pytest.mark.timeout(20)
def test_gateway_target_not_responding_counts_as_a_silent_unit():
    async def scenario():
        port = free_port()
        sim = Sim([1, 2], unreachable={2})
        await sim.start_tcp(port)
        clock = VirtualClock()
        sink = RecordingSink(clock)
        runner = one_runner([device(u, tcp(port), poll=0.1, backoff={"initial": "100ms", "max": "300ms"})
                             for u in (1, 2)], sink, clock)
        task = await running(runner)
        try:
            # offline after 3 failures: at 0, then after backoffs of at most 0.2 and 0.3 s
            await clock.run_until(lambda: ("dev-2", False) in [s[:2] for s in sink.states], 0.5)
            assert "0x0b (gateway target did not respond)" in sink.states[-1][2]
            stats = runner.stats()["dev-2"]
            assert stats["timeouts"] >= 3 and stats["exceptions"] == 0 and stats["errors"] == stats["timeouts"]
            assert not sink.readings_of("dev-2")
            assert_air_values(sink.last("dev-1"))
        finally:
            await stop(task, runner)
            await sim.stop()

    asyncio.run(scenario())


@pytest.mark.timeout(20)
def test_illegal_address_in_a_gap_splits_the_request():
    async def scenario():
        port = free_port()
        sim = Sim([1], sparse=True)   # registers 16..19 and 22..29 do not exist
        await sim.start_tcp(port)
        clock = VirtualClock()
        sink = RecordingSink(clock)
        runner = one_runner([device(1, tcp(port), poll=0.1)], sink, clock)
        task = await running(runner)
        try:
            await clock.run_until(lambda: len(sink.readings_of("dev-1")) >= 2, 0.1)
            assert_air_values(sink.last("dev-1"))
            assert runner.stats()["dev-1"]["exceptions"] == 1   # once, then read point by point
            assert len(runner.devices["dev-1"].requests) > 2
        finally:
            await stop(task, runner)
            await sim.stop()

    asyncio.run(scenario())


@pytest.mark.timeout(25)
def test_reconnects_after_the_server_restarts():
    async def scenario():
        port = free_port()
        sim = Sim([1])
        await sim.start_tcp(port)
        clock = VirtualClock()
        sink = RecordingSink(clock)
        runner = one_runner([device(1, tcp(port), poll=0.1, backoff={"initial": "200ms", "max": "500ms"})],
                            sink, clock)
        task = await running(runner)
        try:
            await clock.run_until(lambda: sink.states == [("dev-1", True, None)], 0.1)
            await sim.stop()
            # offline_after 3: three polls of the link down, 0.1 s apart
            await clock.run_until(lambda: sink.states[-1][:2] == ("dev-1", False), 0.5)
            assert "link" in sink.states[-1][2]
            assert runner.connected is False
            await clock.run_for(0.5)   # the server stays away while the link retries
            sim.received.clear()
            await sim.start_tcp(port)
            mark = clock.monotonic()
            # the link's next try is at most its backoff's max (500 ms) away
            await clock.run_until(lambda: sink.states[-1] == ("dev-1", True, None), 0.6)
            await clock.run_until(lambda: sink.readings_of("dev-1", since=mark), 0.1)
            assert_air_values(sink.last("dev-1"))
            assert runner.connected
        finally:
            await stop(task, runner)
            await sim.stop()

    asyncio.run(scenario())


@pytest.mark.timeout(20)
def test_write_point_and_read_point():
    async def scenario():
        port = free_port()
        sim = Sim([1, 2])
        await sim.start_tcp(port)
        # real time: commands must meet polls in flight, and polls happen only while time passes
        sink = RecordingSink()
        runner = one_runner([device(u, tcp(port), poll=0.1) for u in (1, 2)], sink)
        task = await running(runner)   # writes interleave with polling on the same bus
        try:
            await until(lambda: runner.connected, 3, "the link up")
            await runner.write_point("dev-1", "report_interval", 120)
            assert sim.registers(1)[30] == 120 and sim.registers(2)[30] == 60
            reading = await runner.read_point("dev-1", "report_interval")
            assert (reading.point, reading.value, reading.unit, reading.q) == ("report_interval", 120, "s", "good")

            await runner.write_point("dev-2", "fan_on", True)
            assert (await runner.read_point("dev-2", "fan_on")).value is True
            assert (await runner.read_point("dev-1", "fan_on")).value is False
            await until(lambda: sink.readings_of("dev-2") and sink.last("dev-2")["fan_on"].value is True, 2,
                        "a poll reading the written coil")

            with pytest.raises(PermissionError):
                await runner.write_point("dev-1", "pm25", 3.0)
            with pytest.raises(ValueError):
                await runner.write_point("dev-1", "report_interval", 99999)   # profile max 3600
            with pytest.raises(ValueError):
                await runner.write_point("dev-1", "report_interval", "often")
            with pytest.raises(ValueError):
                await runner.write_point("dev-1", "report_interval", 90.5)   # uint16, unscaled
            await runner.write_point("dev-1", "report_interval", 120.0)
            with pytest.raises(KeyError):
                await runner.write_point("dev-1", "no_such_point", 1)
            with pytest.raises(KeyError):
                await runner.read_point("dev-9", "pm25")
            assert sim.registers(1)[30] == 120
        finally:
            await stop(task, runner)
            await sim.stop()

    asyncio.run(scenario())


@pytest.mark.timeout(25)
@pytest.mark.skipif(shutil.which("socat") is None, reason="socat is not installed")
def test_rtu_over_a_pty_pair(tmp_path: Path):
    pair = PtyPair(agent_link=tmp_path / "A", sim_link=tmp_path / "B").start()
    a, b = Path(pair.agent_port), Path(pair.sim_port)
    try:

        async def scenario():
            sim = Sim([1, 2, 3], noisy={3})
            await sim.start_rtu(str(b))
            # real time: one run of the runner on the clock it has in the field, over a real serial
            # line with its real inter-frame silence
            sink = RecordingSink()
            rtu = {"type": "rtu", "port": str(a), "baudrate": 19200, "parity": "N", "stopbits": 1,
                   "timeout": 0.15}
            runner = one_runner([device(u, rtu, poll=0.2, backoff={"initial": "200ms", "max": "1s"})
                                 for u in (1, 2, 3)], sink)
            task = await running(runner)
            try:
                await until(lambda: len(sink.readings_of("dev-1")) >= 3 and len(sink.readings_of("dev-2")) >= 3, 5,
                            "three polls of units 1 and 2")
                assert_air_values(sink.last("dev-1"))
                assert_air_values(sink.last("dev-2"))
                await runner.write_point("dev-2", "report_interval", 300)
                assert (await runner.read_point("dev-2", "report_interval")).value == 300
                await until(lambda: ("dev-3", False) in [s[:2] for s in sink.states], 5, "unit 3 offline")
                noisy = runner.stats()["dev-3"]
                assert noisy["garbage"] >= 1, noisy   # under load a corrupt frame may also arrive late (a timeout)
                assert "unreadable answer" in noisy["last_error"]
                assert runner.stats()["dev-1"]["errors"] == 0
            finally:
                await stop(task, runner)
                await sim.stop()

        asyncio.run(scenario())
    finally:
        pair.stop()


def test_create_runners_groups_by_bus_and_rejects_conflicts():
    driver = get_driver("modbus")
    rtu = {"type": "rtu", "port": "/dev/ttyUSB0", "baudrate": 9600}
    devices = [device(1, tcp(1502)), device(2, tcp(1502)), device(3, tcp(1503)), device(4, rtu), device(5, rtu)]
    runners = driver.create_runners(devices, RecordingSink())
    assert sorted(sorted(r.devices) for r in runners) == [["dev-1", "dev-2"], ["dev-3"], ["dev-4", "dev-5"]]
    with pytest.raises(ConfigError) as info:
        driver.create_runners([device(4, rtu), device(5, {**rtu, "baudrate": 19200})], RecordingSink())
    assert "one bus has one speed" in info.value.problems[0]
    twin = DeviceConfig.model_validate({**device(1, tcp(1502)).model_dump(exclude={"options"}), "id": "twin"}
                                       | {"connection": tcp(1502), "unit": 1, "profile": "air_monitor_rs485"})
    with pytest.raises(ConfigError) as info:
        driver.create_runners([device(1, tcp(1502)), twin], RecordingSink())
    assert "both unit 1" in info.value.problems[0]


def test_fixed_rate_schedule_skips_missed_ticks():
    options = get_driver("modbus").options(device(1, tcp(1502)))
    dev = Device("d", options, poll=1.0, sink=RecordingSink())
    dev.start(100.0)
    dev.begin_poll(100.0)
    assert dev.next_due == 101.0
    dev.begin_poll(101.3)             # a little late: the grid holds
    assert dev.next_due == 102.0
    dev.begin_poll(104.5)             # the bus was busy for 2.5 ticks: skip them, do not bunch
    assert dev.next_due == 105.0 and dev.stats.skipped == 2


@pytest.mark.timeout(20)
def test_a_neighbour_held_up_past_its_ticks_skips_them_and_keeps_the_grid():
    """Unit 1's answer takes 2.5 poll periods (held at the server while virtual time moves on):
    unit 2, due meanwhile, is polled once when the bus is free, the two ticks it missed are skipped
    and counted, not made up in a burst, and it is back on its grid at the next tick."""

    async def scenario():
        port = free_port()
        sim = Sim([1, 2])
        await sim.start_tcp(port)
        clock = VirtualClock()
        sink = RecordingSink(clock)
        runner = one_runner([device(u, tcp(port, timeout=2.0), poll=1.0) for u in (1, 2)], sink, clock)
        task = await running(runner)
        try:
            await clock.run_until(lambda: sink.readings_of("dev-1") and sink.readings_of("dev-2"), 0.0)
            sim.gate = asyncio.Event()
            await clock.advance(1.0)                                # unit 1's poll goes out at 1.0 ...
            await until(lambda: sim.received[1] == 3, 2, "unit 1's request at the server")
            await clock.advance(2.5)                                # ... and is answered at 3.5
            sim.gate.set()
            await clock.run_for(1.5)
            assert [b.t for b in sink.batches if b.device == "dev-2"] == [0.0, 3.5, 4.0, 5.0]
            assert runner.stats()["dev-2"]["skipped"] == 2
            assert runner.stats()["dev-2"]["errors"] == 0
        finally:
            await stop(task, runner)
            await sim.stop()

    asyncio.run(scenario())


# -- regression cases as data (drivers/modbus/testcases/<what it pins>/case.yaml) ---------------

CASES = Path(__file__).resolve().parents[1] / "drivers" / "modbus" / "testcases"


@pytest.mark.timeout(40)
@pytest.mark.parametrize("case", sorted(p.name for p in CASES.iterdir() if p.is_dir()))
def test_regression_case(case: str):
    import yaml

    from agent.core.units import parse_duration

    spec = yaml.safe_load((CASES / case / "case.yaml").read_text())
    poll, window = parse_duration(spec["poll"]), parse_duration(spec["window"])
    expected = spec["expected"]["polls_per_connect"]

    async def scenario():
        port = free_port()
        sim = Sim(spec["units"])
        await sim.start_tcp(port)
        clock = VirtualClock()
        sink = RecordingSink(clock)
        runner = one_runner([device(u, tcp(port), poll=poll, backoff={"initial": "100ms", "max": "200ms"})
                             for u in spec["units"]], sink, clock)
        ids = [f"dev-{u}" for u in spec["units"]]
        task = await running(runner)
        counts: list[dict[str, int]] = []
        try:
            for restart in range(spec["restarts"] + 1):
                if restart:
                    await sim.stop()
                    await clock.run_until(lambda: not runner.connected, 2 * poll, what="the link seen down")
                    await sim.start_tcp(port)
                # (re)connected at a poll tick, every device polled at once: the window starts there
                await clock.run_until(lambda: runner.connected, 5 * poll, what="the link up")
                mark = clock.monotonic()
                await clock.run_for(window)
                counts.append({d: len(sink.readings_of(d, since=mark)) for d in ids})
        finally:
            await stop(task, runner)
            await sim.stop()
        assert counts == [dict.fromkeys(ids, expected)] * (spec["restarts"] + 1), spec["pins"]

    asyncio.run(scenario())
