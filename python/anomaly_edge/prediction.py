"""What a model says about one image: the types every part of the runtime hands around."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import numpy as np


class Task(str, Enum):
    """How much post-processing a prediction gets.

    One model serves all three; they differ only in what is computed after inference.
    """

    CLASSIFICATION = "classification"  # score and label
    DETECTION = "detection"  # ... plus boxes around anomalous regions
    SEGMENTATION = "segmentation"  # ... plus a pixel mask at frame resolution

    @classmethod
    def parse(cls, value: str | Task) -> Task:
        try:
            return cls(value.lower() if isinstance(value, str) else value)
        except ValueError:
            choices = ", ".join(t.value for t in cls)
            raise ValueError(f"unknown task {value!r}: choose one of {choices}") from None


@dataclass(frozen=True)
class Box:
    """One anomalous region, in pixel coordinates of the original frame.

    ``x2`` and ``y2`` are exclusive, so ``frame[y1:y2, x1:x2]`` is the region.
    ``score`` is the region's maximum normalised score in [0, 1], in the unit of the image
    score (0.5 = the image threshold; a reported region always reaches it, unless the image
    was flagged by a raw score from elsewhere); ``mean_score`` its mean.
    ``area`` is the region's size in anomaly-map pixels (model resolution).
    """

    x1: int
    y1: int
    x2: int
    y2: int
    score: float
    mean_score: float
    area: int

    @property
    def width(self) -> int:
        return self.x2 - self.x1

    @property
    def height(self) -> int:
        return self.y2 - self.y1

    def to_dict(self) -> dict[str, Any]:
        return {
            "x1": self.x1,
            "y1": self.y1,
            "x2": self.x2,
            "y2": self.y2,
            "score": round(float(self.score), 6),
            "mean_score": round(float(self.mean_score), 6),
            "area": self.area,
        }


@dataclass
class Prediction:
    """The result for one image.

    Attributes:
        score: normalised anomaly score in [0, 1]; 0.5 sits exactly on the image threshold.
        label: True when the image is anomalous (raw score >= image threshold).
        raw_score: the model's own score (max of the raw anomaly map), before normalisation.
        task: what was computed.
        anomaly_map: raw anomaly map at model resolution (float32, h x w).
        boxes: anomalous regions, highest score first (detection and segmentation); empty
            whenever ``label`` is False, never empty when it is True.
        mask: uint8 mask at frame resolution, 255 = anomalous (segmentation only); all zero
            whenever ``label`` is False, covering exactly the boxes' regions otherwise.
        heatmap: uint8 map at frame resolution in the image score's unit (x 255), whatever
            the label (only when asked for).
    """

    score: float
    label: bool
    raw_score: float
    task: Task
    anomaly_map: np.ndarray | None = None
    boxes: list[Box] = field(default_factory=list)
    mask: np.ndarray | None = None
    heatmap: np.ndarray | None = None

    @property
    def label_name(self) -> str:
        return "Anomaly" if self.label else "Normal"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary (no arrays): score, label and boxes; for segmentation also
        ``mask``: its ``height`` and ``width``, ``anomalous_pixels``, ``anomalous_fraction``
        and ``regions`` (the number of anomalous regions, each one of ``boxes``)."""
        summary = {
            "score": round(float(self.score), 6),
            "label": self.label_name,
            "anomalous": bool(self.label),
            "raw_score": float(self.raw_score),
            "boxes": [b.to_dict() for b in self.boxes],
        }
        if self.mask is not None:
            height, width = self.mask.shape[:2]
            pixels = int(np.count_nonzero(self.mask))
            summary["mask"] = {
                "height": height,
                "width": width,
                "anomalous_pixels": pixels,
                "anomalous_fraction": round(pixels / max(1, height * width), 6),
                "regions": len(self.boxes),
            }
        return summary
