"""Notice when a stream's normal frames stop scoring like the normal images the model knows.

A new camera setting, a dirty lens, other lighting or a lossy codec move the score of every
frame; soon each normal part is flagged (or, the other way, real defects score too low). The
:class:`DriftMonitor` watches the rolling median of normal-looking frames' raw scores against
the normal range recorded in the IR (normal validation images at training, or the frames
`anomaly-edge calibrate` saw), and warns once when the median stays outside it by a clear
margin for a sustained stretch of frames. It also counts a long stretch where nearly every
frame is flagged as drift (then no frame looks normal): defects pass the camera one at a
time, a changed camera hits every frame.

Limits (a "clear margin"): above ``high + max(margin x (high - low), (threshold - high) / 2)``,
i.e. normal frames have climbed at least half way from the normal range to the threshold, or
below ``low - margin x (high - low)``.

IRs exported before the normal range was recorded: the range is derived from the validation
minimum (``image_min``) and the image threshold, so only a median far below the normal level,
or a window of mostly flagged frames, can be noticed.
"""

from __future__ import annotations

import collections
import statistics
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from anomaly_edge.metadata import ModelMetadata

WINDOW = 25  # frames in the rolling median
SUSTAIN = 25  # consecutive frames out of range before the warning
MARGIN = 0.5  # share of the normal range's width beyond it that counts as out of range
FLAGGED_WINDOW = 100  # frames in which ...
FLAGGED_SHARE = 0.9  # ... a larger share of flagged frames is drift too


def calibrate_command(model: str = "MODEL.xml", source: str = "SOURCE") -> str:
    """The command the warning suggests, filled in where the caller knows the names."""
    import shlex

    stem = model[:-4] if model.endswith(".xml") else model
    return shlex.join(
        [
            "anomaly-edge",
            "calibrate",
            "--model",
            model,
            "--source",
            source,
            "--seconds",
            "10",
            "--out",
            f"{stem}_calibrated.xml",
        ]
    )


@dataclass(frozen=True)
class DriftWarning:
    """The one warning a run gives: what was seen and what to do."""

    median: float | None  # rolling median of normal-looking frames (None: none left)
    flagged_share: float  # share of flagged frames among the last FLAGGED_WINDOW
    low: float  # the normal range and the limits it was compared with
    high: float
    lower_limit: float
    upper_limit: float
    frames: int  # consecutive frames out of range when the warning came
    direction: str  # "up" or "down"
    range_source: str  # "recorded" (training or calibration) or "derived from thresholds"
    command: str = calibrate_command()

    @property
    def message(self) -> str:
        if self.direction == "up":
            seen = (
                f"{100 * self.flagged_share:.0f}% of the last {FLAGGED_WINDOW} frames are flagged"
                if self.median is None or self.median <= self.upper_limit
                else f"normal-looking frames score a median {self.median:.4g}"
            )
            cause = (
                "the camera's image changed (lossy video compression, focus, exposure, "
                "lighting) rather than every part being defective"
            )
        else:
            seen = f"normal-looking frames score a median {self.median:.4g}"
            cause = (
                "the image lost detail (blur, dim light, a covered lens) or the parts "
                "changed; defects may go unnoticed"
            )
        return (
            f"score drift: {seen}, for {self.frames} frames, outside the normal range "
            f"{self.low:.4g}-{self.high:.4g} ({self.range_source}). Likely cause: {cause}. "
            f"If the parts are fine, recalibrate on normal production: {self.command}"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "event": "drift",
            "direction": self.direction,
            "median": self.median,
            "flagged_share": round(self.flagged_share, 4),
            "normal_range": [self.low, self.high],
            "limits": [self.lower_limit, self.upper_limit],
            "frames": self.frames,
            "range_source": self.range_source,
            "command": self.command,
            "message": self.message,
        }


class DriftMonitor:
    """Feed it every frame's raw score and label; :meth:`update` returns the warning once.

    Args:
        low, high: raw image scores of normal images (the range to stay in).
        threshold: the image threshold in use (the upper limit sits at least half way to it).
        window, sustain, margin: see the module constants.
        range_source: how the range was obtained (said in the warning).
        command: the `anomaly-edge calibrate` command the warning suggests.
    """

    def __init__(
        self,
        low: float,
        high: float,
        threshold: float,
        *,
        window: int = WINDOW,
        sustain: int = SUSTAIN,
        margin: float = MARGIN,
        range_source: str = "recorded",
        command: str | None = None,
    ) -> None:
        if window < 1 or sustain < 1 or margin < 0:
            raise ValueError("window and sustain must be >= 1 and margin >= 0")
        width = max(high - low, 1e-6 * max(abs(high), 1.0))
        self.low, self.high = float(low), float(high)
        self.upper_limit = float(high + max(margin * width, (threshold - high) / 2))
        self.lower_limit = float(low - margin * width)
        self.window = window
        self.sustain = sustain
        self.range_source = range_source
        self.command = command or calibrate_command()
        self.drift_frames = 0  # frames seen while out of range (a counter for summaries)
        self.warning: DriftWarning | None = None
        self._normal: collections.deque[float] = collections.deque(maxlen=window)
        self._flagged: collections.deque[bool] = collections.deque(maxlen=FLAGGED_WINDOW)
        self._out_for = 0

    @classmethod
    def from_metadata(
        cls, metadata: ModelMetadata, threshold: float | None = None, **options: Any
    ) -> DriftMonitor:
        """A monitor for a model's recorded normal range (derived from thresholds in old IRs)."""
        threshold = metadata.image_threshold if threshold is None else threshold
        recorded = metadata.normal_score_range
        if recorded is not None:
            return cls(*recorded, threshold, range_source="recorded", **options)
        return cls(
            min(metadata.image_min, threshold),
            threshold,
            threshold,
            range_source="derived from thresholds",
            **options,
        )

    def update(self, raw_score: float, anomalous: bool) -> DriftWarning | None:
        """Account for one frame; the warning the first time drift has lasted ``sustain``."""
        self._flagged.append(bool(anomalous))
        if not anomalous:
            self._normal.append(float(raw_score))
        direction = self._direction()
        if direction is None:
            self._out_for = 0
            return None
        self._out_for += 1
        self.drift_frames += 1
        if self.warning is not None or self._out_for < self.sustain:
            return None
        median = statistics.median(self._normal) if self._normal else None
        self.warning = DriftWarning(
            median,
            self._flagged_share(),
            self.low,
            self.high,
            self.lower_limit,
            self.upper_limit,
            self._out_for,
            direction,
            self.range_source,
            self.command,
        )
        return self.warning

    def _flagged_share(self) -> float:
        return sum(self._flagged) / len(self._flagged) if self._flagged else 0.0

    def _direction(self) -> str | None:
        if len(self._flagged) == FLAGGED_WINDOW and self._flagged_share() > FLAGGED_SHARE:
            return "up"
        if len(self._normal) < self.window:
            return None  # too few normal-looking frames yet for a median
        median = statistics.median(self._normal)
        if median > self.upper_limit:
            return "up"
        if median < self.lower_limit:
            return "down"
        return None
