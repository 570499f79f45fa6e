"""`anomaly-edge predict`, `info`, `benchmark` and `export` from the command line."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from anomaly_edge.cli.common import ExitCode
from anomaly_edge.cli.main import main
from tests.ir_factory import GREY


@pytest.fixture
def images(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    flat = np.full((120, 160, 3), GREY, np.uint8)
    blob = flat.copy()
    blob[40:70, 60:100] = 255
    cv2.imwrite(str(folder / "a_flat.png"), flat)
    cv2.imwrite(str(folder / "b_blob.jpg"), blob)
    (folder / "notes.txt").write_text("not an image")  # skipped: not an image suffix
    return folder


def test_predict_folder_to_jsonl_and_overlays(synthetic_ir, images, tmp_path, capsys):
    out, overlays = tmp_path / "out" / "results.jsonl", tmp_path / "overlays"
    code = main(
        [
            "predict",
            "--model",
            str(synthetic_ir),
            str(images),
            "--jsonl",
            str(out),
            "--overlays",
            str(overlays),
            "--task",
            "detection",
            "--device",
            "CPU",
        ]
    )
    assert code == ExitCode.OK
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["file"].rsplit("/", 1)[-1] for line in lines] == ["a_flat.png", "b_blob.jpg"]
    assert lines[0]["label"] == "Normal" and lines[0]["boxes"] == []
    assert lines[1]["label"] == "Anomaly" and lines[1]["score"] > 0.5
    box = lines[1]["boxes"][0]
    assert set(box) >= {"x1", "y1", "x2", "y2", "score"} and 40 <= box["x1"] <= 70
    assert sorted(p.name for p in overlays.iterdir()) == ["a_flat.png", "b_blob.png"]
    assert cv2.imread(str(overlays / "b_blob.png")).shape == (120, 160, 3)
    assert "2 images, 1 anomalous" in capsys.readouterr().err


def test_predict_to_stdout(synthetic_ir, images, capsys):
    code = main(
        [
            "predict",
            "--model",
            str(synthetic_ir),
            str(images / "b_blob.jpg"),
            "--image-threshold",
            "1e6",
            "--raw-thresholds",
            "--device",
            "CPU",
        ]
    )
    assert code == ExitCode.OK
    line = json.loads(capsys.readouterr().out.strip())
    assert line["label"] == "Normal"  # the threshold override applies


def test_predict_errors(synthetic_ir, images, tmp_path, capsys):
    assert (
        main(
            [
                "predict",
                "--model",
                str(synthetic_ir),
                str(tmp_path / "missing.png"),
                "--device",
                "CPU",
            ]
        )
        == ExitCode.INPUT
    )
    bad = images / "bad.png"
    bad.write_bytes(b"\x89PNG truncated")
    out = tmp_path / "results.jsonl"
    assert (
        main(
            [
                "predict",
                "--model",
                str(synthetic_ir),
                str(images),
                "--jsonl",
                str(out),
                "--device",
                "CPU",
            ]
        )
        == ExitCode.INPUT
    )
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [("error" in line) for line in lines] == [False, False, True]  # good ones kept
    assert main(["predict", "--model", str(tmp_path / "none.xml"), str(images)]) == ExitCode.MODEL
    assert (
        main(["predict", "--model", str(synthetic_ir), str(images), "--device", "FPGA"])
        == ExitCode.USAGE
    )
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["predict", "--model", str(synthetic_ir), str(empty)]) == ExitCode.INPUT
    err = capsys.readouterr().err
    assert "does not exist" in err and "not an image" in err and "FPGA" in err


def test_info(synthetic_ir, capsys):
    assert main(["info", str(synthetic_ir)]) == ExitCode.OK
    assert "synthetic" in capsys.readouterr().out
    assert main(["info", str(synthetic_ir), "--json"]) == ExitCode.OK
    info = json.loads(capsys.readouterr().out)
    assert info["input_size"] == "64x64" and info["precision"] == "FP32"


def test_benchmark(synthetic_ir, capsys):
    code = main(
        [
            "benchmark",
            "--model",
            str(synthetic_ir),
            "--device",
            "CPU",
            "--seconds",
            "0.2",
            "--frame",
            "320x240",
            "--json",
        ]
    )
    assert code == ExitCode.OK
    result = json.loads(capsys.readouterr().out)
    assert result["frame"] == "320x240" and result["task"] == "detection"
    assert result["sync"]["fps"] > 0 and result["async"]["fps"] > 0
    assert result["sync"]["latency_ms"]["p50"] <= result["sync"]["latency_ms"]["p99"]


def test_benchmark_rejects_bad_frame_size(synthetic_ir):
    with pytest.raises(SystemExit) as exit_info:
        main(["benchmark", "--model", str(synthetic_ir), "--frame", "big"])
    assert exit_info.value.code == ExitCode.USAGE


def test_export_from_a_checkpoint(tmp_path, monkeypatch, capsys):
    import os

    os.environ.setdefault("CI", "true")  # no OpenVINO telemetry attempts (see test_export)
    from anomaly_edge.train import checkpoint
    from tests.toy_models import fitted_toy

    monkeypatch.setattr(checkpoint, "ALLOWED_PACKAGE", "tests.")  # the toy lives in tests/
    model, metadata = fitted_toy()
    run = tmp_path / "run"
    checkpoint.save_checkpoint(model, metadata, run / "checkpoint.pt")
    assert main(["export", str(run), "--precision", "fp32"]) == ExitCode.OK  # run folder first
    assert "FP32" in capsys.readouterr().out
    assert main(["info", str(run / "fp32" / "model.xml"), "--json"]) == ExitCode.OK
    assert json.loads(capsys.readouterr().out)["precision"] == "FP32"

    assert main(["export", "--run", str(tmp_path / "nowhere")]) == ExitCode.MODEL
    (run / "model.xml").write_text("")  # beside checkpoint.pt: still a run, exported again
    assert main(["export", "--precision", "fp32", "--out", str(tmp_path / "b"), str(run)]) == 0
    assert (tmp_path / "b" / "model.xml").stat().st_size > 0
    assert main(["export", "--run", str(run), "--precision", "INT8"]) == ExitCode.USAGE
    assert main(["export", "--run", str(run), "--max-accuracy-drop", "0.1"]) == ExitCode.USAGE


@pytest.mark.slow
def test_export_int8_from_an_mvtec_folder(tmp_path, monkeypatch, capsys):
    import os

    os.environ.setdefault("CI", "true")
    from anomaly_edge.train import checkpoint
    from tests.toy_models import fitted_toy, synthetic_images

    monkeypatch.setattr(checkpoint, "ALLOWED_PACKAGE", "tests.")
    model, metadata = fitted_toy()
    checkpoint.save_checkpoint(model, metadata, tmp_path / "run" / "checkpoint.pt")
    data = tmp_path / "data"  # calibrated on train/good, checked on test/
    for folder, images in [
        ("train/good", synthetic_images(8, seed=1)),
        ("test/good", synthetic_images(3, seed=2)),
        ("test/defect", synthetic_images(3, anomalous=True, seed=3)),
    ]:
        (data / folder).mkdir(parents=True)
        for i, rgb in enumerate(images):
            cv2.imwrite(str(data / folder / f"{i:03d}.png"), rgb[:, :, ::-1])
    assert (
        main(
            [
                "export",
                "--run",
                str(tmp_path / "run"),
                "--precision",
                "INT8",
                "--data",
                str(data),
                "--max-accuracy-drop",
                "0.5",
            ]
        )
        == ExitCode.OK
    )
    assert "INT8 accuracy change" in capsys.readouterr().out
    assert (tmp_path / "run" / "int8" / "model.xml").is_file()
    assert (
        main(
            [
                "export",
                "--run",
                str(tmp_path / "run"),
                "--precision",
                "INT8",
                "--data",
                str(tmp_path / "missing"),
            ]
        )
        == ExitCode.INPUT
    )
