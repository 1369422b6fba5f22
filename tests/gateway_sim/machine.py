"""This machine, copy-on-write: a scratch root where dpkg really installs, upgrades, removes and
purges a package, its maintainer scripts really add users and change owners, and the service
really runs, while the machine the tests run on stays exactly as it was.

How: a process in a private mount namespace (``unshare --mount``) mounts overlays on /etc, /usr,
/var and /opt whose writes go to upper directories under the scratch folder, and a tmpfs on /run;
then it sleeps, holding the namespace. Commands run in it through ``nsenter``; the host reads
its files through ``/proc/PID/root``. When it is closed, everything it started is killed and the
namespace (with every change) goes away; the scratch folder is the test's tmp_path.

``/usr/local/bin/systemctl`` in it is :mod:`tests.gateway_sim.systemctl` and /run/systemd/system
exists, so maintainer scripts believe systemd runs and start and stop units through it.

Needs root (mounting); :func:`unavailable` says why a machine cannot be had here.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
OVERLAID = ("etc", "usr", "var", "opt")
ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8",
       "HOME": "/root", "DEBIAN_FRONTEND": "noninteractive", "TERM": "dumb"}

_HOLDER = r"""
set -e
scratch="$1"
for d in {overlaid}; do
    mkdir -p "$scratch/upper/$d" "$scratch/work/$d"
    mount -t overlay overlay -o "lowerdir=/$d,upperdir=$scratch/upper/$d,workdir=$scratch/work/$d" "/$d"
done
mount -t tmpfs -o mode=0755 tmpfs /run
mkdir -p /run/systemd/system /run/lock
if [ -n "$2" ]; then mkdir -p /opt/edge-agent && mount -t tmpfs -o "size=$2,mode=0755" tmpfs /opt/edge-agent; fi
echo ready
exec setpriv --pdeathsig KILL -- sleep infinity   # gone with the test process, however it ends
""".replace("{overlaid}", " ".join(OVERLAID))

SYSTEMCTL = """#!/bin/sh
# systemd's part for a scratch machine: tests/gateway_sim/systemctl.py
PYTHONPATH={repo} PYTHONDONTWRITEBYTECODE=1 exec {python} -m tests.gateway_sim.systemctl "$@"
"""


_open: set["ScratchMachine"] = set()


@atexit.register
def _close_leftovers() -> None:
    """Machines a test did not close (it failed, it was interrupted): their services go too."""
    for machine in list(_open):
        machine.close()


def unavailable() -> str | None:
    """Why a scratch machine cannot run here, or None."""
    if os.geteuid() != 0:
        return "a scratch machine mounts overlays: run the tests as root"
    for tool in ("unshare", "nsenter", "bwrap", "dpkg", "setpriv"):
        if shutil.which(tool) is None:
            return f"{tool} is missing (install.sh --dev installs it)"
    return None


class ScratchMachine:
    def __init__(self, directory: Path, *, opt_size: str | None = None):
        """``opt_size`` puts /opt/edge-agent on a tmpfs of that size (``700m``): a small disk."""
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self._holder = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", _HOLDER, "holder",
             str(self.dir), opt_size or ""],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        line = self._holder.stdout.readline()
        if line.strip() != b"ready":
            self._holder.kill()
            raise RuntimeError(f"the scratch machine did not start: {self._holder.stderr.read().decode()}")
        self.pid = self._holder.pid
        _open.add(self)
        self.write("/usr/local/bin/systemctl", SYSTEMCTL.format(repo=REPO, python=sys.executable), mode=0o755)

    # -- looking inside ---------------------------------------------------------------------------

    def path(self, inside: str) -> Path:
        """A path of the machine as this process can open it (through the holder's root)."""
        return Path(f"/proc/{self.pid}/root") / inside.lstrip("/")

    def write(self, inside: str, text: str, mode: int = 0o644) -> None:
        target = self.path(inside)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        target.chmod(mode)

    def run(self, *argv: str, timeout: float = 300, check: bool = False, env: dict[str, str] | None = None,
            user: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run a command in the machine (as root, or as ``user``), with a login-like environment."""
        command = ["nsenter", f"--target={self.pid}", "--mount", "--", *(
            ["runuser", "-u", user, "--"] if user else []), *argv]
        done = subprocess.run(command, env={**ENV, **(env or {})}, cwd="/", capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL)
        if check and done.returncode != 0:
            raise AssertionError(f"{' '.join(argv)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
        return done

    def dpkg(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        # unsafe-io: no fsync per file; the scratch root is thrown away anyway
        return self.run("dpkg", "--force-unsafe-io", *args, check=check)

    def package_status(self, name: str) -> str | None:
        """dpkg's Status and Version of a package (``install ok installed 0.1.0``), None if unknown."""
        done = self.run("dpkg-query", "-W", "-f=${Status} ${Version}", name)
        return done.stdout.strip() if done.returncode == 0 else None

    def systemctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.run("systemctl", *args, timeout=700)

    def journal(self, unit: str = "edge-agent.service") -> str:
        path = self.path(f"/run/systemd-sim/{unit}.journal")
        return path.read_text(errors="replace") if path.exists() else ""

    def calls(self) -> list[dict]:
        import json
        path = self.path("/run/systemd-sim/calls.jsonl")
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    # -- the end ------------------------------------------------------------------------------------

    def close(self) -> None:
        """Stop what runs in the machine and let the namespace go."""
        _open.discard(self)
        if self._holder.poll() is not None:
            return
        if self.path("/run/systemd-sim").exists():
            for pidfile in self.path("/run/systemd-sim").glob("*.pgid"):
                try:
                    os.killpg(int(pidfile.read_text()), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
        os.killpg(self._holder.pid, signal.SIGKILL)
        self._holder.wait(10)
        time.sleep(0.1)

    def __enter__(self) -> "ScratchMachine":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
