"""Runs the real agent (`python -m agent run`) as a subprocess for end-to-end tests and benches."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import yaml

from tests.fakes import NotInTime, eventually

REPO = Path(__file__).resolve().parents[1]
# (ms, callback, test folder): the longest callback of each agent a test stopped, for the summary
LONGEST: list[tuple[float, str, str]] = []


def agent_config(tmp: Path, *, broker_port: int, devices: list[dict[str, Any]], gateway: str = "gw-test",
                 site: str = "lab", mqtt: dict[str, Any] | None = None, **sections: Any) -> Path:
    """Write a gateway config for a test and return its path."""
    config = {
        "gateway": {"id": gateway, "site": site, "location": {"lat": 30.27, "lon": 120.15}},
        "uplink": {"mqtt": {"host": "127.0.0.1", "port": broker_port, **(mqtt or {})}},
        "buffer": {"path": str(tmp / "outbox.db"), "max_bytes": "64MiB"},
        "agent": {"state_dir": str(tmp / "state"), "metrics_interval": "5s", "status_interval": "200ms",
                  "log": {"format": "text", "level": "info"}},
        "devices": devices,
    }
    for key, value in sections.items():
        config[key] = {**config.get(key, {}), **value}
    path = tmp / "gateway.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


class AgentProcess:
    def __init__(self, config: Path, log: Path, *, check_loop: bool = True):
        """``check_loop``: ``stop()`` fails when the agent's event loop went over its budget (tests;
        benches print the figures instead)."""
        self.config = config
        self.log_path = log
        self.check_loop = check_loop
        self.proc: subprocess.Popen[bytes] | None = None
        settings = yaml.safe_load(config.read_text())
        self.state_dir = Path(settings["agent"]["state_dir"])

    def start(self) -> "AgentProcess":
        self._log = open(self.log_path, "ab")
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen([sys.executable, "-m", "agent", "run", "-c", str(self.config)],
                                     cwd=REPO, stdout=self._log, stderr=subprocess.STDOUT, env=env)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def status(self) -> dict[str, Any] | None:
        try:
            snapshot = orjson.loads((self.state_dir / "status.json").read_bytes())
        except (FileNotFoundError, orjson.JSONDecodeError):
            return None
        return snapshot if snapshot.get("pid") == self.pid else None

    def wait_status(self, predicate, timeout: float = 15.0) -> dict[str, Any]:
        last: list[dict[str, Any] | None] = [None]

        def matching() -> dict[str, Any] | None:
            assert self.proc is not None and self.proc.poll() is None, f"agent exited: {self.log()}"
            snapshot = last[0] = self.status()
            return snapshot if snapshot is not None and predicate(snapshot) else None
        try:
            return eventually(matching, timeout, "the agent's status", every=0.05)
        except NotInTime:
            raise AssertionError(f"agent status never matched; last: {last[0]}\nlog:\n{self.log()}") from None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def kill(self) -> None:
        """SIGKILL: no cleanup at all, like a power cut for the process."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self, timeout: float = 15.0) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()
        if self.check_loop:
            self.check_loop_budget()
        return self.proc.returncode

    def check_loop_budget(self) -> None:
        """The agent's event loop kept its budget (agent/core/loopwatch.py; the tests set the CPU clock):
        the last status it wrote lists every callback over budget."""
        check_loop_budget(self.status(), str(self.config.parent.name))

    def __enter__(self) -> "AgentProcess":
        return self if self.proc is not None else self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def check_loop_budget(snapshot: dict[str, Any] | None, label: str) -> None:
    """Fail when an agent's last status lists callbacks over the loop budget; keep its longest
    callback for the run's summary (conftest.py)."""
    loop = (snapshot or {}).get("loop") or {}
    if loop.get("max_callback_ms") is not None:
        LONGEST.append((loop["max_callback_ms"], loop.get("max_callback") or "?", label))
    over = loop.get("worst") or []
    assert not over, (f"the agent held its event loop beyond the budget {len(over)} time(s): "
                      + "; ".join(f"{o['ms']} ms in {o['callback']}" for o in over))
