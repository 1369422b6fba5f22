"""Config loading: every problem named with file, key path, line and what was expected."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from agent.core.config import ConfigError, Secret
from agent.config import load_config
from agent.core.units import parse_duration, parse_size

REPO = Path(__file__).resolve().parents[1]

GOOD = """\
gateway: {id: gw-01, site: hz, location: {lat: 30.27, lon: 120.15}}
uplink: {mqtt: {host: 127.0.0.1, port: 1883}}
buffer: {path: /tmp/outbox.db, max_bytes: 64MiB}
devices:
  - id: aq-01
    driver: modbus
    connection: {type: tcp, host: 127.0.0.1, port: 5020}
    unit: 1
    profile: air_monitor_rs485
    poll: 1s
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gw.yaml"
    path.write_text(text)
    return path


def problems(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return info.value.problems


def test_good_config_loads(tmp_path):
    config = load_config(write(tmp_path, GOOD))
    assert config.gateway.id == "gw-01"
    assert config.buffer.max_bytes == 64 * 2**20
    device = config.devices[0]
    assert device.poll == 1.0
    assert device.options.unit == 1


def test_shipped_example_config_is_valid():
    config = load_config(REPO / "config" / "example.yaml")
    assert len(config.devices) == 4
    assert config.uplink.mqtt.password is not None


def test_wrong_type_names_file_key_and_line(tmp_path):
    path = write(tmp_path, GOOD.replace("port: 1883", "port: eighteen"))
    [problem] = problems(path)
    assert problem.startswith(f"{path}:2: uplink.mqtt.port: ")
    assert "integer" in problem


def test_every_problem_is_reported_at_once(tmp_path):
    text = GOOD.replace("id: gw-01", "id: 'gw 01'").replace("max_bytes: 64MiB", "max_bytes: lots")
    text += "bogus_section: 1\n"
    found = problems(write(tmp_path, text))
    assert any("gateway.id" in p and "pattern" in p for p in found), found
    assert any("buffer.max_bytes" in p and "expected a size" in p for p in found), found
    assert any("bogus_section: unknown key" in p for p in found), found


def test_driver_options_are_checked_with_key_path(tmp_path):
    path = write(tmp_path, GOOD.replace("unit: 1", "unit: 0").replace("port: 5020", "port: 70000"))
    found = problems(path)
    assert any(p.startswith(f"{path}:8: devices[0].unit") for p in found), found
    assert any("devices[0].connection" in p and "port" in p for p in found), found


def test_unknown_driver_lists_the_known_ones(tmp_path):
    [problem] = problems(write(tmp_path, GOOD.replace("driver: modbus", "driver: modbsu")))
    assert "devices[0].driver: unknown driver 'modbsu'" in problem
    assert "modbus" in problem.split("expected one of:")[1]


def test_missing_profile_is_named(tmp_path):
    [problem] = problems(write(tmp_path, GOOD.replace("air_monitor_rs485", "no_such_meter")))
    assert "devices[0]" in problem and "no_such_meter" in problem


def test_duplicate_device_ids(tmp_path):
    text = GOOD + GOOD.split("devices:\n")[1]
    assert any("used twice" in p for p in problems(write(tmp_path, text)))


def test_yaml_syntax_error_has_line(tmp_path):
    path = write(tmp_path, GOOD.replace("poll: 1s", "poll: [1s"))
    [problem] = problems(path)
    assert problem.startswith(f"{path}:") and "not valid YAML" in problem


def test_unreadable_file(tmp_path):
    [problem] = problems(tmp_path / "absent.yaml")
    assert "absent.yaml" in problem and "cannot be read" in problem


def test_secret_from_file_and_env_never_shown(tmp_path, monkeypatch):
    secret_file = tmp_path / "pw"
    secret_file.write_text("s3cret\n")
    secret_file.chmod(0o644)
    with pytest.raises(ConfigError, match="readable by every user .*chmod o-rwx"):
        Secret(file=secret_file).reveal()
    secret_file.chmod(0o640)
    assert Secret(file=secret_file).reveal() == "s3cret"
    assert "s3cret" not in repr(Secret(file=secret_file))
    monkeypatch.setenv("EDGE_PW", "hunter2")
    assert Secret(env="EDGE_PW").reveal() == "hunter2"
    with pytest.raises(ConfigError, match="EDGE_PW_MISSING"):
        Secret(env="EDGE_PW_MISSING").reveal()
    with pytest.raises(ConfigError, match="cannot be read"):
        Secret(file=tmp_path / "nope").reveal()


def test_secret_needs_exactly_one_source(tmp_path):
    text = GOOD.replace("port: 1883}", "port: 1883, username: u, password: {file: /x, env: Y}}")
    assert any("uplink.mqtt.password" in p and "exactly one" in p for p in problems(write(tmp_path, text)))


def test_check_config_cli_exit_codes(tmp_path):
    good = write(tmp_path, GOOD)
    ok = subprocess.run([sys.executable, "-m", "agent", "check-config", str(good)],
                        capture_output=True, text=True, cwd=REPO)
    assert ok.returncode == 0, ok.stderr
    assert "OK" in ok.stdout and "aq-01" in ok.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text(GOOD.replace("unit: 1", "unit: x"))
    result = subprocess.run([sys.executable, "-m", "agent", "check-config", str(bad)],
                            capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 2
    assert f"{bad}:8: devices[0].unit" in result.stderr


@pytest.mark.parametrize("text,seconds", [("500ms", 0.5), ("1s", 1.0), ("2m", 120.0), ("1.5h", 5400.0), (3, 3.0)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text,size", [("64MiB", 64 * 2**20), ("2GiB", 2 * 2**30), ("500MB", 500 * 10**6), (4096, 4096)])
def test_sizes(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("bad", ["fast", "-1s", True, "1 fortnight"])
def test_bad_durations(bad):
    with pytest.raises(ValueError):
        parse_duration(bad)


def test_two_devices_with_one_unit_id_on_one_bus(tmp_path):
    second = GOOD.split("devices:\n")[1].replace("aq-01", "aq-02")
    [problem] = problems(write(tmp_path, GOOD + second))
    assert "aq-01 and aq-02 are both unit 1" in problem and str(tmp_path / "gw.yaml") in problem


def test_alarm_on_an_unknown_point(tmp_path):
    text = GOOD + "    alarms: [{point: pm2.5, above: 75}]\n"
    [problem] = problems(write(tmp_path, text))
    assert "devices[0].alarms[0].point: aq-01 has no point 'pm2.5'" in problem and "pm25" in problem
    assert load_config(write(tmp_path, GOOD + "    alarms: [{point: pm25, above: 75, for: 1h}]\n")).devices[0].alarms


def test_alarm_type_leaves_room_for_its_cleared_event(tmp_path):
    """``<type>.cleared`` must fit the contract's 64-character event type."""
    long_type = "a" * 57
    [problem] = problems(write(tmp_path, GOOD + f"    alarms: [{{point: pm25, above: 75, type: {long_type}}}]\n"))
    assert "devices[0].alarms[0].type" in problem
    assert load_config(write(tmp_path, GOOD + f"    alarms: [{{point: pm25, above: 75, type: {'a' * 56}}}]\n"))


def test_run_refuses_a_world_readable_secret_clearly(tmp_path):
    secret = tmp_path / "pw"
    secret.write_text("s3cret")
    secret.chmod(0o644)
    text = GOOD.replace("port: 1883}", f"port: 1883, username: gw, password: {{file: {secret}}}}}")
    text = text.replace("/tmp/outbox.db", str(tmp_path / "outbox.db"))
    text += f"agent: {{state_dir: {tmp_path / 'state'}}}\n"
    result = subprocess.run([sys.executable, "-m", "agent", "run", "-c", str(write(tmp_path, text))],
                            capture_output=True, text=True, cwd=REPO, timeout=30)
    assert result.returncode == 2, result.stderr
    assert "readable by every user" in result.stderr and "s3cret" not in result.stderr + result.stdout
    assert "Traceback" not in result.stderr


# -- regression cases as data (tests/cases/config/<what it pins>/) -----------------------------------

CONFIG_CASES = Path(__file__).resolve().parent / "cases" / "config"


LOADER_CASES = sorted(p.name for p in CONFIG_CASES.iterdir() if (p / "expected.json").exists())
CHECK_CASES = sorted(p.name for p in CONFIG_CASES.iterdir() if (p / "expected.txt").exists())


@pytest.mark.timeout(30)
@pytest.mark.parametrize("case", LOADER_CASES)
def test_config_case(case):
    """What the loader refuses: a ConfigError whose problems hold the expected text."""
    expected = json.loads((CONFIG_CASES / case / "expected.json").read_text())
    with pytest.raises(ConfigError) as err:
        load_config(CONFIG_CASES / case / "gateway.yaml")
    text = "\n".join(err.value.problems)
    for fragment in expected["problems_contain"]:
        assert fragment in text, (fragment, text[:2000])


@pytest.mark.timeout(60)
@pytest.mark.parametrize("case", CHECK_CASES)
def test_check_config_case(tmp_path, case):
    """What `edge-agent check-config` prints beyond the loader (files the agent reads only when it
    starts): exactly these lines, exit status 2, no traceback."""
    import shutil
    import subprocess
    import sys

    folder = tmp_path / case
    shutil.copytree(CONFIG_CASES / case, folder)
    for other in folder.iterdir():   # git keeps no file modes: secrets get theirs back here
        if other.name not in ("config.yaml", "expected.txt"):
            other.chmod(0o600)
    config = folder / "config.yaml"
    config.write_bytes(config.read_bytes().replace(b"{dir}", str(folder).encode()))
    expected = [line.replace("{file}", str(config)).replace("{dir}", str(folder))
                for line in (folder / "expected.txt").read_text().splitlines()]
    run = subprocess.run([sys.executable, "-m", "agent", "check-config", str(config)],
                         capture_output=True, text=True, timeout=60)
    assert "Traceback" not in run.stderr, run.stderr
    assert run.returncode == 2, (run.returncode, run.stderr)
    assert [line.strip() for line in run.stderr.splitlines()[1:]] == expected, run.stderr


def test_a_broken_file_is_lines_for_a_technician_from_the_command_line(tmp_path):
    """What check-config prints for a case: the problem lines alone, exit 2, no traceback."""
    import subprocess
    import sys

    config = CONFIG_CASES / "non-utf8-byte-is-named-with-file-and-line" / "gateway.yaml"
    run = subprocess.run([sys.executable, "-m", "agent", "check-config", str(config)],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr
    assert run.stderr.splitlines()[1:] == [f"  {config}:3: not UTF-8 (byte 0xe9 at column 13); save the file as UTF-8"]


def test_a_secret_file_that_is_not_text_is_named_without_its_bytes(tmp_path):
    from agent.core.config import ConfigError, Secret

    secret = tmp_path / "password"
    secret.write_bytes(b"\xff\xfehunter2\xff")
    secret.chmod(0o600)
    with pytest.raises(ConfigError) as raised:
        Secret(file=secret).reveal()
    assert raised.value.problems == [f"secret file {secret}: not UTF-8 text (a key or password is one line of text)"]
    assert "hunter2" not in str(raised.value)
