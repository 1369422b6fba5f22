"""Links of the transport kit without sockets: bytes go in through the kit's own reading path
(:meth:`agent.core.transport.link.LinkBase.received`: the family's framer and session under its
boundary), answers come out into a buffer. A bridge whose sink has no ``committed`` gets its
acknowledgements at once (the fuzz checks answers, not commit timing)."""

from __future__ import annotations

from agent.core.clock import SYSTEM
from agent.core.transport.contract import Bridge
from agent.core.transport.limits import Limits
from agent.core.transport.link import LinkBase
from agent.core.transport.replies import Replies
from agent.core.transport.tcp import TcpLink

# the most bytes one callback of a TCP link hands to the framer (the kit's read buffer); serial
# and UDP reads are the other ways in, bounded by their limits
TCP_READ = Limits().tcp_read


class BufferLink(LinkBase):
    """One peer of ``bridge``, its answers appended to ``out``."""

    def __init__(self, bridge: Bridge, peer: str = "fuzz-peer", limits: Limits = Limits()):
        super().__init__(bridge, peer, limits, SYSTEM)
        self.replies = Replies(self._guarded_write, None)   # answers at once: no loop, no commit to wait for
        self.out = bytearray()
        if not self.open_session():
            raise RuntimeError(f"{bridge.name}: no session for a link")

    def _write(self, data: bytes) -> None:
        self.out += data

    def _drop(self) -> None:
        self.closing = True


assert issubclass(TcpLink, LinkBase)   # the TCP path is this one plus the socket
