"""A family's own small durable state: one JSON document per key, in the agent's state directory.

For what a family must still know after the agent was killed (kill -9, a power cut): a GB/T 20999
signal controller's run mode and plan saved before a held stage, which the next run puts back.
Not for readings or events (those go through the DeviceSink to the outbox) and not for anything
large or frequent: each write is an fsync.

The agent hands each family its own store (``DeviceSink.store``), a directory
``<agent.state_dir>/families/<family>/``, one file ``<key>.json`` per key (keys are ids, e.g. a
device id). A write is atomic: a temporary file in the same directory, fsynced, renamed over the
old one, and the directory fsynced, so after a crash a key holds either its old or its new
document, never a mix. A document that cannot be read back (a disk fault, a hand edit) raises
:class:`StateUnreadable` for that key only.

The calls block on the disk: call them from a worker thread (``asyncio.to_thread``) on the
event loop.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson

from agent.core.config import ID_PATTERN

_KEY = re.compile(ID_PATTERN)
_SUFFIX = ".json"
FAMILIES_DIR = "families"   # under the agent's state directory, one directory per family


def write_synced(path: Path, data: bytes) -> None:
    """Write ``path`` and return once its bytes are on disk (not yet its name: see
    :func:`sync_directory`). A file renamed into place before its data is synced can come back
    empty after a power cut."""
    with open(path, "wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())


def sync_directory(directory: Path) -> None:
    """A rename or unlink in ``directory`` survives a power cut only once the directory is synced."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_durably(target: Path, data: bytes) -> None:
    """Replace ``target`` with ``data`` atomically and durably: a temporary file beside it (named
    ``.<name>.*.tmp``), synced, renamed over it, the directory synced. After a crash ``target``
    holds its old bytes or the new ones, never a mix. Raises OSError when the disk refuses."""
    target = Path(target)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.stem}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        write_synced(Path(tmp), data)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    sync_directory(target.parent)


class StateUnreadable(ValueError):
    """A key's file exists but does not hold a JSON object (it is left as it is)."""


class StateStore:
    """One family's documents by key. See the module docstring."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)

    @classmethod
    def of_family(cls, state_dir: Path, family: str) -> "StateStore":
        """The store of one family (its driver's name) under the agent's state directory."""
        if not _KEY.match(family) or family.startswith("."):
            raise ValueError(f"a family's name is an id ({ID_PATTERN}), not {family!r}")
        return cls(Path(state_dir) / FAMILIES_DIR / family)

    def path(self, key: str) -> Path:
        if not isinstance(key, str) or not _KEY.match(key) or key.startswith("."):
            raise ValueError(f"a state key is an id ({ID_PATTERN}), not {key!r}")
        return self.directory / f"{key}{_SUFFIX}"

    def put(self, key: str, document: Mapping[str, Any]) -> None:
        """Replace ``key``'s document atomically and durably. Raises OSError when the disk refuses
        (the old document, if any, is then unchanged)."""
        target = self.path(key)
        self.directory.mkdir(parents=True, exist_ok=True)
        replace_durably(target, orjson.dumps(dict(document), option=orjson.OPT_INDENT_2))

    def get(self, key: str) -> dict[str, Any] | None:
        """``key``'s document, None when there is none. Raises StateUnreadable when its file
        does not hold a JSON object, OSError when it cannot be read."""
        try:
            data = self.path(key).read_bytes()
        except FileNotFoundError:
            return None
        try:
            document = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise StateUnreadable(f"{self.path(key)}: not JSON ({exc})") from None
        if not isinstance(document, dict):
            raise StateUnreadable(f"{self.path(key)}: holds a {type(document).__name__}, not an object")
        return document

    def delete(self, key: str) -> None:
        """Remove ``key``'s document (nothing when there is none), durably."""
        try:
            self.path(key).unlink()
        except FileNotFoundError:
            return
        sync_directory(self.directory)

    def keys(self) -> list[str]:
        """The keys that have a document, sorted (temporary files of a write cut short are not keys)."""
        try:
            names = [p.name for p in self.directory.iterdir()]
        except FileNotFoundError:
            return []
        return sorted(n[:-len(_SUFFIX)] for n in names
                      if n.endswith(_SUFFIX) and not n.startswith(".") and _KEY.match(n[:-len(_SUFFIX)]))

def kept_state(state_dir: Path) -> dict[str, list[str]]:
    """Family name -> its keys, for every family with state under ``state_dir`` (the agent logs
    those whose family has no device configured: nothing else would read them)."""
    try:
        families = sorted(p for p in (Path(state_dir) / FAMILIES_DIR).iterdir() if p.is_dir())
    except OSError:
        return {}
    kept = {}
    for directory in families:
        with contextlib.suppress(OSError):
            keys = StateStore(directory).keys()
            if keys:
                kept[directory.name] = keys
    return kept
