"""Several cameras through the one stream engine: settings, outputs, events, faults per camera."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from anomaly_edge.model import AnomalyModel
from anomaly_edge.stream import Camera, ReconnectPolicy, StreamRunner, run_many
from anomaly_edge.stream.config import ConfigError, cameras_from_sources, load_config
from tests.conftest import REPO
from tests.stream_media import MjpegServer, count_frames, make_frame, make_video

DEFECTS = {3, 11, 12, 30}


@pytest.fixture(scope="module")
def model(synthetic_ir):
    return AnomalyModel(synthetic_ir, device="CPU", task="detection")


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("multi_videos")
    return [make_video(folder / f"line{i}.avi", 40, DEFECTS, fps=20) for i in range(3)]


def _events(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_every_camera_gets_every_frame_its_outputs_and_named_events(model, videos, tmp_path):
    cameras = [
        Camera(
            f"line{i}",
            str(video),
            output=tmp_path / f"line{i}.mp4",
            snapshots=tmp_path / f"snaps{i}",
            snapshot_interval=0,
        )
        for i, video in enumerate(videos)
    ]
    summary = run_many(model, cameras, events=tmp_path / "events.jsonl")
    assert summary.errors == {}
    assert {n: s.frames for n, s in summary.sources.items()} == {c.name: 40 for c in cameras}
    events = _events(tmp_path / "events.jsonl")
    for camera in cameras:
        mine = [e["frame"] for e in events if e["source"] == camera.name]
        assert mine == sorted(DEFECTS)  # in frame order within a camera
        assert count_frames(camera.output)[0] == 40
        assert len(list(camera.snapshots.glob("*.jpg"))) == len(DEFECTS)
    # The fields of the single-source JSON Lines, plus the camera.
    assert set(events[0]) == {
        "source",
        "frame",
        "timestamp",
        "time",
        "score",
        "label",
        "anomalous",
        "raw_score",
        "boxes",
    }


def test_each_camera_keeps_its_own_thresholds_and_task(model, videos, tmp_path):
    cameras = [
        Camera("normal", str(videos[0])),
        Camera("blind", str(videos[1]), image_threshold=1e9, pixel_threshold=1e9),
        Camera("classify", str(videos[2]), task="classification"),
    ]
    seen: dict[str, list] = {c.name: [] for c in cameras}
    run_many(model, cameras, on_result=lambda r: seen[r.source].append(r.prediction))
    assert sum(p.label for p in seen["normal"]) == len(DEFECTS)
    assert not any(p.label for p in seen["blind"])
    assert all(p.boxes for p in seen["normal"] if p.label)
    assert all(p.task.value == "classification" and not p.boxes for p in seen["classify"])
    assert sum(p.label for p in seen["classify"]) == len(DEFECTS)


def test_thresholds_change_during_the_run_and_are_logged(model, tmp_path):
    video = make_video(tmp_path / "all_defects.avi", 400, range(400), fps=20)
    runner = StreamRunner(model, [Camera("a", str(video))], events=tmp_path / "ev.jsonl")
    labels: list[bool] = []
    switched_at: list[int] = []

    def on_result(result):
        labels.append(bool(result.prediction.label))
        if result.index == 100:
            runner.set_thresholds("a", image_threshold=1e9, by="test")
            switched_at.append(runner.lane("a").submitted)

    runner.on_result = on_result
    runner.run()
    assert all(labels[:100])
    # Frames submitted after the change (+1: the read may race with one submission).
    assert not any(labels[switched_at[0] + 1 :])
    change = [e for e in _events(tmp_path / "ev.jsonl") if e.get("event") == "thresholds_changed"]
    assert change == [
        {
            "source": "a",
            "event": "thresholds_changed",
            "time": change[0]["time"],
            "by": "test",
            "image_threshold": {"old": model.image_threshold, "new": 1e9},
        }
    ]
    with pytest.raises(Exception, match="finite"):
        runner.set_thresholds("a", image_threshold=float("nan"))
    with pytest.raises(Exception, match="no camera named 'zz'"):
        runner.set_thresholds("zz", image_threshold=1.0)


class _FailingSink:
    def __init__(self, after: int) -> None:
        self.after = after
        self.seen = 0

    def write(self, result) -> None:
        self.seen += 1
        if self.seen > self.after:
            raise OSError("disk full (simulated)")

    def close(self) -> None:
        pass


def test_a_failing_camera_stops_alone(model, videos):
    sinks = {"bad": [_FailingSink(after=5)]}
    summary = run_many(
        model,
        [Camera("bad", str(videos[0])), Camera("good", str(videos[1]))],
        sinks=lambda camera: sinks.get(camera.name, []),
    )
    assert "disk full" in summary.errors["bad"]
    assert summary.sources["bad"].stop_reason == "error"
    assert summary.sources["good"].frames == 40
    assert summary.sources["good"].stop_reason == "end"


def test_max_frames_per_camera(model, videos):
    summary = run_many(
        model, [Camera("a", str(videos[0]), max_frames=7), Camera("b", str(videos[1]))]
    )
    assert summary.sources["a"].frames == 7
    assert summary.sources["a"].stop_reason == "max_frames"
    assert summary.sources["b"].frames == 40


def _wait(condition, limit_s: float = 30.0, what: str = "") -> None:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.slow
def test_killing_one_camera_server_leaves_the_others_running_and_it_reconnects(model):
    servers = [MjpegServer(lambda n: make_frame(n, n % 10 == 0), fps=20).start() for _ in range(4)]
    try:
        runner = StreamRunner(
            model,
            [Camera(f"cam{i}", s.url) for i, s in enumerate(servers)],
            reconnect=ReconnectPolicy(attempts=50, delay=0.2, max_delay=0.5),
            timeout=5,
        )
        runner.start()
        lanes = runner.lanes
        _wait(lambda: all(lane.stats.frames >= 10 for lane in lanes), what="first frames")
        servers[0].stop()
        time.sleep(1.0)
        before = [lane.stats.frames for lane in lanes]
        time.sleep(1.5)
        after = [lane.stats.frames for lane in lanes]
        assert after[0] == before[0], "the stopped camera still delivers frames"
        assert all(a > b + 5 for a, b in zip(after[1:], before[1:], strict=True)), (before, after)
        assert all(lane.state == "running" for lane in lanes)
        servers[0].start()  # same port
        _wait(
            lambda: lanes[0].reconnects >= 1 and lanes[0].stats.frames > after[0] + 5,
            what="the camera to come back",
        )
        runner.stop()
        summary = runner.join()
    finally:
        for server in servers:
            server.stop()
    assert summary.errors == {}
    assert summary.sources["cam0"].reconnects >= 1
    assert all(summary.sources[f"cam{i}"].reconnects == 0 for i in (1, 2, 3))


def test_a_live_camera_down_at_the_start_is_waited_for(model):
    server = MjpegServer(lambda n: make_frame(n, False), fps=20)
    port_holder = server.start()
    url = port_holder.url
    server.stop()
    runner = StreamRunner(
        model,
        [Camera("late", url)],
        reconnect=ReconnectPolicy(attempts=40, delay=0.1, max_delay=0.3),
        timeout=3,
        wait_for_live=True,  # the default with several sources; one fails at once
    )
    runner.start()
    try:
        time.sleep(0.5)
        assert runner.lanes[0].stats.frames == 0 and runner.lanes[0].state == "running"
        server.start()
        _wait(lambda: runner.lanes[0].stats.frames >= 5, what="the late camera")
    finally:
        runner.stop()
        summary = runner.join()
        server.stop()
    assert summary.errors == {}


def test_a_missing_file_is_an_error_at_once(model, videos, tmp_path):
    with pytest.raises(Exception, match="not found"):
        StreamRunner(
            model,
            [
                Camera("a", str(videos[0]), output=tmp_path / "a.mp4"),
                Camera("b", str(tmp_path / "missing.mp4")),
            ],
        )
    assert not (tmp_path / "a.mp4").exists()


def test_the_multi_camera_modules_do_not_import_torch():
    script = (
        "import sys; import anomaly_edge.cli.run_cameras, anomaly_edge.stream.engine, "
        "anomaly_edge.stream.web, anomaly_edge.stream.mqtt, anomaly_edge.stream.metrics, "
        "anomaly_edge.stream.webhook; "
        "print([m for m in sys.modules if m.split('.')[0] == 'torch'])"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=REPO
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


# ---- camera lists ----------------------------------------------------------------------------


def test_sources_from_the_command_line_get_names():
    cameras = cameras_from_sources(
        ["line1=rtsp://x/s?a=b", "rtsp://y/s?a=b", "0"], task="detection"
    )
    assert [(c.name, c.source) for c in cameras] == [
        ("line1", "rtsp://x/s?a=b"),
        ("cam2", "rtsp://y/s?a=b"),
        ("cam3", "0"),
    ]
    assert all(c.task == "detection" for c in cameras)
    with pytest.raises(ConfigError, match="two cameras are named 'a'"):
        cameras_from_sources(["a=x.mp4", "a=y.mp4"])


def test_config_file(tmp_path):
    config = tmp_path / "cameras.toml"
    config.write_text("""
[defaults]
task = "detection"
snapshot_interval = 2.0

[[camera]]
name = "line1"
source = "videos/line1.mp4"
image_threshold = 0.7
output = "out/line1.mp4"

[[camera]]
name = "line2"
source = "rtsp://10.0.0.2/s"
task = "segmentation"
raw_thresholds = true
image_threshold = 14.5
""")
    first, second = load_config(config, min_area=3)
    assert first.source == str(tmp_path / "videos" / "line1.mp4")
    assert first.output == tmp_path / "out" / "line1.mp4"
    assert (first.task, first.image_threshold, first.snapshot_interval, first.min_area) == (
        "detection",
        0.7,
        2.0,
        3,
    )
    assert not first.raw_thresholds  # the command line's 0-1 score units
    assert (second.source, second.task, second.image_threshold, second.raw_thresholds) == (
        "rtsp://10.0.0.2/s",
        "segmentation",
        14.5,
        True,
    )


def test_thresholds_in_score_units_become_raw_on_the_model(model, videos):
    md = model.metadata
    runner = StreamRunner(
        model,
        [
            Camera("trained", str(videos[0]), image_threshold=0.5, raw_thresholds=False),
            Camera("strict", str(videos[1]), image_threshold=0.7, raw_thresholds=False),
            Camera("raw", str(videos[2]), image_threshold=14.5),
        ],
    )
    try:
        settings = {lane.name: lane.settings.image_threshold for lane in runner.lanes}
    finally:
        runner.run()
    assert settings["trained"] == pytest.approx(md.image_threshold)
    assert settings["strict"] == pytest.approx(md.image_threshold + 0.2 * md.image_scale)
    assert settings["raw"] == 14.5


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[[camera]]\nname = 'a'\n", "needs both 'name' and 'source'"),
        ("[[camera]]\nname = 'a'\nsource = 'x'\nthreshold = 3\n", "unknown key"),
        ("[[camera]]\nname = 'a'\nsource = 'x'\nimage_threshold = 'high'\n", "finite number"),
        ("[[camera]]\nname = 'a'\nsource = 'x'\nimage_threshold = 14.5\n", "outside 0-1"),
        ("[[camera]]\nname = 'a b'\nsource = 'x'\n", "camera name"),
        ("[[camera]]\nname = 'a'\nsource = 'x'\ntask = 'detect'\n", "task 'detect'"),
        ("[cameras]\n", "unknown section"),
        ("", "no camera"),
        ("[[camera]\n", "not valid TOML"),
        ("[[camera]]\nname='a'\nsource='x'\n[[camera]]\nname='a'\nsource='y'\n", "two cameras"),
    ],
)
def test_bad_config_files_say_what_is_wrong(tmp_path, text, message):
    config = tmp_path / "cameras.toml"
    config.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(config)


EXIT_WITHOUT_JOIN = """
import sys
from anomaly_edge.model import AnomalyModel
from anomaly_edge.stream import Camera, StreamRunner
model = AnomalyModel(sys.argv[1], device="CPU", task="detection")
from pathlib import Path
cameras = [Camera("a", sys.argv[2], output=Path(sys.argv[3])), Camera("b", sys.argv[2])]
StreamRunner(model, cameras, events=sys.argv[4]).start()
# the program ends here, without join(): the exit hook must stop and close everything
"""


def test_exit_without_join_closes_every_camera_cleanly(synthetic_ir, videos, tmp_path):
    out, events = tmp_path / "a.mp4", tmp_path / "events.jsonl"
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            EXIT_WITHOUT_JOIN,
            str(synthetic_ir),
            str(videos[0]),
            str(out),
            str(events),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert count_frames(out)[0] > 0  # a complete, playable file
    for line in events.read_text().splitlines():
        json.loads(line)  # every line whole
