"""Shared pytest fixtures. Each section belongs to one area; add yours below with its own heading."""

from __future__ import annotations

import gc
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.core import loopwatch
from agent.core.loopwatch import LoopWatch
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


# -- the event loop's 50 ms budget (DESIGN.md) --

os.environ.setdefault("EDGE_AGENT_LOOP_CLOCK", "cpu")   # agents started by tests inherit it


@pytest.fixture(autouse=True)
def loop_budget(request: pytest.FixtureRequest) -> Iterator[LoopWatch]:
    """Every callback of every event loop a test runs in this process is timed (the loop thread's
    CPU time, so a preempted callback on two busy cores is not a false alarm); the test fails when
    one held its loop for more than the budget. ``@pytest.mark.loop_budget(ms)`` raises it for a
    test whose own harness (not the agent) computes inside a loop."""
    watch = loopwatch.install(every_loop=True)
    marker = request.node.get_closest_marker("loop_budget")
    watch.budget_s = (marker.args[0] / 1000) if marker else loopwatch.BUDGET_S
    _leave_earlier_tests_heap_out()
    watch.reset()
    yield watch
    if watch.max_s and marker is None:   # a test that raised its budget is its harness's figure, not ours
        _LONGEST_IN_PROCESS.append((round(watch.max_s * 1000, 1), watch.max_what or "?", request.node.nodeid))
    over = list(watch.worst)
    watch.budget_s = loopwatch.BUDGET_S
    if over:
        pytest.fail(f"{len(over)} callback(s) held the event loop beyond its budget: "
                    + "; ".join(f"{o['ms']} ms in {o['callback']} ({o['thread']})" for o in over), pytrace=False)


_LONGEST_IN_PROCESS: list[tuple[float, str, str]] = []

# A full garbage collection walks every object of this process: pysnmp's MIB objects, onnxruntime,
# numpy, what 700 tests left alive. That takes 50-150 ms of CPU here, and it happens inside
# whatever callback is running when it comes due, so a callback would be charged for the heap of
# the whole test run (an agent process carries none of it). So the objects alive when a test
# starts are frozen (full collections during the test walk only what it made), and the whole heap
# is collected between tests every FULL_COLLECT_EVERY tests, outside any loop.
FULL_COLLECT_EVERY = 25
_tests_since_full_collect = 0


def _leave_earlier_tests_heap_out() -> None:
    global _tests_since_full_collect
    _tests_since_full_collect += 1
    if _tests_since_full_collect >= FULL_COLLECT_EVERY:
        _tests_since_full_collect = 0
        gc.unfreeze()
        gc.collect()
    else:
        gc.collect(1)   # the young garbage of the test before: cheap, and not frozen for good
    gc.freeze()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """The longest callback seen over the whole run, in the test process and in the agents the
    tests started (their own loop watch, reported in their last status)."""
    from tests.agent_proc import LONGEST

    for where, seen in (("in this process", _LONGEST_IN_PROCESS), ("in agent processes", LONGEST)):
        if seen:
            ms, what, test = max(seen)
            terminalreporter.write_line(f"longest event-loop callback {where} ({loopwatch.current().clock_name} "
                                        f"time, {len(seen)} measured): {ms} ms, {what} ({test})")


# -- the Debian package (tests/test_package*.py) --

@pytest.fixture(scope="session")
def debian_package(tmp_path_factory: pytest.TempPathFactory):
    """This checkout as a Debian package, built once per session by packaging/build-deb (the
    dependencies' virtualenv is cached across sessions, see build-deb)."""
    from tests.gateway_sim import package
    return package.build(package.REPO, tmp_path_factory.mktemp("deb"))


@pytest.fixture(scope="session")
def next_debian_package(tmp_path_factory: pytest.TempPathFactory):
    """The next release: this checkout with a bumped version and one more outbox migration."""
    from tests.gateway_sim import package
    source = package.copy_checkout(tmp_path_factory.mktemp("next") / "src")
    package.make_next_release(source)
    return package.build(source, tmp_path_factory.mktemp("deb-next"))
