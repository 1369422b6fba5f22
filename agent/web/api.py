"""The console's JSON (and pictures): what each page polls and the actions it posts.

Every action that changes something goes through the agent's command path (:meth:`Agent.run_local`:
the handler, checks and audit log of the centre's same command), never a path of its own.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from agent import config_apply
from agent.core.driver import ShowsPicture
from agent.web import editor

if TYPE_CHECKING:
    from agent.web.server import WebConsole

SNAPSHOT_TTL = 0.5   # s: several browsers polling share one status snapshot


def json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data, option=orjson.OPT_NON_STR_KEYS), status=status,
                        content_type="application/json")


def refuse(status: int, code: str, message: str) -> web.Response:
    return json({"error": {"code": code, "message": message}}, status)


def failure(kind: type[web.HTTPException], code: str, message: str) -> web.HTTPException:
    """An HTTP error to raise from deep in a handler, with the console's JSON body."""
    return kind(text=orjson.dumps({"error": {"code": code, "message": message}}).decode(),
                content_type="application/json")


class Api:
    def __init__(self, console: "WebConsole"):
        self.console = console
        self._snap: tuple[float, dict[str, Any]] | None = None
        self._pictures: dict[str, tuple[float, Any]] = {}
        self._picture_locks: dict[str, asyncio.Lock] = {}
        self.apply_results: dict[str, dict[str, Any]] = {}   # the console's config.apply outcomes

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/api/overview", self.overview),
            web.get("/api/devices", self.devices),
            web.post("/api/devices/{device}/read", self.read),
            web.post("/api/devices/{device}/write", self.write),
            web.get("/api/events", self.events),
            web.get("/api/events/{event}/files/{name}", self.evidence),
            web.get("/api/cameras", self.cameras),
            web.get("/api/cameras/{device}/picture", self.picture),
            web.get("/api/cameras/{device}/rules", self.rules),
            web.post("/api/cameras/{device}/rules/preview", self.preview),
            web.post("/api/cameras/{device}/rules/apply", self.apply),
            web.get("/api/apply", self.apply_state),
        ]

    # -- helpers ----------------------------------------------------------------------------------

    def _agent(self) -> Any:
        agent = self.console.agent
        if agent is None:
            raise failure(web.HTTPServiceUnavailable, "restarting",
                          "the agent is restarting (a new config); try again in a moment")
        return agent

    def _snapshot(self) -> dict[str, Any]:
        now = time.monotonic()
        agent = self._agent()
        if self._snap is None or now - self._snap[0] > SNAPSHOT_TTL or self._snap[1].get("boot") != agent.boot_id:
            self._snap = (now, agent.snapshot())
        return self._snap[1]

    @staticmethod
    async def _body(request: web.Request) -> dict[str, Any]:
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            raise failure(web.HTTPBadRequest, "malformed", "the request body is not JSON") from None
        if not isinstance(body, dict):
            raise failure(web.HTTPBadRequest, "malformed", "expected a JSON object")
        return body

    def _device(self, request: web.Request) -> tuple[Any, Any]:
        agent = self._agent()
        device_id = request.match_info["device"]
        device = next((d for d in agent.config.all_devices if d.id == device_id and d.enabled), None)
        if device is None:
            raise failure(web.HTTPNotFound, "unknown_device", f"no device {device_id!r}")
        return agent, device

    # -- overview and devices ---------------------------------------------------------------------

    async def overview(self, request: web.Request) -> web.Response:
        snap = self._snapshot()
        agent = self._agent()
        marker = config_apply.in_progress(agent.config.agent.state_dir)
        return json({
            "gateway": snap["gateway"], "site": snap["site"], "agent": snap["agent"], "boot": snap["boot"],
            "started_ms": snap["started_ms"], "ts": snap["ts"], "uplink": snap["uplink"], "buffer": snap["buffer"],
            "boundaries": snap["boundaries"], "loop": snap.get("loop"), "commands": snap.get("commands"),
            "devices": {"total": len(snap["devices"]),
                        "online": sum(1 for d in snap["devices"].values() if d.get("online"))},
            "applying": marker is not None,
        })

    async def devices(self, request: web.Request) -> web.Response:
        agent = self._agent()
        snap = self._snapshot()
        out = []
        for device_id, status in agent.pipeline.devices.items():
            info = agent.pipeline.infos[device_id]
            latest = {r.point: {"v": r.value, "u": r.unit, "q": r.q, "t": r.t} for r in status.last_batch or []}
            entry = snap["devices"].get(device_id, {})
            out.append({"id": device_id, "driver": status.driver, "kind": status.kind, "online": status.online,
                        "last_read_ms": status.last_read_ms, "errors": entry.get("errors", status.errors),
                        "last_error": status.last_error, "readings": status.readings,
                        "points": [{"name": p.name, "unit": p.unit, "type": p.type, "writable": p.writable,
                                    "latest": latest.get(p.name)} for p in info.points]
                        + [{"name": name, "unit": v["u"], "type": None, "writable": False, "latest": v}
                           for name, v in latest.items() if name not in {p.name for p in info.points}]})
        return json({"devices": out, "ts": snap["ts"]})

    async def read(self, request: web.Request) -> web.Response:
        agent, device = self._device(request)
        body = await self._body(request)
        ok, value = await agent.run_local("device.read", {"device": device.id, "point": body.get("point")},
                                          by=self.console.actor(request))
        return json({"ok": True, "result": value}) if ok else json({"ok": False, "error": value}, 422)

    async def write(self, request: web.Request) -> web.Response:
        self.console.require_admin(request)
        agent, device = self._device(request)
        body = await self._body(request)
        ok, value = await agent.run_local("device.write", {"device": device.id, "point": body.get("point"),
                                                           "value": body.get("value")},
                                          by=self.console.actor(request))
        return json({"ok": True, "result": value}) if ok else json({"ok": False, "error": value}, 422)

    # -- events -------------------------------------------------------------------------------------

    async def events(self, request: web.Request) -> web.Response:
        return json({"events": self.console.events.latest()})

    async def evidence(self, request: web.Request) -> web.Response:
        file = self.console.events.file(request.match_info["event"], request.match_info["name"])
        if file is None:
            return refuse(404, "gone", "no such evidence file here (only the latest events' files are kept)")
        disposition = "inline" if file.type.startswith("image/") else "attachment"
        return web.Response(body=file.data, content_type=file.type,
                            headers={"Content-Disposition": f'{disposition}; filename="{file.name}"'})

    # -- cameras ------------------------------------------------------------------------------------

    def _camera(self, request: web.Request) -> tuple[Any, Any, Any]:
        agent, device = self._device(request)
        runner = agent.runner_for(device.id)
        if not isinstance(runner, ShowsPicture):
            raise failure(web.HTTPNotFound, "unsupported", f"{device.id} has no picture")
        return agent, device, runner

    async def cameras(self, request: web.Request) -> web.Response:
        agent = self._agent()
        out = []
        for device in agent.config.all_devices:
            runner = agent.runner_for(device.id)
            if device.enabled and isinstance(runner, ShowsPicture):
                status = agent.pipeline.devices.get(device.id)
                out.append({"id": device.id, "name": device.name, "online": status.online if status else None})
        return json({"cameras": out})

    async def _picture(self, device_id: str, runner: ShowsPicture) -> Any:
        """The camera's picture, encoded at most once per ``picture_interval`` for all browsers."""
        interval = self.console.cfg.picture_interval
        cached = self._pictures.get(device_id)
        if cached is not None and time.monotonic() - cached[0] < interval:
            return cached[1]
        lock = self._picture_locks.setdefault(device_id, asyncio.Lock())
        async with lock:
            cached = self._pictures.get(device_id)
            if cached is not None and time.monotonic() - cached[0] < interval:
                return cached[1]
            picture = await self.console.off_loop(runner.picture, device_id)
            if picture is not None:
                self._pictures[device_id] = (time.monotonic(), picture)
            return picture

    async def picture(self, request: web.Request) -> web.Response:
        agent, device, runner = self._camera(request)
        picture = await self._picture(device.id, runner)
        if picture is None:
            return refuse(503, "no_picture", f"{device.id} has no frame yet (is the stream up?)")
        return web.Response(body=picture.jpeg, content_type="image/jpeg",
                            headers={"X-Frame-Width": str(picture.width), "X-Frame-Height": str(picture.height),
                                     "X-Frame-Time": str(picture.t_ms)})

    def _frame(self, device_id: str) -> tuple[int, int] | None:
        cached = self._pictures.get(device_id)
        return (cached[1].width, cached[1].height) if cached is not None else None

    @staticmethod
    def _where(agent: Any, device: Any) -> tuple[Any, Any, str]:
        """The config file, the device's Driver and its section (``cameras``)."""
        if agent.config_path is None:
            raise editor.Refusal("this agent was not started from a config file: nothing to edit")
        driver = agent.drivers[device.driver]
        return agent.config_path, driver, driver.section or "devices"

    async def rules(self, request: web.Request) -> web.Response:
        agent, device, runner = self._camera(request)
        picture = await self._picture(device.id, runner)
        try:
            path, driver, section = self._where(agent, device)
            # parsing YAML with ruamel takes tens of ms for a gateway's file: not on the loop
            base, shapes = await self.console.off_loop(editor.figures, path, device.id, section, driver)
        except editor.Refusal as exc:
            return refuse(409, "not_editable", str(exc))
        return json({"device": device.id, "base": base,
                     "frame": [picture.width, picture.height] if picture is not None else None,
                     "shapes": [_shape(s) for s in shapes],
                     "kinds": [{"key": k.key, "label": k.label, "kind": k.kind} for k in driver.shape_kinds()],
                     "can_apply": self.console.session_of(request).admin})

    async def _edited(self, request: web.Request) -> tuple[Any, editor.Edited]:
        agent, device, runner = self._camera(request)
        edit = editor.parse_edit(await self._body(request))
        if self._frame(device.id) is None:
            await self._picture(device.id, runner)
        path, driver, section = self._where(agent, device)
        # parse, edit, dump and check-config's checks: 50-200 ms of CPU, in a worker thread
        edited = await self.console.off_loop(editor.edit_file, path, device.id, section, driver, edit,
                                         self._frame(device.id))
        return agent, edited

    async def preview(self, request: web.Request) -> web.Response:
        try:
            agent, edited = await self._edited(request)
        except editor.Refusal as exc:
            return refuse(422, "refused", str(exc))
        return json({"diff": edited.diff, "problems": edited.problems, "shapes": [_shape(s) for s in edited.shapes],
                     "changed": edited.changed})

    async def apply(self, request: web.Request) -> web.Response:
        self.console.require_admin(request)
        try:
            agent, edited = await self._edited(request)
        except editor.Refusal as exc:
            return refuse(422, "refused", str(exc))
        if not edited.changed:
            return refuse(422, "unchanged", "nothing to apply: no figure was changed")
        if edited.problems:
            return json({"ok": False, "error": {"code": "invalid_config", "message": "; ".join(edited.problems)},
                         "problems": edited.problems}, 422)
        ok, value = await agent.run_local("config.apply", {"yaml": edited.text}, by=self.console.actor(request))
        if not ok:
            return json({"ok": False, "error": value}, 422)
        return json({"ok": True, "applying": True,
                     "message": "validated and installed; the agent restarts on it and keeps it once its "
                                "uplink is up (otherwise it goes back to the previous file by itself)"})

    async def apply_state(self, request: web.Request) -> web.Response:
        agent = self.console.agent
        pending = config_apply.in_progress(agent.config.agent.state_dir) if agent is not None else None
        return json({"applying": pending is not None or agent is None,
                     "results": list(self.apply_results.values())[-5:]})


def _shape(shape: Any) -> dict[str, Any]:
    return {"path": list(shape.path), "kind": shape.kind, "label": shape.label,
            "points": [list(p) for p in shape.points], "remove": list(shape.remove)}
