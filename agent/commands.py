"""Commands from the centre: verify, allow, execute, answer, audit (CONTRACT.md, "Commands").

A request on ``cmd/{name}`` passes, in this order and cheapest first, a size limit, JSON parsing,
the request schema, the HMAC-SHA256 signature, the clock (expired, or from too far in the future),
the replay cache (an id is executed once, across restarts) and the allowlist of the config. Only
then does it reach a device, within a rate limit. Every request gets a result on
``cmd_result/{id}`` through the outbox, except junk beyond ``answers_per_second``, which is counted
(metrics) and summarised in the audit log but not answered, so a flood of junk can fill neither
the outbox ahead of telemetry and alarms nor the disk. A request that meets a bug on its way is
refused with ``internal`` and counted on the ``mqtt.cmd`` boundary (agent/core/boundary.py).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import orjson

from agent import contract
from agent.config import Commands
from agent.core.boundary import boundary
from agent.core.clock import SYSTEM, Clock
from agent.core.commands import CommandHandler, Refused
from agent.core.driver import PointInfo, Runner
from agent.core.model import DeviceSink, now_ms
from agent.core.ratelimit import Throttle, TokenBucket

log = logging.getLogger("agent.commands")
COMMANDS = boundary("mqtt.cmd")

DEFERRED = object()   # a handler's result meaning "answered later" (config.apply answers after a restart)


class CommandSite(Protocol):
    """What the command channel and the agent's own commands act on (the Agent is one)."""

    @property
    def sink(self) -> DeviceSink: ...

    def runner_for(self, device_id: str) -> Runner | None: ...

    def publish_result(self, request_id: str, body: dict[str, Any]) -> None:
        """Queue a cmd_result/{id} and commit it soon."""
        ...

    def centre_heard(self) -> None: ...

    # for the agent's own commands (agent/command_handlers.py)

    def points_of(self, device_id: str) -> tuple[PointInfo, ...]: ...

    def buffer_stats(self) -> dict[str, Any]: ...

    async def apply_config(self, request_id: str, args: dict[str, Any]) -> None:
        """Validate and install a new config, then restart on it (agent/config_apply.py)."""
        ...


@dataclass(frozen=True)
class RequestContext:
    """The :class:`agent.core.commands.CommandContext` of one request."""

    request_id: str     # the result goes to cmd_result/{id}
    site: CommandSite
    cfg: Commands

    @property
    def sink(self) -> DeviceSink:
        return self.site.sink

    def runner(self, device_id: str) -> Runner:
        runner = self.site.runner_for(device_id)
        if runner is None:
            raise Refused("unknown_device", f"no device {device_id!r} on this gateway")
        return runner


class ReplayCache:
    """Request ids already seen, kept until their request expires; survives restarts (SQLite)."""

    def __init__(self, path: Path):
        import sqlite_utils
        self.db = sqlite_utils.Database(path)
        self.db.execute("PRAGMA journal_mode=WAL")
        if "seen" not in self.db.table_names():
            self.db["seen"].create({"id": str, "expires_ms": int}, pk="id")
            self.db["seen"].create_index(["expires_ms"])
        self._pruned_at = 0.0

    def seen_before(self, request_id: str, expires_ms: int) -> bool:
        """Record the id; True when it was recorded already."""
        conn = self.db.conn
        if conn.execute("SELECT 1 FROM seen WHERE id = ?", (request_id,)).fetchone():
            return True
        with conn:
            conn.execute("INSERT INTO seen (id, expires_ms) VALUES (?, ?)", (request_id, expires_ms))
        if time.monotonic() - self._pruned_at > 60:
            self._pruned_at = time.monotonic()
            with conn:   # an expired request is refused by its clock check; its id can go
                conn.execute("DELETE FROM seen WHERE expires_ms < ?", (now_ms() - 60_000,))
        return False

    def close(self) -> None:
        self.db.close()


class AuditLog:
    """Append-only JSON lines, each carrying the sha256 of the line before it, so a rewritten or
    deleted entry breaks the chain (`verify`). No command can write here or move the file."""

    def __init__(self, path: Path):
        self.path = path
        self._last = "0" * 64
        if path.exists():
            with path.open("rb") as existing:
                for line in existing:
                    if line.strip():
                        self._last = hashlib.sha256(line.rstrip(b"\n")).hexdigest()
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)

    def write(self, entry: dict[str, Any], *, sync: bool = True) -> None:
        """``sync=False`` for refusals: a junk flood must not turn into a flood of fsyncs."""
        line = orjson.dumps({"ts": now_ms(), **entry, "prev": self._last})
        os.write(self._fd, line + b"\n")
        if sync:
            os.fsync(self._fd)
        self._last = hashlib.sha256(line).hexdigest()

    @staticmethod
    def verify(path: Path) -> list[str]:
        """Problems in the chain (empty when intact)."""
        problems, previous = [], "0" * 64
        for number, line in enumerate(path.read_bytes().splitlines(), 1):
            try:
                entry = orjson.loads(line)
            except orjson.JSONDecodeError:
                problems.append(f"line {number}: not JSON")
                continue
            if entry.get("prev") != previous:
                problems.append(f"line {number}: chain broken (an entry before it was changed or removed)")
            previous = hashlib.sha256(line).hexdigest()
        return problems

    def close(self) -> None:
        os.close(self._fd)


@dataclass
class CommandStats:
    received: int = 0
    executed: int = 0
    succeeded: int = 0
    failed: int = 0
    answered_refusals: int = 0   # refusals answered on cmd_result/{id}
    unanswered: int = 0          # refusals not answered: beyond answers_per_second, or no usable id
    last_from_centre_ms: int | None = None

    def __post_init__(self) -> None:
        self.refused: Counter[str] = Counter()

    def as_dict(self) -> dict[str, Any]:
        return {**{k: v for k, v in self.__dict__.items() if k != "refused"}, "refused": dict(self.refused)}


class CommandChannel:
    """Receives raw requests from the uplink and answers them through the outbox."""

    def __init__(self, site: CommandSite, cfg: Commands, state_dir: Path, handlers: Mapping[str, CommandHandler],
                 *, clock: Clock = SYSTEM, audit: AuditLog | None = None):
        self.site = site
        self.clock = clock   # the gateway's time: a request's expiry and when the centre was last heard
        self.handlers = dict(handlers)
        self.cfg = cfg
        self._key = cfg.key.reveal().encode() if cfg.key is not None else None
        state_dir.mkdir(parents=True, exist_ok=True)
        self.replay = ReplayCache(state_dir / "commands.db")
        # the agent's one audit log, which the web console writes to as well
        self._own_audit = audit is None
        self.audit = audit if audit is not None else AuditLog(state_dir / "audit.log")
        self.stats = CommandStats()
        self._run_rate = TokenBucket(cfg.max_per_second)
        self._answer_rate = TokenBucket(cfg.answers_per_second)
        self._unrecorded: Counter[str] = Counter()   # refusals beyond answers_per_second, by code
        self._log_throttle = Throttle(every=10.0)
        self._tasks: set[asyncio.Task[None]] = set()
        # built now, not by the first request: importing jsonschema and compiling the schema takes
        # 60 ms of CPU, which a request arriving on the event loop must not cost
        contract.validator("cmd_request")
        if self._key is None:
            log.warning("commands.key is not set: every command from the centre will be refused")

    def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        self._audit_unrecorded()
        self.replay.close()
        if self._own_audit:
            self.audit.close()

    # -- intake (on the event loop, from the uplink's socket reader: must stay quick) ------------

    def on_message(self, topic: str, payload: bytes) -> None:
        """One request. Whatever it holds, it ends here: executed, refused with a code, or (junk
        beyond ``answers_per_second``) counted; an exception never reaches the uplink, whose
        PUBACK must follow so the broker does not deliver the same request again."""
        self.stats.received += 1
        name = topic.rsplit("/", 1)[-1]
        request_id: str | None = None
        try:
            request = self._verify(name, payload)
            request_id = request["id"]
            self.stats.last_from_centre_ms = self.clock.now_ms()   # only an authenticated request proves the centre
            self.site.centre_heard()
            if not self._run_rate.take():
                raise Refused("rate_limited", f"more than {self.cfg.max_per_second:g} commands a second")
            task = asyncio.get_running_loop().create_task(self._execute(name, request))
        except Refused as refusal:
            self._refuse(name, request_id, payload, refusal)
            return
        except Exception as exc:   # noqa: BLE001 - a bug meeting this input: refused, counted, logged once
            COMMANDS.failed(exc, payload, where=f"cmd/{name[:64]}")
            self._refuse(name, request_id, payload, Refused("internal", "the gateway could not handle this "
                                                                       "request (counted in its status)"))
            return
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _verify(self, name: str, payload: bytes) -> dict[str, Any]:
        if len(payload) > self.cfg.max_bytes:
            raise Refused("oversize", f"request of {len(payload)} bytes; the limit is {self.cfg.max_bytes}")
        try:
            request = orjson.loads(payload)
        except orjson.JSONDecodeError as exc:
            raise Refused("malformed", f"not JSON: {exc}") from None
        if not isinstance(request, dict):
            raise Refused("malformed", "a request is a JSON object")
        if "sig" not in request:
            raise Refused("unsigned", "the request has no 'sig'")
        if self._key is None:
            raise Refused("no_key", "this gateway has no command key configured")
        # the HMAC before the schema: junk from someone without the key costs one hash, no more
        try:
            signed = contract.signature_ok(request, self._key)
        except ValueError as exc:   # nested too deep to have a canonical form: nobody signed it
            raise Refused("malformed", str(exc)) from None
        if not signed:
            raise Refused("bad_signature", "the signature does not match this gateway's key")
        problems = contract.validate("cmd_request", request)
        if problems:
            raise Refused("malformed", "; ".join(problems[:3]))
        now = self.clock.now_ms()
        if request["expires"] < now:
            raise Refused("expired", f"expired {(now - request['expires']) / 1000:.1f}s ago")
        if request["ts"] > now + self.cfg.max_clock_skew * 1000:
            raise Refused("clock", "the request is stamped in the future; check the centre's clock")
        if request["expires"] - request["ts"] > self.cfg.max_lifetime * 1000:
            raise Refused("lifetime", f"a request may live at most {self.cfg.max_lifetime:g}s")
        if self.replay.seen_before(request["id"], request["expires"]):
            raise Refused("replayed", f"request {request['id']} was received before")
        if name not in self.handlers:
            raise Refused("unknown_command", f"no command {name!r}; known: {', '.join(sorted(self.handlers))}")
        rule = self.cfg.rule(name)
        if rule is None:
            raise Refused("not_allowed", f"{name} is not allowed by this gateway's config")
        # the device a command acts on: `device`, or `camera` for camera.snapshot
        device = request["args"].get("device", request["args"].get("camera"))
        if rule.devices is not None and device not in rule.devices:
            raise Refused("not_allowed", f"{name} is not allowed on device {device!r}")
        point = request["args"].get("point")
        if rule.points is not None and point is not None and point not in rule.points:
            raise Refused("not_allowed", f"{name} is not allowed on point {point!r}")
        return request

    # -- execution ---------------------------------------------------------------------------------

    async def _execute(self, name: str, request: dict[str, Any]) -> None:
        self.stats.executed += 1
        request_id = request["id"]
        ok, value = await execute(self.handlers[name], RequestContext(request_id, self.site, self.cfg),
                                  name, request["args"], self.audit, self.cfg.timeout)
        if value is DEFERRED:
            return
        if ok:
            self.stats.succeeded += 1
        else:
            self.stats.failed += 1
        self.answer(request_id, ok, value)

    def _refuse(self, name: str, request_id: str | None, payload: bytes, refusal: Refused) -> None:
        """Count a refusal; answer, audit and log it one by one up to ``answers_per_second``. A flood
        beyond that is only counted and summarised, so junk can fill neither the outbox ahead of
        telemetry and alarms nor the disk with audit lines and logs."""
        self.stats.refused[refusal.code] += 1
        if not self._answer_rate.take():
            self.stats.unanswered += 1
            self._unrecorded[refusal.code] += 1
            return
        if request_id is None and isinstance(payload, (bytes, bytearray)) and len(payload) <= self.cfg.max_bytes:
            request_id = _id_of(payload)
        self._audit_unrecorded()
        self.audit.write({"event": "refused", "command": name[:64], "id": request_id, "code": refusal.code,
                          "message": str(refusal)[:300]}, sync=False)
        self._log_throttle.warn(log, refusal.code, "command %s (%s) refused: %s", name[:64], request_id,
                                str(refusal)[:300])
        if request_id is None:
            self.stats.unanswered += 1   # no usable id to answer to
            return
        self.stats.answered_refusals += 1
        self.answer(request_id, False, {"code": refusal.code, "message": str(refusal)})

    def _audit_unrecorded(self) -> None:
        """One audit entry for the refusals of a flood that were only counted."""
        if self._unrecorded:
            held, self._unrecorded = self._unrecorded, Counter()
            self.audit.write({"event": "refused_unrecorded", "count": sum(held.values()), "codes": dict(held)},
                             sync=False)

    def answer(self, request_id: str, ok: bool, value: Any) -> None:
        """Queue the result of a request (also for results that come after a restart)."""
        body: dict[str, Any] = {"id": request_id, "ok": ok}
        body["result" if ok else "error"] = value
        self.site.publish_result(request_id, body)


async def execute(handler: CommandHandler, ctx: RequestContext, name: str, args: dict[str, Any], audit: AuditLog,
                  timeout: float, *, by: str | None = None) -> tuple[bool, Any]:
    """Run one command that passed its checks, audited: ``(True, result)``, ``(True, DEFERRED)``
    for one answered later (config.apply), or ``(False, {"code", "message"})``. The centre's
    requests and the web console's actions (``by``: who, e.g. ``web:tech``) both come through here."""
    request_id = ctx.request_id
    who = {"by": by} if by is not None else {}
    audit.write({"event": "execute", "command": name, "id": request_id, "args": args, **who})
    try:
        result = await asyncio.wait_for(handler(ctx, args), timeout)
    except Refused as refusal:
        audit.write({"event": "failed", "command": name, "id": request_id, "code": refusal.code,
                     "message": str(refusal), **who})
        return False, {"code": refusal.code, "message": str(refusal)}
    except asyncio.TimeoutError:
        audit.write({"event": "failed", "command": name, "id": request_id, "code": "timeout", **who})
        return False, {"code": "timeout", "message": f"no outcome within {timeout:g}s"}
    except Exception as exc:   # noqa: BLE001 - a handler bug is answered, never crashes the agent
        log.exception("command %s %s failed", name, request_id)
        audit.write({"event": "failed", "command": name, "id": request_id, "code": "internal", **who})
        return False, {"code": "internal", "message": f"{exc.__class__.__name__}: {exc}"}
    audit.write({"event": "deferred" if result is DEFERRED else "done", "command": name, "id": request_id, **who})
    return True, result


def _id_of(payload: bytes) -> str | None:
    """The request id of a refused request, if it has a usable one."""
    try:
        request = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None
    request_id = request.get("id") if isinstance(request, dict) else None
    return request_id if isinstance(request_id, str) and contract.ID_RE.fullmatch(request_id) else None
