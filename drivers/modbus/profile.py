"""Device profiles: the register map of one device model, as a YAML file.

A profile says where each point lives (table, address), how to decode it (type, order, scale,
offset), what it means (unit, description), its valid range (min/max: outside it the reading's
quality is ``bad``) and whether the centre may write it.

Addressing, declared per profile because vendor manuals disagree:

- ``protocol``: addresses as sent on the wire, 0-based, with an explicit ``table``.
- ``manual``: the "40001" convention of vendor manuals. The leading digit names the table
  (0 coil, 1 discrete input, 3 input register, 4 holding register) and the rest is 1-based:
  40001 is holding register 0, 30010 is input register 9, 00001 (written 1) is coil 0. Six-digit
  numbers (400001) are read the same way. ``table`` may be omitted; if given it must agree.
  Addresses are converted to protocol addresses at load, so the rest of the driver sees only those.

Loading (:func:`load_profile`) reports every problem with the profile file, the key path
(``points[3].type``) and the line, like the gateway config does.
"""

from __future__ import annotations

import math
import re
import sys
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from agent.core.config import ConfigError, validate_yaml_file
from drivers.modbus import codec

Table = Literal["coil", "discrete_input", "input_register", "holding_register"]
BIT_TABLES = frozenset(("coil", "discrete_input"))
REGISTER_TABLES = frozenset(("input_register", "holding_register"))
WRITABLE_TABLES = frozenset(("coil", "holding_register"))

# the manual convention's leading digit
_MANUAL_TABLES: dict[int, str] = {0: "coil", 1: "discrete_input", 3: "input_register", 4: "holding_register"}



def _bundled_dir() -> Path:
    """The profiles shipped with the agent: config/profiles in a checkout (an editable install), or
    where the wheel's data files put them (share/edge-agent/profiles under the virtualenv, e.g.
    /opt/edge-agent/venv in the Debian package)."""
    checkout = Path(__file__).resolve().parents[2] / "config" / "profiles"
    installed = Path(sys.prefix) / "share" / "edge-agent" / "profiles"
    return checkout if checkout.is_dir() or not installed.is_dir() else installed


BUNDLED_DIR = _bundled_dir()
POINT_NAME = r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$"


class Point(BaseModel):
    """One value of a device. Validated field by field so errors point at the offending key."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=POINT_NAME)
    table: Table | None = None          # required with protocol addressing
    address: int = Field(ge=0, le=465536)
    type: Literal["bool", "int16", "uint16", "int32", "uint32", "float32",
                  "int64", "uint64", "float64", "string"]
    order: str = "ABCD"
    length: int | None = Field(default=None, ge=1, le=codec.MAX_STRING_REGISTERS, validate_default=True)
    bit: int | None = Field(default=None, ge=0, le=15)
    scale: float = 1.0
    offset: float = 0.0
    unit: str | None = None
    min: float | None = None
    max: float | None = None
    writable: bool = False
    description: str | None = None

    @field_validator("order")
    @classmethod
    def _order(cls, value: str) -> str:
        try:
            return codec.normalize_order(value)
        except codec.CodecError as exc:
            raise ValueError(str(exc)) from None

    @field_validator("length")
    @classmethod
    def _length(cls, value: int | None, info: Any) -> int | None:
        kind = info.data.get("type")
        if kind == "string" and value is None:
            raise ValueError("a string needs 'length' (registers, 2 characters each)")
        if kind is not None and kind != "string" and value is not None:
            raise ValueError("'length' is only for type string")
        if kind == "string" and info.data.get("order") not in (None, "ABCD", "BADC"):
            raise ValueError(f"order {info.data['order']} is not supported for strings; use ABCD or BADC")
        return value

    @field_validator("bit")
    @classmethod
    def _bit(cls, value: int | None, info: Any) -> int | None:
        if value is not None and info.data.get("type") not in (None, "bool"):
            raise ValueError("'bit' takes one bit of a register: the point's type must be bool")
        return value

    @field_validator("scale", "offset")
    @classmethod
    def _scale(cls, value: float, info: Any) -> float:
        if not math.isfinite(value):
            raise ValueError("must be a finite number")
        if info.field_name == "scale" and value == 0:
            raise ValueError("scale cannot be 0")
        if info.data.get("type") in ("bool", "string") and value != (1.0 if info.field_name == "scale" else 0.0):
            raise ValueError(f"'{info.field_name}' applies to numeric types only")
        return value

    @field_validator("max")
    @classmethod
    def _range(cls, value: float | None, info: Any) -> float | None:
        low = info.data.get("min")
        if value is not None and low is not None and value < low:
            raise ValueError(f"max ({value:g}) is below min ({low:g})")
        return value

    @field_validator("min", "max")
    @classmethod
    def _numeric_range(cls, value: float | None, info: Any) -> float | None:
        if value is not None and info.data.get("type") in ("bool", "string"):
            raise ValueError(f"'{info.field_name}' applies to numeric types only")
        return value

    # -- derived ------------------------------------------------------------------------------

    @property
    def count(self) -> int:
        """Registers (or bits) this point occupies in its table."""
        if self.bit is not None:
            return 1
        return codec.register_count(self.type, self.length)

    @property
    def end(self) -> int:
        return self.address + self.count


class Profile(BaseModel):
    """A device model's register map."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1)                   # vendor model text, as on the nameplate
    kind: str = Field(pattern=r"^[a-z][a-z0-9_]{0,63}$")   # air_monitor, manhole_cover, lamp_pole, fire_panel ...
    vendor: str | None = None
    description: str | None = None
    addressing: Literal["protocol", "manual"] = "protocol"
    max_gap: int = Field(default=8, ge=0, le=124)     # registers the planner may read through when merging
    points: list[Point] = Field(min_length=1)
    # set once manual addresses are converted: pydantic runs this model's "after" validator again
    # when a loaded profile is handed to a device's Options, and converting twice read protocol
    # address 0 as a manual one (every device with the shipped fire_panel_gateway was refused)
    _converted: bool = PrivateAttr(default=False)

    @model_validator(mode="after")
    def _resolve(self) -> "Profile":
        """Convert manual addresses, then check what needs the whole map. Errors name the key."""
        errors: list[InitErrorDetails] = []

        def error(index: int, key: str, message: str, value: Any) -> None:
            errors.append(InitErrorDetails(type=PydanticCustomError("profile", message),
                                           loc=("points", index, key), input=value))

        addressing = "protocol" if self._converted else self.addressing
        for index, point in enumerate(self.points):
            _resolve_address(addressing, index, point, error)
        if not errors:
            for index, point in enumerate(self.points):
                _check_point_table(index, point, error)
        if not errors:
            _check_names_and_overlaps(self.points, error)
        if errors:
            raise ValidationError.from_exception_data("Profile", errors)
        self._converted = True
        return self

    def point(self, name: str) -> Point:
        for point in self.points:
            if point.name == name:
                return point
        raise KeyError(name)


def _resolve_address(addressing: str, index: int, point: Point, error: Any) -> None:
    if addressing == "protocol":
        if point.table is None:
            error(index, "table", "required key is missing (coil, discrete_input, input_register or "
                  "holding_register)", None)
        elif point.address > 65535:
            error(index, "address", "a protocol address is 0..65535 (is this profile's addressing 'manual'?)",
                  point.address)
        return
    number = point.address
    digits = 6 if number >= 100000 else 5
    leading, rest = divmod(number, 10 ** (digits - 1))
    table = _MANUAL_TABLES.get(leading)
    if table is None or rest == 0:
        error(index, "address", f"{number} is not a manual address: expected 0xxxx coil, 1xxxx discrete input, "
              "3xxxx input register or 4xxxx holding register, counting from 1", number)
        return
    if point.table is not None and point.table != table:
        error(index, "address", f"{number} is a {table.replace('_', ' ')} in the manual convention, "
              f"but the point's table is {point.table}", number)
        return
    point.table = table
    point.address = rest - 1


def _check_point_table(index: int, point: Point, error: Any) -> None:
    table = point.table
    if table in BIT_TABLES:
        if point.type != "bool":
            error(index, "type", f"a {table.replace('_', ' ')} holds one bit: type must be bool", point.type)
        elif point.bit is not None:
            error(index, "bit", f"'bit' is for bools taken from a register, not a {table.replace('_', ' ')}",
                  point.bit)
    elif point.type == "bool" and point.bit is None:
        error(index, "bit", "a bool in a register table needs 'bit' (0..15, 0 = least significant)", None)
    if point.end > 65536:
        error(index, "address", f"the point runs past the last address 65535 ({point.count} registers)",
              point.address)
    if point.writable:
        if table not in WRITABLE_TABLES:
            error(index, "writable", f"a {table.replace('_', ' ')} is read-only", True)
        elif point.bit is not None:
            error(index, "writable", "writing one bit of a register is not supported; "
                  "make the whole register writable instead", True)


def _check_names_and_overlaps(points: list[Point], error: Any) -> None:
    seen: dict[str, int] = {}
    for index, point in enumerate(points):
        if point.name in seen:
            error(index, "name", f"{point.name!r} is used twice (first at points[{seen[point.name]}])", point.name)
        else:
            seen[point.name] = index
    # Overlaps: allowed only between bit points of one register and at most one 16-bit point there.
    by_table: dict[str, list[tuple[int, Point]]] = {}
    for index, point in enumerate(points):
        by_table.setdefault(point.table or "", []).append((index, point))
    bits_seen: dict[tuple[str | None, int, int], int] = {}
    for index, point in enumerate(points):
        if point.bit is not None:
            key = (point.table, point.address, point.bit)
            if key in bits_seen:
                error(index, "bit", f"bit {point.bit} of register {point.address} is already "
                      f"points[{bits_seen[key]}] ({points[bits_seen[key]].name!r})", point.bit)
            bits_seen.setdefault(key, index)
    for items in by_table.values():
        items.sort(key=lambda item: (item[1].address, item[1].bit is not None))
        last_index, last = items[0]
        for index, point in items[1:]:
            if point.address < last.end:
                bits_of_one_register = point.bit is not None and last.count == 1 and point.address == last.address
                if not bits_of_one_register:
                    error(index, "address", f"overlaps points[{last_index}] ({last.name!r}, "
                          f"{last.table} {last.address}..{last.end - 1})", point.address)
                    continue
            if point.end >= last.end:
                last_index, last = index, point


# -- loading ------------------------------------------------------------------------------------

_cache: dict[Path, tuple[int, int, Profile]] = {}


class ProfileNotFound(ConfigError, FileNotFoundError):
    """No profile file by that name: a ConfigError like every profile problem, and a FileNotFoundError."""

    def __init__(self, message: str):
        ConfigError.__init__(self, [message])


def profile_search_dirs(config_dir: Path | None) -> list[Path]:
    """Where a profile name is looked up: the config's ``profiles/`` folder, then the bundled ones."""
    dirs = []
    if config_dir is not None:
        dirs.append(Path(config_dir) / "profiles")
    dirs.append(BUNDLED_DIR)
    return dirs


def looks_like_path(name: str) -> bool:
    """A profile reference is a path (not a name to look up) when it has a folder or a suffix."""
    return "/" in name or name.endswith((".yaml", ".yml"))


def find_profile(name: str, search_dirs: list[Path]) -> Path:
    """The file for a profile name (a file stem) or path. Raises ProfileNotFound with a plain message."""
    if looks_like_path(name):
        candidates = [Path(name)] if Path(name).is_absolute() else [Path(name)] + [d / name for d in search_dirs]
    else:
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
            raise ProfileNotFound(f"profile {name!r} is not a valid name (letters, digits, _ . -)")
        candidates = [d / f"{name}{suffix}" for d in search_dirs for suffix in (".yaml", ".yml")]
    for candidate in candidates:
        try:
            found = candidate.is_file()
        except OSError:   # a name too long for a file name (ENAMETOOLONG) escaped load_config (bench/fuzz.py)
            found = False
        if found:
            return candidate.resolve()
    where = ", ".join(str(d) for d in search_dirs)
    available = sorted({p.stem for d in search_dirs if d.is_dir() for p in d.glob("*.y*ml")})
    raise ProfileNotFound(f"profile {name!r} not found (looked in {where}); "
                            f"available: {', '.join(available) or 'none'}")


def load_profile(name: str, search_dirs: list[Path]) -> Profile:
    """Load and validate a profile by name or path.

    Raises :class:`ConfigError`: one line per problem, ``file:line: key.path: message``, when the
    file is not a valid profile; its subclass :class:`ProfileNotFound` when there is no such file.
    Loaded profiles are cached by path and modification time: many devices share one profile.
    """
    file = find_profile(name, search_dirs)
    stat = file.stat()
    cached = _cache.get(file)
    if cached and cached[:2] == (stat.st_mtime_ns, stat.st_size):
        return cached[2]
    profile, _ = validate_yaml_file(file, Profile, "a mapping with 'model', 'kind' and 'points'")
    _cache[file] = (stat.st_mtime_ns, stat.st_size, profile)
    return profile
