"""The answer timeout every controller link takes (NTCIP, GB/T 20999): a duration, 50 ms .. 10 s."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator

from agent.core.units import Duration


def _between_50ms_and_10s(value: float) -> float:
    if not 0.05 <= value <= 10:
        raise ValueError("timeout must be between 50ms and 10s")
    return value


AnswerTimeout = Annotated[Duration, AfterValidator(_between_50ms_and_10s)]
