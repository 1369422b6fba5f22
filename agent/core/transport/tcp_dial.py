"""A TCP client for a bridge: dial the device (or a TCP-to-serial server in front of it), serve the
connection with the same limits as a server's, and dial again with backoff when it drops.

The backoff starts over only once a connection worked (carried a valid frame, or stayed up for
the backoff's maximum): a device that accepts and drops at once is not hammered.
"""

from __future__ import annotations

import asyncio
import logging

from agent.core.backoff import Backoff, Retry
from agent.core.clock import SYSTEM, Clock
from agent.core.transport.contract import Bridge
from agent.core.transport.limits import Limits, TransportStats
from agent.core.transport.link import until_lost
from agent.core.transport.retry import keep_trying
from agent.core.transport.tcp import TcpLink, sweep

log = logging.getLogger("agent.core.transport")


class TcpDialer:
    def __init__(self, host: str, port: int, bridge: Bridge, *, limits: Limits = Limits(),
                 backoff: Backoff = Backoff(), clock: Clock = SYSTEM, stats: TransportStats | None = None,
                 connect_timeout: float = 5.0):
        self.host, self.port = host, port
        self.bridge = bridge
        self.limits = limits
        self.backoff = backoff
        self.clock = clock
        self.stats = stats if stats is not None else TransportStats()
        self.connect_timeout = connect_timeout
        self.link: TcpLink | None = None

    @property
    def links(self) -> list[TcpLink]:
        return [self.link] if self.link is not None else []

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        retry = Retry(self.backoff)

        async def dial() -> TcpLink:
            _, link = await asyncio.wait_for(loop.create_connection(lambda: TcpLink(self), self.host, self.port),
                                             self.connect_timeout)
            return link

        try:
            while True:
                link = await keep_trying(dial, bridge=self.bridge, what=f"cannot connect to {self.host}:{self.port}",
                                         retry=retry, clock=self.clock)
                log.info("%s: connected to %s:%d", self.bridge.name, self.host, self.port)
                await self._serve(link)
                if link.valid_frames or self.clock.monotonic() - link.opened >= self.backoff.max:
                    retry.reset()   # it worked for a while: come back quickly
                await self.clock.sleep(retry.next_delay())
        finally:
            if self.link is not None:
                self.link.closing = True
                self.link._drop()

    async def _serve(self, link: TcpLink) -> None:
        """Until the connection is lost, checking its timeouts."""
        await until_lost(link.lost, self.clock, self.limits.tick,
                         lambda: sweep(self.links, self.clock.monotonic(), self.limits, self.stats))

    # -- the link's owner --------------------------------------------------------------------------

    def admit(self, link: TcpLink) -> bool:
        self.link = link
        self.stats.accepted += 1
        self.stats.connections = 1
        return True

    def forget(self, link: TcpLink) -> None:
        if self.link is link:
            self.link = None
            self.stats.connections = 0
