"""What the agent tells about itself: the birth message's inventory, the status snapshot that
`edge-agent status` and the live view show (state_dir/status.json), and the metrics topic."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Protocol

import orjson

from agent import __version__
from agent.core import boundary as boundaries
from agent.core import loopwatch
from agent.core.model import now_ms
from agent.core.stats import percentiles

if TYPE_CHECKING:
    from agent.commands import CommandChannel
    from agent.config import AgentConfig
    from agent.core.driver import Driver, Runner
    from agent.health import HealthSampler
    from agent.outbox import Outbox
    from agent.pipeline import DevicePipeline
    from agent.uplink import MqttUplink


class StatusSource(Protocol):
    """What the reports read (the Agent is one)."""

    config: "AgentConfig"
    boot_id: str
    started_ms: int
    outbox: "Outbox"
    uplink: "MqttUplink"
    pipeline: "DevicePipeline"
    runners: "list[Runner]"
    drivers: "dict[str, Driver]"       # the families of the configured devices, by driver name
    commands: "CommandChannel | None"
    health: "HealthSampler"


def birth(agent: StatusSource) -> dict[str, Any]:
    """The body of the retained birth message: the gateway and its device inventory."""
    gw = agent.config.gateway
    devices = []
    infos = agent.pipeline.infos
    for device in agent.config.all_devices:
        if device.id not in infos:
            continue
        info = infos[device.id]
        devices.append({
            "id": device.id, "kind": device.kind or info.kind, "driver": device.driver,
            "name": device.name,
            "location": device.location.model_dump() if device.location else None,
            "points": [{"name": p.name, "unit": p.unit, "type": p.type, "writable": p.writable}
                       for p in info.points],
        })
    return {"site": gw.site, "name": gw.name,
            "location": gw.location.model_dump() if gw.location else None,
            "agent": __version__, "boot": agent.boot_id, "devices": devices}


def snapshot(agent: StatusSource) -> dict[str, Any]:
    """Everything `edge-agent status` and the live view show."""
    stats = agent.outbox.stats()
    now = now_ms()
    device_stats: dict[str, dict[str, Any]] = {}
    for runner in agent.runners:
        device_stats.update(runner.stats())
    devices = {}
    for device_id, device in agent.pipeline.devices.items():
        entry = device.as_dict()
        extra = device_stats.get(device_id)
        if extra:
            entry["driver_stats"] = extra
            entry["errors"] = max(entry["errors"], int(extra.get("errors", 0)))
        devices[device_id] = entry
    return {
        "gateway": agent.config.gateway.id, "site": agent.config.gateway.site,
        "agent": __version__, "pid": os.getpid(), "boot": agent.boot_id,
        "started_ms": agent.started_ms, "ts": now,
        "uplink": agent.uplink.stats.as_dict()
        | {"ack_latency_ms": percentiles(agent.uplink.ack_latency_ms, (0.50, 0.99))},
        "buffer": {
            "path": str(agent.config.buffer.path), "depth": stats.depth, "bytes": stats.bytes,
            "max_bytes": agent.config.buffer.max_bytes,
            "oldest_age_s": None if stats.oldest_ms is None else round((now - stats.oldest_ms) / 1000, 1),
            "depth_by_priority": {p.name.lower(): n for p, n in stats.depth_by_priority.items()},
            "evictions": {p.name.lower(): n for p, n in stats.evictions.items()},
            "write_errors": stats.write_errors, "last_seq": stats.last_seq,
        },
        "devices": devices,
        "events": list(agent.pipeline.recent_events),   # the latest few, newest last
        "boundaries": boundaries.snapshot(),   # unexpected failures per kind of outside input
        **({"loop": watch.as_dict()} if (watch := loopwatch.current()) is not None else {}),
        **({"commands": agent.commands.stats.as_dict()} if agent.commands is not None else {}),
    }


def metrics(agent: StatusSource, *, health: bool = True) -> dict[str, Any]:
    """The body of a metrics message: the gateway's health, the snapshot's main figures, and the
    blocks each family adds from its devices' figures (the cameras' ``inference``). ``health=False``
    leaves out cpu, memory and disk (a sample resets the CPU window the metrics topic reports)."""
    snap = snapshot(agent)
    extra = {"commands": snap["commands"]} if "commands" in snap else {}
    for name, driver in agent.drivers.items():
        stats = {d: s.get("driver_stats") or {} for d, s in snap["devices"].items() if s["driver"] == name}
        extra.update(driver.metrics(stats))
    return {
        **extra,
        **(agent.health.sample() if health else {}),
        "buffer": {k: snap["buffer"][k] for k in ("depth", "bytes", "oldest_age_s", "evictions", "write_errors")},
        "uplink": {k: snap["uplink"][k] for k in ("state", "connects", "published", "acked", "rejected")},
        "devices": {d: {"online": bool(s["online"]), "errors": s["errors"], "last_read_ms": s["last_read_ms"],
                        "readings": s["readings"]} for d, s in snap["devices"].items()},
        "boundaries": {name: b["failures"] for name, b in snap["boundaries"].items()},
        **({"loop": {k: snap["loop"][k] for k in ("max_callback_ms", "over_budget", "budget_ms")}}
           if "loop" in snap else {}),
    }


def status_line(snap: dict[str, Any]) -> str:
    """One line for `systemctl status` (sd_notify STATUS=): uplink, buffer, devices."""
    buffer = snap["buffer"]
    oldest = f", oldest {buffer['oldest_age_s']:.0f}s" if buffer["depth"] and buffer["oldest_age_s"] is not None else ""
    online = sum(1 for d in snap["devices"].values() if d.get("online"))
    return (f"uplink {snap['uplink'].get('state', '?')}, {buffer['depth']} buffered{oldest}, "
            f"{online}/{len(snap['devices'])} devices online")


def write_status(agent: StatusSource, **override: Any) -> dict[str, Any]:
    """Atomically replace state_dir/status.json, which `edge-agent status` reads; returns what it wrote."""
    state_dir = agent.config.agent.state_dir
    current = snapshot(agent)
    for key, value in override.items():
        current[key] = {**current.get(key, {}), **value} if isinstance(value, dict) else value
    tmp = state_dir / ".status.json.tmp"
    tmp.write_bytes(orjson.dumps(current, option=orjson.OPT_INDENT_2))
    os.replace(tmp, state_dir / "status.json")   # readers never see a half-written file
    return current
    return current
