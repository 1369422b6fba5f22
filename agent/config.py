"""Gateway config: YAML validated with pydantic at load.

A bad file never half-starts the agent: :func:`load_config` collects every problem, each naming the
file, the key path (``devices[2].connection.port``), the line, and what was expected, and raises
:class:`ConfigError` with all of them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, create_model, model_validator

from agent.core.backoff import Backoff
from agent.core.config import (
    ID_PATTERN, ConfigError, DeviceConfig, Location, Secret, Strict, format_validation_error, line_of,
    validate_yaml_file,
)
from agent.core.units import Duration, Size
from agent.web.config import Web


class Tls(Strict):
    ca_file: Path | None = None        # trust anchors for the broker; system store when absent
    cert_file: Path | None = None      # client certificate, for mutual TLS
    key_file: Path | None = None
    insecure_skip_verify: bool = False  # only for bench setups; logged loudly when set

    @model_validator(mode="after")
    def _pair(self) -> "Tls":
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("mutual TLS needs both 'cert_file' and 'key_file'")
        return self


class Mqtt(Strict):
    host: str = "127.0.0.1"
    port: int = Field(default=1883, ge=1, le=65535)
    prefix: str = "citybrain"
    client_id: str | None = None       # default: the gateway id
    protocol: Literal["auto", "5", "3.1.1"] = "auto"   # auto: MQTT 5, falling back to 3.1.1
    username: str | None = None
    password: Secret | None = None
    tls: Tls | None = None
    keepalive: Duration = 30.0
    connect_timeout: Duration = 5.0
    inflight_window: int = Field(default=100, ge=1, le=65535)
    # short cap: resume within a second of the broker's return (full jitter spreads a fleet)
    reconnect: Backoff = Backoff(initial=0.1, max=1.0)
    max_payload: Size = 256 * 1024     # larger messages (evidence) are chunked by their producer


class Uplink(Strict):
    mqtt: Mqtt = Mqtt()


class Buffer(Strict):
    path: Path = Path("/var/lib/edge-agent/outbox.db")
    max_bytes: Size = 2 * 2**30
    commit_interval: Duration = 0.05   # group commit: a reading is durable within this time of being read
    durable: bool = True               # fsync every commit (survives power loss, not only crashes)


class Log(Strict):
    format: Literal["auto", "json", "text"] = "auto"   # auto: JSON under systemd, text on a terminal
    level: Literal["debug", "info", "warning", "error"] = "info"


class AgentSection(Strict):
    state_dir: Path = Path("/var/lib/edge-agent")
    metrics_interval: Duration = 30.0
    status_interval: Duration = 1.0
    log: Log = Log()


class Gateway(Strict):
    id: str = Field(pattern=ID_PATTERN)
    site: str = Field(pattern=ID_PATTERN)
    name: str | None = None
    location: Location | None = None


class CommandRule(Strict):
    """One allowed command, optionally narrowed to some devices and points."""

    command: str
    devices: list[str] | None = None   # None: any device
    points: list[str] | None = None    # None: any point (device.write still needs a writable point)


class Commands(Strict):
    """Commands from the centre (CONTRACT.md): HMAC-signed, allowlisted, rate-limited, audited."""

    key: Secret | None = None          # HMAC key; without it every command is refused
    allow: list[str | CommandRule] = []
    max_bytes: Size = 16 * 1024        # a larger request is refused unread
    max_per_second: float = Field(default=10.0, gt=0)      # executed commands
    answers_per_second: float = Field(default=5.0, gt=0)   # refusals answered; the rest only counted
    max_clock_skew: Duration = 300.0   # a request stamped further in the future is refused
    max_lifetime: Duration = 3600.0    # expires - ts longer than this is refused
    timeout: Duration = 10.0           # a command still running then is answered as failed
    centre_silence: Duration = 60.0    # no message from the centre this long: signal priority released

    def rule(self, command: str) -> CommandRule | None:
        for entry in self.allow:
            rule = CommandRule(command=entry) if isinstance(entry, str) else entry
            if rule.command == command:
                return rule
        return None


class _AgentConfigBase(Strict):
    """The sections every gateway has. :data:`AgentConfig` adds one list per family that declares
    a section of its own (``cameras:``), whose entries are that family's devices."""

    section_drivers: ClassVar[dict[str, str]] = {}   # section name -> the driver its entries default to

    gateway: Gateway
    uplink: Uplink = Uplink()
    buffer: Buffer = Buffer()
    agent: AgentSection = AgentSection()
    devices: list[DeviceConfig] = []
    commands: Commands = Commands()
    web: Web | None = None   # the technician's console (agent/web); absent: nothing listens

    @model_validator(mode="before")
    @classmethod
    def _section_driver(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for section, driver in cls.section_drivers.items():
                entries = data.get(section)
                if isinstance(entries, list):
                    data = {**data, section: [{"driver": driver, **e} if isinstance(e, dict) else e for e in entries]}
        return data

    def sections(self) -> dict[str, list[DeviceConfig]]:
        """Every list of devices by its section: ``devices`` and each family's own."""
        return {"devices": self.devices, **{name: getattr(self, name) for name in self.section_drivers}}

    @property
    def all_devices(self) -> list[DeviceConfig]:
        """To the agent, a camera is a device with a camera driver."""
        return [device for devices in self.sections().values() for device in devices]

    @model_validator(mode="after")
    def _unique_ids(self) -> "_AgentConfigBase":
        seen: set[str] = set()
        for device in self.all_devices:
            if device.id in seen:
                raise ValueError(f"device id {device.id!r} is used twice")
            seen.add(device.id)
        return self


def _with_family_sections() -> type[_AgentConfigBase]:
    from agent.core.registry import family_sections

    sections = family_sections()
    model = create_model("AgentConfig", __base__=_AgentConfigBase,
                         **{name: (list[DeviceConfig], []) for name in sections})
    model.section_drivers = sections
    return model


AgentConfig = _with_family_sections()


def load_config(path: str | Path, *, standing_for: Path | None = None) -> AgentConfig:
    """Load and fully validate a gateway config, drivers' options and profiles included.
    ``standing_for``: the file at ``path`` is a draft of that one (the web console's rule editor
    checks its drafts in a scratch directory): relative profile and model paths resolve beside it."""
    from agent.core.registry import UnknownDriver, get_driver

    file = Path(path)
    config, root = validate_yaml_file(file, AgentConfig, "a mapping with at least a 'gateway' section")

    problems: list[str] = []
    place = standing_for if standing_for is not None else file
    context = {"config_dir": place.parent.resolve(), "config_file": place}
    sections: dict[str, list[DeviceConfig]] = {name: [] for name in config.sections()}
    for section, index, device in [(name, i, d) for name, devices in config.sections().items()
                                   for i, d in enumerate(devices)]:
        try:
            driver = get_driver(device.driver)
        except UnknownDriver as exc:
            line = line_of(root, (section, index, "driver"))
            problems.append(f"{file}:{line}: {section}[{index}].driver: {exc}")
            continue
        try:
            options = driver.Options.model_validate(device.model_extra or {}, context=context)
        except ValidationError as exc:
            problems += format_validation_error(file, root, exc, (section, index))
            continue
        except ConfigError as exc:   # a referenced file (profile) is wrong: it names itself
            problems += [f"{file}: {section}[{index}]: {p}" for p in exc.problems]
            continue
        device = device.model_copy(update={"options": options})
        problems += _check_alarm_points(file, root, section, index, device, driver)
        sections[section].append(device)
    if not problems:
        by_driver: dict[str, list[DeviceConfig]] = {}
        for device in (device for devices in sections.values() for device in devices):
            by_driver.setdefault(device.driver, []).append(device)
        for name, members in by_driver.items():
            problems += [f"{file}: devices: {p}" for p in get_driver(name).validate_devices(members)]
    if problems:
        raise ConfigError(problems)
    return config.model_copy(update=sections)


def _check_alarm_points(file: Path, root: yaml.Node | None, section: str, index: int, device: DeviceConfig,
                        driver: Any) -> list[str]:
    """An alarm on a point the device does not have would never fire: say so at load time.
    Derived points (``pm25.hour.avg`` of a bridge) count as their base point's."""
    if not device.alarms:
        return []
    known = {point.name for point in driver.describe(device).points}
    if not known:
        return []   # a driver whose points are only known at run time
    problems = []
    for number, rule in enumerate(device.alarms):
        if rule.point not in known and rule.point.split(".", 1)[0] not in known:
            line = line_of(root, (section, index, "alarms", number, "point"))
            problems.append(f"{file}:{line}: {section}[{index}].alarms[{number}].point: {device.id} has no point "
                            f"{rule.point!r}; its points are: {', '.join(sorted(known))}")
    return problems


def unreadable_files(config: AgentConfig, file: Path) -> list[str]:
    """The secret and TLS files ``config`` names that this process cannot read, one problem each
    (``file: key.path: what``). The agent reads them only at start; check-config run as the service
    user (``sudo -u edge-agent edge-agent check-config ...``) finds them first. Secrets from the
    environment are not checked: the service's environment is not this one."""
    problems: list[str] = []

    def visit(value: Any, where: str) -> None:
        if isinstance(value, Secret):
            if value.file is not None:
                try:
                    value.reveal()
                except ConfigError as exc:
                    problems.extend(f"{file}: {where}: {p}" for p in exc.problems)
        elif isinstance(value, Tls):
            for name in ("ca_file", "cert_file", "key_file"):
                path = getattr(value, name)
                if path is not None:
                    try:
                        with open(path, "rb"):
                            pass
                    except OSError as exc:
                        problems.append(f"{file}: {where}.{name}: {path}: cannot be read ({exc.strerror})")
        elif isinstance(value, BaseModel):
            for key, item in value.__dict__.items():
                # a device's driver options are written beside its own keys in the YAML
                visit(item, where if key == "options" else f"{where}.{key}" if where else key)
        elif isinstance(value, (list, tuple)):
            for index, item in enumerate(value):
                visit(item, f"{where}[{index}]")
        elif isinstance(value, dict):
            for key, item in value.items():
                visit(item, f"{where}.{key}")

    visit(config, "")
    return problems
