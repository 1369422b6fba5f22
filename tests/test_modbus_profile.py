"""Device profiles: every shipped one loads, bad ones are explained, manual addressing converts."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

from agent.core.config import ConfigError
from agent.config import load_config
from agent.core.registry import get_driver
from drivers.modbus.profile import BUNDLED_DIR, load_profile

SHIPPED = sorted(p.stem for p in BUNDLED_DIR.glob("*.yaml"))


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip(), encoding="utf-8")
    return path


def problems_of(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_profile(str(path), [])
    return info.value.problems


def test_the_four_profiles_ship():
    assert {"air_monitor_rs485", "manhole_cover", "lamp_pole", "fire_panel_gateway"} <= set(SHIPPED)


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_profile_loads_and_says_its_addressing(name):
    profile = load_profile(name, [BUNDLED_DIR])
    assert profile.points and profile.kind
    text = (BUNDLED_DIR / f"{name}.yaml").read_text()
    assert re.search(r"#.*Addressing: (PROTOCOL|MANUAL)", text), "each profile documents its convention"
    for point in profile.points:
        assert 0 <= point.address <= 65535 and point.table


def test_air_monitor_map_is_the_one_the_simulator_serves():
    profile = load_profile("air_monitor_rs485", [BUNDLED_DIR])
    got = {p.name: (p.table, p.address, p.type, p.order, p.scale, p.bit, p.writable) for p in profile.points}
    hr = "holding_register"
    assert got == {
        "pm25": (hr, 0, "float32", "ABCD", 1.0, None, False),
        "pm10": (hr, 2, "float32", "ABCD", 1.0, None, False),
        "temperature": (hr, 4, "int16", "ABCD", 0.1, None, False),
        "humidity": (hr, 5, "uint16", "ABCD", 0.1, None, False),
        "pressure": (hr, 6, "uint16", "ABCD", 0.1, None, False),
        "so2": (hr, 7, "float32", "CDAB", 1.0, None, False),
        "no2": (hr, 9, "float32", "CDAB", 1.0, None, False),
        "co": (hr, 11, "float32", "CDAB", 1.0, None, False),
        "o3": (hr, 13, "float32", "CDAB", 1.0, None, False),
        "status_word": (hr, 15, "uint16", "ABCD", 1.0, None, False),
        "fan_fault": (hr, 15, "bool", "ABCD", 1.0, 0, False),
        "sensor_fault": (hr, 15, "bool", "ABCD", 1.0, 1, False),
        "uptime": (hr, 20, "uint32", "ABCD", 1.0, None, False),
        "report_interval": (hr, 30, "uint16", "ABCD", 1.0, None, True),
        "fan_on": ("coil", 0, "bool", "ABCD", 1.0, None, True),
    }
    pm25 = profile.point("pm25")
    assert (pm25.min, pm25.max, pm25.unit) == (0, 1000, "ug/m3")


def test_manual_addressing_converts_to_protocol_addresses():
    profile = load_profile("fire_panel_gateway", [BUNDLED_DIR])
    assert profile.addressing == "manual"
    by_name = {p.name: p for p in profile.points}
    assert (by_name["fire_alarm"].table, by_name["fire_alarm"].address) == ("discrete_input", 0)
    assert (by_name["system_status"].table, by_name["system_status"].address) == ("input_register", 0)
    assert (by_name["event_counter"].table, by_name["event_counter"].address) == ("input_register", 9)
    assert (by_name["heartbeat_interval"].table, by_name["heartbeat_interval"].address) == ("holding_register", 0)


def test_manual_addressing_edge_cases(tmp_path):
    path = write(tmp_path / "m.yaml", """
        model: m
        kind: test
        addressing: manual
        points:
          - {name: c, address: 1, type: bool}
          - {name: h6, address: 400101, type: uint16}
          - {name: i, address: 39999, type: uint16, table: input_register}
    """)
    profile = load_profile(str(path), [])
    assert [(p.table, p.address) for p in profile.points] == [
        ("coil", 0), ("holding_register", 100), ("input_register", 9998)]


def test_manual_address_of_wrong_table_names_file_key_and_line(tmp_path):
    path = write(tmp_path / "bad_manual.yaml", """
        model: m
        kind: test
        addressing: manual
        points:
          - {name: ok, address: 40001, type: uint16}
          - {name: wrong, address: 30005, type: uint16, table: holding_register}
          - {name: nonsense, address: 20001, type: uint16}
    """)
    problems = problems_of(path)
    assert any(p.startswith(f"{path}:6: points[1].address:") and "input register" in p for p in problems), problems
    assert any(p.startswith(f"{path}:7: points[2].address:") and "not a manual address" in p for p in problems), problems


def test_schema_errors_name_file_key_path_and_line(tmp_path):
    path = write(tmp_path / "bad.yaml", """
        model: broken
        kind: air_monitor
        points:
          - {name: a, table: holding_register, address: 0, type: float32}
          - {name: b, table: holding_register, address: 2, type: float33}
          - name: c
            table: holding_register
            address: 4
            type: string
          - {name: d, table: holding_register, address: 5, type: uint16, colour: red}
    """)
    problems = problems_of(path)
    assert any(p.startswith(f"{path}:5: points[1].type:") for p in problems), problems
    assert any(p.startswith(f"{path}:") and "points[2].length" in p and "string needs 'length'" in p
               for p in problems), problems
    assert any(p.startswith(f"{path}:10: points[3].colour: unknown key") for p in problems), problems


@pytest.mark.parametrize("points, key, message", [
    ("""
      - {name: a, table: holding_register, address: 0, type: uint16}
      - {name: a, table: holding_register, address: 1, type: uint16}""", "points[1].name", "used twice"),
    ("""
      - {name: a, table: coil, address: 0, type: uint16}""", "points[0].type", "type must be bool"),
    ("""
      - {name: a, table: holding_register, address: 0, type: bool}""", "points[0].bit", "needs 'bit'"),
    ("""
      - {name: a, table: holding_register, address: 0, type: float32}
      - {name: b, table: holding_register, address: 1, type: uint16}""", "points[1].address", "overlaps points[0]"),
    ("""
      - {name: w, table: holding_register, address: 3, type: uint16}
      - {name: b0, table: holding_register, address: 3, type: bool, bit: 0}
      - {name: b0b, table: holding_register, address: 3, type: bool, bit: 0}""", "points[2].bit", "already"),
    ("""
      - {name: f, table: holding_register, address: 3, type: float32}
      - {name: b0, table: holding_register, address: 4, type: bool, bit: 0}""", "points[1].address", "overlaps"),
    ("""
      - {name: a, table: input_register, address: 0, type: uint16, writable: true}""", "points[0].writable", "read-only"),
    ("""
      - {name: a, table: holding_register, address: 0, type: uint16, min: 10, max: 5}""", "points[0].max", "below min"),
    ("""
      - {name: a, table: holding_register, address: 0, type: uint16, bit: 3}""", "points[0].bit", "must be bool"),
    ("""
      - {name: a, table: holding_register, address: 0, type: float32, order: ACBD}""", "points[0].order", "unknown order"),
    ("""
      - {name: a, table: holding_register, address: 65535, type: float32}""", "points[0].address", "past the last"),
    ("""
      - {name: a, address: 0, type: uint16}""", "points[0].table", "required"),
    ("""
      - {name: a, table: holding_register, address: 0, type: uint16, scale: 0}""", "points[0].scale", "cannot be 0"),
])
def test_semantic_errors(tmp_path, points, key, message):
    path = tmp_path / "p.yaml"
    path.write_text("model: m\nkind: test\npoints:" + textwrap.dedent(points) + "\n")
    problems = problems_of(path)
    assert any(f": {key}: " in p and message in p and p.startswith(f"{path}:") for p in problems), problems


def test_missing_profile_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_profile("nope", [tmp_path, BUNDLED_DIR])
    assert "profile 'nope' not found" in info.value.problems[0] and "lamp_pole" in info.value.problems[0]
    assert isinstance(info.value, FileNotFoundError)


def test_yaml_syntax_error_names_line(tmp_path):
    path = write(tmp_path / "syntax.yaml", """
        model: m
        kind: test
        points:
          - {name: a, table: coil
    """)
    (problem,) = problems_of(path)
    assert problem.startswith(f"{path}:") and "not valid YAML" in problem


def gateway_config(tmp_path: Path, *extra: str) -> Path:
    lines = ["gateway: {id: gw-1, site: s-1}", "devices:", "  - id: dev-1", "    driver: modbus",
             "    connection: {type: tcp, host: 127.0.0.1, port: 1502, timeout: 300ms}", "    unit: 1"]
    path = tmp_path / "gw.yaml"
    path.write_text("\n".join(lines + [f"    {line}" for line in extra]) + "\n")
    return path


def test_config_resolves_profile_from_config_dir_before_bundled(tmp_path):
    write(tmp_path / "profiles" / "air_monitor_rs485.yaml", """
        # a site-specific override of the bundled profile
        model: local copy
        kind: air_monitor
        points:
          - {name: pm25, table: holding_register, address: 0, type: float32}
    """)
    config = load_config(gateway_config(tmp_path, "profile: air_monitor_rs485"))
    options = config.devices[0].options
    assert options.profile.model == "local copy"
    config = load_config(gateway_config(tmp_path, "profile: lamp_pole", "points: [voltage, lamp_on]"))
    info = get_driver("modbus").describe(config.devices[0])
    assert info.kind == "lamp_pole"
    assert [(p.name, p.type, p.writable) for p in info.points] == [("lamp_on", "bool", True), ("voltage", "uint16", False)]


def test_config_errors_for_profile_and_options(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(gateway_config(tmp_path, "profile: no_such_profile"))
    (problem,) = info.value.problems
    assert "devices[0].profile" in problem and "not found" in problem and "air_monitor_rs485" in problem

    with pytest.raises(ConfigError) as info:
        load_config(gateway_config(tmp_path, "profile: lamp_pole", "points: [voltage, volts]"))
    assert any("devices[0].points" in p and "volts" in p for p in info.value.problems)

    bad_profile = write(tmp_path / "profiles" / "broken.yaml", """
        model: m
        kind: test
        points:
          - {name: a, table: holding_register, address: 0, type: float33}
    """)
    with pytest.raises(ConfigError) as info:
        load_config(gateway_config(tmp_path, "profile: broken"))
    (problem,) = info.value.problems
    assert f"{bad_profile}:4: points[0].type" in problem and "devices[0]" in problem

    path = write(tmp_path / "gw2.yaml", """
        gateway: {id: gw-1, site: s-1}
        devices:
          - {id: d, driver: modbus, connection: {type: tcp, host: h, timeout: 20s}, unit: 0, profile: lamp_pole}
          - {id: e, driver: modbus, connection: {type: rtu, port: /dev/ttyS1, parity: X}, unit: 1, profile: lamp_pole}
    """)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    text = "\n".join(info.value.problems)
    assert f"{path}:3: devices[0].connection.timeout: timeout must be between 50ms and 10s" in text
    assert f"{path}:3: devices[0].unit: unit 0 is the broadcast address" in text
    assert f"{path}:4: devices[1].connection.parity:" in text


def test_a_device_config_with_a_manual_addressing_profile_loads(tmp_path):
    """Found building bench/fuzz.py's modbus targets: pydantic runs the profile's validator again
    when the loaded profile goes into a device's Options, and the second run read the converted
    protocol addresses as manual ones, so no config could use the shipped fire_panel_gateway."""
    config = tmp_path / "gateway.yaml"
    config.write_text("gateway: {id: gw-1, site: lab}\n"
                      "devices:\n"
                      "  - {id: fp-1, driver: modbus, connection: {type: tcp, host: 192.0.2.1, port: 502},\n"
                      "     unit: 1, profile: fire_panel_gateway}\n")
    profile = load_config(config).devices[0].options.profile
    by_name = {p.name: p for p in profile.points}
    assert (by_name["fire_alarm"].table, by_name["fire_alarm"].address) == ("discrete_input", 0)
    assert (by_name["event_counter"].table, by_name["event_counter"].address) == ("input_register", 9)
