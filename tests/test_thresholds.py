"""Threshold selection rules and normalisation statistics."""

from __future__ import annotations

import numpy as np
import pytest

from anomaly_edge.train.thresholds import (
    choose_threshold,
    f1_optimal_threshold,
    normalization_stats,
)


@pytest.mark.parametrize("seed", range(4))
def test_f1_optimal_threshold_is_the_best_observed_score(seed):
    rng = np.random.default_rng(seed)
    labels = rng.random(200) < 0.3
    scores = (rng.random(200) + labels * 0.4).round(2)
    best = f1_optimal_threshold(scores, labels)

    def f1(t):
        predicted = scores >= t
        tp = np.count_nonzero(predicted & labels)
        return 2 * tp / (predicted.sum() + labels.sum())

    assert best in scores
    assert f1(best) == pytest.approx(max(f1(t) for t in np.unique(scores)))


def test_rules_fixed_tuned_and_fallbacks():
    scores = np.array([0.1, 0.2, 0.3, 0.8, 0.9])
    labels = np.array([0, 0, 0, 1, 1])
    assert choose_threshold(scores, labels).method == "f1_optimal"
    assert choose_threshold(scores, labels).value == 0.8
    fixed = choose_threshold(scores, labels, fixed=0.5)
    assert (fixed.value, fixed.method) == (0.5, "fixed")
    normal_only = choose_threshold(scores[:3], labels[:3])
    assert (normal_only.value, normal_only.method) == (0.3, "max_normal")
    assert "not tuned on defects" in normal_only.note
    assert choose_threshold(scores[:3], None).value == 0.3
    assert choose_threshold(scores[3:], labels[3:]).method == "min_anomalous"
    with pytest.raises(ValueError, match="no validation scores"):
        choose_threshold(np.array([]), None)
    with pytest.raises(ValueError, match="at least one anomalous"):
        f1_optimal_threshold(scores, np.zeros(5))


def test_normalization_stats():
    stats = normalization_stats(np.array([2.0, 5.0]), np.array([[0.5, 7.0]]))
    assert (stats.image_min, stats.image_max, stats.pixel_min, stats.pixel_max) == (
        2.0, 5.0, 0.5, 7.0)
