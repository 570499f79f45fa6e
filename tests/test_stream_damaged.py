"""Truncated and damaged video files: every lost frame is counted, every kept one numbered true."""

from __future__ import annotations

import json

from anomaly_edge.cli.common import ExitCode
from anomaly_edge.cli.main import main
from anomaly_edge.stream import StreamRunner, format_summary
from anomaly_edge.stream.sources import open_source
from tests.stream_media import make_video

FRAMES = 60
FPS = 20.0


def _truncate(video, keep: float):
    data = video.read_bytes()
    video.write_bytes(data[: int(len(data) * keep)])
    return video


def _read_all(source):
    frames = []
    while (frame := source.read()) is not None:
        frames.append(frame)
    source.close()
    return frames


def test_truncated_video_counts_the_missing_frames(tmp_path):
    """Before: the file just ended; 'undecodable frames: 0' and nothing else said."""
    video = _truncate(make_video(tmp_path / "t.avi", FRAMES, fps=FPS), 0.5)
    source = open_source(video)
    assert source.frame_count == FRAMES  # the header still announces every frame
    frames = _read_all(source)
    read = len(frames)
    assert 10 < read < FRAMES - 10
    assert [f.index for f in frames] == list(range(read))
    assert source.missing == FRAMES - read - source.corrupt > 0


def test_whole_video_has_nothing_missing(tmp_path):
    source = open_source(make_video(tmp_path / "w.avi", FRAMES, fps=FPS))
    assert len(_read_all(source)) == FRAMES
    assert source.missing == 0 and source.corrupt == 0


def test_truncated_video_in_summary_status_and_exit_code(synthetic_ir, tmp_path, capsys):
    video = _truncate(make_video(tmp_path / "t.avi", FRAMES, fps=FPS), 0.5)
    runner = StreamRunner(str(synthetic_ir), video)
    runner.run()
    summary = runner.summary
    assert summary.missing > 0 and summary.stop_reason == "truncated"
    assert summary.frames + summary.corrupt + summary.missing == FRAMES
    text = format_summary(summary)
    assert f"missing frames: {summary.missing}" in text and "ended early" in text

    events = tmp_path / "e.jsonl"
    code = main(["run", "--model", str(synthetic_ir), "--source", str(video), "--device", "CPU",
                 "--events", str(events), "--all-frames", "--quiet"])
    captured = capsys.readouterr()
    assert code == ExitCode.INPUT, captured
    assert "before its stated length" in captured.err
    assert f"missing frames: {summary.missing}" in captured.out
    lines = [json.loads(line) for line in events.read_text().splitlines()]
    assert len(lines) == summary.frames  # the results of the frames read are all there
