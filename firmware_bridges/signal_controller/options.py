"""The signal-controller bridge's keys in a device entry of the gateway config.

```yaml
- id: tsc-01
  driver: signal_controller
  protocol: ntcip                       # or modbus_io, gbt20999
  connection: {host: 192.0.2.20, port: 161, version: 2c, community: public, timeout: 500ms}
  poll: 200ms
  phases:
    2: {name: north-south through, approach: N, ped: true}
    4: {name: east-west through, approach: E}
  priority: {preempt: 1, dwell_phase: 2, min_duration: 5s, max_duration: 60s}
```

README.md beside this file explains every key. The profile of a Modbus I/O module is loaded and
checked against the phases here, at config load, so a wiring mismatch stops the agent before it starts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Union

from pydantic import (
    Field, TypeAdapter, ValidationError, ValidationInfo, field_validator, model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from agent.core.backoff import Backoff
from agent.core.config import Secret, Strict
from agent.core.units import Duration
from firmware_bridges.signal_controller.timeouts import AnswerTimeout
from drivers.modbus.options import Connection as ModbusConnection
from drivers.modbus.profile import Profile, ProfileNotFound, load_profile, looks_like_path, profile_search_dirs
from firmware_bridges.signal_controller.gbt20999.options import Gbt20999Connection
from firmware_bridges.signal_controller.phases import LampDecoder

DEFAULT_IO_PROFILE = "signal_io_module"
_MODBUS_CONNECTION: TypeAdapter[Any] = TypeAdapter(ModbusConnection)


AUTH_PROTOCOLS = ("none", "md5", "sha", "sha224", "sha256", "sha384", "sha512")
PRIV_PROTOCOLS = ("none", "des", "3des", "aes", "aes192", "aes256")


class NtcipConnection(Strict):
    """SNMP to an NTCIP 1202 controller: v2c with a community, or v3 with a USM user."""

    host: str = Field(min_length=1)
    port: int = Field(default=161, ge=1, le=65535)
    version: Literal["2c", "3"] = "2c"
    # v2c: the community is a password sent in clear; a plain string is accepted because controllers
    # ship with well-known ones, but {file: ...} or {env: ...} keeps a real one out of the config.
    community: Union[str, Secret] = "public"
    user: str | None = None                               # v3
    auth_protocol: Literal[AUTH_PROTOCOLS] = "sha"        # type: ignore[valid-type]
    auth_key: Secret | None = None
    priv_protocol: Literal[PRIV_PROTOCOLS] = "none"       # type: ignore[valid-type]
    priv_key: Secret | None = None
    timeout: AnswerTimeout = 0.5
    retries: int = Field(default=0, ge=0, le=3)   # per poll; the poll loop itself retries next tick

    @field_validator("version", mode="before")
    @classmethod
    def _version(cls, value: Any) -> Any:
        text = str(value).lower().removeprefix("v")
        return {"2": "2c", "2c": "2c", "3": "3"}.get(text, value)

    @model_validator(mode="after")
    def _v3(self) -> "NtcipConnection":
        if self.version == "2c":
            if self.user or self.auth_key or self.priv_key:
                raise ValueError("user, auth_key and priv_key are SNMPv3 keys: set version: 3 or remove them")
            return self
        if not self.user:
            raise ValueError("SNMPv3 needs 'user'")
        if self.auth_protocol != "none" and self.auth_key is None:
            raise ValueError(f"auth_protocol {self.auth_protocol} needs 'auth_key' ({{file: ...}} or {{env: ...}})")
        if self.priv_protocol != "none":
            if self.auth_protocol == "none":
                raise ValueError("privacy (priv_protocol) needs authentication (auth_protocol) too")
            if self.priv_key is None:
                raise ValueError(f"priv_protocol {self.priv_protocol} needs 'priv_key'")
        return self

    def describe(self) -> str:
        return f"snmp v{self.version} {self.host}:{self.port}"


class PhaseConfig(Strict):
    name: str | None = None
    approach: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_-]{1,16}$")   # N, SB, east ...
    ped: bool = False         # the phase has a pedestrian head: publish ped<n> too


class PriorityConfig(Strict):
    """The bounded priority (preemption) request. Requests outside min..max are clamped (README)."""

    preempt: Union[int, dict[int, int]]   # preempt number (ntcip) / coil address (modbus_io), or phase -> that
    dwell_phase: int | None = None        # with a single preempt: the phase the controller serves for it
    min_duration: Duration = 5.0
    max_duration: Duration = 60.0
    max_hold: Duration | None = None      # total, across refreshes; default 3 x max_duration
    centre_silence: Duration | None = None  # release when heartbeat() has not been called for this long
    reassert: Duration = 2.0              # re-send the request this often while held (controllers time it out)
    release_timeout: Duration = 2.0       # how long close() waits for the release write
    release_retry: Duration | None = None  # a release that failed is tried again this often (default: reassert)

    @model_validator(mode="after")
    def _check(self) -> "PriorityConfig":
        if self.min_duration <= 0:
            raise ValueError("min_duration must be positive")
        if self.max_duration < self.min_duration:
            raise ValueError(f"max_duration ({self.max_duration:g}s) is below min_duration ({self.min_duration:g}s)")
        if self.max_hold is not None and self.max_hold < self.max_duration:
            raise ValueError("max_hold is the total time a priority may be held across refreshes: "
                             "it cannot be shorter than max_duration")
        if isinstance(self.preempt, int):
            if self.dwell_phase is None:
                raise ValueError(f"which phase does preempt {self.preempt} serve? Set 'dwell_phase' (the phase "
                                 "the controller's preempt programming holds green), or give 'preempt' as "
                                 "{phase: number}")
        elif self.dwell_phase is not None:
            raise ValueError("'dwell_phase' is only for a single preempt; the mapping already names the phases")
        elif not self.preempt:
            raise ValueError("'preempt' maps phases to preempt numbers (or coil addresses); it is empty")
        if self.reassert < 0.1:
            raise ValueError("reassert must be at least 100ms")
        if self.release_retry is not None and self.release_retry < 0.1:
            raise ValueError("release_retry must be at least 100ms")
        return self

    @property
    def preempts(self) -> dict[int, int]:
        """Phase -> preempt number (ntcip) or coil address (modbus_io)."""
        if isinstance(self.preempt, int):
            return {self.dwell_phase: self.preempt}   # type: ignore[dict-item]
        return dict(self.preempt)

    @property
    def hold_limit(self) -> float:
        return self.max_hold if self.max_hold is not None else 3 * self.max_duration


class Options(Strict):
    protocol: Literal["ntcip", "modbus_io", "gbt20999"]
    connection: Any
    unit: int | None = Field(default=None, validate_default=True)      # modbus_io: the I/O module's unit id
    profile: Profile | None = Field(default=None, validate_default=True)   # modbus_io: its profile
    phases: dict[int, PhaseConfig] = Field(min_length=1)
    priority: PriorityConfig | None = None
    backoff: Backoff = Backoff()
    offline_after: int = Field(default=3, ge=1, le=100)   # consecutive failed polls before "offline"
    detectors: list[int] = Field(default_factory=list)     # gbt20999: detectors to publish (presence, volume)

    @field_validator("detectors")
    @classmethod
    def _detectors(cls, value: list[int], info: ValidationInfo) -> list[int]:
        if value and info.data.get("protocol") != "gbt20999":
            raise ValueError("'detectors' is for protocol gbt20999")
        bad = [d for d in value if not 1 <= d <= 64]
        if bad:
            raise ValueError(f"detector numbers are 1..64, got {bad}")
        return sorted(set(value))

    @field_validator("connection")
    @classmethod
    def _connection(cls, value: Any, info: ValidationInfo) -> Any:
        protocol = info.data.get("protocol")
        if protocol == "ntcip":
            if not isinstance(value, (dict, NtcipConnection)):
                raise ValueError("expected a mapping such as {host: 192.0.2.20, port: 161, community: public}")
            return NtcipConnection.model_validate(value)   # errors keep their keys, under 'connection'
        if protocol == "modbus_io":
            return _MODBUS_CONNECTION.validate_python(value)
        if protocol == "gbt20999":
            if not isinstance(value, (dict, Gbt20999Connection)):
                raise ValueError("expected a mapping such as {transport: udp, host: 192.0.2.30, port: 4050}")
            return Gbt20999Connection.model_validate(value)
        return value   # protocol itself is wrong and reported

    @field_validator("unit")
    @classmethod
    def _unit(cls, value: int | None, info: ValidationInfo) -> int | None:
        protocol = info.data.get("protocol")
        if protocol in ("ntcip", "gbt20999"):
            if value is not None:
                raise ValueError("'unit' is for protocol modbus_io")
            return None
        value = 1 if value is None else value
        if not 1 <= value <= 247:
            raise ValueError("unit must be 1..247")
        return value

    @field_validator("profile", mode="before")
    @classmethod
    def _profile(cls, value: Any, info: ValidationInfo) -> Any:
        if info.data.get("protocol") != "modbus_io":
            if value is not None:
                raise ValueError("'profile' is for protocol modbus_io")
            return None
        if isinstance(value, Profile):
            return value
        name = DEFAULT_IO_PROFILE if value is None else value
        if not isinstance(name, str):
            raise ValueError("expected a profile name (a file in profiles/ or config/profiles/) or a path")
        config_dir = (info.context or {}).get("config_dir")
        if config_dir and looks_like_path(name) and not Path(name).is_absolute():
            name = str(Path(config_dir) / name)
        try:
            return load_profile(name, profile_search_dirs(Path(config_dir) if config_dir else None))
        except ProfileNotFound as exc:
            raise ValueError(exc.problems[0]) from None

    @field_validator("phases")
    @classmethod
    def _phase_numbers(cls, value: dict[int, PhaseConfig]) -> dict[int, PhaseConfig]:
        bad = [p for p in value if not 1 <= p <= 255]
        if bad:
            raise ValueError(f"phase numbers are 1..255 (NTCIP), got {bad}")
        return dict(sorted(value.items()))

    @model_validator(mode="after")
    def _across(self) -> "Options":
        """Checks that need several keys; each error is reported at the key to fix."""
        errors: list[InitErrorDetails] = []

        def error(loc: tuple[str, ...], message: str) -> None:
            errors.append(InitErrorDetails(type=PydanticCustomError("signal_controller", message), loc=loc,
                                           input=None))

        if self.priority is not None:
            for phase, number in self.priority.preempts.items():
                if phase not in self.phases:
                    error(("priority", "preempt"), f"phase {phase} is not in 'phases' "
                          f"({', '.join(map(str, self.phases))})")
                if self.protocol == "ntcip" and not 1 <= number <= 255:
                    error(("priority", "preempt"), f"NTCIP preempt numbers are 1..255, got {number}")
                if self.protocol == "gbt20999" and not 1 <= number <= 255:
                    error(("priority", "preempt"), f"GB/T 20999 stage numbers are 1..255, got {number} "
                          f"(phase {phase}: the stage the controller holds for it)")
        if self.protocol == "modbus_io" and self.profile is not None:
            self._check_profile(self.profile, error)
        if errors:
            raise ValidationError.from_exception_data("Options", errors)
        return self

    def _check_profile(self, profile: Profile, error: Any) -> None:
        """Every lamp the phases need, and every preempt coil, must be in the I/O module's profile."""
        points = {p.name: p for p in profile.points}
        missing = [n for n in LampDecoder.point_names(self.phases, self.peds) if n not in points]
        if missing:
            error(("profile",), f"profile {profile.model!r} has no lamp input for: {', '.join(missing)} "
                  "(points are named phase<n>_red/_yellow/_green and ped<n>_walk/_dont_walk)")
        if self.priority is not None:
            coils = {p.address: p.name for p in profile.points if p.table == "coil" and p.writable}
            for phase, address in self.priority.preempts.items():
                if address not in coils:
                    have = ", ".join(f"{a} ({n})" for a, n in sorted(coils.items())) or "none"
                    error(("priority", "preempt"), f"coil {address} (phase {phase}) is not a writable coil of "
                          f"profile {profile.model!r}; writable coils: {have}")

    # -- derived ---------------------------------------------------------------------------------

    @property
    def peds(self) -> list[int]:
        return [p for p, cfg in self.phases.items() if cfg.ped]

    def preempt_coil_name(self, address: int) -> str:
        """The profile point of a preempt coil (modbus_io)."""
        assert self.profile is not None
        for p in self.profile.points:
            if p.table == "coil" and p.address == address:
                return p.name
        raise KeyError(address)
