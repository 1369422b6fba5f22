"""NTCIP 1202: what the signal controller bridge does with the values a controller answers.

The SNMP exchange itself is pysnmp's; what reaches the agent is one value object per variable
binding. The target replaces the client's network call (``SnmpClient._call``) with varbinds
built here from every type SNMPv2's ObjectSyntax allows (and the three exceptions a GET may
answer), with boundary values, fewer or more bindings than asked, and runs the real
``NtcipLink.read_status`` (``_value``, ``_mask``, ``decode_groups``, the preempt state handling)
and the runner's ``_on_status`` (phase tracker, priority manager, readings to the sink).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import yaml

from bench.fuzz_targets import seeds
from bench.fuzz_targets.base import Target

INTS = (0, 1, 2, 4, 6, 9, 10, 255, 256, -1, 2**31 - 1, -2**31, 0x55, 0xAA)


class Answer(Target):
    """Varbind values of random SNMP types and values into ``NtcipLink.read_status`` and
    ``SignalRunner._on_status``. The link may raise NoAnswer or Refused (its protocol errors);
    anything else would be counted on the ``ntcip`` boundary by the polling loop."""

    name = "ntcip.answer"
    share = 4

    @classmethod
    def exceptions(cls) -> tuple[type[BaseException], ...]:
        from firmware_bridges.signal_controller.errors import NoAnswer, Refused
        return (NoAnswer, Refused,)

    def setup(self, workdir: Path) -> None:
        from pyasn1.codec.ber import encoder
        from pysnmp.proto import rfc1902, rfc1905

        from agent.core.config import DeviceConfig
        from bench.fuzz_targets.sink import CheckingSink
        from firmware_bridges.signal_controller import DRIVER
        from firmware_bridges.signal_controller.ntcip import SnmpClient
        from firmware_bridges.signal_controller.runner import SignalRunner

        self.encoder, self.rfc1902, self.rfc1905 = encoder, rfc1902, rfc1905
        self.sink = CheckingSink(self.problem)
        sample = yaml.safe_load((seeds.REPO / "firmware_bridges" / "signal_controller" / "sample.yaml").read_text())
        entry = next(d for d in sample["devices"] if d["id"] == "tsc-01")
        entry["connection"]["community"] = "public"   # the sample reads it from a file
        device = DeviceConfig.model_validate(entry)
        self.runner = SignalRunner(device, DRIVER.options(device), self.sink)
        target = self

        class AnsweringClient(SnmpClient):
            """The real client, minus the network: ``_call`` returns the input's varbinds."""

            async def _ensure(self) -> None:
                return None

            async def _call(self, command: Any, binds: list[Any], context: Any, what: str) -> list[Any]:
                return [(None, value) for value in target.values]

        self.runner.link.client = AnsweringClient(self.runner.link.client.connection)
        self.values: list[Any] = []
        import asyncio
        self.loop = asyncio.new_event_loop()

    def _value(self, rng: random.Random) -> Any:
        p1902, p1905 = self.rfc1902, self.rfc1905
        kind = rng.random()
        if kind < 0.45:
            return p1902.Integer32(rng.choice(INTS) if rng.random() < 0.6 else rng.randrange(-2**31, 2**31))
        if kind < 0.6:
            return p1902.OctetString(rng.randbytes(rng.choice((0, 1, 1, 2, 8, 300))))
        if kind < 0.7:
            return rng.choice((p1905.NoSuchObject(""), p1905.NoSuchInstance(""), p1905.EndOfMibView("")))
        if kind < 0.75:
            return p1902.Counter64(rng.choice((0, 1, 2**63, 2**64 - 1)))
        if kind < 0.8:
            return p1902.Gauge32(rng.choice((0, 1, 2**32 - 1)))
        if kind < 0.85:
            return p1902.IpAddress(rng.randbytes(4))
        if kind < 0.9:
            head = (rng.randrange(3), rng.randrange(40))
            return p1902.ObjectIdentifier(head + tuple(rng.randrange(0, 2**31) for _ in range(rng.randrange(0, 10))))
        if kind < 0.93:
            return p1902.TimeTicks(rng.randrange(2**32))
        if kind < 0.96:
            return p1902.Opaque(rng.randbytes(rng.randrange(0, 20)))
        if kind < 0.98:
            return p1902.Bits(rng.randbytes(rng.randrange(0, 4)))
        return p1902.Null("")

    def generate(self, rng: random.Random) -> list[Any]:
        link = self.runner.link
        wanted = len(link._oids) + len(link._preempt_oids)   # noqa: SLF001 - what read_status asks for
        count = wanted + rng.choice((0, 0, 0, 0, 0, -1, -wanted, 1))
        plain = rng.random() < 0.3   # a well-behaved controller: integers in range
        return [self.rfc1902.Integer32(rng.randrange(256)) if plain else self._value(rng) for _ in range(max(0, count))]

    def to_bytes(self, case: list[Any]) -> bytes:
        """The values BER-encoded one after the other, as they travelled in the response."""
        return b"".join(self.encoder.encode(value) for value in case)

    def feed(self, case: list[Any]) -> None:
        self.values = case
        status = self.loop.run_until_complete(self.runner.link.read_status())
        self.runner._on_status(status)   # noqa: SLF001 - what the link's poll loop calls

    def check(self, case: Any) -> None:
        self.sink.check()

    def close(self) -> None:
        self.loop.close()
