"""Config primitives every family uses: the strict base, secrets, the keys every device has, and
the YAML loading that names the file, line, key path and what was expected in every problem.

:mod:`agent.config` builds the gateway's config on these; a family validates its own keys with
an ``Options`` model on :class:`Strict` and never imports the agent's config.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from agent.core.units import Duration

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


def line_of(root: yaml.Node | None, loc: tuple[Any, ...]) -> int | None:
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
        line = line_of(root, loc)
        where = f"{file}:{line}" if line else str(file)
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown key (check its spelling and indentation)"
        elif item["type"] == "missing":
            message = "required key is missing"
        problems.append(f"{where}: {_key_path(loc)}: {message}")
    return problems


MAX_YAML_VALUES = 100_000   # values a config file may hold once its aliases are expanded


def _expanded_values(root: yaml.Node) -> int:
    """How many values (scalars and collections) the document holds once every alias is expanded;
    more than MAX_YAML_VALUES for an alias that contains itself. Counted on the node graph, shared
    nodes once each, so a 'billion laughs' of ten lines costs ten lines here."""
    sizes: dict[int, int] = {}
    open_: set[int] = set()

    def size(node: yaml.Node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in open_:
            return MAX_YAML_VALUES + 1
        open_.add(key)
        total = 1
        if isinstance(node, yaml.SequenceNode):
            children = node.value
        elif isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        else:
            children = []
        for child in children:
            total += size(child)
            if total > MAX_YAML_VALUES:
                break
        open_.discard(key)
        sizes[key] = total
        return total

    return size(root)


def read_yaml(file: Path, what: str = "a config") -> tuple[Any, yaml.Node | None]:
    """Parse a YAML file; raise ConfigError naming the file and line on a syntax error.

    Besides syntax, refused as ConfigError (never another exception, found by bench/fuzz.py):
    values Python cannot build (``2024-13-45``, an integer of 5000 digits, ``!!int 0x``), aliases
    that expand beyond MAX_YAML_VALUES or contain themselves (validation and its messages would
    walk every expanded value: an alias bomb of nine lines hung the loader), nesting too deep."""
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
        if root is not None and _expanded_values(root) > MAX_YAML_VALUES:
            raise ConfigError([f"{file}: its aliases (*name) expand to more than {MAX_YAML_VALUES} values, "
                               f"or contain themselves: too much to be {what}"])
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{file}:{mark.line + 1}" if mark else str(file)
        raise ConfigError([f"{where}: not valid YAML ({getattr(exc, 'problem', exc)})"]) from exc
    except (ValueError, OverflowError) as exc:   # a constructor's: a date, an integer Python refuses
        raise ConfigError([f"{file}: not valid YAML (a value cannot be read: {str(exc)[:120]})"]) from None
    except RecursionError:
        raise ConfigError([f"{file}: nested too deeply to be {what}"]) from None
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


def redact(text: str, secrets: list[str]) -> str:
    """Replace every secret value in text; for log lines that might echo a library's message."""
    for secret in secrets:
        if secret:
            text = re.sub(re.escape(secret), "***", text)
    return text
