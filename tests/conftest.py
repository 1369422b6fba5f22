"""Shared pytest fixtures. Each section belongs to one area; add yours below with its own heading."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.hardware_sim.broker import MosquittoBroker
from tests.hardware_sim.consumer import Consumer


# -- broker and consumer --

@pytest.fixture
def broker(tmp_path: Path) -> Iterator[MosquittoBroker]:
    """A fresh Mosquitto on a free loopback port, stopped after the test. Its config and
    mosquitto.log stay in the test's tmp_path for debugging."""
    with MosquittoBroker(workdir=tmp_path / "mosquitto") as running:
        yield running


@pytest.fixture
def consumer_factory(broker: MosquittoBroker) -> Iterator[Callable[..., Consumer]]:
    """``consumer_factory(gateway="gw-01", ...)`` -> a started Consumer of ``broker`` (keyword
    arguments go to :class:`Consumer`); every one is stopped after the test."""
    started: list[Consumer] = []

    def make(**kwargs: Any) -> Consumer:
        kwargs.setdefault("host", broker.host)
        kwargs.setdefault("port", broker.port)
        consumer = Consumer(**kwargs).start()
        started.append(consumer)
        return consumer

    yield make
    for consumer in started:
        consumer.stop()
