"""`edge-agent demo`: the agent's main job on an embedded default, with no hardware.

Starts the bundled simulators (air monitors over Modbus TCP and over RTU on a socat pty pair, a
lamp pole and a manhole cover), a local Mosquitto on a free port, and the reference consumer that
stands in for the central platform; writes a demo config into the state directory (so a technician
can read what a real one looks like) and runs the agent on it with the live view.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

import yaml

from agent.config import load_config

log = logging.getLogger("agent.demo")


def _modbus(device_id: str, unit: int, profile: str, connection: dict[str, Any], poll: str,
            **extra: Any) -> dict[str, Any]:
    return {"id": device_id, "driver": "modbus", "unit": unit, "profile": profile, "poll": poll,
            "connection": connection, **extra}


def _tcp(port: int) -> dict[str, Any]:
    return {"type": "tcp", "host": "127.0.0.1", "port": port, "timeout": "300ms"}


def demo_config(state_dir: Path, broker_port: int, air_port: int, lamp_port: int, manhole_port: int,
                rtu_port: str | None) -> Path:
    tcp_air = _tcp(air_port)
    devices = [
        _modbus("aq-01", 1, "air_monitor_rs485", tcp_air, "1s", name="PM/gas monitor, north pole",
                location={"lat": 30.2745, "lon": 120.1550}),
        _modbus("aq-02", 2, "air_monitor_rs485", tcp_air, "1s", name="PM/gas monitor, south pole",
                report={"mode": "on_change", "deadband": 0.5, "max_silence": "30s"}),
        _modbus("aq-03", 3, "air_monitor_rs485", tcp_air, "1s", name="PM/gas monitor, bus stop"),
        _modbus("lamp-07", 7, "lamp_pole", _tcp(lamp_port), "2s", name="lamp pole 7"),
        _modbus("manhole-03", 3, "manhole_cover", _tcp(manhole_port), "5s", name="manhole cover 3",
                report={"mode": "on_change", "max_silence": "1m"}),
    ]
    if rtu_port:
        devices.append(_modbus("aq-rtu-04", 4, "air_monitor_rs485",
                               {"type": "rtu", "port": rtu_port, "baudrate": 9600, "timeout": "300ms"},
                               "1s", name="PM/gas monitor on the gateway's RS-485 port"))
    config = {
        "gateway": {"id": "gw-demo-0001", "site": "demo", "name": "Demo gateway (simulated devices)",
                    "location": {"lat": 30.2741, "lon": 120.1551, "alt": 12}},
        "uplink": {"mqtt": {"host": "127.0.0.1", "port": broker_port}},
        "buffer": {"path": str(state_dir / "outbox.db"), "max_bytes": "256MiB"},
        "agent": {"state_dir": str(state_dir), "metrics_interval": "10s", "status_interval": "1s",
                  "log": {"format": "text", "level": "info"}},
        "devices": devices,
    }
    path = state_dir / "demo.yaml"
    path.write_text("# Written by `edge-agent demo`: simulated devices, local broker.\n"
                    + yaml.safe_dump(config, sort_keys=False))
    return path


@contextlib.contextmanager
def _failing_now_and_then(sim: Any, unit: int, every: float = 60.0, down: float = 15.0):
    """Make one simulated unit go silent for a while each minute, so the demo shows a device going
    offline, the others keeping their rate, and the device coming back."""
    stop = threading.Event()

    def cycle() -> None:
        while not stop.wait(every - down):
            sim.set_fault(unit, "no_answer")
            if stop.wait(down):
                break
            sim.set_fault(unit, "none")

    thread = threading.Thread(target=cycle, name="demo-faults", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(2)


def run_demo(state_dir: Path | None = None, duration: float | None = None, live: bool = True) -> int:
    from agent.cli import _run_agent
    from agent.logs import setup_logging
    from tests.hardware_sim.broker import MosquittoBroker, MosquittoNotInstalled
    from tests.hardware_sim.consumer import Consumer
    from tests.hardware_sim.modbus_sim import ModbusSim

    state_dir = Path(state_dir or tempfile.mkdtemp(prefix="edge-agent-demo-"))
    state_dir.mkdir(parents=True, exist_ok=True)
    # in the live view, log lines would scroll the table away: send them to a file
    log_file = state_dir / "agent.log"
    setup_logging("text", "info")
    if live:
        handler = logging.FileHandler(log_file)
        handler.setFormatter(logging.getLogger().handlers[0].formatter)
        logging.getLogger().handlers[:] = [handler]

    with contextlib.ExitStack() as stack:
        try:
            broker = stack.enter_context(MosquittoBroker(workdir=state_dir / "mosquitto"))
        except MosquittoNotInstalled as exc:
            print(f"demo: {exc}", file=sys.stderr)
            return 1
        air = stack.enter_context(ModbusSim("air_monitor_rs485", units=[1, 2, 3],
                                            tcp=("127.0.0.1", 0)).run_in_thread())
        air.set_fault(3, "slow", delay=0.05)   # a sluggish unit: still online, visible in the figures
        stack.enter_context(_failing_now_and_then(air, unit=2))
        lamp = stack.enter_context(ModbusSim("lamp_pole", units=[7], tcp=("127.0.0.1", 0)).run_in_thread())
        manhole = stack.enter_context(ModbusSim("manhole_cover", units=[3], tcp=("127.0.0.1", 0)).run_in_thread())
        rtu_port = None
        try:
            rtu = stack.enter_context(ModbusSim("air_monitor_rs485", units=[4],
                                                rtu_pty=state_dir / "ttyDEMO").run_in_thread())
            rtu_port = rtu.agent_port
        except Exception as exc:   # noqa: BLE001 - socat missing: the demo goes on over TCP only
            print(f"demo: RTU simulator not started ({exc}); continuing with TCP devices", file=sys.stderr)
        config_path = demo_config(state_dir, broker.port, air.tcp_address[1], lamp.tcp_address[1],
                                  manhole.tcp_address[1], rtu_port)
        config = load_config(config_path)
        centre = stack.enter_context(Consumer(broker.host, broker.port, gateway=config.gateway.id,
                                              store=False))
        print(f"demo: broker 127.0.0.1:{broker.port}, config {config_path}, log {log_file}\n"
              f"      watch the centre's side with: .venv/bin/python -m tests.hardware_sim.consumer "
              f"--port {broker.port}\n      Ctrl-C to stop", flush=True)

        try:
            asyncio.run(_run_agent(config, live, stop_after=duration, config_path=config_path))
        except KeyboardInterrupt:
            pass
        print(f"\ncentre received: {centre.summary()}")
    return 0
