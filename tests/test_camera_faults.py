"""Camera bad input: config mistakes named at load, a model that fails its checks disables only
that camera, corrupt frames and a missing server keep the camera retrying, and a reader stuck in
FFmpeg is replaced by the runner's watchdog (on virtual time)."""

from __future__ import annotations

import asyncio
import shutil
import threading
import time
from pathlib import Path

import pytest
import yaml

from agent.core.clock import VirtualClock
from agent.core.config import ConfigError
from agent.config import load_config
from drivers.camera.options import Options
from drivers.camera.runner import SIGNAL_POLL, WATCHDOG_SLACK, CameraRunner, default_detector_factory
from tests.fakes import RecordingSink, until

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
    clock = VirtualClock()
    sink = RecordingSink(clock)
    device = type("Device", (), {"id": "cam-01"})()
    runner = CameraRunner(device, options, sink, detector_factory=default_detector_factory(options), clock=clock)

    async def scenario():
        task = asyncio.create_task(runner.run())
        await until(lambda: runner.disabled, 5, "the camera disabled")   # the model is checked in a thread
        await clock.advance(60)
        assert not task.done()          # the runner lives on (disabled), the agent's loop too
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await runner.close()
    asyncio.run(scenario())
    assert runner.disabled and "sha256" in runner.disabled and "camera disabled" in runner.disabled
    offline = [s for s in sink.states if s[1] is False]
    assert offline and "sha256" in offline[-1][2]
    assert runner.stats()["cam-01"]["disabled"] == runner.disabled


class StuckReader:
    """A reader whose thread is stuck inside FFmpeg: its heartbeat moves only when ``beat()`` is
    called. It offers the pipeline no frame."""

    def __init__(self) -> None:
        self.heartbeat = time.monotonic()
        self._stop = threading.Event()
        self.started = False

    def beat(self) -> None:
        self.heartbeat += 1.0

    def start(self) -> "StuckReader":
        self.started = True
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()

    def wait_newer(self, seq: int, timeout: float) -> None:
        self._stop.wait(min(timeout, 0.05))   # the pipeline thread asks; nothing comes
        return None

    def latest(self) -> None:
        return None


class WatchedRunner(CameraRunner):
    """A camera runner whose readers are StuckReaders (``readers``: each one it started)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.readers: list[StuckReader] = []

    def _new_reader(self) -> StuckReader:   # type: ignore[override]
        self.readers.append(StuckReader())
        return self.readers[-1]


def test_a_reader_stuck_past_its_own_timeouts_is_replaced_and_one_that_beats_is_not():
    # silence allowed: 2 s to open + 3 s without a frame + a 4 s backoff + the slack
    options = Options.model_validate({"url": "rtsp://127.0.0.1:9/none", "open_timeout": "2s", "read_timeout": "1s",
                                      "freeze_after": "3s", "backoff": {"initial": "1s", "max": "4s"},
                                      "stats_interval": "5s"})
    silence = 2 + 3 + 4 + WATCHDOG_SLACK
    clock = VirtualClock()
    sink = RecordingSink(clock)
    runner = WatchedRunner(type("Device", (), {"id": "cam-01"})(), options, sink, detector_factory=lambda: None,
                           clock=clock)

    async def scenario() -> None:
        task = asyncio.create_task(runner.run())
        try:
            await clock.advance(0)
            first = runner.readers[0]
            for _ in range(3):                       # a reader that beats now and then is left alone
                await clock.advance(silence - 1)
                first.beat()
            assert runner.reader_restarts == 0 and len(runner.readers) == 1
            quiet_since = clock.monotonic()
            await clock.advance(silence - SIGNAL_POLL)
            assert runner.reader_restarts == 0
            # silent for longer than allowed (as seen at its polls, one after the last beat): replaced
            await clock.advance(3 * SIGNAL_POLL)
            assert runner.reader_restarts == 1 and len(runner.readers) == 2
            assert first._stop.is_set() and runner.readers[1].started and runner.reader is runner.readers[1]
            (state,) = sink.states
            assert state[1] is False and f"stuck for {silence:.0f}s; starting a new one" in state[2]
            assert clock.monotonic() - quiet_since == pytest.approx(silence, abs=3 * SIGNAL_POLL)
            await clock.advance(silence - 1)         # the new reader gets its own allowance
            assert runner.reader_restarts == 1
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await runner.close()
        # the stats readings came every stats_interval of the runner's clock (at the poll that reached it)
        for k, batch in enumerate(sink.batches, start=1):
            assert 5.0 * k - 1e-6 <= batch.t <= 5.0 * k + SIGNAL_POLL + 1e-6, (k, batch.t)
        assert len(sink.batches) >= int(clock.monotonic() // 5) - 1
        assert {r.point for r in sink.batches[0].readings} == {"fps", "infer_ms", "tracks", "violations"}

    asyncio.run(scenario())
