"""Metrics against scikit-learn and a brute-force AUPRO."""

from __future__ import annotations

import numpy as np
import pytest
import sklearn.metrics as sklearn_metrics

from anomaly_edge.train.metrics import _partial_area, aupro, auroc, f1_at, label_regions


@pytest.mark.parametrize("seed", range(4))
def test_auroc_matches_sklearn_including_ties(seed):
    rng = np.random.default_rng(seed)
    scores = rng.random(500).round(1 + seed % 2)  # many ties
    labels = rng.random(500) < 0.2
    assert auroc(scores, labels) == pytest.approx(
        sklearn_metrics.roc_auc_score(labels, scores), abs=1e-12
    )


def test_auroc_needs_both_classes():
    assert auroc([0.1, 0.2], [0, 0]) is None
    assert auroc([0.1, 0.2], [1, 1]) is None
    assert auroc([0.1, 0.9], [0, 1]) == 1.0


def test_f1_at_matches_sklearn():
    rng = np.random.default_rng(0)
    scores, labels = rng.random(300), rng.random(300) < 0.3
    expected = sklearn_metrics.f1_score(labels, scores >= 0.6)
    assert f1_at(scores, labels, 0.6) == pytest.approx(expected)
    assert f1_at(scores, np.zeros(300), 0.6) is None


def _brute_aupro(maps, masks, max_fpr=0.3):
    regions, count = label_regions(masks)
    fprs, pros = [0.0], [0.0]
    for threshold in np.unique(maps)[::-1]:
        above = maps >= threshold
        fprs.append(above[~masks].mean())
        pros.append(np.mean([above[regions == r].mean() for r in range(1, count + 1)]))
    return _partial_area(np.array(fprs), np.array(pros), max_fpr) / max_fpr


@pytest.mark.parametrize("seed", range(3))
def test_aupro_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    maps = rng.random((3, 24, 24)).astype(np.float32)
    masks = np.zeros(maps.shape, bool)
    masks[0, 2:8, 3:9] = True
    masks[1, 10:12, 2:20] = True
    masks[1, 18:22, 18:22] = True  # two regions in one image, weighted equally
    maps[masks] += rng.uniform(0.1, 0.5)
    assert aupro(maps, masks) == pytest.approx(_brute_aupro(maps, masks), abs=2e-3)


def test_aupro_extremes_and_degenerate_inputs():
    masks = np.zeros((2, 16, 16), bool)
    masks[0, 4:8, 4:8] = True
    perfect = masks.astype(np.float32)
    assert aupro(perfect, masks) == pytest.approx(1.0, abs=1e-6)
    assert aupro(1.0 - perfect, masks) == pytest.approx(0.0, abs=1e-6)
    assert aupro(perfect, np.zeros_like(masks)) is None
    with pytest.raises(ValueError, match="shape"):
        aupro(perfect[:1], masks)


def test_regions_are_8_connected_and_numbered_across_images():
    masks = np.zeros((2, 6, 6), bool)
    masks[0, 0, 0] = masks[0, 1, 1] = True  # diagonal neighbours: one region
    masks[1, 0, 0] = masks[1, 4, 4] = True  # two regions
    regions, count = label_regions(masks)
    assert count == 3
    assert regions[0, 0, 0] == regions[0, 1, 1] == 1
    assert {regions[1, 0, 0], regions[1, 4, 4]} == {2, 3}
