"""The outbox's schema version: older files migrated step by step without losing a message, a file
from a newer agent refused before anything is written to it, a step that fails (a full disk) rolled
back to the last completed one."""

from __future__ import annotations

import hashlib
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from agent import __version__, outbox_schema
from agent.core.model import Priority
from agent.outbox import OutboxError, OutboxTooNew
from agent.outbox_schema import Migration
from tests.agent_proc import REPO, agent_config
from tests.test_outbox import drain, open_outbox

LS, ALARM, TEL, BULK = Priority.LIFE_SAFETY, Priority.ALARM, Priority.TELEMETRY, Priority.BULK

# Two steps a later release could make: a column every row gets, and an index.
ADD_HOPS = Migration(2, "messages.hops", lambda conn: conn.execute(
    "ALTER TABLE messages ADD COLUMN hops INTEGER NOT NULL DEFAULT 0"))
INDEX_CREATED = Migration(3, "index on created_ms", lambda conn: conn.execute(
    "CREATE INDEX messages_created ON messages (created_ms)"))


def meta(path: Path) -> dict[str, str]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return dict(conn.execute("SELECT key, value FROM meta"))
    finally:
        conn.close()


def columns_and_indexes(path: Path) -> tuple[set[str], set[str]]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        columns = {row[1] for row in conn.execute("PRAGMA table_info(messages)")}
        indexes = {row[1] for row in conn.execute("PRAGMA index_list(messages)")}
        return columns, indexes
    finally:
        conn.close()


def version_1_outbox_with_a_backlog(path: Path) -> list[tuple[int, bytes]]:
    """An outbox as the first release wrote it, holding messages of every class; returns
    (seq, payload) of each in the order take() hands them out."""
    assert outbox_schema.MIGRATIONS == [], "the first release had no migrations"
    ob = open_outbox(path)
    for i in range(40):
        ob.put((LS, ALARM, TEL, BULK)[i % 4], f"t/{i}", {"i": i})
    ob.put_raw(BULK, "evidence/e/0.jpg", b"\xff\xd8" + bytes(range(256)))
    ob.close()
    ob = open_outbox(path)   # what a restart hands out: the backlog, hist true
    taken = [(m.seq, m.payload) for m in drain(ob)]
    ob.close()
    assert len(taken) == 41 and meta(path)["schema"] == "1"
    return taken


@pytest.fixture
def migrations(monkeypatch):
    """Set the migrations this agent has, as a later release would."""
    def use(*steps: Migration) -> None:
        monkeypatch.setattr(outbox_schema, "MIGRATIONS", list(steps))
    return use


def test_a_new_outbox_is_at_the_current_schema_and_names_its_agent(tmp_path):
    path = tmp_path / "o.db"
    open_outbox(path).close()
    assert meta(path)["schema"] == str(outbox_schema.current_version())
    assert meta(path)["agent_version"] == __version__


def test_an_older_outbox_is_migrated_step_by_step_and_keeps_every_message(tmp_path, migrations, caplog):
    path = tmp_path / "o.db"
    before = version_1_outbox_with_a_backlog(path)
    migrations(ADD_HOPS, INDEX_CREATED)
    caplog.set_level("INFO", logger="agent.outbox_schema")
    ob = open_outbox(path)
    assert meta(path)["schema"] == "3"
    columns, indexes = columns_and_indexes(path)
    assert "hops" in columns and "messages_created" in indexes
    after = [(m.seq, m.payload) for m in drain(ob)]
    assert after == before, "every message, byte for byte, in the same order"
    ob.put(TEL, "t/new", {"i": "new"})
    ob.flush()
    (new,) = drain(ob)
    assert new.seq > max(seq for seq, _ in before)
    ob.close()
    logged = caplog.text
    assert "migrating from schema 1 to 3" in logged and "schema 2 (messages.hops)" in logged


def test_a_new_outbox_runs_every_migration(tmp_path, migrations):
    migrations(ADD_HOPS, INDEX_CREATED)
    path = tmp_path / "o.db"
    ob = open_outbox(path)
    ob.put(TEL, "t", {"i": 1})
    ob.flush()
    assert len(drain(ob)) == 1
    ob.close()
    columns, indexes = columns_and_indexes(path)
    assert meta(path)["schema"] == "3" and "hops" in columns and "messages_created" in indexes


def test_a_failed_step_leaves_the_file_at_the_last_completed_one(tmp_path, migrations):
    path = tmp_path / "o.db"
    before = version_1_outbox_with_a_backlog(path)
    broken = Migration(3, "a step with a bug", lambda conn: conn.execute("CREATE INDEX x ON no_such_table (a)"))
    migrations(ADD_HOPS, broken)
    with pytest.raises(OutboxError) as info:
        open_outbox(path)
    message = str(info.value)
    assert str(path) in message and "from schema 2 to 3 failed" in message and "at schema 2" in message
    assert meta(path)["schema"] == "2"
    # the next release fixes the step: the file carries on from 2, nothing lost
    migrations(ADD_HOPS, INDEX_CREATED)
    ob = open_outbox(path)
    assert [(m.seq, m.payload) for m in drain(ob)] == before
    ob.close()
    assert meta(path)["schema"] == "3"


def test_a_full_disk_during_a_migration_loses_nothing(tmp_path, migrations):
    path = tmp_path / "o.db"
    before = version_1_outbox_with_a_backlog(path)

    def index_on_a_full_disk(conn: sqlite3.Connection) -> None:
        # SQLite's real SQLITE_FULL: the file may not grow any more, and an index needs pages
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        conn.execute(f"PRAGMA max_page_count = {pages}")
        conn.execute("CREATE INDEX messages_payload ON messages (payload)")

    migrations(Migration(2, "an index that needs space", index_on_a_full_disk))
    with pytest.raises(OutboxError) as info:
        open_outbox(path)
    message = str(info.value)
    assert "full" in message and "free space on its disk" in message and "every message it held" in message
    assert meta(path)["schema"] == "1"
    assert "messages_payload" not in columns_and_indexes(path)[1]
    migrations(ADD_HOPS)   # space again (a new connection has no page limit)
    ob = open_outbox(path)
    assert [(m.seq, m.payload) for m in drain(ob)] == before
    ob.close()


def newer_outbox(path: Path) -> str:
    """An outbox a newer agent wrote (schema one above ours), cleanly closed; returns its sha256."""
    open_outbox(path).close()
    conn = sqlite3.connect(path)
    conn.execute("UPDATE meta SET value = ? WHERE key = 'schema'", (str(outbox_schema.current_version() + 1),))
    conn.execute("UPDATE meta SET value = '9.9.9' WHERE key = 'agent_version'")
    conn.commit()
    conn.close()   # the last connection: the WAL is checkpointed and removed
    assert not path.with_name(path.name + "-wal").exists()
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_an_outbox_from_a_newer_agent_is_refused_and_left_untouched(tmp_path):
    path = tmp_path / "o.db"
    digest = newer_outbox(path)
    with pytest.raises(OutboxTooNew) as info:
        open_outbox(path)
    message = str(info.value)
    assert str(path) in message
    assert "written by edge-agent 9.9.9" in message and f"this edge-agent ({__version__})" in message
    assert "left untouched" in message and "install edge-agent 9.9.9 or newer" in message
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest
    assert not path.with_name(path.name + "-wal").exists()


def test_an_outbox_without_a_schema_version_is_not_guessed_at(tmp_path):
    path = tmp_path / "o.db"
    open_outbox(path).close()
    conn = sqlite3.connect(path)
    conn.execute("DELETE FROM meta WHERE key = 'schema'")
    conn.commit()
    conn.close()
    with pytest.raises(OutboxError, match="not a schema version"):
        open_outbox(path)


def test_run_refuses_a_newer_outbox_with_its_own_exit_status(tmp_path):
    """What systemd sees: exit status 3 (RestartPreventExitStatus: no restart every 2 s) and the
    reason on stderr, which the journal and `systemctl status` show."""
    config = agent_config(tmp_path, broker_port=1, devices=[])
    path = tmp_path / "outbox.db"   # agent_config's buffer.path
    digest = newer_outbox(path)
    done = subprocess.run([sys.executable, "-m", "agent", "run", "-c", str(config)], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 3, done.stderr
    assert "edge-agent cannot start" in done.stderr and "written by edge-agent 9.9.9" in done.stderr
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest
