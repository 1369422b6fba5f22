"""Boundaries: the places where bytes from outside come in, and what happens when handling them fails.

A boundary is one kind of input (MQTT commands, an HJ 212 socket, a fire panel's serial line, Modbus
answers, camera frames, config files ...). Each handler of one message, frame or connection is
wrapped so that an exception nobody expected:

- is logged once, with the input's size and a short sha256, never its content (it may hold a
  secret: a password in a frame, a key in a config), and then summarised at most once a minute;
- is counted per boundary (``edge-agent status`` and the ``metrics`` topic show the counts);
- leaves the boundary to answer as its protocol answers (a refusal, a deny, a dropped frame) and
  to acknowledge the input, so the peer does not send it again forever;
- and never reaches the event loop, the paho callback or the reader task above the handler.

Usage, at the place the outside input is handed to its parser or handler::

    FRAMES = boundary("hj212.tcp")
    try:
        handle(data)
    except Exception as exc:      # noqa: BLE001 - see agent/core/boundary.py
        FRAMES.failed(exc, data)
        ...answer as the protocol does...

:mod:`agent.core.ratelimit` holds the rate limits it uses (and the rest of the code too).
"""

from __future__ import annotations

import hashlib
import logging
import time
from typing import Any

from agent.core.model import Event
from agent.core.ratelimit import Throttle, TokenBucket

log = logging.getLogger("agent.boundary")

LOG_EVERY_S = 60.0       # after the first failure of a boundary, a summary at most this often
REPORTS_PER_MINUTE = 10  # device.input_unhandled events per boundary
REPORT_BYTES = 2048      # of the input carried in one (as hex)
_REGISTRY: dict[str, "Boundary"] = {}


def _as_bytes(data: Any) -> bytes:
    if data is None:
        return b""
    if isinstance(data, str):
        return data.encode("utf-8", "surrogateescape")
    try:
        return bytes(data)
    except (TypeError, ValueError):
        return repr(type(data)).encode()


def fingerprint(data: Any) -> str:
    """What a log may say about an input: its size and the start of its sha256, never its content."""
    if data is None:
        return "no input"
    raw = _as_bytes(data)
    return f"{len(raw)} bytes, sha256 {hashlib.sha256(raw).hexdigest()[:16]}"


class Boundary:
    """One kind of outside input and its failure counts. Get it with :func:`boundary`, once per
    kind (module level), so counters are per boundary, not per caller."""

    def __init__(self, name: str):
        self.name = name
        self.failures = 0
        self.last_error: str | None = None
        self.last_failure_ms: int | None = None
        self._throttle = Throttle()
        self._reports = TokenBucket(REPORTS_PER_MINUTE / 60.0, REPORTS_PER_MINUTE)

    def failed(self, exc: BaseException, data: Any = None, *, where: str = "") -> None:
        """Count and log (rate-limited) an unexpected exception while handling one input."""
        self.failures += 1
        self.last_failure_ms = time.time_ns() // 1_000_000
        what = f"{type(exc).__name__}: {exc}"
        if len(what) > 200:
            what = what[:197] + "..."
        self.last_error = what
        if self._throttle.ready():
            held = self._throttle.held()
            first = self.failures == 1
            log.error("%s: handling one input%s failed (%s): %s%s; it was skipped and the agent goes on",
                      self.name, f" from {where}" if where else "", fingerprint(data), what,
                      f" ({held} more failures since the last report)" if held else "",
                      exc_info=exc if first else None)   # the traceback once: the bug is the same

    def report(self, exc: BaseException, data: Any) -> Event | None:
        """A ``device.input_unhandled`` event carrying the input (hex, bounded) for the device's
        topic, so what the agent could not read still reaches the centre; None beyond
        REPORTS_PER_MINUTE for this boundary (the rest are counted, not sent: a device whose every
        frame meets the same bug must not flood the uplink)."""
        if not self._reports.take():
            return None
        raw = _as_bytes(data)
        what = f"{type(exc).__name__}: {exc}"
        return Event("device.input_unhandled", "major", {
            "boundary": self.name, "error": what[:200], "bytes": len(raw),
            "sha256": hashlib.sha256(raw).hexdigest(), "input_hex": raw[:REPORT_BYTES].hex(),
            "truncated": len(raw) > REPORT_BYTES})

    def as_dict(self) -> dict[str, Any]:
        return {"failures": self.failures, "last_error": self.last_error, "last_failure_ms": self.last_failure_ms}


def boundary(name: str) -> Boundary:
    """The boundary of that name, made on first use."""
    known = _REGISTRY.get(name)
    if known is None:
        known = _REGISTRY[name] = Boundary(name)
    return known


def snapshot() -> dict[str, dict[str, Any]]:
    """Every boundary known to this process, by name, for status and metrics."""
    return {name: b.as_dict() for name, b in sorted(_REGISTRY.items())}


def failures() -> dict[str, int]:
    """Failures per boundary (only those that failed), for the metrics topic."""
    return {name: b.failures for name, b in sorted(_REGISTRY.items()) if b.failures}
