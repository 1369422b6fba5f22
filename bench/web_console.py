"""Benchmark: what the web console costs the agent. Prints figures, asserts nothing.

The real agent process (``python -m agent run``) on an air monitor (Modbus TCP, three units at
1 s) and the simulated junction camera (RTSP, detector, rules) with a local Mosquitto, measured
with psutil over the same window in three runs:

  off       no ``web:`` section (nothing listens): the baseline;
  idle      the console on, no browser;
  browsers  the console on, one headless Chromium on the overview page and one on the camera's
            page (its picture refreshed every second, the rules drawn over it); on the Modbus-only
            gateway, one on the overview and one on the devices page (every value, each second);

off and idle twice: on a gateway of Modbus devices only (the camera's pipeline moves CPU and RSS
by more than the console costs idle), and with the camera; the browsers in the same process as
an idle measurement just before (two agent runs with the camera differ by tens of MiB, more than
the browsers cost); and what importing the console's libraries adds to a fresh interpreter;

then the camera picture's latency from a client polling it: the request's time (p50/p95: mostly
the JPEG encoding when the cached picture is older than ``picture_interval``) and the age of the
frame when it arrives (capture to delivery).

    .venv/bin/python bench/web_console.py [--seconds 30] [--warmup 15]

The figures are CPU of the agent process (% of one core) and its RSS; on a shared machine they
are noisy: compare the runs of one invocation, not runs of different days.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import psutil  # noqa: E402
import yaml  # noqa: E402

from tests.agent_proc import AgentProcess, agent_config  # noqa: E402
from tests.hardware_sim.broker import MosquittoBroker  # noqa: E402
from tests.hardware_sim.camera_sim import CameraSim, junction_camera  # noqa: E402
from tests.hardware_sim.modbus_sim import ModbusSim  # noqa: E402
from tests.hardware_sim.signal_controller import FAST_PLAN, SignalControllerSim  # noqa: E402
from tests.web_helpers import ADMIN, Client, web_section  # noqa: E402


def measure(pid: int, seconds: float) -> dict[str, float]:
    process = psutil.Process(pid)
    before, started = process.cpu_times(), time.monotonic()
    rss = []
    while time.monotonic() - started < seconds:
        rss.append(process.memory_info().rss)
        time.sleep(0.5)
    after, wall = process.cpu_times(), time.monotonic() - started
    cpu = (after.user + after.system - before.user - before.system) / wall * 100
    return {"cpu_percent": cpu, "rss_mib": statistics.median(rss) / 2**20, "rss_max_mib": max(rss) / 2**20}


def run(label: str, workdir: Path, settings: dict[str, Any], seconds: float, warmup: float,
        browsers: tuple[str, ...] = ()) -> tuple[dict[str, float], Any, dict[str, float] | None]:
    """One agent process: measured as it is; with ``browsers``, measured again in the same process
    with the two browsers open (the camera's RSS differs more between two runs than the console
    adds, so the browsers' cost is taken within one run)."""
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "gateway.yaml"
    settings = {**settings, "buffer": {"path": str(workdir / "outbox.db"), "max_bytes": "64MiB"},
                "agent": {**settings["agent"], "state_dir": str(workdir / "state")}}
    config.write_text(yaml.safe_dump(settings, sort_keys=False))
    opened: list[Any] = []
    busy = latency = None
    with AgentProcess(config, workdir / "agent.log", check_loop=False).start() as agent:
        if settings.get("cameras"):
            agent.wait_status(lambda s: s["devices"].get("cam-01", {}).get("online"), 60)
        else:
            agent.wait_status(lambda s: s["uplink"]["state"] == "connected", 30)
        base = f"http://127.0.0.1:{settings['web']['port']}" if "web" in settings else None
        if base:
            Client(base).wait_up()
        time.sleep(warmup)
        figures = measure(agent.pid, seconds)
        _report(label, figures, agent)
        if browsers:
            from tests.web_browser import chrome, login
            for page in browsers:
                browser = chrome()
                opened.append(browser)
                login(browser, base, *ADMIN)
                browser.get(base + "/" + page)
            time.sleep(warmup)
            busy = measure(agent.pid, seconds)
            _report("+browsers", busy, agent)
            for browser in opened:
                browser.quit()
        elif base and settings.get("cameras"):
            latency = picture_latency(base, seconds)
    return figures, latency, busy


def _report(label: str, figures: dict[str, float], agent: AgentProcess) -> None:
    loop = (agent.status() or {}).get("loop", {})
    print(f"{label:10} agent CPU {figures['cpu_percent']:5.1f} % of a core, RSS {figures['rss_mib']:6.1f} MiB "
          f"(max {figures['rss_max_mib']:.1f}); longest loop callback so far {loop.get('max_callback_ms') or 0:.1f} ms "
          f"({loop.get('max_callback') or '?'})", flush=True)


def picture_latency(base: str, seconds: float) -> dict[str, float]:
    client = Client(base)
    client.login()
    took, age = [], []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        started = time.perf_counter()
        response = client.get("/api/cameras/cam-01/picture")
        took.append((time.perf_counter() - started) * 1000)
        if response.ok:
            age.append(time.time() * 1000 - int(response.headers["X-Frame-Time"]))
        time.sleep(0.35)   # a browser asks once a second; three times as often mixes cached and fresh
    q = statistics.quantiles
    return {"requests": len(took), "p50_ms": statistics.median(took), "p95_ms": q(took, n=20)[18],
            "age_p50_ms": statistics.median(age), "age_p95_ms": q(age, n=20)[18]}


def import_cost() -> float:
    """MiB of RSS that importing the console adds to an interpreter that has the agent loaded."""
    import subprocess
    code = ("import psutil; p = psutil.Process(); import agent.app, agent.runtime; a = p.memory_info().rss; "
            "import agent.web.server; print((p.memory_info().rss - a) / 2**20)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    return float(out.stdout.strip() or "nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--warmup", type=float, default=15.0)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    import tempfile
    root = args.workdir or Path(tempfile.mkdtemp(prefix="bench-web-"))
    with MosquittoBroker(workdir=root / "mosquitto") as broker, \
            ModbusSim("air_monitor_rs485", units=[1, 2, 3], tcp=("127.0.0.1", 0)).run_in_thread() as sim, \
            SignalControllerSim(FAST_PLAN, snmp=("127.0.0.1", 0)).run_in_thread() as controller, \
            CameraSim(plan=FAST_PLAN, plan_epoch=controller.controller.t0, seed=2, flow=4.0,
                      rates={"red_light": 0, "illegal_parking": 0, "wrong_way": 0, "zone_intrusion": 1.0}) as camera:
        devices = [{"id": f"aq-0{u}", "driver": "modbus", "unit": u, "profile": "air_monitor_rs485", "poll": "1s",
                    "connection": {"type": "tcp", "host": "127.0.0.1", "port": sim.tcp_address[1],
                                   "timeout": "300ms"}} for u in (1, 2, 3)]
        path = agent_config(root, broker_port=broker.port, devices=devices)
        settings = yaml.safe_load(path.read_text())
        entry = junction_camera(camera.junction, url=camera.url)
        entry.pop("signal")
        entry["rules"] = [r for r in entry["rules"] if r["type"] not in ("red_light", "stop_line")]
        settings["cameras"] = [entry]
        settings["agent"]["status_interval"] = "1s"
        print(f"web console bench: {psutil.cpu_count()} cores, load {psutil.getloadavg()[0]:.1f}; "
              f"{args.seconds:g} s measured after {args.warmup:g} s", flush=True)
        # the camera's pipeline moves CPU and RSS by more than the console costs idle: the idle
        # figures come from a gateway of Modbus devices only, the browsers' from the camera's
        light = {**settings, "cameras": []}
        light_off, _, _ = run("light off", root / "light-off", light, args.seconds, args.warmup)
        light_idle, _, light_busy = run("light idle", root / "light-idle", {**light, "web": web_section()},
                                        args.seconds, args.warmup, browsers=("#overview", "#devices"))
        off, _, _ = run("cam off", root / "off", settings, args.seconds, args.warmup)
        idle, latency, _ = run("cam idle", root / "idle", {**settings, "web": web_section()}, args.seconds,
                               args.warmup)
        before, _, busy = run("cam idle", root / "browsers", {**settings, "web": web_section()}, args.seconds,
                              args.warmup, browsers=("#overview", "#camera/cam-01"))
    print(f"\nthe console's libraries (aiohttp, prometheus-client, ruamel.yaml) and code: "
          f"RSS {import_cost():+.1f} MiB in a fresh interpreter")
    print(f"added by the console, idle (Modbus gateway):  CPU {light_idle['cpu_percent'] - light_off['cpu_percent']:+5.1f} "
          f"% of a core, RSS {light_idle['rss_mib'] - light_off['rss_mib']:+6.1f} MiB")
    print(f"added by the console, idle (with the camera): CPU {idle['cpu_percent'] - off['cpu_percent']:+5.1f} "
          f"% of a core, RSS {idle['rss_mib'] - off['rss_mib']:+6.1f} MiB")
    print(f"added by two browsers, Modbus gateway:        CPU "
          f"{light_busy['cpu_percent'] - light_idle['cpu_percent']:+5.1f} % of a core, RSS "
          f"{light_busy['rss_mib'] - light_idle['rss_mib']:+6.1f} MiB   (overview and devices pages; same process)")
    print(f"added by two browsers to the idle console:    CPU {busy['cpu_percent'] - before['cpu_percent']:+5.1f} "
          f"% of a core, RSS {busy['rss_mib'] - before['rss_mib']:+6.1f} MiB   (one on the overview, one on the "
          "camera page; same process)")
    if latency:
        print(f"camera picture ({latency['requests']} requests): request p50 {latency['p50_ms']:.1f} ms, "
              f"p95 {latency['p95_ms']:.1f} ms; frame age on arrival p50 {latency['age_p50_ms']:.0f} ms, "
              f"p95 {latency['age_p95_ms']:.0f} ms")


if __name__ == "__main__":
    main()
