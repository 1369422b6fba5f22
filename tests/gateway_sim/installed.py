"""The edge agent as the package installs it on a scratch machine: what a technician edits and
what the service leaves behind, seen from the test."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import orjson
import yaml

from tests.gateway_sim.machine import ScratchMachine

UNIT = "edge-agent.service"
CONFIG = "/etc/edge-agent/config.yaml"
STATE_DIR = "/var/lib/edge-agent"
OUTBOX = f"{STATE_DIR}/outbox.db"
# The test suite times the agent's callbacks on the CPU clock (conftest.py); the service gets it
# the way a technician changes a unit, with a drop-in.
LOOP_CLOCK_DROPIN = "/etc/systemd/system/edge-agent.service.d/test-loop-clock.conf"


def gateway_machine(directory: Path, *, opt_size: str | None = None) -> ScratchMachine:
    """A scratch machine as a gateway is: Docker's policy-rc.d (which forbids starting services in
    an image build) does not exist on one."""
    machine = ScratchMachine(directory, opt_size=opt_size)
    machine.run("rm", "-f", "/usr/sbin/policy-rc.d", check=True)
    machine.write(LOOP_CLOCK_DROPIN, "[Service]\nEnvironment=EDGE_AGENT_LOOP_CLOCK=cpu\n")
    return machine


# What postinst gave /etc/edge-agent before config.apply could write there (root's directory and
# config): the dpkg-statoverride entries an existing gateway carries into its next upgrade.
OVERRIDES_BEFORE_CONFIG_APPLY = {"/etc/edge-agent": ("root", "edge-agent", "0750"), CONFIG: ("root", "edge-agent", "0640")}


def as_installed_before_config_apply(machine: ScratchMachine) -> None:
    for path, (owner, group, mode) in OVERRIDES_BEFORE_CONFIG_APPLY.items():
        machine.run("dpkg-statoverride", "--remove", path, check=True)
        machine.run("dpkg-statoverride", "--update", "--add", owner, group, mode, path, check=True)


def modes(machine: ScratchMachine, *paths: str) -> list[str]:
    """``PATH OWNER GROUP MODE`` of each, as `stat` shows them on the machine."""
    return machine.run("stat", "-c", "%n %U %G %a", *paths, check=True).stdout.splitlines()


def write_config(machine: ScratchMachine, *, gateway: str, broker_port: int, devices: list[dict[str, Any]] = (),
                 cameras: list[dict[str, Any]] = (), **agent: Any) -> dict[str, Any]:
    """Replace the conftest config as a technician would (sudoedit keeps its owner and mode)."""
    config = {
        "gateway": {"id": gateway, "site": "lab", "location": {"lat": 30.27, "lon": 120.15}},
        "uplink": {"mqtt": {"host": "127.0.0.1", "port": broker_port}},
        "buffer": {"path": OUTBOX, "max_bytes": "64MiB"},
        "agent": {"state_dir": STATE_DIR, "metrics_interval": "5s", "status_interval": "200ms", **agent},
        "devices": list(devices),
    }
    if cameras:
        config["cameras"] = list(cameras)
    machine.path(CONFIG).write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True))
    return config


def status(machine: ScratchMachine) -> dict[str, Any] | None:
    try:
        return orjson.loads(machine.path(f"{STATE_DIR}/status.json").read_bytes())
    except (FileNotFoundError, orjson.JSONDecodeError):
        return None


def wait_for_status(machine: ScratchMachine, predicate, timeout: float = 15.0) -> dict[str, Any]:
    """The running service's status once ``predicate(status)`` holds (status.json names its pid)."""
    deadline = time.monotonic() + timeout
    snapshot = None
    while time.monotonic() < deadline:
        snapshot = status(machine)
        if snapshot is not None and snapshot.get("pid") == main_pid(machine) and predicate(snapshot):
            return snapshot
        time.sleep(0.1)
    raise AssertionError(f"the service's status never matched; last: {snapshot}\n{machine.journal()[-3000:]}")


def main_pid(machine: ScratchMachine) -> int | None:
    path = machine.path(f"/run/systemd-sim/{UNIT}.pid")
    return int(path.read_text()) if path.exists() else None


# Read inside the machine as the service user: a reader may create the -wal/-shm files of a WAL
# database, and root-owned ones would lock the service out of its own outbox.
_READ_OUTBOX = """
import json, sqlite3, sys
conn = sqlite3.connect(sys.argv[1])
print(json.dumps({"rows": {seq: payload.decode("utf-8", "replace") for seq, payload in conn.execute(
    "SELECT id, payload FROM messages")}, "meta": dict(conn.execute("SELECT key, value FROM meta"))}))
"""


def read_outbox(machine: ScratchMachine) -> tuple[dict[int, str], dict[str, str]]:
    """(seq -> payload, meta) of the outbox, as an independent reader sees them."""
    done = machine.run("/usr/bin/python3.11", "-c", _READ_OUTBOX, OUTBOX, user="edge-agent", check=True)
    found = orjson.loads(done.stdout)
    return {int(seq): payload for seq, payload in found["rows"].items()}, found["meta"]
