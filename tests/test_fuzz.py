"""A bounded profile of bench/fuzz.py: every target, a fixed seed, a few thousand inputs each
(a few hundred of the slow ones: configs, the camera, the MQTT broker), no findings.

The full run (a million inputs, two workers) is ``python bench/fuzz.py``; this one runs one
worker in a fresh process (the targets load the model, pysnmp, paho and an agent, patch the
boundary hook and the event loop watch: none of that stays in the test session), in well under a
minute. A finding fails the test with the runner's own report: the target, the exception or
broken contract, where, and the input as hex.
"""

from __future__ import annotations

import io
import multiprocessing

import pytest

from bench.fuzz import print_report, run_worker
from bench.fuzz_targets import REGISTRY

SEED = 20250101
# inputs per target: the fast parsers a few thousand, the slow ones what fits in seconds
PROFILE = {name: 3000 for name in REGISTRY} | {
    "commands": 2000, "config": 400, "model.manifest": 400, "camera.frame": 150, "mqtt.packet": 300,
    "web.http": 400,
}


@pytest.mark.timeout(240)
def test_bounded_fuzz_profile_finds_nothing():
    assert set(PROFILE) == set(REGISTRY)
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        results = pool.apply(run_worker, (list(PROFILE), PROFILE, SEED, 0, None))
    report = io.StringIO()
    findings = print_report(results, 1.0, 1, out=report)
    assert findings == 0, report.getvalue()
    for name, count in PROFILE.items():
        assert results[name].inputs == count, (name, results[name].inputs)
