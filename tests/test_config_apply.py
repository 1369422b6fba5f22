"""config.apply from the centre: validated, applied with a restart, rolled back by itself when the
new config does not come up, and refused when invalid or when it touches keys kept for on site."""

from __future__ import annotations

import pytest
import yaml

from tests.agent_proc import AgentProcess, agent_config
from tests.hardware_sim.modbus_sim import ModbusSim

pytestmark = pytest.mark.timeout(90)

GW, SITE = "gw-apply", "lab"
KEY = b"k" * 32


@pytest.fixture
def running(tmp_path, broker, consumer_factory):
    key_file = tmp_path / "command.key"
    key_file.write_bytes(KEY)
    key_file.chmod(0o600)
    with ModbusSim("air_monitor_rs485", units=[1, 2], tcp=("127.0.0.1", 0)).run_in_thread() as sim:
        device = {"id": "aq-01", "driver": "modbus", "unit": 1, "profile": "air_monitor_rs485", "poll": "1s",
                  "connection": {"type": "tcp", "host": "127.0.0.1", "port": sim.tcp_address[1], "timeout": "300ms"}}
        config = agent_config(tmp_path, broker_port=broker.port, gateway=GW, site=SITE, devices=[device],
                              commands={"key": {"file": str(key_file)}, "allow": ["config.apply"]})
        centre = consumer_factory(gateway=GW, site=SITE)
        agent = AgentProcess(config, tmp_path / "agent.log").start()
        try:
            agent.wait_status(lambda s: s["uplink"]["state"] == "connected", 15)
            yield centre, agent, config
        finally:
            agent.stop()


def apply(centre, new_config: dict, **args):
    request = centre.send_command("config.apply", {"yaml": yaml.safe_dump(new_config), **args}, key=KEY)
    return request


def result(centre, request, timeout=10.0):
    centre.wait_for(lambda c: c.last("cmd_result", request["id"]), timeout)
    return centre.last("cmd_result", request["id"]).body


def test_valid_config_is_applied_after_a_restart(running):
    centre, agent, config = running
    new = yaml.safe_load(config.read_text())
    second = dict(new["devices"][0], id="aq-02", unit=2)
    new["devices"].append(second)
    request = apply(centre, new)
    answer = result(centre, request, 20)
    assert answer["ok"] is True, answer
    assert [d["id"] for d in centre.last("birth").body["devices"]] == ["aq-01", "aq-02"]
    assert "aq-02" in config.read_text()
    assert config.with_name(config.name + ".previous").exists()
    centre.wait_for(lambda c: c.readings("aq-02", "pm25"), 10)
    assert centre.invalid == []


def test_config_that_cannot_reach_the_centre_is_rolled_back(running):
    centre, agent, config = running
    original = config.read_text()
    new = yaml.safe_load(original)
    new["uplink"]["mqtt"]["port"] = 1   # nothing listens there
    request = apply(centre, new, deadline_s=5)
    answer = result(centre, request, 40)
    assert answer["ok"] is False and answer["error"]["code"] == "rolled_back", answer
    assert "did not connect" in answer["error"]["message"]
    assert config.read_text() == original


def test_invalid_config_is_refused_and_nothing_changes(running):
    centre, agent, config = running
    original = config.read_text()
    new = yaml.safe_load(original)
    new["devices"][0]["unit"] = 0
    answer = result(centre, apply(centre, new))
    assert answer["ok"] is False and answer["error"]["code"] == "invalid_config"
    assert "devices[0].unit" in answer["error"]["message"]
    assert config.read_text() == original


INTRUDER = "scrypt$16384$8$1$AAAAAAAAAAAAAAAAAAAAAA$" + "A" * 43


@pytest.mark.parametrize("change", [
    lambda c: c["gateway"].update(id="gw-other"),
    lambda c: c.update(commands={"allow": ["config.apply", "device.write"]}),
    lambda c: c["agent"].update(state_dir="/tmp/elsewhere"),
    # a console account of the centre's making: accounts are set on site
    lambda c: c.update(web={"accounts": [{"name": "intruder", "role": "admin", "password_hash": INTRUDER}]}),
])
def test_keys_kept_for_on_site_are_refused(running, change):
    centre, agent, config = running
    new = yaml.safe_load(config.read_text())
    change(new)
    answer = result(centre, apply(centre, new))
    assert answer["ok"] is False and answer["error"]["code"] == "locked_keys"


def test_a_config_of_16_kib_is_validated_off_the_event_loop(running):
    """Found by bench/fuzz.py: validating a signed config.apply of 14 KiB (YAML, 124 devices and
    their profiles) held the agent's event loop for 120 ms. It runs in a worker thread now; the
    agent's loop budget is checked when it stops (AgentProcess.stop)."""
    centre, agent, config = running
    new = yaml.safe_load(config.read_text())
    base = new["devices"][0]
    new["devices"] += [dict(base, id=f"aq-{unit:03d}", unit=unit) for unit in range(2, 125)]
    new["devices"][-1]["profile"] = "no_such_profile"   # everything is validated, then refused
    text = yaml.safe_dump(new)
    assert 10_000 < len(text) < 14_500   # the request stays under commands.max_bytes (16 KiB)
    answer = result(centre, apply(centre, new))
    assert answer["ok"] is False and answer["error"]["code"] == "invalid_config", answer
    assert "no_such_profile" in answer["error"]["message"]
    agent.wait_status(lambda s: s["commands"]["failed"] == 1 and not s["commands"]["refused"], 5)
