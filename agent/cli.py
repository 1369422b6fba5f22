"""`edge-agent` command line: run, check-config, status, demo, web-passwd, drivers."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

import orjson

DEFAULT_CONFIG = Path("/etc/edge-agent/config.yaml")

# `run` exits with these when it cannot start. The systemd unit lists the two a restart cannot fix
# in RestartPreventExitStatus=, so a bad config or a downgrade does not restart every 2 s.
EXIT_OUTBOX = 1           # the outbox cannot be opened (corrupt, locked by another agent, disk)
EXIT_CONFIG = 2           # the config (or a secret it names) is invalid: check-config's message
EXIT_OUTBOX_TOO_NEW = 3   # the outbox was written by a newer agent: install that one again


def _load(path: Path):
    from agent.runtime import load
    return load(path)


def _device_checks(config, file: Path) -> list[str]:
    """What each driver finds wrong with the files its devices name (a camera's model)."""
    from agent.core.registry import get_driver
    by_driver: dict[str, list] = {}
    for device in config.all_devices:
        by_driver.setdefault(device.driver, []).append(device)
    return [f"{file}: {problem}" for name, devices in by_driver.items()
            for problem in get_driver(name).check_devices(devices)]


def cmd_check_config(args: argparse.Namespace) -> int:
    config = _load(args.file)
    if config is None:
        return EXIT_CONFIG
    from agent.config import unreadable_files
    unreadable = unreadable_files(config, args.file) + _device_checks(config, args.file)
    if unreadable:   # the agent would stop at these when it starts
        print(f"config {args.file} has {len(unreadable)} problem(s):", file=sys.stderr)
        for problem in unreadable:
            print(f"  {problem}", file=sys.stderr)
        return EXIT_CONFIG
    print(f"{args.file}: OK — gateway {config.gateway.id} (site {config.gateway.site}), "
          + ", ".join(f"{len(devices)} {name}" for name, devices in config.sections().items())
          + f", uplink {config.uplink.mqtt.host}:{config.uplink.mqtt.port}, "
          f"buffer {config.buffer.path}")
    for device in config.all_devices:
        options = device.options
        connection = getattr(options, "connection", None)
        from agent.core.registry import get_driver
        timing = f", poll {device.poll:g}s" if get_driver(device.driver).polled else ""
        print(f"  {device.id}: driver {device.driver}{timing}"
              + (f", {connection.describe()}" if hasattr(connection, "describe") else ""))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from agent.logs import setup_logging
    config = _load(args.config)
    if config is None:
        return EXIT_CONFIG
    setup_logging(config.agent.log.format, config.agent.log.level)
    from agent.core.config import ConfigError
    from agent.outbox import OutboxError, OutboxTooNew
    try:
        from agent.runtime import run_agent
        asyncio.run(run_agent(config, args.live, config_path=args.config))
    except KeyboardInterrupt:
        pass
    except ConfigError as exc:   # a secret that cannot be read, devices that conflict on a bus
        print(f"edge-agent cannot start with {args.config}:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return EXIT_CONFIG
    except OutboxTooNew as exc:
        print(f"edge-agent cannot start: {exc}", file=sys.stderr)
        return EXIT_OUTBOX_TOO_NEW
    except OutboxError as exc:
        print(f"edge-agent cannot start: {exc}", file=sys.stderr)
        return EXIT_OUTBOX
    return 0


def cmd_web_passwd(args: argparse.Namespace) -> int:
    from agent.web.passwords import web_passwd
    return web_passwd(args.name, args.role, args.stdin)


def cmd_status(args: argparse.Namespace) -> int:
    state_dir = args.state_dir
    if state_dir is None:
        config = _load(args.config)
        if config is None:
            return 2
        state_dir = config.agent.state_dir
    path = state_dir / "status.json"
    try:
        snapshot = orjson.loads(path.read_bytes())
    except FileNotFoundError:
        print(f"no status at {path}: the agent has not run with this state directory", file=sys.stderr)
        return 1
    except orjson.JSONDecodeError as exc:
        print(f"{path} is not readable status ({exc})", file=sys.stderr)
        return 1
    if args.json:
        print(orjson.dumps(snapshot, option=orjson.OPT_INDENT_2).decode())
    else:
        from rich.console import Console

        from agent.status_view import render
        Console().print(render(snapshot))
    age = time.time() - snapshot["ts"] / 1000
    if snapshot.get("stopped"):
        print(f"\nthe agent stopped {age:.0f}s ago (pid {snapshot['pid']}); these are its last figures",
              file=sys.stderr)
        return 1
    if age > 10:
        print(f"\nstatus is {age:.0f}s old: the agent (pid {snapshot['pid']}) is not running or is stuck",
              file=sys.stderr)
        return 1
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from agent.demo import run_demo
    return run_demo(state_dir=args.state_dir, duration=args.duration, live=not args.no_live)


def cmd_decode(args: argparse.Namespace) -> int:
    """Decode one frame as a technician pasted it; non-zero exit with what is wrong and where."""
    from agent.core.registry import UnknownDriver, find_decoder
    try:
        decode = find_decoder(args.protocol)
    except UnknownDriver as exc:
        print(f"decode: {exc}", file=sys.stderr)
        return 2
    try:
        decoded = decode(args.frame)
    except NotImplementedError as exc:
        print(f"decode: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"decode {args.protocol}: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:   # noqa: BLE001 - a bug meeting this frame: say so in one line, not a traceback
        print(f"decode {args.protocol}: the decoder failed on this frame ({type(exc).__name__}: {exc}); "
              "please report it with the frame", file=sys.stderr)
        return 3
    try:
        text = orjson.dumps(decoded, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS).decode()
    except TypeError:   # a value JSON cannot carry (a number beyond 64 bits): shown as null
        from agent.wire import safe_data
        text = orjson.dumps(safe_data(decoded), option=orjson.OPT_INDENT_2).decode()
    print(text)
    return 0


def cmd_drivers(args: argparse.Namespace) -> int:
    from agent.core.registry import available_drivers
    for name in available_drivers():
        print(name)
    return 0


def build_parser() -> argparse.ArgumentParser:
    from agent import __version__
    parser = argparse.ArgumentParser(prog="edge-agent", description=__doc__)
    parser.add_argument("--version", action="version", version=f"edge-agent {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the agent with a config file")
    run.add_argument("-c", "--config", type=Path, default=DEFAULT_CONFIG)
    run.add_argument("--live", action="store_true", help="show a live view of devices, buffer and uplink")
    run.set_defaults(func=cmd_run)

    check = sub.add_parser("check-config", help="validate a config file and every profile it names")
    check.add_argument("file", type=Path)
    check.set_defaults(func=cmd_check_config)

    status = sub.add_parser("status", help="show the state of a running agent")
    status.add_argument("-c", "--config", type=Path, default=DEFAULT_CONFIG)
    status.add_argument("--state-dir", type=Path, default=None, help="instead of reading it from the config")
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=cmd_status)

    demo = sub.add_parser("demo", help="run the agent on bundled simulators and a local broker (no hardware)")
    demo.add_argument("--state-dir", type=Path, default=None, help="default: a new temporary directory")
    demo.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    demo.add_argument("--no-live", action="store_true", help="log lines instead of the live view")
    demo.set_defaults(func=cmd_demo)

    passwd = sub.add_parser("web-passwd", help="print a web console account with a scrypt hash of a password "
                                               "(for web: accounts: in the config)")
    passwd.add_argument("name")
    passwd.add_argument("--role", choices=("viewer", "admin"), default="admin")
    passwd.add_argument("--stdin", action="store_true", help="read the password from one line of stdin")
    passwd.set_defaults(func=cmd_web_passwd)

    decode = sub.add_parser("decode", help="decode one device frame (e.g. decode hj212 '##0101QN=...')")
    decode.add_argument("protocol", help="the driver, bridge or protocol name: hj212, gb26875, gbt20999 ...")
    decode.add_argument("frame", help="the frame as text, or as hex for binary protocols")
    decode.set_defaults(func=cmd_decode)

    _add_family_commands(sub)

    drivers = sub.add_parser("drivers", help="list the drivers and bridges this agent has")
    drivers.set_defaults(func=cmd_drivers)
    return parser


def _add_family_commands(sub: argparse._SubParsersAction) -> None:
    """Subcommands the device families add (the camera's snapshot and detect ...)."""
    from agent.core.registry import available_drivers, get_driver

    def devices_of(path: Path) -> list | None:
        config = _load(path)
        return None if config is None else config.all_devices

    for name in available_drivers():
        get_driver(name).add_cli(sub, devices_of, DEFAULT_CONFIG)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
