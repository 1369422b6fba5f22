"""The outbox: the SQLite buffer every upward message passes through before MQTT.

One job: hold what still has to reach the broker, durably, in delivery order, within a byte cap.

How it works, and why:

* **Group commit.** ``put`` only queues in memory; ``flush`` (every ``commit_interval``, and at once
  after a fire alarm) writes the queue, deletes acknowledged rows and evicts over the cap in one
  transaction. One fsync per flush instead of one per message is what makes 200 msg/s cheap.
* **seq is the row id.** A message gets its seq at flush, in put order, and the seq is the table's
  ``INTEGER PRIMARY KEY``. Row ids are therefore never reused (an ack for an old row can never
  delete a new one) and "the order produced" is simply id order.
* **seq never goes back.** ``meta.seq_reserved`` is committed before any seq at or above it is
  handed out (in the same transaction as the rows for stored messages, in a small transaction of
  its own every ``SEQ_BLOCK`` calls of ``allocate_seq``). A restart continues from the reservation,
  so a ``kill -9`` or a power cut leaves at most a gap, never a repeat.
* **Streams.** ``start_session`` draws a line at the highest id stored: rows at or below it are
  backlog (sent with ``hist: true``), rows above it live. Per priority, the live and the backlog
  stream each keep a cursor; ``take`` is an index seek on ``(priority, id)`` per stream, never a
  sort, whatever the backlog size.
* **Byte cap.** Sizes are tracked in memory (loaded once at open from a covering index); a flush
  that ends over ``max_bytes`` evicts BULK oldest first, then TELEMETRY, then ALARM. LIFE_SAFETY
  is never evicted. Eviction counts live in ``meta`` and survive restarts.
* **Write failures** (disk full, I/O errors) never lose what is already committed and never drop
  a pending fire alarm: the batch stays in memory (bounded by ``max_pending_bytes``, shedding the
  lowest priority first), on SQLITE_FULL less important rows are evicted to make room and the
  write is retried once, and every later flush tries again.
* **Corrupt or foreign files** raise :class:`OutboxError` naming the file. The outbox never deletes
  or rewrites a file it does not recognise.
* **Schema versions** (:mod:`agent.outbox_schema`): an older file is migrated forward at open, one
  transaction per step; a file from a newer agent raises :class:`OutboxTooNew` before anything is
  written to it. ``meta.agent_version`` names the agent that last opened the file, for that message.

Thread confinement: every call comes from the event-loop thread, so there is no locking; no
transaction or read statement stays open between calls (an open read would pin the WAL and stop
checkpoints).
"""

from __future__ import annotations

import fcntl
import logging
import sqlite3
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import orjson

from agent import __version__ as AGENT_VERSION
from agent import outbox_schema
from agent.core.model import Priority, now_ms


def _import_sqlite_utils():
    """sqlite-utils imports numpy when it is installed (to store numpy values, which the outbox never
    does): 10+ MB of RSS in an agent without cameras. Import it with numpy hidden, unless numpy is
    loaded already (a camera's process), in which case nothing is saved or lost."""
    hidden = "numpy" not in sys.modules
    if hidden:
        sys.modules["numpy"] = None   # type: ignore[assignment] - makes `import numpy` fail
    try:
        import sqlite_utils
    finally:
        if hidden:
            del sys.modules["numpy"]
    return sqlite_utils


sqlite_utils = _import_sqlite_utils()

log = logging.getLogger(__name__)

FORMAT = "edge-agent-outbox"      # meta.format: how a file says it is an outbox
SEQ_BLOCK = 1000                  # seqs reserved per meta update; the largest gap a crash can leave
ROW_OVERHEAD = 64                 # bytes per row beyond payload and topic: other columns, index entry, cell
DEFAULT_MAX_PENDING_BYTES = 32 * 2**20   # memory held while the disk refuses writes (~1 min at 200 msg/s)
LOG_EVERY_S = 60.0                # repeated eviction / write-error warnings are summarised this often
JOURNAL_SIZE_LIMIT = 64 * 2**20   # truncate the WAL back to this after checkpoints: it counts against the disk

_RESERVED_KEYS = frozenset({"v", "gw", "seq", "ts", "hist"})   # common fields the outbox owns
_PRIORITIES = tuple(Priority)
_EVICTION_ORDER = (Priority.BULK, Priority.TELEMETRY, Priority.ALARM)   # LIFE_SAFETY: never
_HIST_HEAD = (b'{"hist":false,', b'{"hist":true,')
_SQLITE_FULL = 13
_SQLITE_CORRUPT_CODES = {11, 26}   # SQLITE_CORRUPT, SQLITE_NOTADB: retrying cannot help

# Hot-path statements, prepared once by the sqlite3 statement cache. INDEXED BY pins the plan to
# the (priority, id) index: without ANALYZE the planner could pick a rowid range scan instead.
_INSERT = ("INSERT INTO messages (id, priority, topic, payload, qos, retain, created_ms, size, raw) "
           "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)")
_DELETE = "DELETE FROM messages WHERE id = ?"
_LIVE = ("SELECT id, topic, payload, qos, retain, created_ms, size, raw FROM messages "
         "INDEXED BY messages_order WHERE priority = ? AND id > ? ORDER BY id LIMIT ?")
_BACKLOG = ("SELECT id, topic, payload, qos, retain, created_ms, size, raw FROM messages "
            "INDEXED BY messages_order WHERE priority = ? AND id > ? AND id <= ? ORDER BY id LIMIT ?")
_EVICT_SCAN = ("SELECT id, size FROM messages INDEXED BY messages_order "
               "WHERE priority = ? AND id > ? ORDER BY id LIMIT 256")
_EVICT = "DELETE FROM messages WHERE priority = ? AND id <= ?"
_SET_META = "UPDATE meta SET value = ? WHERE key = ?"


class OutboxError(Exception):
    """The outbox file cannot be used (corrupt, not an outbox, unreadable), or the outbox is closed."""

    def __init__(self, path: Path, problem: str):
        self.path = path
        super().__init__(f"{path}: {problem}")


class OutboxTooNew(OutboxError):
    """The file was written by a newer agent (a downgrade); it was left untouched."""


@dataclass(frozen=True, slots=True)
class OutboundMessage:
    row_id: int          # pass to ack(); equal to seq
    seq: int
    priority: Priority
    topic: str
    payload: bytes       # compact JSON, hist included (or the bytes given to put_raw)
    qos: int
    retain: bool
    created_ms: int      # when it was put (for produced-to-PUBACK latency)
    hist: bool           # from the backlog of an earlier connection


@dataclass(frozen=True, slots=True)
class OutboxStats:
    depth: int                              # committed rows not yet acknowledged
    bytes: int                              # their estimated size (what max_bytes limits)
    oldest_ms: int | None                   # created time of the oldest of them
    depth_by_priority: dict[Priority, int]
    evictions: dict[Priority, int]          # since the file was created, memory sheds included
    last_seq: int                           # every seq handed out so far is <= this
    write_errors: int                       # failed flush attempts in this process
    pending: int                            # puts waiting in memory for the next flush
    file_bytes: int                         # the database file's size (page_count * page_size)


# A put waiting for flush:
# (priority, topic, body JSON or raw payload, qos, retain, ts_ms, created_ms, size estimate, raw)
_Pending = tuple[int, str, bytes, int, bool, int, int, int, bool]
# the messages table of schema 1 (outbox_schema.FIRST_VERSION): a new file is created so, then migrated
_COLUMNS = {"id": int, "priority": int, "topic": str, "payload": bytes, "qos": int, "retain": int,
            "created_ms": int, "size": int, "raw": int}


class Outbox:
    """The SQLite buffer between producers and the MQTT uplink. See the module docstring."""

    def __init__(self, path: str | Path, *, gateway_id: str, max_bytes: int, durable: bool = True,
                 contract_version: int = 1, clock: Callable[[], int] = now_ms,
                 max_pending_bytes: int = DEFAULT_MAX_PENDING_BYTES):
        self.path = Path(path)
        self.gateway_id = gateway_id
        self.max_bytes = int(max_bytes)
        self.max_pending_bytes = int(max_pending_bytes)
        self._clock = clock
        # every payload starts the same way; seq and ts follow (orjson escapes the id correctly)
        self._head = b'{"v":%d,"gw":%b,"seq":' % (contract_version, orjson.dumps(gateway_id))

        self._pending: list[_Pending] = []
        self._pending_bytes = 0
        self._shed_above = self.max_pending_bytes   # see _shed_pending
        self._taken: dict[int, tuple[int, int]] = {}   # taken this session, not acked: id -> (priority, size)
        self._acked: set[int] = set()                  # acked, deleted at the next flush
        self._acked_unknown: set[int] = set()          # acked but not taken this session: looked up at flush
        self._depth = [0] * 4
        self._bytes = 0
        self._max_id = [0] * 4
        self._evictions = [0] * 4          # persisted in meta
        self._unsaved_evictions = [0] * 4  # pending messages shed from memory, not yet in meta
        self._write_errors = 0
        self._errors_since_log = 0
        self._error_logged_at = -LOG_EVERY_S
        self._evicted_since_log = [0] * 4
        self._evict_logged_at = -LOG_EVERY_S
        self._last_eviction_at = -LOG_EVERY_S

        self._lock_file = self._lock_exclusively()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # isolation_level=None: transactions are exactly the BEGIN/COMMIT written below
            conn = sqlite3.connect(self.path, isolation_level=None)
        except (OSError, sqlite3.Error) as exc:
            raise OutboxError(self.path, f"cannot open the outbox database ({exc})") from exc
        self._conn: sqlite3.Connection | None = conn
        try:
            # schema work and inspection (tests, diagnostics) go through sqlite-utils; never write
            # through it while the outbox is open, the in-memory counters would not follow
            self.db = sqlite_utils.Database(conn, execute_plugins=False)
            self._open_schema(durable)
            self._load_state()
        except OutboxError:
            self._close_quietly()
            raise
        except (sqlite3.Error, ValueError, KeyError) as exc:   # ValueError, KeyError: a mangled meta table
            self._close_quietly()
            raise OutboxError(self.path, f"not a usable outbox database ({exc}); the file was left "
                                         "untouched: move it aside to start with an empty outbox") from exc

    # -- opening ------------------------------------------------------------------------------

    def _open_schema(self, durable: bool) -> None:
        db, conn = self.db, self._conn
        assert conn is not None
        conn.execute("PRAGMA busy_timeout = 200")   # a CLI reader may briefly hold a lock
        tables = set(db.table_names())   # the first read: "file is not a database" surfaces here
        if not tables:
            db.enable_wal()
            with db.atomic():   # all or nothing: a crash here leaves an empty file, not half a schema
                db["meta"].create({"key": str, "value": str}, pk="key", not_null={"value"})
                # id is the seq (INTEGER PRIMARY KEY: the rowid itself, never reused)
                db["messages"].create(_COLUMNS, pk="id", not_null=set(_COLUMNS) - {"id"})
                # (priority, id) orders each stream; size makes eviction scans and the count at
                # open covering, so they never read the payload pages
                db["messages"].create_index(["priority", "id", "size"], index_name="messages_order")
                db["meta"].insert_all(
                    [{"key": "format", "value": FORMAT},
                     {"key": "schema", "value": str(outbox_schema.FIRST_VERSION)},
                     {"key": "gateway_id", "value": self.gateway_id}, {"key": "seq_reserved", "value": "1"}]
                    + [{"key": _evict_key(p), "value": "0"} for p in _PRIORITIES])
            log.info("created outbox %s", self.path)
            self._migrate(outbox_schema.FIRST_VERSION)
        else:
            # read-only checks first: WAL is switched on only once the file is known to be ours
            meta = dict(conn.execute("SELECT key, value FROM meta").fetchall()) if "meta" in tables else {}
            if meta.get("format") != FORMAT or "messages" not in tables:
                raise OutboxError(self.path, f"is a SQLite database but not an edge-agent outbox (tables: "
                                             f"{', '.join(sorted(tables))}); it was left untouched")
            schema = int(meta.get("schema", 0))
            if schema < outbox_schema.FIRST_VERSION:
                raise OutboxError(self.path, f"meta.schema is {meta.get('schema')!r}, not a schema version; "
                                             "the file was left untouched: move it aside to start with an empty outbox")
            try:
                outbox_schema.check_readable(schema, meta.get("agent_version"))
            except outbox_schema.SchemaTooNew as exc:
                raise OutboxTooNew(self.path, str(exc)) from None
            db.enable_wal()
            self._migrate(schema)
            columns = set(db["messages"].columns_dict)
            expected = set(_COLUMNS)
            if not expected <= columns or "messages_order" not in {i.name for i in db["messages"].indexes}:
                raise OutboxError(self.path, f"outbox table 'messages' lacks {sorted(expected - columns) or 'its index'}")
            if meta.get("gateway_id") != self.gateway_id:
                # stored payloads keep the id they were produced under; seq continues regardless
                log.warning("outbox %s was written by gateway %s, now used by %s",
                            self.path, meta.get("gateway_id"), self.gateway_id)
                db.execute(_SET_META, (self.gateway_id, "gateway_id"))
        if meta_value(conn, "agent_version") != AGENT_VERSION:   # names us if a downgrade must refuse the file
            conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('agent_version', ?)", (AGENT_VERSION,))
        conn.execute(f"PRAGMA synchronous = {'FULL' if durable else 'NORMAL'}")
        conn.execute(f"PRAGMA journal_size_limit = {JOURNAL_SIZE_LIMIT}")

    def _migrate(self, found: int) -> None:
        assert self._conn is not None
        try:
            outbox_schema.migrate(self._conn, self.path, found, _SET_META)
        except outbox_schema.MigrationFailed as exc:
            full = _primary_code(exc.cause) == _SQLITE_FULL
            raise OutboxError(self.path, f"{exc}; the file is at schema {exc.version} with every message it "
                                         "held" + ("; free space on its disk and start the agent again" if full
                                                   else "; start the agent again to retry")) from exc

    def _load_state(self) -> None:
        conn = self._conn
        assert conn is not None
        meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        self._reserved = int(meta["seq_reserved"])
        for p in _PRIORITIES:
            self._evictions[p] = int(meta.get(_evict_key(p), 0))
        # one pass over the covering index, not the payload pages
        for p, count, size, max_id in conn.execute(
                "SELECT priority, count(*), sum(size), max(id) FROM messages INDEXED BY messages_order "
                "GROUP BY priority").fetchall():
            if p not in (0, 1, 2, 3):
                raise OutboxError(self.path, f"{count} rows have an unknown priority {p!r}")
            self._depth[p], self._max_id[p] = count, max_id
            self._bytes += size
        # the reservation covers every seq ever handed out, stored or not
        self._next_seq = max(self._reserved, max(self._max_id) + 1)
        self.start_session()   # until a connection comes up, everything stored is backlog

    # -- producing ----------------------------------------------------------------------------

    def _lock_exclusively(self):
        """One process per outbox: a second one would hand out the same seqs and send rows twice."""
        lock_path = self.path.with_name(self.path.name + ".lock")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            handle = open(lock_path, "a+")
        except OSError as exc:
            raise OutboxError(self.path, f"cannot create the lock file {lock_path} ({exc.strerror})") from exc
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            raise OutboxError(self.path, "another process has this outbox open "
                                         "(is a second agent running with the same buffer.path?)") from None
        return handle

    def put(self, priority: Priority, topic: str, body: dict, *, qos: int = 1, retain: bool = False,
            ts_ms: int | None = None) -> None:
        """Queue a message; durable after the next flush(). ``body`` holds the message's own fields."""
        if self._conn is None:
            raise OutboxError(self.path, "the outbox is closed")
        p = int(priority)
        if not 0 <= p <= 3 or qos not in (0, 1, 2) or not isinstance(body, dict):
            raise ValueError(f"bad put: priority={priority!r} qos={qos!r} body type {type(body).__name__}")
        if not _RESERVED_KEYS.isdisjoint(body):
            raise ValueError(f"body must not set the common fields {sorted(_RESERVED_KEYS & body.keys())}")
        # serialise now: a failure belongs to the caller, and later changes to body do not leak in
        data = orjson.dumps(body)
        created = self._clock()
        size = len(self._head) + 40 + len(data) + len(topic) + ROW_OVERHEAD
        self._pending.append((p, topic, data, qos, retain, created if ts_ms is None else ts_ms, created, size, False))
        self._pending_bytes += size
        if self._pending_bytes > self._shed_above:
            self._shed_pending()

    def put_raw(self, priority: Priority, topic: str, payload: bytes, *, qos: int = 1,
                retain: bool = False) -> None:
        """Queue a message whose payload is not contract JSON (evidence/{event}/{name}: JPEG bytes).

        It is stored and sent byte for byte: no common fields, no hist. It still takes a seq (its
        row id), so the JSON messages' seqs may show a gap where it went.
        """
        if self._conn is None:
            raise OutboxError(self.path, "the outbox is closed")
        p = int(priority)
        if not 0 <= p <= 3 or qos not in (0, 1, 2):
            raise ValueError(f"bad put_raw: priority={priority!r} qos={qos!r}")
        data = bytes(payload)
        created = self._clock()
        size = len(data) + len(topic) + ROW_OVERHEAD
        self._pending.append((p, topic, data, qos, retain, created, created, size, True))
        self._pending_bytes += size
        if self._pending_bytes > self._shed_above:
            self._shed_pending()

    def allocate_seq(self) -> int:
        """A seq for a message that is not stored (state, birth); shares the counter with stored rows."""
        seq = self._next_seq
        if seq >= self._reserved:
            conn = self._require_open()
            reserved = seq + SEQ_BLOCK
            try:   # committed before the seq is used: a crash can skip numbers, never repeat them
                conn.execute(_SET_META, (str(reserved), "seq_reserved"))
            except sqlite3.Error as exc:
                self._rollback()
                raise self._error(exc, "reserving sequence numbers") from exc
            self._reserved = reserved
        self._next_seq = seq + 1
        return seq

    # -- committing ---------------------------------------------------------------------------

    def flush(self) -> int:
        """Commit pending puts, delete acked rows, evict over the cap; one transaction. Rows inserted."""
        self._require_open()
        # nothing new: no transaction (a cap exceeded by life-safety rows alone is no reason to
        # rescan every 50 ms; the next insert evicts what it can)
        if not (self._pending or self._acked or self._acked_unknown or any(self._unsaved_evictions)):
            return 0
        try:
            return self._write()
        except sqlite3.Error as exc:
            self._write_failed(exc)
            if _primary_code(exc) != _SQLITE_FULL:
                return 0   # I/O error, busy: the batch stays in memory for the next flush
        # disk full: make room from less important rows, then retry once
        try:
            self._free_space()
            return self._write()
        except sqlite3.Error as exc:
            self._write_failed(exc)
            return 0

    def _write(self) -> int:
        conn = self._conn
        assert conn is not None
        batch = self._pending
        # seqs are consumed even if the transaction fails: if a COMMIT failed after its frames
        # reached the WAL, retrying with the same ids would collide forever; a gap is harmless
        first = self._next_seq
        self._next_seq = first + len(batch)
        head = self._head
        rows = []
        seq = first
        for p, topic, data, qos, retain, ts, created, _, raw in batch:
            if raw:
                payload = data
            elif len(data) > 2:   # splice the common fields in front of the body's own
                payload = b'%b%d,"ts":%d,%b' % (head, seq, ts, memoryview(data)[1:])
            else:
                payload = b'%b%d,"ts":%d}' % (head, seq, ts)
            rows.append((seq, p, topic, payload, qos, int(retain), created, len(payload) + len(topic) + ROW_OVERHEAD,
                         int(raw)))
            seq += 1

        conn.execute("BEGIN IMMEDIATE")
        try:
            unknown = self._delete_acked_in_tx()
            if rows:
                conn.executemany(_INSERT, rows)
            reserved = self._reserved
            if self._next_seq > reserved:
                reserved = self._next_seq + SEQ_BLOCK
                conn.execute(_SET_META, (str(reserved), "seq_reserved"))
            total = self._bytes - sum(size for _, size in unknown) + sum(r[7] for r in rows)
            evicted: dict[int, list[tuple[int, int]]] = {}
            if total > self.max_bytes:
                self._evict_in_tx(total - self.max_bytes, _EVICTION_ORDER, evicted)
            self._save_evictions_in_tx(evicted)
            conn.execute("COMMIT")
        except BaseException:
            self._rollback()
            raise
        # committed: only now does memory follow
        self._reserved = reserved
        self._pending = []
        self._pending_bytes = 0
        self._shed_above = self.max_pending_bytes
        self._forget_acked(unknown)
        for row in rows:
            p = row[1]
            self._depth[p] += 1
            self._bytes += row[7]
            self._max_id[p] = row[0]
        self._forget_evicted(evicted, "over the byte cap")
        if self._errors_since_log:
            log.warning("outbox %s: writes work again after %d failed flushes", self.path, self._errors_since_log)
            self._errors_since_log = 0
        return len(rows)

    def _free_space(self) -> None:
        """After SQLITE_FULL: evict rows less important than (or as old as) what waits to be written."""
        conn = self._conn
        assert conn is not None
        need = [0] * 4
        for item in self._pending:
            need[item[0]] += item[7]
        conn.execute("BEGIN IMMEDIATE")
        try:
            unknown = self._delete_acked_in_tx()
            evicted: dict[int, list[tuple[int, int]]] = {}
            for c in _PRIORITIES:   # most important pending class first
                if need[c]:
                    # a message may displace less important rows and older rows of its own class,
                    # never more important ones; pages are only partly filled, hence the margin
                    classes = [p for p in _EVICTION_ORDER if p >= c]
                    self._evict_in_tx(need[c] * 5 // 4 + 8192, classes, evicted)
            self._save_evictions_in_tx(evicted)
            conn.execute("COMMIT")
        except BaseException:
            self._rollback()
            raise
        self._forget_acked(unknown)
        self._forget_evicted(evicted, "to make room on a full disk")

    def _delete_acked_in_tx(self) -> list[tuple[int, int]]:
        """Delete acked rows; return (priority, size) of those acked without being taken this session."""
        conn = self._conn
        assert conn is not None
        unknown: list[tuple[int, int]] = []
        for row_id in self._acked_unknown:
            # not counted at ack time: look up what it was (it may already be evicted)
            unknown += conn.execute("SELECT priority, size FROM messages WHERE id = ?", (row_id,)).fetchall()
        if self._acked or self._acked_unknown:
            conn.executemany(_DELETE, [(i,) for i in (*self._acked, *self._acked_unknown)])
        return unknown

    def _forget_acked(self, unknown: list[tuple[int, int]]) -> None:
        for p, size in unknown:
            self._depth[p] -= 1
            self._bytes -= size
        self._acked.clear()
        self._acked_unknown.clear()

    def _evict_in_tx(self, excess: int, classes: tuple[Priority, ...] | list[Priority],
                     evicted: dict[int, list[tuple[int, int]]]) -> int:
        """Delete the oldest rows of ``classes``, in that order, until ``excess`` bytes are freed."""
        conn = self._conn
        assert conn is not None
        for p in classes:
            if excess <= 0:
                break
            victims: list[tuple[int, int]] = []
            after = 0
            while excess > 0:
                rows = conn.execute(_EVICT_SCAN, (p, after)).fetchall()
                for row_id, size in rows:
                    victims.append((row_id, size))
                    excess -= size
                    if excess <= 0:
                        break
                if len(rows) < 256:
                    break
                after = rows[-1][0]
            if victims:   # oldest first within a class, so the victims are one id range
                conn.execute(_EVICT, (p, victims[-1][0]))
                evicted.setdefault(p, []).extend(victims)
        return excess

    def _save_evictions_in_tx(self, evicted: dict[int, list[tuple[int, int]]]) -> None:
        changed = [p for p in _PRIORITIES if evicted.get(p) or self._unsaved_evictions[p]]
        if changed:
            assert self._conn is not None
            self._conn.executemany(_SET_META, [
                (str(self._evictions[p] + self._unsaved_evictions[p] + len(evicted.get(p, ()))), _evict_key(p))
                for p in changed])

    def _forget_evicted(self, evicted: dict[int, list[tuple[int, int]]], why: str) -> None:
        counts = [0] * 4
        for p, victims in evicted.items():
            counts[p] = len(victims)
            self._depth[p] -= len(victims)
            for row_id, size in victims:
                self._bytes -= size
                self._taken.pop(row_id, None)   # an ack for it, if one comes, finds nothing to delete
        for p in _PRIORITIES:
            self._evictions[p] += self._unsaved_evictions[p] + counts[p]
            self._unsaved_evictions[p] = 0
        if any(counts):
            self._note_evictions(counts, why)

    def _shed_pending(self) -> None:
        """Memory bound while the disk refuses writes: drop the oldest, least important puts."""
        target = self.max_pending_bytes * 9 // 10   # shed a little more than needed: not on every put
        dropped = [0] * 4
        for p in _EVICTION_ORDER:
            if self._pending_bytes <= target:
                break
            keep: list[_Pending] = []
            for item in self._pending:
                if item[0] == p and self._pending_bytes > target:
                    self._pending_bytes -= item[7]
                    dropped[p] += 1
                else:
                    keep.append(item)
            self._pending = keep
        # only life-safety messages left over the limit: they are kept, and the next scan waits
        # until the queue has grown another tenth, so puts do not rescan it every time
        self._shed_above = max(self.max_pending_bytes, self._pending_bytes + self.max_pending_bytes // 10)
        for p in _PRIORITIES:
            self._unsaved_evictions[p] += dropped[p]
        if any(dropped):
            self._note_evictions(dropped, "from memory while the database cannot be written")

    # -- delivering ---------------------------------------------------------------------------

    def start_session(self) -> None:
        """A new MQTT connection: everything stored is backlog; take() starts again from the oldest."""
        self._boundary = max(self._max_id)
        self._live_cursor = [self._boundary] * 4
        self._backlog_cursor = [0] * 4
        self._backlog_done = [self._depth[p] == 0 for p in _PRIORITIES]
        self._taken.clear()   # nothing in flight on the old connection is known to have arrived

    def take(self, limit: int) -> list[OutboundMessage]:
        """Up to ``limit`` committed rows not yet taken this session, in delivery order."""
        self._require_open()
        out: list[OutboundMessage] = []
        try:
            for p in _PRIORITIES:
                if len(out) < limit and self._live_cursor[p] < self._max_id[p]:
                    self._read(out, limit, p, hist=False)
                if len(out) < limit and not self._backlog_done[p]:
                    self._read(out, limit, p, hist=True)
                if len(out) >= limit:
                    break
        except sqlite3.Error as exc:
            raise self._error(exc, "reading messages") from exc
        return out

    def _read(self, out: list[OutboundMessage], limit: int, p: Priority, *, hist: bool) -> None:
        conn = self._conn
        assert conn is not None
        skip_a, skip_u, taken = self._acked, self._acked_unknown, self._taken
        head = _HIST_HEAD[hist]
        cursor = self._backlog_cursor[p] if hist else self._live_cursor[p]
        while len(out) < limit:
            want = limit - len(out)
            if hist:
                rows = conn.execute(_BACKLOG, (p, cursor, self._boundary, want)).fetchall()
            else:
                rows = conn.execute(_LIVE, (p, cursor, want)).fetchall()
            for row_id, topic, payload, qos, retain, created, size, raw in rows:
                cursor = row_id
                if row_id in skip_a or row_id in skip_u:   # acked, not yet deleted
                    continue
                taken[row_id] = (p, size)
                # hist goes in front of the stored object: no parse, and the rest is byte-identical
                out.append(OutboundMessage(row_id, row_id, p, topic, payload if raw else head + payload[1:], qos,
                                           bool(retain), created, hist))
            if len(rows) < want:
                if hist:
                    self._backlog_done[p] = True   # the backlog only shrinks within a session
                break
        if hist:
            self._backlog_cursor[p] = cursor
        else:
            self._live_cursor[p] = cursor

    def ack(self, row_id: int) -> None:
        """The broker acknowledged the row; it is deleted at the next flush."""
        entry = self._taken.pop(row_id, None)
        if entry is None:
            if row_id not in self._acked:
                self._acked_unknown.add(row_id)   # e.g. taken before start_session; checked at flush
            return
        self._acked.add(row_id)
        p, size = entry
        self._depth[p] -= 1
        self._bytes -= size

    # -- reporting ----------------------------------------------------------------------------

    @property
    def pending(self) -> int:
        """Messages put but not yet committed (cheap; stats() reads the database)."""
        return len(self._pending)

    def stats(self) -> OutboxStats:
        conn = self._require_open()
        oldest = None
        try:
            # id order is creation order (seq is assigned in put order); skip rows already acked
            after = 0
            while oldest is None:
                rows = conn.execute("SELECT id, created_ms FROM messages WHERE id > ? ORDER BY id LIMIT 64",
                                    (after,)).fetchall()
                for row_id, created in rows:
                    if row_id not in self._acked and row_id not in self._acked_unknown:
                        oldest = created
                        break
                if len(rows) < 64:
                    break
                after = rows[-1][0]
            page_count = conn.execute("PRAGMA page_count").fetchone()[0]
            page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        except sqlite3.Error as exc:
            raise self._error(exc, "reading statistics") from exc
        return OutboxStats(
            depth=sum(self._depth), bytes=self._bytes, oldest_ms=oldest,
            depth_by_priority={p: self._depth[p] for p in _PRIORITIES},
            evictions={p: self._evictions[p] + self._unsaved_evictions[p] for p in _PRIORITIES},
            last_seq=self._next_seq - 1, write_errors=self._write_errors, pending=len(self._pending),
            file_bytes=page_count * page_size)

    def close(self) -> None:
        """Flush what is pending (best effort) and close the database."""
        if self._conn is None:
            return
        try:
            self.flush()
        finally:
            if self._pending:
                log.error("outbox %s closed with %d messages that could not be written",
                          self.path, len(self._pending))
            self._close_quietly()

    # -- helpers ------------------------------------------------------------------------------

    def _require_open(self) -> sqlite3.Connection:
        if self._conn is None:
            raise OutboxError(self.path, "the outbox is closed")
        return self._conn

    def _rollback(self) -> None:
        conn = self._conn
        if conn is not None and conn.in_transaction:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:   # SQLite may already have rolled back (FULL, IOERR)
                pass

    def _close_quietly(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except sqlite3.Error:
                log.exception("closing outbox %s", self.path)
            self._conn = None
        self._lock_file.close()   # releases the flock for the next process

    def _error(self, exc: sqlite3.Error, doing: str) -> OutboxError:
        return OutboxError(self.path, f"{doing} failed ({exc}); if the file is corrupt, stop the agent "
                                      "and move it aside to start with an empty outbox")

    def _write_failed(self, exc: sqlite3.Error) -> None:
        """Count a failed flush; raise if retrying cannot help (corruption)."""
        self._write_errors += 1
        self._errors_since_log += 1
        if _primary_code(exc) in _SQLITE_CORRUPT_CODES:
            raise self._error(exc, "writing") from exc
        now = time.monotonic()
        if now - self._error_logged_at >= LOG_EVERY_S:
            log.error("outbox %s: flush failed (%s: %s); %d messages kept in memory, retrying at the next "
                      "flush (%d failures since the last report)", self.path, getattr(exc, "sqlite_errorname", "?"), exc,
                      len(self._pending), self._errors_since_log)
            self._error_logged_at = now

    def _note_evictions(self, counts: list[int], why: str) -> None:
        """One warning when a burst of evictions starts, then a summary at most every LOG_EVERY_S."""
        now = time.monotonic()
        new_burst = now - self._last_eviction_at >= LOG_EVERY_S
        self._last_eviction_at = now
        for p in _PRIORITIES:
            self._evicted_since_log[p] += counts[p]
        if new_burst or now - self._evict_logged_at >= LOG_EVERY_S:
            summary = ", ".join(f"{n} {Priority(p).name.lower()}" for p, n in enumerate(self._evicted_since_log) if n)
            log.warning("outbox %s: evicted %s %s (cap %d bytes, now %d bytes)",
                        self.path, summary, why, self.max_bytes, self._bytes)
            self._evicted_since_log = [0] * 4
            self._evict_logged_at = now


def meta_value(conn: sqlite3.Connection, key: str) -> str | None:
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return None if row is None else row[0]


def _evict_key(p: Priority | int) -> str:
    return f"evicted.{Priority(p).name.lower()}"


def _primary_code(exc: sqlite3.Error) -> int:
    """SQLite's primary result code (SQLITE_FULL, SQLITE_IOERR ...), or -1 when there is none."""
    code = getattr(exc, "sqlite_errorcode", None)
    return -1 if code is None else code & 0xFF
