"""The fixed-rate poll loop a controller link runs (NTCIP, GB/T 20999): read, report, back off
after failures, and say offline after ``offline_after`` in a row and online again at the first answer."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from agent.core.backoff import Retry
from agent.core.boundary import Boundary
from agent.core.clock import Clock
from firmware_bridges.signal_controller.errors import NoAnswer, Refused
from firmware_bridges.signal_controller.phases import ControllerStatus

log = logging.getLogger("firmware_bridges.signal_controller")


@dataclass(slots=True)
class LinkStats:
    online: bool | None = None
    last_read_ms: int | None = None
    polls: int = 0
    failed_polls: int = 0
    errors: int = 0
    consecutive_failures: int = 0
    skipped: int = 0
    backoff_s: float = 0.0
    last_error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


StatusCallback = Callable[[ControllerStatus], None]
StateCallback = Callable[[bool, "str | None"], None]


class PollLoop:
    """Mixed into a link that has ``read_status()``; the link's __init__ sets the attributes below."""

    device_id: str
    describe: str
    clock: Clock
    poll: float
    offline_after: int
    stats: LinkStats
    _backoff: Retry
    answers: Boundary     # where a bug meeting an answer is counted

    async def read_status(self) -> ControllerStatus:
        raise NotImplementedError

    async def run(self, on_status: StatusCallback, on_state: StateCallback) -> None:
        """Poll at a fixed rate until cancelled; failures back off and report offline after
        ``offline_after`` in a row. Never raises except on cancel."""
        clock = self.clock
        due = clock.monotonic()
        stats = self.stats
        while True:
            delay = due - clock.monotonic()
            if delay > 0:
                await clock.sleep(delay)
            try:
                status = await self.read_status()
            except asyncio.CancelledError:
                raise
            except (NoAnswer, Refused) as exc:
                self._failed(str(exc), on_state)
                due = clock.monotonic() + max(self.poll, stats.backoff_s)
                continue
            except Exception as exc:   # noqa: BLE001 - a bug meeting an answer must not end the link
                self.answers.failed(exc, where=f"{self.device_id} {self.describe}")
                self._failed(f"internal error: {type(exc).__name__}: {exc}", on_state)
                due = clock.monotonic() + max(self.poll, stats.backoff_s)
                continue
            stats.polls += 1
            stats.last_read_ms = status.t
            if stats.online is not True:
                if stats.online is False:
                    log.info("%s: %s answers again", self.device_id, self.describe)
                stats.online = True
                on_state(True, None)
            stats.consecutive_failures, stats.backoff_s = 0, 0.0
            on_status(status)
            due += self.poll
            now = clock.monotonic()
            if due <= now:   # fixed rate: skip the ticks a slow answer ate, never burst
                missed = int((now - due) // self.poll) + 1
                stats.skipped += missed
                due += missed * self.poll

    def _failed(self, error: str, on_state: StateCallback) -> None:
        stats = self.stats
        stats.failed_polls += 1
        stats.errors += 1
        stats.consecutive_failures += 1
        stats.last_error = error
        stats.backoff_s = self._backoff.delay(stats.consecutive_failures)
        if stats.consecutive_failures >= self.offline_after and stats.online is not False:
            log.warning("%s: %s is offline after %d failed polls: %s", self.device_id, self.describe,
                        stats.consecutive_failures, error)
            stats.online = False
            on_state(False, error)

