"""Counters and latency percentiles of a running stream, in constant memory.

A run may last for weeks, so nothing here grows with the number of frames: latencies go into
a fixed logarithmic histogram (5 % resolution) for the whole run, and a short window of the
most recent ones feeds the live status line.
"""

from __future__ import annotations

import collections
import math
import time
from dataclasses import dataclass, field
from typing import Any

_MIN_LATENCY_S = 1e-5
_BIN_RATIO = 1.05  # each histogram bin is 5 % wider than the previous one
_BINS = 400  # 1e-5 s * 1.05**400 ≈ 3e3 s: more than any sane latency


class LatencyHistogram:
    """Percentiles of many latencies without storing them."""

    def __init__(self) -> None:
        self._counts = [0] * _BINS
        self.count = 0

    def add(self, seconds: float) -> None:
        value = max(seconds, _MIN_LATENCY_S)
        index = min(int(math.log(value / _MIN_LATENCY_S, _BIN_RATIO)), _BINS - 1)
        self._counts[index] += 1
        self.count += 1

    def percentile(self, q: float) -> float | None:
        """The ``q``-th percentile (0-100) in seconds, None when empty."""
        if not self.count:
            return None
        rank = max(1, math.ceil(self.count * q / 100))
        seen = 0
        for index, n in enumerate(self._counts):
            seen += n
            if seen >= rank:
                # The bin's geometric middle.
                return _MIN_LATENCY_S * math.pow(_BIN_RATIO, index + 0.5)
        return None  # unreachable


@dataclass
class StreamSummary:
    """How a run went: the totals over every source, and each source's own summary.

    What :meth:`StreamRunner.run` returns and the CLI prints. With one source the totals are
    that source's. ``errors`` says why sources stopped early (lost input, failing sink);
    ``losses`` what the outputs could not write while the sources went on (a full disk,
    refused events), one line each: empty when every output is complete.
    """

    frames: int
    anomalies: int
    dropped: int
    corrupt: int
    reconnects: int
    seconds: float
    fps: float
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    stop_reason: str  # "end", "truncated", "max_frames", "stopped", "source_lost" or "error"
    missing: int = 0  # frames a video file announced but ended before (truncated)
    drift_warnings: int = 0  # score drift warnings (at most one per run)
    drift_frames: int = 0  # frames seen while the scores were out of the normal range
    sources: dict[str, StreamSummary] = field(default_factory=dict)  # by source name
    errors: dict[str, str] = field(default_factory=dict)  # source name -> why it stopped
    losses: list[str] = field(default_factory=list)  # what the outputs lost

    def to_dict(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        out["sources"] = {name: s.to_dict() for name, s in self.sources.items()}
        out["errors"] = dict(self.errors)
        out["losses"] = list(self.losses)
        return out


def combined_summary(
    totals: StreamStats, sources: dict[str, StreamSummary], errors: dict[str, str]
) -> StreamSummary:
    """The run's summary: ``totals`` (every source's frames together) with the sources' own
    summaries; the stop reason is the sources' when they agree, else ``"mixed"``."""
    reasons = {s.stop_reason for s in sources.values()}
    totals.stop_reason = reasons.pop() if len(reasons) == 1 else "mixed"
    summary = totals.summary()
    summary.sources = dict(sources)
    summary.errors = dict(errors)
    return summary


class StreamStats:
    """Live counters of one run, updated by the engine as results come out."""

    RECENT = 120  # frames in the window of the status line

    def __init__(self) -> None:
        self.frames = 0
        self.anomalies = 0
        self.dropped = 0
        self.corrupt = 0
        self.missing = 0
        self.reconnects = 0
        self.stop_reason = "end"
        self.drift_warnings = 0
        self.drift_frames = 0
        self.started = time.monotonic()
        self._latencies = LatencyHistogram()
        self._recent_latency: collections.deque[float] = collections.deque(maxlen=self.RECENT)
        self._recent_done: collections.deque[float] = collections.deque(maxlen=self.RECENT)

    def record(self, latency_s: float, anomalous: bool) -> None:
        now = time.monotonic()
        self.frames += 1
        self.anomalies += int(anomalous)
        self._latencies.add(latency_s)
        self._recent_latency.append(latency_s)
        self._recent_done.append(now)

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def recent_fps(self) -> float:
        """Frames per second over the last few frames (the overall rate before that)."""
        if len(self._recent_done) >= 2:
            span = self._recent_done[-1] - self._recent_done[0]
            if span > 0:
                return (len(self._recent_done) - 1) / span
        return self.frames / self.elapsed if self.elapsed > 0 else 0.0

    def recent_latency_ms(self) -> tuple[float, float] | None:
        """(p50, p95) of the recent latencies in milliseconds."""
        if not self._recent_latency:
            return None
        ordered = sorted(self._recent_latency)
        return (
            1000 * ordered[len(ordered) // 2],
            1000 * ordered[min(len(ordered) - 1, math.ceil(0.95 * len(ordered)) - 1)],
        )

    def summary(self) -> StreamSummary:
        seconds = self.elapsed
        p50 = self._latencies.percentile(50)
        p95 = self._latencies.percentile(95)
        return StreamSummary(
            frames=self.frames,
            anomalies=self.anomalies,
            dropped=self.dropped,
            corrupt=self.corrupt,
            reconnects=self.reconnects,
            seconds=round(seconds, 3),
            fps=round(self.frames / seconds, 2) if seconds > 0 else 0.0,
            latency_p50_ms=None if p50 is None else round(1000 * p50, 2),
            latency_p95_ms=None if p95 is None else round(1000 * p95, 2),
            stop_reason=self.stop_reason,
            missing=self.missing,
            drift_warnings=self.drift_warnings,
            drift_frames=self.drift_frames,
        )
