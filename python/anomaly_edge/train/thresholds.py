"""Choosing the image and pixel thresholds, and the normalisation statistics.

The image threshold follows the operating-point policy the user states
(:mod:`anomaly_edge.operating_point`: ``far:X``, at most a share X of normal parts flagged,
or ``f1``), applied to the validation split; a threshold the user fixed is used as it is.
Where the policy cannot apply (``far`` without normal validation images, ``f1`` without both
kinds), the fallback and its reason are recorded.

The pixel threshold only shapes the outline of the regions on images the image threshold
flags (the decision in the C++ post-processor): it is fitted so that those regions overlap
the defects of the flagged validation images best (Dice, at map resolution). Without masks
it is the image threshold itself: each region is then the part of the map that alone would
flag the image.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypedDict

import numpy as np

from anomaly_edge.operating_point import Policy, choose_image_threshold, fit_pixel_threshold


@dataclass(frozen=True)
class Threshold:
    value: float
    # image: "fixed" | "far" | "f1" | "min_anomalous";
    # pixel: "fixed" | "best_overlap" | "image_threshold"
    method: str
    note: str = ""


def choose_image(
    scores: np.ndarray, labels: np.ndarray, policy: Policy, fixed: float | None = None
) -> Threshold:
    """The image threshold: ``fixed`` when given, else what ``policy`` puts on the validation
    ``scores`` (labels 1 = defect)."""
    if fixed is not None:
        return Threshold(float(fixed), "fixed", "image threshold fixed by the user")
    scores = np.asarray(scores, dtype=np.float64).ravel()
    labels = np.asarray(labels).ravel().astype(bool)
    if scores.size == 0:
        raise ValueError("no validation scores to choose the image threshold from")
    if labels.all():
        return Threshold(
            float(np.float32(scores.min())),
            "min_anomalous",
            "image threshold: no normal validation images; lowest anomalous score used",
        )
    if policy.kind == "f1" and not labels.any():
        far = Policy("far", 0.0)
        return Threshold(
            choose_image_threshold(far, scores, labels),
            "far",
            "image threshold: policy f1 needs defect validation images; far:0 used",
        )
    note = ""
    if not labels.any():
        note = (
            "image threshold placed on normal validation images only (no defects seen): "
            "not tuned on defects, recall unknown"
        )
    return Threshold(choose_image_threshold(policy, scores, labels), policy.kind, note)


def choose_pixel(
    maps: np.ndarray,
    masks: np.ndarray | None,
    image: Threshold,
    image_scale: float,
    fixed: float | None = None,
) -> Threshold:
    """The pixel threshold: ``fixed`` when given, else the one whose regions best fit the
    defect masks of the flagged validation images (``masks`` None: none to fit)."""
    if fixed is not None:
        return Threshold(float(fixed), "fixed", "pixel threshold fixed by the user")
    fitted = None
    if masks is not None and len(maps):
        fitted = fit_pixel_threshold(maps, masks, image.value, image_scale)
    if fitted is None:
        return Threshold(
            image.value,
            "image_threshold",
            "pixel threshold: no flagged validation defect with a mask to fit region "
            "outlines on; the image threshold used",
        )
    return Threshold(fitted[0], "best_overlap", f"pixel threshold: region Dice {fitted[1]:.3f}")


def false_alarm_rate(normal_scores: np.ndarray, threshold: float) -> float | None:
    """Share of ``normal_scores`` flagged at ``threshold`` (None without normal scores)."""
    normal_scores = np.asarray(normal_scores).ravel()
    if normal_scores.size == 0:
        return None
    return float(np.count_nonzero(normal_scores >= threshold) / normal_scores.size)


class NormalScoreRange(TypedDict):
    """The ``ModelMetadata`` fields of :func:`normal_score_range` (a TypedDict, so that
    ``ModelMetadata(**normal_score_range(...))`` type-checks)."""

    normal_score_low: float | None
    normal_score_median: float | None
    normal_score_high: float | None


def normal_score_range(normal_scores: np.ndarray) -> NormalScoreRange:
    """Low/median/high of normal image scores, as ``ModelMetadata`` stores them (the range the
    stream's drift monitor watches); all None without normal scores."""
    normal_scores = np.asarray(normal_scores, dtype=np.float64).ravel()
    if normal_scores.size == 0:
        return {"normal_score_low": None, "normal_score_median": None, "normal_score_high": None}
    return {
        "normal_score_low": float(normal_scores.min()),
        "normal_score_median": float(np.median(normal_scores)),
        "normal_score_high": float(normal_scores.max()),
    }


@dataclass(frozen=True)
class Normalization:
    """Image-score and map statistics (min/max) on the validation split."""

    image_min: float
    image_max: float
    pixel_min: float
    pixel_max: float


def normalization_stats(image_scores: np.ndarray, maps: np.ndarray) -> Normalization:
    image_scores = np.asarray(image_scores)
    maps = np.asarray(maps)
    if image_scores.size == 0 or maps.size == 0:
        raise ValueError("normalisation statistics need at least one validation image")
    return Normalization(
        float(image_scores.min()), float(image_scores.max()), float(maps.min()), float(maps.max())
    )
