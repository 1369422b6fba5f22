"""``systemctl`` for a scratch machine without systemd as PID 1: installed first on its PATH
(/usr/local/bin/systemctl) so that maintainer scripts (deb-systemd-invoke) and tests start and stop
units through :mod:`tests.gateway_sim.service`, as systemd would.

Handled here: start, stop, restart, try-restart, is-active, status, daemon-reload (nothing to do:
every start reads the unit file). Everything else (is-enabled, preset, enable with --root, ...)
works on files and goes to the real /usr/bin/systemctl, in its offline mode (--root=/). Every call is appended to
/run/systemd-sim/calls.jsonl with the maintainer script that made it, so a test can check the
order of stop, unpack and start during an upgrade.
"""

from __future__ import annotations

import json
import os
import sys
import time

from tests.gateway_sim import service

REAL = "/usr/bin/systemctl"
OPTIONS_IGNORED = {"--quiet", "-q", "--system", "--no-block", "--no-pager", "--no-ask-password", "--full", "-l"}


def log_call(argv: list[str]) -> None:
    service.STATE.mkdir(parents=True, exist_ok=True)
    entry = {"t": time.time(), "argv": argv, "script": os.environ.get("DPKG_MAINTSCRIPT_NAME"),
             "package": os.environ.get("DPKG_MAINTSCRIPT_PACKAGE")}
    with open(service.STATE / "calls.jsonl", "a") as out:
        out.write(json.dumps(entry) + "\n")


def main(argv: list[str]) -> int:
    log_call(argv)
    quiet = "--quiet" in argv or "-q" in argv
    words = [a for a in argv if a not in OPTIONS_IGNORED and a != "--"]
    if words and words[0] == "is-enabled" and not any(a.startswith("--root") for a in argv):
        os.execv(REAL, [REAL, "--root=/", *argv])   # without systemd, only its offline mode works
    if not words or words[0] not in ("start", "stop", "restart", "try-restart", "is-active", "status",
                                     "daemon-reload"):
        os.execv(REAL, [REAL, *argv])
    verb, units = words[0], words[1:]
    code = 0
    for unit in units:
        name = unit if "." in unit else f"{unit}.service"
        try:
            if verb == "start":
                service.start(name)
            elif verb == "stop":
                service.stop(name)
            elif verb == "restart" or (verb == "try-restart" and service.main_pid(name) is not None):
                service.stop(name)
                service.start(name)
            elif verb == "is-active":
                running = service.main_pid(name) is not None
                if not quiet:
                    print("active" if running else "inactive")
                code = max(code, 0 if running else 3)
            elif verb == "status":
                text, status = service.status_text(name)
                print(text)
                code = max(code, status)
        except service.StartFailed as exc:
            print(exc, file=sys.stderr)
            code = 1
        except FileNotFoundError as exc:
            print(exc, file=sys.stderr)
            code = max(code, 5 if verb != "status" else 4)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
