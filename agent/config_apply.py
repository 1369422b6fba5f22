"""`config.apply`: a new config from the centre, validated, applied, and rolled back by itself if
it does not come up.

The steps survive a restart of the agent because they are written down in
``state_dir/config_apply.json``:

1. ``applying``: the new file was validated (``load_config``, profiles included), the running
   config saved as ``<config>.previous``, the new one moved into place, the agent restarted on it.
2. The restarted agent watches the marker: once its uplink is connected (the new config can reach
   the centre, which is what "comes up" means for a gateway) the request is answered ``ok``.
   If the deadline passes first, or the new config cannot even start, the previous file is put
   back, the marker becomes ``rolled_back`` and the agent restarts on the old config.
3. On the old config, once connected, the request is answered with the reason it was rolled back.

Some keys are not the centre's to change, because a command could then hide its own traces or
lock the centre out for good: the gateway id, the buffer path, the state directory (audit log,
replay cache), the ``commands`` section and the ``web`` console's (its accounts). Those change on site, by a technician.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import time
from pathlib import Path
from collections.abc import Callable
from typing import Any

import orjson
import yaml

from agent.config import AgentConfig, load_config
from agent.core.commands import Refused
from agent.core.config import ConfigError
from agent.core.state import replace_durably, sync_directory, write_synced

log = logging.getLogger("agent.config_apply")

MARKER = "config_apply.json"
DEFAULT_DEADLINE_S = 60.0


def _locked_keys(old: AgentConfig, new: AgentConfig) -> list[str]:
    changed = []
    if old.gateway.id != new.gateway.id:
        changed.append("gateway.id")
    if old.buffer.path != new.buffer.path:
        changed.append("buffer.path")
    if old.agent.state_dir != new.agent.state_dir:
        changed.append("agent.state_dir")
    if old.commands != new.commands:
        changed.append("commands")
    if old.web != new.web:   # the console's accounts: a command must not add one for itself
        changed.append("web")
    return changed


def prepare(config: AgentConfig, config_path: Path | None, request_id: str, args: dict[str, Any]) -> None:
    """Validate and install the new config. Raises Refused. Blocking work (YAML, profiles and
    models checked, files written: 50-150 ms of CPU for a config of a few KiB), run in a worker
    thread by the agent (Agent.apply_config); the caller then restarts on it."""
    if config_path is None:
        raise Refused("unsupported", "this agent was not started from a config file")
    text = args.get("yaml")
    if text is None and isinstance(args.get("config"), dict):
        text = yaml.safe_dump(args["config"], sort_keys=False)
    if not isinstance(text, str) or not text.strip():
        raise Refused("bad_args", "give the new config as 'yaml' (text) or 'config' (an object)")
    deadline_s = args.get("deadline_s", DEFAULT_DEADLINE_S)
    if not isinstance(deadline_s, (int, float)) or not 5 <= deadline_s <= 600:
        raise Refused("bad_args", "deadline_s must be between 5 and 600 seconds")
    state_dir = config.agent.state_dir
    if (state_dir / MARKER).exists():
        raise Refused("busy", "another config.apply is still in progress")

    path = config_path
    candidate = path.with_name(path.name + ".new")
    try:
        write_synced(candidate, text.encode())
    except OSError as exc:
        raise Refused("unsupported", _cannot_write(path, exc)) from None
    try:
        new = load_config(candidate)
    except ConfigError as exc:
        candidate.unlink(missing_ok=True)
        raise Refused("invalid_config", "; ".join(p.replace(str(candidate), "config") for p in exc.problems)) from None
    locked = _locked_keys(config, new)
    if locked:
        candidate.unlink(missing_ok=True)
        raise Refused("locked_keys", f"config.apply may not change {', '.join(locked)}: change them on site")

    try:
        shutil.copy2(path, path.with_name(path.name + ".previous"))
        os.replace(candidate, path)   # atomic: a power cut leaves the old config or the new one
    except OSError as exc:
        candidate.unlink(missing_ok=True)
        raise Refused("unsupported", _cannot_write(path, exc)) from None
    sync_directory(path.parent)
    _write_marker(state_dir, {"id": request_id, "state": "applying",
                              "deadline_ms": int((time.time() + deadline_s) * 1000)})
    log.warning("config.apply %s: new config installed at %s; restarting on it", request_id, path)


async def watch(config: AgentConfig, config_path: Path | None, connected: Callable[[], bool],
                answer: Callable[[str, bool, Any], None], restart: Callable[[], None]) -> None:
    """Run in every agent: finish a config.apply that a previous instance started."""
    state_dir = config.agent.state_dir
    marker = _read_marker(state_dir)
    if marker is None:
        return
    if marker["state"] == "applying":
        remaining = marker["deadline_ms"] / 1000 - time.time()
        if await _connected_within(connected, remaining):
            answer(marker["id"], True, {"applied": True})
            _clear_marker(state_dir)
            log.warning("config.apply %s: the new config is up", marker["id"])
            return
        roll_back(config_path, state_dir, marker, "the uplink did not connect before the deadline")
        restart()
    elif marker["state"] == "rolled_back":
        if await _connected_within(connected, 3600):
            answer(marker["id"], False, {"code": "rolled_back", "message": marker["reason"]})
            _clear_marker(state_dir)


def roll_back(config_path: Path | None, state_dir: Path, marker: dict[str, Any], reason: str) -> None:
    """Put the previous config back. Also called by the CLI when the new config cannot start."""
    if config_path is not None:
        previous = config_path.with_name(config_path.name + ".previous")
        if previous.exists():
            os.replace(previous, config_path)
    _write_marker(state_dir, {**marker, "state": "rolled_back", "reason": reason})
    log.error("config.apply %s rolled back: %s", marker["id"], reason)


def in_progress(state_dir: Path) -> dict[str, Any] | None:
    """The marker of an apply not yet answered (applying, or rolled back and not yet reported)."""
    return _read_marker(state_dir)


def pending(state_dir: Path) -> dict[str, Any] | None:
    marker = _read_marker(state_dir)
    return marker if marker is not None and marker.get("state") == "applying" else None


async def _connected_within(connected: Callable[[], bool], seconds: float) -> bool:
    deadline = time.monotonic() + max(0.0, seconds)
    while time.monotonic() < deadline:
        if connected():
            return True
        await asyncio.sleep(0.2)
    return connected()


def _cannot_write(path: Path, exc: OSError) -> str:
    # the packaged unit lets the agent write its config's directory (packaging/README.md says how);
    # a unit or a directory changed on site may not
    return (f"the agent cannot write its config {path} ({exc.strerror}): the service must be able to write "
            f"{path.parent} and own the config (the package's unit and modes let it; a file moved there by root "
            f"is root's: sudo chown edge-agent:edge-agent {path}); apply it on site")


def _write_marker(state_dir: Path, marker: dict[str, Any]) -> None:
    # durable: after a power cut mid-apply the next start must still find it and finish or roll back
    replace_durably(state_dir / MARKER, orjson.dumps(marker))


def _read_marker(state_dir: Path) -> dict[str, Any] | None:
    try:
        return orjson.loads((state_dir / MARKER).read_bytes())
    except (FileNotFoundError, orjson.JSONDecodeError):
        return None


def _clear_marker(state_dir: Path) -> None:
    (state_dir / MARKER).unlink(missing_ok=True)
