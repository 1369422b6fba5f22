"""The one backoff of the agent: how anything that failed (a unit that stopped answering, a link,
a stream, a broker, a crashed task) is retried. Exponential from ``initial`` up to ``max``, with
jitter, by tenacity's wait strategies; the loop around it stays the caller's, because a retry is
usually the next poll or the next connect, not a call to repeat (DESIGN.md: a device that keeps
failing is reported, not hammered).

Two spreads: ``added`` (the default: ``initial * 2**(n-1)`` plus up to ``initial`` of jitter, so
the spacing grows steadily, for one device or link), and ``full`` (anywhere between ``initial``
and the exponential ceiling ``initial * 2**n``, for many clients of one server, so a fleet
reconnecting to a broker that came back does not arrive in step).
"""

from __future__ import annotations

from typing import Literal

from pydantic import field_validator, model_validator
from tenacity import RetryCallState, wait_exponential_jitter, wait_random_exponential

from agent.core.config import Strict
from agent.core.units import Duration


class Backoff(Strict):
    """The config of a backoff: ``{initial: 1s, max: 30s}``."""

    initial: Duration = 1.0
    max: Duration = 30.0

    @field_validator("initial", "max")
    @classmethod
    def _at_least_10ms(cls, value: float) -> float:
        if value < 0.01:
            raise ValueError("must be at least 10ms")
        return value

    @model_validator(mode="after")
    def _ordered(self) -> "Backoff":
        if self.initial > self.max:
            raise ValueError(f"initial ({self.initial:g}s) must not be above max ({self.max:g}s)")
        return self


class Retry:
    """Delays for consecutive failures of one thing: ``delay(n)`` after the n-th in a row, or
    ``next_delay()`` counting them itself until ``reset()``."""

    def __init__(self, policy: Backoff, spread: Literal["added", "full"] = "added"):
        self.policy = policy
        self.failures = 0
        self._full = spread == "full"
        if spread == "full":
            self._wait = wait_random_exponential(multiplier=policy.initial, max=policy.max, min=policy.initial)
        else:
            self._wait = wait_exponential_jitter(multiplier=policy.initial, max=policy.max, jitter=policy.initial)
        self._state = RetryCallState(None, None, (), {})   # type: ignore[arg-type]

    def delay(self, failures: int) -> float:
        """Seconds to wait after the ``failures``-th consecutive failure (1 for the first): ``added``
        from ``initial * 2**(n-1)`` up, ``full`` anywhere from ``initial`` to ``initial * 2**n``."""
        self._state.attempt_number = max(1, failures) + (1 if self._full else 0)
        return self._wait(self._state)

    def next_delay(self) -> float:
        self.failures += 1
        return self.delay(self.failures)

    def reset(self) -> None:
        self.failures = 0
