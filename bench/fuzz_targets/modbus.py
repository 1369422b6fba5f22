"""Modbus: the register codec (every type, word order and scale), and answers from a unit as the
agent's client takes them in (pymodbus's own client framer and PDU decoder, then the bus
runner's decoding of the request the answer belongs to, the readings' quality, the sink).
"""

from __future__ import annotations

import json
import random
import struct
import time
from pathlib import Path
from typing import Any

from bench.fuzz_targets.base import Target
from bench.fuzz_targets.mutate import mutate_bytes, random_bytes

TYPES = ("bool", "int16", "uint16", "int32", "uint32", "float32", "int64", "uint64", "float64", "string")
ORDERS = ("ABCD", "CDAB", "BADC", "DCBA")
SCALES = (1.0, 1.0, 0.1, 0.01, 0.001, 10.0, 100.0, -1.0, 0.5, 1 / 3, 1e-6, 1e6, 2.5e-5)
OFFSETS = (0.0, 0.0, -40.0, 273.15, 0.5, -1000.0)
REGISTERS = (0, 1, 0x7FFF, 0x8000, 0xFFFF, 0x7F80, 0x7FC0, 0xFF80, 0x7FF0, 0xFFF0, 0x0080, 0x2020, 0x4141)
PROFILES = ("air_monitor_rs485", "lamp_pole", "manhole_cover", "signal_io_module", "fire_panel_gateway")


def register(rng: random.Random) -> int:
    return rng.choice(REGISTERS) if rng.random() < 0.5 else rng.randrange(65536)


class Codec(Target):
    """A block decoder compiled for random points (every type, order, scale, offset, bits of a
    register, strings) fed random registers, as one poll decodes one request; the readings
    (quality, NaN handling: ``RequestReadings``) checked by the sink. A wrong register count may
    raise struct.error (the bus counts that as garbage from the unit); nothing else."""

    name = "modbus.codec"
    share = 4
    allowed = (struct.error,)

    def setup(self, workdir: Path) -> None:
        from bench.fuzz_targets.sink import CheckingSink
        from drivers.modbus import plan
        from drivers.modbus.device import RequestReadings
        from drivers.modbus.profile import Point

        self.Point, self.plan, self.RequestReadings = Point, plan, RequestReadings
        self.sink = CheckingSink(self.problem)

    def generate(self, rng: random.Random) -> tuple[list[dict[str, Any]], list[int]]:
        points, address = [], rng.choice((0, 0, 100, 65530))
        for i in range(rng.randrange(1, 7)):
            kind = rng.choice(TYPES)
            spec: dict[str, Any] = {"name": f"p{i}", "table": "holding_register", "address": address, "type": kind}
            if kind == "bool" and rng.random() < 0.7:
                spec["bit"] = rng.randrange(16)
            if kind == "string":
                spec["length"] = rng.choice((1, 2, 8, 16))
                spec["order"] = rng.choice(("ABCD", "BADC"))
            elif kind != "bool":
                spec["order"] = rng.choice(ORDERS)
                spec["scale"], spec["offset"] = rng.choice(SCALES), rng.choice(OFFSETS)
                if rng.random() < 0.3:
                    spec["min"], spec["max"] = sorted((rng.choice((-1e9, 0.0, 100.0)), rng.choice((1e9, 0.0, 50.0))))
            points.append(spec)
            width = spec.get("length") or {"int32": 2, "uint32": 2, "float32": 2, "int64": 4, "uint64": 4,
                                             "float64": 4}.get(kind, 1)
            address += width + rng.choice((0, 0, 0, 1, 3))
        count = address - points[0]["address"]
        count += rng.choice((0, 0, 0, 0, -1, 1))   # the unit answers one register short or long
        return points, [register(rng) for _ in range(max(0, count))]

    def to_bytes(self, case: tuple[list[dict[str, Any]], list[int]]) -> bytes:
        points, registers = case
        return json.dumps(points).encode() + b"\n" + b"".join(r.to_bytes(2, "big") for r in registers)

    def feed(self, case: tuple[list[dict[str, Any]], list[int]]) -> None:
        points = [self.Point.model_validate(p) for p in case[0]]
        reader = self.RequestReadings(self.plan.make_request("holding_register", points))
        started = time.thread_time()
        values = reader.request.decode(case[1])
        self.sink.readings("unit-1", reader.good(values, 1_700_000_000_000))
        self.handler_cpu = time.thread_time() - started

    def check(self, case: Any) -> None:
        self.sink.check()


class Answer(Target):
    """Bytes a unit answers with (valid answers built by pymodbus, then mutated: wrong byte
    counts, function codes, exception codes, unit ids, transaction ids, lengths, CRCs) through
    pymodbus's client framer (socket and RTU) and client PDU decoder, then, if a PDU comes out,
    what ``BusRunner`` does with it: an exception response makes the request's points bad, any
    other PDU goes through ``BusRunner._decode`` for the request it answers and the readings to
    the sink. pymodbus may raise its own ModbusException (the client then drops the connection);
    the agent's decoding may raise NoAnswer (garbage from the unit); nothing may reach the
    ``modbus`` boundary."""

    name = "modbus.answer"
    share = 6

    @classmethod
    def exceptions(cls) -> tuple[type[BaseException], ...]:
        from pymodbus.exceptions import ModbusException

        from drivers.modbus.bus import NoAnswer
        return (ModbusException, NoAnswer,)

    def setup(self, workdir: Path) -> None:
        from pymodbus.framer import FramerRTU, FramerSocket
        from pymodbus.pdu import DecodePDU, ExceptionResponse
        from pymodbus.pdu.bit_message import ReadCoilsResponse, ReadDiscreteInputsResponse
        from pymodbus.pdu.register_message import ReadHoldingRegistersResponse, ReadInputRegistersResponse

        from agent.core.config import DeviceConfig
        from bench.fuzz_targets.sink import CheckingSink
        from drivers.modbus import bus
        from drivers.modbus.options import Options

        self.sink = CheckingSink(self.problem)
        self.framers = {"socket": FramerSocket(DecodePDU(False)), "rtu": FramerRTU(DecodePDU(False))}
        self.responses = {"holding_register": ReadHoldingRegistersResponse, "input_register": ReadInputRegistersResponse,
                          "coil": ReadCoilsResponse, "discrete_input": ReadDiscreteInputsResponse}
        self.ExceptionResponse = ExceptionResponse
        devices = []
        for unit, profile in enumerate(PROFILES, start=1):
            config = DeviceConfig.model_validate({"id": f"dev-{unit}", "driver": "modbus", "poll": "1s"})
            options = Options.model_validate({"connection": {"type": "tcp", "host": "192.0.2.1", "port": 502},
                                              "unit": unit, "profile": profile})
            devices.append((config, options))
        self.runner = bus.BusRunner(devices[0][1].connection, devices, self.sink)
        # every request a poll makes, and the single-point requests of device.read
        self.readers = [(device, reader) for device in self.runner.devices.values()
                        for reader in [*device.requests, *(device.single_request(p) for p in device.points)]]

    def generate(self, rng: random.Random) -> tuple[int, str, int, bytes]:
        index = rng.randrange(len(self.readers))
        device, reader = self.readers[index]
        request = reader.request
        framer_name = rng.choice(("socket", "rtu"))
        tid = rng.randrange(1, 65000)
        if rng.random() < 0.1:
            pdu = self.ExceptionResponse(rng.choice((1, 2, 3, 4)), rng.choice((1, 2, 3, 4, 6, 10, 11, 0, 255)))
        elif request.bits:
            count = request.count + rng.choice((0, 0, 0, -8, 8))
            pdu = self.responses[request.table](bits=[rng.random() < 0.5 for _ in range(max(0, count))])
        else:
            count = request.count + rng.choice((0, 0, 0, -1, 1))
            pdu = self.responses[request.table](registers=[register(rng) for _ in range(max(0, count))])
        pdu.dev_id, pdu.transaction_id = device.unit, tid
        data = self.framers[framer_name].buildFrame(pdu)
        pick = rng.random()
        if pick < 0.4:
            data = mutate_bytes(rng, data, max_len=300)
        elif pick < 0.45:
            data = random_bytes(rng, 300)
        return index, framer_name, tid, data

    def to_bytes(self, case: tuple[int, str, int, bytes]) -> bytes:
        return case[3]

    def feed(self, case: tuple[int, str, int, bytes]) -> None:
        index, framer_name, tid, data = case
        device, reader = self.readers[index]
        request = reader.request
        # as pymodbus's client transaction does: the framer with the unit id and transaction id it expects
        _, pdu = self.framers[framer_name].handleFrame(data, device.unit, tid if framer_name == "socket" else 0)
        if pdu is None:
            return   # nothing complete: the client waits, then times out
        if pdu.isError():
            readings = reader.bad(1_700_000_000_000)
        else:
            readings = reader.good(self.runner._decode(device, request, pdu), 1_700_000_000_000)   # noqa: SLF001
        device.deliver(readings)

    def check(self, case: Any) -> None:
        self.sink.check()
