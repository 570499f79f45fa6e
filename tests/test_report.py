"""`anomaly-edge report`: one self-contained HTML page about a trained run (or two compared),
built from the exported model over the test images, checked as text and in headless Chromium."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from anomaly_edge.cli.main import main
from anomaly_edge.report import ReportError, write_report
from anomaly_edge.report.charts import pr_curve, roc_curve
from tests.conftest import child_env
from tests.test_data_factory import make_category

pytest.importorskip("torch")
pytest.importorskip("openvino")

GALLERY_MINIMUM = 8


@pytest.fixture(scope="module")
def category(tmp_path_factory) -> Path:
    # 6 good and 6 defect test images: every gallery group can show 3
    return make_category(
        tmp_path_factory.mktemp("data") / "cat",
        train=12,
        good=8,
        defects={"scratch": 4, "spot": 4},
    )


@pytest.fixture(scope="module")
def trained(category, tmp_path_factory) -> tuple[Path, str]:
    """A run trained through the CLI (which writes its report) and what train printed."""
    out = tmp_path_factory.mktemp("runs") / "padim"
    argv = ["train", "--data", str(category), "--image-size", "64", "--out", str(out)]
    printed = subprocess.run(
        [sys.executable, "-m", "anomaly_edge", *argv, "--quiet"],
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=600,
    )
    assert printed.returncode == 0, printed.stderr
    return out, printed.stdout


@pytest.fixture(scope="module")
def second_run(category, tmp_path_factory) -> Path:
    from anomaly_edge.train import train
    from anomaly_edge.train.options import PadimOptions

    out = tmp_path_factory.mktemp("runs") / "padim-small"
    train(
        category,
        out=out,
        image_size=64,
        seed=1,
        options=PadimOptions(n_channels=20),
        progress=False,
    )
    return out


def _figures(html: str) -> int:
    return html.count('<figure class="shot">')


def test_train_prints_the_report_it_wrote(trained):
    run, printed = trained
    line = printed.strip().splitlines()[-1]
    assert line == f"report: {run / 'report.html'}"
    html = (run / "report.html").read_text(encoding="utf-8")
    assert _figures(html) >= GALLERY_MINIMUM


def test_the_report_holds_curves_operating_point_gallery_and_latency(trained, tmp_path):
    run, _ = trained
    html = write_report([run], tmp_path / "report.html").read_text(encoding="utf-8")
    metrics = json.loads((run / "metrics.json").read_text())
    for chart in ("roc", "pr"):
        svg = re.search(rf'<svg class="chart {chart}".*?</svg>', html, re.S)
        assert svg, chart
        assert svg.group(0).count('class="curve"') == 1
        assert svg.group(0).count('class="operating-point"') == 1
    assert 'class="threshold"' in html  # the histogram's image threshold
    assert html.count('class="bar good"') >= 1 and html.count('class="bar defect"') >= 1
    assert f"{metrics['image_threshold']:.4f}" in html
    for row in ("policy", "box precision", "region recall", "disagree", "latency p50"):
        assert row in html
    assert metrics["policy"] in html
    assert _figures(html) >= GALLERY_MINIMUM
    for group in ("Worst false alarms", "Misses", "Best localisations", "Worst localisations"):
        assert group in html
    # self-contained: every picture inline, nothing to fetch
    sources = re.findall(r'src="([^"]*)"', html)
    assert len(sources) >= 2 * GALLERY_MINIMUM
    assert all(s.startswith("data:image/") for s in sources)
    assert "<script" not in html and "href=" not in html and "url(" not in html


def test_the_page_opens_in_chromium_without_the_network(trained, tmp_path):
    from tests.browser import Chromium

    run, _ = trained
    page = write_report([run], tmp_path / "report.html")
    browser = Chromium(page.as_uri(), size=(1280, 1600))
    try:
        # about:blank is 'complete' too: wait for the report's own pictures to be decoded
        drawn = browser.wait_for(
            "Array.from(document.querySelectorAll('figure.shot img'))"
            f".filter(i => i.complete && i.naturalWidth > 0).length >= {2 * GALLERY_MINIMUM}",
            what="the gallery's pictures",
        )
        assert drawn is True
        assert browser.evaluate("document.readyState") == "complete"
        marks = browser.evaluate(
            "Array.from(document.querySelectorAll('svg circle.operating-point'))"
            ".map(c => c.getBoundingClientRect().width > 0).filter(Boolean).length"
        )
        assert marks == 2  # ROC and PR each mark the operating point
        fetched = browser.evaluate("performance.getEntriesByType('resource').length")
        assert fetched == 0
        shot = os.environ.get("ANOMALY_EDGE_REPORT_SCREENSHOT")
        png = browser.screenshot(Path(shot) if shot else tmp_path / "report.png")
        assert png.stat().st_size > 10_000
    finally:
        browser.close()


def test_two_runs_are_compared_side_by_side(trained, second_run, tmp_path):
    run, _ = trained
    out = tmp_path / "compare.html"
    code = main(["report", str(run), str(second_run), "--out", str(out), "--quiet"])
    assert code == 0
    html = out.read_text(encoding="utf-8")
    roc = re.search(r'<svg class="chart roc".*?</svg>', html, re.S)
    assert roc and roc.group(0).count('class="operating-point"') == 2
    assert html.count('<section class="gallery">') == 2
    assert html.count('<svg class="chart histogram"') == 2
    assert "repeat(2, minmax(0, 1fr))" in html
    assert _figures(html) >= 2 * GALLERY_MINIMUM
    assert "padim-small" in html and f"({run.name})" in html


def test_the_report_needs_no_torch(trained, tmp_path):
    run, _ = trained
    out = tmp_path / "report.html"
    code = (
        "import sys; sys.modules['torch'] = None\n"  # any import of torch fails loudly
        "from anomaly_edge.cli.main import main\n"
        f"sys.exit(main(['report', {str(run)!r}, '--out', {str(out)!r}, '--quiet']))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=child_env(), timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"report: {out}"


def _copy_run(run: Path, to: Path) -> Path:
    to.mkdir()
    for name in ("metrics.json", "model.xml", "model.bin"):
        shutil.copy(run / name, to / name)
    return to


def test_a_saved_benchmark_gives_the_latency(trained, tmp_path):
    run = _copy_run(trained[0], tmp_path / "run")
    benchmark = {
        "model": "padim",
        "device": "CPU",
        "task": "detection",
        "frame": "1920x1080",
        "sync": {"fps": 40.0, "frames": 200, "latency_ms": {"mean": 25.0, "p50": 24.125}},
        "async": {"fps": 70.0, "frames": 350, "num_requests": 3},
    }
    (run / "benchmark.json").write_text(json.dumps(benchmark))
    html = write_report([run], tmp_path / "r.html").read_text(encoding="utf-8")
    assert "RUN/benchmark.json" in html and "24.12 ms" in html and "1920x1080" in html
    assert "3 requests" in html


def test_clear_errors(trained, tmp_path, capsys):
    run = trained[0]
    with pytest.raises(ReportError, match=r"no metrics\.json"):
        write_report([tmp_path], tmp_path / "r.html")
    with pytest.raises(ReportError, match="not a folder"):
        write_report([tmp_path / "missing"], tmp_path / "r.html")
    moved = _copy_run(run, tmp_path / "moved")
    metrics = json.loads((moved / "metrics.json").read_text())
    (moved / "metrics.json").write_text(json.dumps({**metrics, "data": str(tmp_path / "gone")}))
    with pytest.raises(ReportError, match="pass --data DIR"):
        write_report([moved], tmp_path / "r.html")
    (moved / "model.bin").unlink()
    with pytest.raises(ReportError, match="anomaly-edge export"):
        write_report([moved], tmp_path / "r.html", data=metrics["data"])
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "metrics.json").write_text("{not json")
    assert main(["report", str(tmp_path / "broken"), "--quiet"]) == 3
    assert "cannot be read" in capsys.readouterr().err
    assert main(["report", str(run), "--device", "NO_SUCH_DEVICE", "--quiet"]) == 2
    assert "--device" in capsys.readouterr().err
    bench = _copy_run(run, tmp_path / "bench")
    (bench / "benchmark.json").write_text('{"fps": 3}')
    with pytest.raises(ReportError, match="benchmark RUN --json"):
        write_report([bench], tmp_path / "r.html")
    with pytest.raises(ReportError, match="is a folder"):
        write_report([run], tmp_path)
    assert not (tmp_path / "r.html").exists()


def test_a_test_set_without_defects_still_gives_a_page(trained, category, tmp_path):
    good_only = tmp_path / "good_only"
    shutil.copytree(category / "test" / "good", good_only / "test" / "good")
    html = write_report([trained[0]], tmp_path / "r.html", data=good_only).read_text("utf-8")
    assert "No curves: the test images hold only one class." in html
    assert 'class="chart roc"' not in html and 'class="chart histogram"' in html
    assert html.count("none in this test set") == 3  # misses and both localisation groups
    assert _figures(html) == 3  # the good images closest to the threshold
    with pytest.raises(ReportError, match="no test images"):
        write_report([trained[0]], tmp_path / "r.html", data=tmp_path / "good_only" / "test")


def test_train_says_why_it_wrote_no_report(trained, tmp_path):
    from anomaly_edge.cli.report import after_training

    assert after_training(tmp_path, None).startswith("report: not written (no exported model")
    empty = _copy_run(trained[0], tmp_path / "run")
    metrics = json.loads((empty / "metrics.json").read_text())
    (empty / "metrics.json").write_text(json.dumps({**metrics, "data": str(tmp_path)}))
    line = after_training(empty, empty / "model.xml")
    assert line.startswith("report: not written (") and "no test images" in line
    assert not (empty / "report.html").exists()


def test_curves_match_scikit_learn_and_mark_the_threshold():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    good = np.round(rng.normal(0, 1, 40), 1)  # rounded: ties between the classes
    defect = np.round(rng.normal(1.2, 1, 30), 1)
    labels = np.r_[np.zeros(40), np.ones(30)]
    roc = roc_curve(good, defect, 0.5, "run")
    assert roc is not None and roc.area is not None
    assert roc.area == pytest.approx(metrics.roc_auc_score(labels, np.r_[good, defect]))
    assert roc.point == (np.mean(good >= 0.5), np.mean(defect >= 0.5))
    pr = pr_curve(good, defect, 0.5, "run")
    assert pr is not None and pr.area is not None
    ap = metrics.average_precision_score(labels, np.r_[good, defect])
    assert pr.area == pytest.approx(ap)
    caught, flagged = np.sum(defect >= 0.5), np.sum(good >= 0.5) + np.sum(defect >= 0.5)
    assert pr.point == pytest.approx((caught / 30, caught / flagged))
    assert roc_curve(good, defect[:0], 0.5, "run") is None  # one class only: no ROC
