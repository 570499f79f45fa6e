"""ROC and precision-recall curve plots of a training run (matplotlib, no display needed).

Image-level curves use every score; pixel-level curves come from histograms on a fine grid
(millions of pixels, a few thousand points are plenty for a plot).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from anomaly_edge.atomic import atomic_path
from anomaly_edge.train import metrics

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from anomaly_edge.train.evaluate import Predictions

CURVE_BINS = 4096


def roc_pr_points(
    scores: np.ndarray, labels: np.ndarray, bins: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, recall, precision) over thresholds from high to low."""
    scores = np.asarray(scores, dtype=np.float64).ravel()
    labels = np.asarray(labels).ravel().astype(bool)
    if bins is None:
        order = np.argsort(scores, kind="stable")[::-1]
        positives = np.cumsum(labels[order])
        predicted = np.arange(1, scores.size + 1)
    else:
        lo, hi = scores.min(), scores.max()
        scale = (bins - 1) / (hi - lo) if hi > lo else 0.0
        index = np.minimum(((scores - lo) * scale).astype(np.int64), bins - 1)
        pos_counts = np.bincount(index[labels], minlength=bins)[::-1]
        all_counts = np.bincount(index, minlength=bins)[::-1]
        positives = np.cumsum(pos_counts)
        predicted = np.cumsum(all_counts)
    n_pos = max(int(labels.sum()), 1)
    n_neg = max(int((~labels).sum()), 1)
    tpr = positives / n_pos
    fpr = (predicted - positives) / n_neg
    precision = positives / np.maximum(predicted, 1)
    return (np.concatenate([[0.0], fpr]), np.concatenate([[0.0], tpr]), tpr, precision)


def operating_point_on_curves(
    scores: np.ndarray, labels: np.ndarray, threshold: float
) -> tuple[float, float, float]:
    """(false positive rate, recall, precision) of ``scores >= threshold``."""
    scores = np.asarray(scores, dtype=np.float64).ravel()
    labels = np.asarray(labels).ravel().astype(bool)
    flagged = scores >= float(np.float32(threshold))
    true_positives = int(np.count_nonzero(flagged & labels))
    fpr = np.count_nonzero(flagged & ~labels) / max(int(np.count_nonzero(~labels)), 1)
    recall = true_positives / max(int(np.count_nonzero(labels)), 1)
    precision = true_positives / max(int(np.count_nonzero(flagged)), 1)
    return float(fpr), float(recall), float(precision)


def plot_curves(
    predictions: Predictions,
    out: Path,
    thresholds: tuple[float, float] | None = None,
    policy: str = "",
) -> list[Path]:
    """Write ``roc_curve.png`` and ``pr_curve.png`` into ``out``; returns the paths written.

    ``thresholds`` (image, pixel) mark the chosen operating point on each curve, labelled
    with ``policy``."""
    if len(predictions.samples) == 0 or predictions.labels.min() == predictions.labels.max():
        return []  # curves need both classes
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # (name, scores, labels, histogram bins: None for exact points)
    image_threshold, pixel_threshold = thresholds if thresholds else (None, None)
    # (name, scores, labels, histogram bins: None for exact points, threshold to mark)
    series: list[tuple[str, np.ndarray, np.ndarray, int | None, float | None]] = [
        ("image", predictions.scores, predictions.labels, None, image_threshold)
    ]
    if predictions.pixel_ready:
        series.append(("pixel", predictions.maps, predictions.masks, CURVE_BINS, pixel_threshold))
    written = []
    for kind in ("roc", "pr"):
        figure, axes = plt.subplots(figsize=(5, 5), dpi=100)
        for name, scores, labels, bins, threshold in series:
            fpr, tpr, recall, precision = roc_pr_points(scores, labels, bins)
            if kind == "roc":
                area = metrics.auroc(scores, labels)  # None: one class only
                shown = "n/a" if area is None else f"{area:.3f}"
                (line,) = axes.plot(fpr, tpr, label=f"{name} (AUROC {shown})")
            else:
                (line,) = axes.plot(recall, precision, label=name)
            if threshold is not None:
                at_fpr, at_recall, at_precision = operating_point_on_curves(
                    scores, labels, threshold
                )
                x, y = (at_fpr, at_recall) if kind == "roc" else (at_recall, at_precision)
                where = f"{name} threshold" + (f", {policy}" if policy else "")
                axes.plot(x, y, "o", color=line.get_color(), markersize=7, label=where)
        if kind == "roc":
            axes.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
            axes.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC")
        else:
            axes.set(xlabel="recall", ylabel="precision", title="Precision-recall")
        axes.set_xlim(0, 1)
        axes.set_ylim(0, 1.02)
        axes.legend(loc="lower right" if kind == "roc" else "lower left")
        axes.grid(alpha=0.3)
        path = out / f"{kind}_curve.png"
        _save_atomically(figure, path)
        plt.close(figure)
        written.append(path)
    return written


def _save_atomically(figure: Figure, path: Path) -> None:
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", bbox_inches="tight")
