"""Upgrading a gateway that holds a backlog: package N running with messages buffered (the broker
is away), a first attempt at N+1 on a disk without room for it, then N+1 (a rebuilt package with a
bumped version and one more outbox migration, tests/gateway_sim/package.py) once there is room,
then the broker back. Nothing buffered is lost, nothing is sent twice, the outbox is migrated; and
going back to N refuses N+1's outbox, untouched, with a message that says why. All of it with the
real dpkg and the package's maintainer scripts on a scratch copy of this machine."""

from __future__ import annotations

import hashlib
import subprocess
import time

import pytest

from tests.agent_proc import check_loop_budget
from tests.gateway_sim import installed
from tests.gateway_sim.installed import CONFIG, OUTBOX, UNIT, gateway_machine, write_config
from tests.gateway_sim.machine import ScratchMachine, unavailable
from tests.hardware_sim.broker import MosquittoBroker, free_port
from tests.hardware_sim.consumer import Consumer
from tests.hardware_sim.modbus_sim import ModbusSim
from tests.test_end_to_end import air_devices

pytestmark = [pytest.mark.skipif(unavailable() is not None, reason=str(unavailable())), pytest.mark.timeout(300)]

GW = "gw-upgrade"


def installed_mib(deb) -> int:
    size = subprocess.run(["dpkg-deb", "--field", str(deb), "Installed-Size"], check=True, capture_output=True,
                          text=True).stdout
    return int(size) // 1024 + 1


def wait_until(what: str, predicate, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = predicate()
        if found:
            return found
        time.sleep(0.1)
    raise AssertionError(f"waited {timeout}s for {what}")


def running_version(machine: ScratchMachine) -> str | None:
    """The version of the agent running now (its status names its pid and version)."""
    snapshot = installed.status(machine)
    pid = installed.main_pid(machine)
    if snapshot is None or pid is None or snapshot.get("pid") != pid or snapshot.get("stopped"):
        return None
    return snapshot["agent"]


def calls_since(machine: ScratchMachine, mark: int) -> list[tuple[str | None, list[str]]]:
    """(maintainer script, systemctl verb and unit) of the start/stop calls after ``mark``."""
    return [(c["script"], c["argv"][-2:]) for c in machine.calls()[mark:]
            if any(verb in c["argv"] for verb in ("start", "stop", "restart"))]


def test_an_upgrade_keeps_the_backlog_migrates_the_outbox_and_delivers_everything_once(
        debian_package, next_debian_package, tmp_path):
    old, new = debian_package, next_debian_package
    size = installed_mib(new.path)
    # /opt/edge-agent on a disk with room for one version and not two: the first attempt finds it full
    machine = gateway_machine(tmp_path / "gateway", opt_size=f"{size * 3 // 2}m")
    broker = MosquittoBroker(port=free_port(), persistent=True, workdir=tmp_path / "mosquitto")
    centre = None
    try:
        with ModbusSim("air_monitor_rs485", units=[1], tcp=("127.0.0.1", 0)).run_in_thread() as sim:
            machine.dpkg("-i", str(old.path))
            # a gateway first installed before config.apply could write its config
            installed.as_installed_before_config_apply(machine)
            assert installed.modes(machine, "/etc/edge-agent", CONFIG) == [
                "/etc/edge-agent root edge-agent 750", f"{CONFIG} root edge-agent 640"]
            # the centre's session outlives the outage: the broker queues for it what arrives later
            broker.start()
            centre = Consumer(port=broker.port, gateway=GW, client_id="centre-upgrade", session_expiry=3600).start()
            broker.stop()
            write_config(machine, gateway=GW, broker_port=broker.port,
                         devices=air_devices(sim.tcp_address[1], [1], poll="200ms"))
            assert machine.systemctl("start", UNIT).returncode == 0, machine.journal()
            wait_until("a backlog", lambda: (installed.status(machine) or {}).get("buffer", {}).get("depth", 0) >= 20)

            # 1. not enough room: refused before anything is unpacked; version N runs again, backlog intact
            before, meta = installed.read_outbox(machine)
            assert meta["schema"] == "1" and meta["agent_version"] == old.version
            mark = len(machine.calls())
            refused = machine.dpkg("-i", str(new.path), check=False)
            assert refused.returncode != 0
            assert f"edge-agent {new.version} needs" in refused.stderr and "free some space" in refused.stderr
            assert f"the installed edge-agent {old.version} is started again" in refused.stderr
            assert machine.package_status("edge-agent") == f"install ok installed {old.version}"
            assert calls_since(machine, mark) == [("prerm", ["stop", UNIT]), ("postinst", ["restart", UNIT])]
            assert wait_until("version N running again", lambda: running_version(machine)) == old.version
            kept, meta = installed.read_outbox(machine)
            assert before.items() <= kept.items() and meta["schema"] == "1"

            # 2. room again: stopped cleanly before the unpack, started after, the outbox migrated
            machine.run("mount", "-o", f"remount,size={size * 3}m", "/opt/edge-agent", check=True)
            mark, journal_mark = len(machine.calls()), len(machine.journal())
            machine.dpkg("-i", str(new.path))
            assert machine.package_status("edge-agent") == f"install ok installed {new.version}"
            assert calls_since(machine, mark) == [("prerm", ["stop", UNIT]), ("postinst", ["restart", UNIT])]
            # its overrides moved to the new modes: config.apply can replace the config now
            assert installed.modes(machine, "/etc/edge-agent", CONFIG) == [
                "/etc/edge-agent root edge-agent 1770", f"{CONFIG} edge-agent edge-agent 640"]
            assert machine.run("dpkg-statoverride", "--list", CONFIG, check=True).stdout.split()[:3] == \
                ["edge-agent", "edge-agent", "640"]
            journal = machine.journal()[journal_mark:]
            assert journal.index('"msg":"stopped"') < journal.index(f"edge-agent {new.version} starting")
            assert "migrating from schema 1 to 2" in journal
            assert wait_until("version N+1 running", lambda: running_version(machine)) == new.version
            backlog, meta = installed.read_outbox(machine)
            assert meta["schema"] == "2" and meta["agent_version"] == new.version
            assert before.items() <= backlog.items(), "every message of N, byte for byte"

            # 3. the broker is back: all of it arrives, once, marked as backlog
            broker.start()
            centre.wait_for(lambda c: set(backlog) <= set(c.seqs(GW)), 30, what=f"the {len(backlog)} buffered messages")
            assert centre.duplicates == 0 and centre.invalid == []
            late = [m for m in centre.messages() if m.seq in backlog]
            assert len(late) == len(backlog) and all(m.hist for m in late)
            print(f"\nupgrade with a backlog: {len(before)} buffered before it, {len(backlog)} after "
                  f"(N+1's first included), {len(late)} delivered, {centre.duplicates} duplicates")

            # 4. back to N: it refuses N+1's outbox, leaves it as it is and says why
            assert machine.systemctl("stop", UNIT).returncode == 0
            check_loop_budget(installed.status(machine), "packaged agent N+1 (upgrade)")
            digest = hashlib.sha256(machine.path(OUTBOX).read_bytes()).hexdigest()
            journal_mark = len(machine.journal())
            downgraded = machine.dpkg("-i", str(old.path))
            assert machine.package_status("edge-agent") == f"install ok installed {old.version}"
            assert "the service did not start" in downgraded.stderr
            journal = machine.journal()[journal_mark:]
            assert f"written by edge-agent {new.version}" in journal and "left untouched" in journal
            assert "status=3/" in journal and "not restarted (RestartPreventExitStatus=)" in journal
            assert hashlib.sha256(machine.path(OUTBOX).read_bytes()).hexdigest() == digest
    finally:
        if centre is not None:
            centre.stop()
        broker.close()
        machine.close()
