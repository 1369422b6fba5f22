"""Setting a transport up (bind, open, connect) until it works, with the one backoff
(:mod:`agent.core.backoff`): a port taken by another program, an adapter unplugged, a device that
does not answer is retried, reported to the technician, and never hammered."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from agent.core.backoff import Retry
from agent.core.clock import Clock
from agent.core.ratelimit import Throttle
from agent.core.transport.contract import Bridge

log = logging.getLogger("agent.core.transport")
T = TypeVar("T")


def reason(exc: BaseException) -> str:
    """An exception in the words a technician reads ("Address already in use", "timed out")."""
    if isinstance(exc, TimeoutError):
        return "timed out"
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


async def keep_trying(attempt: Callable[[], Awaitable[T]], *, bridge: Bridge, what: str, retry: Retry,
                      clock: Clock, errors: tuple[type[BaseException], ...] = (OSError, TimeoutError)) -> T:
    """``await attempt()`` until it returns. Each failure (one of ``errors``) is told to the bridge
    as "``what``: reason", logged (the first, then at most once a minute) and waited out with
    ``retry``'s next delay. Success is told to the bridge as None; ``retry`` is not reset here:
    the caller knows when the thing really works (a link that carried data)."""
    throttle = Throttle(clock=clock.monotonic)
    while True:
        try:
            result = await attempt()
        except errors as exc:
            delay = retry.next_delay()
            error = f"{what}: {reason(exc)}"
            bridge.transport_problem(error)
            if throttle.ready():
                held = throttle.held()
                log.warning("%s: %s; retrying in %.1fs%s", bridge.name, error, delay,
                            f" ({held} failures since the last report)" if held else "")
            await clock.sleep(delay)
            continue
        bridge.transport_problem(None)
        return result
