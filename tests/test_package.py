"""The Debian package as a technician installs it (packaging/build-deb, the README's "On a gateway"):
built from this checkout, installed by the real dpkg into a scratch copy of this machine
(tests/gateway_sim/machine.py), its service started as systemd starts it (its user, environment,
file-system limits and seccomp filters: tests/gateway_sim/service.py) with the camera and NTCIP
paths running, and removed and purged as Debian users expect. This machine is not changed.
"""

from __future__ import annotations

import hashlib
import marshal
import pwd
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from agent.core.model import Priority
from agent.outbox import Outbox
from tests.agent_proc import check_loop_budget
from tests.gateway_sim import installed
from tests.gateway_sim.installed import CONFIG, OUTBOX, STATE_DIR, UNIT, gateway_machine, write_config
from tests.gateway_sim.machine import REPO, unavailable
from tests.gateway_sim.unit import Unit
from tests.hardware_sim.camera_sim import CameraSim, junction_camera
from tests.hardware_sim.consumer import Consumer
from tests.hardware_sim.modbus_sim import ModbusSim
from tests.hardware_sim.signal_controller import FAST_PLAN, SignalControllerSim
from tests.test_end_to_end import air_devices
from tests.test_signal_controller import ntcip_entry

pytestmark = [pytest.mark.skipif(unavailable() is not None, reason=str(unavailable())), pytest.mark.timeout(300)]

GW = "gw-pkg"
VENV = "/opt/edge-agent/venv"


def deb_field(deb: Path, field: str) -> str:
    return subprocess.run(["dpkg-deb", "--field", str(deb), field], check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture(scope="module")
def gateway(debian_package, tmp_path_factory):
    """A scratch machine with the package installed on it, as `dpkg -i` left it."""
    machine = gateway_machine(tmp_path_factory.mktemp("gateway"))
    install = machine.dpkg("-i", str(debian_package.path))
    yield machine, install
    machine.close()


# -- what is in the package ------------------------------------------------------------------------

def test_the_package_holds_the_agent_unit_and_config_where_debian_expects_them(debian_package, tmp_path):
    deb = debian_package.path
    assert deb_field(deb, "Package") == "edge-agent" and deb_field(deb, "Version") == debian_package.version
    depends = deb_field(deb, "Depends")
    assert "python3.11" in depends and "adduser" in depends
    control = subprocess.run(["dpkg-deb", "--ctrl-tarfile", str(deb)], check=True, capture_output=True).stdout
    assert b"/etc/edge-agent/config.yaml" in control   # the conffiles list
    tree = tmp_path / "tree"
    subprocess.run(["dpkg-deb", "-x", str(deb), str(tree)], check=True)
    assert (tree / "lib/systemd/system/edge-agent.service").read_text() == (REPO / "config/edge-agent.service").read_text()
    assert (tree / "etc/edge-agent/config.yaml").read_text() == (REPO / "config/example.yaml").read_text()
    assert (tree / "etc/edge-agent/config.yaml").stat().st_mode & 0o777 == 0o640
    assert (tree / "usr/bin/edge-agent").readlink() == Path(f"{VENV}/bin/edge-agent")
    assert (tree / VENV.lstrip("/") / "bin/edge-agent").read_text().startswith(f"#!{VENV}/bin/python")
    assert (tree / VENV.lstrip("/") / "bin/python3.11").readlink() == Path("/usr/bin/python3.11")
    site = tree / VENV.lstrip("/") / "lib/python3.11/site-packages"
    shipped = {p.stem for p in (site.parent.parent.parent / "share/edge-agent/profiles").glob("*.yaml")}
    assert shipped == {p.stem for p in (REPO / "config/profiles").glob("*.yaml")}
    # byte code for every module of the agent: /opt is read-only to the service, nothing compiles there
    modules = list((site / "agent").glob("*.py"))
    assert modules and all((m.parent / "__pycache__" / f"{m.stem}.cpython-311.pyc").is_file() for m in modules)
    code = marshal.loads((site / "agent" / "__pycache__" / "outbox.cpython-311.pyc").read_bytes()[16:])
    assert code.co_filename == f"{VENV}/lib/python3.11/site-packages/agent/outbox.py"   # tracebacks name /opt
    assert not list(site.glob("edge_agent-*.dist-info/direct_url.json")), "names the build's temporary wheel"


# -- dpkg -i -----------------------------------------------------------------------------------------

def test_install_creates_the_user_the_directories_and_enables_the_unit(gateway, debian_package):
    machine, install = gateway
    assert machine.package_status("edge-agent") == f"install ok installed {debian_package.version}"
    user = machine.run("getent", "passwd", "edge-agent", check=True).stdout.strip().split(":")
    assert int(user[2]) < 1000 and user[5] == STATE_DIR and user[6] == "/usr/sbin/nologin", user
    with pytest.raises(KeyError):
        pwd.getpwnam("edge-agent")   # on the scratch machine only
    # sticky, group-writable: config.apply replaces the config, the secrets beside it stay root's
    assert installed.modes(machine, "/etc/edge-agent", CONFIG, STATE_DIR) == [
        "/etc/edge-agent root edge-agent 1770", f"{CONFIG} edge-agent edge-agent 640",
        f"{STATE_DIR} edge-agent edge-agent 750"]
    assert machine.run("sh", "-c", "command -v edge-agent").stdout.strip() == "/usr/bin/edge-agent"
    version = machine.run("edge-agent", "--version", user="edge-agent", check=True).stdout.strip()
    assert version == f"edge-agent {debian_package.version}"
    wants = machine.path(f"/etc/systemd/system/multi-user.target.wants/{UNIT}")
    assert wants.is_symlink() and wants.readlink() == Path(f"/lib/systemd/system/{UNIT}")
    verify = machine.run("systemd-analyze", "verify", f"/lib/systemd/system/{UNIT}")
    assert verify.returncode == 0 and not verify.stderr.strip(), verify.stderr


def test_the_example_config_is_named_and_the_service_not_started(gateway):
    machine, install = gateway
    assert "installed and enabled, not started" in install.stdout, install.stdout
    # check-config's own words, run as the service user: the example's secret files do not exist
    assert "uplink.mqtt.password: secret file /etc/edge-agent/mqtt-password: cannot be read" in install.stdout
    assert machine.systemctl("is-active", UNIT).stdout.strip() == "inactive"


# -- the service, as systemd starts it -----------------------------------------------------------

@pytest.fixture
def junction():
    with SignalControllerSim(FAST_PLAN, snmp=("127.0.0.1", 0)).run_in_thread() as controller:
        with CameraSim(plan=FAST_PLAN, plan_epoch=controller.controller.t0, seed=3, flow=2.0,
                       rates={"red_light": 8.0, "illegal_parking": 0, "wrong_way": 0, "zone_intrusion": 0}) as camera:
            yield controller, camera


def proc_status(pid: int) -> dict[str, str]:
    return dict(line.split(":\t", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":\t" in line)


def test_the_service_runs_the_camera_and_ntcip_paths_under_the_units_limits(gateway, broker, junction):
    """onnxruntime (detector, plate OCR), OpenCV (RTSP, JPEG) and pysnmp under
    MemoryDenyWriteExecute=, SystemCallFilter=@system-service and the rest, as the user edge-agent."""
    machine, _ = gateway
    controller, stream = junction
    signal = ntcip_entry(controller.snmp_address[1], poll="200ms")
    signal["id"] = "tsc-01"
    camera = junction_camera(url=stream.url, signal_device="tsc-01", evidence={"clip_before": "2s", "clip_after": "1s"})
    write_config(machine, gateway=GW, broker_port=broker.port, devices=[signal], cameras=[camera])
    unit = Unit.read(machine.path(f"/lib/systemd/system/{UNIT}"))
    with Consumer(port=broker.port, gateway=GW) as centre:
        started = machine.systemctl("start", UNIT)
        assert started.returncode == 0, started.stderr + machine.journal()
        pid = installed.main_pid(machine)
        assert pid is not None
        try:
            proc = proc_status(pid)
            service_uid = machine.run("id", "-u", "edge-agent").stdout.strip()
            assert proc["Uid"].split() == [service_uid] * 4
            assert proc["NoNewPrivs"] == "1" and proc["Seccomp"] == "2" and proc["Seccomp_filters"] == "4"
            assert int(proc["CapEff"], 16) == 0 and int(proc["CapBnd"], 16) == 0
            environ = dict(entry.split("=", 1) for entry in
                           Path(f"/proc/{pid}/environ").read_bytes().decode().split("\0") if entry)
            # systemd's variables and the unit's, nothing of this test's; PWD=/ is bwrap's --chdir
            assert set(environ) == {"PATH", "INVOCATION_ID", "USER", "LOGNAME", "HOME", "SHELL", "JOURNAL_STREAM",
                                    "NOTIFY_SOCKET", "STATE_DIRECTORY", "PYTHONUNBUFFERED", "EDGE_AGENT_LOOP_CLOCK",
                                    "PWD"}
            assert environ["HOME"] == STATE_DIR and environ["USER"] == "edge-agent"
            mounts = {fields[4]: fields for fields in (line.split() for line in
                                                       Path(f"/proc/{pid}/mountinfo").read_text().splitlines())}
            assert "ro" in mounts["/"][5].split(",") and "rw" in mounts[STATE_DIR][5].split(",")
            assert mounts["/home"][mounts["/home"].index("-") + 1] == "tmpfs"

            centre.wait_for(lambda c: c.readings("tsc-01", "phase2"), 20, what="NTCIP readings (pysnmp)")
            centre.wait_for(lambda c: c.events("cam-01", "violation.red_light"), 90, what="a red-light violation")
            event = centre.events("cam-01", "violation.red_light")[0]
            assert event["data"]["signal"] == "red" and event["data"]["plate"]   # detector and plate OCR ran
            listed = {f["name"]: f for f in event["evidence"]}
            centre.wait_for(lambda c: set(c.evidence(event["id"])) >= set(listed), 20, what="the evidence")
            for name, data in centre.evidence(event["id"]).items():
                assert hashlib.sha256(data).hexdigest() == listed[name]["sha256"] and data[:2] == b"\xff\xd8"
            # MemoryMax= is a cgroup limit this sandbox cannot set: the peak must stay well below it
            memory_max = unit.value("MemoryMax")
            now = proc_status(pid)
            peak_kb, anon_kb = int(now["VmHWM"].split()[0]), int(now["RssAnon"].split()[0])
            limit_kb = int(re.fullmatch(r"(\d+)M", memory_max)[1]) * 1024
            print(f"\nservice with a camera and a signal controller: peak RSS {peak_kb // 1024} MiB, "
                  f"anonymous now {anon_kb // 1024} MiB (MemoryMax={memory_max})")
            assert peak_kb < limit_kb * 0.75, f"{peak_kb // 1024} MiB is too close to MemoryMax={memory_max}"
            owner = machine.run("stat", "-c", "%U %a", OUTBOX, check=True).stdout.split()
            assert owner[0] == "edge-agent" and int(owner[1], 8) & 0o027 == 0   # UMask=0027
        finally:
            stopped = machine.systemctl("stop", UNIT)
        assert stopped.returncode == 0
    journal = machine.journal()
    assert '"msg":"stopped"' in journal and "timed out" not in journal
    last = installed.status(machine)
    assert last is not None and last["stopped"] is True
    check_loop_budget(last, "packaged agent (camera, NTCIP)")
    assert centre.invalid == []


def test_an_invalid_config_fails_the_start_with_check_configs_message(gateway, broker):
    machine, _ = gateway
    write_config(machine, gateway=GW, broker_port=broker.port)
    secret = machine.path("/etc/edge-agent/mqtt-password")
    secret.write_text("s3cret\n")
    secret.chmod(0o600)   # root's own: the classic mistake, the service user cannot read it
    config = machine.path(CONFIG)
    config.write_text(config.read_text().replace(f"port: {broker.port}",
                                                 f"port: {broker.port}\n    username: gw\n    password: {{file: /etc/edge-agent/mqtt-password}}"))
    checked = machine.run("edge-agent", "check-config", CONFIG, user="edge-agent")
    problem = "uplink.mqtt.password: secret file /etc/edge-agent/mqtt-password: cannot be read (Permission denied)"
    assert checked.returncode == 2 and problem in checked.stderr, checked.stderr
    started = machine.systemctl("restart", UNIT)
    assert started.returncode == 1 and f"Job for {UNIT} failed" in started.stderr
    shown = machine.systemctl("status", UNIT).stdout
    assert "Active: failed" in shown and "secret file /etc/edge-agent/mqtt-password: cannot be read" in shown, shown
    # exit status 2, which the unit lists in RestartPreventExitStatus=: no restart every 2 s
    assert "status=2/INVALIDARGUMENT" in shown and "not restarted (RestartPreventExitStatus=)" in shown

    config.write_text(config.read_text().replace("id: gw-pkg", "id: gw pkg"))   # now YAML-valid, not a valid id
    started = machine.systemctl("restart", UNIT)
    assert started.returncode == 1
    assert f"config {CONFIG} has" in machine.systemctl("status", UNIT).stdout and "gateway.id" in machine.journal()
    secret.unlink()


# -- config.apply on the packaged service ------------------------------------------------------------

COMMAND_KEY = "/etc/edge-agent/command.key"
KEY = b"k" * 32


def centre_apply(centre: Consumer, config: dict, timeout: float, **args) -> dict:
    """A signed config.apply from the centre through the broker, and its answer."""
    request = centre.send_command("config.apply", {"yaml": yaml.safe_dump(config, sort_keys=False), **args}, key=KEY)
    centre.wait_for(lambda c: c.last("cmd_result", request["id"]), timeout, what="config.apply's answer")
    return centre.last("cmd_result", request["id"]).body


def test_config_apply_from_the_centre_replaces_the_config_under_the_unit_and_rolls_back(gateway, broker):
    """ProtectSystem=strict, the service user, /etc/edge-agent as postinst leaves it: the centre's
    config is written beside the old one, moved into place, the agent restarted on it; a config
    that does not come up is put back. The secrets beside the config stay out of the service's reach."""
    machine, _ = gateway
    machine.path(COMMAND_KEY).write_bytes(KEY)   # as a technician installs it: root:edge-agent 640
    machine.run("chown", "root:edge-agent", COMMAND_KEY, check=True)
    machine.run("chmod", "640", COMMAND_KEY, check=True)
    with ModbusSim("air_monitor_rs485", units=[1, 2], tcp=("127.0.0.1", 0)).run_in_thread() as sim:
        first = write_config(machine, gateway=GW, broker_port=broker.port, devices=air_devices(sim.tcp_address[1], [1]))
        first["commands"] = {"key": {"file": COMMAND_KEY}, "allow": ["config.apply"]}
        machine.path(CONFIG).write_text(yaml.safe_dump(first, sort_keys=False))   # sudoedit: in place
        technicians = machine.path(CONFIG).read_text()
        with Consumer(port=broker.port, gateway=GW, site="lab") as centre:
            started = machine.systemctl("restart", UNIT)
            assert started.returncode == 0, started.stderr + machine.journal()
            pid = installed.main_pid(machine)
            try:
                installed.wait_for_status(machine, lambda s: s["uplink"]["state"] == "connected")
                second = yaml.safe_load(technicians)
                second["devices"] = air_devices(sim.tcp_address[1], [1, 2], poll="300ms")
                answer = centre_apply(centre, second, 30)
                assert answer["ok"] is True and answer["result"] == {"applied": True}, f"{answer}\n{machine.journal()}"
                assert [d["id"] for d in centre.last("birth").body["devices"]] == ["aq-01", "aq-02"]
                centre.wait_for(lambda c: c.readings("aq-02", "pm25"), 15, what="readings of the new device")
                assert installed.main_pid(machine) == pid   # restarted in the process: no systemd restart
                assert yaml.safe_load(machine.path(CONFIG).read_text()) == second
                assert machine.path(f"{CONFIG}.previous").read_text() == technicians
                assert not machine.path(f"{CONFIG}.new").exists()
                assert installed.modes(machine, CONFIG, f"{CONFIG}.previous", COMMAND_KEY) == [
                    f"{CONFIG} edge-agent edge-agent 640", f"{CONFIG}.previous edge-agent edge-agent 640",
                    f"{COMMAND_KEY} root edge-agent 640"]
                checked = machine.run("edge-agent", "check-config", CONFIG, user="edge-agent")
                assert checked.returncode == 0, checked.stderr

                # a config that cannot reach the centre: put back by the agent itself
                third = dict(second, uplink={"mqtt": {"host": "127.0.0.1", "port": 1}})
                answer = centre_apply(centre, third, 60, deadline_s=5)
                assert answer["ok"] is False and answer["error"]["code"] == "rolled_back", answer
                assert yaml.safe_load(machine.path(CONFIG).read_text()) == second
            finally:
                stopped = machine.systemctl("stop", UNIT)
            assert stopped.returncode == 0
            assert centre.invalid == []
    # the sticky directory: the service writes its config, not the root-owned secrets beside it
    machine.write("/var/lib/edge-agent/forged.key", "forged")
    machine.run("chown", "edge-agent:edge-agent", "/var/lib/edge-agent/forged.key", check=True)
    for attempt in (["mv", "/var/lib/edge-agent/forged.key", COMMAND_KEY], ["rm", "-f", COMMAND_KEY],
                    ["sh", "-c", f"echo forged > {COMMAND_KEY}"]):
        refused = machine.run(*attempt, user="edge-agent")
        assert refused.returncode != 0 and machine.path(COMMAND_KEY).read_bytes() == KEY, attempt
    # the technician's sudoedit writes into the file: owner and mode stay as the service needs them
    machine.path(CONFIG).write_text(technicians)
    assert installed.modes(machine, CONFIG) == [f"{CONFIG} edge-agent edge-agent 640"]
    # `mv` leaves root's file, which config.apply may not replace; dpkg-reconfigure gives it back
    machine.write("/root/config.yaml", technicians, mode=0o600)
    machine.run("mv", "/root/config.yaml", CONFIG, check=True)
    reconfigured = machine.run("dpkg-reconfigure", "edge-agent")
    assert reconfigured.returncode == 0, reconfigured.stderr
    assert installed.modes(machine, "/etc/edge-agent", CONFIG) == [
        "/etc/edge-agent root edge-agent 1770", f"{CONFIG} edge-agent edge-agent 640"]
    assert machine.systemctl("stop", UNIT).returncode == 0   # postinst started it again


# -- dpkg -r, dpkg -P ----------------------------------------------------------------------------------

def test_remove_keeps_config_and_state_purge_removes_them_and_the_user(debian_package, tmp_path):
    machine = gateway_machine(tmp_path / "gateway")
    try:
        machine.dpkg("-i", str(debian_package.path))
        write_config(machine, gateway=GW, broker_port=1)   # no broker: the agent buffers
        assert machine.systemctl("start", UNIT).returncode == 0, machine.journal()
        edited = machine.path(CONFIG).read_text()

        removed = machine.dpkg("-r", "edge-agent")
        assert machine.package_status("edge-agent") == f"deinstall ok config-files {debian_package.version}"
        assert [c["argv"] for c in machine.calls() if c["script"] == "prerm"][-1][-2:] == ["stop", UNIT], removed.stdout
        assert installed.main_pid(machine) is None
        for gone in ("/opt/edge-agent", "/usr/bin/edge-agent", f"/lib/systemd/system/{UNIT}"):
            assert not machine.path(gone).exists() and not machine.path(gone).is_symlink(), gone
        assert machine.path(CONFIG).read_text() == edited
        assert machine.path(OUTBOX).is_file() and machine.path(f"{STATE_DIR}/status.json").is_file()
        assert machine.run("getent", "passwd", "edge-agent").returncode == 0

        machine.dpkg("-P", "edge-agent")
        assert machine.package_status("edge-agent") is None
        for gone in ("/etc/edge-agent", STATE_DIR, f"/etc/systemd/system/multi-user.target.wants/{UNIT}"):
            assert not machine.path(gone).exists() and not machine.path(gone).is_symlink(), gone
        assert machine.run("getent", "passwd", "edge-agent").returncode == 2
        assert machine.run("getent", "group", "edge-agent").returncode == 2
        assert "edge-agent" not in machine.run("dpkg-statoverride", "--list", check=True).stdout
    finally:
        machine.close()


# What install.sh --systemd wrote before the package existed: a unit running a clone's .venv.
OLD_INSTALL_SH_UNIT = """# Installed by install.sh (@VENV@ is replaced by the agent's virtualenv).
[Unit]
Description=Edge agent: city devices to the central platform
[Service]
User=edge-agent
ExecStart=/home/tech/edge-agent/.venv/bin/edge-agent run --config /etc/edge-agent/config.yaml
ProtectHome=yes
[Install]
WantedBy=multi-user.target
"""


def test_a_gateway_set_up_by_the_old_install_sh_moves_to_the_package_with_its_config_and_outbox(
        debian_package, tmp_path):
    machine = gateway_machine(tmp_path / "gateway")
    try:
        # the old install.sh --systemd: its user, directories, unit and link; a technician's config
        machine.run("useradd", "--system", "--home-dir", STATE_DIR, "--shell", "/usr/sbin/nologin", "edge-agent",
                    check=True)
        machine.run("install", "-d", "-o", "edge-agent", "-g", "edge-agent", "-m", "0750", STATE_DIR, check=True)
        machine.run("install", "-d", "-o", "root", "-g", "edge-agent", "-m", "0750", "/etc/edge-agent", check=True)
        write_config(machine, gateway=GW, broker_port=1)
        machine.run("chgrp", "edge-agent", CONFIG, check=True)
        edited = machine.path(CONFIG).read_text()
        machine.write(f"/etc/systemd/system/{UNIT}", OLD_INSTALL_SH_UNIT)
        wants = f"/etc/systemd/system/multi-user.target.wants/{UNIT}"
        machine.run("ln", "-s", f"/etc/systemd/system/{UNIT}", wants, check=True)   # systemctl enable's
        machine.run("ln", "-s", "/home/tech/edge-agent/.venv/bin/edge-agent", "/usr/local/bin/edge-agent", check=True)
        # ...and the outbox the old service left, holding what it could not send yet
        # (made here and copied in: SQLite resolves the /proc/PID/root link to this machine's root)
        outbox = Outbox(tmp_path / "outbox.db", gateway_id=GW, max_bytes=1 << 26)
        for _ in range(5):
            outbox.put(Priority.TELEMETRY, f"citybrain/v1/lab/{GW}/telemetry/aq-01", {"device": "aq-01", "readings": []})
        outbox.close()
        machine.path(OUTBOX).write_bytes((tmp_path / "outbox.db").read_bytes())
        machine.run("chown", "-R", "edge-agent:edge-agent", STATE_DIR, check=True)

        # install.sh --systemd installs with --force-confold: the technician's config stays as it is
        done = machine.dpkg("--force-confold", "-i", str(debian_package.path))
        assert f"removed /etc/systemd/system/{UNIT}" in done.stdout and "removed /usr/local/bin/edge-agent" in done.stdout
        assert not machine.path(f"/etc/systemd/system/{UNIT}").exists()
        assert machine.path(wants).readlink() == Path(f"/lib/systemd/system/{UNIT}")   # still enabled, the package's
        assert not machine.path("/usr/local/bin/edge-agent").is_symlink()
        assert machine.path(CONFIG).read_text() == edited
        assert machine.systemctl("start", UNIT).returncode == 0, machine.journal()
        # the old backlog, still to send
        installed.wait_for_status(machine, lambda snapshot: snapshot["buffer"]["depth"] >= 5)
        assert machine.systemctl("stop", UNIT).returncode == 0
    finally:
        machine.close()


def test_a_machine_without_python_3_11_is_told_so_and_nothing_is_installed(debian_package, tmp_path):
    machine = gateway_machine(tmp_path / "gateway")
    try:
        machine.run("mv", "/usr/bin/python3.11", "/usr/bin/python3.11.hidden", check=True)
        refused = machine.dpkg("-i", str(debian_package.path), check=False)
        assert refused.returncode != 0
        assert "runs on Python 3.11" in refused.stderr and "apt-get install python3.11" in refused.stderr
        assert "nothing was installed or changed" in refused.stderr
        status = machine.package_status("edge-agent")
        assert status is None or "not-installed" in status, status
        assert not machine.path("/opt/edge-agent/venv").exists()
    finally:
        machine.close()
