"""A real Mosquitto broker for tests and maintainers, on a free loopback port, never the system one.

Each broker gets a temp dir holding its generated ``mosquitto.conf``, password file and
``mosquitto.log`` (read the log when a test fails). Persistence is off, so a restart is a broker
that lost every session and retained message: exactly what an outage looks like to the agent.

    with MosquittoBroker() as broker:          # started, ready
        ...connect to broker.host, broker.port...
        broker.restart()                       # same port: clients reconnect to it
        broker.pause(); broker.resume()        # SIGSTOP/SIGCONT: a broker that stops answering

CLI for maintainers: ``python -m tests.hardware_sim.broker --port 1884 [--username u --password p]``.
"""

from __future__ import annotations

import argparse
import atexit
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

INSTALL_HINT = "install it with: apt-get install mosquitto (it ships mosquitto and mosquitto_passwd)"


class MosquittoNotInstalled(RuntimeError):
    """The mosquitto binaries are missing from this machine."""


class BrokerError(RuntimeError):
    """The broker did not start, or died; the message carries the end of its log."""


@dataclass(frozen=True)
class BrokerTls:
    """A TLS listener beside the plain one. ``require_certificate`` makes it mutual TLS."""

    cafile: Path | str
    certfile: Path | str
    keyfile: Path | str
    require_certificate: bool = False
    port: int | None = None   # a free port when None


def find_binary(name: str) -> str:
    """Path of a mosquitto binary; /usr/sbin is not on every user's PATH."""
    found = shutil.which(name) or next(
        (str(p) for p in (Path("/usr/sbin") / name, Path("/usr/bin") / name, Path("/usr/local/sbin") / name)
         if p.is_file() and os.access(p, os.X_OK)), None)
    if found is None:
        raise MosquittoNotInstalled(f"{name} not found: {INSTALL_HINT}")
    return found


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on right now (the kernel's choice; a race is retried by start())."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def port_open(host: str, port: int, timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


# Brokers still running when the interpreter exits (a test run aborted): don't leave them behind.
_running: set[subprocess.Popen[bytes]] = set()


@atexit.register
def _terminate_leftovers() -> None:
    for proc in list(_running):
        if proc.poll() is None:
            proc.send_signal(signal.SIGCONT)
            proc.terminate()


class MosquittoBroker:
    """One mosquitto process with a generated config. Not thread-safe: drive it from the test."""

    def __init__(self, port: int | None = None, *, host: str = "127.0.0.1",
                 username: str | None = None, password: str | None = None,
                 users: Mapping[str, str] | None = None,
                 allow_anonymous: bool | None = None,
                 tls: BrokerTls | None = None,
                 max_inflight: int | None = None,
                 max_queued: int | None = None,
                 extra_config: Sequence[str] = (),
                 workdir: Path | str | None = None,
                 persistent: bool = False,
                 verbose: bool = False) -> None:
        """``port`` None picks a free one. ``users`` (and/or ``username``/``password``) go into a
        password file; anonymous clients are then refused unless ``allow_anonymous`` says otherwise.
        ``max_inflight``/``max_queued`` are mosquitto's max_inflight_messages/max_queued_messages.
        ``workdir`` keeps config and log there (e.g. pytest's tmp_path); default: a temp dir that
        :meth:`close` removes. ``persistent`` keeps sessions, their queued messages and retained
        messages across a restart (mosquitto writes them on SIGTERM), as a production broker does:
        a consumer with a persistent session then misses nothing of an outage test.
        ``verbose`` logs every packet."""
        self.host = host
        self._auto_port = port is None
        self.port = port if port is not None else free_port(host)
        self.users = dict(users or {})
        if username is not None:
            self.users[username] = password or ""
        self.allow_anonymous = not self.users if allow_anonymous is None else allow_anonymous
        self.tls = tls
        self.tls_port = (tls.port or free_port(host)) if tls else None
        self.max_inflight = max_inflight
        self.max_queued = max_queued
        self.extra_config = list(extra_config)
        self.verbose = verbose
        self.persistent = persistent
        self._own_workdir = workdir is None
        self.workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="mosquitto-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path = self.workdir / "mosquitto.conf"
        self.log_path = self.workdir / "mosquitto.log"
        self.password_path = self.workdir / "passwd"
        self._binary = find_binary("mosquitto")   # fail here, with the apt-get hint, not at start()
        self._proc: subprocess.Popen[bytes] | None = None
        self._paused = False

    # -- config -------------------------------------------------------------------------------

    def _write_password_file(self) -> None:
        passwd = find_binary("mosquitto_passwd")
        self.password_path.unlink(missing_ok=True)
        for index, (user, secret) in enumerate(self.users.items()):
            args = [passwd, "-b"] + (["-c"] if index == 0 else []) + [str(self.password_path), user, secret]
            done = subprocess.run(args, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise BrokerError(f"mosquitto_passwd failed for user {user!r}: {done.stderr.strip() or done.stdout.strip()}")
        self.password_path.chmod(0o600)

    def config_text(self) -> str:
        lines = [
            "# generated by tests/hardware_sim/broker.py",
            "per_listener_settings false",
            # without persistence a restart loses sessions and retained messages
            *([f"persistence true", f"persistence_location {self.workdir}/", "autosave_interval 0"]
              if self.persistent else ["persistence false"]),
            "log_dest stderr",            # stderr goes to mosquitto.log, with startup errors too
            "log_timestamp true",
            "log_timestamp_format %Y-%m-%dT%H:%M:%S",
            "connection_messages true",
            *(f"log_type {t}" for t in ("error", "warning", "notice", "information")),
            *(["log_type all"] if self.verbose else []),
            f"allow_anonymous {'true' if self.allow_anonymous else 'false'}",
        ]
        if os.geteuid() == 0:
            lines.append("user root")     # else mosquitto drops to user 'mosquitto', who can't read our temp dir
        if self.users:
            lines.append(f"password_file {self.password_path}")
        if self.max_inflight is not None:
            lines.append(f"max_inflight_messages {self.max_inflight}")
        if self.max_queued is not None:
            lines.append(f"max_queued_messages {self.max_queued}")
        lines += self.extra_config
        lines.append(f"listener {self.port} {self.host}")
        if self.tls:
            lines += [
                f"listener {self.tls_port} {self.host}",
                f"cafile {Path(self.tls.cafile).resolve()}",
                f"certfile {Path(self.tls.certfile).resolve()}",
                f"keyfile {Path(self.tls.keyfile).resolve()}",
                f"require_certificate {'true' if self.tls.require_certificate else 'false'}",
            ]
        return "\n".join(lines) + "\n"

    # -- process ------------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self.running and self._proc else None

    def start(self, timeout: float = 5.0) -> "MosquittoBroker":
        """Write the config, start mosquitto, wait until it accepts connections."""
        if self.running:
            return self
        if self.users:
            self._write_password_file()
        for attempt in range(3):
            self.config_path.write_text(self.config_text())
            with self.log_path.open("ab") as log:
                log.write(f"--- start on {self.host}:{self.port} ---\n".encode())
                log.flush()
                # Own session: a Ctrl-C at the terminal reaches us, not the broker; we stop it.
                self._proc = subprocess.Popen([self._binary, "-c", str(self.config_path)],
                                              stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                              start_new_session=True)
            _running.add(self._proc)
            self._paused = False
            try:
                self.wait_ready(timeout)
                return self
            except BrokerError:
                in_use = "Address already in use" in self.log_tail(5)
                self._reap()
                if not (in_use and self._auto_port and attempt < 2):
                    raise
                # Someone took the port between free_port() and the bind: pick another.
                self.port = free_port(self.host)
                if self.tls and not self.tls.port:
                    self.tls_port = free_port(self.host)
        raise AssertionError("unreachable")

    def wait_ready(self, timeout: float = 5.0) -> None:
        """Poll until every listener accepts TCP connections; BrokerError (with the log) if not."""
        deadline = time.monotonic() + timeout
        ports = [self.port] + ([self.tls_port] if self.tls_port else [])
        while True:
            if self._proc is None or self._proc.poll() is not None:
                code = None if self._proc is None else self._proc.returncode
                raise BrokerError(f"mosquitto exited (code {code}) instead of listening on "
                                  f"{self.host}:{self.port}; log {self.log_path}:\n{self.log_tail()}")
            if all(port_open(self.host, p) for p in ports):
                return
            if time.monotonic() > deadline:
                raise BrokerError(f"mosquitto not listening on {self.host}:{ports} after {timeout}s; "
                                  f"log {self.log_path}:\n{self.log_tail()}")
            time.sleep(0.02)

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM, then wait (SIGKILL if it will not go). Clients see the connection close."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            self._reap()
            return
        proc.terminate()
        if self._paused:
            proc.send_signal(signal.SIGCONT)   # a stopped process only acts on SIGTERM once resumed
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        self._reap()

    def kill(self) -> None:
        """SIGKILL: a crash; no clean disconnects, the last wills of clients are not sent."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        self._reap()

    def restart(self, timeout: float = 5.0, down_for: float = 0.0) -> None:
        """Stop and start again on the same port(s), after ``down_for`` seconds of outage."""
        self.stop()
        if down_for:
            time.sleep(down_for)
        auto, self._auto_port = self._auto_port, False   # never move: clients reconnect to this port
        try:
            self.start(timeout)
        finally:
            self._auto_port = auto

    def pause(self) -> None:
        """SIGSTOP: connections stay open but nothing is answered (no CONNACK, no PUBACK)."""
        if self._proc is not None and self.running:
            self._proc.send_signal(signal.SIGSTOP)
            self._paused = True

    def resume(self) -> None:
        if self._proc is not None and self._paused:
            self._proc.send_signal(signal.SIGCONT)
            self._paused = False

    def _reap(self) -> None:
        if self._proc is not None:
            _running.discard(self._proc)
        self._proc = None
        self._paused = False

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def close(self) -> None:
        """Stop, and remove the temp dir if this object made it."""
        self.stop()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> "MosquittoBroker":
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "paused" if self._paused else "running" if self.running else "stopped"
        return f"MosquittoBroker({self.host}:{self.port}, {state}, log={self.log_path})"


# -- CLI ----------------------------------------------------------------------------------------

def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.hardware_sim.broker",
                                     description="Run a throwaway Mosquitto broker with a generated config.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=None, help="default: a free port")
    parser.add_argument("--username")
    parser.add_argument("--password")
    parser.add_argument("--allow-anonymous", action="store_true", default=None,
                        help="also accept clients without credentials when a user is set")
    parser.add_argument("--max-inflight", type=int)
    parser.add_argument("--max-queued", type=int)
    parser.add_argument("--tls-ca", help="CA file; with --tls-cert and --tls-key adds a TLS listener")
    parser.add_argument("--tls-cert")
    parser.add_argument("--tls-key")
    parser.add_argument("--tls-port", type=int)
    parser.add_argument("--require-certificate", action="store_true", help="mutual TLS")
    parser.add_argument("--workdir", help="where config and log go (default: a temp dir, removed on exit)")
    parser.add_argument("--verbose", "-v", action="store_true", help="log every packet")
    args = parser.parse_args(argv)

    tls = None
    if args.tls_ca or args.tls_cert or args.tls_key:
        if not (args.tls_ca and args.tls_cert and args.tls_key):
            parser.error("TLS needs --tls-ca, --tls-cert and --tls-key")
        tls = BrokerTls(args.tls_ca, args.tls_cert, args.tls_key, args.require_certificate, args.tls_port)
    try:
        broker = MosquittoBroker(args.port, host=args.host, username=args.username, password=args.password,
                                 allow_anonymous=args.allow_anonymous, tls=tls, max_inflight=args.max_inflight,
                                 max_queued=args.max_queued, workdir=args.workdir, verbose=args.verbose)
        broker.start()
    except (MosquittoNotInstalled, BrokerError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"mosquitto listening on {broker.host}:{broker.port}"
          + (f", TLS on {broker.tls_port}" if broker.tls_port else "")
          + f"\nconfig {broker.config_path}\nlog    {broker.log_path}\nCtrl-C to stop", flush=True)
    try:
        with broker.log_path.open(errors="replace") as log:   # follow the log until Ctrl-C
            while broker.running:
                line = log.readline()
                if line:
                    print(line, end="", flush=True)
                else:
                    time.sleep(0.2)
        print(f"mosquitto exited:\n{broker.log_tail(10)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        broker.close()


if __name__ == "__main__":
    sys.exit(main())
