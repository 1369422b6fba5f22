"""A bounded profile of bench/fuzz.py: every target, a fixed seed, a few thousand inputs each
(a few hundred of the slow ones: configs, the camera, the MQTT broker), no findings.

The full run (a million inputs, two workers) is ``python bench/fuzz.py``; this one runs in this
process, one worker, in well under a minute. A finding fails the test with the runner's own
report: the target, the exception or broken contract, where, and the input as hex.
"""

from __future__ import annotations

import io

import pytest

from bench.fuzz import print_report, run_worker
from bench.fuzz_targets import REGISTRY

SEED = 20250101
# inputs per target: the fast parsers a few thousand, the slow ones what fits in seconds
PROFILE = {name: 3000 for name in REGISTRY} | {
    "commands": 2000, "config": 400, "model.manifest": 400, "camera.frame": 150, "mqtt.packet": 300,
}


@pytest.mark.timeout(240, method="thread")   # the runner uses SIGALRM for its own hang guard
def test_bounded_fuzz_profile_finds_nothing():
    assert set(PROFILE) == set(REGISTRY)
    results = run_worker(list(PROFILE), PROFILE, SEED, 0, None)
    report = io.StringIO()
    findings = print_report(results, 1.0, 1, out=report)
    assert findings == 0, report.getvalue()
    for name, count in PROFILE.items():
        assert results[name].inputs == count, (name, results[name].inputs)
