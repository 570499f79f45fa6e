"""Threshold selection rules and normalisation statistics."""

from __future__ import annotations

import numpy as np
import pytest

from anomaly_edge.train.thresholds import (
    choose_threshold,
    f1_optimal_threshold,
    false_alarm_rate,
    just_above,
    normal_score_range,
    normal_upper_tail,
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
    # just above the highest normal score, so that image is not flagged (labels: raw >= t)
    assert normal_only.method == "max_normal"
    assert 0.3 < normal_only.value == just_above(0.3) < 0.30001
    assert "not tuned on defects" in normal_only.note
    assert choose_threshold(scores[:3], None).value == just_above(0.3)
    assert choose_threshold(scores[3:], labels[3:]).method == "min_anomalous"
    with pytest.raises(ValueError, match="no validation scores"):
        choose_threshold(np.array([]), None)
    with pytest.raises(ValueError, match="at least one anomalous"):
        f1_optimal_threshold(scores, np.zeros(5))


def test_normalization_stats():
    stats = normalization_stats(np.array([2.0, 5.0]), np.array([[0.5, 7.0]]))
    assert (stats.image_min, stats.image_max, stats.pixel_min, stats.pixel_max) == (
        2.0,
        5.0,
        0.5,
        7.0,
    )


def test_tuned_threshold_never_at_or_below_the_normal_upper_tail():
    # F1 is best at 0.5, the highest normal score: the next normal part would be flagged.
    scores = np.array([0.1, 0.2, 0.3, 0.5, 0.5, 0.9, 0.95])
    labels = np.array([0, 0, 0, 0, 1, 1, 1])
    assert f1_optimal_threshold(scores, labels) == 0.5
    chosen = choose_threshold(scores, labels)
    assert chosen.method == "normal_tail" and "raised" in chosen.note
    assert chosen.value == just_above(0.5)
    normal = scores[labels == 0]
    assert false_alarm_rate(normal, chosen.value) == 0.0
    assert false_alarm_rate(normal, 0.5) == 0.25
    assert false_alarm_rate(np.array([]), 0.5) is None


def test_normal_tail_is_the_90th_percentile_with_many_normal_scores():
    normal = np.arange(200, dtype=np.float64)  # 0..199
    assert normal_upper_tail(normal[:10]) == 9.0  # 10 or fewer scores: the maximum
    assert normal_upper_tail(normal[:11]) == 9.0  # then the quantile, at an observed score
    assert normal_upper_tail(normal) == 180.0
    # defects overlap the upper half of the normal scores: F1 is best at about 150, which
    # would flag a quarter of normal parts; the rule raises it above the 90th percentile
    anomalous = np.linspace(150.0, 250.0, 100)
    scores = np.r_[normal, anomalous]
    labels = np.r_[np.zeros(200), np.ones(100)].astype(bool)
    assert false_alarm_rate(normal, f1_optimal_threshold(scores, labels)) > 0.2
    chosen = choose_threshold(scores, labels)
    assert chosen.method == "normal_tail"
    assert chosen.value == just_above(180.0)
    # about 10 % of normal validation images flagged: not the 95th percentile's 5 %
    assert 0.05 < false_alarm_rate(normal, chosen.value) <= 0.10


def test_normal_score_range():
    assert normal_score_range(np.array([3.0, 1.0, 2.0])) == {
        "normal_score_low": 1.0,
        "normal_score_median": 2.0,
        "normal_score_high": 3.0,
    }
    assert set(normal_score_range(np.array([])).values()) == {None}
