"""How well the stream's per-frame verdicts match the demo video's ground truth."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

from anomaly_edge.demo.video import VideoTruth


@dataclass
class FrameScore:
    """Frame-level agreement between what the model flagged and where the defects were."""

    frames_processed: int  # including ambiguous ones
    frames_with_defects: int
    frames_ambiguous: int
    frames_flagged: int  # among the frames that are not ambiguous
    hits: int  # frames with a defect that were flagged
    false_alarms: int  # frames without a defect that were flagged
    defects_caught: list[str]  # kinds flagged in at least one frame of their passage
    defects_missed: list[str]

    @property
    def recall(self) -> float:
        return self.hits / self.frames_with_defects if self.frames_with_defects else 1.0

    @property
    def false_alarm_rate(self) -> float:
        normal = self.frames_processed - self.frames_with_defects - self.frames_ambiguous
        return self.false_alarms / normal if normal > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "recall": self.recall, "false_alarm_rate": self.false_alarm_rate}


def score_frames(
    truth: VideoTruth, flagged: Iterable[int], processed: int, skip: int = 0
) -> FrameScore:
    """Compare the indices of flagged frames with ``truth`` over the first ``processed`` frames.

    Frames that show only a sliver of a defect at the edge (``truth.partial_frames``) are
    ambiguous and left out of every count; so are the first ``skip`` frames (e.g. those a
    calibration saw), and ``frames_processed`` then counts the frames after them.
    """
    ambiguous = set(truth.partial_frames)
    flagged_set = {i for i in flagged if skip <= i < processed} - ambiguous
    defective = {i for i in truth.anomalous_frames if skip <= i < processed}
    caught: list[str] = []
    missed: list[str] = []
    for defect in truth.defects:
        if (
            defect["first_frame"] is None
            or defect["first_frame"] >= processed
            or defect["last_frame"] < skip
        ):
            continue
        passage = set(range(max(skip, defect["first_frame"]), defect["last_frame"] + 1))
        (caught if passage & flagged_set else missed).append(defect["kind"])
    return FrameScore(
        frames_processed=max(0, processed - skip),
        frames_with_defects=len(defective),
        frames_ambiguous=len({i for i in ambiguous if skip <= i < processed}),
        frames_flagged=len(flagged_set),
        hits=len(flagged_set & defective),
        false_alarms=len(flagged_set - defective),
        defects_caught=caught,
        defects_missed=missed,
    )
