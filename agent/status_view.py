"""Renders an agent snapshot (status.json) for a technician: `edge-agent status` and the live view."""

from __future__ import annotations

import time
from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text


def _age(ms: int | None, now_ms: int) -> str:
    if ms is None:
        return "never"
    seconds = max(0.0, (now_ms - ms) / 1000)
    if seconds < 120:
        return f"{seconds:.1f}s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m ago"
    return f"{seconds / 3600:.1f}h ago"


def _bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _value(point: str, value: Any, unit: str | None, quality: str) -> str:
    if isinstance(value, float):
        value = f"{value:.4g}"
    text = f"{point}={value}{unit or ''}"
    return text if quality == "good" else f"{text}({quality})"


SEVERITY_STYLE = {"critical": "bold white on red", "major": "bold red", "minor": "yellow", "info": "dim"}


def _health(snapshot: dict[str, Any]) -> Text:
    """Inputs whose handling failed, per boundary, and how long the event loop was held at most."""
    line = Text("inputs ", "dim")
    failed = {name: b for name, b in (snapshot.get("boundaries") or {}).items() if b["failures"]}
    if not failed:
        line.append("no failures", "green")
    for name, b in failed.items():
        line.append(f"{name} ", "")
        line.append(f"{b['failures']} failed", "red")
        line.append("  ")
    loop = snapshot.get("loop")
    if loop:
        over = loop["over_budget"]
        line.append("  event loop ", "dim")
        line.append(f"longest {loop['max_callback_ms']:.0f} ms", "red" if over else "")
        line.append(f", {over} over {loop['budget_ms']} ms", "red" if over else "dim")
    for name, b in failed.items():
        if b.get("last_error"):
            line.append(f"\n  {name}: {b['last_error']}", "red")
    return line


def render(snapshot: dict[str, Any], *, now_ms: int | None = None) -> Group:
    now = now_ms or int(time.time() * 1000)
    up = snapshot["uplink"]
    buf = snapshot["buffer"]
    state_style = {"connected": "green", "refused": "bold red"}.get(up["state"], "yellow")
    header = Text.assemble(
        ("gateway ", "dim"), (snapshot["gateway"], "bold"), ("  site ", "dim"), snapshot["site"],
        ("  agent ", "dim"), snapshot["agent"], ("  pid ", "dim"), str(snapshot["pid"]),
        ("  up ", "dim"), _age(snapshot["started_ms"], now).removesuffix(" ago"))
    uplink = Text.assemble(
        ("uplink ", "dim"), (up["state"], state_style), "  ", up["broker"],
        ("  MQTT ", "dim"), up.get("protocol") or "-",
        ("  published ", "dim"), str(up["published"]), ("  acked ", "dim"), str(up["acked"]),
        ("  in flight ", "dim"), str(up["inflight"]))
    if up.get("last_error") and up["state"] != "connected":
        uplink.append(f"\n  last error: {up['last_error']}", style="red")
    evicted = sum(buf["evictions"].values())
    oldest = "-" if buf["oldest_age_s"] is None else f"{buf['oldest_age_s']:.1f}s"
    buffer = Text.assemble(
        ("buffer ", "dim"), f"{buf['depth']} unsent", ("  ", ""), _bytes(buf["bytes"]),
        (" of ", "dim"), _bytes(buf["max_bytes"]), ("  oldest unsent ", "dim"), oldest,
        ("  evicted ", "dim"), (str(evicted), "red" if evicted else ""),
        ("  write errors ", "dim"), (str(buf["write_errors"]), "red" if buf["write_errors"] else ""))
    table = Table(expand=False, pad_edge=False, box=None, header_style="bold")
    for column in ("device", "kind", "state", "last reading"):
        table.add_column(column, no_wrap=True)
    table.add_column("latest values", no_wrap=True, max_width=64, overflow="ellipsis")
    for column in ("read", "sent", "errors"):
        table.add_column(column, justify="right", no_wrap=True)
    for device_id, dev in snapshot["devices"].items():
        state = {True: Text("online", "green"), False: Text("OFFLINE", "bold red"),
                 None: Text("waiting", "yellow")}[dev["online"]]
        latest = Text(" ".join(_value(*entry) for entry in dev.get("latest", [])[:4]), overflow="ellipsis")
        if dev["online"] is False and dev.get("last_error"):
            latest = Text(dev["last_error"][:70], "red")
        table.add_row(device_id, dev["kind"], state, _age(dev["last_read_ms"], now), latest,
                      str(dev["readings"]), str(dev["sent"]), str(dev["errors"]))
    parts = [header, uplink, buffer, _health(snapshot), Text(""), table]
    events = snapshot.get("events") or []
    if events:
        parts.append(Text("\nrecent events", "bold"))
        for event in reversed(events):   # newest first
            parts.append(Text.assemble(
                (f"  {_age(event['ts'], now):>9}  ", "dim"),
                (f"{event['severity']:<8}", SEVERITY_STYLE.get(event["severity"], "")),
                f" {event['type']}", (" on ", "dim"), event["device"]))
    return Group(*parts)
