"""Percentiles of recent samples, the one way the agent reports latencies (ack, inference, commit).

Nearest rank on the sorted samples (the value below which the share ``q`` of them falls), so a
figure is always a value that was measured; ``None`` when there are no samples yet.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable


def percentile(samples: Collection[float], q: float, digits: int | None = 1) -> float | None:
    if not samples:
        return None
    ordered = sorted(samples)
    value = ordered[min(len(ordered) - 1, int(q * len(ordered)))]
    return round(value, digits) if digits is not None else value


def percentiles(samples: Collection[float], qs: Iterable[float]) -> dict[str, float | int | None]:
    """``{"p50": …, "p99": …, "n": count}`` for ``qs`` (0.50, 0.99)."""
    ordered = sorted(samples)
    out: dict[str, float | int | None] = {f"p{round(q * 100):d}": (
        ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else None) for q in qs}
    out["n"] = len(ordered)
    return out
