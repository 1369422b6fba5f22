"""One peer of a transport: its bytes through the family's framer and session, under the bridge's
boundary, and what the limits need to know about it.

The transports (TCP, UDP, serial) subclass :class:`LinkBase` with how to write and how to drop
the peer; everything about reading is here, once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from agent.core.clock import Clock
from agent.core.transport.contract import Bridge, Session
from agent.core.transport.limits import Limits
from agent.core.transport.replies import Replies

log = logging.getLogger("agent.core.transport")


class LinkBase:
    """A link as the family's session sees it (:class:`~agent.core.transport.contract.Link`)."""

    def __init__(self, bridge: Bridge, peer: str, limits: Limits, clock: Clock):
        self.bridge = bridge
        self.peer = peer
        self.limits = limits
        self.clock = clock
        self.opened = self.last_rx = clock.monotonic()
        self.valid_frames = 0
        self.bytes_since_frame = 0                # received since the last valid frame (flood guard)
        self.partial_since: float | None = None   # when the frame still incomplete began (slow-loris guard)
        self.closing = False
        self.session: Session | None = None
        self.replies = Replies(self._guarded_write, bridge.committed)

    # -- what the transport calls --------------------------------------------------------------

    def open_session(self) -> bool:
        """The family's session for this link; False (after counting the bug) if it could not be made."""
        try:
            self.session = self.bridge.open_session(self)
            return True
        except Exception as exc:   # noqa: BLE001 - see agent/core/boundary.py
            self.bridge.guard.failed(exc, where=self.peer)
            return False

    def received(self, data: bytes) -> None:
        """Bytes from the peer: cut by the framer, handed to the session, both under the guard."""
        session = self.session
        if session is None or self.closing:
            return
        now = self.clock.monotonic()
        self.last_rx = now
        framer = session.framer
        before = framer.frames
        try:
            items: list[Any] = framer.feed(data)
        except Exception as exc:   # noqa: BLE001 - see agent/core/boundary.py; the framer starts clean
            self.bridge.guard.failed(exc, data, where=self.peer)
            framer.reset()
            self.partial_since = None
            return
        if framer.frames != before:
            self.valid_frames += framer.frames - before
            self.bytes_since_frame = 0
        else:
            self.bytes_since_frame += len(data)
        if not framer.pending:
            self.partial_since = None
        elif items or self.partial_since is None:
            self.partial_since = now       # a new frame began in this read
        try:   # the session isolates each frame; this is the net under its own code
            session.handle(items)
        except Exception as exc:   # noqa: BLE001 - see agent/core/boundary.py
            self.bridge.guard.failed(exc, data, where=self.peer)

    def discard_partial(self, why: str) -> int:
        """Throw away an unfinished frame (the session hears of it); returns how many bytes."""
        if self.session is None:
            return 0
        dropped = self.session.framer.reset()
        self.partial_since = None
        if dropped:
            self.dropped(dropped, why)
        return dropped

    def dropped(self, count: int, why: str) -> None:
        """Tell the session that ``count`` bytes were thrown away, and why."""
        if self.session is None:
            return
        try:
            self.session.discarded(count, why)
        except Exception as exc:   # noqa: BLE001 - see agent/core/boundary.py
            self.bridge.guard.failed(exc, where=self.peer)

    def stalled(self, now: float) -> bool:
        """A frame has been incomplete longer than the frame timeout (slow-loris)."""
        return self.partial_since is not None and now - self.partial_since > self.limits.frame_timeout

    def idle(self, now: float) -> bool:
        return now - self.last_rx > self.limits.idle_timeout

    def ended(self) -> None:
        """The link is gone: its waiting answers dropped, its session closed."""
        self.closing = True
        self.replies.close()
        session, self.session = self.session, None
        if session is None:
            return
        if session.framer.pending:
            log.debug("%s: %s left %d bytes of an unfinished frame", self.bridge.name, self.peer,
                      session.framer.pending)
        try:
            session.close()
        except Exception as exc:   # noqa: BLE001 - see agent/core/boundary.py
            self.bridge.guard.failed(exc, where=self.peer)

    # -- what the session calls ------------------------------------------------------------------

    def send(self, data: bytes, *, after_commit: bool = False) -> None:
        self.replies.send(data, after_commit=after_commit)

    def close(self, why: str) -> None:
        if self.closing:
            return
        self.closing = True
        log.warning("%s: closing the connection from %s: %s", self.bridge.name, self.peer, why)
        self._drop()

    # -- what a transport provides ---------------------------------------------------------------

    def _write(self, data: bytes) -> None:
        raise NotImplementedError

    def _drop(self) -> None:
        raise NotImplementedError

    def _guarded_write(self, data: bytes) -> None:
        if self.closing:
            return
        try:
            self._write(data)
        except Exception as exc:   # noqa: BLE001 - a dead link is the transport's business, not the session's
            log.debug("%s: writing to %s failed: %s", self.bridge.name, self.peer, exc)


async def until_lost(lost: "asyncio.Future[Any]", clock: Clock, tick: float, check: Callable[[], None]) -> None:
    """Until the link is lost (``lost`` resolves), ``check()`` its timeouts every ``tick`` seconds
    of ``clock``."""
    while not lost.done():
        timer = asyncio.ensure_future(clock.sleep(tick))
        try:
            await asyncio.wait({lost, timer}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            timer.cancel()
        check()
