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
    code = main(
        [
            "run",
            "--model",
            str(synthetic_ir),
            "--source",
            str(video),
            "--device",
            "CPU",
            "--events",
            str(events),
            "--all-frames",
            "--quiet",
        ]
    )
    captured = capsys.readouterr()
    assert code == ExitCode.INPUT, captured
    assert "before its stated length" in captured.err
    assert f"missing frames: {summary.missing}" in captured.out
    lines = [json.loads(line) for line in events.read_text().splitlines()]
    assert len(lines) == summary.frames  # the results of the frames read are all there


def _wreck_chunks(video, first: int, stop: int):
    """Zero every byte of frames first..stop-1 of an MJPEG AVI, chunk headers included (the
    demuxer then skips them silently, where damage_frames() leaves failing reads)."""
    data = bytearray(video.read_bytes())
    starts = [i for i in range(len(data) - 1) if data[i] == 0xFF and data[i + 1] == 0xD8]
    low, high = starts[first] - 8, starts[stop] - 8  # 8: the chunk header before each JPEG
    data[low:high] = bytes(high - low)
    video.write_bytes(bytes(data))
    return video


def test_frames_after_a_damaged_stretch_keep_their_numbers_and_times(tmp_path):
    """Before: frames 30-39 vanished without a count and frame 40 came out as number 30."""
    defects = range(FRAMES)  # a disc in every frame, at a place that depends on the index
    intact = {
        f.index: f
        for f in _read_all(
            open_source(make_video(tmp_path / "intact.avi", FRAMES, defects, fps=FPS))
        )
    }
    damaged = _wreck_chunks(make_video(tmp_path / "d.avi", FRAMES, defects, fps=FPS), 30, 40)
    source = open_source(damaged)
    frames = _read_all(source)
    assert [f.index for f in frames] == [i for i in range(FRAMES) if not 30 <= i < 40]
    for frame in frames:
        assert (frame.image == intact[frame.index].image).all(), frame.index
        assert frame.timestamp == intact[frame.index].timestamp == frame.index / FPS
    assert source.corrupt == 10 and source.missing == 0


def test_truncated_mjpeg_avi_loses_no_count(tmp_path):
    """The index sits at the end of an AVI, so a truncated one is read through OpenCV."""
    video = _truncate(make_video(tmp_path / "t.avi", FRAMES, range(FRAMES), fps=FPS), 0.7)
    source = open_source(video)
    frames = _read_all(source)
    assert len(frames) + source.corrupt + source.missing == FRAMES
    assert source.missing > 0


def test_only_indexed_mjpeg_avi_files_are_read_by_index(tmp_path):
    from anomaly_edge.stream.avi_index import mjpeg_frame_chunks

    avi = make_video(tmp_path / "v.avi", 5, fps=FPS)
    chunks = mjpeg_frame_chunks(avi)
    data = avi.read_bytes()
    assert len(chunks) == 5
    assert all(
        data[o : o + 2] == b"\xff\xd8" and data[o + s - 2 : o + s] == b"\xff\xd9" for o, s in chunks
    )  # each chunk is one whole JPEG
    assert mjpeg_frame_chunks(make_video(tmp_path / "v.mp4", 5, fps=FPS)) is None
    (tmp_path / "junk.avi").write_bytes(b"RIFF\x10\x00\x00\x00AVI LIST")
    assert mjpeg_frame_chunks(tmp_path / "junk.avi") is None
    assert mjpeg_frame_chunks(_truncate(avi, 0.8)) is None  # the index was at the end
