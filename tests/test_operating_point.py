"""Operating points: policies in the user's terms, and what a user sees at one, counted through
the runtime's own post-processor."""

from __future__ import annotations

import numpy as np
import pytest

from anomaly_edge.errors import InvalidInputError
from anomaly_edge.operating_point import (
    Policy,
    best_recall_at,
    f1_optimal_threshold,
    far_threshold,
    just_above,
    measure,
    prediction_bound,
    rates,
    student_t_quantile,
)
from anomaly_edge.postprocess import PostprocessParams


@pytest.mark.parametrize(
    ("text", "kind", "far"),
    [
        ("far:0.01", "far", 0.01),
        ("FAR:1%", "far", 0.01),
        ("far<=0.1", "far", 0.1),
        ("f1", "f1", None),
    ],
)
def test_policies_parse(text, kind, far):
    policy = Policy.parse(text)
    assert (policy.kind, policy.far) == (kind, far)
    assert Policy.parse(str(policy)) == policy
    assert policy.describe()


@pytest.mark.parametrize("text", ["", "far", "far:1.5", "far:-1", "far:abc", "p99", "far:100%"])
def test_bad_policies_say_what_to_write(text):
    with pytest.raises(InvalidInputError, match="far:X"):
        Policy.parse(text)


def test_far_threshold_expects_the_share_on_new_parts():
    normal = np.arange(1, 40, dtype=np.float64)  # 1..39: enough for order statistics
    assert far_threshold(normal, 0.0) == just_above(39.0)
    assert far_threshold(normal, 0.05) == just_above(38.0)  # 2 in 40 above the second
    assert far_threshold(normal, 0.1) == just_above(36.0)  # 4 in 40 above the fourth
    assert rates(normal, np.zeros(39), far_threshold(normal, 0.1)) == (3 / 39, None)
    assert far_threshold(normal[:3], 0.05) == just_above(3.0)  # too few for a spread
    with pytest.raises(InvalidInputError, match="normal images"):
        far_threshold(np.array([]), 0.1)


@pytest.mark.parametrize("count", [5, 8, 19])
def test_with_few_normal_images_the_bound_keeps_the_stated_share(count):
    """Drawn from a log-normal population, a threshold placed on a handful of normal scores
    flags about the stated share of new ones on average, never more; "above the highest of n"
    alone would flag 1 / (n + 1) -- twice the share from 8 images. From 19 the floor at the
    highest score takes over in some draws, so fewer than the share are flagged there."""
    rng = np.random.default_rng(count)
    flagged = [
        np.mean(
            rng.lognormal(3.0, 0.4, 2000) >= far_threshold(rng.lognormal(3.0, 0.4, count), 0.05)
        )
        for _ in range(400)
    ]
    assert 0.035 <= np.mean(flagged) <= 0.06


def test_with_few_normal_images_no_score_seen_is_flagged():
    """The bound never falls under the highest normal score it was placed on, so at most
    1 in n + 1 new parts is flagged whatever the tail of the scores (a lossy camera's frames
    had a heavier one than the bound assumes)."""
    rng = np.random.default_rng(7)
    below = 0
    for _ in range(300):
        count = int(rng.integers(4, 39))
        scores = rng.lognormal(3.0, rng.uniform(0.05, 1.0), count)
        below += prediction_bound(scores, 0.05) <= scores.max()
        assert far_threshold(scores, 0.05) > scores.max()
    assert below > 0  # the floor mattered in some draws


def test_the_bound_works_on_scores_that_are_not_positive():
    scores = np.array([-1.0, 0.0, 1.0, 0.5, -0.5])
    threshold = far_threshold(scores, 0.05)
    assert threshold > 1.0  # above the spread of five such scores
    assert far_threshold(np.full(6, 2.0), 0.05) == just_above(2.0)  # no spread: above them


@pytest.mark.parametrize(
    ("p", "dof", "table"),
    [
        (0.95, 3, 2.3534),
        (0.95, 7, 1.8946),
        (0.95, 18, 1.7341),
        (0.99, 5, 3.3649),
        (0.9, 38, 1.3042),
    ],
)
def test_student_t_quantiles_match_the_table(p, dof, table):
    assert student_t_quantile(p, dof) == pytest.approx(table, rel=2e-3)


@pytest.mark.parametrize("seed", range(3))
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


def test_best_recall_at_a_number_of_false_alarms():
    scores = np.array([0.1, 0.5, 0.9, 0.4, 0.6, 0.95])
    labels = np.array([0, 0, 0, 1, 1, 1])
    assert best_recall_at(scores, labels, 0) == pytest.approx(1 / 3)  # above 0.9: only 0.95
    assert best_recall_at(scores, labels, 1) == pytest.approx(2 / 3)  # above 0.5
    assert best_recall_at(scores, labels, 3) == 1.0
    assert best_recall_at(scores[:3], labels[:3], 0) is None


def test_measure_counts_what_a_user_sees():
    maps = np.zeros((4, 8, 8), np.float32)
    labels = np.array([0, 0, 1, 1])
    masks = np.zeros((4, 8, 8), bool)
    maps[0, 2:4, 2:4] = 0.6  # a good part under the image threshold: nothing drawn
    maps[1, 5, 5] = 0.9  # a good part flagged: a false alarm with a box
    maps[2, 1:3, 1:3] = 0.9  # a defect found, its one region on the truth...
    maps[2, 6, 6] = 0.85  # ... and a second region beside it
    masks[2, 1:3, 1:3] = True
    masks[2, 5, 0] = True  # a second defect region nobody marks
    maps[3, 4, 4] = 0.3  # a defect missed
    masks[3, 4, 4] = True
    params = PostprocessParams(0.8, 0.5, 1.0, 1.0)
    seen = measure(maps, labels, masks, np.ones(4, bool), params, "far:0.05")
    assert seen["policy"] == "far:0.05"
    assert (seen["far"], seen["far_seen"], seen["recall"]) == (0.5, 0.5, 0.5)
    assert seen["best_recall_at_far"] == 0.5
    assert seen["boxes"] == 3 and seen["box_precision"] == pytest.approx(0.3333)
    assert seen["defect_regions"] == 3 and seen["region_recall"] == pytest.approx(0.3333)
    assert seen["disagreements"] == 0
    assert (seen["good_images"], seen["defect_images"]) == (2, 2)
