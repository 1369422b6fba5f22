"""A TCP server for a bridge: one host:port, many peers, each its own link and session.

At most ``max_connections`` at once. When full, the oldest connection that has not delivered a
valid frame yet makes room (a port scanner, a half-open connection, a peer that only talks
garbage); if every connection has, the newcomer is turned away: devices that work are never
dropped for one that might. The address is bound again with backoff while it is taken (another
program, the agent restarting).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from agent.core.backoff import Backoff, Retry
from agent.core.clock import SYSTEM, Clock
from agent.core.transport.contract import Bridge
from agent.core.transport.limits import Limits, TransportStats
from agent.core.transport.retry import keep_trying
from agent.core.transport.tcp import TcpLink, sweep

log = logging.getLogger("agent.core.transport")


class TcpServer:
    def __init__(self, host: str, port: int, bridge: Bridge, *, limits: Limits = Limits(),
                 backoff: Backoff = Backoff(initial=0.5), clock: Clock = SYSTEM,
                 stats: TransportStats | None = None):
        self.host, self.requested_port = host, port
        self.bridge = bridge
        self.limits = limits
        self.backoff = backoff
        self.clock = clock
        self.stats = stats if stats is not None else TransportStats()
        self.links: dict[TcpLink, None] = {}        # open connections, oldest first
        self._server: asyncio.base_events.Server | None = None

    @property
    def port(self) -> int | None:
        """The bound port (the one the system chose for port 0), None while not listening."""
        if self._server is None or not self._server.sockets:
            return None
        return self._server.sockets[0].getsockname()[1]

    async def run(self) -> None:
        """Listen, and check the links' timeouts, until cancelled."""
        await self.start()
        try:
            while True:
                await self.clock.sleep(self.limits.tick)
                sweep(self.links, self.clock.monotonic(), self.limits, self.stats)
        finally:
            await self.close()

    async def start(self) -> None:
        loop = asyncio.get_running_loop()

        async def bind() -> asyncio.base_events.Server:
            return await loop.create_server(lambda: TcpLink(self), self.host, self.requested_port,
                                            reuse_address=True, backlog=128)

        self._server = await keep_trying(bind, bridge=self.bridge, what=f"cannot listen on {self.host}:{self.requested_port}",
                                         retry=Retry(self.backoff), clock=self.clock)
        log.info("%s: listening on %s:%s", self.bridge.name, self.host, self.port)

    async def close(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for link in list(self.links):
            link.closing = True
            link._drop()
        if server is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(server.wait_closed(), 2.0)

    # -- the links' owner ------------------------------------------------------------------------

    def admit(self, link: TcpLink) -> bool:
        stats = self.stats
        if len(self.links) >= self.limits.max_connections:
            stats.refused_connections += 1
            victim = next((c for c in self.links if c.valid_frames == 0 and not c.closing), None)
            if victim is None:
                log.warning("%s: %d connections open, all carrying data: turning %s away", self.bridge.name,
                            len(self.links), link.peer)
                return False
            victim.close(f"max_connections ({self.limits.max_connections}) reached and it has sent no valid frame")
            self.forget(victim)      # its slot is the newcomer's now, not when its close completes
        self.links[link] = None
        stats.accepted += 1
        stats.connections = len(self.links)
        return True

    def forget(self, link: TcpLink) -> None:
        if link in self.links:     # an evicted link is forgotten at once, and not again when it closes
            del self.links[link]
            self.stats.connections = len(self.links)
