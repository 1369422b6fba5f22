"""A systemd unit file read as systemd reads it, as far as the service sandbox needs: sections,
``Key=Value`` lines (a repeated key adds to the list, an empty one clears it), comments,
backslash continuations, drop-ins."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

_SECONDS = {"": 1, "s": 1, "sec": 1, "ms": 0.001, "min": 60, "m": 60, "h": 3600}


@dataclass
class Unit:
    name: str
    sections: dict[str, dict[str, list[str]]] = field(default_factory=dict)

    @classmethod
    def read(cls, path: Path, dropins: Path | None = None) -> "Unit":
        """``path`` and then, in name order, the ``*.conf`` drop-ins of ``dropins`` (what
        ``systemctl edit`` writes to /etc/systemd/system/UNIT.d/)."""
        unit = cls(path.name)
        unit._parse(path)
        for extra in sorted(dropins.glob("*.conf")) if dropins is not None and dropins.is_dir() else []:
            unit._parse(extra)
        return unit

    def _parse(self, path: Path) -> None:
        unit = self
        section: dict[str, list[str]] | None = None
        pending = ""
        for raw in path.read_text().splitlines():
            line = pending + raw.strip()
            pending = ""
            if line.endswith("\\"):
                pending = line[:-1] + " "
                continue
            if not line or line[0] in "#;":
                continue
            if line.startswith("[") and line.endswith("]"):
                section = unit.sections.setdefault(line[1:-1], {})
                continue
            if section is None or "=" not in line:
                raise ValueError(f"{path}: cannot read {raw!r}")
            key, value = (part.strip() for part in line.split("=", 1))
            if value == "":
                section[key] = []   # an empty assignment resets the list
            else:
                section.setdefault(key, []).append(value)

    def values(self, key: str, section: str = "Service") -> list[str]:
        return list(self.sections.get(section, {}).get(key, []))

    def value(self, key: str, default: str | None = None, section: str = "Service") -> str | None:
        found = self.values(key, section)
        return found[-1] if found else default

    def flag(self, key: str) -> bool:
        return (self.value(key) or "no").lower() in ("yes", "true", "on", "1", "strict", "full")

    def seconds(self, key: str, default: float) -> float:
        text = self.value(key)
        if text is None:
            return default
        total = 0.0
        for number, unit in re.findall(r"([\d.]+)\s*([a-z]*)", text):
            total += float(number) * _SECONDS[unit]
        return total

    @property
    def exec_start(self) -> list[str]:
        (line,) = self.values("ExecStart")
        if line[0] in "-@+!:" or "%" in line:
            raise NotImplementedError(f"ExecStart prefixes and specifiers are not emulated: {line}")
        return shlex.split(line)

    def environment(self) -> dict[str, str]:
        env: dict[str, str] = {}
        for line in self.values("Environment"):
            for assignment in shlex.split(line):
                key, _, value = assignment.partition("=")
                env[key] = value
        return env

    def words(self, key: str) -> list[str]:
        return [word for line in self.values(key) for word in line.split()]
