"""The live status line on stderr and the summary at the end of a run.

On a terminal the line redraws itself in place (``\\r``) a few times per second and becomes a
progress bar when the number of frames is known. When stderr is a file or a pipe (services,
CI logs), it prints a plain line every few seconds instead, so logs stay readable.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, TextIO

from anomaly_edge.stream.stats import StreamStats, StreamSummary

if TYPE_CHECKING:
    from anomaly_edge.stream.result import FrameResult

BAR_WIDTH = 24


class StatusLine:
    """A sink that reports progress: frames, fps, latency p50/p95, anomalies, drops.

    Args:
        stats: the runner's :class:`StreamStats` (``StreamRunner.stats``: every source).
        total: expected number of frames, for a progress bar (None: unknown or live).
        stream: where to write (stderr by default).
        interval: seconds between updates (default: 0.25 on a terminal, 5 otherwise).
    """

    def __init__(
        self,
        stats: StreamStats,
        total: int | None = None,
        *,
        stream: TextIO | None = None,
        interval: float | None = None,
    ) -> None:
        self.stats = stats
        self.total = total
        self.stream = stream or sys.stderr
        self.interactive = bool(getattr(self.stream, "isatty", lambda: False)())
        self.interval = interval if interval is not None else (0.25 if self.interactive else 5.0)
        self._last = -math.inf  # the first frame is shown at once
        self._width = 0

    def write(self, result: FrameResult) -> None:
        now = time.monotonic()
        if now - self._last >= self.interval:
            self._last = now
            self._show(self.render())

    def render(self) -> str:
        stats = self.stats
        if self.total:
            done = min(stats.frames / self.total, 1.0)
            filled = round(done * BAR_WIDTH)
            head = (
                f"{stats.frames}/{self.total} [{'#' * filled}{'.' * (BAR_WIDTH - filled)}] "
                f"{100 * done:3.0f}%"
            )
        else:
            head = f"frame {stats.frames}"
        parts = [head, f"{stats.recent_fps():.1f} fps"]
        latency = stats.recent_latency_ms()
        if latency is not None:
            parts.append(f"latency p50 {latency[0]:.0f} ms p95 {latency[1]:.0f} ms")
        parts.append(f"anomalies {stats.anomalies}")
        parts.append(f"dropped {stats.dropped}")
        if stats.corrupt:
            parts.append(f"corrupt {stats.corrupt}")
        if stats.missing:
            parts.append(f"missing {stats.missing}")
        if stats.reconnects:
            parts.append(f"reconnects {stats.reconnects}")
        if stats.drift_warnings:
            parts.append("SCORE DRIFT: run anomaly-edge calibrate")
        return " | ".join(parts)

    def _show(self, line: str) -> None:
        if self.interactive:
            # Pad with spaces so a shorter line fully covers the previous one.
            self.stream.write("\r" + line.ljust(self._width))
            self._width = len(line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.stats.frames:
            self._show(self.render())  # the final state
            if self.interactive:
                self.stream.write("\n")  # and leave the line alone
                self.stream.flush()


def format_summary(summary: StreamSummary, outputs: Sequence[str] = ()) -> str:
    """The few lines printed when a run ends."""
    reasons = {
        "end": "end of stream",
        "truncated": "the file ended early (truncated or damaged)",
        "max_frames": "--max-frames reached",
        "stopped": "stopped",
        "source_lost": "source lost",
        "error": "error",
        "mixed": "each source as it says",
    }
    lines = [
        f"processed {summary.frames} frames in {summary.seconds:.1f} s "
        f"({summary.fps:.1f} fps), {reasons.get(summary.stop_reason, summary.stop_reason)}",
        f"anomalous frames: {summary.anomalies}",
    ]
    if summary.latency_p50_ms is not None:
        lines.append(
            f"latency: p50 {summary.latency_p50_ms:.1f} ms, p95 {summary.latency_p95_ms:.1f} ms"
        )
    missing = f", missing frames: {summary.missing}" if summary.missing else ""
    lines.append(
        f"dropped frames: {summary.dropped}, undecodable frames: {summary.corrupt}"
        f"{missing}, reconnects: {summary.reconnects}"
    )
    if summary.drift_warnings:
        lines.append(
            f"score drift: warned ({summary.drift_frames} frames out of the normal "
            "range); recalibrate with `anomaly-edge calibrate` if the parts are fine"
        )
    lines.extend(outputs)
    return "\n".join(lines)
