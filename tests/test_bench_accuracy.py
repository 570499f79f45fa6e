"""tools/bench_accuracy.py: one real training run per category and model, table + JSON line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_data_factory import make_category

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "tools" / "bench_accuracy.py"


def test_all_and_datasets_are_exclusive():
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--all", "--datasets", "mpdd"],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert done.returncode == 2 and "--all runs every dataset" in done.stderr


@pytest.mark.slow
def test_padim_only_run_prints_a_table_and_the_json_line(tmp_path):
    pytest.importorskip("torch")
    make_category(tmp_path / "root" / "toy" / "cat", train=8, good=3, defects={"d": 3})
    done = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--all",
            "--models",
            "padim",
            "--root",
            str(tmp_path / "root"),
            "--image-size",
            "64",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    result = json.loads(lines[-1])
    assert result["benchmark"] == "accuracy"
    (run,) = result["runs"]
    assert (run["dataset"], run["category"], run["model"]) == ("toy", "cat", "padim")
    assert run["backbone"] == "efficientnet_lite0" and run["input_size"] == [64, 64]
    assert run["test_images"] == 6  # the whole test set
    for key in ("image_auroc", "pixel_auroc", "aupro", "fit_s", "peak_rss_mb", "ir_mb", "frame_ms"):
        assert isinstance(run[key], (int, float)) and run[key] > 0, key
    assert "frame ms" in done.stdout and "test imgs" in done.stdout
