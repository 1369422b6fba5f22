"""A UDP port for a bridge: datagrams on one local address, one link per sender, answers sent back
to the sender's address.

A datagram carries whole frames (maybe several): each is cut on its own, and what is left of an
unfinished frame at its end is thrown away (the session hears of it) rather than glued to the
next datagram, which may come from a retransmission or arrive out of order. Senders are
remembered up to ``max_peers`` (the oldest forgotten first), so spoofed sources cost bounded memory.
A datagram longer than ``max_datagram`` (when the family sets it) is dropped unread and counted.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from agent.core.backoff import Backoff, Retry
from agent.core.clock import SYSTEM, Clock
from agent.core.transport.contract import Bridge
from agent.core.transport.limits import Limits, TransportStats
from agent.core.transport.link import LinkBase
from agent.core.transport.retry import keep_trying

log = logging.getLogger("agent.core.transport")


class UdpLink(LinkBase):
    def __init__(self, port: "UdpPort", address: Any):
        super().__init__(port.bridge, f"{address[0]}:{address[1]}", port.limits, port.clock)
        self.port = port
        self.address = address

    def _write(self, data: bytes) -> None:
        if self.port.transport is not None:
            self.port.transport.sendto(data, self.address)

    def _drop(self) -> None:
        self.port.forget(self.address)

    def close(self, why: str) -> None:
        if not self.closing:
            log.info("%s: forgetting %s: %s", self.bridge.name, self.peer, why)
            self.closing = True
            self._drop()


class UdpPort(asyncio.DatagramProtocol):
    def __init__(self, host: str, port: int, bridge: Bridge, *, limits: Limits = Limits(),
                 backoff: Backoff = Backoff(), clock: Clock = SYSTEM, stats: TransportStats | None = None):
        self.host, self.requested_port = host, port
        self.bridge = bridge
        self.limits = limits
        self.backoff = backoff
        self.clock = clock
        self.stats = stats if stats is not None else TransportStats()
        self.transport: asyncio.DatagramTransport | None = None
        self.links: dict[Any, UdpLink] = {}    # by sender address, oldest first

    @property
    def port(self) -> int | None:
        if self.transport is None:
            return None
        return self.transport.get_extra_info("sockname")[1]

    async def run(self) -> None:
        loop = asyncio.get_running_loop()

        async def bind() -> asyncio.DatagramTransport:
            transport, _ = await loop.create_datagram_endpoint(lambda: self, local_addr=(self.host, self.requested_port))
            return transport

        await keep_trying(bind, bridge=self.bridge, what=f"cannot bind udp {self.host}:{self.requested_port}",
                          retry=Retry(self.backoff), clock=self.clock)
        log.info("%s: listening on udp %s:%s", self.bridge.name, self.host, self.port)
        try:
            await asyncio.Future()   # until cancelled
        finally:
            self.close()

    def close(self) -> None:
        transport, self.transport = self.transport, None
        for address in list(self.links):
            self.forget(address)
        if transport is not None:
            transport.close()

    # -- asyncio.DatagramProtocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport   # type: ignore[assignment]

    def link_to(self, address: Any) -> UdpLink | None:
        """The link to ``address``, made (with its session) if this port has not heard from it yet:
        for a bridge that speaks first, as a centre polling a controller does. None while unbound
        or if the session could not be made."""
        if self.transport is None:
            return None
        return self._link(address)

    def _link(self, addr: Any) -> UdpLink | None:
        link = self.links.get(addr)
        if link is None:
            if len(self.links) >= self.limits.max_peers:
                self.forget(next(iter(self.links)))
            link = UdpLink(self, addr)
            if not link.open_session():
                return None
            self.links[addr] = link
            self.stats.accepted += 1
            self.stats.connections = len(self.links)
        return link

    def datagram_received(self, data: bytes, addr: Any) -> None:
        link = self._link(addr)
        if link is None:
            return
        limit = self.limits.max_datagram
        if limit is not None and len(data) > limit:
            # more frames than a device puts in one datagram: junk, and cutting it would hold the
            # loop (a 64 KiB datagram of '@' took 200 ms, found by bench/fuzz.py): dropped unread
            link.dropped(len(data), f"a datagram of {len(data)} bytes (more than {limit}) was dropped unread")
            return
        link.received(data)
        link.discard_partial("a datagram ended inside a frame")

    def error_received(self, exc: Exception) -> None:
        log.debug("%s: %s", self.bridge.name, exc)   # an ICMP "port unreachable" for an answer: the sender went

    def forget(self, address: Any) -> None:
        link = self.links.pop(address, None)
        if link is not None:
            link.ended()
            self.stats.connections = len(self.links)
