"""Emergency-vehicle priority end to end: a signed signal.priority from a test acting as the centre
reaches the simulated controller, which shows the preemption; it is released at expiry, and released
by itself when the centre goes silent mid-priority."""

from __future__ import annotations

import time

import pytest

from tests.priority_e2e import request_priority, start_agent
from tests.fakes import eventually
from tests.test_signal_controller import DEVICE, ENTRY_BOUND_S, not_green_phase, ntcip_entry, sim  # noqa: F401

pytestmark = pytest.mark.timeout(90)

GW, SITE = "gw-prio", "lab"
KEY = b"prio-key-0123456789abcdef0123456"


def start(tmp_path, broker, sim, **commands):  # noqa: F811
    device = ntcip_entry(sim.snmp_address[1], poll="200ms", max_duration="20s")
    return start_agent(tmp_path, broker, device, KEY, gateway=GW, site=SITE, **commands)


def request(centre, phase, duration_s):
    return request_priority(centre, DEVICE, KEY, phase, duration_s)


def wait(predicate, timeout):
    """When ``predicate()`` came true (the agent and the controller run on their own: real time)."""
    eventually(predicate, timeout)
    return time.monotonic()


def test_priority_reaches_the_controller_and_is_released_at_expiry(tmp_path, broker, consumer_factory, sim):  # noqa: F811
    centre = consumer_factory(gateway=GW, site=SITE)
    with start(tmp_path, broker, sim):
        phase = not_green_phase(sim)
        asked_at = time.monotonic()
        granted = request(centre, phase, 3)
        assert granted["ok"] is True and granted["result"]["granted_s"] == 3
        wait(lambda: sim.view().mode == "dwell" and sim.view().vehicles[phase] == "green", ENTRY_BOUND_S + 1)
        released_at = wait(lambda: not sim.preempt_asserted(1) and not sim.preempt_asserted(2), 6)
        assert 2.8 <= released_at - asked_at <= 4.5   # released by the agent at the 3 s expiry
        centre.wait_for(lambda c: c.events(DEVICE, "signal.priority_ended"), 5)
        assert centre.events(DEVICE, "signal.priority_ended")[0]["data"]["reason"] == "expired"
    assert centre.invalid == []


def test_priority_is_released_when_the_centre_goes_silent(tmp_path, broker, consumer_factory, sim):  # noqa: F811
    centre = consumer_factory(gateway=GW, site=SITE)
    with start(tmp_path, broker, sim, centre_silence="2s"):
        phase = not_green_phase(sim)
        granted = request(centre, phase, 20)
        assert granted["ok"] is True
        heard_at = time.monotonic()
        wait(lambda: sim.preempt_asserted(1) or sim.preempt_asserted(2), 2)
        centre.stop()   # the centre disconnects mid-priority and says nothing more
        released_at = wait(lambda: not sim.preempt_asserted(1) and not sim.preempt_asserted(2), 10)
        assert released_at - heard_at < 6, "released well before the 20 s grant ran out"
