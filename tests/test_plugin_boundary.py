"""The plugin boundary, proved end to end: a family defined only in the tests
(tests/families/counter.py, named in the config by its dotted path) adds a point, a command and a
metrics figure, and the real agent, through a real broker, carries all three, while nothing under
agent/ names it. Also: the architecture's import rules (import-linter contracts in pyproject.toml)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.agent_proc import AgentProcess, agent_config

pytestmark = pytest.mark.timeout(90)

REPO = Path(__file__).resolve().parents[1]
GW, SITE = "gw-plugin", "lab"
KEY = b"plugin-boundary-key-0123456789abcdef"


def test_a_family_from_outside_adds_a_point_a_command_and_a_metrics_figure(tmp_path, broker, consumer_factory):
    key_file = tmp_path / "command.key"
    key_file.write_bytes(KEY)
    key_file.chmod(0o600)
    devices = [{"id": "ctr-01", "driver": "tests.families.counter", "poll": "200ms", "start": 100}]
    config = agent_config(tmp_path, broker_port=broker.port, gateway=GW, site=SITE, devices=devices,
                          agent={"metrics_interval": "1s"},
                          commands={"key": {"file": str(key_file)}, "allow": ["counter.reset", "device.read"]})
    centre = consumer_factory(gateway=GW, site=SITE)
    with AgentProcess(config, tmp_path / "agent.log") as agent:
        agent.wait_status(lambda s: s["uplink"]["state"] == "connected", 15)
        centre.wait_for(lambda c: c.last("birth") and len(c.readings("ctr-01", "count")) >= 3, 10, "counts")

        (device,) = centre.last("birth").body["devices"]
        assert (device["driver"], device["kind"]) == ("tests.families.counter", "counter")
        assert device["points"] == [{"name": "count", "unit": None, "type": "int32", "writable": False}]
        counts = [r.v for r in centre.readings("ctr-01", "count")]
        assert counts[:3] == [100, 101, 102]

        reset = centre.send_command("counter.reset", {"device": "ctr-01", "to": 7}, key=KEY)
        centre.wait_for(lambda c: c.last("cmd_result", reset["id"]), 5, "the reset's result")
        result = centre.last("cmd_result", reset["id"]).body
        assert result["ok"] is True and result["result"] == {"device": "ctr-01", "count": 7}, result
        centre.wait_for(lambda c: 7 in [r.v for r in c.readings("ctr-01", "count")], 5, "a count from 7")

        read = centre.send_command("device.read", {"device": "ctr-01", "point": "count"}, key=KEY)
        centre.wait_for(lambda c: c.last("cmd_result", read["id"]), 5, "the read's result")
        assert centre.last("cmd_result", read["id"]).body["result"]["p"] == "count"

        centre.wait_for(lambda c: any("counters" in m.body for m in c.messages("metrics")), 10, "metrics")
        figures = next(m.body for m in reversed(centre.messages("metrics")) if "counters" in m.body)
        assert figures["counters"]["ctr-01"]["resets"] == 1
        assert centre.invalid == []


def test_nothing_in_agent_names_a_family():
    """The test of the architecture (DESIGN.md): a family is one module; agent/ names none."""
    families = [p.name for root in ("drivers", "firmware_bridges") for p in (REPO / root).iterdir()
                if p.is_dir() and not p.name.startswith("_")] + ["tests.families", "counter"]
    # agent/demo.py is left out: the demo is a configuration of the bundled simulators of every
    # family (what `edge-agent demo` runs), not agent logic
    found = subprocess.run(["git", "grep", "-n", "-w", "-E", "|".join(families), "--", "agent/*.py",
                            "agent/**/*.py", ":!agent/demo.py"], cwd=REPO, capture_output=True, text=True).stdout
    # docstrings may name a family as an example; no import, call or attribute may
    code = [line for line in found.splitlines()
            if "import" in line.split(":", 2)[-1] or "get_driver(\"" in line or "driver ==" in line]
    assert code == [], "\n".join(code)


def test_import_contracts_hold():
    """import-linter's contracts (pyproject.toml): families import the core only, the core imports
    no family and nothing of the agent above it, and nothing imports agent.app but the runtime."""
    lint = Path(sys.executable).with_name("lint-imports")
    run = subprocess.run([str(lint), "--no-cache"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and "0 broken" in run.stdout, run.stdout + run.stderr
