"""The web console's HTTP entry: raw requests over a real socket into the console of a real
``agent.app.Agent`` (agent/web/server.py on the target's own event loop).

The agent is built from a config in the worker's directory with a Modbus device and a camera,
neither reachable (the agent is not run: reads and writes meet a device that does not answer,
the camera has no picture, so the rule editor refuses before it would apply anything). One admin
session is opened directly in the console's store, so requests can carry a valid cookie and
CSRF token, a forged one, or none.

Requests: well-formed ones to every route (methods, paths with odd ids and encodings, the
session's cookie and token or not, an Origin, JSON bodies of logins, writes and rule edits with
their fields replaced), and those same bytes mutated (request line, headers, lengths, bodies).

Contract, per request: the server never fails on it (no failure counted on the ``web.http``
boundary, no 500), holds the loop for at most 50 ms of CPU per callback, answers or closes
within the hang limit, and serves nothing but the login page and static files without a valid
session (a 200 anywhere else is a finding).
"""

from __future__ import annotations

import asyncio
import json
import random
from pathlib import Path
from typing import Any

import yaml

from bench.fuzz_targets.base import Target
from bench.fuzz_targets.mutate import mutate_bytes, random_bytes, weird_value

PATHS = ("/", "/login", "/static/style.css", "/static/console.js", "/static/../server.py", "/metrics",
         "/api/login", "/api/logout", "/api/me", "/api/overview", "/api/devices", "/api/devices/aq-01/read",
         "/api/devices/aq-01/write", "/api/devices/%2e%2e/write", "/api/events", "/api/events/x/files/0.jpg",
         "/api/cameras", "/api/cameras/cam-01/picture", "/api/cameras/cam-01/rules",
         "/api/cameras/cam-01/rules/preview", "/api/cameras/cam-01/rules/apply", "/api/cameras/aq-01/rules",
         "/api/apply", "/nowhere", "//api/overview", "/api/overview?x=" + "a" * 300)
PUBLIC = ("/login", "/static/", "/api/login")
BODIES: tuple[Any, ...] = (
    {"name": "tech", "password": "wrong"}, {"name": "nobody", "password": ""},
    {"point": "pm25"}, {"point": "fan_on", "value": False},
    {"ops": [{"op": "add", "kind": "zone_intrusion", "points": [[1, 1], [100, 1], [100, 100]]}]},
    {"base": "0" * 64, "ops": [{"op": "move", "path": ["rules", 0, "zone"], "points": [[1, 1], [2, 2], [3, 9]]}]},
    {"ops": [{"op": "remove", "path": ["detect", "ignore", 0]}]}, {},
)


def _replace(rng: random.Random, node: Any, depth: int = 0) -> Any:
    if isinstance(node, dict) and node and depth < 4 and rng.random() < 0.7:
        key = rng.choice(list(node))
        node[key] = _replace(rng, node[key], depth + 1)
        return node
    if isinstance(node, list) and node and depth < 4 and rng.random() < 0.7:
        node[rng.randrange(len(node))] = _replace(rng, node[rng.randrange(len(node))], depth + 1)
        return node
    return weird_value(rng)


class WebHttp(Target):
    name = "web.http"
    share = 0.5
    on_loop = True

    def setup(self, workdir: Path) -> None:
        from agent.app import Agent
        from agent.config import load_config
        from agent.core import loopwatch
        from agent.web.passwords import hash_password
        from agent.web.server import WebConsole
        from tests.hardware_sim.broker import free_port

        (workdir / "state").mkdir()
        self.port = free_port()
        config = {
            "gateway": {"id": "gw-fuzz", "site": "lab"},
            "uplink": {"mqtt": {"host": "127.0.0.1", "port": 1}},
            "buffer": {"path": str(workdir / "outbox.db"), "durable": False},
            "agent": {"state_dir": str(workdir / "state")},
            "devices": [{"id": "aq-01", "driver": "modbus", "unit": 1, "profile": "air_monitor_rs485",
                         "connection": {"type": "tcp", "host": "192.0.2.10", "port": 502, "timeout": "100ms"}}],
            "cameras": [{"id": "cam-01", "url": "rtsp://192.0.2.30/s", "model": "vehicles",
                         "detect": {"ignore": [[[0, 0], [50, 0], [50, 20]]]}}],
            "commands": {"timeout": "500ms"},
            "web": {"port": self.port, "login_per_minute": 600, "max_body": "16KiB",
                    "accounts": [{"name": "tech", "role": "admin", "password_hash": hash_password("a long password")}]},
        }
        self.config_path = workdir / "gateway.yaml"
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)
        self.watch = loopwatch.install(clock="cpu", every_loop=True)
        loaded = load_config(self.config_path)
        self.agent = Agent(loaded, self.config_path)
        self.console = WebConsole(loaded.web)
        self.console.attach(self.agent)
        self.loop.run_until_complete(self.console.start())
        self.token, session = self.console.sessions.open("tech", "admin")
        self.csrf = session.csrf
        self.answer: bytes = b""

    # -- inputs ---------------------------------------------------------------------------------

    def _request(self, rng: random.Random) -> tuple[bytes, bool]:
        method = rng.choice(("GET", "GET", "POST", "POST", "HEAD", "PUT", "DELETE", "OPTIONS", "G\x00T"))
        path = rng.choice(PATHS)
        if rng.random() < 0.1:
            path = path.replace("aq-01", rng.choice(("", "x" * 300, "%00", "caf%C3%A9", "..", "cam-01")))
        logged_in = rng.random() < 0.6
        headers = [f"Host: 127.0.0.1:{self.port}", "Connection: close"]
        if logged_in:
            headers.append(f"Cookie: edge_session={self.token}")
        elif rng.random() < 0.3:
            headers.append(f"Cookie: edge_session={rng.choice(('forged', 'x' * 400, self.token[:-1]))}")
        token = rng.random()
        if token < 0.6:
            headers.append(f"X-CSRF-Token: {self.csrf}")
        elif token < 0.75:
            headers.append("X-CSRF-Token: " + rng.choice(("forged", "", self.csrf + "x")))
        if rng.random() < 0.15:
            headers.append("Origin: " + rng.choice(("http://evil.example", f"http://127.0.0.1:{self.port}", "null")))
        body = b""
        if method in ("POST", "PUT") or rng.random() < 0.1:
            if rng.random() < 0.85:
                value = json.loads(json.dumps(rng.choice(BODIES)))
                if rng.random() < 0.6:
                    value = _replace(rng, value)
                try:
                    body = json.dumps(value, ensure_ascii=rng.random() < 0.5).encode("utf-8", "surrogatepass")
                except (ValueError, TypeError):
                    body = b"{}"
            else:
                body = random_bytes(rng, 600)
            headers.append("Content-Type: application/json")
            # a length beyond the body would only make the server wait for the rest (the read's timeout)
            length = len(body) if rng.random() < 0.9 else rng.choice((0, max(0, len(body) - 3)))
            headers.append(f"Content-Length: {length}")
        if rng.random() < 0.02:
            headers.append("X-Filler: " + "a" * rng.choice((1000, 9000)))
        raw = f"{method} {path} HTTP/1.1\r\n".encode("utf-8", "surrogatepass") + \
            "\r\n".join(headers).encode("utf-8", "surrogatepass") + b"\r\n\r\n" + body
        return raw, logged_in

    def generate(self, rng: random.Random) -> tuple[bytes, bool]:
        raw, logged_in = self._request(rng)
        if rng.random() < 0.25:
            return mutate_bytes(rng, raw, rounds=rng.choice((1, 1, 2, 4))), False
        return raw, logged_in

    def to_bytes(self, case: tuple[bytes, bool]) -> bytes:
        return case[0]

    # -- feeding --------------------------------------------------------------------------------

    def feed(self, case: tuple[bytes, bool]) -> None:
        self.watch.reset()
        self.answer = self.loop.run_until_complete(self._exchange(case[0]))
        self.handler_cpu = self.watch.max_s

    async def _exchange(self, raw: bytes) -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        try:
            writer.write(raw)   # no EOF after it: aiohttp takes that for a client gone and cancels
            await writer.drain()
            # a request the mutations cut short leaves the server waiting for the rest: give up then
            return await asyncio.wait_for(reader.read(1 << 20), 1.0)
        except (ConnectionError, asyncio.TimeoutError):
            return b""
        finally:
            writer.close()
            try:
                await writer.wait_closed()
            except ConnectionError:
                pass

    def check(self, case: tuple[bytes, bool]) -> None:
        raw, _ = case
        head = self.answer.split(b"\r\n", 1)[0]
        parts = head.split(b" ")
        status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else None
        if status is not None and status >= 500 and status != 503:   # 503: no picture yet, or restarting
            self.problem("server error", head.decode("latin-1")[:200])
        if status == 200 and f"edge_session={self.token}".encode() not in raw:
            line = raw.split(b"\r\n", 1)[0].decode("latin-1")
            target = line.split(" ")[1] if line.count(" ") >= 2 else ""
            if not any(target.startswith(p) for p in PUBLIC) and target.split("?")[0] != "/login":
                self.problem("served without a session", line[:200])

    def close(self) -> None:
        self.loop.run_until_complete(self.console.stop())
        if self.agent.audit is not None:
            self.agent.audit.close()
        self.agent.outbox.close()
        self.loop.close()
