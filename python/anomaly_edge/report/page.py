"""The report page: one HTML file with its pictures inlined (data URIs and inline SVG), no
script and nothing fetched, so it opens the same in any browser, offline, anywhere."""

from __future__ import annotations

import datetime
import json
from collections.abc import Callable, Sequence
from html import escape
from pathlib import Path
from typing import Any

import anomaly_edge
from anomaly_edge.atomic import atomic_write
from anomaly_edge.report import charts
from anomaly_edge.report.evaluate import Evaluation, evaluate
from anomaly_edge.report.gallery import Group, build_gallery
from anomaly_edge.report.run_folder import ReportError, RunFolder

MAX_RUNS = 4  # side by side beyond that is unreadable

STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 24px; color: #222; max-width: 1500px; }
h1 { font-size: 22px; margin: 0 0 4px; } h2 { font-size: 18px; margin: 28px 0 8px;
  border-bottom: 1px solid #ddd; padding-bottom: 4px; } h3 { font-size: 15px; margin: 16px 0 6px; }
table { border-collapse: collapse; } td, th { border: 1px solid #ddd; padding: 3px 8px;
  text-align: left; vertical-align: top; } th { background: #f4f4f4; white-space: nowrap; }
td { font-variant-numeric: tabular-nums; }
.runs { display: grid; gap: 24px; } .muted { color: #666; font-size: 12px; }
.charts { display: flex; flex-wrap: wrap; gap: 16px; }
svg.chart { background: #fff; border: 1px solid #eee; font-size: 11px; }
svg .title { font-size: 13px; font-weight: 600; } svg .tick { font-size: 10px; fill: #444; }
.shots { display: grid; grid-template-columns: repeat(auto-fill, minmax(280px, 1fr)); gap: 12px; }
figure.shot { margin: 0; border: 1px solid #ddd; padding: 6px; background: #fafafa; }
figure.shot .pair { display: flex; gap: 4px; } figure.shot img { width: 50%; height: auto;
  image-rendering: auto; } figure.shot figcaption { font-size: 12px; margin-top: 4px; }
.verdict { font-weight: 600; } .bad { color: #b00; } .ok { color: #070; }
"""


def write_report(
    runs: Sequence[str | Path],
    out: str | Path,
    *,
    data: str | Path | None = None,
    device: str = "CPU",
    progress: Callable[[str], None] | None = None,
) -> Path:
    """Write the report of one run (or several side by side) to ``out``, atomically.

    ``data`` replaces the dataset path recorded in each run's metrics.json. Raises
    :class:`ReportError` for a folder that is not a run, a dataset that is gone, an output
    that cannot be written.
    """
    if not runs:
        raise ReportError("no run given: pass the folder `anomaly-edge train --out` wrote")
    if len(runs) > MAX_RUNS:
        raise ReportError(f"{len(runs)} runs given: compare at most {MAX_RUNS} at once")
    folders = [RunFolder.open(run, data) for run in runs]
    target = Path(out).expanduser()
    if target.is_dir():
        raise ReportError(f"--out {target} is a folder: give a file name such as report.html")
    if not target.parent.is_dir():
        raise ReportError(f"--out {target}: the folder {target.parent} does not exist")
    evaluations = [evaluate(folder, device=device, progress=progress) for folder in folders]
    galleries = [build_gallery(e) for e in evaluations]
    html = render(evaluations, galleries)
    try:
        with atomic_write(target) as handle:
            handle.write(html)
    except OSError as exc:
        raise ReportError(f"cannot write {target}: {exc}") from None
    return target


def render(evaluations: list[Evaluation], galleries: list[list[Group]]) -> str:
    """The whole page as one string."""
    names = [e.run.name for e in evaluations]
    title = "anomaly-edge report: " + " vs ".join(names)
    generated = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    columns = f"grid-template-columns: repeat({len(evaluations)}, minmax(0, 1fr));"
    body = [
        f"<h1>{escape(title)}</h1>",
        f'<p class="muted">anomaly-edge {escape(anomaly_edge.__version__)}, {generated}. '
        "Curves, histograms, gallery and the figures marked <i>this report</i> come from the "
        "exported model (model.xml) run over every test image of the dataset (the validation "
        "part included); the other metrics are those train wrote in metrics.json.</p>",
        "<h2>Model, data and metrics</h2>",
        _table(_summary_rows(evaluations), names),
        "<h2>Curves</h2>",
        _curves(evaluations),
        "<h2>Scores</h2>",
        '<div class="charts">',
        *[
            charts.histogram(e.scores(False), e.scores(True), e.image_threshold, e.run.name)
            for e in evaluations
        ],
        "</div>",
        "<h2>Operating point</h2>",
        _table(_operating_rows(evaluations), names),
        "<h2>Latency</h2>",
        _table(_latency_rows(evaluations), names),
        "<h2>Gallery</h2>",
        '<p class="muted">Left: the image, the ground truth outlined in yellow. Right: the '
        "heatmap (blue low, red high; shown on every image, flagged or not), the regions (red "
        "outline) and the boxes (red rectangles) the model reports at its thresholds, with "
        "its label and score.</p>",
        f'<div class="runs" style="{columns}">',
        *[_gallery(e, g) for e, g in zip(evaluations, galleries, strict=True)],
        "</div>",
    ]
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        # nothing on the page may come from the network
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
        "img-src data:; style-src 'unsafe-inline'\">"
        f"<title>{escape(title)}</title><style>{STYLE}</style></head>\n<body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )


# ---- tables -----------------------------------------------------------------------------------

Row = tuple[str, list[str]]


def _table(rows: list[Row], names: list[str]) -> str:
    head = "".join(f"<th>{escape(n)}</th>" for n in names)
    lines = [f"<table><tr><th></th>{head}</tr>"]
    for label, values in rows:
        cells = "".join(f"<td>{escape(v)}</td>" for v in values)
        lines.append(f"<tr><th>{escape(label)}</th>{cells}</tr>")
    lines.append("</table>")
    return "\n".join(lines)


def _number(value: Any, digits: int = 4) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        return f"{value:.{digits}f}" if abs(value) < 1e4 else f"{value:.{digits}g}"
    return str(value)


def _share(value: Any) -> str:
    return "n/a" if value is None else f"{100 * float(value):.1f}%"


def _settings(value: Any) -> str:
    if not value:
        return "none"
    if isinstance(value, dict):
        return ", ".join(f"{k}={_settings_value(v)}" for k, v in value.items())
    return _settings_value(value)


def _settings_value(value: Any) -> str:
    return json.dumps(value) if isinstance(value, (list, dict)) else str(value)


def _summary_rows(evaluations: list[Evaluation]) -> list[Row]:
    metrics = [e.run.metrics for e in evaluations]

    def row(label: str, get: Callable[[dict[str, Any]], str]) -> Row:
        return label, [get(m) for m in metrics]

    rows = [
        ("run folder", [str(e.run.path) for e in evaluations]),
        row("model", lambda m: f"{m.get('model')} / {m.get('backbone')}"),
        ("data", [str(e.run.data) for e in evaluations]),
        row("network input (h x w)", lambda m: "x".join(map(str, m.get("image_size") or []))),
        row(
            "images train / validation / test",
            lambda m: (
                f"{m.get('train_images')} / {m.get('validation_images')} / {m.get('test_images')}"
            ),
        ),
        row("model settings", lambda m: _settings(m.get("model_settings"))),
        row("seed", lambda m: str(m.get("seed", "n/a"))),
        row("augment", lambda m: _settings(m.get("augment"))),
        row("tiles", lambda m: _settings(m.get("tiles"))),
        row("image AUROC", lambda m: _number(m.get("image_auroc"))),
        row("pixel AUROC", lambda m: _number(m.get("pixel_auroc"))),
        row("AUPRO (FPR <= 0.3)", lambda m: _number(m.get("aupro"))),
        row("image F1", lambda m: _number(m.get("image_f1"))),
        row("pixel F1", lambda m: _number(m.get("pixel_f1"))),
        row(
            "image threshold (raw)",
            lambda m: f"{_number(m.get('image_threshold'))} ({m.get('image_threshold_method')})",
        ),
        row(
            "pixel threshold (raw)",
            lambda m: f"{_number(m.get('pixel_threshold'))} ({m.get('pixel_threshold_method')})",
        ),
        row("fit time", lambda m: f"{_number(m.get('fit_seconds'), 1)} s"),
        row("fit peak memory", lambda m: f"{_number(m.get('fit_peak_rss_mb'), 0)} MB"),
        row("notes", lambda m: "; ".join(str(n) for n in m.get("notes") or []) or "none"),
    ]
    return rows


def _operating_rows(evaluations: list[Evaluation]) -> list[Row]:
    points = [e.run.metrics.get("operating_point") or {} for e in evaluations]

    def row(label: str, get: Callable[[dict[str, Any]], str]) -> Row:
        # a run trained before operating points were recorded has none of these
        return label, [get(p) if p else "not recorded by this run's train" for p in points]

    def expected(p: dict[str, Any]) -> dict[str, Any]:
        found = p.get("expected")
        return found if isinstance(found, dict) else {}

    def counted(label: str, share: str, count: str, unit: str) -> Row:
        # a share of the test set, shown with the count it is a share of
        return row(label, lambda p: _of(p.get(share), p.get(count), unit))

    rows = [
        ("policy", [str(e.run.metrics.get("policy", "not recorded")) for e in evaluations]),
        row(
            "expected false alarms (validation)",
            lambda p: _of(expected(p).get("far"), expected(p).get("good_images"), "good images"),
        ),
        row(
            "expected recall (validation)",
            lambda p: _of(
                expected(p).get("recall"), expected(p).get("defect_images"), "defect images"
            ),
        ),
        counted(
            "false alarms on good test images (label or anything drawn)",
            "far_seen",
            "good_images",
            "good images",
        ),
        counted("defect recall on test images", "recall", "defect_images", "defect images"),
        row(
            "best recall any threshold reaches at that rate",
            lambda p: _share(p.get("best_recall_at_far")),
        ),
        counted("box precision (boxes touching a defect)", "box_precision", "boxes", "boxes"),
        counted(
            "region recall (defect regions the mask touches)",
            "region_recall",
            "defect_regions",
            "regions",
        ),
        row(
            "images where label, boxes and mask disagree",
            lambda p: _number(p.get("disagreements")),
        ),
    ]
    flagged_good, caught = [], []
    for e in evaluations:
        good = [s for s in e.scored if not s.sample.is_defect]
        defect = [s for s in e.scored if s.sample.is_defect]
        flagged_good.append(f"{sum(s.flagged for s in good)} of {len(good)}")
        caught.append(f"{sum(s.flagged for s in defect)} of {len(defect)}")
    rows.append(("this report: good images flagged (all test images)", flagged_good))
    rows.append(("this report: defect images flagged (all test images)", caught))
    return rows


def _of(share: Any, count: Any, what: str) -> str:
    """``12.5% of 8 good images``; n/a where the share was not measurable."""
    if share is None:
        return "n/a" if count is None else f"n/a ({count} {what})"
    return _share(share) if count is None else f"{_share(share)} of {count} {what}"


def _latency_rows(evaluations: list[Evaluation]) -> list[Row]:
    measured = [e.latency for e in evaluations]

    def sync(m: dict[str, Any], key: str) -> str:
        latency = (m.get("sync") or {}).get("latency_ms") or {}
        return f"{_number(latency.get(key), 2)} ms"

    return [
        (
            "measured by",
            [
                "this report: predict() on one test image for 1 s; for a full measurement "
                "save `anomaly-edge benchmark RUN --json > RUN/benchmark.json`"
                if m.get("source") == "report"
                else "anomaly-edge benchmark (RUN/benchmark.json)"
                for m in measured
            ],
        ),
        ("device", [str(m.get("device", "n/a")) for m in measured]),
        ("frame (w x h)", [str(m.get("frame", "n/a")) for m in measured]),
        ("task", [str(m.get("task", "n/a")) for m in measured]),
        ("latency mean", [sync(m, "mean") for m in measured]),
        ("latency p50", [sync(m, "p50") for m in measured]),
        ("latency p90", [sync(m, "p90") for m in measured]),
        ("latency p99", [sync(m, "p99") for m in measured]),
        (
            "frames per second, one at a time",
            [_number((m.get("sync") or {}).get("fps"), 1) for m in measured],
        ),
        (
            "frames per second, asynchronous",
            [
                "not measured"
                if not m.get("async")
                else f"{_number(m['async'].get('fps'), 1)} "
                f"({m['async'].get('num_requests')} requests)"
                for m in measured
            ],
        ),
    ]


# ---- pictures ---------------------------------------------------------------------------------


def _curves(evaluations: list[Evaluation]) -> str:
    roc, pr = [], []
    for e in evaluations:
        good, defect = e.scores(False), e.scores(True)
        roc_curve = charts.roc_curve(good, defect, e.image_threshold, e.run.name)
        pr_curve = charts.pr_curve(good, defect, e.image_threshold, e.run.name)
        roc += [roc_curve] if roc_curve else []
        pr += [pr_curve] if pr_curve else []
    if not roc and not pr:
        return '<p class="muted">No curves: the test images hold only one class.</p>'
    parts = ['<div class="charts">']
    if roc:
        parts.append(
            charts.curve_chart(
                roc, "ROC (image level)", "false-positive rate", "true-positive rate", "roc"
            )
        )
    if pr:
        parts.append(
            charts.curve_chart(pr, "Precision-recall (image level)", "recall", "precision", "pr")
        )
    parts.append("</div>")
    parts.append(
        '<p class="muted">The ringed dot marks the operating point: the exported image '
        "threshold. In brackets: the area under the curve (ROC) or average precision (PR) "
        "over all test images.</p>"
    )
    return "\n".join(parts)


def _gallery(evaluation: Evaluation, groups: list[Group]) -> str:
    parts = [f'<section class="gallery"><h3>{escape(evaluation.run.name)}</h3>']
    for group in groups:
        parts.append(f"<h3>{escape(group.title)}</h3>")
        parts.append(f'<p class="muted">{escape(group.explanation)}</p>')
        if not group.shots:
            parts.append('<p class="muted">none in this test set</p>')
            continue
        parts.append('<div class="shots">')
        for shot in group.shots:
            scored = shot.scored
            bad = shot.verdict.startswith(("false alarm", "missed"))
            name = f"{scored.sample.defect}/{scored.sample.path.name}"
            parts.append(
                '<figure class="shot"><div class="pair">'
                f'<img src="{shot.image_uri}" alt="{escape(name)}">'
                f'<img src="{shot.overlay_uri}" alt="{escape(name)}: heatmap and boxes">'
                "</div><figcaption>"
                f'<span class="verdict {"bad" if bad else "ok"}">{escape(shot.verdict)}</span> '
                f"{escape(name)}<br>score {scored.score:.3f} (raw {scored.raw_score:.4g}), "
                f"{scored.boxes} box{'es' if scored.boxes != 1 else ''}"
                + ("" if scored.iou is None else f", IoU {scored.iou:.2f}")
                + "</figcaption></figure>"
            )
        parts.append("</div>")
    parts.append("</section>")
    return "\n".join(parts)
