"""systemd's readiness protocol (sd_notify) without libsystemd: one datagram to ``$NOTIFY_SOCKET``.

The unit is ``Type=notify``: ``systemctl start`` (and a package's postinst) returns only once the
agent said READY=1, after its config, secrets and outbox were opened, and fails with the agent's
own message when it exits before that (an invalid config, an outbox from a newer version), instead
of reporting a start that was never going to work. STATUS= is the line ``systemctl status`` shows.

Outside systemd (no ``NOTIFY_SOCKET``) every call does nothing. A failed send is never an error:
nothing the agent does may depend on systemd listening.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)


def notify(*fields: str) -> bool:
    """Send ``fields`` (``READY=1``, ``STOPPING=1``, ``STATUS=...``); True when a socket took them."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):   # an abstract socket
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto("\n".join(fields).encode(), address)
    except OSError as exc:
        log.debug("sd_notify to %s failed: %s", address, exc)
        return False
    return True


class StatusLine:
    """``STATUS=`` for ``systemctl status``, sent only when the text changes (it is built every
    status interval)."""

    def __init__(self) -> None:
        self._last: str | None = None

    def update(self, text: str) -> None:
        if text != self._last and notify(f"STATUS={text}"):
            self._last = text
