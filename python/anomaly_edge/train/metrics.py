"""Evaluation metrics: AUROC, AUPRO (FPR <= 0.3), F1 at a threshold. NumPy and OpenCV only.

* :func:`auroc` is exact (ties count one half, as scikit-learn) and needs no index array:
  it sorts the negative scores and looks up every positive in them, so tens of millions of
  pixels cost one float32 sort.
* :func:`aupro` follows the MVTec AD definition: for each threshold, FPR over all normal
  pixels and PRO = mean over ground-truth regions (8-connected components, per image) of the
  fraction of the region above the threshold; the area under PRO(FPR) up to ``max_fpr`` is
  divided by ``max_fpr``. Both curves come from histograms on a fine threshold grid (one
  counting pass per quantity instead of one pass per threshold).
"""

from __future__ import annotations

import cv2
import numpy as np

AUPRO_MAX_FPR = 0.3
AUPRO_BINS = 1 << 16


def auroc(scores: np.ndarray, labels: np.ndarray) -> float | None:
    """Area under the ROC curve; None when only one class is present."""
    scores = np.asarray(
        scores, dtype=np.float64 if np.asarray(scores).size < 1 << 20 else np.float32
    ).ravel()
    labels = np.asarray(labels).ravel().astype(bool)
    positives = scores[labels]
    negatives = np.sort(scores[~labels])
    if positives.size == 0 or negatives.size == 0:
        return None
    below = np.searchsorted(negatives, positives, side="left").astype(np.float64)
    not_above = np.searchsorted(negatives, positives, side="right").astype(np.float64)
    wins = below.sum() + 0.5 * (not_above - below).sum()
    return float(wins / (positives.size * negatives.size))


def f1_at(scores: np.ndarray, labels: np.ndarray, threshold: float) -> float | None:
    """F1 of ``scores >= threshold`` against ``labels``; None without positive labels."""
    labels = np.asarray(labels).ravel().astype(bool)
    if not labels.any():
        return None
    predicted = np.asarray(scores).ravel() >= threshold
    true_positives = np.count_nonzero(predicted & labels)
    denominator = np.count_nonzero(predicted) + np.count_nonzero(labels)
    return float(2.0 * true_positives / denominator) if denominator else 0.0


def label_regions(masks: np.ndarray) -> tuple[np.ndarray, int]:
    """8-connected regions of each [N, H, W] mask, numbered 1..count over all images (int32)."""
    regions = np.zeros(masks.shape, dtype=np.int32)
    count = 0
    for i, mask in enumerate(masks):
        n, labelled = cv2.connectedComponents(
            mask.astype(np.uint8), connectivity=8, ltype=cv2.CV_32S
        )
        if n > 1:
            inside = labelled > 0
            regions[i][inside] = labelled[inside] + count
            count += n - 1
    return regions, count


def aupro(
    maps: np.ndarray, masks: np.ndarray, max_fpr: float = AUPRO_MAX_FPR, bins: int = AUPRO_BINS
) -> float | None:
    """Normalised area under the per-region-overlap curve up to ``max_fpr``.

    ``maps``: [N, H, W] anomaly maps, ``masks``: [N, H, W] ground truth (non-zero =
    anomalous). None when there is no anomalous region or no normal pixel.
    """
    maps = np.asarray(maps, dtype=np.float32)
    masks = np.asarray(masks).astype(bool)
    if maps.shape != masks.shape:
        raise ValueError(f"maps {maps.shape} and masks {masks.shape} differ in shape")
    regions, count = label_regions(masks)
    normal = ~masks
    n_normal = int(np.count_nonzero(normal))
    if count == 0 or n_normal == 0:
        return None
    lo, hi = float(maps.min()), float(maps.max())
    # bin b holds scores in [edge_b, edge_b+1); "above edge_b" = counts of bins >= b
    scale = (bins - 1) / (hi - lo) if hi > lo else 0.0
    index = np.minimum(((maps - lo) * scale).astype(np.int64), bins - 1)
    normal_counts = np.bincount(index[normal], minlength=bins)
    fpr = np.cumsum(normal_counts[::-1])[::-1] / n_normal
    inside = regions > 0
    region_of = regions[inside] - 1
    areas = np.bincount(region_of, minlength=count).astype(np.float64)
    weights = 1.0 / (areas[region_of] * count)  # each region weighs 1/count in the mean
    pro = np.cumsum(np.bincount(index[inside], weights=weights, minlength=bins)[::-1])[::-1]
    # thresholds descending -> FPR ascending; start the curve at (0, 0)
    fpr = np.concatenate([[0.0], fpr[::-1]])
    pro = np.concatenate([[0.0], pro[::-1]])
    return _partial_area(fpr, pro, max_fpr) / max_fpr


def _partial_area(x: np.ndarray, y: np.ndarray, limit: float) -> float:
    """Trapezoidal area under y(x) for x in [0, limit], interpolating at the limit."""
    keep = x <= limit
    xs, ys = x[keep], y[keep]
    if xs[-1] < limit and keep.size > xs.size:
        nxt = xs.size
        x0, x1, y0, y1 = x[nxt - 1], x[nxt], y[nxt - 1], y[nxt]
        y_limit = y0 + (y1 - y0) * (limit - x0) / (x1 - x0) if x1 > x0 else y1
        xs = np.append(xs, limit)
        ys = np.append(ys, y_limit)
    return float(np.trapezoid(ys, xs))
