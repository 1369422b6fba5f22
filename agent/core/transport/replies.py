"""Answers to one peer, in order, each acknowledgement held until the agent has committed what it
acknowledges (commit-before-acknowledge).

A device drops data once it is told the data arrived (HJ 212's 9014, a confirm). Telling it before
the agent's buffer has the data on disk would lose that data to a power cut, so such an answer
waits for ``sink.committed()`` (the next group commit, within ``buffer.commit_interval``). Answers
never overtake one another: one sent after a waiting acknowledgement waits behind it.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable

log = logging.getLogger("agent.core.transport")


class Replies:
    def __init__(self, write: Callable[[bytes], None], committed: Callable[[], Awaitable[None]] | None):
        self._write = write
        self._committed = committed
        self._queue: deque[tuple[asyncio.Future[None] | None, bytes]] = deque()
        self.closed = False
        self.withheld = 0     # acknowledgements not sent because the commit failed

    @property
    def waiting(self) -> int:
        return len(self._queue)

    def send(self, data: bytes, *, after_commit: bool = False) -> None:
        if self.closed or not data:
            return
        if after_commit and self._committed is not None:
            # taken now: it covers what this read handed to the sink, and nothing later
            waiter = asyncio.ensure_future(self._committed())
            self._queue.append((waiter, data))
            waiter.add_done_callback(self._drain)
        elif self._queue:
            self._queue.append((None, data))     # behind an acknowledgement still waiting
        else:
            self._write(data)

    def close(self) -> None:
        """The peer is gone: what still waits is dropped (it resends what was not acknowledged)."""
        self.closed = True
        self._queue.clear()

    def _drain(self, _: object = None) -> None:
        queue = self._queue
        while queue and not self.closed:
            waiter, data = queue[0]
            if waiter is not None and not waiter.done():
                return
            queue.popleft()
            if waiter is not None and (waiter.cancelled() or waiter.exception() is not None):
                self.withheld += 1   # not committed: no acknowledgement, the device sends it again
                log.debug("an acknowledgement was withheld: the commit failed (%s)",
                          "cancelled" if waiter.cancelled() else waiter.exception())
                continue
            self._write(data)
