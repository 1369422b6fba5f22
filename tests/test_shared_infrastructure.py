"""The infrastructure every family shares instead of writing it again (issue 14, item 3): one
serial-line options model, one backoff (agent/core/backoff.py), one strict config base, and a
transport kit that stays in the core. Each check here fails if a family grows its own again."""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path

import pytest
from pydantic import BaseModel

from agent.core.backoff import Backoff
from agent.core.config import Strict
from agent.core.transport import SerialLine

REPO = Path(__file__).resolve().parents[1]


def test_every_family_takes_the_core_serial_line_keys_and_defaults():
    from drivers.modbus.options import RtuConnection
    from firmware_bridges.gb26875.options import Options as FireOptions
    from firmware_bridges.hj212.options import SerialLine as Hj212Line

    keys = {"port": "/dev/ttyS1", "baudrate": 19200, "parity": "E", "stopbits": 2, "bytesize": 7}
    lines = [Hj212Line.model_validate(keys), FireOptions.model_validate({"serial": keys}).serial,
             RtuConnection.model_validate({"type": "rtu", **keys})]
    for line in lines:
        assert isinstance(line, SerialLine) and line.line_settings[:4] == (19200, "E", 2, 7)
    defaults = [Hj212Line(port="/dev/x"), FireOptions.model_validate({"serial": {"port": "/dev/x"}}).serial,
                RtuConnection(type="rtu", port="/dev/x")]
    assert {d.settings_text for d in defaults} == {"9600 8N1"}
    with pytest.raises(ValueError, match="baudrate"):
        SerialLine(port="/dev/x", baudrate=100)


FAMILY_OPTIONS = ["drivers.modbus.options", "drivers.camera.options", "firmware_bridges.hj212.options",
                  "firmware_bridges.gb26875.options", "firmware_bridges.signal_controller.options",
                  "models.manifest"]


@pytest.mark.parametrize("module_name", FAMILY_OPTIONS)
def test_family_config_models_stand_on_the_core_strict_base_and_backoff(module_name: str):
    module = importlib.import_module(module_name)
    models = [cls for _, cls in inspect.getmembers(module, inspect.isclass)
              if issubclass(cls, BaseModel) and cls.__module__ == module_name]
    assert models
    for cls in models:
        assert issubclass(cls, Strict), f"{cls.__name__} must stand on agent.core.config.Strict"
    assert not hasattr(module, "_Strict")
    backoff = getattr(module, "Backoff", Backoff)
    assert backoff is Backoff


def test_no_family_writes_its_own_backoff():
    """The one backoff (agent/core/backoff.py) computes every delay: no family drives tenacity's
    internals or doubles a delay itself."""
    sources = [p for folder in ("drivers", "firmware_bridges", "agent/core/transport")
               for p in (REPO / folder).rglob("*.py")]
    for path in sources:
        text = path.read_text()
        for needle in ("wait_exponential", "RetryCallState", "class Backoff", "2 ** fail", "BackoffTimer"):
            assert needle not in text, f"{path.relative_to(REPO)} has {needle!r}"


def test_the_kit_keeps_to_the_core():
    """The kit is core: it imports no family and nothing of the agent above the core."""
    for path in (REPO / "agent/core/transport").glob("*.py"):
        for line in path.read_text().splitlines():
            if line.startswith(("import ", "from ")):
                assert not any(name in line for name in ("drivers", "firmware_bridges", "agent.app",
                                                         "agent.pipeline", "agent.config ")), f"{path.name}: {line}"



def test_each_family_keeps_its_backoff_defaults_on_the_one_backoff():
    from drivers.camera.options import Options as CameraOptions
    from drivers.modbus.options import Options as ModbusOptions
    from firmware_bridges.gb26875.options import Options as FireOptions
    from firmware_bridges.hj212.runner import RETRY
    from firmware_bridges.signal_controller.options import Options as SignalOptions

    camera = {"url": "rtsp://192.0.2.30/stream"}
    assert CameraOptions.model_validate(camera).backoff == Backoff(initial=0.5, max=30.0)
    assert CameraOptions.model_validate({**camera, "backoff": {"max": "10s"}}).backoff == Backoff(initial=0.5, max=10.0)
    assert ModbusOptions.model_fields["backoff"].default == Backoff(initial=1.0, max=30.0)
    assert SignalOptions.model_fields["backoff"].default == Backoff(initial=1.0, max=30.0)
    assert FireOptions.model_validate({"listen": {"port": 9026}}).reconnect == Backoff(initial=1.0, max=30.0)
    assert RETRY == Backoff(initial=0.5, max=30.0)
    with pytest.raises(ValueError, match="must be at least 10ms"):
        FireOptions.model_validate({"listen": {"port": 9026}, "reconnect": {"initial": "5ms"}})
