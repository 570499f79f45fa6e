"""A training run's folder: always written (even when metrics are undefined), never a mix of
two runs, files with ordinary permissions."""

from __future__ import annotations

import json
import os
import stat

import cv2
import numpy as np
import pytest

from anomaly_edge.train import train
from tests.test_data_factory import make_category

FAST = {"backbone": "efficientnet_lite0", "image_size": 64}


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def _empty_masks(root):
    for mask in (root / "ground_truth").rglob("*_mask.png"):
        cv2.imwrite(str(mask), np.zeros_like(cv2.imread(str(mask), cv2.IMREAD_GRAYSCALE)))


def test_undefined_pixel_auroc_still_writes_the_whole_run(tmp_path, umask_022):
    root = make_category(tmp_path / "cat", train=8, good=4, defects={"scratch": 4})
    _empty_masks(root)  # every mask empty: pixel AUROC has no positive pixel
    out = tmp_path / "run"
    result = train(root, out=out, **FAST)
    written = json.loads((out / "metrics.json").read_text())
    assert written["pixel_auroc"] is None and written["image_auroc"] is not None
    assert written["data"] == str(root.resolve())  # `export --precision INT8` calibrates on it
    assert any("pixel_auroc" in note for note in written["notes"])
    for name in (
        "metrics.json",
        "checkpoint.pt",
        "roc_curve.png",
        "pr_curve.png",
        "model.xml",
        "model.bin",
    ):
        mode = stat.S_IMODE((out / name).stat().st_mode)
        assert mode == 0o644, (name, oct(mode))  # not mkstemp's 0600
    assert stat.S_IMODE(out.stat().st_mode) == 0o755
    assert result.ir_path == out / "model.xml" and all(p.exists() for p in result.files)


def test_tiny_images_train_and_write(tmp_path):
    root = make_category(tmp_path / "cat", train=6, good=3, defects={"spot": 3}, size=8)
    result = train(root, out=tmp_path / "run", export=False, **FAST)
    assert (tmp_path / "run" / "metrics.json").exists()
    assert set(result.metrics) >= {"image_auroc", "pixel_auroc", "notes"}


def test_a_kill_during_export_leaves_the_previous_run_whole(tmp_path, monkeypatch):
    import anomaly_edge.train.export as export

    root = make_category(tmp_path / "cat", train=8, good=4, defects={"scratch": 4})
    out = tmp_path / "run"
    train(root, out=out, seed=0, **FAST)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # what a kill between the checkpoint and the IR looks like

    monkeypatch.setattr(export, "save_ir", killed)
    with pytest.raises(KeyboardInterrupt):
        train(root, out=out, seed=1, **FAST)
    after = {p.name: p.read_bytes() for p in out.iterdir()}
    assert after == before  # no new checkpoint or curves beside the old model and metrics
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_a_second_run_replaces_the_first_as_a_whole(tmp_path):
    root = make_category(tmp_path / "cat", train=8, good=4, defects={"scratch": 4})
    out = tmp_path / "run"
    train(root, out=out, export=False, **FAST)
    (out / "stale.txt").write_text("from the first run")
    train(root, out=out, export=False, seed=1, **FAST)
    assert not (out / "stale.txt").exists()
    assert json.loads((out / "metrics.json").read_text())["seed"] == 1


def test_a_folder_that_is_not_a_run_is_refused_before_training(tmp_path):
    root = make_category(tmp_path / "cat", train=4, good=2, defects={"scratch": 2})
    home = tmp_path / "home"
    home.mkdir()
    (home / "thesis.tex").write_text("precious")
    with pytest.raises(ValueError, match="not empty and holds no training run"):
        train(root, out=home, **FAST)
    assert (home / "thesis.tex").read_text() == "precious"


@pytest.mark.slow
def test_train_int8_is_guarded_and_keeps_the_run_when_refused(tmp_path, monkeypatch):
    from anomaly_edge.train import export
    from anomaly_edge.train.quantize import AccuracyDropError, QuantizationReport

    def lossy(reference, quantized, validation, precision="INT8"):
        return QuantizationReport("image_auroc", 0.98, 0.95, 8, precision)  # drop 0.03

    monkeypatch.setattr(export, "compare_accuracy", lossy)
    root = make_category(tmp_path / "cat", train=8, good=4, defects={"scratch": 4})
    out = tmp_path / "run"
    with pytest.raises(AccuracyDropError, match="without an IR"):
        train(root, out=out, precision="INT8", **FAST)
    assert (out / "checkpoint.pt").exists() and not (out / "model.xml").exists()
    notes = json.loads((out / "metrics.json").read_text())["notes"]
    assert any("no IR written" in note for note in notes)
