"""Gateway config: YAML validated with pydantic at load.

A bad file never half-starts the agent: :func:`load_config` collects every problem, each naming the
file, the key path (``devices[2].connection.port``), the line, and what was expected, and raises
:class:`ConfigError` with all of them.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from agent.units import Duration, Size

M = TypeVar("M", bound=BaseModel)

ID_PATTERN = r"^[A-Za-z0-9_.-]{1,64}$"   # CONTRACT.md: site, gateway, device and event ids


class Strict(BaseModel):
    """Base for config sections: unknown keys are errors, so a typo is caught, not ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Location(Strict):
    lat: float = Field(ge=-90, le=90)
    lon: float = Field(ge=-180, le=180)
    alt: float | None = None


class Secret(Strict):
    """A secret taken from a file (preferred) or an environment variable; never from the YAML itself."""

    file: Path | None = None
    env: str | None = None

    @model_validator(mode="after")
    def _one_source(self) -> "Secret":
        if (self.file is None) == (self.env is None):
            raise ValueError("give exactly one of 'file' or 'env'")
        return self

    def reveal(self) -> str:
        """The secret's value. Raises ConfigError naming the source (never the value) when absent."""
        if self.file is not None:
            try:
                mode = self.file.stat().st_mode
                if mode & 0o007:
                    # like ssh with a private key: a secret anyone on the gateway can read is no secret
                    raise ConfigError([f"secret file {self.file}: readable by every user (mode {mode & 0o777:o}); "
                                       f"run: chmod o-rwx {self.file}"])
                return self.file.read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise ConfigError([f"secret file {self.file}: cannot be read ({exc.strerror})"]) from exc
            except UnicodeDecodeError:   # the message would quote the secret's bytes: say where, not what
                raise ConfigError([f"secret file {self.file}: not UTF-8 text (a key or password is "
                                   "one line of text)"]) from None
        value = os.environ.get(self.env or "")
        if value is None:
            raise ConfigError([f"secret environment variable {self.env} is not set"])
        return value

    def __repr__(self) -> str:  # never show more than where the secret lives
        return f"Secret(file={self.file!s})" if self.file else f"Secret(env={self.env})"


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


class Backoff(Strict):
    initial: Duration = 0.1
    max: Duration = 1.0   # short cap: resume within a second of the broker's return (jitter spreads a fleet)


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
    reconnect: Backoff = Backoff()
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


class ReportPoint(Strict):
    mode: Literal["every_poll", "on_change"] | None = None
    deadband: float | None = Field(default=None, ge=0)
    max_silence: Duration | None = None


class ReportPolicy(Strict):
    """When a read value is sent: every poll, or on change beyond a deadband with a maximum silence."""

    mode: Literal["every_poll", "on_change"] = "every_poll"
    deadband: float = Field(default=0.0, ge=0)     # absolute, in the point's unit
    max_silence: Duration | None = None            # on_change: send anyway after this long
    points: dict[str, ReportPoint] = {}            # per-point overrides


class AlarmRule(Strict):
    """An edge rule: a threshold on one point that raises an event when it has held for a while.

    ``above``/``below`` compare numbers, ``equals`` anything (a door switch, a status string).
    ``clear`` is the hysteresis value at which the alarm ends (default: the limit itself).
    """

    point: str
    above: float | None = None
    below: float | None = None
    equals: bool | int | float | str | None = None
    for_: Duration = Field(default=0.0, alias="for")
    clear: float | None = None
    severity: Literal["critical", "major", "minor", "info"] = "major"
    # default: threshold.<point>; at most 56 characters so that "<type>.cleared" fits the contract's 64
    type: str | None = Field(default=None, pattern=r"^[a-z0-9_.]{1,56}$")

    @model_validator(mode="after")
    def _one_condition(self) -> "AlarmRule":
        given = [name for name in ("above", "below", "equals") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of 'above', 'below' or 'equals'")
        if self.clear is not None and self.equals is not None:
            raise ValueError("'clear' applies to 'above' or 'below', not to 'equals'")
        if self.clear is not None and self.above is not None and self.clear > self.above:
            raise ValueError(f"'clear' ({self.clear}) must not be above 'above' ({self.above})")
        if self.clear is not None and self.below is not None and self.clear < self.below:
            raise ValueError(f"'clear' ({self.clear}) must not be below 'below' ({self.below})")
        return self


class DeviceConfig(BaseModel):
    """The keys every device has. Driver-specific keys (connection, unit, profile ...) are validated
    by the driver's own ``Options`` model and end up in :attr:`options`."""

    model_config = ConfigDict(extra="allow", frozen=True)

    id: str = Field(pattern=ID_PATTERN)
    driver: str
    name: str | None = None
    kind: str | None = None
    enabled: bool = True
    poll: Duration = 1.0
    location: Location | None = None
    report: ReportPolicy = ReportPolicy()
    alarms: list[AlarmRule] = []
    options: Any = None   # the driver's validated Options; filled in by load_config

    @field_validator("poll")
    @classmethod
    def _poll_positive(cls, value: float) -> float:
        if value < 0.01:
            raise ValueError("poll must be at least 10ms")
        return value


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


class AgentConfig(Strict):
    gateway: Gateway
    uplink: Uplink = Uplink()
    buffer: Buffer = Buffer()
    agent: AgentSection = AgentSection()
    devices: list[DeviceConfig] = []
    cameras: list[DeviceConfig] = []   # devices whose driver defaults to "camera" (RTSP + detection)
    commands: Commands = Commands()

    @field_validator("cameras", mode="before")
    @classmethod
    def _camera_driver(cls, value: Any) -> Any:
        if isinstance(value, list):
            return [{"driver": "camera", **v} if isinstance(v, dict) else v for v in value]
        return value

    @property
    def all_devices(self) -> list[DeviceConfig]:
        """Devices and cameras: to the agent, a camera is a device with a camera driver."""
        return [*self.devices, *self.cameras]

    @model_validator(mode="after")
    def _unique_ids(self) -> "AgentConfig":
        seen: set[str] = set()
        for device in [*self.devices, *self.cameras]:
            if device.id in seen:
                raise ValueError(f"device id {device.id!r} is used twice")
            seen.add(device.id)
        return self


class ConfigError(Exception):
    """One or more problems in a config file, each a line for a technician."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


# -- loading ----------------------------------------------------------------------------------

def _key_path(loc: tuple[Any, ...]) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += ("." if path else "") + str(part)
    return path or "(top level)"


def _line_of(root: yaml.Node | None, loc: tuple[Any, ...]) -> int | None:
    """The 1-based line of the YAML node at ``loc``, or of the deepest ancestor that exists."""
    node, line = root, None
    for part in loc:
        if node is None:
            break
        line = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            node = next((v for k, v in node.value if getattr(k, "value", None) == str(part)), None)
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
        else:
            node = None
    if node is not None:
        line = node.start_mark.line + 1
    return line


def format_validation_error(file: Path, root: yaml.Node | None, error: ValidationError,
                            prefix: tuple[Any, ...] = ()) -> list[str]:
    problems = []
    for item in error.errors():
        loc = prefix + tuple(p for p in item["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        line = _line_of(root, loc)
        where = f"{file}:{line}" if line else str(file)
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown key (check its spelling and indentation)"
        elif item["type"] == "missing":
            message = "required key is missing"
        problems.append(f"{where}: {_key_path(loc)}: {message}")
    return problems


def read_yaml(file: Path) -> tuple[Any, yaml.Node | None]:
    """Parse a YAML file; raise ConfigError naming the file and line on a syntax error."""
    try:
        raw = file.read_bytes()
    except OSError as exc:
        raise ConfigError([f"{file}: cannot be read ({exc.strerror})"]) from exc
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        raise ConfigError([f"{file}:{line}: not UTF-8 (byte 0x{raw[exc.start]:02x} at column {column}); "
                           "save the file as UTF-8"]) from None
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{file}:{mark.line + 1}" if mark else str(file)
        raise ConfigError([f"{where}: not valid YAML ({getattr(exc, 'problem', exc)})"]) from exc
    except RecursionError:
        raise ConfigError([f"{file}: nested too deeply to be a config"]) from None
    return data, root


def validate_yaml_file(file: Path, model: type[M], expected: str) -> tuple[M, yaml.Node | None]:
    """A YAML file validated as ``model``, and its node tree (for the line of a later problem).
    Raises ConfigError naming the file, line and key path of every problem."""
    data, root = read_yaml(file)
    if not isinstance(data, dict):
        raise ConfigError([f"{file}: expected {expected}"])
    try:
        return model.model_validate(data), root
    except ValidationError as exc:
        raise ConfigError(format_validation_error(file, root, exc)) from None


def load_config(path: str | Path) -> AgentConfig:
    """Load and fully validate a gateway config, drivers' options and profiles included."""
    from drivers import UnknownDriver, get_driver   # late: drivers import agent.model

    file = Path(path)
    config, root = validate_yaml_file(file, AgentConfig, "a mapping with at least a 'gateway' section")

    problems: list[str] = []
    context = {"config_dir": file.parent.resolve(), "config_file": file}
    sections: dict[str, list[DeviceConfig]] = {"devices": [], "cameras": []}
    for section, index, device in [("devices", i, d) for i, d in enumerate(config.devices)] + \
            [("cameras", i, d) for i, d in enumerate(config.cameras)]:
        try:
            driver = get_driver(device.driver)
        except UnknownDriver as exc:
            line = _line_of(root, (section, index, "driver"))
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
        for device in sections["devices"] + sections["cameras"]:
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
            line = _line_of(root, (section, index, "alarms", number, "point"))
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


def redact(text: str, secrets: list[str]) -> str:
    """Replace every secret value in text; for log lines that might echo a library's message."""
    for secret in secrets:
        if secret:
            text = re.sub(re.escape(secret), "***", text)
    return text
