"""MQTT packets from a hostile broker into the agent's uplink (``agent.uplink.MqttUplink``, paho
parsing in ``loop_read``).

A loopback TCP server in the target plays the broker: it answers CONNECT with a CONNACK, then
for each input writes the input's bytes (server-to-client packets: PUBLISH on the command topic
and elsewhere, acknowledgements, SUBACK, PINGRESP, CONNACK again, DISCONNECT, AUTH, reserved
types; valid and mutated: lengths, remaining-length encodings, topics, properties, flags)
followed by a probe: a valid QoS 1 PUBLISH on the command topic. The uplink passes the input
when either the probe is acknowledged (it still reads the stream) or, if it is not within
PROBE_S (paho dropped the connection, or waits for bytes a declared length promised and the
broker then closes), the uplink connects again within RECONNECT_S. The uplink task must never
end, no callback may hold the loop for more than 50 ms of CPU, nothing may be counted on a
boundary, and the command handler gets (str, bytes) for every PUBLISH paho delivers.
"""

from __future__ import annotations

import asyncio
import random
import struct
from pathlib import Path
from typing import Any

from bench.fuzz_targets.base import Target
from bench.fuzz_targets.mutate import STRINGS, mutate_bytes, random_bytes

PROBE_S = 0.1
RECONNECT_S = 5.0


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def packet(first: int, body: bytes) -> bytes:
    return bytes((first,)) + varint(len(body)) + body


def utf8(text: bytes) -> bytes:
    return struct.pack(">H", len(text) & 0xFFFF) + text


def publish(topic: bytes, payload: bytes, qos: int, pid: int, v5: bool, props: bytes = b"", flags: int = 0) -> bytes:
    body = utf8(topic) + (struct.pack(">H", pid) if qos else b"")
    if v5:
        body += varint(len(props)) + props
    return packet(0x30 | qos << 1 | flags, body + payload)


class _Connection:
    """One client connection as the fake broker sees it: the packets the client sends."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, writer
        self.pubacks: set[int] = set()
        self.acked = asyncio.Event()
        self.closed = asyncio.Event()
        self.ready = asyncio.Event()     # CONNACK sent
        self.v5 = True

    async def serve(self) -> None:
        try:
            while True:
                first = (await self.reader.readexactly(1))[0]
                length, shift = 0, 0
                while True:
                    byte = (await self.reader.readexactly(1))[0]
                    length += (byte & 0x7F) << shift
                    shift += 7
                    if not byte & 0x80:
                        break
                body = await self.reader.readexactly(length)
                kind = first >> 4
                if kind == 1:        # CONNECT: protocol level after the protocol name
                    self.v5 = body[6] == 5
                    self.writer.write(b"\x20\x03\x00\x00\x00" if self.v5 else b"\x20\x02\x00\x00")
                    self.ready.set()
                elif kind == 4:      # PUBACK
                    self.pubacks.add(struct.unpack(">H", body[:2])[0])
                    self.acked.set()
                elif kind == 8:      # SUBSCRIBE: granted
                    self.writer.write(packet(0x90, body[:2] + (b"\x00" if self.v5 else b"") + b"\x01"))
                elif kind == 12:     # PINGREQ
                    self.writer.write(b"\xd0\x00")
        except (asyncio.IncompleteReadError, ConnectionError, OSError, IndexError, struct.error):
            pass
        finally:
            self.closed.set()
            self.acked.set()   # wakes whoever waits for a PUBACK: there will be none
            self.writer.close()


class MqttPacket(Target):
    """Server-to-client packets from a fake broker into the real MqttUplink: it acknowledges the
    probe after them or reconnects, never stalls or ends (see the module docstring)."""

    name = "mqtt.packet"
    share = 0.2
    on_loop = True

    def setup(self, workdir: Path) -> None:
        from agent.core import loopwatch
        from agent.config import Gateway, Mqtt
        from agent.outbox import Outbox
        from agent.uplink import MqttUplink

        self.loop = asyncio.new_event_loop()
        self.watch = loopwatch.install(clock="cpu", every_loop=True)
        self.connections: asyncio.Queue[_Connection] = asyncio.Queue()
        self.server = self.loop.run_until_complete(asyncio.start_server(self._accept, "127.0.0.1", 0))
        port = self.server.sockets[0].getsockname()[1]
        cfg = Mqtt(host="127.0.0.1", port=port, protocol="5", keepalive=30, connect_timeout=2,
                   reconnect={"initial": 0.01, "max": 0.05})
        gateway = Gateway(id="gw-fuzz", site="lab")
        self.outbox = Outbox(workdir / "outbox.db", gateway_id=gateway.id, max_bytes=64 * 2**20, durable=False)
        self.uplink = MqttUplink(cfg, gateway, self.outbox, birth=lambda: {"agent": "fuzz", "devices": []})
        self.commands: list[tuple[Any, Any]] = []
        self.uplink.on_command = lambda topic, payload: self.commands.append((topic, payload))
        self.cmd_topic = self.uplink.topic("state").removesuffix("state").encode() + b"cmd/"
        self.task = self.loop.create_task(self.uplink.run())
        self.current: _Connection | None = None
        self.pid = 0
        self.loop.run_until_complete(self._connected())

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connection = _Connection(reader, writer)
        await self.connections.put(connection)
        await connection.serve()

    async def _connected(self) -> _Connection:
        """The uplink's newest connection, once it has its CONNACK."""
        connection = await asyncio.wait_for(self.connections.get(), RECONNECT_S)
        await asyncio.wait_for(connection.ready.wait(), RECONNECT_S)
        self.current = connection
        return connection

    # -- inputs ---------------------------------------------------------------------------------

    def _packet(self, rng: random.Random) -> bytes:
        v5 = True
        pid = rng.randrange(65536)
        kind = rng.random()
        if kind < 0.45:
            topic = self.cmd_topic + rng.choice((b"device.read", b"config.apply", b"", b"a/b", b"#", b"\xff\xfe",
                                                 "中".encode(), b"x" * 300)) if rng.random() < 0.8 else \
                rng.choice((b"", b"other/topic", b"\x00", STRINGS[-1].encode()))
            payload = rng.choice((b"", b"{}", b'{"id": "x"}', rng.randbytes(rng.randrange(0, 200)), b"x" * 5000))
            props = rng.choice((b"", b"", b"\x01\x01", b"\x23\x00\x01", b"\x23\x00\x00", b"\x08" + utf8(b"resp"),
                                b"\x26" + utf8(b"k") + utf8(b"v"), b"\x0b\x05", rng.randbytes(rng.randrange(1, 8))))
            return publish(topic, payload, rng.choice((0, 1, 1, 2, 3)), pid, v5, props, rng.choice((0, 0, 1, 8, 9)))
        if kind < 0.65:   # acknowledgements of what the client sent, with reason codes and properties
            first = rng.choice((0x40, 0x50, 0x62, 0x70, 0x60))
            body = struct.pack(">H", pid) + rng.choice((b"", b"\x00", b"\x80", b"\x10\x00", b"\x87\x03\x1f\x00\x00"))
            return packet(first, body)
        if kind < 0.75:
            return packet(rng.choice((0x90, 0xB0)), struct.pack(">H", pid) + rng.choice((b"\x00\x01", b"\x00\x80", b"")))
        if kind < 0.85:
            return rng.choice((b"\xd0\x00", b"\x20\x03\x00\x00\x00", b"\x20\x03\x00\x87\x00", b"\xe0\x00",
                               b"\xe0\x02\x8e\x00", b"\xf0\x00", b"\x00\x00", b"\xf0\x02\x18\x00", b"\x10\x00"))
        if kind < 0.9:   # a remaining length of more than four bytes, or one promising more than follows
            return rng.choice((b"\x30\xff\xff\xff\xff\x7f", b"\x30\xff\xff\xff\x7f", b"\x30\x80\x80\x80\x80\x01",
                               b"\x32\x05\x00"))
        return random_bytes(rng, 64)

    def generate(self, rng: random.Random) -> bytes:
        blob = b"".join(self._packet(rng) for _ in range(rng.randrange(1, 4)))
        if rng.random() < 0.4:
            blob = mutate_bytes(rng, blob, max_len=8192)
        return blob

    # -- feeding --------------------------------------------------------------------------------

    def feed(self, case: bytes) -> None:
        self.watch.reset()
        self.commands.clear()
        self.outcome = self.loop.run_until_complete(self._one(case))
        self.handler_cpu = self.watch.max_s

    async def _one(self, case: bytes) -> str:
        connection = self.current
        if connection is None or connection.closed.is_set():
            connection = await self._connected()
        self.pid = self.pid % 65000 + 1
        connection.acked.clear()
        probe = publish(self.cmd_topic + b"fuzz.probe", b"probe", 1, self.pid, connection.v5)
        connection.writer.write(case + probe)
        deadline = asyncio.get_running_loop().time() + PROBE_S
        while self.pid not in connection.pubacks and not connection.closed.is_set():
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                break
            try:
                await asyncio.wait_for(connection.acked.wait(), left)
            except TimeoutError:
                break
            connection.acked.clear()
        if self.pid in connection.pubacks:
            return "acknowledged"
        connection.writer.transport.abort()   # no answer: drop it, the uplink must come back
        try:
            await self._connected()
        except TimeoutError:
            return "no reconnect"
        return "reconnected"

    def check(self, case: bytes) -> None:
        if self.task.done():
            error = self.task.exception() if not self.task.cancelled() else None
            self.problem("uplink task ended", repr(error))
        if self.outcome == "no reconnect":
            self.problem("uplink stalled", f"no PUBACK for the probe and no new connection within {RECONNECT_S:g}s")
        for topic, payload in self.commands:
            if not isinstance(topic, str) or not isinstance(payload, bytes):
                self.problem("command handed over as", f"{type(topic).__name__}, {type(payload).__name__}")

    def close(self) -> None:
        async def stop() -> None:
            await self.uplink.stop()
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
            self.server.close()
        self.loop.run_until_complete(stop())
        self.outbox.close()
        self.loop.close()
