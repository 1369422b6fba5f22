"""The TCP server data loggers connect to: one runner per listen address, shared by the stations
configured on it; frames are routed by MN (:mod:`.router`).

The server is the transport kit's (:class:`agent.core.transport.TcpServer`), with the listen
entry's limits: ``idle_timeout``, ``frame_timeout`` (slow-loris), ``max_connections`` (the oldest
connection without a valid frame makes room, else the newcomer is turned away), a peer sending
256 KiB without a valid frame and one not reading our answers are closed, and every answer waits
for the agent's commit. A peer closing its connection is normal (many loggers connect per upload)
and is only counted.
"""

from __future__ import annotations

from agent.core.clock import SYSTEM, Clock
from agent.core.model import DeviceSink
from agent.core.transport import Limits, TcpServer
from agent.core.transport.tcp import TcpLink
from firmware_bridges.hj212.options import Listen
from firmware_bridges.hj212.runner import RETRY, StationsRunner
from firmware_bridges.hj212.station import Station


class TcpListener(StationsRunner):
    """One TCP server (a host:port) for the stations configured on it."""

    def __init__(self, listen: Listen, stations: list[Station], sink: DeviceSink, clock: Clock = SYSTEM):
        super().__init__(f"hj212 {listen.describe()}", stations, sink, clock)
        self.listen = listen
        limits = Limits(idle_timeout=listen.idle_timeout, frame_timeout=listen.frame_timeout,
                        max_connections=listen.max_connections)
        self.server = TcpServer(listen.host, listen.port, self, limits=limits, backoff=RETRY, clock=clock,
                                stats=self.router.stats)

    @property
    def port(self) -> int | None:
        """The bound port (useful with port 0 in tests)."""
        return self.server.port

    @property
    def connections(self) -> dict[TcpLink, None]:
        """Open connections, oldest first."""
        return self.server.links

    async def serve(self) -> None:
        await self.server.run()

    async def close(self) -> None:
        await self.server.close()
