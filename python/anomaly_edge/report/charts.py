"""ROC and PR curves and score histograms, computed from scores and drawn as inline SVG (no
plotting library, no script: the page stays one file that any browser shows)."""

from __future__ import annotations

from dataclasses import dataclass
from html import escape

import numpy as np

# Plot area inside the SVG, in pixels.
WIDTH, HEIGHT = 300, 240
LEFT, TOP, RIGHT, BOTTOM = 46, 26, 12, 40
# One colour per run (colour-blind safe pair first).
COLOURS = ("#1f77b4", "#d95f02", "#7570b3", "#1b9e77")
GOOD_COLOUR, DEFECT_COLOUR = "#2ca02c", "#d62728"


@dataclass(frozen=True)
class Curve:
    """One run's curve and its operating point, in the chart's units (0..1 on both axes)."""

    name: str
    xs: np.ndarray
    ys: np.ndarray
    point: tuple[float, float] | None  # the operating point, or None when undefined
    area: float | None  # AUROC or average precision


def roc_curve(good: np.ndarray, defect: np.ndarray, threshold: float, name: str) -> Curve | None:
    """False-positive vs true-positive rate over all thresholds; None without both classes."""
    if good.size == 0 or defect.size == 0:
        return None
    fp, tp = _cumulative(good, defect)
    fpr = np.concatenate([[0.0], fp / good.size])
    tpr = np.concatenate([[0.0], tp / defect.size])
    point = (float(np.mean(good >= threshold)), float(np.mean(defect >= threshold)))
    auroc = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))  # ties count half
    return Curve(name, fpr, tpr, point, auroc)


def pr_curve(good: np.ndarray, defect: np.ndarray, threshold: float, name: str) -> Curve | None:
    """Recall vs precision over all thresholds; None without defect images."""
    if defect.size == 0:
        return None
    fp, tp = _cumulative(good, defect)
    precision = tp / np.maximum(tp + fp, 1)
    recall = tp / defect.size
    # average precision: precision at each recall step, weighted by the step
    steps = np.diff(np.concatenate([[0.0], recall]))
    average_precision = float(np.sum(steps * precision))
    caught = float(np.sum(defect >= threshold))
    flagged = caught + float(np.sum(good >= threshold))
    point = None if flagged == 0 else (caught / defect.size, caught / flagged)
    xs = np.concatenate([[0.0], recall])
    ys = np.concatenate([[precision[0]], precision])
    return Curve(name, xs, ys, point, average_precision)


def _cumulative(good: np.ndarray, defect: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """False and true positives at each distinct score, highest threshold first."""
    scores = np.concatenate([defect, good])
    positive = np.concatenate([np.ones(defect.size), np.zeros(good.size)])
    order = np.argsort(-scores, kind="stable")
    scores, positive = scores[order], positive[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(scores)), scores.size - 1]
    tp = np.cumsum(positive)[last_of_tie]
    fp = np.cumsum(1 - positive)[last_of_tie]
    return fp, tp


def _x(value: float) -> float:
    return LEFT + value * (WIDTH - LEFT - RIGHT)


def _y(value: float) -> float:
    return HEIGHT - BOTTOM - value * (HEIGHT - TOP - BOTTOM)


def _frame(title: str, x_label: str, y_label: str, kind: str) -> list[str]:
    parts = [
        f'<svg class="chart {kind}" xmlns="http://www.w3.org/2000/svg" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}" role="img" '
        f'aria-label="{escape(title)}">',
        f'<text x="{WIDTH / 2}" y="16" text-anchor="middle" class="title">{escape(title)}</text>',
        f'<rect x="{LEFT}" y="{TOP}" width="{WIDTH - LEFT - RIGHT}" '
        f'height="{HEIGHT - TOP - BOTTOM}" fill="none" stroke="#888"/>',
        f'<text x="{(LEFT + WIDTH - RIGHT) / 2}" y="{HEIGHT - 6}" text-anchor="middle">'
        f"{escape(x_label)}</text>",
        f'<text transform="translate(12 {(TOP + HEIGHT - BOTTOM) / 2}) rotate(-90)" '
        f'text-anchor="middle">{escape(y_label)}</text>',
    ]
    return parts


def _unit_ticks() -> list[str]:
    parts = []
    for tick in (0.0, 0.25, 0.5, 0.75, 1.0):
        x, y = _x(tick), _y(tick)
        parts.append(
            f'<text x="{x:.1f}" y="{HEIGHT - BOTTOM + 14}" text-anchor="middle" '
            f'class="tick">{tick:g}</text>'
        )
        parts.append(
            f'<text x="{LEFT - 4}" y="{y + 4:.1f}" text-anchor="end" class="tick">{tick:g}</text>'
        )
    return parts


def curve_chart(curves: list[Curve], title: str, x_label: str, y_label: str, kind: str) -> str:
    """One SVG with every run's curve and its operating point as a ringed dot."""
    parts = _frame(title, x_label, y_label, kind) + _unit_ticks()
    if kind == "roc":
        parts.append(
            f'<line x1="{_x(0)}" y1="{_y(0)}" x2="{_x(1)}" y2="{_y(1)}" stroke="#ccc" '
            'stroke-dasharray="4 3"/>'
        )
    for index, curve in enumerate(curves):
        colour = COLOURS[index % len(COLOURS)]
        path = " ".join(
            f"{_x(float(a)):.1f},{_y(float(b)):.1f}"
            for a, b in zip(curve.xs, curve.ys, strict=True)
        )
        parts.append(
            f'<polyline class="curve" points="{path}" fill="none" stroke="{colour}" '
            'stroke-width="2"/>'
        )
        # the ROC curve leaves the lower right empty, the PR curve the lower left
        legend_y = HEIGHT - BOTTOM - 8 - 14 * (len(curves) - 1 - index)
        legend_x, anchor = (WIDTH - RIGHT - 6, "end") if kind == "roc" else (LEFT + 6, "start")
        area = "" if curve.area is None else f" ({curve.area:.3f})"
        parts.append(
            f'<text x="{legend_x}" y="{legend_y}" text-anchor="{anchor}" fill="{colour}" '
            f'class="legend">{escape(curve.name + area)}</text>'
        )
        if curve.point is not None:
            px, py = _x(curve.point[0]), _y(curve.point[1])
            label = f"operating point: x {curve.point[0]:.3f}, y {curve.point[1]:.3f}"
            parts.append(
                f'<circle class="operating-point" cx="{px:.1f}" cy="{py:.1f}" r="6" '
                f'fill="{colour}" stroke="#000" stroke-width="1.5"><title>{escape(curve.name)} '
                f"{escape(label)}</title></circle>"
            )
    parts.append("</svg>")
    return "\n".join(parts)


def histogram(good: np.ndarray, defect: np.ndarray, threshold: float, title: str) -> str:
    """Good and defect image scores in overlaid bars, with the image threshold as a line."""
    values = np.concatenate([good, defect, [threshold]])
    low, high = float(values.min()), float(values.max())
    if high <= low:
        high = low + 1.0
    span = high - low
    low, high = low - 0.02 * span, high + 0.02 * span
    edges = np.linspace(low, high, 26)
    counts = [np.histogram(v, edges)[0] for v in (good, defect)]
    peak = max(1, int(max(c.max() for c in counts)))
    parts = _frame(title, "image score (raw)", "images", "histogram")

    def to_unit(v: float) -> float:
        return (v - low) / (high - low)

    bar_width = (WIDTH - LEFT - RIGHT) / (len(edges) - 1)
    for counted, colour, name in (
        (counts[0], GOOD_COLOUR, "good"),
        (counts[1], DEFECT_COLOUR, "defect"),
    ):
        for i, count in enumerate(counted):
            if count == 0:
                continue
            top = _y(count / peak)
            parts.append(
                f'<rect class="bar {name}" x="{_x(to_unit(edges[i])):.1f}" y="{top:.1f}" '
                f'width="{bar_width:.1f}" height="{_y(0) - top:.1f}" fill="{colour}" '
                f'fill-opacity="0.55"><title>{count} {name}</title></rect>'
            )
    tx = _x(to_unit(threshold))
    right = to_unit(threshold) < 0.5  # threshold label right of the line, legend far right
    parts.append(
        f'<line class="threshold" x1="{tx:.1f}" y1="{TOP}" x2="{tx:.1f}" y2="{_y(0)}" '
        'stroke="#000" stroke-width="2" stroke-dasharray="5 3"/>'
        f'<text x="{tx + 3 if right else tx - 3:.1f}" y="{TOP + 12}" class="tick" '
        f'text-anchor="{"start" if right else "end"}">threshold {threshold:.4g}</text>'
    )
    for tick in (low, (low + high) / 2, high):
        parts.append(
            f'<text x="{_x(to_unit(tick)):.1f}" y="{HEIGHT - BOTTOM + 14}" text-anchor="middle" '
            f'class="tick">{tick:.3g}</text>'
        )
    # the legend goes on the side away from the threshold's label
    legend_x, anchor = (WIDTH - RIGHT - 6, "end") if right else (LEFT + 6, "start")
    parts.append(
        f'<text x="{LEFT - 4}" y="{TOP + 4}" text-anchor="end" class="tick">{peak}</text>'
        f'<text x="{legend_x}" y="{TOP + 14}" text-anchor="{anchor}" fill="{GOOD_COLOUR}" '
        f'class="legend">good ({good.size})</text>'
        f'<text x="{legend_x}" y="{TOP + 28}" text-anchor="{anchor}" '
        f'fill="{DEFECT_COLOUR}" class="legend">defect ({defect.size})</text>'
    )
    parts.append("</svg>")
    return "\n".join(parts)
