"""The limits every bridge's peers get, and the counters of what they cost.

Each bound is per link, so one peer cannot hurt the others (see :mod:`agent.core.transport`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Limits:
    idle_timeout: float = 600.0        # TCP: a peer silent this long is closed (devices reconnect when they have data)
    frame_timeout: float = 30.0        # a frame must complete within this of its first byte: a slow-loris
                                       # peer is closed then (TCP), a serial line's partial frame dropped
    flood_limit: int = 256 * 1024      # TCP: bytes without one valid frame before the peer is closed
    write_limit: int = 64 * 1024       # TCP: answers the peer has not read before it is closed
    max_connections: int = 64          # TCP listen: peers at once (see TcpServer for who makes room)
    max_peers: int = 256               # UDP: senders remembered (the oldest is forgotten)
    # bytes handled in one callback: more held the loop (64 KiB of HJ 212 frame-like junk took
    # 60-330 ms to cut, found by bench/fuzz.py); the rest of a burst waits for the next turn
    read_chunk: int = 8 * 1024         # serial: bytes read at once
    tcp_read: int = 8 * 1024           # TCP (see tcp.TcpLink)
    max_datagram: int | None = None    # UDP: a longer datagram is dropped unread and counted (the family
                                       # knows how many frames one may carry)

    @property
    def tick(self) -> float:
        """How often timeouts are checked: fine enough for the shortest of them."""
        return min(1.0, self.frame_timeout / 4, self.idle_timeout / 4)


@dataclass(slots=True)
class TransportStats:
    """Counters of one transport that belong to no device (``edge-agent status``). A family may
    extend it with its own counters (HJ 212's listener block)."""

    connections: int = 0           # open now
    accepted: int = 0              # connections accepted (or dialled) since start
    refused_connections: int = 0   # turned away or evicted at max_connections
    timed_out: int = 0             # closed for idleness or an incomplete frame; serial: partial frames dropped
    flooded: int = 0               # closed after flood_limit bytes without a valid frame

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)
