"""The Modbus simulator against a plain pymodbus client, over real sockets and a real pty.

What a test reads off the wire is decoded with the driver's codec and must equal
``sim.values(unit)``; each fault mode must be observable the way a client meets it in the field.
"""

from __future__ import annotations

import asyncio
import functools
import math
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pymodbus import FramerType
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient, ModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusIOException
from pymodbus.framer import FramerRTU

from drivers.modbus import codec
from drivers.modbus.profile import load_profile
from tests.fakes import until
from tests.hardware_sim.broker import port_open
from tests.hardware_sim.modbus_sim import (
    DEFAULT_PROFILE_DIRS, Fault, FaultMode, ModbusSim, PtyPair, ValueModel, fleet_points,
    points_from_profile, write_fleet_profile,
)

REPO = Path(__file__).resolve().parents[1]
PROFILE = "air_monitor_rs485"
pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="session")
def profile_dirs() -> list[Path]:
    return list(DEFAULT_PROFILE_DIRS)       # config/profiles: the bundled air_monitor_rs485.yaml


@pytest.fixture(scope="session")
def profile(profile_dirs: list[Path]):
    return load_profile(PROFILE, profile_dirs)


def run_async(test):
    """Run an async test on a fresh event loop (the project does not use pytest-asyncio)."""
    @functools.wraps(test)
    def wrapper(*args, **kwargs):
        return asyncio.run(test(*args, **kwargs))
    return wrapper


class FakeClock:
    """Injected into the simulator so a test decides what time it is."""

    def __init__(self, t: float = 1_750_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def make_sim(profile_dirs, units=(1, 2, 3), **kwargs) -> ModbusSim:
    kwargs.setdefault("tcp", ("127.0.0.1", 0))
    return ModbusSim(PROFILE, units, profile_dirs=profile_dirs, **kwargs)


def tcp_client(sim: ModbusSim, timeout: float = 1.0, **kwargs) -> AsyncModbusTcpClient:
    host, port = sim.tcp_address
    return AsyncModbusTcpClient(host, port=port, timeout=timeout, retries=0, **kwargs)


async def read_point(client, point, unit: int):
    """Read one profile point with a plain client and decode it with the driver's codec."""
    if point.table in ("coil", "discrete_input"):
        read = client.read_coils if point.table == "coil" else client.read_discrete_inputs
        rr = await read(point.address, count=1, device_id=unit)
        assert not rr.isError(), rr
        return rr.bits[0]
    read = client.read_holding_registers if point.table == "holding_register" else client.read_input_registers
    rr = await read(point.address, count=point.count, device_id=unit)
    assert not rr.isError(), rr
    if point.bit is not None:
        return bool(rr.registers[0] >> point.bit & 1)
    return codec.decode(rr.registers, point.type, point.order, point.scale, point.offset)


# -- values -------------------------------------------------------------------------------------

@run_async
async def test_served_values_match_values_for_several_units(profile_dirs, profile) -> None:
    clock = FakeClock()
    async with make_sim(profile_dirs, clock=clock) as sim:
        client = tcp_client(sim)
        assert await client.connect()
        try:
            for unit in (1, 2, 3):
                served = {p.name: await read_point(client, p, unit) for p in profile.points}
                assert served == sim.values(unit)
            assert sim.values(1)["pm25"] != sim.values(2)["pm25"]      # units are not clones
            # one merged read of the whole block decodes the same (registers sit where the map says)
            rr = await client.read_holding_registers(0, count=31, device_id=2)
            pm25 = profile.point("pm25")
            assert codec.decode(rr.registers[0:2], "float32", "ABCD") == sim.values(2)["pm25"] == \
                await read_point(client, pm25, 2)
            clock.t += 60
            values = sim.values(1)
            assert await read_point(client, profile.point("uptime"), 1) == values["uptime"] == 60
            assert await read_point(client, profile.point("pm25"), 1) == values["pm25"]
        finally:
            client.close()


def test_values_are_plausible_and_deterministic(profile) -> None:
    points = {p.name: p for p in points_from_profile(profile)}
    model, twin = ValueModel(seed=7, boot_time=0), ValueModel(seed=7, boot_time=0)
    other = ValueModel(seed=8, boot_time=0)
    day = [1_750_000_000 + 60 * i for i in range(24 * 60)]
    pm25 = [model.value(points["pm25"], 1, t) for t in day]
    assert pm25 == [twin.value(points["pm25"], 1, t) for t in day]
    assert pm25 != [other.value(points["pm25"], 1, t) for t in day]
    assert min(pm25) >= 20 and max(pm25) <= 150 and max(pm25) - min(pm25) > 50   # drifts over the range
    temps = [model.value(points["temperature"], 1, t) for t in day]
    assert max(temps) - min(temps) > 10                                         # a daily swing
    hum = [model.value(points["humidity"], 1, t) for t in day]
    assert all(10 <= h <= 99 for h in hum)
    assert all(model.value(points["pm10"], 1, t) >= model.value(points["pm25"], 1, t) for t in day[:100])
    assert model.value(points["uptime"], 1, 3600.4) == 3600


@run_async
async def test_set_value_pins_a_point_exactly(profile_dirs, profile) -> None:
    async with make_sim(profile_dirs, units=[1]) as sim:
        sim.set_value(1, "pm25", 42.5)
        sim.set_value(1, "temperature", -8.1)          # int16 with scale: a negative value on the wire
        sim.set_value(1, "co", 1.25)                    # float32 CDAB
        sim.set_value(1, "sensor_fault", True)          # a bit of status_word
        client = tcp_client(sim)
        assert await client.connect()
        try:
            assert await read_point(client, profile.point("pm25"), 1) == 42.5
            assert await read_point(client, profile.point("temperature"), 1) == pytest.approx(-8.1)
            rr = await client.read_holding_registers(4, count=1, device_id=1)
            assert rr.registers == [0xFFAF]              # -81 as int16
            assert await read_point(client, profile.point("co"), 1) == 1.25
            assert await read_point(client, profile.point("status_word"), 1) == 2
            assert sim.values(1)["sensor_fault"] is True and sim.values(1)["status_word"] == 2
            sim.clear_value(1, "pm25")
            assert await read_point(client, profile.point("pm25"), 1) == sim.values(1)["pm25"] != 42.5
            with pytest.raises(ValueError):
                sim.set_value(1, "humidity", -5)         # uint16 cannot carry it: fails in the test
        finally:
            client.close()


@run_async
async def test_client_writes_land(profile_dirs, profile) -> None:
    async with make_sim(profile_dirs, units=[1, 2]) as sim:
        client = tcp_client(sim)
        assert await client.connect()
        try:
            assert sim.values(1)["fan_on"] is True and sim.values(1)["report_interval"] == 60
            assert not (await client.write_coil(0, False, device_id=1)).isError()
            assert not (await client.write_register(30, 120, device_id=1)).isError()
            assert sim.values(1)["fan_on"] is False and sim.values(1)["report_interval"] == 120
            assert await read_point(client, profile.point("fan_on"), 1) is False
            assert await read_point(client, profile.point("report_interval"), 1) == 120
            assert sim.values(2)["report_interval"] == 60                    # only the addressed unit
            rr = await client.write_register(0, 1, device_id=1)              # pm25 is read-only
            assert rr.isError() and rr.exception_code == 0x02
            rr = await client.write_register(30, 0, device_id=1)             # below the profile's min
            assert rr.isError() and rr.exception_code == 0x03
            rr = await client.read_holding_registers(40, count=1, device_id=1)
            assert rr.isError() and rr.exception_code == 0x02               # outside the map
        finally:
            client.close()


# -- faults -------------------------------------------------------------------------------------

@run_async
async def test_fault_no_answer_times_out_and_spares_other_units(profile_dirs) -> None:
    async with make_sim(profile_dirs, units=[1, 2]) as sim:
        sim.set_fault(2, "no_answer")
        client = tcp_client(sim, timeout=0.3)
        assert await client.connect()
        try:
            started = time.monotonic()
            with pytest.raises(ModbusIOException, match="No response"):
                await client.read_holding_registers(0, count=2, device_id=2)
            assert time.monotonic() - started >= 0.3
            assert sim.requests(2) == 1
            assert not (await client.read_holding_registers(0, count=2, device_id=1)).isError()
            sim.set_fault(2, FaultMode.NONE)
            assert not (await client.read_holding_registers(0, count=2, device_id=2)).isError()
        finally:
            client.close()


@run_async
async def test_fault_exception_answers_the_code(profile_dirs) -> None:
    async with make_sim(profile_dirs, units=[1, 2]) as sim:
        sim.set_fault(1, "exception")                     # default 0x04 device failure
        sim.set_fault(2, Fault.parse("exception:2"))      # illegal data address
        client = tcp_client(sim)
        assert await client.connect()
        try:
            rr = await client.read_holding_registers(0, count=2, device_id=1)
            assert rr.isError() and rr.exception_code == 0x04 and rr.function_code == 0x83
            rr = await client.read_coils(0, count=1, device_id=2)
            assert rr.isError() and rr.exception_code == 0x02 and rr.function_code == 0x81
            rr = await client.read_holding_registers(0, count=2, device_id=9)   # no such unit behind this gateway
            assert rr.isError() and rr.exception_code == 0x0B
        finally:
            client.close()


@run_async
async def test_fault_corrupt_tcp_gives_a_decode_error(profile_dirs) -> None:
    async with make_sim(profile_dirs, units=[1]) as sim:
        sim.set_fault(1, "corrupt")
        received: list[bytes] = []

        def trace(sending: bool, data: bytes) -> bytes:
            if not sending:
                received.append(data)
            return data

        client = tcp_client(sim, timeout=0.5, trace_packet=trace)
        assert await client.connect()
        try:
            with pytest.raises(ModbusIOException):
                await client.read_holding_registers(0, count=2, device_id=1)
            # a frame did arrive, with the right transaction header, but its PDU is garbage
            assert received and received[0][6] == 1 and received[0][7] == 0x00
            sim.set_fault(1, "none")
            if not client.connected:
                assert await client.connect()
            assert not (await client.read_holding_registers(0, count=2, device_id=1)).isError()
        finally:
            client.close()


@run_async
async def test_fault_slow_answers_late(profile_dirs) -> None:
    async with make_sim(profile_dirs, units=[1]) as sim:
        sim.set_fault(1, "slow", delay=0.4)
        client = tcp_client(sim, timeout=2)
        assert await client.connect()
        try:
            started = time.monotonic()
            rr = await client.read_holding_registers(0, count=2, device_id=1)
            assert not rr.isError() and time.monotonic() - started >= 0.4
        finally:
            client.close()
        impatient = tcp_client(sim, timeout=0.15)
        assert await impatient.connect()
        try:
            with pytest.raises(ModbusIOException):
                await impatient.read_holding_registers(0, count=2, device_id=1)
        finally:
            impatient.close()


@run_async
async def test_drop_closes_connections_and_restarts_the_listener(profile_dirs) -> None:
    async with make_sim(profile_dirs, units=[1]) as sim:
        port = sim.tcp_address[1]
        disconnected = asyncio.Event()
        client = tcp_client(sim, trace_connect=lambda up: None if up else disconnected.set())
        assert await client.connect()
        try:
            await sim.drop()
            await asyncio.wait_for(disconnected.wait(), 2)           # the server hung up on us
        finally:
            client.close()

        await sim.drop(downtime=0.6)
        with pytest.raises(OSError):                                  # nobody listening now
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        await until(lambda: port_open("127.0.0.1", port), 0.9, "the listener back")
        assert sim.tcp_address[1] == port                             # back on the same port
        client = tcp_client(sim)
        assert await client.connect()
        try:
            assert not (await client.read_holding_registers(0, count=2, device_id=1)).isError()
        finally:
            client.close()


# -- RTU over a pty -----------------------------------------------------------------------------

@run_async
async def test_rtu_over_pty(profile_dirs, profile) -> None:
    clock = FakeClock()
    async with make_sim(profile_dirs, units=[1, 2], tcp=None, rtu_pty=True, clock=clock) as sim:
        received: list[bytes] = []

        def trace(sending: bool, data: bytes) -> bytes:
            if not sending:
                received.append(data)
            return data

        client = AsyncModbusSerialClient(sim.agent_port, framer=FramerType.RTU, baudrate=9600,
                                         timeout=0.3, retries=0, trace_packet=trace)
        assert await client.connect()
        try:
            for unit in (1, 2):
                served = {p.name: await read_point(client, p, unit) for p in profile.points}
                assert served == sim.values(unit)
            # a unit id nobody has: silence, as on a real bus
            with pytest.raises(ModbusIOException):
                await client.read_holding_registers(0, count=2, device_id=7)
            sim.set_fault(2, "no_answer")
            with pytest.raises(ModbusIOException):
                await client.read_holding_registers(0, count=2, device_id=2)
            assert not (await client.read_holding_registers(0, count=2, device_id=1)).isError()
            # corrupt: the frame arrives whole, but its CRC is wrong, so the client discards it
            sim.set_fault(2, "corrupt")
            received.clear()
            with pytest.raises(ModbusIOException):
                await client.read_holding_registers(0, count=2, device_id=2)
            frame = b"".join(received)
            assert frame[:3] == b"\x02\x03\x04" and len(frame) == 9
            assert not FramerRTU.check_CRC(frame[:-2], int.from_bytes(frame[-2:], "big"))
            sim.set_fault(2, "exception:4")
            rr = await client.read_holding_registers(0, count=2, device_id=2)
            assert rr.isError() and rr.exception_code == 0x04
            sim.set_fault(2, "none")
            assert not (await client.write_register(30, 300, device_id=2)).isError()
            assert sim.values(2)["report_interval"] == 300
        finally:
            client.close()


def test_pty_pair_starts_and_stops() -> None:
    with PtyPair() as pair:
        a, b = pair.sim_port, pair.agent_port
        assert os.path.exists(a) and os.path.exists(b)
        fa, fb = os.open(a, os.O_RDWR | os.O_NOCTTY), os.open(b, os.O_RDWR | os.O_NOCTTY)
        try:
            os.write(fa, b"\x01\x03")
            deadline = time.monotonic() + 2
            data = b""
            while len(data) < 2 and time.monotonic() < deadline:
                data += os.read(fb, 2)
            assert data == b"\x01\x03"
        finally:
            os.close(fa)
            os.close(fb)
    assert not os.path.exists(a) and not os.path.exists(b)


# -- thread-backed variant, fleet mode ------------------------------------------------------------

def test_run_in_thread_with_a_sync_client(profile_dirs) -> None:
    with make_sim(profile_dirs, units=[4]).run_in_thread() as sim:
        host, port = sim.tcp_address
        client = ModbusTcpClient(host, port=port, timeout=0.5, retries=0)
        assert client.connect()
        try:
            sim.set_value(4, "pm10", 77.0)
            rr = client.read_holding_registers(2, count=2, device_id=4)
            assert codec.decode(rr.registers, "float32", "ABCD") == 77.0 == sim.values(4)["pm10"]
            sim.set_fault(4, "exception:6")
            assert client.read_holding_registers(2, count=2, device_id=4).exception_code == 0x06
            sim.set_fault(4, "none")
            sim.drop()   # returns once the simulator's thread has closed the connection
            with pytest.raises((ConnectionException, ModbusIOException)):
                client.read_holding_registers(2, count=2, device_id=4)
        finally:
            client.close()


@pytest.mark.loop_budget(400)   # the harness builds 200 simulated units inside the test's loop
@run_async
async def test_fleet_serves_the_profile_it_writes(tmp_path) -> None:
    path = write_fleet_profile(tmp_path / "fleet_50.yaml", 50)
    fleet_profile = load_profile(str(path), [])                  # the agent's loader accepts it
    assert sum(p.count for p in fleet_profile.points) == 50
    assert {(p.type, p.order) for p in fleet_profile.points} >= {
        ("uint16", "ABCD"), ("int16", "ABCD"), ("float32", "ABCD"), ("float32", "CDAB"), ("uint32", "ABCD")}
    assert len(fleet_points(50)) == len(fleet_profile.points)
    clock = FakeClock()
    async with ModbusSim.fleet(units=200, registers=50, tcp=("127.0.0.1", 0), clock=clock) as sim:
        client = tcp_client(sim)
        assert await client.connect()
        try:
            started = time.monotonic()
            for unit in range(1, 201):
                rr = await client.read_holding_registers(0, count=50, device_id=unit)
                assert not rr.isError()
                if unit in (1, 117, 200):
                    decoded = {p.name: codec.decode(rr.registers[p.address:p.end], p.type, p.order, p.scale,
                                                    p.offset) for p in fleet_profile.points}
                    assert decoded == sim.values(unit)
            elapsed = time.monotonic() - started
            assert elapsed < 1.0, f"200 reads of 50 registers took {elapsed:.2f}s"  # > 200 requests/s
            counter = next(p for p in fleet_profile.points if p.type == "uint32")
            first = sim.values(1)[counter.name]
            assert first > 65535                                     # both words of the uint32 carry data
            clock.t += 10
            assert sim.values(1)[counter.name] == first + 10
            assert all(math.isfinite(v) for v in sim.values(5).values())
        finally:
            client.close()


# -- command line -------------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_cli_starts_answers_and_takes_commands(profile_dirs, tmp_path) -> None:
    port = _free_port()
    agent_pty = tmp_path / "ttyAQ"
    cmd = [sys.executable, "-m", "tests.hardware_sim.modbus_sim", "--tcp", f"127.0.0.1:{port}",
           "--units", "1,2,3", "--profile", PROFILE, "--fault", "2=exception:2", "--rtu-pty", str(agent_pty)]
    for folder in profile_dirs:
        cmd += ["--profile-dir", str(folder)]
    proc = subprocess.Popen(cmd, cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, bufsize=1)
    try:
        ready = proc.stdout.readline()
        assert ready.startswith("modbus_sim ready"), ready + proc.stderr.read()
        assert f"tcp=127.0.0.1:{port}" in ready and f"rtu={agent_pty}" in ready
        assert proc.stdout.readline().strip() == f"agent serial port: {agent_pty}"
        client = ModbusTcpClient("127.0.0.1", port=port, timeout=1, retries=0)
        assert client.connect()
        try:
            assert not client.read_holding_registers(0, count=16, device_id=1).isError()
            assert client.read_holding_registers(0, count=16, device_id=2).exception_code == 0x02
            proc.stdin.write("fault 2 none\n")
            assert proc.stdout.readline().strip() == "unit 2: none"
            assert not client.read_holding_registers(0, count=16, device_id=2).isError()
        finally:
            client.close()
        assert agent_pty.is_symlink()
        proc.terminate()
        assert proc.wait(5) == 0
        assert not agent_pty.exists()                 # the pty pair went with it
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_cli_argument_forms() -> None:
    from tests.hardware_sim.modbus_sim import _parse_units

    assert _parse_units("1,2,5-7", fleet=False) == [1, 2, 5, 6, 7]
    assert _parse_units("3", fleet=False) == [3]
    assert _parse_units("3", fleet=True) == [1, 2, 3]            # fleet mode: a count
    assert Fault.parse("exception:0x02") == Fault(FaultMode.EXCEPTION, code=2)
    assert Fault.parse("slow:1.5") == Fault(FaultMode.SLOW, delay=1.5)
    assert str(Fault.parse("exception")) == "exception:0x04"
    with pytest.raises(ValueError):
        Fault.parse("no_answer:3")
    with pytest.raises(ValueError):
        Fault.parse("flaky")
