"""systemd's part in running a service, for a machine where systemd is not PID 1 (this one, CI):
start a unit's ExecStart exactly as systemd would, stop it as systemd would.

Start (``Type=notify``): the unit's user and groups (``setpriv``, no capabilities, no new
privileges), its environment (systemd's own variables and ``Environment=``, nothing inherited),
its umask and working directory, stdout and stderr to a journal file, and its limits as far as a
process without systemd can have them:

* file system (``bwrap``): ``ProtectSystem=strict`` (everything read-only but ``/dev``, ``/proc``
  and the unit's ``StateDirectory=`` and ``ReadWritePaths=``), ``ProtectHome=yes`` (``/home``,
  ``/root``, ``/run/user`` empty and inaccessible), ``PrivateTmp=yes``, ``ProtectHostname=yes``,
  ``PrivateDevices=no`` with the few devices ``bwrap --dev`` gives;
* seccomp (:mod:`tests.gateway_sim.seccomp`): ``SystemCallFilter=``, ``SystemCallArchitectures=``,
  ``MemoryDenyWriteExecute=``, ``RestrictAddressFamilies=``, ``RestrictNamespaces=``.

It waits for READY=1 from the main process (``NotifyAccess=main``) on ``/run/systemd/notify``,
and fails like ``systemctl start`` when the process exits first. Stop sends SIGTERM to the process
group, waits ``TimeoutStopSec=``, then SIGKILL (``KillMode=control-group``, approximately).

Drop-ins in /etc/systemd/system/UNIT.d/ apply. Not emulated: cgroup limits (``MemoryMax=``,
``CPUWeight=``, ``DeviceAllow=``: a test measures the peak RSS instead), ``Restart=`` (the journal
says whether systemd would restart), ``SYSTEMD_EXEC_PID``, ``LockPersonality=``, ``RestrictRealtime=``, ``RestrictSUIDSGID=``.

Everything it keeps lives in the machine's ``/run/systemd-sim``: ``UNIT.pid``, ``UNIT.result``,
``UNIT.status`` and ``UNIT.journal`` (what ``journalctl -u`` would show).
"""

from __future__ import annotations

import array
import errno
import json
import os
import pwd
import grp
import select
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path

from tests.gateway_sim import seccomp
from tests.gateway_sim.unit import Unit

STATE = Path("/run/systemd-sim")
NOTIFY_SOCKET = Path("/run/systemd/notify")
UNIT_DIRS = (Path("/etc/systemd/system"), Path("/lib/systemd/system"))
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"   # `systemd-path search-binaries-default`
# exit status names systemd prints (src/basic/exit-status.c), for the journal lines
EXIT_NAMES = {0: "SUCCESS", 1: "FAILURE", 2: "INVALIDARGUMENT", 3: "NOTIMPLEMENTED", 4: "NOPERMISSION",
              5: "NOTINSTALLED", 6: "NOTCONFIGURED", 7: "NOTRUNNING"}


class StartFailed(Exception):
    def __init__(self, unit: str, result: str, status: int | None):
        self.result, self.status = result, status
        super().__init__(f"Job for {unit} failed because the control process exited with error code.\n"
                         f'See "systemctl status {unit}" and "journalctl -xeu {unit}" for details.')


def find_unit(name: str) -> Path:
    for directory in UNIT_DIRS:
        if (directory / name).is_file():
            return directory / name
    raise FileNotFoundError(f"Unit {name} not found.")


def read_unit(name: str) -> Unit:
    """The unit file with its drop-ins from /etc/systemd/system/NAME.d/."""
    return Unit.read(find_unit(name), UNIT_DIRS[0] / f"{name}.d")


def journal(name: str, text: str) -> None:
    STATE.mkdir(parents=True, exist_ok=True)
    with open(STATE / f"{name}.journal", "a") as out:
        out.write(f"systemd: {name}: {text}\n")


def main_pid(name: str) -> int | None:
    """The running main process, or None (gone, or a zombie nobody reaped yet)."""
    try:
        pid = int((STATE / f"{name}.pid").read_text())
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ValueError, ProcessLookupError):
        return None
    return None if state in ("Z", "X") else pid


def _record(name: str, key: str, value: object) -> None:
    STATE.mkdir(parents=True, exist_ok=True)
    (STATE / f"{name}.{key}").write_text(str(value))


def _read(name: str, key: str) -> str | None:
    try:
        return (STATE / f"{name}.{key}").read_text()
    except FileNotFoundError:
        return None


# -- the command systemd would run -------------------------------------------------------------

def _state_directories(unit: Unit) -> list[Path]:
    return [Path("/var/lib") / word for word in unit.words("StateDirectory")]


def prepare_directories(unit: Unit, user: pwd.struct_passwd) -> None:
    """StateDirectory=: created if missing, owned by the service user (systemd does this at start)."""
    mode = int(unit.value("StateDirectoryMode", "0755"), 8)
    for path in _state_directories(unit):
        path.mkdir(parents=True, exist_ok=True)
        os.chown(path, user.pw_uid, user.pw_gid)
        path.chmod(mode)


def environment(unit: Unit, user: pwd.struct_passwd, journal_file: Path) -> dict[str, str]:
    stat = journal_file.stat()
    env = {"PATH": DEFAULT_PATH, "INVOCATION_ID": uuid.uuid4().hex,
           "USER": user.pw_name, "LOGNAME": user.pw_name, "HOME": user.pw_dir, "SHELL": user.pw_shell,
           "JOURNAL_STREAM": f"{stat.st_dev}:{stat.st_ino}"}
    if unit.value("Type") == "notify":
        env["NOTIFY_SOCKET"] = str(NOTIFY_SOCKET)
    if unit.words("StateDirectory"):
        env["STATE_DIRECTORY"] = ":".join(str(p) for p in _state_directories(unit))
    locale = Path("/etc/default/locale")
    if locale.is_file():
        for line in locale.read_text().splitlines():
            if line.startswith("LANG="):
                env["LANG"] = line.split("=", 1)[1].strip('"')
    env.update(unit.environment())
    return env


def seccomp_programs(unit: Unit) -> list[int]:
    fds = []
    if unit.values("SystemCallFilter"):
        if unit.words("SystemCallArchitectures") not in ([], ["native"]):
            raise NotImplementedError("SystemCallArchitectures= other than native")
        fds.append(seccomp.syscall_allow_list(unit.values("SystemCallFilter")))
    if unit.flag("MemoryDenyWriteExecute"):
        fds.append(seccomp.memory_deny_write_execute())
    if unit.values("RestrictAddressFamilies"):
        fds.append(seccomp.restrict_address_families(unit.values("RestrictAddressFamilies")))
    if unit.flag("RestrictNamespaces"):
        fds.append(seccomp.restrict_namespaces())
    return fds


def sandbox_command(unit: Unit, user: pwd.struct_passwd, seccomp_fds: list[int], info_fd: int) -> list[str]:
    if unit.value("ProtectSystem") != "strict":
        raise NotImplementedError("only ProtectSystem=strict is emulated")
    args = ["bwrap", "--ro-bind", "/", "/", "--dev", "/dev", "--tmpfs", "/dev/shm", "--proc", "/proc",
            "--ro-bind", "/sys", "/sys"]
    if unit.flag("ProtectHome"):
        for hidden in ("/home", "/root", "/run/user"):
            if os.path.isdir(hidden):
                args += ["--perms", "0000", "--tmpfs", hidden, "--remount-ro", hidden]
    if unit.flag("PrivateTmp"):
        args += ["--tmpfs", "/tmp", "--tmpfs", "/var/tmp"]
    for path in [*_state_directories(unit), *(Path(p) for p in unit.words("ReadWritePaths"))]:
        args += ["--bind", str(path), str(path)]
    if unit.flag("ProtectHostname"):
        args += ["--unshare-uts"]
    args += ["--chdir", unit.value("WorkingDirectory", "/"), "--info-fd", str(info_fd)]
    for fd in seccomp_fds:
        args += ["--add-seccomp-fd", str(fd)]
    groups = [grp.getgrnam(g).gr_gid for g in unit.words("SupplementaryGroups")]
    group = grp.getgrnam(unit.value("Group")).gr_gid if unit.value("Group") else user.pw_gid
    args += ["--", "setpriv", f"--reuid={user.pw_uid}", f"--regid={group}",
             f"--groups={','.join(map(str, groups))}" if groups else "--clear-groups",
             "--inh-caps=-all", "--bounding-set=-all"]
    if unit.flag("NoNewPrivileges"):
        args += ["--no-new-privs"]
    return args + ["--", *unit.exec_start]


# -- start and stop ------------------------------------------------------------------------------

def _notify_socket() -> socket.socket:
    NOTIFY_SOCKET.parent.mkdir(parents=True, exist_ok=True)
    NOTIFY_SOCKET.unlink(missing_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(NOTIFY_SOCKET))
    NOTIFY_SOCKET.chmod(0o777)   # as systemd's: any service user may write to it
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    return sock


def _receive(sock: socket.socket) -> tuple[int | None, dict[str, str]]:
    """One datagram: (sender pid, fields)."""
    data, ancillary, _, _ = sock.recvmsg(4096, socket.CMSG_SPACE(12))
    pid = None
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
            pid = array.array("i", payload[:12])[0]
    fields = dict(line.split("=", 1) for line in data.decode(errors="replace").splitlines() if "=" in line)
    return pid, fields


def start(name: str) -> int:
    """Start the unit; returns the main pid once it is ready. Raises StartFailed."""
    running = main_pid(name)
    if running is not None:
        return running
    unit = read_unit(name)
    user = pwd.getpwnam(unit.value("User", "root"))
    prepare_directories(unit, user)
    STATE.mkdir(parents=True, exist_ok=True)
    journal_file = STATE / f"{name}.journal"
    journal(name, f"Starting {unit.value('Description', section='Unit')}...")
    sock = _notify_socket()
    fds = seccomp_programs(unit)
    info_read, info_write = os.pipe()
    command = sandbox_command(unit, user, fds, info_write)
    with open(journal_file, "ab", buffering=0) as log:
        proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=environment(unit, user, journal_file),
                                pass_fds=[*fds, info_write], start_new_session=True,
                                umask=int(unit.value("UMask", "0022"), 8))
    os.close(info_write)
    for fd in fds:
        os.close(fd)
    child = _child_pid(info_read, proc)
    _record(name, "pgid", proc.pid)
    deadline = time.monotonic() + unit.seconds("TimeoutStartSec", 90.0)
    try:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise _failed(name, unit, proc.returncode)
            ready, _, _ = select.select([sock], [], [], 0.1)
            if not ready:
                continue
            sender, fields = _receive(sock)
            if unit.value("NotifyAccess", "main") == "main" and sender != child:
                journal(name, f"Got notification message from PID {sender}, but reception only permitted for main PID {child}")
                continue
            if "STATUS" in fields:
                _record(name, "status", fields["STATUS"])
            if fields.get("READY") == "1":
                _record(name, "pid", child)
                _record(name, "result", "success")
                journal(name, f"Started {unit.value('Description', section='Unit')}.")
                return child
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise _failed(name, unit, None, result="timeout")
    finally:
        sock.close()
        NOTIFY_SOCKET.unlink(missing_ok=True)   # nobody listens any more: the agent's later notifications fail, harmlessly


def _child_pid(info_fd: int, proc: subprocess.Popen) -> int | None:
    """bwrap's --info-fd: {"child-pid": N}, the process that becomes ExecStart (setpriv execs it)."""
    with os.fdopen(info_fd) as info:
        text = info.read()
    try:
        return int(json.loads(text)["child-pid"])
    except (ValueError, KeyError):
        return None   # bwrap failed before forking; proc.poll() says so


def _failed(name: str, unit: Unit, status: int | None, result: str = "exit-code") -> StartFailed:
    if status is not None:
        journal(name, f"Main process exited, code=exited, status={status}/{EXIT_NAMES.get(status, status)}")
        if status < 0:
            result = "signal"
    journal(name, f"Failed with result '{result}'.")
    prevented = status is not None and str(status) in unit.words("RestartPreventExitStatus")
    if unit.value("Restart") in ("on-failure", "always") and not prevented:
        journal(name, f"would be restarted in {unit.value('RestartSec', '100ms')} (Restart={unit.value('Restart')})")
    else:
        journal(name, "not restarted" + (" (RestartPreventExitStatus=)" if prevented else ""))
    _record(name, "result", result if status is None else f"{result} {status}")
    (STATE / f"{name}.pid").unlink(missing_ok=True)
    return StartFailed(name, result, status)


def stop(name: str) -> None:
    pid = main_pid(name)
    pgid = _read(name, "pgid")
    if pid is None:
        (STATE / f"{name}.pid").unlink(missing_ok=True)
        return
    unit = read_unit(name)
    journal(name, f"Stopping {unit.value('Description', section='Unit')}...")
    _signal_group(int(pgid) if pgid else pid, signal.SIGTERM)
    deadline = time.monotonic() + unit.seconds("TimeoutStopSec", 90.0)
    while main_pid(name) is not None and time.monotonic() < deadline:
        time.sleep(0.05)
    if main_pid(name) is not None:
        journal(name, "State 'stop-sigterm' timed out. Killing.")
        _signal_group(int(pgid) if pgid else pid, signal.SIGKILL)
        while main_pid(name) is not None:
            time.sleep(0.05)
        _record(name, "result", "timeout")
    journal(name, f"Stopped {unit.value('Description', section='Unit')}.")
    (STATE / f"{name}.pid").unlink(missing_ok=True)


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass
    except OSError as exc:
        if exc.errno != errno.ESRCH:
            raise


def status_text(name: str) -> tuple[str, int]:
    """What `systemctl status` prints, and its exit status (0 running, 3 not)."""
    path = find_unit(name)
    unit = read_unit(name)
    pid = main_pid(name)
    result = _read(name, "result") or ""
    if pid is not None:
        active, code = "active (running)", 0
    elif result and result != "success":
        active, code = f"failed (Result: {result.split()[0]})", 3
    else:
        active, code = "inactive (dead)", 3
    lines = [f"● {name} - {unit.value('Description', section='Unit')}",
             f"     Loaded: loaded ({path})", f"     Active: {active}"]
    if pid is not None:
        lines.append(f"   Main PID: {pid}")
        if _read(name, "status"):
            lines.append(f'     Status: "{_read(name, "status")}"')
    tail = (STATE / f"{name}.journal").read_text(errors="replace").splitlines()[-10:] \
        if (STATE / f"{name}.journal").exists() else []
    return "\n".join(lines + [""] + tail), code
