"""A TCP connection as a link, shared by the server (:mod:`.tcp_listen`) and the dialler
(:mod:`.tcp_dial`): asyncio's protocol callbacks, no task per connection, no copy of the bytes.

Closed by us (each counted in the owner's :class:`~.limits.TransportStats`) when the peer sends
``flood_limit`` bytes without one valid frame, stops reading our answers (``write_limit``), goes
silent for ``idle_timeout`` or leaves a frame incomplete for ``frame_timeout`` (:func:`sweep`).
A peer closing its connection is normal (many devices connect per upload) and is only counted.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Protocol

from agent.core.clock import Clock
from agent.core.transport.contract import Bridge
from agent.core.transport.limits import Limits, TransportStats
from agent.core.transport.link import LinkBase


class Owner(Protocol):
    bridge: Bridge
    limits: Limits
    clock: Clock
    stats: TransportStats

    def admit(self, link: "TcpLink") -> bool: ...

    def forget(self, link: "TcpLink") -> None: ...


def peer_name(transport: asyncio.BaseTransport) -> str:
    peer = transport.get_extra_info("peername")
    return f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) and len(peer) >= 2 else str(peer)


class TcpLink(LinkBase, asyncio.BufferedProtocol):
    """One callback handles at most ``limits.tcp_read`` bytes: asyncio would otherwise hand a
    protocol up to 256 KiB of one read, and a peer streaming frame-like junk (``##1000`` for HJ 212)
    costs about 1.3 µs of framing a byte: 330 ms on the event loop (found by bench/fuzz.py). The rest
    of a burst waits in the kernel for the next turn of the loop."""

    def __init__(self, owner: Owner):
        LinkBase.__init__(self, owner.bridge, "?", owner.limits, owner.clock)
        self.owner = owner
        self.transport: asyncio.Transport | None = None
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._buffer = bytearray(owner.limits.tcp_read)

    def get_buffer(self, sizehint: int) -> memoryview:
        return memoryview(self._buffer)   # the transport reads at most this much at once

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(bytes(self._buffer[:nbytes]))

    @property
    def framer(self):   # what the session cut so far (tests and status look at its buffer)
        return self.session.framer if self.session is not None else None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport   # type: ignore[assignment]
        self.peer = peer_name(transport)
        if not self.owner.admit(self) or not self.open_session():
            self.closing = True
            transport.abort()   # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        self.received(data)
        if self.closing or self.transport is None:
            return
        if self.bytes_since_frame > self.limits.flood_limit:
            self.owner.stats.flooded += 1
            self.close(f"{self.bytes_since_frame} bytes without a valid frame")
        elif self.transport.get_write_buffer_size() > self.limits.write_limit:
            self.close("it does not read our answers")

    def eof_received(self) -> bool | None:
        return None     # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.ended()
        self.owner.forget(self)
        self.transport = None
        if not self.lost.done():
            self.lost.set_result(None)

    def _write(self, data: bytes) -> None:
        transport = self.transport
        if transport is None:
            return
        transport.write(data)
        if transport.get_write_buffer_size() > self.limits.write_limit:
            self.close("it does not read our answers")

    def _drop(self) -> None:
        if self.transport is not None:
            self.transport.abort()


def sweep(links: Iterable[TcpLink], now: float, limits: Limits, stats: TransportStats) -> None:
    """Close the links that stalled inside a frame or went silent."""
    for link in list(links):
        if link.closing:
            continue
        if link.stalled(now):
            stats.timed_out += 1
            link.close(f"a frame started {now - link.partial_since:.0f}s ago and is still incomplete "   # type: ignore[operator]
                       f"(frame_timeout {limits.frame_timeout:g}s)")
        elif link.idle(now):
            stats.timed_out += 1
            link.close(f"silent for {limits.idle_timeout:g}s (idle_timeout)")
