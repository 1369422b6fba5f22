"""Who is logged in to the console: sessions that expire, their CSRF tokens, and the limit on
login attempts.

- A session is a random 256-bit token in an HttpOnly, SameSite=Strict cookie; the server keeps
  only its sha256, so a memory dump or a log line cannot be replayed as a cookie.
- It expires after ``session_idle`` without a request and ``session_max`` after the login,
  whichever comes first, and at logout.
- Every request that changes something carries the session's CSRF token in ``X-CSRF-Token``
  (a synchronizer token: a page of another site can neither read nor guess it).
- Login attempts are limited per client address and per name tried, whether or not such an
  account exists, so the limit gives no hint either.

The store lives beside the agent, not inside it: when ``config.apply`` restarts the agent on a
new config, the technician who applied it stays logged in.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from agent.core.ratelimit import TokenBucket

MAX_SESSIONS = 256      # a flood of logins cannot grow memory: the oldest go first
MAX_BUCKETS = 4096      # addresses and names tried, each with its own bucket


@dataclass
class Session:
    user: str
    role: str
    created: float
    seen: float
    csrf: str = field(default_factory=lambda: secrets.token_urlsafe(32))

    @property
    def admin(self) -> bool:
        return self.role == "admin"


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


class Sessions:
    def __init__(self, idle: float, longest: float, clock: Callable[[], float] = time.monotonic):
        self.idle = idle
        self.longest = longest
        self.clock = clock
        self._by_digest: dict[str, Session] = {}

    def open(self, user: str, role: str) -> tuple[str, Session]:
        """A new session; returns the token for the cookie (kept here only as its digest)."""
        now = self.clock()
        self._expire(now)
        while len(self._by_digest) >= MAX_SESSIONS:
            self._by_digest.pop(next(iter(self._by_digest)))
        token = secrets.token_urlsafe(32)
        session = Session(user, role, now, now)
        self._by_digest[_digest(token)] = session
        return token, session

    def get(self, token: str | None) -> Session | None:
        """The live session of a cookie (touching it), or None: unknown, idle too long, too old."""
        if not token or len(token) > 128:
            return None
        key = _digest(token)
        session = self._by_digest.get(key)
        if session is None:
            return None
        now = self.clock()
        if now - session.seen > self.idle or now - session.created > self.longest:
            del self._by_digest[key]
            return None
        session.seen = now
        return session

    def close(self, token: str | None) -> None:
        if token:
            self._by_digest.pop(_digest(token), None)

    def drop_users(self, keep: Callable[[str, str], bool]) -> None:
        """End the sessions of accounts no longer configured (or whose role changed)."""
        for key, session in list(self._by_digest.items()):
            if not keep(session.user, session.role):
                del self._by_digest[key]

    def _expire(self, now: float) -> None:
        for key, session in list(self._by_digest.items()):
            if now - session.seen > self.idle or now - session.created > self.longest:
                del self._by_digest[key]

    def __len__(self) -> int:
        return len(self._by_digest)


class LoginLimiter:
    """``allow(address, name)``: False once an address or a name has used up its attempts a
    minute. Names are limited whether or not the account exists, so the answer never tells."""

    def __init__(self, per_minute: float, clock: Callable[[], float] = time.monotonic):
        self.rate = per_minute / 60.0
        self.burst = max(1.0, per_minute)
        self.clock = clock
        self._buckets: dict[str, TokenBucket] = {}

    def _bucket(self, key: str) -> TokenBucket:
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= MAX_BUCKETS:   # junk names must not grow this without bound
                self._buckets.clear()
            bucket = self._buckets[key] = TokenBucket(self.rate, self.burst, self.clock)
        return bucket

    def allow(self, address: str, name: str) -> bool:
        by_address = self._bucket("a:" + address)
        by_name = self._bucket("n:" + name[:64].lower())
        # both take a token, or neither keeps counting against the other
        return by_address.take() & by_name.take()
