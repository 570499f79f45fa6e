"""Operating points: where a model's thresholds sit, stated as a policy a user can read.

A user never sees an AUROC; they see labels, boxes and masks at the model's thresholds. The
image threshold is therefore chosen by a **policy** stated in the user's terms, and recorded
(in ``metrics.json`` and the IR's rt_info) with the false-alarm rate and recall it was measured
at and how many images stand behind each figure:

* ``far:X`` -- at most a share X of new normal parts flagged: no lower than just above the
  (k+1)-th highest of the n normal validation scores, k >= 1 the largest with
  ``(k + 1) / (n + 1) <= X`` (the expected share of new normal parts above the (k+1)-th
  highest of n), or, with too few normal images for that, a prediction bound on their log
  scores (see :func:`far_threshold`); of the thresholds that high or higher, the one with
  the best F1 on the validation defects (where defects were seen).
* ``f1`` -- the F1-optimal threshold where defects were seen (needs defect images).

The pixel threshold follows from the image threshold (see :func:`fit_pixel_threshold`): it
only shapes the outline of regions on images the image threshold flags, so it is the value
whose regions best overlap the ground truth of the flagged defect validation images.

:func:`measure` runs the very post-processor users run (the C++ decision) over maps with
known ground truth and counts what a user sees at an operating point.

numpy, OpenCV and the post-processor only: the runtime's ``calibrate`` speaks the same terms.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

import cv2
import numpy as np

from anomaly_edge.errors import InvalidInputError
from anomaly_edge.postprocess import PostprocessParams, postprocess

# The policy `train` uses unless told otherwise, measured on all shared categories together
# (docs/results.md, "Operating point").
DEFAULT_POLICY = "far:0.05"


@dataclass(frozen=True)
class Policy:
    """A stated operating point: ``far:X`` (at most X of normal parts flagged) or ``f1``."""

    kind: str  # "far" | "f1"
    far: float | None = None  # the target share of normal parts flagged, for "far"

    @classmethod
    def parse(cls, text: str | Policy) -> Policy:
        """``"far:0.01"``, ``"far:1%"`` or ``"f1"``; anything else is a clear error."""
        if isinstance(text, Policy):
            return text
        spelled = str(text).strip().lower().replace(" ", "")
        if spelled == "f1":
            return cls("f1")
        match = re.fullmatch(r"far(?::|<=|=)([0-9.]+)(%?)", spelled)
        if match:
            try:
                value = float(match.group(1)) / (100.0 if match.group(2) else 1.0)
            except ValueError:
                value = math.nan
            if 0.0 <= value < 1.0:
                return cls("far", value)
        raise InvalidInputError(
            f"unknown operating-point policy {text!r}: use 'far:X' (at most a share X of normal "
            "parts flagged, e.g. far:0.01 or far:1%, 0 <= X < 1) or 'f1' (F1-optimal on the "
            "validation defects)"
        )

    def __str__(self) -> str:
        return "f1" if self.kind == "f1" else f"far:{self.far:g}"

    def describe(self) -> str:
        if self.kind == "f1":
            return "the F1-optimal image threshold on the validation images"
        return f"at most {100 * (self.far or 0.0):g}% of normal parts flagged"


def just_above(value: float) -> float:
    """The next float32 above ``value``: a threshold that does not flag a score of ``value``
    (labels are ``raw >= threshold``; the runtime's maps are float32)."""
    return float(np.nextafter(np.float32(value), np.float32(np.inf)))


def far_threshold(normal_scores: np.ndarray, far: float) -> float:
    """The threshold at which at most a share ``far`` of *new* normal parts is expected to be
    flagged, from ``n`` normal scores.

    * With enough normal scores (``(k + 1) / (n + 1) <= far`` for some ``k >= 1``, i.e.
      ``n >= 39`` at 5%): just above the (k+1)-th highest for the largest such k (the
      expected share of new scores above the (k+1)-th highest of n is ``(k + 1) / (n + 1)``),
      free of any assumption on the scores' distribution.
    * With fewer (a category's handful of good images): the one-sided prediction bound
      ``exp(mean + t * sd * sqrt(1 + 1/n))`` of the log scores (plain scores when one is not
      positive), with Student's t for ``1 - far``. Measured on the four shared categories
      this delivers the stated share on new good images, where "above the highest of n" gives
      ``1 / (n + 1)`` -- 11% from 8 images -- or, with 20-30 images, flags almost nothing.
      The bound is never below just above the highest score, which caps the share at
      ``1 / (n + 1)`` where the scores' tail is heavier than log-normal.
    * Fewer than 4 scores, or ``far == 0``: just above the highest.
    """
    scores = np.sort(np.asarray(normal_scores, dtype=np.float64).ravel())[::-1]
    if scores.size == 0:
        raise InvalidInputError("a false-alarm policy needs normal images to measure on")
    allowed = max(0, math.floor(far * (scores.size + 1) + 1e-9) - 1)
    if allowed >= scores.size:
        return float(np.float32(scores[-1]))
    if allowed == 0 and far > 0 and scores.size >= MIN_SCORES_FOR_BOUND:
        # Never under the highest score seen: whatever the distribution, at most 1 in n + 1
        # new parts score above it, where the bound's log-normal model can be too light-tailed
        # (a lossy camera's normal frames: 7-10% flagged at far:0.05 from 13 frames, 5-8%
        # with this floor; docs/on-the-line.md).
        bound = float(np.float32(prediction_bound(scores, far)))
        return max(bound, just_above(float(scores[0])))
    return just_above(float(scores[allowed]))


# Fewer normal scores than this leave no spread to estimate: "above the highest" instead.
MIN_SCORES_FOR_BOUND = 4


def prediction_bound(scores: np.ndarray, far: float) -> float:
    """The score a new draw from the same population exceeds with probability ``far``: a
    one-sided Student-t prediction bound on the log scores (on the scores themselves when
    one is not positive); needs at least two scores with some spread."""
    values = np.asarray(scores, dtype=np.float64).ravel()
    positive = bool((values > 0).all())
    sample = np.log(values) if positive else values
    n = sample.size
    spread = float(sample.std(ddof=1)) if n > 1 else 0.0
    if spread == 0.0:
        return just_above(float(values.max()))
    bound = float(sample.mean()) + student_t_quantile(1.0 - far, n - 1) * spread * math.sqrt(
        1.0 + 1.0 / n
    )
    return math.exp(bound) if positive else bound


def student_t_quantile(p: float, dof: int) -> float:
    """Student's t quantile by the Cornish-Fisher expansion around the normal quantile
    (within 0.2% of the exact value from 3 degrees of freedom at p <= 0.99; numpy has no t
    and scipy is not a runtime dependency)."""
    if not 0.0 < p < 1.0 or dof < 1:
        raise ValueError(f"student_t_quantile needs 0 < p < 1 and dof >= 1, got {p}, {dof}")
    z = NormalDist().inv_cdf(p)
    terms = (
        (z**3 + z) / 4,
        (5 * z**5 + 16 * z**3 + 3 * z) / 96,
        (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384,
        (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / 92160,
    )
    return float(z + sum(term / dof ** (i + 1) for i, term in enumerate(terms)))


def rates(
    scores: np.ndarray, labels: np.ndarray, threshold: float
) -> tuple[float | None, float | None]:
    """(false-alarm rate on the normal scores, recall on the anomalous ones) at ``threshold``;
    None where there is no image of that kind."""
    scores = np.asarray(scores, dtype=np.float64).ravel()
    labels = np.asarray(labels).ravel().astype(bool)
    flagged = scores >= float(np.float32(threshold))
    far = float(flagged[~labels].mean()) if (~labels).any() else None
    recall = float(flagged[labels].mean()) if labels.any() else None
    return far, recall


def best_recall_at(scores: np.ndarray, labels: np.ndarray, false_alarms: int) -> float | None:
    """The best recall any image threshold reaches with at most ``false_alarms`` normal
    images flagged (None without anomalous images)."""
    scores = np.asarray(scores, dtype=np.float64).ravel()
    labels = np.asarray(labels).ravel().astype(bool)
    if not labels.any():
        return None
    normal = np.sort(scores[~labels])[::-1]
    if false_alarms >= normal.size:
        return 1.0
    threshold = np.nextafter(normal[false_alarms], np.inf)  # just above the next normal
    return float((scores[labels] >= threshold).mean())


# ---- the pixel threshold -------------------------------------------------------------------

# Candidate pixel thresholds, as quantiles of the flagged defect images' map values.
_EXTENT_QUANTILES = np.linspace(0.50, 0.999, 40)


def fit_pixel_threshold(
    maps: np.ndarray,
    masks: np.ndarray,
    image_threshold: float,
    image_scale: float,
) -> tuple[float, float] | None:
    """The pixel threshold whose regions best fit the ground truth of the defect images that
    ``image_threshold`` flags: the Dice overlap (pooled over the images) between the
    decision's mask and the defects, at map resolution. Returns (threshold, dice), or None
    when no defect image with a mask is flagged."""
    maps = np.asarray(maps, dtype=np.float32)
    masks = np.asarray(masks).astype(bool)
    flagged = maps.reshape(len(maps), -1).max(axis=1) >= np.float32(image_threshold)
    maps, masks = maps[flagged], masks[flagged]
    if len(maps) == 0 or not masks.any():
        return None
    candidates = {float(np.float32(image_threshold))}
    candidates.update(float(v) for v in np.quantile(maps, _EXTENT_QUANTILES))
    best: tuple[float, float] | None = None
    for candidate in sorted(candidates):
        params = PostprocessParams(image_threshold, candidate, image_scale, 1.0)
        overlap = size = 0
        for anomaly_map, truth in zip(maps, masks, strict=True):
            mask = postprocess(anomaly_map, anomaly_map.shape, params).mask
            assert mask is not None  # segmentation always renders one
            predicted = mask > 0
            overlap += int(np.count_nonzero(predicted & truth))
            size += int(np.count_nonzero(predicted)) + int(np.count_nonzero(truth))
        dice = 2.0 * overlap / size if size else 0.0
        if best is None or dice > best[1]:
            best = (candidate, dice)
    return best


# ---- what a user sees ----------------------------------------------------------------------


def measure(
    maps: np.ndarray,
    labels: np.ndarray,
    masks: np.ndarray,
    has_mask: np.ndarray,
    params: PostprocessParams,
    policy: str = "",
) -> dict[str, Any]:
    """What a user sees at ``params`` on images with known truth, through the runtime's own
    post-processor (maps at model resolution, ground-truth masks at the same resolution).

    Keys (see BENCHMARKS.md): ``far`` (good images labelled Anomaly), ``far_seen`` (good images
    labelled Anomaly or carrying a box or mask), ``recall`` (defect images labelled Anomaly),
    ``best_recall_at_far`` (the best recall any image threshold reaches with no more false
    alarms), ``box_precision`` (boxes touching a defect pixel, over all boxes), ``region_recall``
    (8-connected ground-truth regions the mask touches), ``disagreements`` (images whose label,
    boxes and mask disagree), and the counts behind them.
    """
    maps = np.asarray(maps, dtype=np.float32)
    labels = np.asarray(labels).ravel().astype(bool)
    masks = np.asarray(masks).astype(bool)
    has_mask = np.asarray(has_mask).ravel().astype(bool)
    good_flagged = good_seen = defects_flagged = 0
    boxes = boxes_on_defects = regions = regions_touched = disagreements = 0
    scores = np.empty(len(maps), np.float64)
    for i, anomaly_map in enumerate(maps):
        prediction = postprocess(anomaly_map, anomaly_map.shape, params, "segmentation")
        mask = prediction.mask
        assert mask is not None
        drawn = bool(prediction.boxes) or bool(mask.any())
        scores[i] = prediction.raw_score
        if prediction.label != bool(prediction.boxes) or prediction.label != bool(mask.any()):
            disagreements += 1
        if not labels[i]:
            good_flagged += prediction.label
            good_seen += prediction.label or drawn
        else:
            defects_flagged += prediction.label
        boxes += len(prediction.boxes)
        truth = masks[i]
        if labels[i] and has_mask[i] and truth.any():
            boxes_on_defects += sum(
                bool(truth[b.y1 : b.y2, b.x1 : b.x2].any()) for b in prediction.boxes
            )
            count, components = cv2.connectedComponents(truth.astype(np.uint8), connectivity=8)
            regions += count - 1
            touched = np.unique(components[(mask > 0) & truth])
            regions_touched += int(np.count_nonzero(touched))
    good = int(np.count_nonzero(~labels))
    defects = int(np.count_nonzero(labels))
    return {
        "policy": policy,
        "far": _share(good_flagged, good),
        "far_seen": _share(good_seen, good),
        "recall": _share(defects_flagged, defects),
        "best_recall_at_far": best_recall_at(scores, labels, good_flagged),
        "box_precision": _share(boxes_on_defects, boxes),
        "region_recall": _share(regions_touched, regions),
        "disagreements": disagreements,
        "good_images": good,
        "defect_images": defects,
        "boxes": boxes,
        "defect_regions": regions,
    }


def _share(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def choose_image_threshold(
    policy: Policy, scores: Sequence[float] | np.ndarray, labels: Sequence[int] | np.ndarray
) -> float:
    """The image threshold ``policy`` puts on validation ``scores`` (labels 1 = defect)."""
    scores = np.asarray(scores, dtype=np.float64).ravel()
    labels = np.asarray(labels).ravel().astype(bool)
    if policy.kind == "far":
        lowest = far_threshold(scores[~labels], policy.far or 0.0)
        if not labels.any():
            return lowest
        return best_f1_at_or_above(scores, labels, lowest)
    if not labels.any() or labels.all():
        raise InvalidInputError(
            "the f1 policy needs normal and defect validation images; use a far:X policy"
        )
    return f1_optimal_threshold(scores, labels)


def best_f1_at_or_above(scores: np.ndarray, labels: np.ndarray, lowest: float) -> float:
    """Of the thresholds >= ``lowest``, one with the best F1 of ``scores >= t``: the middle of
    the widest-open gap that gives it. The flagged set, and so F1, only changes at observed
    scores; the first best set is flagged by any threshold from ``lowest`` (or just above the
    score under it) up to its lowest score, and the middle of that gap keeps the most room
    both ways: for normal parts scoring a little higher and defects a little lower."""
    scores = np.asarray(scores, dtype=np.float64).ravel()
    labels = np.asarray(labels).ravel().astype(bool)
    lowest = float(np.float32(lowest))
    candidates = np.unique(np.r_[lowest, scores[scores > lowest]])
    flagged = scores[None, :] >= candidates[:, None]
    true_positives = (flagged & labels).sum(axis=1)
    f1 = 2.0 * true_positives / (flagged.sum(axis=1) + np.count_nonzero(labels))
    flagged_scores = scores[flagged[int(np.argmax(f1))]]
    if flagged_scores.size == 0:
        return lowest
    top = float(flagged_scores.min())  # the lowest score flagged at the best F1
    below = scores[scores < top]
    bottom = max(lowest, just_above(float(below.max()))) if below.size else lowest
    if top <= bottom:
        return float(np.float32(top))
    middle = float(np.float32(bottom + (top - bottom) / 2.0))
    return min(max(middle, bottom), float(np.float32(top)))


def f1_optimal_threshold(scores: np.ndarray, labels: np.ndarray) -> float:
    """The score t maximising F1 of ``scores >= t``; needs at least one positive label."""
    scores = np.asarray(scores).ravel()
    labels = np.asarray(labels).ravel().astype(bool)
    positives = int(np.count_nonzero(labels))
    if positives == 0:
        raise ValueError("F1-optimal threshold needs at least one anomalous sample")
    order = np.argsort(scores, kind="stable")[::-1]
    sorted_scores = scores[order]
    true_positives = np.cumsum(labels[order], dtype=np.int64)
    predicted = np.arange(1, scores.size + 1, dtype=np.int64)
    # only the last index of a run of equal scores is a reachable operating point
    last_of_run = np.append(sorted_scores[1:] != sorted_scores[:-1], True)
    f1 = 2.0 * true_positives / (predicted + positives)
    f1 = np.where(last_of_run, f1, -1.0)
    return float(sorted_scores[int(np.argmax(f1))])
