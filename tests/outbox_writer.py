"""Crash-test writer for tests/test_outbox.py: puts and flushes in a loop until it is killed.

Usage: python -m tests.outbox_writer DB_PATH

After every flush that returned it prints ``F <first seq> <last seq>`` (the seqs just committed),
after every allocate_seq ``A <seq>``, each line flushed at once, so the test knows exactly what was
promised durable before its SIGKILL landed.
"""

from __future__ import annotations

import sys

from agent.core.model import Priority
from agent.outbox import Outbox


def main(path: str) -> None:
    outbox = Outbox(path, gateway_id="gw-crash", max_bytes=1 << 30, durable=True)
    out = sys.stdout
    readings = [{"p": f"p{i}", "v": i * 1.5, "u": "ug/m3", "t": 1763712000000 + i, "q": "good"} for i in range(20)]
    n = 0
    while True:
        for _ in range(7):
            n += 1
            priority = Priority.LIFE_SAFETY if n % 50 == 0 else Priority.TELEMETRY
            outbox.put(priority, "citybrain/v1/site/gw-crash/telemetry/aq-01", {"device": "aq-01", "n": n, "readings": readings})
        if n % 21 == 0:
            out.write(f"A {outbox.allocate_seq()}\n")
            out.flush()
        inserted = outbox.flush()
        last = outbox.stats().last_seq
        out.write(f"F {last - inserted + 1} {last}\n")
        out.flush()


if __name__ == "__main__":
    main(sys.argv[1])
