"""The console's HTTP server: an aiohttp application on the agent's own asyncio loop.

It lives beside the agent, not inside it (``agent.runtime`` starts it once): when
``config.apply`` restarts the agent on a new config, the server keeps listening, the
technician's session goes on, and the pages say "restarting" until the new agent is attached.

Every request passes, in order: the ``web.http`` boundary (a bug meeting one request is counted
and answered 500, never more), security headers, the login check (nothing but the login page
and static files without a session; ``/metrics`` too unless ``metrics_public``), and for
anything that changes something the CSRF token and the Origin. Bodies larger than ``max_body``
are refused unread (413).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from aiohttp import web

from agent.core.boundary import boundary
from agent.core.ratelimit import Throttle
from agent.web import passwords
from agent.web.api import Api, failure, json, refuse
from agent.web.config import Web
from agent.web.events import EventLog
from agent.web.metrics import exposition, registry
from agent.web.sessions import Session, Sessions, LoginLimiter

log = logging.getLogger("agent.web")
HTTP = boundary("web.http")
STATIC = Path(__file__).parent / "static"
COOKIE = "edge_session"
PUBLIC = {"/login", "/api/login", "/favicon.ico"}
SESSION_KEY = web.RequestKey("session", object)   # the request's Session, or None
SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}
HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; media-src 'self' blob:; "
                               "style-src 'self'; script-src 'self'; frame-ancestors 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}


class _Quieter(logging.Filter):
    """aiohttp logs every malformed request with its traceback at ERROR: a port scanner on the
    cabinet's network would fill the journal. One line a minute, without the traceback."""

    def __init__(self) -> None:
        super().__init__()
        self._throttle = Throttle()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.ERROR:
            return True
        if not self._throttle.ready():
            return False
        held = self._throttle.held()
        record.exc_info = record.exc_text = None
        record.msg = f"web console: {record.getMessage()} (a malformed request, refused with 400)" + (
            f"; {held} more since the last report" if held else "")
        record.args = ()
        return True


logging.getLogger("aiohttp.server").addFilter(_Quieter())


class WebConsole:
    def __init__(self, cfg: Web):
        self.cfg = cfg
        self.agent: Any = None   # the running agent.app.Agent (not imported: only the runtime imports it)
        self.sessions = Sessions(cfg.session_idle, cfg.session_max)
        self.limiter = LoginLimiter(cfg.login_per_minute)
        self._limited_audit = Throttle()
        self.events = EventLog()
        self.api = Api(self)
        self._accounts = {a.name: a for a in cfg.accounts}
        self._registry = registry(self._figures)
        self._runner: web.AppRunner | None = None
        # the console's blocking work (JPEG, YAML, scrypt) on one thread of its own: however many
        # browsers ask, it adds one thread (and one malloc arena) to the agent, not a pool's worth
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="web-console")
        self.app = self._build()

    async def off_loop(self, func: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._worker, func, *args)

    # -- the agent it shows ------------------------------------------------------------------------

    def attach(self, agent: Any) -> None:
        self.agent = agent
        agent.pipeline.on_event = self.events.record
        agent.on_local_answer = self._answered

    def detach(self) -> None:
        self.agent = None

    def _answered(self, request_id: str, ok: bool, value: Any) -> None:
        self.api.apply_results[request_id] = {"id": request_id, "ok": ok, "result": value}

    def _figures(self) -> dict[str, Any] | None:
        from agent.status import metrics
        return metrics(self.agent, health=False) if self.agent is not None else None

    # -- life ----------------------------------------------------------------------------------------

    async def start(self) -> str:
        """Listen; returns the console's address."""
        context = None
        if self.cfg.tls is not None:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(self.cfg.tls.cert_file, self.cfg.tls.key_file)
        self._runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.cfg.bind, self.cfg.port, ssl_context=context, reuse_address=True)
        await site.start()
        host = f"[{self.cfg.bind}]" if ":" in self.cfg.bind else self.cfg.bind
        address = f"{'https' if context else 'http'}://{host}:{self.port}/"
        log.info("web console on %s", address)
        return address

    @property
    def port(self) -> int:
        """The port it listens on (the configured one, or the one the system chose for port 0)."""
        if self._runner is not None:
            for server in self._runner.sites:
                sockets = getattr(server._server, "sockets", None)   # noqa: SLF001 - aiohttp exposes no getter
                if sockets:
                    return sockets[0].getsockname()[1]
        return self.cfg.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        self._worker.shutdown(wait=False, cancel_futures=True)

    # -- the application ---------------------------------------------------------------------------

    def _build(self) -> web.Application:
        app = web.Application(client_max_size=self.cfg.max_body,
                              middlewares=[self._guard, self._headers, self._login_required, self._csrf])
        app.add_routes([
            web.get("/login", self._page("login.html")),
            web.get("/", self._page("console.html")),
            web.post("/api/login", self.login),
            web.post("/api/logout", self.logout),
            web.get("/api/me", self.me),
            web.get("/metrics", self.metrics),
            *self.api.routes(),
            web.static("/static", STATIC, append_version=False),
        ])
        return app

    @staticmethod
    def _page(name: str) -> Any:
        async def page(request: web.Request) -> web.StreamResponse:
            return web.FileResponse(STATIC / name, headers={"Cache-Control": "no-store"})
        return page

    # -- middlewares -------------------------------------------------------------------------------

    @web.middleware
    async def _guard(self, request: web.Request, handler: Any) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPException as exc:
            if exc.status == 413:
                return refuse(413, "too_large", f"the request is larger than the console accepts "
                                                f"({self.cfg.max_body} bytes)")
            if exc.status == 404 and exc.content_type != "application/json":
                return refuse(404, "not_found", f"nothing at {request.path[:200]}")
            raise
        except (asyncio.CancelledError, ConnectionResetError):
            raise
        except Exception as exc:   # noqa: BLE001 - see agent/core/boundary.py: one request, not the server
            HTTP.failed(exc, request.rel_url.raw_path_qs, where=f"{request.method} {request.path[:100]}")
            return refuse(500, "internal", "the console could not handle this request (counted in the "
                                           "agent's status)")

    @web.middleware
    async def _headers(self, request: web.Request, handler: Any) -> web.StreamResponse:
        response = await handler(request)
        response.headers.update(HEADERS)
        if request.path.startswith("/api/"):
            response.headers["Cache-Control"] = "no-store"
        return response

    @web.middleware
    async def _login_required(self, request: web.Request, handler: Any) -> web.StreamResponse:
        path = request.path
        session = self.sessions.get(request.cookies.get(COOKIE))
        if session is not None and not self._still_allowed(session):
            self.sessions.close(request.cookies.get(COOKIE))
            session = None
        request[SESSION_KEY] = session
        if session is not None or path in PUBLIC or path.startswith("/static/"):
            return await handler(request)
        if path == "/metrics" and self.cfg.metrics_public:
            return await handler(request)
        if path.startswith("/api/") or path == "/metrics":
            return refuse(401, "login_required", "log in first (or the session expired)")
        raise web.HTTPFound("/login")

    def _still_allowed(self, session: Session) -> bool:
        account = self._accounts.get(session.user)
        return account is not None and account.role == session.role

    @web.middleware
    async def _csrf(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if request.method in SAFE_METHODS:
            return await handler(request)
        origin = request.headers.get("Origin")
        if origin is not None and origin != f"{request.scheme}://{request.host}":
            return refuse(403, "csrf", "the request came from another site's page")
        session: Session | None = request.get(SESSION_KEY)
        if request.path != "/api/login":
            token = request.headers.get("X-CSRF-Token", "")
            if session is None or not token or not _same(token, session.csrf):
                return refuse(403, "csrf", "missing or wrong CSRF token: reload the page")
        return await handler(request)

    # -- sessions --------------------------------------------------------------------------------------

    def session_of(self, request: web.Request) -> Session:
        session = request.get(SESSION_KEY)
        assert session is not None   # the login middleware let it through
        return session

    def actor(self, request: web.Request) -> str:
        return f"web:{self.session_of(request).user}"

    def require_admin(self, request: web.Request) -> None:
        if not self.session_of(request).admin:
            raise failure(web.HTTPForbidden, "forbidden", "this needs an admin account; yours may only look")

    async def login(self, request: web.Request) -> web.Response:
        body = await self.api._body(request)   # noqa: SLF001 - the one JSON reader
        name, password = body.get("name"), body.get("password")
        if not isinstance(name, str) or not isinstance(password, str) or len(name) > 64 or len(password) > 1024:
            return refuse(400, "malformed", "give 'name' and 'password'")
        address = request.remote or "?"
        if not self.limiter.allow(address, name):
            if self._limited_audit.ready(address):   # a flood is one line a minute, not a full disk
                self._audit({"event": "web.login_limited", "by": f"web:{name[:64]}", "from": address,
                             "more": self._limited_audit.held(address)})
            return refuse(429, "rate_limited", "too many login attempts: wait a minute and try again")
        account = self._accounts.get(name)
        # in a worker thread: a check costs about 50 ms of CPU (and the first dummy hash as much)
        good = await self.off_loop(lambda: passwords.verify(
            password, account.password_hash if account is not None else passwords.dummy()))
        if not good or account is None:
            self._audit({"event": "web.login_failed", "by": f"web:{name[:64]}", "from": address})
            return refuse(401, "bad_login", "wrong name or password")
        token, session = self.sessions.open(account.name, account.role)
        self._audit({"event": "web.login", "by": f"web:{account.name}", "from": address})
        response = json({"user": session.user, "role": session.role, "csrf": session.csrf})
        response.set_cookie(COOKIE, token, httponly=True, samesite="Strict", secure=self.cfg.tls is not None,
                            path="/")
        return response

    async def logout(self, request: web.Request) -> web.Response:
        session = self.session_of(request)
        self.sessions.close(request.cookies.get(COOKIE))
        self._audit({"event": "web.logout", "by": f"web:{session.user}"})
        response = json({"ok": True})
        response.del_cookie(COOKIE, path="/")
        return response

    async def me(self, request: web.Request) -> web.Response:
        session = self.session_of(request)
        return json({"user": session.user, "role": session.role, "csrf": session.csrf})

    async def metrics(self, request: web.Request) -> web.Response:
        if self.agent is None:
            return refuse(503, "restarting", "the agent is restarting")
        body = exposition(self._registry)   # on the loop: it reads the agent's live figures (a few ms)
        return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})

    def _audit(self, entry: dict[str, Any]) -> None:
        """Logins go to the agent's audit log beside the changes (not fsynced: a flood of wrong
        passwords must not become a flood of fsyncs)."""
        agent = self.agent
        if agent is not None and agent.audit is not None:
            agent.audit.write(entry, sync=False)


def _same(a: str, b: str) -> bool:
    import hmac
    return hmac.compare_digest(a.encode("utf-8", "surrogateescape"), b.encode("utf-8", "surrogateescape"))
