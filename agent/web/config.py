"""The ``web:`` section of the gateway config: the console for a technician at the cabinet.

Absent, nothing listens. Present, the agent serves the console on ``bind:port`` (127.0.0.1 unless
set: a gateway's other ports face the street) to the accounts listed here, each with a scrypt
hash written by ``edge-agent web-passwd`` (never a password in the YAML).

```yaml
web:
  bind: 0.0.0.0          # the cabinet's service port; 127.0.0.1 by default
  port: 8080
  tls: {cert_file: /etc/edge-agent/web.crt, key_file: /etc/edge-agent/web.key}
  accounts:
    - {name: tech, role: admin, password_hash: "scrypt$16384$8$1$..."}
    - {name: visitor, role: viewer, password_hash: "scrypt$..."}
```
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from agent.core.config import Strict
from agent.core.units import Duration, Size
from agent.web.passwords import check_format


class WebTls(Strict):
    cert_file: Path
    key_file: Path


class WebAccount(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.@-]{1,64}$")
    role: Literal["viewer", "admin"] = "viewer"   # viewer: looks; admin: also writes points and applies rules
    password_hash: str                            # from `edge-agent web-passwd`

    @field_validator("password_hash")
    @classmethod
    def _hash(cls, value: str) -> str:
        problem = check_format(value)
        if problem:
            raise ValueError(f"{problem}; write one with `edge-agent web-passwd NAME`")
        return value


class Web(Strict):
    bind: str = "127.0.0.1"
    port: int = Field(default=8080, ge=1, le=65535)
    tls: WebTls | None = None
    accounts: list[WebAccount] = Field(min_length=1)
    session_idle: Duration = 1800.0      # a session unused this long has expired
    session_max: Duration = 12 * 3600.0  # and any session after this long (one working day)
    login_per_minute: float = Field(default=5.0, gt=0, le=600)   # attempts per client address and per name
    max_body: Size = 256 * 1024          # a larger request is refused unread (413)
    metrics_public: bool = False         # /metrics without a login (a Prometheus on the gateway's network)
    picture_interval: Duration = 1.0     # a camera's picture is encoded at most this often, however many browsers

    @field_validator("bind")
    @classmethod
    def _bind(cls, value: str) -> str:
        try:
            ipaddress.ip_address(value)
        except ValueError:
            raise ValueError(f"expected an IP address to listen on (127.0.0.1, 0.0.0.0, ::), got {value!r}") from None
        return value

    @model_validator(mode="after")
    def _unique(self) -> "Web":
        names = [a.name for a in self.accounts]
        doubled = sorted({n for n in names if names.count(n) > 1})
        if doubled:
            raise ValueError(f"account name(s) used twice: {', '.join(doubled)}")
        return self
