"""`anomaly-edge export --precision INT8`: guarded by default, data remembered, NNCF quiet."""

from __future__ import annotations

import json
import os

import cv2
import pytest

from anomaly_edge.cli.common import ExitCode
from anomaly_edge.cli.main import main

os.environ.setdefault("CI", "true")  # no OpenVINO telemetry attempts (see test_export)


@pytest.fixture
def run_with_data(tmp_path, monkeypatch):
    """A run folder (toy checkpoint + metrics.json naming its data) and that data."""
    from anomaly_edge.train import checkpoint
    from tests.toy_models import fitted_toy, synthetic_images

    monkeypatch.setattr(checkpoint, "ALLOWED_PACKAGE", "tests.")  # the toy lives in tests/
    model, metadata = fitted_toy()
    run = tmp_path / "run"
    checkpoint.save_checkpoint(model, metadata, run / "checkpoint.pt")
    data = tmp_path / "data"
    for folder, images in [
        ("train/good", synthetic_images(8, seed=1)),
        ("test/good", synthetic_images(4, seed=2)),
        ("test/defect", synthetic_images(4, anomalous=True, seed=3)),
    ]:
        (data / folder).mkdir(parents=True)
        for i, rgb in enumerate(images):
            cv2.imwrite(str(data / folder / f"{i:03d}.png"), rgb[:, :, ::-1])
    (run / "metrics.json").write_text(json.dumps({"data": str(data)}))
    return run


def test_int8_needs_no_data_and_refuses_a_drop_above_one_hundredth(
    run_with_data, monkeypatch, capsys
):
    from anomaly_edge.train import export
    from anomaly_edge.train.quantize import QuantizationReport

    def lossy(reference, quantized, validation, precision="INT8"):
        return QuantizationReport("image_auroc", 0.98, 0.95, 8, precision)  # drop 0.03

    monkeypatch.setattr(export, "compare_accuracy", lossy)
    command = ["export", "--run", str(run_with_data), "--precision", "INT8"]
    assert main(command) == ExitCode.FAILURE  # guarded without being asked
    captured = capsys.readouterr()
    assert "more than the allowed 0.0100" in captured.err
    assert not (run_with_data / "int8").exists()
    assert main([*command, "--max-accuracy-drop", "0.05"]) == ExitCode.OK  # the user allows more
    captured = capsys.readouterr()
    assert (run_with_data / "int8" / "model.xml").exists()
    assert "INFO" not in captured.out + captured.err  # NNCF quiet without --verbose
    assert "Statistics collection" not in captured.out + captured.err


def test_int8_says_when_the_data_is_unknown_or_gone(run_with_data, tmp_path, capsys):
    (run_with_data / "metrics.json").write_text("{}")
    assert main(["export", "--run", str(run_with_data), "--precision", "INT8"]) == ExitCode.USAGE
    assert "--data" in capsys.readouterr().err
    (run_with_data / "metrics.json").write_text(json.dumps({"data": str(tmp_path / "gone")}))
    assert main(["export", "--run", str(run_with_data), "--precision", "INT8"]) == ExitCode.INPUT
    with pytest.raises(SystemExit) as usage:
        main(
            [
                "export",
                "--run",
                str(run_with_data),
                "--precision",
                "INT8",
                "--max-accuracy-drop",
                "-1",
            ]
        )
    assert usage.value.code == ExitCode.USAGE
