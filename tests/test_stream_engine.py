"""One stream engine for one source or many: the same event record, drift monitor and threshold
unit whatever the number of cameras (`anomaly-edge run` and the Python API)."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from anomaly_edge.cli.common import ExitCode
from anomaly_edge.cli.main import main
from anomaly_edge.stream import Camera, StreamRunner, run
from tests.stream_media import make_image_folder, make_video

FRAMES = 130  # the drift monitor needs 100 flagged frames (FLAGGED_WINDOW) and 25 more


@pytest.fixture(scope="module")
def bright_folder(tmp_path_factory):
    """Frames far from mid-grey: the synthetic IR flags every one, as a bad codec would."""
    folder = make_image_folder(tmp_path_factory.mktemp("engine_bright"), FRAMES)
    for path in sorted(folder.iterdir()):
        cv2.imwrite(str(path), np.full((120, 160, 3), 200, np.uint8))
    return folder


def _lines(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _run_cli(synthetic_ir, sources: list[str], events, *extra: str) -> int:
    args = ["run", str(synthetic_ir), "--device", "CPU", "--quiet", "--events", str(events)]
    for source in sources:
        args += ["--source", source]
    return main([*args, "--all-frames", "--task", "detection", *extra])


def test_run_with_one_and_three_sources_writes_the_same_events_and_watches_drift(
    synthetic_ir, bright_folder, tmp_path, capsys
):
    one, three = tmp_path / "one.jsonl", tmp_path / "three.jsonl"
    # Thresholds in the 0-1 score units in both runs (before, several cameras refused them).
    assert _run_cli(synthetic_ir, [str(bright_folder)], one, "--image-threshold", "0.5") == 0
    single_out = capsys.readouterr()
    names = ["a", "b", "c"]
    sources = [f"{name}={bright_folder}" for name in names]
    assert _run_cli(synthetic_ir, sources, three, "--image-threshold", "0.5") == 0
    many_out = capsys.readouterr()

    events_one, events_three = _lines(one), _lines(three)
    frames_one = [e for e in events_one if "event" not in e]
    frames_three = [e for e in events_three if "event" not in e]
    assert len(frames_one) == FRAMES and len(frames_three) == 3 * FRAMES
    keys = {frozenset(e) for e in frames_one}
    assert len(keys) == 1 and {frozenset(e) for e in frames_three} == keys  # the same record
    assert "source" in next(iter(keys))  # a single camera's events name their source too
    assert {e["source"] for e in frames_one} == {"cam1"}
    assert {e["source"] for e in frames_three} == set(names)
    for name in names:  # in frame order within each source
        mine = [e["frame"] for e in frames_three if e["source"] == name]
        assert mine == list(range(FRAMES))

    # The drift monitor is on in both: one warning per source, as an event of the same shape.
    drift_one = [e for e in events_one if e.get("event") == "drift"]
    drift_three = [e for e in events_three if e.get("event") == "drift"]
    assert [e["source"] for e in drift_one] == ["cam1"]
    assert sorted(e["source"] for e in drift_three) == names
    assert {frozenset(e) for e in drift_three} == {frozenset(drift_one[0])}
    assert single_out.out.count("score drift: warned") == 1
    assert many_out.out.count("score drift: warned") == 3
    for out in (single_out.out, many_out.out):
        assert "all sources:" in out


def test_the_python_api_gives_one_source_and_several_the_same_results(synthetic_ir, tmp_path):
    from anomaly_edge.model import AnomalyModel

    video = make_video(tmp_path / "v.avi", 12, {3, 7})
    model = AnomalyModel(synthetic_ir, device="CPU", task="detection")
    single = [(r.source, r.index, bool(r.prediction.label)) for r in run(model, video)]
    assert single == [("cam1", i, i in {3, 7}) for i in range(12)]
    runner = StreamRunner(model, [Camera("x", str(video)), Camera("y", str(video))])
    many = [(r.source, r.index, bool(r.prediction.label)) for r in runner]
    for name in ("x", "y"):
        assert [(i, flag) for s, i, flag in many if s == name] == [
            (i, flag) for _, i, flag in single
        ]
    assert runner.summary is not None
    assert runner.summary.frames == 24 and set(runner.summary.sources) == {"x", "y"}
    assert all(lane.drift is not None for lane in runner.lanes)  # per source, by default
    with pytest.raises(Exception, match="needs one source"):
        _ = runner.source


def test_show_refuses_several_cameras_but_not_one(synthetic_ir, tmp_path, capsys, monkeypatch):
    video = make_video(tmp_path / "v.avi", 4)
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    base = ["run", str(synthetic_ir), "--device", "CPU", "--show"]
    assert main([*base, "--source", str(video), "--source", str(video)]) == ExitCode.USAGE
    assert "use --web" in capsys.readouterr().err
    # One camera gets as far as the window itself (here: no display).
    assert main([*base, "--source", str(video)]) == ExitCode.USAGE
    assert "cannot open a window" in capsys.readouterr().err


def test_show_draws_every_frame_from_the_main_thread(synthetic_ir, tmp_path, monkeypatch):
    import threading

    import anomaly_edge.stream.sinks as sinks

    shown: list[tuple[str, tuple[int, ...]]] = []
    monkeypatch.setattr(sinks, "gui_unavailable_reason", lambda: None)
    monkeypatch.setattr(sinks.cv2, "namedWindow", lambda *a: None)
    monkeypatch.setattr(sinks.cv2, "destroyWindow", lambda *a: None)
    monkeypatch.setattr(sinks.cv2, "waitKey", lambda *a: -1)
    monkeypatch.setattr(
        sinks.cv2,
        "imshow",
        lambda title, image: shown.append((threading.current_thread().name, image.shape)),
    )
    video = make_video(tmp_path / "v.avi", 9, {4})
    events = tmp_path / "e.jsonl"
    args = ["run", str(synthetic_ir), "--device", "CPU", "--quiet", "--show"]
    code = main([*args, "--source", str(video), "--events", str(events)])
    assert code == ExitCode.OK
    assert shown == [(threading.main_thread().name, (120, 160, 3))] * 9
    assert [(e["source"], e["frame"]) for e in _lines(events)] == [("cam1", 4)]


class _FailingSink:
    def write(self, result) -> None:
        if result.index == 3:
            raise OSError("disk full (simulated)")

    def close(self) -> None:
        pass


def test_when_every_source_fails_the_error_is_raised_after_the_summary(synthetic_ir, tmp_path):
    from anomaly_edge.model import AnomalyModel

    video = make_video(tmp_path / "v.avi", 10)
    model = AnomalyModel(synthetic_ir, device="CPU", task="detection")
    for consume in (lambda r: r.run(), lambda r: list(r)):
        runner = StreamRunner(model, video, sinks=[_FailingSink()])
        with pytest.raises(OSError, match="disk full"):
            consume(runner)
        assert runner.summary is not None
        assert "disk full" in runner.summary.errors["cam1"]
        assert runner.summary.stop_reason == "error" and runner.summary.frames == 4
