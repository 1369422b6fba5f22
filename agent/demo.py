"""`edge-agent demo`: the agent's main job on an embedded default, with no hardware.

Starts the bundled simulators and runs the agent on them with the live view:

- air monitors over Modbus TCP and over Modbus RTU (on a socat pty pair), a lamp pole and a
  manhole cover (one air monitor goes silent for 15 s every minute, another answers slowly);
- an HJ 212 air-station data logger that dials the agent's hj212 listener (real-time data every
  5 s, minute data every minute);
- a GB/T 26875.3 fire-alarm transmission device that dials the agent's gb26875 listener and now
  and then reports a fire (a critical event) and, a little later, the panel's reset;
- an NTCIP 1202 signal controller (SNMP) on a 45 s fixed-time plan, and a second junction's
  controller speaking GB/T 20999-2017 over UDP on the same plan;
- the simulated junction camera over RTSP, in step with that controller's plan, with its stop
  line, lanes, no-parking zone and carriageway as rules and about one staged violation a minute
  (red light, wrong way, illegal parking, a person on the carriageway), each with its evidence;

plus a local Mosquitto on a free port and the reference consumer standing in for the central
platform (it checks every message against the contract). The optional parts (RTU: socat; camera:
GStreamer under /usr/bin/python3; signal controller: pysnmp) that cannot start are named in one
line each and left out. The demo config is written into the state directory (`demo.yaml`, so a
technician can read what a real one looks like; `edge-agent check-config` passes on it), with the
command channel on: its key is `command.key` beside it (mode 0600), and the line printed at the
start shows how to send a signed command as the centre would. The web console is on too
(http://127.0.0.1:8080/ when that port is free), with a one-time password for ``admin`` printed at
the start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import secrets
import shlex
import sys
import tempfile
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from agent.config import load_config

log = logging.getLogger("agent.demo")

GATEWAY, SITE = "gw-demo-0001", "demo"
HJ212_MN = "010000A8900016F000169DC0"
FIRE_ADDRESS = 889
SIGNAL_ID, CAMERA_ID = "tsc-01", "cam-01"
GB_SIGNAL_ID = "tsc-02"
# staged violations per minute of scene time: one every minute or two, of each kind now and then
CAMERA_RATES = {"red_light": 0.5, "illegal_parking": 0.1, "wrong_way": 0.2, "zone_intrusion": 0.2}


# -- the config ------------------------------------------------------------------------------

@dataclass
class Endpoints:
    """Where the started simulators (and the agent's own listeners) are; None: not started."""

    broker_port: int
    air_port: int
    lamp_port: int
    manhole_port: int
    rtu_port: str | None = None       # the agent's end of the socat pty pair
    hj212_port: int | None = None     # the agent listens, the station's logger dials in
    fire_port: int | None = None      # the agent listens, the transmission device dials in
    signal_port: int | None = None    # the controller's SNMP port (UDP)
    gb_signal_port: int | None = None  # the GB/T 20999 controller's UDP port
    camera: dict[str, Any] | None = None   # the `cameras:` entry for the simulated junction
    web: dict[str, Any] | None = None      # the `web:` section: the technician's console


def _modbus(device_id: str, unit: int, profile: str, connection: dict[str, Any], poll: str,
            **extra: Any) -> dict[str, Any]:
    return {"id": device_id, "driver": "modbus", "unit": unit, "profile": profile, "poll": poll,
            "connection": connection, **extra}


def _tcp(port: int) -> dict[str, Any]:
    return {"type": "tcp", "host": "127.0.0.1", "port": port, "timeout": "300ms"}


def _devices(at: Endpoints) -> list[tuple[str, dict[str, Any]]]:
    """(comment, entry) for each device of the demo."""
    tcp_air = _tcp(at.air_port)
    devices = [
        ("Three air monitors behind one Modbus TCP gateway (units 1-3), read every second.",
         _modbus("aq-01", 1, "air_monitor_rs485", tcp_air, "1s", name="PM/gas monitor, north pole",
                 location={"lat": 30.2745, "lon": 120.1550})),
        ("Sends a value only when it moved by more than 0.5 (or every 30 s); the demo silences it "
         "for 15 s every minute.",
         _modbus("aq-02", 2, "air_monitor_rs485", tcp_air, "1s", name="PM/gas monitor, south pole",
                 report={"mode": "on_change", "deadband": 0.5, "max_silence": "30s"})),
        ("A sluggish unit: answers 50 ms late, still online.",
         _modbus("aq-03", 3, "air_monitor_rs485", tcp_air, "1s", name="PM/gas monitor, bus stop")),
        ("A lamp pole controller; its dimming and relay can be written by command (see `commands`).",
         _modbus("lamp-07", 7, "lamp_pole", _tcp(at.lamp_port), "2s", name="lamp pole 7")),
        ("A manhole cover sensor: tilt, water level, gas; quiet unless something changes.",
         _modbus("manhole-03", 3, "manhole_cover", _tcp(at.manhole_port), "5s", name="manhole cover 3",
                 report={"mode": "on_change", "max_silence": "1m"})),
    ]
    if at.rtu_port:
        devices.append((
            "The same air monitor model on the gateway's RS-485 port (Modbus RTU; here a socat pty).",
            _modbus("aq-rtu-04", 4, "air_monitor_rs485",
                    {"type": "rtu", "port": at.rtu_port, "baudrate": 9600, "timeout": "300ms"},
                    "1s", name="PM/gas monitor on the gateway's RS-485 port")))
    if at.hj212_port:
        devices.append((
            "An ambient air station's HJ 212 data logger: it dials this port; frames are routed by MN.",
            {"id": "aq-station-01", "driver": "hj212", "name": "ambient air station (HJ 212)",
             "listen": {"host": "127.0.0.1", "port": at.hj212_port}, "mn": HJ212_MN, "st": 22,
             "stale_after": "1m"}))
    if at.fire_port:
        devices.append((
            "A fire-alarm transmission device (GB/T 26875.3) dials this port; a fire is a critical event.",
            {"id": "fire-bldg-12", "driver": "gb26875", "name": "building 12 fire panel",
             "listen": {"host": "127.0.0.1", "port": at.fire_port}, "address": FIRE_ADDRESS,
             "systems": {1: "fire alarm system, building 12"}}))
    if at.signal_port:
        devices.append((
            "A traffic-signal controller over NTCIP 1202 (SNMP v2c); the camera's red-light rule reads phase2.",
            {"id": SIGNAL_ID, "driver": "signal_controller", "name": "junction signal controller",
             "protocol": "ntcip",
             "connection": {"host": "127.0.0.1", "port": at.signal_port, "community": "public",
                            "timeout": "300ms"},
             "poll": "200ms", "report": {"mode": "on_change", "max_silence": "10s"},
             "phases": {2: {"name": "north-south through", "approach": "N", "ped": True},
                        4: {"name": "east-west through", "approach": "E", "ped": True},
                        6: {"name": "south-north through", "approach": "S"},
                        8: {"name": "west-east through", "approach": "W"}},
             "priority": {"preempt": {2: 1, 4: 2}, "min_duration": "5s", "max_duration": "30s"},
             "offline_after": 3, "backoff": {"initial": "500ms", "max": "5s"}}))
    if at.gb_signal_port:
        devices.append((
            "A second junction's controller speaking GB/T 20999-2017 over UDP: lamp groups, stage, run mode; "
            "priority holds a stage and gives the controller its own mode and plan back.",
            {"id": GB_SIGNAL_ID, "driver": "signal_controller", "name": "east junction signal controller",
             "protocol": "gbt20999",
             "connection": {"transport": "udp", "host": "127.0.0.1", "port": at.gb_signal_port, "local_port": 0,
                            "timeout": "300ms"},
             "poll": "200ms", "report": {"mode": "on_change", "max_silence": "10s"},
             "phases": {2: {"approach": "N", "ped": True}, 4: {"approach": "E", "ped": True}},
             "detectors": [2, 4],
             "priority": {"preempt": {2: 1, 4: 2}, "min_duration": "5s", "max_duration": "30s"},
             "offline_after": 3, "backoff": {"initial": "500ms", "max": "5s"}}))
    return devices


def _commands(key_file: Path, at: Endpoints) -> dict[str, Any]:
    allow: list[Any] = ["device.read", "buffer.stats",
                        {"command": "device.write", "devices": ["lamp-07"], "points": ["dimming", "lamp_on"]}]
    signals = [d for d, port in ((SIGNAL_ID, at.signal_port), (GB_SIGNAL_ID, at.gb_signal_port)) if port]
    if signals:
        allow.append({"command": "signal.priority", "devices": signals})
    if at.camera:
        allow.append({"command": "camera.snapshot", "devices": [at.camera["id"]]})
    return {"key": {"file": str(key_file)}, "allow": allow}


class _Dumper(yaml.SafeDumper):
    """Short lists and small flat mappings on one line, as people write them."""


def _flat(values: Any) -> bool:
    return all(not isinstance(v, (list, dict)) for v in values)


_Dumper.add_representer(list, lambda d, data: d.represent_sequence(
    "tag:yaml.org,2002:seq", data, flow_style=_flat(data) or all(isinstance(v, list) and _flat(v) for v in data)))
_Dumper.add_representer(dict, lambda d, data: d.represent_mapping(
    "tag:yaml.org,2002:map", data, flow_style=_flat(data.values()) and len(data) <= 4))


def _dump(data: Any, indent: str = "") -> str:
    text = yaml.dump(data, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=110)
    return "".join(indent + line if line.strip() else line for line in text.splitlines(keepends=True))


def _section(comment: str, key: str, value: Any) -> str:
    return f"\n# {comment}\n" + _dump({key: value})


def _entries(key: str, entries: list[tuple[str, dict[str, Any]]]) -> str:
    return f"\n{key}:\n" + "".join(f"  # {comment}\n" + _dump([entry], "  ") for comment, entry in entries)


def write_key(path: Path) -> Path:
    """A fresh command key only the agent's user can read (the agent refuses a world-readable one)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(secrets.token_hex(16) + "\n")
    path.chmod(0o600)
    return path


def demo_config(state_dir: Path, at: Endpoints) -> Path:
    """Write `demo.yaml` (and `command.key`) into ``state_dir``: the gateway config a technician
    would write for these devices. Returns its path."""
    key_file = write_key(state_dir / "command.key")
    path = state_dir / "demo.yaml"
    text = (
        "# Written by `edge-agent demo` for this run: every device below is a simulator on this machine\n"
        "# and the broker is a local Mosquitto. A real gateway's config has the same shape (see\n"
        f"# config/example.yaml). Check it with: edge-agent check-config {path}\n"
        + _section("The gateway as the centre knows it.", "gateway",
                   {"id": GATEWAY, "site": SITE, "name": "Demo gateway (simulated devices)",
                    "location": {"lat": 30.2741, "lon": 120.1551, "alt": 12}})
        + _section("The central platform's broker (here the demo's own Mosquitto).", "uplink",
                   {"mqtt": {"host": "127.0.0.1", "port": at.broker_port}})
        + _section("Everything is committed here first and deleted once the broker has it.", "buffer",
                   {"path": str(state_dir / "outbox.db"), "max_bytes": "256MiB"})
        + _section("status.json (edge-agent status) and the metrics topic.", "agent",
                   {"state_dir": str(state_dir), "metrics_interval": "10s", "status_interval": "1s",
                    "log": {"format": "text", "level": "info"}})
        + _section("Commands from the centre: HMAC-signed with this key (mode 0600), only these.", "commands",
                   _commands(key_file, at))
        + (_section("The technician's console: a one-time admin password for this run, printed at the start "
                    "(write a real account's hash with `edge-agent web-passwd NAME`).", "web", at.web)
           if at.web else "")
        + _entries("devices", _devices(at))
    )
    if at.camera:
        text += _entries("cameras", [(
            "The junction camera over RTSP: detector, tracker and rules in the camera's pixels; "
            "red light from tsc-01's phase2.", at.camera)])
    path.write_text(text)
    return path


# -- what the centre received --------------------------------------------------------------------

@dataclass
class DemoReport:
    """What a demo run started and what its centre (the reference consumer) received. Pass one to
    :func:`run_demo` to read it afterwards; it keeps counts, not the messages."""

    config_path: Path | None = None
    skipped: dict[str, str] = field(default_factory=dict)          # part -> why it did not start
    readings: Counter[str] = field(default_factory=Counter)        # device -> readings received
    latest: dict[str, dict[str, tuple[Any, str]]] = field(default_factory=dict)   # device -> point -> (v, q)
    online: dict[str, bool] = field(default_factory=dict)          # device -> as the latest metrics said
    events: list[tuple[str, str, str]] = field(default_factory=list)   # (device, type, severity), first 200
    invalid: list[str] = field(default_factory=list)               # the first 20 invalid messages, why
    command_hint: str | None = None
    console: str | None = None          # the web console's address, once it listens
    console_password: str | None = None  # the one-time password printed for `admin`
    summary: str = ""

    def on_record(self, status: str, record: Any) -> None:
        """The consumer's ``on_record``: called on its thread for every publication."""
        if status == "invalid":
            if len(self.invalid) < 20:
                self.invalid.append(str(record))
            return
        if status != "ok":
            return
        body = record.body
        if record.kind == "telemetry":
            self.readings[record.rest] += len(body["readings"])
            points = self.latest.setdefault(record.rest, {})
            for reading in body["readings"]:
                points[reading["p"]] = (reading["v"], reading["q"])
        elif record.kind == "event" and len(self.events) < 200:
            self.events.append((record.rest, body["type"], body["severity"]))
        elif record.kind == "metrics":
            self.online.update({d: s["online"] for d, s in body.get("devices", {}).items()})


# -- the simulators the agent's listeners wait for -----------------------------------------------

@contextlib.contextmanager
def _failing_now_and_then(sim: Any, unit: int, every: float = 60.0, down: float = 15.0) -> Iterator[None]:
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


@contextlib.contextmanager
def _hj212_station(port: int, interval: float = 5.0, minute: float = 60.0) -> Iterator[int]:
    """An HJ 212 logger that dials the agent's ``port`` (again and again until the listener is up,
    and after it drops the link), uploads real-time data every ``interval`` s and minute data every
    ``minute`` s. Yields the port."""
    from tests.hardware_sim.hj212_logger import Hj212Logger, ThreadedLogger

    threaded = ThreadedLogger(Hj212Logger(HJ212_MN, timeout=3.0, retries=0))
    logger = threaded.logger

    async def upload() -> None:
        loop = asyncio.get_running_loop()
        base = dict(logger.values)
        while True:
            try:
                await logger.connect("127.0.0.1", port)
            except OSError:
                await asyncio.sleep(0.5)   # the agent opens its listener a moment after it starts
                continue
            next_minute = loop.time() + minute
            with contextlib.suppress(ConnectionError, OSError):
                while not logger.closed_by_peer:
                    logger.values = {k: round(v * (1 + random.uniform(-0.03, 0.03)), 2) for k, v in base.items()}
                    await logger.send_realtime()
                    if loop.time() >= next_minute:
                        next_minute += minute
                        await logger.send_minute()
                    await asyncio.sleep(interval)
            await logger.close()
            await asyncio.sleep(1.0)

    running = asyncio.run_coroutine_threadsafe(upload(), threaded.loop)
    try:
        yield port
    finally:
        running.cancel()
        threaded.stop()


@contextlib.contextmanager
def _fire_panel(port: int, first: float = 10.0, hold: float = 10.0, every: float = 90.0) -> Iterator[int]:
    """A transmission device that dials the agent's ``port`` and, ``first`` s after it starts and
    then every ``every`` s, reports a fire at a smoke detector and ``hold`` s later the panel's
    reset. Yields the port."""
    from tests.hardware_sim.fire_panel import NORMAL, FirePanel

    panel = FirePanel(address=FIRE_ADDRESS, confirm_timeout=2.0, heartbeat=30.0).connect("127.0.0.1", port)
    stop = threading.Event()

    def alarms() -> None:
        panel.device_status(NORMAL)      # frames wait in the device's queue until the link is up
        panel.system_status(NORMAL)
        wait = first
        while not stop.wait(wait):
            panel.fire(0x0002000A, "3楼东侧走廊烟感")
            if stop.wait(hold):
                break
            panel.reset()
            if stop.wait(2.0):
                break
            panel.system_status(NORMAL)  # the reset bit falls again: the next reset is news
            wait = max(1.0, every - hold - 2.0)

    thread = threading.Thread(target=alarms, name="demo-fire", daemon=True)
    thread.start()
    try:
        yield port
    finally:
        stop.set()
        thread.join(2)
        panel.stop()


# -- the run -------------------------------------------------------------------------------------

def console_section(port: int | None = None) -> tuple[dict[str, Any], str]:
    """The demo's ``web:`` section with a fresh one-time password for ``admin``, and that password.
    Port 8080 when it is free (the address a technician expects), else any free port."""
    from agent.web.passwords import hash_password
    from tests.hardware_sim.broker import free_port
    if port is None:
        import socket
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", 8080))
                port = 8080
            except OSError:
                port = free_port()
    password = secrets.token_urlsafe(12)
    return {"bind": "127.0.0.1", "port": port,
            "accounts": [{"name": "admin", "role": "admin", "password_hash": hash_password(password)}]}, password


def run_demo(state_dir: Path | None = None, duration: float | None = None, live: bool = True,
             report: DemoReport | None = None, console: bool = True) -> int:
    from agent.runtime import run_agent
    from agent.logs import setup_logging
    from tests.hardware_sim.broker import MosquittoBroker, MosquittoNotInstalled, free_port
    from tests.hardware_sim.consumer import Consumer
    from tests.hardware_sim.modbus_sim import ModbusSim

    report = report if report is not None else DemoReport()
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
        def optional(part: str, start: Callable[[], Any], without: str) -> Any:
            """Start an optional part; when it cannot start, say so in one line and go on."""
            try:
                return start()
            except Exception as exc:   # noqa: BLE001 - a missing tool or library: the demo goes on
                lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
                # a child's traceback in the message: its first line and what it ended with
                reason = " … ".join(dict.fromkeys([lines[0], lines[-1]])) if lines else exc.__class__.__name__
                report.skipped[part] = reason
                print(f"demo: {part} not started ({reason}); {without}", file=sys.stderr, flush=True)
                return None

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
        at = Endpoints(broker.port, air.tcp_address[1], lamp.tcp_address[1], manhole.tcp_address[1])

        rtu = optional("RTU simulator", lambda: stack.enter_context(ModbusSim(
            "air_monitor_rs485", units=[4], rtu_pty=state_dir / "ttyDEMO").run_in_thread()),
            "continuing with TCP devices")
        at.rtu_port = rtu.agent_port if rtu else None

        at.hj212_port = optional("HJ 212 station", lambda: stack.enter_context(_hj212_station(free_port())),
                                 "continuing without it")
        at.fire_port = optional("fire-alarm transmission device",
                                lambda: stack.enter_context(_fire_panel(free_port())), "continuing without it")

        def start_signal() -> Any:
            from tests.hardware_sim.signal_controller import DEFAULT_PLAN, SignalControllerSim
            return stack.enter_context(SignalControllerSim(DEFAULT_PLAN, snmp=("127.0.0.1", 0)).run_in_thread())
        controller = optional("signal controller", start_signal, "continuing without it and the camera")
        at.signal_port = controller.snmp_address[1] if controller else None

        def start_gb_signal() -> Any:
            from tests.hardware_sim.gbt20999_controller import Gbt20999Sim
            from tests.hardware_sim.signal_controller import DEFAULT_PLAN
            return stack.enter_context(Gbt20999Sim(DEFAULT_PLAN, udp=("127.0.0.1", 0)).run_in_thread())
        gb_controller = optional("GB/T 20999 signal controller", start_gb_signal, "continuing without it")
        at.gb_signal_port = gb_controller.udp_address[1] if gb_controller else None

        def start_camera() -> dict[str, Any]:
            from tests.hardware_sim.camera_sim import CameraSim, junction_camera
            from tests.hardware_sim.signal_controller import DEFAULT_PLAN
            camera = CameraSim(plan=DEFAULT_PLAN, plan_epoch=controller.controller.t0, fps=10, size=(1280, 720),
                               seed=1, flow=6.0, rates=CAMERA_RATES)
            stack.enter_context(camera)
            return junction_camera(camera.junction, url=camera.url, signal_device=SIGNAL_ID, cam_id=CAMERA_ID)
        if controller is not None:
            at.camera = optional("camera", start_camera,
                                 "continuing without it (install.sh installs GStreamer's RTSP server)")

        password = None
        if console:
            at.web, password = console_section()
        config_path = report.config_path = demo_config(state_dir, at)
        config = load_config(config_path)
        centre = stack.enter_context(Consumer(broker.host, broker.port, gateway=config.gateway.id,
                                              store=False, on_record=report.on_record))
        watch = f".venv/bin/python -m tests.hardware_sim.consumer --port {broker.port}"
        key_file = shlex.quote(str(state_dir / "command.key"))
        report.command_hint = (f"{watch} --site {SITE} --gateway {GATEWAY} --command-key {key_file} --command device.write "
                               f"--args '{{\"device\": \"lamp-07\", \"point\": \"dimming\", \"value\": 40}}'")
        print(f"demo: broker 127.0.0.1:{broker.port}, config {config_path}, log {log_file}\n"
              f"      watch the centre's side with: {watch}\n"
              f"      send a signed command as the centre: {report.command_hint}\n"
              f"      Ctrl-C to stop", flush=True)

        def console_up(address: str) -> None:
            report.console, report.console_password = address, password
            print(f"demo: web console {address}  (log in as admin, password {password}: it changes every run)",
                  flush=True)
        try:
            asyncio.run(run_agent(config, live, stop_after=duration, config_path=config_path, on_console=console_up))
        except KeyboardInterrupt:
            pass
        report.summary = centre.summary()
        print(f"\ncentre received: {report.summary}")
        for reasons in report.invalid[:3]:
            print(f"  invalid: {reasons}")
    return 0
