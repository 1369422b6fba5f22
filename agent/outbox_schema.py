"""The outbox file's schema version and the migrations between versions.

``meta.schema`` says which layout a file has. An agent

* opens a file of its own version as it is;
* migrates an older file forward one step at a time, each step one transaction that also records
  the version it reached: a crash, a power cut or a full disk leaves the file at the last completed
  step (with every message it held), never half-migrated, and the next start carries on from there;
* refuses a newer file (written by a newer agent, then downgraded) before writing anything to it:
  it cannot know what the newer layout means, and the newer agent can still send what it holds.

A new file is created at version 1 and migrated like any other, so every migration runs on every
new outbox, in every test.

To change the layout: append a :class:`Migration` whose ``to_version`` is one above the last. An
older agent then refuses the files this one wrote, so bump it only for changes an older agent
would misread; a new ``meta`` key that older agents may ignore needs no migration.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

FIRST_VERSION = 1   # what the first release wrote, and what a new file starts at


@dataclass(frozen=True, slots=True)
class Migration:
    to_version: int
    what: str                                   # one line for the log: what changes and why
    apply: Callable[[sqlite3.Connection], None]  # runs inside the step's transaction; must not COMMIT


# None yet: every outbox in the field is at version 1.
MIGRATIONS: list[Migration] = []


def current_version() -> int:
    """The version this agent writes. Read at call time: the list is the only place it is set."""
    return MIGRATIONS[-1].to_version if MIGRATIONS else FIRST_VERSION


class SchemaTooNew(Exception):
    """The file was written by a newer agent; nothing was written to it."""


class MigrationFailed(Exception):
    """A step failed and was rolled back; the file is at ``version``, with everything it held."""

    def __init__(self, version: int, target: int, cause: sqlite3.Error):
        self.version = version
        self.target = target
        self.cause = cause
        super().__init__(f"migrating it from schema {version} to {target} failed ({cause})")


def check_readable(found: int, written_by: str | None) -> None:
    """Raise :class:`SchemaTooNew` with what a technician needs to know when ``found`` is newer."""
    current = current_version()
    if found <= current:
        return
    from agent import __version__
    if written_by:
        by, again = f"edge-agent {written_by}", f"edge-agent {written_by} or newer"
    else:
        by, again = "a newer edge-agent", "the newer edge-agent"
    raise SchemaTooNew(
        f"outbox schema {found} was written by {by}; this edge-agent ({__version__}) reads schema "
        f"{current} at most. The file was left untouched: install {again} again to send what it "
        f"holds, or move the file aside to start with an empty outbox (its messages would then "
        f"never be sent)")


def migrate(conn: sqlite3.Connection, path: Path, found: int, set_version: str) -> int:
    """Bring the file at ``found`` up to :func:`current_version`, one transaction per step.

    ``set_version`` is the statement that stores the version in ``meta`` (parameters: value, key).
    Returns the version reached. Raises :class:`MigrationFailed` when a step fails; the steps
    before it stay committed.
    """
    steps = [m for m in MIGRATIONS if m.to_version > found]
    if not steps:
        return found
    target = steps[-1].to_version
    log.info("outbox %s: migrating from schema %d to %d", path, found, target)
    version = found
    for step in steps:
        if step.to_version != version + 1:
            raise RuntimeError(f"outbox migrations skip from {version} to {step.to_version}: the list is wrong")
        started = time.monotonic()
        try:
            conn.execute("BEGIN IMMEDIATE")
            step.apply(conn)
            conn.execute(set_version, (str(step.to_version), "schema"))
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if conn.in_transaction:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:   # SQLite may have rolled back already (FULL, IOERR)
                    pass
            raise MigrationFailed(version, step.to_version, exc) from exc
        version = step.to_version
        log.info("outbox %s: schema %d (%s) in %.1fs", path, version, step.what, time.monotonic() - started)
    return version
