"""Threshold selection in training: the policy's image threshold, the fitted pixel threshold,
fallbacks, and the normalisation statistics."""

from __future__ import annotations

import numpy as np
import pytest

from anomaly_edge.operating_point import Policy, just_above
from anomaly_edge.train.thresholds import (
    choose_image,
    choose_pixel,
    false_alarm_rate,
    normal_score_range,
    normalization_stats,
)

SCORES = np.array([0.1, 0.2, 0.3, 0.8, 0.9])
LABELS = np.array([0, 0, 0, 1, 1])


def test_image_threshold_follows_the_policy():
    far = choose_image(SCORES, LABELS, Policy.parse("far:0.05"))
    # above the highest normal score (0.3), so that image is not flagged (labels: raw >= t),
    # and in the middle of the gap up to the lowest defect (0.8): room both ways
    assert far.method == "far" and far.value == pytest.approx(0.55)
    # far:0.5 allows just above the second highest normal score (2 in 4 new normal parts
    # expected above it), but F1 is best higher up, from 0.3 to 0.8: the middle of that gap
    assert choose_image(SCORES, LABELS, Policy.parse("far:0.5")).value == pytest.approx(0.55)
    # the best F1 flags a normal part (0.65) that the target allows: the gap below the lowest
    # flagged score (0.6) down to the normal scores left unflagged (0.3)
    mixed = choose_image(
        np.array([0.1, 0.2, 0.3, 0.65, 0.6, 0.7]),
        np.array([0, 0, 0, 0, 1, 1]),
        Policy.parse("far:0.5"),
    )
    assert mixed.value == pytest.approx(0.45)
    normal_only = choose_image(SCORES[:3], LABELS[:3], Policy.parse("far:0.5"))
    assert normal_only.value == just_above(0.2)
    f1 = choose_image(SCORES, LABELS, Policy.parse("f1"))
    assert (f1.value, f1.method) == (0.8, "f1")
    fixed = choose_image(SCORES, LABELS, Policy.parse("f1"), fixed=0.5)
    assert (fixed.value, fixed.method) == (0.5, "fixed")


def test_image_threshold_fallbacks_say_why():
    normal_only = choose_image(SCORES[:3], LABELS[:3], Policy.parse("f1"))
    assert normal_only.method == "far" and "needs defect" in normal_only.note
    assert normal_only.value == just_above(0.3)
    defects_only = choose_image(SCORES[3:], LABELS[3:], Policy.parse("far:0.01"))
    assert defects_only.method == "min_anomalous" and "no normal" in defects_only.note
    with pytest.raises(ValueError, match="no validation scores"):
        choose_image(np.array([]), np.array([]), Policy.parse("f1"))


def test_pixel_threshold_is_fitted_on_flagged_defects_or_falls_back():
    yy, xx = np.mgrid[0:32, 0:32]
    bump = np.exp(-((yy - 16.0) ** 2 + (xx - 16.0) ** 2) / 40.0).astype(np.float32)
    truth = ((yy - 16) ** 2 + (xx - 16) ** 2) <= 36  # the defect: radius 6
    image = choose_image(np.array([0.2, 0.9]), np.array([0, 1]), Policy.parse("far:0"))
    fitted = choose_pixel(bump[None], truth[None], image, image_scale=1.0)
    assert fitted.method == "best_overlap" and "Dice 0.9" in fitted.note
    # the fitted outline is close to the defect's, exp(-36 / 40) = 0.41, above the image
    # threshold: a pixel threshold is not capped by it
    assert 0.3 < fitted.value < 0.5
    without_masks = choose_pixel(bump[None], None, image, image_scale=1.0)
    assert (without_masks.value, without_masks.method) == (image.value, "image_threshold")
    fixed = choose_pixel(bump[None], truth[None], image, 1.0, fixed=0.25)
    assert (fixed.value, fixed.method) == (0.25, "fixed")


def test_normalization_stats():
    stats = normalization_stats(np.array([2.0, 5.0]), np.array([[0.5, 7.0]]))
    assert (stats.image_min, stats.image_max, stats.pixel_min, stats.pixel_max) == (
        2.0,
        5.0,
        0.5,
        7.0,
    )


def test_false_alarm_rate():
    normal = np.array([0.1, 0.2, 0.5, 0.5])
    assert false_alarm_rate(normal, 0.5) == 0.5
    assert false_alarm_rate(normal, just_above(0.5)) == 0.0
    assert false_alarm_rate(np.array([]), 0.5) is None


def test_normal_score_range():
    assert normal_score_range(np.array([3.0, 1.0, 2.0])) == {
        "normal_score_low": 1.0,
        "normal_score_median": 2.0,
        "normal_score_high": 3.0,
    }
    assert set(normal_score_range(np.array([])).values()) == {None}
