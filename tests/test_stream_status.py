"""The status line, the summary and the constant-memory latency statistics."""

from __future__ import annotations

import io
import random

import pytest

from anomaly_edge.stream.stats import LatencyHistogram, StreamStats
from anomaly_edge.stream.status import StatusLine, format_summary


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _stats(frames: int, anomalies: int = 0) -> StreamStats:
    stats = StreamStats()
    for index in range(frames):
        stats.record(0.010 + 0.001 * (index % 10), index < anomalies)
    return stats


def test_progress_bar_when_the_length_is_known():
    line = StatusLine(_stats(50, anomalies=3), total=200, stream=io.StringIO()).render()
    assert line.startswith("50/200 [######..................]  25%")
    assert "fps" in line and "latency p50 " in line and "anomalies 3" in line
    assert "dropped 0" in line


def test_live_streams_count_frames_instead():
    stats = _stats(7)
    stats.dropped, stats.reconnects = 4, 1
    line = StatusLine(stats, stream=io.StringIO()).render()
    assert line.startswith("frame 7 |") and "dropped 4" in line and "reconnects 1" in line


def test_terminal_redraws_in_place_and_logs_get_lines():
    terminal = _Terminal()
    status = StatusLine(_stats(3), total=3, stream=terminal, interval=0)
    status.write(None)
    status.close()
    assert terminal.getvalue().startswith("\r3/3") and terminal.getvalue().endswith("\n")
    log = io.StringIO()
    status = StatusLine(_stats(3), total=3, stream=log, interval=3600)
    status.write(None)
    status.write(None)  # within the interval: nothing
    status.close()  # the final state, always
    assert log.getvalue().count("\n") == 2 and "\r" not in log.getvalue()


def test_summary_says_what_happened():
    summary = _stats(40, anomalies=2).summary()
    summary.stop_reason = "max_frames"
    text = format_summary(summary, ["video: out.mp4 (40 frames, 25 fps)"])
    assert "processed 40 frames" in text and "--max-frames reached" in text
    assert "anomalous frames: 2" in text and "video: out.mp4" in text


def test_latency_percentiles_within_five_percent_in_constant_memory():
    rng = random.Random(0)
    values = [rng.lognormvariate(-4, 0.7) for _ in range(20000)]
    histogram = LatencyHistogram()
    for value in values:
        histogram.add(value)
    ordered = sorted(values)
    for q in (50, 95, 99):
        exact = ordered[int(len(ordered) * q / 100) - 1]
        assert histogram.percentile(q) == pytest.approx(exact, rel=0.05)
    assert len(histogram._counts) == 400  # the same size after 20,000 values as after one
    assert LatencyHistogram().percentile(50) is None
