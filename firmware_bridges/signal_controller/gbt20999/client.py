"""Requests to one GB/T 20999 controller and its answers, over the transport kit (UDP or TCP).

One request is in flight at a time (the controller is a small embedded box; the poll, the
heartbeat and a priority set take turns). An answer is matched by its frame type and the ids of
its values, not by its sequence number: the captured device answers with seq + 1 instead of
echoing it (:mod:`.codec`). An answer that matches nothing (a late one, after its request timed
out) is counted and dropped. The controller's own reports (0x60 traps) and its heartbeat queries
arrive on the same port and are handled whenever they come.

Errors: no answer within ``timeout`` or no link raises :class:`NoAnswer`; an error reply (0x21,
0x41) or a set reply whose status is not 0 raises :class:`DeviceRefused` naming the object and
the controller's error.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import socket
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from agent.core.backoff import Backoff
from agent.core.boundary import boundary
from agent.core.clock import SYSTEM, Clock
from agent.core.transport import Limits, SerialTransport, TcpDialer, TransportStats, UdpPort
from agent.core.transport.contract import Link
from firmware_bridges.signal_controller.errors import NoAnswer, Refused
from firmware_bridges.signal_controller.gbt20999 import codec
from firmware_bridges.signal_controller.gbt20999.codec import BadFrame, DataValue, Frame, FrameType
from firmware_bridges.signal_controller.gbt20999.options import Gbt20999Connection

log = logging.getLogger("firmware_bridges.signal_controller")
FRAMES = boundary("gbt20999")   # what controllers send, through the framer and the session

_REPLIES = {
    FrameType.QUERY: frozenset((FrameType.QUERY_REPLY, FrameType.QUERY_ERROR)),
    FrameType.SET: frozenset((FrameType.SET_REPLY, FrameType.SET_ERROR)),
    FrameType.HEARTBEAT: codec.HEARTBEAT_REPLIES,
}


class DeviceRefused(Refused):
    """The controller answered with an error reply (or a set status other than 0)."""

    def __init__(self, message: str, code: int | None):
        super().__init__(message)
        self.code = code


@dataclass(slots=True)
class ClientStats:
    requests: int = 0
    answers: int = 0
    timeouts: int = 0
    error_replies: int = 0
    unmatched: int = 0            # answers to nothing in flight (late, or for another centre)
    bad_frames: int = 0           # CRC, length, garbage
    traps: int = 0
    heartbeats_answered: int = 0  # the controller's heartbeat queries we answered

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(slots=True)
class _Pending:
    replies: frozenset[int]
    ids: frozenset[tuple[int, int, int, int]]
    answer: "asyncio.Future[Frame]"


class _Session:
    """One link's framer and what it hears, for the client."""

    def __init__(self, client: "Gbt20999Client", link: Link, framer: Any):
        self.client = client
        self.link = link
        self.framer = framer

    def handle(self, items: list[Any]) -> None:
        for item in items:
            try:
                self.client._heard(item, self.link)
            except Exception as exc:   # noqa: BLE001 - one frame's bug costs that frame (agent/core/boundary.py)
                FRAMES.failed(exc, getattr(item, "data", None), where=self.link.peer)

    def discarded(self, count: int, why: str) -> None:
        self.client.stats.bad_frames += 1
        log.debug("%s: %d bytes dropped: %s", self.client.name, count, why)

    def close(self) -> None:
        self.client._link_closed(self.link)


class Gbt20999Client:
    """The centre's side of one controller: a Bridge for the transport kit, and request()."""

    guard = FRAMES
    committed = None     # answers acknowledge nothing the agent stores

    def __init__(self, device_id: str, connection: Gbt20999Connection, *, backoff: Backoff = Backoff(),
                 clock: Clock = SYSTEM, on_trap: Callable[[Frame], None] | None = None):
        self.device_id = device_id
        self.connection = connection
        self.clock = clock
        self.on_trap = on_trap
        self.name = f"{device_id} ({connection.describe()})"
        self.stats = ClientStats()
        self.transport_stats = TransportStats()
        self.problem: str | None = None      # the transport's own trouble (cannot bind/connect)
        self._seq = itertools.count(1)
        self._lock = asyncio.Lock()
        self._pending: _Pending | None = None
        limits = Limits(idle_timeout=3600.0, frame_timeout=max(2.0, 4 * connection.timeout),
                        max_peers=8, max_datagram=codec.MAX_FRAME)
        c = connection
        if c.transport == "udp":
            self.transport: Any = UdpPort(c.local_host, c.local_port, self, limits=limits, backoff=backoff,
                                          clock=clock, stats=self.transport_stats)
        elif c.transport == "serial":
            assert c.serial is not None
            self.transport = SerialTransport(c.serial, self, limits=limits, backoff=backoff, clock=clock,
                                             stats=self.transport_stats)
        else:
            self.transport = TcpDialer(c.host, c.port, self, limits=limits, backoff=backoff, clock=clock,
                                       stats=self.transport_stats, connect_timeout=max(1.0, 4 * c.timeout))
        self._address: tuple[str, int] | None = None

    # -- Bridge ----------------------------------------------------------------------------------

    def open_session(self, link: Link) -> _Session:
        framer = codec.DatagramFramer() if self.connection.transport == "udp" else codec.StreamFramer()
        return _Session(self, link, framer)

    def transport_problem(self, error: str | None) -> None:
        self.problem = error

    # -- running ---------------------------------------------------------------------------------

    async def run(self) -> None:
        """The transport, until cancelled (bind or dial with backoff)."""
        if self.connection.transport == "udp":
            self._address = await self._resolve()
        await self.transport.run()

    async def _resolve(self) -> tuple[str, int]:
        c = self.connection
        loop = asyncio.get_running_loop()
        while True:
            try:
                infos = await loop.getaddrinfo(c.host, c.port, family=socket.AF_INET, type=socket.SOCK_DGRAM)
                return infos[0][4][0], c.port
            except OSError as exc:
                self.problem = f"cannot resolve {c.host}: {exc}"
                await self.clock.sleep(5.0)

    def close(self) -> None:
        if isinstance(self.transport, UdpPort):
            self.transport.close()
        self._fail_pending(NoAnswer(f"{self.name}: closed"))

    # -- requests --------------------------------------------------------------------------------

    async def query(self, ids: Sequence[tuple[int, int, int, int]]) -> dict[tuple[int, int, int, int], bytes]:
        """Values of the objects ``ids`` (one frame). Raises NoAnswer, DeviceRefused, or
        NoAnswer when the answer lacks an object asked for."""
        reply = await self.request(FrameType.QUERY, [DataValue(*i) for i in ids])
        values = {v.ids: v.value for v in reply.values}
        missing = [i for i in ids if i not in values]
        if missing:
            raise NoAnswer(f"{self.name}: the answer lacks {', '.join(_ids(m) for m in missing)}")
        return values

    async def set(self, values: Sequence[DataValue]) -> None:
        """Set objects; returns when the controller confirmed each (status 0)."""
        reply = await self.request(FrameType.SET, list(values))
        for value in reply.values:
            status = value.value[0] if len(value.value) == 1 else None
            if status != 0:
                raise DeviceRefused(f"{self.name}: set {value.ids_text()} answered status "
                                    f"{value.value.hex() or 'none'}", status)

    async def heartbeat(self) -> None:
        await self.request(FrameType.HEARTBEAT, [])

    async def request(self, frame_type: FrameType, values: list[DataValue]) -> Frame:
        c = self.connection
        async with self._lock:
            link = await self._link()
            seq = next(self._seq) & 0xFF
            frame = Frame(frame_type, tuple(values), seq, c.centre_id, c.controller_id, c.road_id, c.version)
            data = codec.build(frame, escaped=c.transport != "udp")
            answer: asyncio.Future[Frame] = asyncio.get_running_loop().create_future()
            self._pending = _Pending(_REPLIES[frame_type], frozenset(v.ids for v in values), answer)
            self.stats.requests += 1
            try:
                link.send(data)
                async with asyncio.timeout(c.timeout):
                    reply = await answer
            except TimeoutError:
                self.stats.timeouts += 1
                raise NoAnswer(f"{self.name}: no answer to {frame.type_name} "
                               f"{' '.join(v.ids_text() for v in values)} within {c.timeout:g}s") from None
            finally:
                self._pending = None
        if reply.is_error:
            self.stats.error_replies += 1
            worst = reply.errors()[0] if reply.values else None
            code = worst[1] if worst else None
            what = ", ".join(f"{v.ids_text()}: {codec.ERRORS.get(e, f'error {e:#04x}')} ({e:#04x})"
                             for v, e in reply.errors()) or "no detail"
            raise DeviceRefused(f"{self.name}: {frame.type_name} refused: {what}", code)
        return reply

    def _current_link(self) -> Link | None:
        if isinstance(self.transport, UdpPort):
            link = self.transport.link_to(self._address) if self._address else None
        else:
            link = self.transport.link
        return None if link is None or getattr(link, "closing", False) else link

    async def _link(self) -> Link:
        link = self._current_link()
        if link is None:
            raise NoAnswer(f"{self.name}: no link ({self.problem or 'not connected yet'})")
        return link

    async def wait_link(self, limit: float) -> bool:
        """Wait (real time, at most ``limit`` s) until the port is bound or the connection made, so
        the first poll does not fail for nothing; False if it is not."""
        loop = asyncio.get_running_loop()
        until = loop.time() + limit
        while self._current_link() is None:
            if loop.time() >= until:
                return False
            await asyncio.sleep(0.01)
        return True

    # -- what arrives ----------------------------------------------------------------------------

    def _heard(self, item: Frame | BadFrame, link: Link) -> None:
        if isinstance(item, BadFrame):
            self.stats.bad_frames += 1
            log.debug("%s: bad frame from %s: %s", self.name, link.peer, item.why)
            return
        kind = item.frame_type
        if kind == FrameType.TRAP:
            self.stats.traps += 1
            if self.on_trap is not None:
                self.on_trap(item)
            return
        if kind == FrameType.HEARTBEAT:   # the controller checks on its centre
            c = self.connection
            self.stats.heartbeats_answered += 1
            reply = Frame(FrameType.HEARTBEAT_REPLY, (), item.seq, c.centre_id, c.controller_id, c.road_id,
                          c.version)
            link.send(codec.build(reply, escaped=c.transport != "udp"))
            return
        pending = self._pending
        if pending is None or pending.answer.done() or kind not in pending.replies or not self._matches(pending, item):
            self.stats.unmatched += 1
            log.debug("%s: unmatched %s from %s", self.name, item.type_name, link.peer)
            return
        self.stats.answers += 1
        pending.answer.set_result(item)

    @staticmethod
    def _matches(pending: _Pending, frame: Frame) -> bool:
        """Same type family and the objects asked for (an error reply may name only the failing ones)."""
        ids = {v.ids for v in frame.values}
        if frame.is_error:
            return bool(ids) and ids <= pending.ids or not ids
        return ids == pending.ids

    def _link_closed(self, link: Link) -> None:
        if self.connection.transport != "udp":   # a TCP connection or the serial port went
            self._fail_pending(NoAnswer(f"{self.name}: the connection was lost"))

    def _fail_pending(self, exc: Exception) -> None:
        pending = self._pending
        if pending is not None and not pending.answer.done():
            pending.answer.set_exception(exc)


def _ids(ids: tuple[int, int, int, int]) -> str:
    return ".".join(f"{i:02X}" for i in ids)
