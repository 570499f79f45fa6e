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


def test_the_table_sets_anomalibs_figures_beside_the_same_model_only():
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_accuracy", SCRIPT)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    run = {"dataset": "mpdd", "category": "metal_plate", "input_size": [256, 256], "epochs": 30}
    run |= {"image_auroc": 0.99, "pixel_auroc": 0.99, "aupro": 0.95, "fit_s": 60.0}
    run |= {"peak_rss_mb": 1800, "ir_mb": 1.2, "frame_ms": 7.0, "test_images": 97}
    rows = [
        run | {"model": "padim"},
        run | {"model": "stfpm"},
        run | {"model": "stfpm", "category": "my_part", "dataset": "my_data"},  # unmeasured
    ]
    padim, stfpm, unmeasured = bench.format_table(rows).splitlines()[2:]
    assert padim.rstrip().endswith("0.848 / 0.967 / 0.884, 12 s")
    assert stfpm.rstrip().endswith("0.992 / 0.985 / 0.926, 1727 s")
    assert unmeasured.rstrip().endswith("-")


def test_patchcore_flags_are_checked():
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--models", "patchcore", "--coreset-ratio", "1.5"],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert done.returncode == 2 and "--coreset-ratio must be in (0, 1]" in done.stderr


@pytest.mark.slow
def test_patchcore_run_reports_its_bank_settings(tmp_path):
    pytest.importorskip("torch")
    make_category(tmp_path / "root" / "toy" / "cat", train=6, good=3, defects={"d": 3})
    argv = ["--models", "patchcore", "--root", str(tmp_path / "root"), "--image-size", "64"]
    done = subprocess.run(
        [sys.executable, str(SCRIPT), *argv, "--coreset-ratio", "0.5", "--neighbours", "3"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    (run,) = json.loads(done.stdout.strip().splitlines()[-1])["runs"]
    assert run["model"] == "patchcore" and run["fit_peak_rss_mb"] > 0
    settings = run["settings"]
    assert (settings["coreset_ratio"], settings["neighbours"]) == (0.5, 3)
    assert settings["bank_size"] > 0
