"""Benchmark: a GB/T 20999-2017 signal controller (the simulator) on loopback. Prints figures,
asserts nothing.

  1. query -> answer: the bridge's client asks for what one poll reads (14 objects) and gets the
     answer, over UDP and over TCP, p50/p99 over --queries requests;
  2. signed signal.priority -> held stage: a centre publishes a signed command through Mosquitto
     to the agent, which holds the stage at the controller: publish -> the controller takes the
     specified stage, p50/p99 over --commands requests (target p99 under 150 ms, as NTCIP);
  3. lost link's return -> restored plan: a hold whose release could not be written because the
     link was cut; the time from the link's return to the controller's own run mode and plan
     being back, over --cuts cuts of 1..5 s (the agent's default backoff and reassert);
  4. agent killed mid-hold -> restored plan: kill -9 while a stage is held (the controller keeps
     it), start the agent again on the same state directory: the time from the new process's
     start to the controller's own run mode and plan being back (the hold record), --restarts times.

    .venv/bin/python bench/gbt20999.py
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from agent.core.stats import percentile  # noqa: E402
from tests.agent_proc import AgentProcess, agent_config  # noqa: E402
from tests.hardware_sim.broker import MosquittoBroker  # noqa: E402
from tests.hardware_sim.consumer import Consumer  # noqa: E402
from tests.hardware_sim.gbt20999_controller import Gbt20999Sim  # noqa: E402
from tests.hardware_sim.signal_controller import DEFAULT_PLAN  # noqa: E402

GW, SITE, DEVICE = "gw-bench-gb", "lab", "tsc-gb"
KEY = b"bench-gb-key-0123456789abcdef012"
LOCAL_FIXED_TIME = 0x21
PHASES = {2: {"approach": "N", "ped": True}, 4: {"approach": "E", "ped": True}, 6: {}, 8: {}}


def figures(values: list[float]) -> str:
    return f"p50 {percentile(values, .5, None):6.1f} ms   p99 {percentile(values, .99, None):6.1f} ms"


async def query_latency(sim, transport: str, count: int) -> list[float]:
    from firmware_bridges.signal_controller.gbt20999 import objects as o
    from firmware_bridges.signal_controller.gbt20999.client import Gbt20999Client
    from firmware_bridges.signal_controller.gbt20999.options import Gbt20999Connection

    port = sim.udp_address[1] if transport == "udp" else sim.tcp_address[1]
    connection = Gbt20999Connection(transport=transport, host="127.0.0.1", port=port, local_port=0, timeout=1.0)
    client = Gbt20999Client("bench", connection)
    task = asyncio.create_task(client.run())
    await client.wait_link(5)
    ids = [o.lamp_group_state(g) for g in (2, 4, 6, 8, 34, 36)]
    ids += [o.run_mode(1), o.current_plan(1), o.current_stage(1), o.stage_status(1), o.stage_remaining(1),
            o.DETECTOR_PRESENCE, o.detector_volume(2), o.detector_volume(4)]
    took = []
    for _ in range(count):
        started = time.perf_counter()
        await client.query(ids)
        took.append((time.perf_counter() - started) * 1000)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    client.close()
    return took


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--commands", type=int, default=100)
    parser.add_argument("--cuts", type=int, default=5)
    parser.add_argument("--restarts", type=int, default=5)
    parser.add_argument("--release-retry", default=None, help="priority.release_retry (default for gbt20999: 500ms)")
    args = parser.parse_args()

    sim = Gbt20999Sim(DEFAULT_PLAN, udp=("127.0.0.1", 0), tcp=("127.0.0.1", 0)).run_in_thread()
    try:
        for transport in ("udp", "tcp"):
            took = asyncio.run(query_latency(sim, transport, args.queries))
            print(f"query -> answer over {transport.upper()} (14 objects) x{len(took)}:  {figures(took)}")
    finally:
        sim.stop()

    work = Path(tempfile.mkdtemp(prefix="bench-gb-"))
    (work / "key").write_bytes(KEY)
    (work / "key").chmod(0o600)
    broker = MosquittoBroker(workdir=work / "mosquitto", max_queued=0, extra_config=["set_tcp_nodelay true"]).start()
    sim = Gbt20999Sim(DEFAULT_PLAN, udp=("127.0.0.1", 0)).run_in_thread()
    device = {"id": DEVICE, "driver": "signal_controller", "protocol": "gbt20999", "poll": "200ms",
              "connection": {"transport": "udp", "host": "127.0.0.1", "port": sim.udp_address[1], "local_port": 0,
                             "timeout": "300ms"},
              "report": {"mode": "on_change", "max_silence": "10s"}, "phases": PHASES,
              "priority": {"preempt": {2: 1, 4: 2}, "min_duration": "1s", "max_duration": "60s",
                           **({"release_retry": args.release_retry} if args.release_retry else {})}}
    config = agent_config(work, broker_port=broker.port, gateway=GW, site=SITE, devices=[device],
                          commands={"key": {"file": str(work / "key")}, "max_per_second": 1000,
                                    "allow": ["signal.priority"]},
                          agent={"log": {"format": "text", "level": "error"}})
    agent = AgentProcess(config, work / "agent.log", check_loop=False).start()
    centre = Consumer(broker.host, broker.port, gateway=GW, site=SITE).start()
    try:
        agent.wait_status(lambda s: s["uplink"]["state"] == "connected", 30)
        centre.wait_for(lambda c: c.readings(DEVICE, "phase2"), 10)

        to_stage, to_result = [], []
        for i in range(args.commands):
            stage = 1 + i % 2
            count = len(sim.log)
            sent_wall, sent = time.time(), time.monotonic()
            request = centre.send_command("signal.priority", {"device": DEVICE, "phase": 2 if stage == 1 else 4,
                                                              "duration_s": 30}, key=KEY)
            centre.wait_for(lambda c: c.last("cmd_result", request["id"]), 10)
            to_result.append((centre.last("cmd_result", request["id"]).at - sent) * 1000)
            held = [t for t, what, value in sim.log[count:] if what == "stage" and value == stage]
            if held:
                to_stage.append((held[0] - sent_wall) * 1000)
            release = centre.send_command("signal.priority", {"device": DEVICE, "release": True}, key=KEY)
            centre.wait_for(lambda c: c.last("cmd_result", release["id"]), 10)
            time.sleep(0.05)
        print(f"signed signal.priority over GB/T 20999 UDP x{len(to_result)} (publish at the centre -> ...):")
        print(f"  controller holds the stage  {figures(to_stage)}   ({len(to_stage)} seen)")
        print(f"  cmd_result at the centre    {figures(to_result)}")

        back_to_plan = []
        for i in range(args.cuts):
            ended = len(centre.events(DEVICE, "signal.priority_ended"))
            request = centre.send_command("signal.priority", {"device": DEVICE, "phase": 4, "duration_s": 1}, key=KEY)
            centre.wait_for(lambda c: c.last("cmd_result", request["id"]), 10)
            sim.cut()
            centre.wait_for(lambda c: len(c.events(DEVICE, "signal.priority_ended")) > ended, 10)
            time.sleep(1 + i % 5)                 # the link stays down 1..5 s past the expiry
            back = time.monotonic()
            sim.restore()
            while not (sim.held_stage is None and sim.run_mode == LOCAL_FIXED_TIME) and time.monotonic() - back < 60:
                time.sleep(0.001)
            back_to_plan.append((time.monotonic() - back) * 1000)
            # the next request only once the agent's poll has read the controller again
            since = int(time.time() * 1000)
            agent.wait_status(lambda s: (s["devices"][DEVICE].get("driver_stats") or {}).get("last_read_ms", 0) > since
                              and s["devices"][DEVICE]["driver_stats"].get("online"), 60)
        shown = ", ".join(f"{v:.0f}" for v in back_to_plan)
        retry = args.release_retry or "500ms (default)"
        print(f"lost link back -> controller's own run mode and plan restored x{len(back_to_plan)} "
              f"(release_retry {retry}): "
              f"p50 {percentile(back_to_plan, .5, None):.0f} ms, max {max(back_to_plan):.0f} ms ({shown} ms)")
        agent, after_restart = restarts(agent, centre, sim, args.restarts)
        shown = ", ".join(f"{v:.0f}" for v in after_restart)
        print(f"agent killed mid-hold -> started again -> controller's own run mode and plan restored "
              f"x{len(after_restart)}: p50 {percentile(after_restart, .5, None):.0f} ms, "
              f"max {max(after_restart):.0f} ms ({shown} ms)")
    finally:
        centre.stop()
        agent.stop()
        sim.stop()
        broker.close()
    return 0


def restarts(agent: AgentProcess, centre: Consumer, sim, count: int) -> tuple[AgentProcess, list[float]]:
    """kill -9 during a hold, start again: ms from the new process's start to the plan restored."""
    took = []
    for _ in range(count):
        request = centre.send_command("signal.priority", {"device": DEVICE, "phase": 4, "duration_s": 30}, key=KEY)
        centre.wait_for(lambda c: c.last("cmd_result", request["id"]), 10)
        assert sim.held_stage == 2, "the hold did not land"
        agent.kill()
        agent.stop()
        started = time.monotonic()
        agent = AgentProcess(agent.config, agent.log_path, check_loop=False).start()
        while not (sim.held_stage is None and sim.run_mode == LOCAL_FIXED_TIME) and time.monotonic() - started < 60:
            time.sleep(0.001)
        took.append((time.monotonic() - started) * 1000)
        agent.wait_status(lambda s: s["uplink"]["state"] == "connected", 30)
    return agent, took


if __name__ == "__main__":
    sys.exit(main())
