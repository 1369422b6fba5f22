"""Camera bad input: config mistakes named at load, a model that fails its checks disables only
that camera, corrupt frames and a missing server keep the camera retrying."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest
import yaml

from agent.core.config import ConfigError
from agent.config import load_config
from drivers.camera.options import Options
from drivers.camera.runner import CameraRunner, default_detector_factory
from tests.test_camera_evidence import FakeSink

pytestmark = pytest.mark.timeout(60)

LINE = [[480, 305], [933, 305]]


def write_config(tmp_path: Path, camera: dict) -> Path:
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump({"gateway": {"id": "gw-1", "site": "lab"},
                                    "buffer": {"path": str(tmp_path / "outbox.db")},
                                    "cameras": [{"id": "cam-01", **camera}]}, sort_keys=False))
    return path


@pytest.mark.parametrize("camera, expected", [
    ({"url": "rtsp://admin:pw@192.0.2.30/s"}, "cameras[0].url: the URL holds a password"),
    ({"url": "rtsp:///s"}, "cameras[0].url: the rtsp URL has no host"),
    ({"url": "rtsp://192.0.2.30/s", "rules": [{"type": "red_light", "line": LINE, "direction": "up"}]},
     "rules[0] (red_light) needs a signal"),
    ({"url": "rtsp://192.0.2.30/s", "rules": [{"type": "illegal_parking", "zone": [[0, 0], [10, 10], [20, 20]]}]},
     "the polygon has no area"),
    ({"url": "rtsp://192.0.2.30/s", "rules": [{"type": "speeding"}]}, "rule type must be one of"),
    ({"url": "rtsp://192.0.2.30/s", "model": "no-such-model"}, "cameras[0].model: model 'no-such-model': no manifest"),
    ({"url": "rtsp://192.0.2.30/s", "rules": [{"type": "wrong_way", "zone": [[0, 0], [100, 0], [100, 100]]}]},
     "a 'zone' needs the lane's 'direction'"),
])
def test_config_mistakes_are_named_at_load(tmp_path, camera, expected):
    with pytest.raises(ConfigError) as caught:
        load_config(write_config(tmp_path, camera))
    text = str(caught.value)
    assert expected in text, text
    assert "pw@" not in text


def test_a_good_camera_entry_loads(tmp_path):
    sample = yaml.safe_load((Path(__file__).parents[1] / "drivers" / "camera" / "sample.yaml").read_text())
    entry = sample["cameras"][0]
    secret = tmp_path / "cam.pass"
    secret.write_text("s3cret")
    secret.chmod(0o600)
    entry["password"] = {"file": str(secret)}
    config = load_config(write_config(tmp_path, {k: v for k, v in entry.items() if k != "id"}))
    options = config.cameras[0].options
    assert isinstance(options, Options) and len(options.rules) == 5
    assert options.stream_url() == "rtsp://evidence:s3cret@192.0.2.30:554/Streaming/Channels/101"
    assert "s3cret" not in repr(options)


def test_a_model_with_the_wrong_sha256_disables_only_that_camera(tmp_path):
    broken = tmp_path / "model"
    shutil.copytree(Path(__file__).parents[1] / "models" / "vehicles", broken)
    manifest = yaml.safe_load((broken / "manifest.yaml").read_text())
    manifest["sha256"] = "0" * 64
    (broken / "manifest.yaml").write_text(yaml.safe_dump(manifest))
    options = Options.model_validate({"url": "rtsp://127.0.0.1:9/none", "model": str(broken / "manifest.yaml"),
                                      "open_timeout": "500ms", "backoff": {"initial": "200ms", "max": "1s"}})
    sink = FakeSink()
    device = type("Device", (), {"id": "cam-01"})()
    runner = CameraRunner(device, options, sink, detector_factory=default_detector_factory(options))

    async def scenario():
        task = asyncio.create_task(runner.run())
        for _ in range(100):
            await asyncio.sleep(0.05)
            if runner.disabled:
                break
        await asyncio.sleep(0.3)
        assert not task.done()          # the runner lives on (disabled), the agent's loop too
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await runner.close()
    asyncio.run(scenario())
    assert runner.disabled and "sha256" in runner.disabled and "camera disabled" in runner.disabled
    offline = [s for s in sink.states if s[1] is False]
    assert offline and "sha256" in offline[-1][2]
    assert runner.stats()["cam-01"]["disabled"] == runner.disabled
