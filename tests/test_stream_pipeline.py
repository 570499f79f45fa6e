"""The stream pipeline end to end with a real AnomalyModel on the synthetic IR.

Videos are generated with white discs in known frames; the synthetic IR finds exactly those,
so the events must name exactly those frames.
"""

from __future__ import annotations

import json
import threading

import pytest

from anomaly_edge.stream import (
    EventsSink,
    ReconnectPolicy,
    SnapshotSink,
    StreamRunner,
    VideoSink,
    run,
)
from tests.stream_media import (
    MjpegServer,
    count_frames,
    damage_frames,
    make_frame,
    make_image_folder,
    make_video,
)

DEFECTS = {3, 17, 18, 31}


@pytest.fixture(scope="module")
def model_factory(synthetic_ir):
    from anomaly_edge.model import AnomalyModel

    def build(task: str = "segmentation"):
        return AnomalyModel(synthetic_ir, device="CPU", task=task)

    return build


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    return make_video(tmp_path_factory.mktemp("video") / "line.avi", 40, DEFECTS, fps=20)


def _events(path) -> list[dict]:
    text = path.read_text()
    assert text == "" or text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


@pytest.mark.parametrize("task", ["segmentation", "detection", "classification"])
def test_events_name_exactly_the_defect_frames_and_the_video_is_complete(
    task, model_factory, video, tmp_path
):
    runner = StreamRunner(model_factory(task), video, heatmap=task == "segmentation")
    runner.sinks += [
        VideoSink(tmp_path / "out.mp4", runner.source.fps),
        EventsSink(tmp_path / "events.jsonl"),
    ]
    results = list(runner)
    assert [r.index for r in results] == list(range(40))
    events = _events(tmp_path / "events.jsonl")
    assert [e["frame"] for e in events] == sorted(DEFECTS)
    assert all(e["label"] == "Anomaly" and e["score"] > 0.5 for e in events)
    assert events[0]["timestamp"] == pytest.approx(3 / 20)
    if task == "classification":
        assert all(not e["boxes"] for e in events)
    else:
        for event in events:  # the disc is at mid-height
            (box,) = event["boxes"]
            assert box["y1"] < 60 < box["y2"]
    assert count_frames(tmp_path / "out.mp4") == (40, (160, 120), pytest.approx(20))
    assert runner.summary.frames == 40 and runner.summary.anomalies == len(DEFECTS)
    assert runner.summary.stop_reason == "end"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["events.jsonl", "out.mp4"]


def test_all_frames_and_avi_output(model_factory, video, tmp_path):
    sinks = [EventsSink(tmp_path / "all.jsonl", all_frames=True), VideoSink(tmp_path / "o.avi")]
    for _ in run(model_factory(), video, sinks=sinks):
        pass
    events = _events(tmp_path / "all.jsonl")
    assert [e["frame"] for e in events] == list(range(40))
    assert [e["frame"] for e in events if e["anomalous"]] == sorted(DEFECTS)
    assert count_frames(tmp_path / "o.avi")[:2] == (40, (160, 120))


def test_image_folder_and_glob(model_factory, tmp_path):
    folder = make_image_folder(tmp_path / "shots", 8, defects={2, 6})
    for source in (folder, str(folder / "img_*.png")):
        events_path = tmp_path / "events.jsonl"
        StreamRunner(model_factory("detection"), source, sinks=[EventsSink(events_path)]).run()
        assert [(e["frame"], e["image"]) for e in _events(events_path)] == [
            (2, "img_2.png"),
            (6, "img_6.png"),
        ]


def test_damaged_frames_are_skipped_and_counted(model_factory, tmp_path):
    video = damage_frames(make_video(tmp_path / "d.avi", 20, defects={4, 12}), [7, 8])
    runner = StreamRunner(model_factory(), video)
    flagged = [r.index for r in runner if r.prediction.label]
    assert flagged == [4, 12]
    assert runner.summary.frames == 18 and runner.summary.corrupt == 2


def test_grey_video(model_factory, tmp_path):
    grey = make_video(tmp_path / "grey.avi", 10, defects={4}, grey=True)
    flagged = [r.index for r in run(model_factory(), grey) if r.prediction.label]
    assert flagged == [4]


def test_max_frames_and_callback(model_factory, video, tmp_path):
    seen = []
    runner = StreamRunner(
        model_factory(), video, max_frames=10, sinks=[VideoSink(tmp_path / "ten.mp4")]
    )
    summary = runner.run(lambda result: seen.append(result.index))
    assert seen == list(range(10))
    assert summary.frames == 10 and summary.stop_reason == "max_frames"
    assert count_frames(tmp_path / "ten.mp4")[0] == 10


def test_leaving_the_loop_early_closes_the_outputs(model_factory, tmp_path):
    long_video = make_video(tmp_path / "long.avi", 300)
    out = tmp_path / "out" / "partial.mp4"
    out.parent.mkdir()
    for result in run(model_factory(), long_video, sinks=[VideoSink(out)]):
        if result.index == 20:
            break
    frames, size, _ = count_frames(out)
    assert frames == 21 and size == (160, 120)
    assert [p.name for p in out.parent.iterdir()] == ["partial.mp4"]  # no temp file left


def test_stop_finishes_the_frames_in_flight(model_factory, tmp_path):
    long_video = make_video(tmp_path / "long.avi", 400)
    runner = StreamRunner(model_factory(), long_video, sinks=[VideoSink(tmp_path / "s.mp4")])
    delivered = []
    for result in runner:
        delivered.append(result.index)
        if result.index == 30:
            threading.Thread(target=runner.stop).start()
    assert runner.summary.stop_reason == "stopped"
    assert delivered == list(range(len(delivered))) and 31 <= len(delivered) < 400
    assert count_frames(tmp_path / "s.mp4")[0] == len(delivered) == runner.summary.frames


def test_snapshots_are_rate_limited_in_stream_time(model_factory, tmp_path):
    always = make_video(tmp_path / "always.avi", 40, defects=range(40), fps=20)  # 2 s
    sink = SnapshotSink(tmp_path / "snaps", interval=0.5, overlay=True)
    StreamRunner(model_factory(), always, sinks=[sink]).run()
    names = sorted(p.name for p in (tmp_path / "snaps").iterdir())
    assert names == [f"frame_{i:08d}.jpg" for i in (0, 10, 20, 30)]


def test_http_mjpeg_stream_cut_and_restarted_keeps_going(model_factory, tmp_path):
    phase = {"defects": False}
    server = MjpegServer(lambda n: make_frame(n, phase["defects"]), fps=30).start()
    events_path = tmp_path / "events.jsonl"
    runner = StreamRunner(
        model_factory(),
        server.url,
        sinks=[EventsSink(events_path)],
        reconnect=ReconnectPolicy(20, 0.1, 0.5),
        timeout=3,
    )
    try:
        restarted_at = None
        for result in runner:
            if result.index == 10 and restarted_at is None:
                server.stop()  # the camera goes away ...
                phase["defects"] = True  # ... and comes back showing defects
                server.start()
                restarted_at = result.index
            if runner.source.reconnects and len(_events(events_path)) >= 5:
                runner.stop()
        assert runner.source.reconnects >= 1
        events = _events(events_path)
        assert len(events) >= 5 and all(e["frame"] > restarted_at for e in events)
    finally:
        server.stop()


def test_segmentation_events_describe_the_mask(model_factory, video, tmp_path):
    """Before: segmentation lines said nothing about the mask."""
    events_path = tmp_path / "seg.jsonl"
    StreamRunner(
        model_factory("segmentation"), video, sinks=[EventsSink(events_path, all_frames=True)]
    ).run()
    events = _events(events_path)
    for event in events:
        assert {"frame", "timestamp", "score", "label", "boxes"} <= event.keys()  # kept
        mask = event["mask"]
        assert (mask["height"], mask["width"]) == (120, 160)
        assert mask["regions"] == len(event["boxes"])
        assert mask["anomalous_fraction"] == pytest.approx(
            mask["anomalous_pixels"] / (120 * 160), abs=1e-6
        )
        assert (mask["anomalous_pixels"] > 0) == event["anomalous"]
    detection_path = tmp_path / "det.jsonl"
    StreamRunner(
        model_factory("detection"), video, sinks=[EventsSink(detection_path, all_frames=True)]
    ).run()
    assert all("mask" not in e for e in _events(detection_path))  # no mask, no mask facts
