"""tools/bench_patchcore_cost.py: PatchCore's cost, table + JSON line (anomalib's side needs
its own venv and is not run here)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_data_factory import make_category

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "tools" / "bench_patchcore_cost.py"


def test_a_folder_that_is_no_category_is_refused(tmp_path):
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--data", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert done.returncode == 2 and "holds no train/good and test/" in done.stderr


@pytest.mark.slow
def test_our_side_reports_fit_memory_ir_and_frame(tmp_path):
    pytest.importorskip("torch")
    data = make_category(tmp_path / "cat", train=6, good=3, defects={"d": 3}, size=64)
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--data", str(data), "--frames", "2"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["benchmark"] == "patchcore_cost" and "ratio" not in result
    ours = result["sides"]["anomaly_edge"]
    for key in ("fit_s", "fit_peak_rss_mb", "ir_mb", "frame_ms", "bank_size"):
        assert ours[key] > 0, key
