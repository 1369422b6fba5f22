"""Structured logs: one JSON object a line under systemd or in a pipe, readable text on a terminal."""

from __future__ import annotations

import logging
import os
import sys
import time

import orjson


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": int(record.created * 1000),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(entry).decode()


def setup_logging(fmt: str = "auto", level: str = "info") -> None:
    if fmt == "auto":
        under_systemd = "INVOCATION_ID" in os.environ or "JOURNAL_STREAM" in os.environ
        fmt = "json" if under_systemd or not sys.stderr.isatty() else "text"
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        formatter = logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S")
        formatter.converter = time.localtime
        handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # pymodbus and paho narrate every retry at INFO/WARNING; our own messages say what matters
    for noisy in ("pymodbus", "agent.uplink.paho", "asyncio"):
        logging.getLogger(noisy).setLevel(max(logging.CRITICAL if noisy == "pymodbus" else logging.WARNING,
                                              root.level))
