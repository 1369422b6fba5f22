"""Helpers for the web console's tests: a gateway config with a ``web:`` section, and an HTTP
client that logs in and sends the CSRF token like the console's own pages."""

from __future__ import annotations

from typing import Any

import requests
import yaml

from agent.web.passwords import hash_password
from tests.fakes import eventually
from tests.hardware_sim.broker import free_port

ADMIN = ("tech", "correct horse battery")
VIEWER = ("visitor", "just looking around")


def web_section(port: int | None = None, **extra: Any) -> dict[str, Any]:
    return {"port": port or free_port(), "login_per_minute": 30,
            "accounts": [{"name": ADMIN[0], "role": "admin", "password_hash": hash_password(ADMIN[1])},
                         {"name": VIEWER[0], "role": "viewer", "password_hash": hash_password(VIEWER[1])}],
            **extra}


def add_web(config_path, **extra: Any) -> str:
    """Add a web section to a test config; returns the console's base URL."""
    settings = yaml.safe_load(config_path.read_text())
    settings["web"] = web_section(**extra)
    config_path.write_text(yaml.safe_dump(settings, sort_keys=False, allow_unicode=True))
    return f"http://127.0.0.1:{settings['web']['port']}"


class Client:
    def __init__(self, base: str):
        self.base = base
        self.http = requests.Session()
        # not the environment's CA bundle or proxies: a test's own CA (``http.verify``) must count
        self.http.trust_env = False
        self.csrf: str | None = None

    def wait_up(self, timeout: float = 20.0) -> None:
        def answers() -> bool:
            try:
                return self.http.get(self.base + "/login", timeout=2).status_code == 200
            except requests.ConnectionError:   # an SSLError too
                return False
        eventually(answers, timeout, "the console to listen")

    def login(self, account: tuple[str, str] = ADMIN) -> requests.Response:
        response = self.http.post(self.base + "/api/login", json={"name": account[0], "password": account[1]})
        if response.ok:
            self.csrf = response.json()["csrf"]
        return response

    def get(self, path: str, **kw: Any) -> requests.Response:
        return self.http.get(self.base + path, allow_redirects=False, timeout=10, **kw)

    def post(self, path: str, body: Any = None, *, csrf: str | None | bool = True, **kw: Any) -> requests.Response:
        headers = kw.pop("headers", {})
        token = self.csrf if csrf is True else csrf
        if token:
            headers["X-CSRF-Token"] = token
        return self.http.post(self.base + path, json=body, headers=headers, timeout=30, **kw)
