"""``/metrics`` for Prometheus: the figures of the ``metrics`` topic (agent/status.py), in the
exposition format written by prometheus-client, plus its standard process figures (CPU seconds,
resident memory, open files) in place of the topic's sampled CPU percentage.

The topic's JSON is flattened by shape, not by name, so a family's block (the cameras'
``inference``: camera -> figure -> value) appears without this file naming it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

PREFIX = "edge_agent"
_NAME = re.compile(r"[^a-zA-Z0-9_]")
# blocks keyed by device / boundary / class, and the label their keys get
_RENAMED = {"boundaries": "boundary_failures"}   # {boundary: failures} reads better under this name
_LABELLED = {"devices": "device", "boundary_failures": "boundary", "evictions": "class", "inference": "camera",
             "refused": "code"}


def _name(*parts: str) -> str:
    return _NAME.sub("_", "_".join((PREFIX, *parts)))


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, (int, float)):
        return float(value)
    return None


class TopicCollector(Collector):
    """Reads the agent's metrics when Prometheus scrapes (no state of its own)."""

    def __init__(self, figures: Callable[[], dict[str, Any] | None]):
        self.figures = figures

    def collect(self) -> Iterator[Metric]:
        data = self.figures()
        if data is None:   # the agent is restarting
            return
        families: dict[str, tuple[tuple[str, ...], GaugeMetricFamily]] = {}

        def emit(name: str, labels: dict[str, str], value: float) -> None:
            known = families.get(name)
            if known is None:
                known = families[name] = (tuple(labels), GaugeMetricFamily(
                    name, f"the metrics topic's {name[len(PREFIX) + 1:]}", labels=list(labels)))
            if tuple(labels) == known[0]:   # one label set per family
                known[1].add_metric(list(labels.values()), value)

        def walk(value: Any, parts: tuple[str, ...], labels: dict[str, str]) -> None:
            number = _number(value)
            if number is not None:
                emit(_name(*parts), labels, number)
            elif isinstance(value, dict):
                label = _LABELLED.get(parts[-1]) if parts else None
                for key, item in value.items():
                    if label is not None and label not in labels:
                        walk(item, parts, {**labels, label: str(key)})
                    else:
                        walk(item, (*parts, str(key)), labels)

        for key, value in data.items():
            if key == "uplink":
                state = value.get("state")
                emit(_name("uplink_connected"), {}, 1.0 if state == "connected" else 0.0)
            walk(value, (_RENAMED.get(key, key),), {})
        yield from (family for _, family in families.values())


def registry(figures: Callable[[], dict[str, Any] | None]) -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(TopicCollector(figures))
    ProcessCollector(registry=reg)   # process_cpu_seconds_total, process_resident_memory_bytes ...
    return reg


def exposition(reg: CollectorRegistry) -> bytes:
    return generate_latest(reg)
