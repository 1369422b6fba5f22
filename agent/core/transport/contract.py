"""What a family gives the transport kit, and what the kit gives back: the seams between them.

A family (HJ 212, GB/T 26875.3, later GB/T 20999) writes three things and no socket code:

- a :class:`Framer` per link: bytes in, frames (and bad-frame items) out, its buffer bounded;
- a :class:`Session` per link: routes what the framer cut to its devices and answers through
  the link (``link.send``);
- a :class:`Bridge`: its name, its boundary, how the agent commits, and a session per new link.

The kit (:mod:`agent.core.transport`) does the rest: listening, dialling, datagrams, the serial
port, timeouts, flood and slow-loris limits, connection limits, backoff, and holding an
acknowledgement until the data it acknowledges is committed.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from agent.core.boundary import Boundary


class Framer(Protocol):
    """Cuts one link's byte stream into items (frames, and whatever the family makes of bad ones).

    Its buffer must stay bounded (at most about one maximal frame): the kit relies on that for
    memory, and on ``frames`` to tell a talking peer from a flooding or silent one."""

    frames: int          # valid frames cut so far (the kit watches it grow)

    @property
    def pending(self) -> int:
        """Bytes held of a frame not complete yet (0 between frames)."""
        ...

    def feed(self, data: bytes) -> list[Any]: ...

    def reset(self) -> int:
        """Forget what is held (a stalled frame, or after the framer raised); returns how many bytes."""
        ...


class BufferedFramer:
    """What every family's framer holds: ``frames`` and one bounded buffer ``_buf``, which
    ``pending`` reports and ``reset`` drops. A framer subclasses it and writes ``feed``."""

    __slots__ = ("_buf", "frames")

    def __init__(self) -> None:
        self._buf = bytearray()
        self.frames = 0

    @property
    def pending(self) -> int:
        """Bytes held of a frame not complete yet (0 between frames)."""
        return len(self._buf)

    def reset(self) -> int:
        """Drop what is held (a stalled frame, or after the framer raised); returns how many bytes."""
        held = len(self._buf)
        self._buf.clear()
        return held


class Link(Protocol):
    """One peer as a session sees it: a TCP connection, a serial port or a UDP sender."""

    peer: str

    def send(self, data: bytes, *, after_commit: bool = False) -> None:
        """Write ``data`` to the peer, after every answer sent before it. ``after_commit``: the
        answer tells the device its data arrived (HJ 212's 9014), so it waits until everything
        handed to the sink so far is committed; dropped if the commit fails or the link goes
        (the device sends again, and is answered then)."""
        ...

    def close(self, why: str) -> None:
        """Drop this peer (a serial port is reopened), saying why once in the log."""
        ...


class Session(Protocol):
    """A family's side of one link, made by :meth:`Bridge.open_session`."""

    framer: Framer

    def handle(self, items: list[Any]) -> None:
        """What one read (or one datagram) completed, maybe nothing. Each frame is the session's
        to isolate (a bug meeting one frame must cost that frame only); an exception escaping
        here is counted on the bridge's boundary and the link goes on."""
        ...

    def discarded(self, count: int, why: str) -> None:
        """``count`` bytes of an unfinished frame were thrown away: a datagram ended inside a
        frame, or a serial line's frame did not complete within its frame timeout."""
        ...

    def close(self) -> None:
        """The link is gone."""
        ...


class Bridge(Protocol):
    """A family's runner as the kit sees it."""

    name: str                                             # for the log: "hj212 listen tcp 0.0.0.0:9212"
    guard: "Boundary"                                     # where a framer's or session's bug is counted
    committed: Callable[[], Awaitable[None]] | None       # the sink's commit waiter (None: write at once)

    def open_session(self, link: Link) -> Session: ...

    def transport_problem(self, error: str | None) -> None:
        """The transport cannot work (cannot bind, open or connect: a sentence for the technician),
        or works again (None)."""
        ...
